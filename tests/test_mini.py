"""The shipped ``mini`` model (issue 5): it loads through the local-directory path of the real model,
its VAE round-trips clips, and it has learned: prompts it never saw come out in their color and motion.
"""

from __future__ import annotations

import json
from math import comb

import numpy as np
import pytest
import torch

from hyca_batch.models import KIND_DIFFUSERS, MINI_DEFAULTS, MINI_DIR, load_model, resolve_model
from hyca_batch.models.metadata import MODEL_METADATA_FILENAME
from hyca_batch.pipeline.generate import VideoGenerator
from hyca_batch.training import synthetic as S
from hyca_batch.training.mini import latent_preview, latent_target
from hyca_batch.types import Request

# "Most prompts": a held-out prompt passes when BOTH its measured color and its measured motion match.
# Chance is 1/6 x 1/6 = 1/36 per prompt (six colors, six motions), so with 18 prompts even 5 passes by
# luck has probability < 1e-4; a model that ignores the text and draws its most common color and motion
# passes at most the 1 prompt that happens to have both. 12/18 (two thirds) is clearly "most" and
# leaves room below the shipped model's measured accuracy (in its hyca_batch.json) for float
# differences between CPUs, which can flip a borderline measurement.
MIN_HELDOUT_PASSES = 12


@pytest.fixture(scope="module")
def mini():
    torch.set_num_threads(2)
    return load_model("mini", device="cpu")


def test_mini_preset_is_a_diffusers_directory_in_the_package(mini):
    spec = resolve_model("mini")
    assert spec.kind == KIND_DIFFUSERS and spec.source == str(MINI_DIR)
    assert (MINI_DIR / "model_index.json").is_file()
    weights = sorted(MINI_DIR.rglob("*.safetensors"))
    assert {w.parent.name for w in weights} >= {"transformer", "vae", "text_encoder", "text_encoder_2"}
    assert sum(f.stat().st_size for f in MINI_DIR.rglob("*") if f.is_file()) < 30e6
    assert spec.defaults == MINI_DEFAULTS
    meta = json.loads((MINI_DIR / MODEL_METADATA_FILENAME).read_text())
    assert meta["preset"] == "mini" and meta["training"]["script"] == "benchmarks/train_mini.py"
    pipe = mini.pipeline
    assert type(pipe).__name__ == "HunyuanVideoPipeline"
    assert type(pipe.transformer).__name__ == "HunyuanVideoTransformer3DModel"
    assert type(pipe.vae).__name__ == "AutoencoderKLHunyuanVideo"
    assert pipe.vae.config.scaling_factor != 1.0  # set from the training latents' std


def test_latent_target_and_preview_invert_each_other():
    x = torch.rand(2, 3, 9, 64, 64) * 2 - 1
    z = latent_target(x)
    assert z.shape == (2, 16, 3, 16, 16) and torch.all(z[:, 12:] == 0)
    pooled = torch.nn.functional.avg_pool3d(x, (1, 4, 4)).repeat_interleave(4, 3).repeat_interleave(4, 4)
    torch.testing.assert_close(latent_preview(z), pooled)
    with pytest.raises(ValueError, match="1 \\+ 4k"):
        latent_target(x[:, :, :8])


def test_mini_vae_round_trips_held_out_clips(mini):
    vae = mini.pipeline.vae
    held = S.sample_specs(12, seed=99, split="heldout")
    clips = np.stack([S.make_clip(s) for s in held])
    x = torch.from_numpy(clips).permute(0, 4, 1, 2, 3).float().div(127.5).sub(1.0)
    with torch.no_grad():
        posterior = vae.encode(x).latent_dist
        y = vae.decode(posterior.mean).sample
    # The encoder produces the fixed mini latent it was trained to produce.
    assert (posterior.mean - latent_target(x)).abs().mean() < 0.05
    frames = ((y + 1) * 127.5).clamp(0, 255).round().byte().permute(0, 2, 3, 4, 1).numpy()
    measured = [S.measure_clip(f) for f in frames]
    ok = sum(m.color == s.color and m.motion == s.motion for m, s in zip(measured, held))
    print(f"VAE round trip: color and motion read back for {ok}/{len(held)} held-out clips")
    assert ok >= len(held) - 1


def test_mini_has_learned_held_out_prompts(mini, capsys):
    generator = VideoGenerator(mini)
    d = MINI_DEFAULTS
    rows = []
    for i, (color, shape, motion, background) in enumerate(S.heldout_test_combinations()):
        prompt = S.make_prompt(color, shape, motion, background)
        request = Request(
            id=f"heldout-{i}",
            prompt=prompt,
            seed=1000 + i,
            height=d.height,
            width=d.width,
            num_frames=d.num_frames,
            num_inference_steps=d.num_inference_steps,
            guidance_scale=d.guidance_scale,
            fps=d.fps,
        )
        m = S.measure_clip(generator(request).frames)
        rows.append((prompt, m.color, m.motion, m.color == color, m.motion == motion))
    color_ok = sum(r[3] for r in rows)
    motion_ok = sum(r[4] for r in rows)
    both = sum(r[3] and r[4] for r in rows)
    n = len(rows)
    with capsys.disabled():
        print(
            f"\nmini, {n} held-out prompts: color {color_ok}/{n}, motion {motion_ok}/{n}, both {both}/{n} "
            f"(threshold {MIN_HELDOUT_PASSES}/{n})"
        )
        for prompt, c, mo, cok, mok in rows:
            print(f"  {'ok  ' if cok and mok else 'MISS'} {prompt!r}: measured {c} {mo}")
    # The chance of reaching the threshold by guessing (p = 1/36 per prompt), for the record.
    p_chance = sum(comb(n, k) * (1 / 36) ** k * (35 / 36) ** (n - k) for k in range(MIN_HELDOUT_PASSES, n + 1))
    assert p_chance < 1e-12
    assert both >= MIN_HELDOUT_PASSES, f"only {both}/{n} held-out prompts came out right"

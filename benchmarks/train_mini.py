"""Train the ``mini`` HunyuanVideo on synthetic clips (CPU, two cores, well under an hour).

    .venv/bin/python benchmarks/train_mini.py --threads 1 --out hyca_batch/models/weights/mini

STATUS: not yet producing a usable model. With the defaults here the VAE's encoder localizes the
object but its decoder still draws a static blob at a fixed place after ~800 steps (see the report of
issue 5); the VAE needs more steps or a better recipe before the transformer stage is worth running.

Stages (all deterministic given --seed):
1. VAE (AutoencoderKLHunyuanVideo, 8x spatial / 4x temporal) for reconstruction, deterministic (posterior
   mean), foreground pixels weighted 10x: first on single frames (--vae-image-steps), then on 5-frame
   clips (one causal first latent frame plus one 4-frame group: the structure of every longer clip).
2. Encode the transformer's training clips (9 frames) to posterior means once; set the VAE's
   scaling_factor to 1/std of those latents so the pipeline sees unit-scale latents.
3. Text: every distinct training prompt through the pipeline's own ``encode_prompt`` (default
   template, crop_start 95, frozen tiny Llama + CLIP), once; cut to the longest real prompt, which
   leaves the transformer's output unchanged because padded tokens are masked out.
4. Transformer (HunyuanVideoTransformer3DModel) with flow matching as FlowMatchEulerDiscreteScheduler
   samples it: x_s = s*noise + (1-s)*x0, target v = noise - x0, timestep = 1000*s, s drawn from the
   shifted-uniform distribution the inference schedule uses, constant embedded guidance 6.0*1000.
   An EMA of the weights is what gets saved.
Every --eval-every steps it generates the held-out prompts through the real pipeline and prints the
color / motion accuracy (synthetic.measure_clip, the measurement the learned-model test will use), and
saves the pipeline.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hyca_batch.models import synthetic as S  # noqa: E402
from hyca_batch.models.metadata import write_model_metadata  # noqa: E402
from hyca_batch.models.mini import (  # noqa: E402
    MINI_DEFAULTS,
    MINI_DIR,
    MINI_GUIDANCE,
    MINI_SCHEDULER_SHIFT,
    build_untrained_mini_pipeline,
)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def to_video_tensor(clips: np.ndarray) -> torch.Tensor:
    """(B, F, H, W, 3) uint8 -> (B, 3, F, H, W) float in [-1, 1], as the pipeline's VAE sees it."""
    return torch.from_numpy(clips).permute(0, 4, 1, 2, 3).float().div(127.5).sub(1.0)


def clips_for(specs: list[S.ClipSpec], frames: int | None = None) -> np.ndarray:
    out = np.stack([S.make_clip(s) for s in specs])
    return out[:, :frames] if frames else out


def train_vae(vae, args) -> list[float]:
    log(f"VAE: {sum(p.numel() for p in vae.parameters()) / 1e6:.2f} M params, "
        f"{args.vae_image_steps} image steps + {args.vae_steps} clip steps")
    specs = S.sample_specs(args.vae_steps * args.vae_batch, args.seed + 1, "train")
    opt = torch.optim.AdamW(vae.parameters(), lr=args.vae_lr, weight_decay=0.0)
    total_steps = args.vae_image_steps + args.vae_steps
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: min(1.0, (i + 1) / 20) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * i / total_steps)))
    )
    vae.train()
    gen = torch.Generator().manual_seed(args.seed + 2)
    frame_rng = np.random.default_rng(args.seed + 6)
    image_specs = S.sample_specs(args.vae_image_steps * args.vae_image_batch, args.seed + 7, "train")
    losses, t0 = [], time.time()
    total = args.vae_image_steps + args.vae_steps
    for step in range(total):
        if step < args.vae_image_steps:
            # Stage 1a: single frames (the causal VAE's first-frame path), 5x cheaper per sample, so
            # the AE learns where and what the object is before it learns time.
            n = args.vae_image_batch
            clips = clips_for(image_specs[step * n : (step + 1) * n])
            x = to_video_tensor(clips[np.arange(n), frame_rng.integers(0, S.NUM_FRAMES, n)][:, None])
        else:
            k = step - args.vae_image_steps
            batch = specs[k * args.vae_batch : (k + 1) * args.vae_batch]
            x = to_video_tensor(clips_for(batch, 5))
        if args.vae_crop < S.HEIGHT:  # the VAE is convolutional: train on windows, 4x cheaper at 32
            c = args.vae_crop
            oy, ox = (8 * torch.randint(0, (S.HEIGHT - c) // 8 + 1, (2,), generator=gen)).tolist()
            x = x[..., oy : oy + c, ox : ox + c].contiguous()
        posterior = vae.encode(x).latent_dist
        # The posterior mean, not a sample: the pipeline only ever decodes means (train_mini encodes
        # them), and at this size the sampling noise (std ~1 at init against latents of std ~0.2)
        # drowned the signal: a sampled VAE decoded static, off-color blobs after 500 steps.
        z = posterior.mean
        if args.vae_sample:
            z = z + posterior.std * torch.randn(posterior.mean.shape, generator=gen)
        y = vae.decode(z).sample
        # Foreground pixels weigh 10x: the object is ~5% of a frame, and an unweighted loss sits for
        # hundreds of steps on the plateau "background right, no object" (seen: rec 0.08 flat).
        # The corner pixel is always background (objects stay >= 1 px from the edges).
        w = 1.0 + (args.vae_fg_weight - 1.0) * ((x - x[..., :1, :1]).abs().amax(1, keepdim=True) > 0.1).float()
        w = w / w.mean()
        rec = (w * (y - x).pow(2)).mean() + 0.5 * (w * (y - x).abs()).mean()
        kl = posterior.kl().mean() / x[0].numel()
        loss = rec + args.vae_kl * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(rec.item())
        if step % 25 == 0 or step == total - 1:
            log(f"VAE step {step + 1}/{total} rec {np.mean(losses[-10:]):.4f} kl/px {kl.item():.3f} "
                f"({time.time() - t0:.0f}s)")
    vae.eval()
    return losses


@torch.no_grad()
def encode_latents(vae, specs, batch=32) -> torch.Tensor:
    out = []
    for i in range(0, len(specs), batch):
        out.append(vae.encode(to_video_tensor(clips_for(specs[i : i + batch]))).latent_dist.mean)
    return torch.cat(out)


@torch.no_grad()
def encode_prompts(pipe, prompts: list[str]):
    embeds, pooled, masks = [], [], []
    for p in prompts:
        e, po, m = pipe.encode_prompt(prompt=p, device=torch.device("cpu"))
        embeds.append(e[0])
        pooled.append(po[0])
        masks.append(m[0])
    return torch.stack(embeds), torch.stack(pooled), torch.stack(masks)


@torch.no_grad()
def evaluate(pipe, seed: int, n_per_combo: int = 1) -> dict:
    """Generate held-out prompts through the pipeline (same call as hyca_batch.generate) and measure."""
    combos = S.combinations("heldout")
    # One background per (color, shape, motion) triple, rotating, so each triple is tried once.
    triples = {}
    for i, c in enumerate(combos):
        triples.setdefault(c[:3], []).append(c)
    chosen = [v[i % len(v)] for i, v in enumerate(triples.values())]
    color_ok = motion_ok = 0
    for i, combo in enumerate(chosen):
        frames = generate(pipe, S.make_prompt(*combo), seed + i)
        m = S.measure_clip(frames)
        color_ok += m.color == combo[0]
        motion_ok += m.motion == combo[2]
    n = len(chosen)
    return {"n": n, "color": color_ok / n, "motion": motion_ok / n}


def generate(pipe, prompt: str, seed: int) -> np.ndarray:
    d = MINI_DEFAULTS
    gen = torch.Generator(device="cpu").manual_seed(seed)
    video = pipe(
        prompt=prompt, height=d.height, width=d.width, num_frames=d.num_frames,
        num_inference_steps=d.num_inference_steps, guidance_scale=d.guidance_scale, generator=gen,
        output_type="np", return_dict=False,
    )[0][0]
    return (np.clip(video, 0, 1) * 255).round().astype(np.uint8)


def save(pipe, out: Path, info: dict) -> None:
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    pipe.save_pretrained(tmp, safe_serialization=True)
    write_model_metadata(tmp, MINI_DEFAULTS, preset="mini", **info)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=MINI_DIR)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--threads", type=int, default=2,
        help="torch threads; use 1 when another process shares the cores: OpenMP threads that wait on a "
        "busy core made every step ~20x slower here",
    )
    ap.add_argument("--vae-steps", type=int, default=200)
    ap.add_argument("--vae-batch", type=int, default=4)
    ap.add_argument("--vae-image-steps", type=int, default=600, help="VAE steps on single frames first")
    ap.add_argument("--vae-image-batch", type=int, default=16)
    ap.add_argument("--vae-lr", type=float, default=1e-3)
    ap.add_argument("--vae-crop", type=int, default=64, help="train the VAE on square crops of this size (64: whole frames)")
    ap.add_argument("--vae-fg-weight", type=float, default=10.0, help="VAE loss weight of foreground pixels")
    ap.add_argument("--vae-sample", action="store_true", help="train the VAE on posterior samples")
    ap.add_argument("--vae-kl", type=float, default=1e-4)
    ap.add_argument("--clips", type=int, default=3000, help="training clips for the transformer")
    ap.add_argument("--steps", type=int, default=800, help="transformer steps")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--ema", type=float, default=0.995)
    ap.add_argument("--eval-every", type=int, default=400)
    ap.add_argument("--save-vae", type=Path, default=None, help="also save the trained VAE to DIR/vae")
    ap.add_argument("--vae-from", type=Path, default=None, help="reuse the VAE of a saved mini directory")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    # Without this, small-weight layers hit denormal floats after a few optimizer steps and every
    # conv runs ~10x slower on CPU (measured: 7 s vs 0.6 s per VAE step).
    torch.set_flush_denormal(True)
    torch.manual_seed(args.seed)
    t_start = time.time()
    pipe = build_untrained_mini_pipeline(args.seed)
    pipe.set_progress_bar_config(disable=True)
    for module in (pipe.text_encoder, pipe.text_encoder_2):
        module.requires_grad_(False)

    # 1. VAE
    if args.vae_from:
        from diffusers import AutoencoderKLHunyuanVideo

        pipe.vae = AutoencoderKLHunyuanVideo.from_pretrained(args.vae_from, subfolder="vae")
        pipe.register_modules(vae=pipe.vae)
        vae_losses = [float("nan")]
        log(f"VAE loaded from {args.vae_from}")
    else:
        vae_losses = train_vae(pipe.vae, args)
        if args.save_vae:
            pipe.vae.save_pretrained(args.save_vae / "vae", safe_serialization=True)
    pipe.vae.requires_grad_(False).eval()

    # 2. latents
    specs = S.sample_specs(args.clips, args.seed + 3, "train")
    t0 = time.time()
    latents = encode_latents(pipe.vae, specs)
    std = latents.std().item()
    pipe.vae.register_to_config(scaling_factor=1.0 / std)
    latents = latents / std
    log(f"encoded {len(specs)} clips to {tuple(latents.shape[1:])} latents in {time.time() - t0:.0f}s; "
        f"std {std:.3f} -> scaling_factor {1.0 / std:.4f}")
    with torch.no_grad():  # reconstruction check on held-out-combination clips
        hs = S.sample_specs(16, args.seed + 4, "heldout")
        x = to_video_tensor(clips_for(hs))
        y = pipe.vae.decode(pipe.vae.encode(x).latent_dist.mean).sample
        rec = ((y + 1) * 127.5).clamp(0, 255).round().byte().permute(0, 2, 3, 4, 1).numpy()
        ok = sum(S.measure_clip(r).color == s.color and S.measure_clip(r).motion == s.motion for r, s in zip(rec, hs))
        log(f"VAE held-out reconstruction mse {(y - x).pow(2).mean().item():.4f}, measured correctly {ok}/16")

    # 3. text
    prompt_list = sorted({s.prompt for s in specs})
    index = {p: i for i, p in enumerate(prompt_list)}
    embeds, pooled, masks = encode_prompts(pipe, prompt_list)
    length = int(masks.sum(1).max())
    embeds, masks = embeds[:, :length].contiguous(), masks[:, :length].contiguous()
    prompt_ids = torch.tensor([index[s.prompt] for s in specs])
    log(f"{len(prompt_list)} prompts encoded; longest {length} tokens")

    # 4. transformer
    tr = pipe.transformer
    tr.train()
    ema = copy.deepcopy(tr).eval().requires_grad_(False)
    n_params = sum(p.numel() for p in tr.parameters())
    log(f"transformer: {n_params / 1e6:.2f} M params, {args.steps} steps of batch {args.batch}")
    opt = torch.optim.AdamW(tr.parameters(), lr=args.lr, weight_decay=0.01, betas=(0.9, 0.99))
    warm = 50
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: min(1.0, (i + 1) / warm) * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * i / args.steps)))
    )
    gen = torch.Generator().manual_seed(args.seed + 5)
    guidance = torch.full((args.batch,), MINI_GUIDANCE * 1000.0)
    shift = MINI_SCHEDULER_SHIFT
    losses: list[float] = []
    history = []
    t0 = time.time()
    for step in range(args.steps):
        idx = torch.randint(len(specs), (args.batch,), generator=gen)
        x0 = latents[idx]
        noise = torch.randn(x0.shape, generator=gen)
        u = torch.rand(args.batch, generator=gen)
        sigma = shift * u / (1 + (shift - 1) * u)
        s = sigma.view(-1, 1, 1, 1, 1)
        xt = s * noise + (1 - s) * x0
        p = prompt_ids[idx]
        pred = tr(
            hidden_states=xt, timestep=sigma * 1000.0, encoder_hidden_states=embeds[p],
            encoder_attention_mask=masks[p], pooled_projections=pooled[p], guidance=guidance, return_dict=False,
        )[0]
        loss = (pred - (noise - x0)).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(tr.parameters(), 1.0)
        opt.step()
        sched.step()
        with torch.no_grad():
            decay = min(args.ema, (1 + step) / (10 + step))
            for pe, pt in zip(ema.parameters(), tr.parameters()):
                pe.lerp_(pt, 1 - decay)
        losses.append(loss.item())
        if step % 25 == 0 or step == args.steps - 1:
            rate = (time.time() - t0) / (step + 1)
            log(f"transformer step {step + 1}/{args.steps} loss {np.mean(losses[-25:]):.4f} "
                f"lr {sched.get_last_lr()[0]:.2e} ({rate:.2f}s/step, eta {rate * (args.steps - step - 1) / 60:.1f} min)")
        if (step + 1) % args.eval_every == 0 or step == args.steps - 1:
            pipe.transformer = ema
            pipe.register_modules(transformer=ema)
            te = time.time()
            acc = evaluate(pipe, seed=1000)
            history.append({"step": step + 1, "loss": float(np.mean(losses[-100:])), **acc})
            info = {
                "seed": args.seed,
                "training": {
                    "script": "benchmarks/train_mini.py",
                    "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                    "steps_done": step + 1,
                    "vae_final_rec_loss": float(np.mean(vae_losses[-20:])),
                    "transformer_final_loss": float(np.mean(losses[-100:])),
                    "latent_std": std,
                    "heldout_eval": history,
                    "wall_s": round(time.time() - t_start),
                },
            }
            save(pipe, args.out, info)
            log(f"EVAL step {step + 1}: held-out color {acc['color']:.2f} motion {acc['motion']:.2f} "
                f"(n={acc['n']}, {time.time() - te:.0f}s); saved {args.out}")
            pipe.transformer = tr
            pipe.register_modules(transformer=tr)
    log(f"done in {(time.time() - t_start) / 60:.1f} min; history {json.dumps(history)}")


if __name__ == "__main__":
    main()

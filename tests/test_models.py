"""Model presets: the tiny offline HunyuanVideo, its tokenizers, saving/loading by path, resolution."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from hyca_batch.models import (
    HUNYUANVIDEO_DEFAULTS,
    HUNYUANVIDEO_HUB_ID,
    MODEL_METADATA_FILENAME,
    PRESETS,
    TINY_DEFAULTS,
    LoadedModel,
    ModelSpec,
    ModelUnavailableError,
    load_model,
    resolve_model,
)
from hyca_batch.models.metadata import write_model_metadata
from hyca_batch.models.tiny import (
    build_tiny_pipeline,
    load_tiny_tokenizers,
    pipeline_fingerprint,
    save_tiny_pipeline,
    tokenizer_definition,
)
from hyca_batch.training.tokenizers import (
    DEFAULT_TEMPLATE_CROP_START,
    build_clip_tokenizer,
    build_llama_tokenizer,
    default_template_prefix,
)
from hyca_batch.training.vocab import ENGLISH_WORDS
from hyca_batch.types import GenerationDefaults

REPO_ROOT = Path(__file__).resolve().parents[1]

UNICODE_PROMPTS = [
    "A red ball moves left on a white background.",
    "一只橙色的猫在草地上奔跑，日落时分",  # CJK
    "🎈🚀 a balloon 🎈 and a rocket 🚀 👩🏽‍🚀",  # emoji, skin tone, ZWJ sequence
    "مرحبا بالعالم — שלום עולם",  # RTL scripts
    "Ünïcödé ñ e\u0301 \u200b zero-width \u0000 nul \x7f del \t tab\r\n",  # combining, control chars
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 math letters, ᚠᛇᚻ runes, ∮ E⋅da = Q",
    "",
    "circle " * 5000,
    "".join(chr(c) for c in range(0x20, 0x3000, 7)),  # a spread of code points across planes 0
]
LONG_PROMPT = "A tiny blue square slides right, then up, then grows. " * 100  # ~5400 chars


def _call(pipeline, prompt: str, seed: int, **overrides) -> np.ndarray:
    d = TINY_DEFAULTS.merged(**overrides)
    return pipeline(
        prompt,
        height=d.height,
        width=d.width,
        num_frames=d.num_frames,
        num_inference_steps=d.num_inference_steps,
        guidance_scale=d.guidance_scale,
        generator=torch.Generator("cpu").manual_seed(seed),
        output_type="np",
    ).frames


@pytest.fixture(scope="module")
def tiny_pipeline():
    pipeline = build_tiny_pipeline(seed=0)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


@pytest.fixture(scope="module")
def saved_tiny(tmp_path_factory) -> Path:
    return save_tiny_pipeline(tmp_path_factory.mktemp("models") / "tiny-saved", seed=0)


@pytest.fixture
def hub_offline(monkeypatch):
    """HF_HUB_OFFLINE=1, also in huggingface_hub's constants, which read the variable at import."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


# --- tokenizers -------------------------------------------------------------------------------


def test_the_shipped_tokenizers_are_what_the_builders_make():
    """The tiny preset loads its tokenizers from files; rebuilding them must give the same tokenizers."""
    llama, clip = load_tiny_tokenizers()
    assert tokenizer_definition(llama) == tokenizer_definition(build_llama_tokenizer())
    assert tokenizer_definition(clip) == tokenizer_definition(build_clip_tokenizer())
    assert clip.model_max_length == build_clip_tokenizer().model_max_length


def test_llama_tokenizer_splits_default_template_prefix_into_crop_start_tokens():
    from diffusers.pipelines.hunyuan_video.pipeline_hunyuan_video import DEFAULT_PROMPT_TEMPLATE

    tok = build_llama_tokenizer()
    assert DEFAULT_PROMPT_TEMPLATE["crop_start"] == DEFAULT_TEMPLATE_CROP_START == 95
    prefix_ids = tok(default_template_prefix()).input_ids
    assert len(prefix_ids) == 95
    assert prefix_ids[0] == tok.bos_token_id
    assert tok.unk_token_id is None or tok.unk_token_id not in prefix_ids
    # The crop must fall exactly between template and prompt: what the pipeline keeps after cropping
    # is the prompt's own tokens followed by <|eot_id|>, whatever the prompt starts with.
    eot_id = tok.convert_tokens_to_ids("<|eot_id|>")
    for prompt in ["A red ball moves left.", " leading space", "circle", "猫 🐱", "3 dots", ""]:
        templated = DEFAULT_PROMPT_TEMPLATE["template"].format(prompt)
        ids = tok(templated).input_ids
        assert ids[:95] == prefix_ids, prompt
        assert ids[95:] == tok(prompt, add_special_tokens=False).input_ids + [eot_id], prompt


def test_llama_tokenizer_round_trips_through_save_pretrained(tmp_path):
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    tok = build_llama_tokenizer()
    tok.save_pretrained(tmp_path)
    for loader in (PreTrainedTokenizerFast, AutoTokenizer):
        loaded = loader.from_pretrained(tmp_path)
        assert isinstance(loaded, PreTrainedTokenizerFast)
        assert tokenizer_definition(loaded) == tokenizer_definition(tok)
        for attr in ("bos_token", "eos_token", "pad_token"):
            assert getattr(loaded, attr) == getattr(tok, attr)
        assert loaded.padding_side == tok.padding_side == "right"
        assert len(loaded) == len(tok)
        for text in UNICODE_PROMPTS + [default_template_prefix()]:
            kwargs = dict(max_length=351, padding="max_length", truncation=True)
            a, b = tok(text, **kwargs), loaded(text, **kwargs)
            assert a.input_ids == b.input_ids and a.attention_mask == b.attention_mask, text[:40]


def test_clip_tokenizer_round_trips_through_save_pretrained(tmp_path):
    from transformers import CLIPTokenizer

    tok = build_clip_tokenizer()
    tok.save_pretrained(tmp_path)
    loaded = CLIPTokenizer.from_pretrained(tmp_path)
    assert tokenizer_definition(loaded) == tokenizer_definition(tok)
    for text in UNICODE_PROMPTS:
        kwargs = dict(max_length=77, padding="max_length", truncation=True)
        assert tok(text, **kwargs).input_ids == loaded(text, **kwargs).input_ids, text[:40]


def test_vocabulary_words_are_single_tokens():
    llama, clip = build_llama_tokenizer(), build_clip_tokenizer()

    def pieces(tok, text: str) -> int:
        return len(tok(text, add_special_tokens=False).input_ids)

    split_llama = [w for w in ENGLISH_WORDS if pieces(llama, " " + w) != 1 or pieces(llama, w.capitalize()) != 1]
    split_clip = [w for w in ENGLISH_WORDS if pieces(clip, w) != 1]
    assert split_llama == [] and split_clip == []
    assert len(set(ENGLISH_WORDS)) > 500
    prompt = "A small green triangle spins clockwise and shrinks on a dark blue background"
    assert len(llama(prompt).input_ids) == 1 + len(prompt.split())  # BOS + one token per word
    assert len(clip(prompt).input_ids) == 2 + len(prompt.split())  # BOS/EOS + one token per word


@pytest.mark.parametrize("text", UNICODE_PROMPTS + [LONG_PROMPT], ids=lambda t: repr(t[:12]))
def test_any_unicode_prompt_tokenizes_without_unknowns(text):
    llama, clip = build_llama_tokenizer(), build_clip_tokenizer()
    assert llama.unk_token_id is None  # byte-level: there is nothing to fall back to
    ids = llama(text).input_ids
    assert ids[0] == llama.bos_token_id
    assert llama.decode(ids, skip_special_tokens=True) == text  # lossless, so nothing was dropped
    # The pipeline's own calls, truncated and padded to its lengths.
    padded = llama(text, max_length=256 + 95, padding="max_length", truncation=True, return_tensors="pt")
    assert padded.input_ids.shape == (1, 351)
    clip_ids = clip(text, max_length=77, padding="max_length", truncation=True).input_ids
    assert len(clip_ids) == 77
    # CLIP's unk is <|endoftext|>: it may only appear from the end of the prompt on (EOS + padding).
    first_eos = clip_ids.index(clip.eos_token_id)
    assert all(i == clip.eos_token_id for i in clip_ids[first_eos:])
    assert clip.eos_token_id not in clip(text, add_special_tokens=False).input_ids


# --- tiny pipeline ----------------------------------------------------------------------------


def _state(pipeline) -> dict[str, torch.Tensor]:
    return {
        f"{name}.{key}": value
        for name in ("text_encoder", "text_encoder_2", "transformer", "vae")
        for key, value in getattr(pipeline, name).state_dict().items()
    }


def test_same_seed_gives_identical_weights_and_different_seed_does_not(tiny_pipeline):
    again, other = _state(build_tiny_pipeline(seed=0)), _state(build_tiny_pipeline(seed=1))
    first = _state(tiny_pipeline)
    assert first.keys() == again.keys() == other.keys()
    assert all(torch.equal(first[k], again[k]) for k in first)
    differing = [k for k in first if not torch.equal(first[k], other[k])]
    # Every randomly initialised tensor differs (constants like norm weights may not).
    assert len(differing) > len(first) // 2
    for component in ("text_encoder.", "text_encoder_2.", "transformer.", "vae."):
        assert any(k.startswith(component) for k in differing), component
    assert pipeline_fingerprint(tiny_pipeline) != pipeline_fingerprint(build_tiny_pipeline(seed=1))


def test_same_seed_gives_identical_weights_in_another_process(tiny_pipeline):
    code = "from hyca_batch.models.tiny import *; print(pipeline_fingerprint(build_tiny_pipeline(0)))"
    env = {**os.environ, "PYTHONHASHSEED": "12345", "HF_HUB_OFFLINE": "1"}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == pipeline_fingerprint(tiny_pipeline)


def test_tiny_components_are_wired_like_hunyuanvideo(tiny_pipeline):
    p = tiny_pipeline
    assert p.transformer.config.text_embed_dim == p.text_encoder.config.hidden_size
    assert p.transformer.config.pooled_projection_dim == p.text_encoder_2.config.hidden_size
    assert p.transformer.config.guidance_embeds is True
    assert sum(p.transformer.config.rope_axes_dim) == p.transformer.config.attention_head_dim
    channels = (p.vae.config.latent_channels, p.transformer.config.in_channels, p.transformer.config.out_channels)
    assert channels == (4, 4, 4)
    assert (p.vae_scale_factor_spatial, p.vae_scale_factor_temporal) == (8, 4)
    assert p.text_encoder.config.num_hidden_layers >= 3  # hidden_states[-3] is a layer's output
    assert p.scheduler.config.shift == 7.0
    # CLIP pools at the first <|endoftext|>, i.e. the end of the prompt.
    assert p.text_encoder_2.config.eos_token_id == p.tokenizer_2.eos_token_id
    ids = p.tokenizer_2(["a red ball"], max_length=77, padding="max_length", return_tensors="pt").input_ids
    with torch.no_grad():
        out = p.text_encoder_2(ids)
    eos_position = 4  # <|startoftext|> a red ball <|endoftext|>
    assert ids[0, eos_position] == p.tokenizer_2.eos_token_id
    assert torch.equal(out.pooler_output[0], out.last_hidden_state[0, eos_position])


def test_tiny_call_is_reproducible_and_has_requested_shape(tiny_pipeline):
    first = _call(tiny_pipeline, "A red ball moves left", seed=7)
    second = _call(tiny_pipeline, "A red ball moves left", seed=7)
    d = TINY_DEFAULTS
    assert first.shape == (1, d.num_frames, d.height, d.width, 3)
    assert np.array_equal(first, second)
    assert first.std() > 0.01  # not a constant image
    assert not np.array_equal(first, _call(tiny_pipeline, "A red ball moves left", seed=8))
    assert not np.array_equal(first, _call(tiny_pipeline, "A blue square moves up", seed=7))
    other = _call(tiny_pipeline, "A red ball", seed=7, height=32, width=48, num_frames=5, num_inference_steps=2)
    assert other.shape == (1, 5, 32, 48, 3)


def test_tiny_pipeline_with_unicode_and_long_prompts(tiny_pipeline):
    for prompt in ("猫 🐱 走路 👩🏽‍🚀", LONG_PROMPT):
        frames = _call(tiny_pipeline, prompt, seed=0, num_inference_steps=1)
        assert frames.shape == (1, TINY_DEFAULTS.num_frames, TINY_DEFAULTS.height, TINY_DEFAULTS.width, 3)
        assert np.isfinite(frames).all()


def test_saved_tiny_loads_by_path_offline_and_matches_in_memory(saved_tiny, tiny_pipeline, hub_offline):
    assert (saved_tiny / "model_index.json").is_file()
    assert list((saved_tiny / "transformer").glob("*.safetensors"))
    meta = json.loads((saved_tiny / MODEL_METADATA_FILENAME).read_text())
    assert meta["defaults"] == {
        "height": 64,
        "width": 64,
        "num_frames": 9,
        "num_inference_steps": 8,
        "guidance_scale": 6.0,
        "fps": 8,
    }
    loaded = load_model(str(saved_tiny), device="cpu")
    assert isinstance(loaded, LoadedModel)
    where = str(saved_tiny.resolve())
    assert loaded.spec == ModelSpec(name=where, kind="diffusers", source=where, defaults=TINY_DEFAULTS)
    assert (loaded.device, loaded.dtype) == (torch.device("cpu"), torch.float32)
    assert loaded.pipeline.transformer.dtype == torch.float32
    assert loaded.pipeline._progress_bar_config.get("disable") is True
    assert loaded.pipeline.vae.use_tiling is True
    assert pipeline_fingerprint(loaded.pipeline) == pipeline_fingerprint(tiny_pipeline)
    prompt = "A small yellow star spins clockwise"
    assert np.array_equal(_call(loaded.pipeline, prompt, seed=3), _call(tiny_pipeline, prompt, seed=3))


def test_load_model_tiny_preset(tiny_pipeline):
    loaded = load_model("tiny", device="cpu")
    assert loaded.spec is PRESETS["tiny"]
    assert (loaded.device, loaded.dtype) == (torch.device("cpu"), torch.float32)
    assert loaded.pipeline._progress_bar_config.get("disable") is True
    assert pipeline_fingerprint(loaded.pipeline) == pipeline_fingerprint(tiny_pipeline)


def test_load_model_hub_id_not_available_offline_names_source_and_fix(hub_offline, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))  # an empty cache, whatever this machine has
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf-home" / "hub"))
    with pytest.raises(ModelUnavailableError) as info:
        load_model("no-such-org/no-such-model", device="cpu")
    message = str(info.value)
    assert "'no-such-org/no-such-model'" in message
    assert "hf download no-such-org/no-such-model" in message and "--local-dir" in message
    assert "HF_HUB_OFFLINE" in message
    assert isinstance(info.value, OSError)


def test_load_model_broken_local_directory_names_it(saved_tiny, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(saved_tiny, broken)
    for weights in (broken / "transformer").glob("*.safetensors"):
        weights.unlink()
    with pytest.raises(ModelUnavailableError) as info:
        load_model(str(broken), device="cpu")
    assert f"local directory {str(broken.resolve())!r}" in str(info.value)
    assert "transformer" in str(info.value)


# --- resolve_model ----------------------------------------------------------------------------


def test_resolve_presets():
    tiny = resolve_model("tiny")
    assert tiny == ModelSpec(name="tiny", kind="tiny", source="", defaults=TINY_DEFAULTS, video_timeout_s=600.0)
    assert tiny.max_tokens == 118_800  # HunyuanVideo's largest documented size: 720x1280x129
    assert TINY_DEFAULTS == GenerationDefaults(64, 64, 9, 8, 6.0, 8)
    hv = resolve_model("hunyuanvideo")
    assert hv == ModelSpec(
        name="hunyuanvideo",
        kind="diffusers",
        source="hunyuanvideo-community/HunyuanVideo",
        defaults=HUNYUANVIDEO_DEFAULTS,
    )
    assert HUNYUANVIDEO_DEFAULTS == GenerationDefaults(720, 1280, 129, 50, 6.0, 24)
    hub = resolve_model(HUNYUANVIDEO_HUB_ID)
    assert hub == ModelSpec(HUNYUANVIDEO_HUB_ID, "diffusers", HUNYUANVIDEO_HUB_ID, HUNYUANVIDEO_DEFAULTS)
    other = resolve_model("some-org/Some_Model.v2")
    assert (other.kind, other.source, other.defaults) == ("diffusers", "some-org/Some_Model.v2", HUNYUANVIDEO_DEFAULTS)
    for d in (TINY_DEFAULTS, HUNYUANVIDEO_DEFAULTS):
        assert d.height % 16 == 0 and d.width % 16 == 0 and (d.num_frames - 1) % 4 == 0


def test_resolve_shipped_preset_without_its_weights_is_a_clear_error(tmp_path, monkeypatch):
    from hyca_batch.models import registry

    missing = tmp_path / "weights" / "mini"
    monkeypatch.setitem(registry.PRESETS, "mini", ModelSpec("mini", "diffusers", str(missing), TINY_DEFAULTS))
    with pytest.raises(ValueError, match=r"'mini' preset's weights are missing.*train_mini\.py"):
        resolve_model("mini")


def test_resolve_is_cheap():
    code = (
        "import sys; from hyca_batch.models import resolve_model;"
        "resolve_model('tiny'); resolve_model('hunyuanvideo'); resolve_model('mini');"
        "print(sorted(m for m in ('diffusers', 'transformers', 'tokenizers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"


def test_resolve_saved_directory_reads_its_defaults(saved_tiny, monkeypatch):
    spec = resolve_model(str(saved_tiny))
    assert spec.kind == "diffusers" and spec.name == spec.source == str(saved_tiny.resolve())
    assert spec.defaults == TINY_DEFAULTS
    # A relative spelling resolves to the same absolute path.
    monkeypatch.chdir(saved_tiny.parent)
    assert resolve_model(saved_tiny.name) == spec
    assert resolve_model(f"./{saved_tiny.name}") == spec


def test_resolve_directory_with_custom_or_missing_metadata(tmp_path):
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "model_index.json").write_text("{}")
    assert resolve_model(str(plain)).defaults == HUNYUANVIDEO_DEFAULTS
    custom = GenerationDefaults(96, 160, 13, num_inference_steps=4, guidance_scale=1.0, fps=12)
    write_model_metadata(plain, custom)
    assert resolve_model(str(plain)).defaults == custom
    (plain / MODEL_METADATA_FILENAME).write_text('{"defaults": {"height": 64}}')
    with pytest.raises(ValueError, match=r"hyca_batch\.json.*missing fields"):
        resolve_model(str(plain))
    (plain / MODEL_METADATA_FILENAME).write_text("not json")
    with pytest.raises(ValueError, match=str(plain / MODEL_METADATA_FILENAME)):
        resolve_model(str(plain))


def test_resolve_directory_without_model_index_is_a_clear_error(tmp_path):
    empty = tmp_path / "not-a-model"
    empty.mkdir()
    with pytest.raises(ValueError) as info:
        resolve_model(str(empty))
    assert str(empty.resolve()) in str(info.value) and "model_index.json" in str(info.value)
    weights = tmp_path / "weights.safetensors"
    weights.write_bytes(b"")
    with pytest.raises(ValueError, match="is a file"):
        resolve_model(str(weights))


@pytest.mark.parametrize(
    "model", ["nonsense!", "tiny-ish", "./missing/model", "a/b/c", "", "org/na me", "-org/name", "org--x/y"]
)
def test_resolve_nonsense_is_a_clear_error(model, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError) as info:
        resolve_model(model)
    assert "tiny" in str(info.value) and "hunyuanvideo" in str(info.value)
    assert repr(model) in str(info.value)

"""A tiny HunyuanVideo that needs no download: the real diffusers/transformers classes at toy sizes.

Tests, CI and the demo run the production code path (HunyuanVideoPipeline, its transformer, VAE, Llama
and CLIP text encoders, the flow-matching scheduler) on a CPU in seconds. Weights are random but
seeded, so the same seed gives bit-identical weights in every process: a job driver and its replicas
agree on the model without shipping it around.

The tokenizers are not random: byte-level BPE over a small English vocabulary, built by
``hyca_batch.training.tokenizers`` and shipped in ``weights/tiny``, shaped so that the pipeline's default
prompt template works unchanged. That keeps a tiny pipeline saved to disk indistinguishable, to the loading
code, from the real model.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from hyca_batch.models.metadata import write_model_metadata
from hyca_batch.types import GenerationDefaults

if TYPE_CHECKING:  # the heavy imports wait until a model is really built (resolve_model stays cheap)
    from diffusers import HunyuanVideoPipeline
    from transformers import CLIPTokenizer, PreTrainedTokenizerFast

# 8 steps keep a call well under a second on a CPU while leaving room for a cache schedule (full
# step, forecast steps, full step); 9 frames = 3 latent frames, 64x64 = 8x8 latents = 4x4 patches.
TINY_DEFAULTS = GenerationDefaults(height=64, width=64, num_frames=9, num_inference_steps=8, guidance_scale=6.0, fps=8)

CLIP_MAX_LENGTH = 77  # what HunyuanVideoPipeline asks CLIP for
#: The shipped tokenizers (Llama-style, CLIP), as HunyuanVideoPipeline names its components.
TINY_TOKENIZER_DIRS = {
    name: Path(__file__).resolve().parent / "weights" / "tiny" / name for name in ("tokenizer", "tokenizer_2")
}
_LLAMA_HIDDEN, _CLIP_HIDDEN = 32, 24

#: The tiny transformer and VAE: HunyuanVideo's shapes where they matter (patch 2 in space and 1 in time, an
#: 8x/4x VAE, guidance embedding, double- and single-stream blocks), at toy widths.
TINY_TRANSFORMER: dict[str, Any] = dict(
    in_channels=4,
    out_channels=4,
    num_attention_heads=2,
    attention_head_dim=16,
    num_layers=2,
    num_single_layers=2,
    num_refiner_layers=1,
    mlp_ratio=2.0,
    patch_size=2,
    patch_size_t=1,
    qk_norm="rms_norm",
    guidance_embeds=True,
    text_embed_dim=_LLAMA_HIDDEN,
    pooled_projection_dim=_CLIP_HIDDEN,
    rope_theta=256.0,
    rope_axes_dim=(4, 6, 6),
)
TINY_VAE: dict[str, Any] = dict(
    in_channels=3,
    out_channels=3,
    latent_channels=4,
    block_out_channels=(8, 8, 8, 8),
    layers_per_block=1,
    norm_num_groups=4,
    spatial_compression_ratio=8,
    temporal_compression_ratio=4,
    mid_block_add_attention=True,
)
TINY_SCHEDULER_SHIFT = 7.0  # HunyuanVideo's shift

ModuleT = TypeVar("ModuleT")


def load_shipped_tokenizers(preset: str, classes: dict[str, type], directories: dict[str, Path]) -> tuple:
    """A preset's shipped tokenizers, one per pipeline component name, in ``classes``' order; a clear error where
    the files are missing."""
    missing = [str(p) for p in directories.values() if not (p / "tokenizer_config.json").is_file()]
    if missing:
        raise FileNotFoundError(
            f"the {preset} tokenizers are missing ({', '.join(missing)}): they ship with the package; in a checkout, "
            "restore them with git or rebuild them with `python -m hyca_batch.training.tokenizers`"
        )
    return tuple(cls.from_pretrained(directories[name]) for name, cls in classes.items())


def load_tiny_tokenizers() -> tuple[PreTrainedTokenizerFast, CLIPTokenizer]:
    """The shipped tokenizers of the ``tiny`` preset."""
    from transformers import CLIPTokenizer, PreTrainedTokenizerFast

    classes = {"tokenizer": PreTrainedTokenizerFast, "tokenizer_2": CLIPTokenizer}
    return load_shipped_tokenizers("tiny", classes, TINY_TOKENIZER_DIRS)


def _seeded(seed: int, component: int, factory: Callable[[], ModuleT]) -> ModuleT:
    """Build one component under its own seed, leaving the caller's RNG state untouched.

    Each component gets a seed of its own (not one stream shared in build order), so adding or
    resizing one component never changes the weights of the others.
    """
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed * 16 + component)
        module = factory()
    module.eval()  # type: ignore[attr-defined]  # as from_pretrained leaves it: no dropout
    return module


def build_tiny_pipeline(seed: int = 0) -> HunyuanVideoPipeline:
    """A HunyuanVideoPipeline with toy-sized real components and weights drawn from ``seed``.

    Shapes mirror HunyuanVideo where it matters to the code around it: patch size 2 in space and 1 in
    time, an 8x/4x VAE, a guidance-embedding transformer with double- and single-stream blocks, a
    Llama encoder whose third-from-last hidden state is used (so 3 layers: the used state is computed
    by a layer, not the raw embeddings), and CLIP pooled at its end-of-text token.
    """
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**59:
        raise ValueError(f"seed must be a non-negative integer below 2**59, got {seed!r}")
    from diffusers import (
        AutoencoderKLHunyuanVideo,
        FlowMatchEulerDiscreteScheduler,
        HunyuanVideoPipeline,
        HunyuanVideoTransformer3DModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, LlamaConfig, LlamaModel

    tokenizer, tokenizer_2 = load_tiny_tokenizers()
    llama_config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=_LLAMA_HIDDEN,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    clip_config = CLIPTextConfig(
        vocab_size=len(tokenizer_2),
        hidden_size=_CLIP_HIDDEN,
        intermediate_size=48,
        projection_dim=_CLIP_HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=CLIP_MAX_LENGTH,
        # Pool at the first <|endoftext|>. The legacy default (eos_token_id=2) pools at the largest
        # token id instead, which is a vocabulary accident, not the end of the prompt.
        bos_token_id=tokenizer_2.bos_token_id,
        eos_token_id=tokenizer_2.eos_token_id,
        pad_token_id=tokenizer_2.pad_token_id,
    )
    text_encoder = _seeded(seed, 0, lambda: LlamaModel(llama_config))
    text_encoder_2 = _seeded(seed, 1, lambda: CLIPTextModel(clip_config))
    transformer = _seeded(seed, 2, lambda: HunyuanVideoTransformer3DModel(**TINY_TRANSFORMER))
    vae = _seeded(seed, 3, lambda: AutoencoderKLHunyuanVideo(**TINY_VAE))
    scheduler = FlowMatchEulerDiscreteScheduler(shift=TINY_SCHEDULER_SHIFT)
    return HunyuanVideoPipeline(
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        transformer=transformer,
        vae=vae,
        scheduler=scheduler,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
    )


def save_tiny_pipeline(path: str | Path, seed: int = 0) -> Path:
    """Save the tiny pipeline for ``seed`` as a diffusers directory (safetensors) plus
    ``hyca_batch.json`` with TINY_DEFAULTS, so loading it by path runs it at its own sizes."""
    directory = Path(path)
    pipeline = build_tiny_pipeline(seed)
    pipeline.save_pretrained(directory, safe_serialization=True)
    write_model_metadata(directory, TINY_DEFAULTS, preset="tiny", seed=seed)
    return directory


def tokenizer_definition(tokenizer: PreTrainedTokenizerFast) -> str:
    """The tokenizer's tokenizer.json without its truncation/padding fields, as canonical JSON.

    Those two fields are per-call state that transformers writes into the backend on every padded
    or truncated call, not part of what the tokenizer is.
    """
    definition = json.loads(tokenizer.backend_tokenizer.to_str())
    definition.pop("truncation", None)
    definition.pop("padding", None)
    return json.dumps(definition, sort_keys=True, ensure_ascii=False)


def pipeline_fingerprint(pipeline: HunyuanVideoPipeline) -> str:
    """SHA-256 over every weight (name, dtype, shape, bytes), both tokenizers and the scheduler config.

    Two processes that built ``build_tiny_pipeline(seed)`` must agree on this; a record can carry it
    to say exactly which weights made a video.
    """
    import hashlib

    import torch

    digest = hashlib.sha256()
    for name in ("text_encoder", "text_encoder_2", "transformer", "vae"):
        state = getattr(pipeline, name).state_dict()
        for key in sorted(state):
            tensor = state[key].detach().to("cpu").contiguous()
            digest.update(f"{name}.{key}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
            digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    for name in ("tokenizer", "tokenizer_2"):
        digest.update(tokenizer_definition(getattr(pipeline, name)).encode("utf-8"))
    # Private config keys are bookkeeping (e.g. ``_use_default_values`` is in set order, which
    # changes with the hash seed), not behaviour.
    scheduler_config = {k: v for k, v in pipeline.scheduler.config.items() if not k.startswith("_")}
    digest.update(json.dumps(scheduler_config, sort_keys=True, default=str).encode())
    return digest.hexdigest()

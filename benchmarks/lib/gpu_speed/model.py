"""The model under test and its inputs, with nothing downloaded: a family's transformer and VAE in the package's
``random_weights`` configurations (HunyuanVideo's real one or the ``tiny`` preset's with --scaled-down; HunyuanVideo
1.5's real one or ``tiny15``'s), random text embeddings in place of the text encoders', and the family's own
denoising loop called with them.

HunyuanVideo takes Llama embeddings with a mask and a pooled CLIP vector, and embeds its guidance (one transformer
pass per step). HunyuanVideo 1.5 takes Qwen2.5-VL embeddings (the pipeline pads them to 1000 tokens) and ByT5
glyph embeddings (padded to 256; all masked for a prompt without quoted text), each with a mask, plus the same four
for the empty negative prompt: real classifier-free guidance, a conditional and an unconditional pass per step. Its
pipeline adds 729 image tokens itself (zeros, masked, for text-to-video).
"""

from __future__ import annotations

from collections.abc import Sequence
from types import SimpleNamespace

import torch

from hyca_batch.models import load_model, random_weights
from hyca_batch.models.adapters import family_of
from hyca_batch.models.random_weights import FAMILIES

HUNYUANVIDEO, HUNYUANVIDEO15 = "hunyuanvideo", "hunyuanvideo15"
#: --family -> (its real configuration, the one --scaled-down uses) in ``random_weights``.
CONFIGURATIONS = {HUNYUANVIDEO: ("hunyuanvideo", "tiny"), HUNYUANVIDEO15: ("hunyuanvideo15", "tiny15")}
#: What the report calls a family.
FAMILY_NAMES = {HUNYUANVIDEO: "HunyuanVideo", HUNYUANVIDEO15: "HunyuanVideo 1.5"}

# The configurations come from the package: HunyuanVideo's real one, and the `tiny` preset's for --scaled-down.
REAL_TRANSFORMER = FAMILIES["hunyuanvideo"][0]
REAL_TRANSFORMER_15 = FAMILIES["hunyuanvideo15"][0]
GUIDANCE = 6.0  # HunyuanVideo's embedded guidance; HunyuanVideo 1.5's classifier-free guidance scale

#: HunyuanVideo 1.5's pipeline: ByT5 tokens (its ``tokenizer_2_max_length``) and image tokens (its
#: ``vision_num_semantic_tokens``).
BYT5_TOKENS = 256
IMAGE_TOKENS = 729
#: Unmasked Qwen tokens of the empty negative prompt: what remains of the chat template after its crop (as the tiny15
#: tokenizer, built to crop like Qwen's, gives for "").
NEGATIVE_VALID = 6


def configuration(family: str, scaled_down: bool) -> str:
    """The ``random_weights`` configuration a run builds."""
    real, small = CONFIGURATIONS[family]
    return small if scaled_down else real


def transformer_config(scaled_down: bool, family: str = HUNYUANVIDEO) -> dict:
    return dict(FAMILIES[configuration(family, scaled_down)][0])


def vae_config(scaled_down: bool, family: str = HUNYUANVIDEO) -> dict:
    return dict(FAMILIES[configuration(family, scaled_down)][1])


def compression(vae_cfg) -> tuple[int, int]:
    """The VAE's (spatial, temporal) compression: 8x/4x for HunyuanVideo, 16x/4x for HunyuanVideo 1.5."""
    return vae_cfg["spatial_compression_ratio"], vae_cfg["temporal_compression_ratio"]


def meta_transformer(config: dict | None = None, family: str = HUNYUANVIDEO) -> torch.nn.Module:
    """The transformer on the meta device: its shapes and parameter count, no memory."""
    from diffusers import HunyuanVideo15Transformer3DModel, HunyuanVideoTransformer3DModel

    if family == HUNYUANVIDEO15:
        cls, default = HunyuanVideo15Transformer3DModel, REAL_TRANSFORMER_15
    else:
        cls, default = HunyuanVideoTransformer3DModel, REAL_TRANSFORMER
    with torch.device("meta"):
        return cls(**(config or default))


def parameter_count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def parameter_bytes(module: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


def build_pipeline(scaled_down: bool, device: torch.device, family: str = HUNYUANVIDEO):
    """The family's pipeline over the random-weight transformer and VAE (the package's ``random_weights`` kind), with
    no text encoders or tokenizers: it is only ever called with precomputed embeddings."""
    return load_model(random_weights(configuration(family, scaled_down)), device=device).pipeline


def block_text_tokens(family: str, tokens: int) -> int:
    """Text positions every block sees (what a cached text feature holds): HunyuanVideo's ``tokens``; HunyuanVideo
    1.5's ``tokens`` Qwen + 256 ByT5 + 729 image positions, joined by its transformer."""
    return tokens + BYT5_TOKENS + IMAGE_TOKENS if family == HUNYUANVIDEO15 else tokens


def expected_passes_per_step(pipe) -> int:
    """Transformer passes per denoising step before any has run (a configuration that is not run): one, or the
    guider's conditions (2 under classifier-free guidance). A run's rows use the passes its cache counted."""
    guider = getattr(pipe, "guider", None)
    return int(guider.num_conditions) if guider is not None else 1


def text_inputs(
    config, tokens: int, valid: int, device: torch.device, dtype: torch.dtype, seed: int = 0, family: str = HUNYUANVIDEO
) -> dict:
    """What the text encoders would give. HunyuanVideo: (1, tokens, text_dim) embeddings whose first ``valid`` are
    unmasked, and a pooled vector. HunyuanVideo 1.5: (1, tokens, text_embed_dim) Qwen embeddings whose first
    ``valid`` are unmasked and (1, 256, text_embed_2_dim) ByT5 ones, all masked (zeros, as the pipeline gives for a
    prompt without quoted text), and the same for the empty negative prompt (``NEGATIVE_VALID`` unmasked)."""
    gen = torch.Generator(device="cpu").manual_seed(seed)

    def mask(n: int, length: int) -> torch.Tensor:
        m = torch.zeros(1, length, dtype=torch.long)
        m[:, :n] = 1
        return m.to(device)

    if family != HUNYUANVIDEO15:
        return {
            "prompt_embeds": torch.randn(1, tokens, config["text_embed_dim"], generator=gen).to(device, dtype),
            "pooled_prompt_embeds": torch.randn(1, config["pooled_projection_dim"], generator=gen).to(device, dtype),
            "prompt_attention_mask": mask(valid, tokens),
        }
    inputs = {}
    for prefix, unmasked in (("", valid), ("negative_", min(NEGATIVE_VALID, tokens))):
        inputs[f"{prefix}prompt_embeds"] = torch.randn(1, tokens, config["text_embed_dim"], generator=gen).to(
            device, dtype
        )
        inputs[f"{prefix}prompt_embeds_mask"] = mask(unmasked, tokens)
        inputs[f"{prefix}prompt_embeds_2"] = torch.zeros(1, BYT5_TOKENS, config["text_embed_2_dim"], device=device).to(
            dtype
        )
        inputs[f"{prefix}prompt_embeds_mask_2"] = mask(0, BYT5_TOKENS)
    return inputs


def denoise(pipe, inputs: dict, size: Sequence[int], steps: int, seed: int, stop_after: int | None = None):
    """The family's own denoising loop over ``inputs`` (``text_inputs``), through its adapter's ``denoise``, latents
    out; with ``stop_after`` only the first that many steps of the ``steps``-step schedule run: a transformer
    pre-hook raises the pipeline's own interrupt during the last wanted step (both pipelines check it when a step
    begins, so every pass of that step still runs and the remaining steps are skipped)."""
    h, w, f = size
    generator = torch.Generator(device="cpu").manual_seed(seed)
    request = SimpleNamespace(height=h, width=w, num_frames=f, num_inference_steps=steps, guidance_scale=GUIDANCE)
    handle = None
    if stop_after is not None:
        seen: list = []  # the timesteps of the steps begun so far

        def interrupt(module, args, kwargs) -> None:
            t = kwargs.get("timestep")
            t = None if t is None else float(t.flatten()[0])
            if not seen or seen[-1] != t:
                seen.append(t)
            if len(seen) >= stop_after:
                pipe._interrupt = True

        handle = pipe.transformer.register_forward_pre_hook(interrupt, with_kwargs=True)
    try:
        return family_of(pipe.transformer).denoise(pipe, inputs, request, generator, None)
    finally:
        if handle is not None:
            handle.remove()

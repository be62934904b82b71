"""A model family's real transformer and VAE with random weights and no text encoders.

Speed and memory at HunyuanVideo's real size need no trained weights: the transformer (12.8 B parameters) is
built on the meta device and materialized on the target device with random weights drawn there, so it takes
seconds and never touches host memory. The pipeline has no text encoders or tokenizers; it is only ever called
with text embeddings (``benchmarks/gpu_speed.py``).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch

from hyca_batch.models.hunyuanvideo import HUNYUANVIDEO_SCHEDULER_SHIFT, HUNYUANVIDEO_TRANSFORMER, HUNYUANVIDEO_VAE
from hyca_batch.models.hunyuanvideo15 import (
    HUNYUANVIDEO15_SCHEDULER_SHIFT,
    HUNYUANVIDEO15_TRANSFORMER,
    HUNYUANVIDEO15_VAE,
    TINY15_SCHEDULER_SHIFT,
    TINY15_TRANSFORMER,
    TINY15_VAE,
)
from hyca_batch.models.tiny import TINY_SCHEDULER_SHIFT, TINY_TRANSFORMER, TINY_VAE

if TYPE_CHECKING:
    from diffusers import HunyuanVideoPipeline

#: configuration -> (transformer config, VAE config, scheduler shift)
FAMILIES: dict[str, tuple[dict[str, Any], dict[str, Any], float]] = {
    "hunyuanvideo": (HUNYUANVIDEO_TRANSFORMER, HUNYUANVIDEO_VAE, HUNYUANVIDEO_SCHEDULER_SHIFT),
    "tiny": (TINY_TRANSFORMER, TINY_VAE, TINY_SCHEDULER_SHIFT),
    "hunyuanvideo15": (HUNYUANVIDEO15_TRANSFORMER, HUNYUANVIDEO15_VAE, HUNYUANVIDEO15_SCHEDULER_SHIFT["480p"]),
    "tiny15": (TINY15_TRANSFORMER, TINY15_VAE, TINY15_SCHEDULER_SHIFT),
}
#: The configurations of HunyuanVideo 1.5's classes (the others are the first HunyuanVideo's).
HUNYUANVIDEO15_CONFIGS = ("hunyuanvideo15", "tiny15")


@torch.no_grad()
def random_init_(module: torch.nn.Module, seed: int) -> None:
    """Weights ~ N(0, 1/fan_in) (a layer keeps its input's scale), biases 0, norm weights 1, drawn on the module's
    device."""
    device = next(module.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)
    for name, param in module.named_parameters():
        if param.ndim == 1:
            param.fill_(0.0 if name.endswith("bias") else 1.0)
        else:
            param.normal_(0.0, 1.0 / math.sqrt(param[0].numel()), generator=gen)


def build_on(cls: type, config: dict[str, Any], device: torch.device, dtype: torch.dtype, seed: int) -> torch.nn.Module:
    """``cls(**config)`` built on the meta device, materialized on ``device`` in ``dtype``, randomly initialized."""
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # parameters are created in ``dtype``: no cast, no fp32 copy anywhere
    try:
        with torch.device("meta"):
            module = cls(**config)
    finally:
        torch.set_default_dtype(default)
    module = module.to_empty(device=device)
    random_init_(module, seed)
    return module.eval().requires_grad_(False)


def build_random_pipeline(family: str, device: torch.device, dtype: torch.dtype, seed: int = 0) -> HunyuanVideoPipeline:
    """The family's pipeline over its random-weight transformer and VAE (tiling on), without text encoders: a
    HunyuanVideoPipeline, or a HunyuanVideo15Pipeline with classifier-free guidance at 6.0."""
    from diffusers import (
        AutoencoderKLHunyuanVideo,
        AutoencoderKLHunyuanVideo15,
        ClassifierFreeGuidance,
        FlowMatchEulerDiscreteScheduler,
        HunyuanVideo15Pipeline,
        HunyuanVideo15Transformer3DModel,
        HunyuanVideoPipeline,
        HunyuanVideoTransformer3DModel,
    )

    transformer_config, vae_config, shift = FAMILIES[family]
    v15 = family in HUNYUANVIDEO15_CONFIGS
    transformer_cls = HunyuanVideo15Transformer3DModel if v15 else HunyuanVideoTransformer3DModel
    transformer = build_on(transformer_cls, transformer_config, device, dtype, seed)
    vae = build_on(
        AutoencoderKLHunyuanVideo15 if v15 else AutoencoderKLHunyuanVideo, vae_config, device, dtype, seed + 1
    )
    vae.enable_tiling()
    parts = dict(
        text_encoder=None,
        tokenizer=None,
        transformer=transformer,
        vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=shift),
        text_encoder_2=None,
        tokenizer_2=None,
    )
    if v15:
        return HunyuanVideo15Pipeline(**parts, guider=ClassifierFreeGuidance(guidance_scale=6.0))
    return HunyuanVideoPipeline(**parts)

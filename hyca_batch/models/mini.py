"""``mini``: a miniature HunyuanVideo trained by the project on synthetic clips, shipped as weights.

Same diffusers classes as the real model (HunyuanVideoPipeline, HunyuanVideoTransformer3DModel with
double- and single-stream blocks and guidance embedding, AutoencoderKLHunyuanVideo with 8x spatial
and 4x temporal compression, Llama + CLIP text encoders, FlowMatchEulerDiscreteScheduler), at a size
that trains on two CPU cores in well under an hour (``benchmarks/train_mini.py``). The text encoders
and tokenizers are the tiny seeded ones (frozen, random); the VAE and the transformer are trained.

The weights live in ``hyca_batch/models/weights/mini`` as a diffusers directory written by
``save_pretrained`` (safetensors) plus ``hyca_batch.json``; the ``mini`` preset loads it through
``HunyuanVideoPipeline.from_pretrained``, the same local-directory path as the real model.

Importing this module is cheap: torch/diffusers are imported inside the builders.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from hyca_batch.config import GenerationDefaults

if TYPE_CHECKING:
    from diffusers import AutoencoderKLHunyuanVideo, HunyuanVideoPipeline, HunyuanVideoTransformer3DModel

MINI_DIR = Path(__file__).resolve().parent / "weights" / "mini"

# 64x64, 9 frames (3 latent frames of 8x8), 24 steps. guidance_scale is HunyuanVideo's embedded
# guidance (the transformer was trained with exactly 6.0 x 1000 in its guidance embedder).
MINI_DEFAULTS = GenerationDefaults(
    height=64, width=64, num_frames=9, num_inference_steps=24, guidance_scale=6.0, fps=8
)

# Lower than HunyuanVideo's 7.0: an 8x8 latent needs less time at high noise.
MINI_SCHEDULER_SHIFT = 3.0
MINI_GUIDANCE = 6.0
MINI_LATENT_CHANNELS = 16
MINI_TEXT_SEED = 0  # the tiny pipeline whose frozen text encoders and tokenizers mini uses


def build_mini_vae(seed: int = 0, norm_num_groups: int = 2) -> "AutoencoderKLHunyuanVideo":
    import torch
    from diffusers import AutoencoderKLHunyuanVideo

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed * 16 + 3)
        return AutoencoderKLHunyuanVideo(
            in_channels=3,
            out_channels=3,
            latent_channels=MINI_LATENT_CHANNELS,
            block_out_channels=(8, 16, 32, 32),
            layers_per_block=1,
            norm_num_groups=norm_num_groups,
            spatial_compression_ratio=8,
            temporal_compression_ratio=4,
            mid_block_add_attention=True,
            scaling_factor=1.0,  # set from the latents' std after the VAE is trained
        )


def build_mini_transformer(text_embed_dim: int, pooled_dim: int, seed: int = 0) -> "HunyuanVideoTransformer3DModel":
    import torch
    from diffusers import HunyuanVideoTransformer3DModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed * 16 + 2)
        return HunyuanVideoTransformer3DModel(
            in_channels=MINI_LATENT_CHANNELS,
            out_channels=MINI_LATENT_CHANNELS,
            num_attention_heads=4,
            attention_head_dim=32,
            num_layers=2,
            num_single_layers=4,
            num_refiner_layers=1,
            mlp_ratio=4.0,
            patch_size=2,
            patch_size_t=1,
            qk_norm="rms_norm",
            guidance_embeds=True,
            text_embed_dim=text_embed_dim,
            pooled_projection_dim=pooled_dim,
            rope_theta=256.0,
            rope_axes_dim=(8, 12, 12),
        )


def build_untrained_mini_pipeline(seed: int = 0) -> "HunyuanVideoPipeline":
    """The mini pipeline before training: tiny frozen text path, fresh VAE and transformer."""
    from diffusers import FlowMatchEulerDiscreteScheduler, HunyuanVideoPipeline

    from hyca_batch.models.tiny import build_tiny_pipeline

    tiny = build_tiny_pipeline(MINI_TEXT_SEED)
    transformer = build_mini_transformer(
        tiny.text_encoder.config.hidden_size, tiny.text_encoder_2.config.hidden_size, seed
    )
    return HunyuanVideoPipeline(
        text_encoder=tiny.text_encoder,
        tokenizer=tiny.tokenizer,
        transformer=transformer,
        vae=build_mini_vae(seed),
        scheduler=FlowMatchEulerDiscreteScheduler(shift=MINI_SCHEDULER_SHIFT),
        text_encoder_2=tiny.text_encoder_2,
        tokenizer_2=tiny.tokenizer_2,
    )


def mini_available(directory: str | Path = MINI_DIR) -> bool:
    return (Path(directory) / "model_index.json").is_file()

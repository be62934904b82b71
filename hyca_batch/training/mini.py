"""``mini``: a miniature HunyuanVideo trained by the project on synthetic clips, shipped as weights.

Same diffusers classes as the real model (HunyuanVideoPipeline, HunyuanVideoTransformer3DModel with
double- and single-stream blocks and guidance embedding, AutoencoderKLHunyuanVideo with causal 3D
convolutions and 4x temporal compression, Llama + CLIP text encoders, FlowMatchEulerDiscreteScheduler),
at a size that trains on two CPU cores in well under an hour (``benchmarks/train_mini.py``). The text
encoders and tokenizers are the tiny seeded ones (frozen, random); the VAE and the transformer are
trained.

The latent space is fixed by construction rather than learned: channels 0-11 of a latent frame are
the 4x4-pooled RGB of the (up to) four video frames it covers, channels 12-15 are zero
(``latent_target``). The VAE's encoder is trained to produce exactly that and its decoder to invert
it. Why: with a learned latent space the VAE did not learn to place or color the object within the
time budget (its GroupNorms erase absolute color on flat backgrounds, and the encoder and decoder
had to agree on a code first), and a fixed latent space lets the VAE and the transformer train at the
same time, one per core.

The weights live in ``hyca_batch/models/weights/mini`` as a diffusers directory written by
``save_pretrained`` (safetensors) plus ``hyca_batch.json``; the ``mini`` preset (``hyca_batch.models``) loads
it through ``HunyuanVideoPipeline.from_pretrained``, the same local-directory path as the real model. This
module only builds and trains it; the runtime never imports it.

Importing this module is cheap: torch/diffusers are imported inside the builders.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hyca_batch.models.registry import MINI_DEFAULTS
from hyca_batch.models.tiny import build_tiny_pipeline  # mini's frozen text encoders and tokenizers are tiny's

if TYPE_CHECKING:
    import torch
    from diffusers import AutoencoderKLHunyuanVideo, HunyuanVideoPipeline, HunyuanVideoTransformer3DModel

# Lower than HunyuanVideo's 7.0: a 16x16 latent needs less time at high noise.
MINI_SCHEDULER_SHIFT = 3.0
MINI_GUIDANCE = MINI_DEFAULTS.guidance_scale  # the transformer was trained with exactly this x 1000 embedded
MINI_LATENT_CHANNELS = 16
MINI_SPATIAL_COMPRESSION = 4
MINI_TEMPORAL_COMPRESSION = 4
MINI_TEXT_SEED = 0  # the tiny pipeline whose frozen text encoders and tokenizers mini uses


def latent_target(video: torch.Tensor) -> torch.Tensor:
    """The mini latent of ``video`` (B, 3, F, H, W) in [-1, 1], F = 1 + 4k: (B, 16, 1 + k, H/4, W/4).

    Latent frame 0 covers video frame 0 alone (the causal VAE's first frame), latent frame j >= 1
    video frames 4j-3 .. 4j. Channels 3i..3i+2 hold the 4x4 mean RGB of the i-th of those frames
    (frame 0 repeated four times for latent frame 0); channels 12-15 are zero.
    """
    import torch
    import torch.nn.functional as F

    s, t = MINI_SPATIAL_COMPRESSION, MINI_TEMPORAL_COMPRESSION
    b, c, f, h, w = video.shape
    if c != 3 or (f - 1) % t or h % s or w % s:
        raise ValueError(f"expected (B, 3, 1 + {t}k, H, W) with H, W divisible by {s}, got {tuple(video.shape)}")
    pooled = F.avg_pool3d(video, (1, s, s))
    first = pooled[:, :, :1].repeat(1, t, 1, 1, 1)
    rest = pooled[:, :, 1:].reshape(b, c, (f - 1) // t, t, h // s, w // s)
    rest = rest.permute(0, 3, 1, 2, 4, 5).reshape(b, c * t, (f - 1) // t, h // s, w // s)
    code = torch.cat([first, rest], dim=2)
    pad = code.new_zeros((b, MINI_LATENT_CHANNELS - c * t, *code.shape[2:]))
    return torch.cat([code, pad], dim=1)


def latent_preview(latent: torch.Tensor) -> torch.Tensor:
    """The inverse of ``latent_target`` up to the pooling: (B, 16, 1 + k, h, w) -> (B, 3, 1 + 4k, 4h, 4w).

    Each pooled pixel becomes a 4x4 block. Used to judge what the transformer generated without the
    VAE decoder in the way.
    """
    import torch

    s, t = MINI_SPATIAL_COMPRESSION, MINI_TEMPORAL_COMPRESSION
    b, _, f, h, w = latent.shape
    code = latent[:, : 3 * t]
    first = code[:, :3, :1]
    rest = code[:, :, 1:].reshape(b, t, 3, f - 1, h, w).permute(0, 2, 3, 1, 4, 5).reshape(b, 3, (f - 1) * t, h, w)
    frames = torch.cat([first, rest], dim=2)
    return frames.repeat_interleave(s, dim=3).repeat_interleave(s, dim=4)


def build_mini_vae(seed: int = 0) -> AutoencoderKLHunyuanVideo:
    """Three blocks (4x spatial, 4x temporal). The full-resolution block, where almost all of the
    convolution work is, has 16 channels and the others 32: with 32 everywhere a training step took
    2.8 s on one core (3D convolution backward), over the whole time budget. One norm group: with more,
    each group of a few channels is normalized on its own and flat backgrounds lose their color (seen
    with 2 and 4 groups)."""
    import torch
    from diffusers import AutoencoderKLHunyuanVideo

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed * 16 + 3)
        return AutoencoderKLHunyuanVideo(
            in_channels=3,
            out_channels=3,
            latent_channels=MINI_LATENT_CHANNELS,
            down_block_types=("HunyuanVideoDownBlock3D",) * 3,
            up_block_types=("HunyuanVideoUpBlock3D",) * 3,
            block_out_channels=(16, 32, 32),
            layers_per_block=1,
            norm_num_groups=1,
            spatial_compression_ratio=MINI_SPATIAL_COMPRESSION,
            temporal_compression_ratio=MINI_TEMPORAL_COMPRESSION,
            mid_block_add_attention=True,
            scaling_factor=1.0,  # set by train_mini from the std of the training latents
        )


def build_mini_transformer(
    text_embed_dim: int, pooled_dim: int, seed: int = 0, double_blocks: int = 1, single_blocks: int = 2
) -> HunyuanVideoTransformer3DModel:
    """Both HunyuanVideo block kinds, few of them: on one CPU core, more optimizer steps on a smaller
    model learned more per minute than fewer steps on 2 double + 4 single blocks (see train_mini)."""
    import torch
    from diffusers import HunyuanVideoTransformer3DModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed * 16 + 2)
        return HunyuanVideoTransformer3DModel(
            in_channels=MINI_LATENT_CHANNELS,
            out_channels=MINI_LATENT_CHANNELS,
            num_attention_heads=4,
            attention_head_dim=32,
            num_layers=double_blocks,
            num_single_layers=single_blocks,
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


def build_untrained_mini_pipeline(seed: int = 0, **transformer_kwargs: int) -> HunyuanVideoPipeline:
    """The mini pipeline before training: tiny frozen text path, fresh VAE and transformer."""
    from diffusers import FlowMatchEulerDiscreteScheduler, HunyuanVideoPipeline

    tiny = build_tiny_pipeline(MINI_TEXT_SEED)
    transformer = build_mini_transformer(
        tiny.text_encoder.config.hidden_size, tiny.text_encoder_2.config.hidden_size, seed, **transformer_kwargs
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

"""The real HunyuanVideo through diffusers: one loading path for a hub id and a local directory (HunyuanVideo 1.5's
directories load through it too: the class is the one their model_index.json names).

Keeping a single ``from_pretrained`` path means the tiny directories the tests save exercise exactly
the code that loads the 13B model on a GPU cluster.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hyca_batch.types import GenerationDefaults, latent_tokens

if TYPE_CHECKING:  # diffusers is imported only when a model is really loaded
    import torch
    from diffusers import HunyuanVideoPipeline

HUNYUANVIDEO_HUB_ID = "hunyuanvideo-community/HunyuanVideo"
# The reference setting of the HunyuanVideo paper and the HyCa benchmarks: 720p, 129 frames (5 s at
# 24 fps), 50 steps, embedded guidance 6.0.
HUNYUANVIDEO_DEFAULTS = GenerationDefaults(
    height=720, width=1280, num_frames=129, num_inference_steps=50, guidance_scale=6.0, fps=24
)
#: The largest size HunyuanVideo documents (720x1280, 129 frames): 118,800 latent tokens. Larger rows are rejected
#: at validation unless --max-tokens says otherwise (a 4096x4096x513 row would need ~100 GB for its frames alone).
HUNYUANVIDEO_MAX_TOKENS = latent_tokens(720, 1280, 129)


# hunyuanvideo-community/HunyuanVideo's transformer/config.json and vae/config.json: the real sizes, for building
# the model with random weights (``random_weights``) where speed and memory, not the pictures, are measured.
HUNYUANVIDEO_TRANSFORMER: dict[str, Any] = dict(
    in_channels=16,
    out_channels=16,
    num_attention_heads=24,
    attention_head_dim=128,
    num_layers=20,
    num_single_layers=40,
    num_refiner_layers=2,
    mlp_ratio=4.0,
    patch_size=2,
    patch_size_t=1,
    qk_norm="rms_norm",
    guidance_embeds=True,
    text_embed_dim=4096,
    pooled_projection_dim=768,
    rope_theta=256.0,
    rope_axes_dim=(16, 56, 56),
)
HUNYUANVIDEO_VAE: dict[str, Any] = dict(
    in_channels=3,
    out_channels=3,
    latent_channels=16,
    block_out_channels=(128, 256, 512, 512),
    layers_per_block=2,
    norm_num_groups=32,
    scaling_factor=0.476986,
    spatial_compression_ratio=8,
    temporal_compression_ratio=4,
    mid_block_add_attention=True,
)
HUNYUANVIDEO_SCHEDULER_SHIFT = 7.0


class ModelUnavailableError(OSError):
    """The pipeline's files cannot be had here (not cached, no Hub access, or a broken directory).

    An OSError, like the error it wraps, so callers that already treat I/O failures as fatal for the
    job (retrying would fail the same way) keep doing so.
    """


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def _unavailable_message(source: str, error: BaseException) -> str:
    cause = str(error).strip().rstrip(".")
    if Path(source).expanduser().is_dir():
        return (
            f"cannot load a video pipeline from the local directory {source!r}: {cause}. "
            "It must be a complete diffusers directory (model_index.json and every component folder "
            "with its weights), e.g. one written by HunyuanVideoPipeline.save_pretrained or "
            f"`hf download {HUNYUANVIDEO_HUB_ID} --local-dir DIR`."
        )
    offline = " (HF_HUB_OFFLINE is set)" if _hub_offline() else ""
    return (
        f"cannot load the video pipeline {source!r}: it is not in the local Hugging Face cache "
        f"and the Hub could not be used{offline}: {cause}. Fix: download it first on a machine with "
        f"network access (`hf download {source}`, with HF_HOME pointing at storage every worker "
        "can read), or download it to a directory and pass that directory as the model "
        f"(`hf download {source} --local-dir DIR`, then --model DIR). If {source!r} was meant as a "
        f"local directory: {Path(source).expanduser().resolve()} does not exist."
    )


def load_diffusers_pipeline(source: str, device: torch.device, dtype: torch.dtype) -> HunyuanVideoPipeline:
    """``DiffusionPipeline.from_pretrained(source)`` in ``dtype`` on ``device``, VAE tiling on: the class its
    model_index.json names (HunyuanVideoPipeline, HunyuanVideo15Pipeline or HunyuanVideo15ImageToVideoPipeline).

    Tiling is what lets a 720p x 129-frame decode fit in one GPU's memory; on small inputs it is a
    no-op. Failure to find the files raises ModelUnavailableError naming the source and the fix.
    """
    import diffusers
    import transformers
    from diffusers import DiffusionPipeline
    from diffusers.pipelines import pipeline_utils

    # Their per-component loading bars, from every replica at once, garble a job's log; the job reports
    # its own progress.
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()

    # Newer diffusers (0.42 here) take ``dtype=`` and deprecate ``torch_dtype=``; older ones, which
    # pyproject still allows, know only ``torch_dtype=`` and would silently ignore ``dtype=``.
    dtype_key = "dtype" if hasattr(pipeline_utils, "_resolve_dtype") else "torch_dtype"
    try:
        pipeline = DiffusionPipeline.from_pretrained(source, **{dtype_key: dtype})
    except (OSError, ValueError) as exc:  # hub not-cached/offline/not-found; ValueError: components missing
        raise ModelUnavailableError(_unavailable_message(source, exc)) from exc
    pipeline.vae.enable_tiling()
    return pipeline.to(device)

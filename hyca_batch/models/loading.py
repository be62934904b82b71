"""Loading a resolved model onto a device: one path per kind, every pipeline placed and configured alike."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from hyca_batch.models.hunyuanvideo import load_diffusers_pipeline
from hyca_batch.models.hunyuanvideo15 import build_tiny15_pipeline, text_to_video
from hyca_batch.models.random_weights import build_random_pipeline
from hyca_batch.models.registry import HV15, KIND_DIFFUSERS, KIND_RANDOM, KIND_TINY, ModelSpec, resolve_model
from hyca_batch.models.tiny import build_tiny_pipeline

if TYPE_CHECKING:
    from diffusers import HunyuanVideoPipeline


@dataclass
class LoadedModel:
    """A pipeline ready to run, with the device/dtype it was placed on (the runner records both)."""

    spec: ModelSpec
    pipeline: HunyuanVideoPipeline  # text-to-video (a HunyuanVideo15Pipeline for 1.5)
    device: torch.device
    dtype: torch.dtype
    # The image-to-video pipeline over the same components (HunyuanVideo 1.5 with an image encoder), else None.
    image_pipeline: Any = None

    @property
    def device_name(self) -> str:
        """The accelerator's product name ("NVIDIA H100 80GB HBM3"), or "cpu": cost reports price by it."""
        if self.device.type == "cuda":
            return torch.cuda.get_device_name(self.device)
        return self.device.type


def resolve_device(device: str | torch.device | None = None, index: int = 0) -> torch.device:
    """The device to run on: ``None`` is CUDA when this process can see a GPU, else the CPU; plain ``cuda`` is
    the ``index``-th GPU (a sequence-parallel rank's own)."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    target = torch.device(device)
    if target.type == "cuda" and target.index is None:
        target = torch.device("cuda", index)
    return target


def load_model(model: str | ModelSpec, device: str | torch.device | None = None) -> LoadedModel:
    """Load (or build) the pipeline for ``model`` on ``device`` (default: ``resolve_device()``).

    bfloat16 on CUDA (HunyuanVideo's inference dtype), float32 on CPU, where bfloat16 matmuls are
    slow and the tiny model's tests want exact, portable numbers. The pipeline's own progress bar is
    turned off: the job reports progress itself, and per-step bars from many replicas garble logs.
    """
    spec = resolve_model(model) if isinstance(model, str) else model
    target = resolve_device(device)
    dtype = torch.bfloat16 if target.type == "cuda" else torch.float32
    if spec.kind == KIND_TINY:
        build = build_tiny15_pipeline if spec.family == HV15 else build_tiny_pipeline
        pipeline = build(seed=0).to(device=target)
        if dtype != torch.float32:  # built in float32; casting a no-op only draws a diffusers warning
            pipeline = pipeline.to(dtype=dtype)
    elif spec.kind == KIND_DIFFUSERS:
        pipeline = load_diffusers_pipeline(spec.source, target, dtype)
    elif spec.kind == KIND_RANDOM:
        pipeline = build_random_pipeline(spec.source, target, dtype)
    else:
        kinds = ", ".join(repr(k) for k in (KIND_TINY, KIND_DIFFUSERS, KIND_RANDOM))
        raise ValueError(f"model {spec.name!r} has unknown kind {spec.kind!r}; expected one of {kinds}")
    image_pipeline = None
    if type(pipeline).__name__ == "HunyuanVideo15ImageToVideoPipeline":
        image_pipeline, pipeline = pipeline, text_to_video(pipeline)
        image_pipeline.set_progress_bar_config(disable=True)
    pipeline.set_progress_bar_config(disable=True)
    return LoadedModel(spec=spec, pipeline=pipeline, device=target, dtype=dtype, image_pipeline=image_pipeline)

"""Model names -> what to load and at which defaults.

Resolution is split from loading so the job driver can validate every manifest row against the
model's sizes (and fail fast on a bad ``--model``) without importing diffusers or touching weights;
only replicas call ``load_model``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from hyca_batch.config import GenerationDefaults
from hyca_batch.models.hunyuanvideo import (
    HUNYUANVIDEO_DEFAULTS,
    HUNYUANVIDEO_HUB_ID,
    load_diffusers_pipeline,
)
from hyca_batch.models.metadata import read_model_defaults
from hyca_batch.models.mini import MINI_DEFAULTS, MINI_DIR
from hyca_batch.models.tiny import TINY_DEFAULTS, build_tiny_pipeline

if TYPE_CHECKING:
    from diffusers import HunyuanVideoPipeline

KIND_TINY = "tiny"
KIND_DIFFUSERS = "diffusers"

# Hugging Face repo ids: "org/name" of letters, digits, '-', '_', '.'; no '--' or '..'.
_HUB_ID = re.compile(r"^(?!.*(--|\.\.))[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}$", re.ASCII)


@dataclass(frozen=True)
class ModelSpec:
    """A resolved model: enough to validate requests and to load it later, anywhere."""

    name: str  # what records show: the preset name, the hub id, or the resolved local path
    kind: str  # "tiny" (built in memory) or "diffusers" (from_pretrained)
    source: str  # hub id or absolute local path ("" for tiny; the package's weights dir for mini)
    defaults: GenerationDefaults


@dataclass
class LoadedModel:
    """A pipeline ready to run, with the device/dtype it was placed on (the runner records both)."""

    spec: ModelSpec
    pipeline: "HunyuanVideoPipeline"
    device: torch.device
    dtype: torch.dtype

    @property
    def device_name(self) -> str:
        """The accelerator's product name ("NVIDIA H100 80GB HBM3"), or "cpu": cost reports price by it."""
        if self.device.type == "cuda":
            return torch.cuda.get_device_name(self.device)
        return self.device.type


PRESETS: dict[str, ModelSpec] = {
    "tiny": ModelSpec(name="tiny", kind=KIND_TINY, source="", defaults=TINY_DEFAULTS),
    # Shipped weights, loaded by path through from_pretrained exactly like a user's local directory.
    "mini": ModelSpec(name="mini", kind=KIND_DIFFUSERS, source=str(MINI_DIR), defaults=MINI_DEFAULTS),
    "hunyuanvideo": ModelSpec(
        name="hunyuanvideo", kind=KIND_DIFFUSERS, source=HUNYUANVIDEO_HUB_ID, defaults=HUNYUANVIDEO_DEFAULTS
    ),
}


def resolve_model(model: str) -> ModelSpec:
    """Turn a ``--model`` value into a ModelSpec without loading anything.

    Accepted, in this order: a preset name; an existing local diffusers directory (defaults from its
    hyca_batch.json, else HunyuanVideo's); a hub id ``org/name``. A local path wins over a hub id of
    the same spelling, as in ``from_pretrained``.
    """
    if not isinstance(model, str) or not model.strip():
        raise ValueError(f"model must be a non-empty string, got {model!r}; presets: {', '.join(PRESETS)}")
    if model in PRESETS:
        spec = PRESETS[model]
        shipped = spec.kind == KIND_DIFFUSERS and Path(spec.source).is_absolute()
        if shipped and not (Path(spec.source) / "model_index.json").is_file():
            raise ValueError(
                f"the {model!r} preset's weights are missing: {spec.source!r} has no model_index.json. "
                f"They ship with the package; in a checkout, restore them with git or retrain them with "
                f"`python benchmarks/train_{model}.py`"
            )
        return spec
    path = Path(model).expanduser()
    if path.exists():
        resolved = path.resolve()
        if not resolved.is_dir():
            raise ValueError(
                f"model path {str(resolved)!r} is a file; expected a diffusers pipeline directory"
            )
        if not (resolved / "model_index.json").is_file():
            raise ValueError(
                f"model directory {str(resolved)!r} has no model_index.json, so it is not a diffusers "
                "pipeline directory (save one with HunyuanVideoPipeline.save_pretrained)"
            )
        defaults = read_model_defaults(resolved) or HUNYUANVIDEO_DEFAULTS
        return ModelSpec(name=str(resolved), kind=KIND_DIFFUSERS, source=str(resolved), defaults=defaults)
    if _HUB_ID.match(model):
        return ModelSpec(name=model, kind=KIND_DIFFUSERS, source=model, defaults=HUNYUANVIDEO_DEFAULTS)
    raise ValueError(
        f"unknown model {model!r}: not a preset ({', '.join(PRESETS)}), not an existing directory "
        f"({str(path.absolute())!r} does not exist), and not a Hugging Face hub id like "
        f"{HUNYUANVIDEO_HUB_ID!r}"
    )


def default_device() -> torch.device:
    """CUDA when this process can see a GPU, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_model(model: str | ModelSpec, device: str | torch.device | None = None) -> LoadedModel:
    """Load (or build) the pipeline for ``model`` on ``device`` (default: ``default_device()``).

    bfloat16 on CUDA (HunyuanVideo's inference dtype), float32 on CPU, where bfloat16 matmuls are
    slow and the tiny model's tests want exact, portable numbers. The pipeline's own progress bar is
    turned off: the job reports progress itself, and per-step bars from many replicas garble logs.
    """
    spec = resolve_model(model) if isinstance(model, str) else model
    target = torch.device(device) if device is not None else default_device()
    dtype = torch.bfloat16 if target.type == "cuda" else torch.float32
    if spec.kind == KIND_TINY:
        pipeline = build_tiny_pipeline(seed=0).to(device=target)
        if dtype != torch.float32:  # built in float32; casting a no-op only draws a diffusers warning
            pipeline = pipeline.to(dtype=dtype)
    elif spec.kind == KIND_DIFFUSERS:
        pipeline = load_diffusers_pipeline(spec.source, target, dtype)
    else:
        raise ValueError(
            f"model {spec.name!r} has unknown kind {spec.kind!r}; expected {KIND_TINY!r} or {KIND_DIFFUSERS!r}"
        )
    pipeline.set_progress_bar_config(disable=True)
    return LoadedModel(spec=spec, pipeline=pipeline, device=target, dtype=dtype)

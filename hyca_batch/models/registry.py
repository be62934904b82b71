"""Model names -> what to load and at which defaults.

Resolution is split from loading (``loading``) so the job driver can validate every manifest row against
the model's sizes (and fail fast on a bad ``--model``) without importing diffusers or touching weights;
only replicas load.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from hyca_batch.models.hunyuanvideo import HUNYUANVIDEO_DEFAULTS, HUNYUANVIDEO_HUB_ID, HUNYUANVIDEO_MAX_TOKENS
from hyca_batch.models.metadata import read_model_defaults
from hyca_batch.models.tiny import TINY_DEFAULTS
from hyca_batch.types import GenerationDefaults

KIND_TINY = "tiny"  # built in memory from a seed
KIND_DIFFUSERS = "diffusers"  # from_pretrained: a hub id or a local directory
KIND_RANDOM = "random"  # a family's real configuration with random weights and no text encoders (benchmarks)

#: The trained miniature (``hyca_batch.training.mini``), shipped as a diffusers directory. 64x64, 9 frames (3
#: latent frames of 16x16), 24 steps; guidance_scale is HunyuanVideo's embedded guidance.
MINI_DIR = Path(__file__).resolve().parent / "weights" / "mini"
MINI_DEFAULTS = GenerationDefaults(height=64, width=64, num_frames=9, num_inference_steps=24, guidance_scale=6.0, fps=8)

# Hugging Face repo ids: "org/name" of letters, digits, '-', '_', '.'; no '--' or '..'.
_HUB_ID = re.compile(r"^(?!.*(--|\.\.))[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}$", re.ASCII)


@dataclass(frozen=True)
class ModelSpec:
    """A resolved model: enough to validate requests and to load it later, anywhere."""

    name: str  # what records show: the preset name, the hub id, or the resolved local path
    kind: str  # "tiny" (built in memory) or "diffusers" (from_pretrained)
    source: str  # hub id or absolute local path ("" for tiny; the package's weights dir for mini)
    defaults: GenerationDefaults
    max_tokens: int = HUNYUANVIDEO_MAX_TOKENS  # the largest video accepted (--max-tokens overrides)
    # How long one video at ``defaults`` may take before it is abandoned (scaled by size and steps; --video-timeout
    # overrides): generous, a hung video is rare and costs at most this.
    video_timeout_s: float = 4 * 3600.0


PRESETS: dict[str, ModelSpec] = {
    "tiny": ModelSpec(name="tiny", kind=KIND_TINY, source="", defaults=TINY_DEFAULTS, video_timeout_s=600.0),
    # Shipped weights, loaded by path through from_pretrained exactly like a user's local directory.
    "mini": ModelSpec(
        name="mini", kind=KIND_DIFFUSERS, source=str(MINI_DIR), defaults=MINI_DEFAULTS, video_timeout_s=600.0
    ),
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
            raise ValueError(f"model path {str(resolved)!r} is a file; expected a diffusers pipeline directory")
        if not (resolved / "model_index.json").is_file():
            raise ValueError(
                f"model directory {str(resolved)!r} has no model_index.json, so it is not a diffusers "
                "pipeline directory (save one with HunyuanVideoPipeline.save_pretrained)"
            )
        defaults = read_model_defaults(resolved) or HUNYUANVIDEO_DEFAULTS
        return ModelSpec(name=str(resolved), kind=KIND_DIFFUSERS, source=str(resolved), defaults=defaults)
    if _HUB_ID.fullmatch(model):
        return ModelSpec(name=model, kind=KIND_DIFFUSERS, source=model, defaults=HUNYUANVIDEO_DEFAULTS)
    raise ValueError(
        f"unknown model {model!r}: not a preset ({', '.join(PRESETS)}), not an existing directory "
        f"({str(path.absolute())!r} does not exist), and not a Hugging Face hub id like "
        f"{HUNYUANVIDEO_HUB_ID!r}"
    )


def random_weights(family: str) -> ModelSpec:
    """``family``'s real transformer and VAE configuration with random weights and no text encoders: what
    speed and memory measurements need, with nothing to download. Not a preset: it cannot encode a prompt,
    so it is for code that passes text embeddings itself (``benchmarks/gpu_speed.py``)."""
    defaults = {"hunyuanvideo": HUNYUANVIDEO_DEFAULTS, "tiny": TINY_DEFAULTS}
    if family not in defaults:
        raise ValueError(f"no random-weight configuration for {family!r}; choose from {', '.join(defaults)}")
    return ModelSpec(name=f"{family}-random", kind=KIND_RANDOM, source=family, defaults=defaults[family])

"""Model names -> what to load and at which defaults.

Resolution is split from loading (``loading``) so the job driver can validate every manifest row against
the model's sizes (and fail fast on a bad ``--model``) without importing diffusers or touching weights;
only replicas load.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from pathlib import Path

from hyca_batch.models.hunyuanvideo import HUNYUANVIDEO_DEFAULTS, HUNYUANVIDEO_HUB_ID, HUNYUANVIDEO_MAX_TOKENS
from hyca_batch.models.hunyuanvideo15 import (
    HUNYUANVIDEO15_DEFAULTS,
    HUNYUANVIDEO15_HUB_IDS,
    HUNYUANVIDEO15_TARGET_SIZE,
    TINY15_DEFAULTS,
    TINY15_TARGET_SIZE,
    i2v_video_size,
)
from hyca_batch.models.metadata import read_model_defaults
from hyca_batch.models.tiny import TINY_DEFAULTS
from hyca_batch.types import GenerationDefaults

KIND_TINY = "tiny"  # built in memory from a seed
KIND_DIFFUSERS = "diffusers"  # from_pretrained: a hub id or a local directory
KIND_RANDOM = "random"  # a family's real configuration with random weights and no text encoders (benchmarks)
HV15 = "hunyuanvideo15"

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
    family: str = "hunyuanvideo"  # "hunyuanvideo" (1.0) or "hunyuanvideo15": which tiny model, which defaults
    max_tokens: int = HUNYUANVIDEO_MAX_TOKENS  # the largest video accepted (--max-tokens overrides)
    # How long one video at ``defaults`` may take before it is abandoned (scaled by size and steps; --video-timeout
    # overrides): generous, a hung video is rare and costs at most this.
    video_timeout_s: float = 4 * 3600.0
    # Image-to-video: the transformer's ``target_size`` when the model takes image rows (HunyuanVideo 1.5 with an
    # image encoder), else None. An image row's video size is the bucket ``i2v_video_size`` picks for its image.
    i2v_target_size: int | None = None

    def image_video_size(self, height: int, width: int) -> tuple[int, int]:
        """The (height, width) of the video this model makes from an image of ``height`` x ``width``."""
        if self.i2v_target_size is None:
            raise ValueError(f"model {self.name!r} has no image-to-video pipeline")
        return i2v_video_size(height, width, self.i2v_target_size)


PRESETS: dict[str, ModelSpec] = {
    "tiny": ModelSpec(name="tiny", kind=KIND_TINY, source="", defaults=TINY_DEFAULTS, video_timeout_s=600.0),
    # Shipped weights, loaded by path through from_pretrained exactly like a user's local directory.
    "mini": ModelSpec(
        name="mini", kind=KIND_DIFFUSERS, source=str(MINI_DIR), defaults=MINI_DEFAULTS, video_timeout_s=600.0
    ),
    "hunyuanvideo": ModelSpec(
        name="hunyuanvideo", kind=KIND_DIFFUSERS, source=HUNYUANVIDEO_HUB_ID, defaults=HUNYUANVIDEO_DEFAULTS
    ),
    # HunyuanVideo 1.5 at toy sizes, random weights, every real component (image-to-video included).
    "tiny15": ModelSpec(
        name="tiny15",
        kind=KIND_TINY,
        source="",
        defaults=TINY15_DEFAULTS,
        family=HV15,
        video_timeout_s=600.0,
        i2v_target_size=TINY15_TARGET_SIZE,
    ),
    **{
        f"hunyuanvideo15-{resolution}" + ("-i2v" if task == "i2v" else ""): ModelSpec(
            name=f"hunyuanvideo15-{resolution}" + ("-i2v" if task == "i2v" else ""),
            kind=KIND_DIFFUSERS,
            source=hub_id,
            defaults=HUNYUANVIDEO15_DEFAULTS[resolution],
            family=HV15,
            i2v_target_size=HUNYUANVIDEO15_TARGET_SIZE[resolution] if task == "i2v" else None,
        )
        for (resolution, task), hub_id in HUNYUANVIDEO15_HUB_IDS.items()
    },
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
        return _directory_spec(resolved)
    if _HUB_ID.fullmatch(model):
        for preset in PRESETS.values():
            if preset.source == model:
                return dataclasses.replace(preset, name=model)
        return ModelSpec(name=model, kind=KIND_DIFFUSERS, source=model, defaults=HUNYUANVIDEO_DEFAULTS)
    raise ValueError(
        f"unknown model {model!r}: not a preset ({', '.join(PRESETS)}), not an existing directory "
        f"({str(path.absolute())!r} does not exist), and not a Hugging Face hub id like "
        f"{HUNYUANVIDEO_HUB_ID!r}"
    )


def _directory_spec(directory: Path) -> ModelSpec:
    """A local diffusers directory's spec: its family from model_index.json's pipeline class; its defaults from
    hyca_batch.json, else the family's (HunyuanVideo 1.5 by its transformer's ``target_size``: 640 is the 480p
    checkpoint, 960 the 720p one); image-to-video when the pipeline is HunyuanVideo 1.5's image one."""
    index = _read_json(directory / "model_index.json")
    pipeline_class = index.get("_class_name", "")
    defaults = read_model_defaults(directory)
    if not str(pipeline_class).startswith("HunyuanVideo15"):
        return ModelSpec(
            name=str(directory), kind=KIND_DIFFUSERS, source=str(directory), defaults=defaults or HUNYUANVIDEO_DEFAULTS
        )
    config_path = directory / "transformer" / "config.json"
    target_size = _read_json(config_path).get("target_size", 640) if config_path.is_file() else 640
    resolution = "720p" if target_size >= HUNYUANVIDEO15_TARGET_SIZE["720p"] else "480p"
    return ModelSpec(
        name=str(directory),
        kind=KIND_DIFFUSERS,
        source=str(directory),
        defaults=defaults or HUNYUANVIDEO15_DEFAULTS[resolution],
        family=HV15,
        i2v_target_size=target_size if pipeline_class == "HunyuanVideo15ImageToVideoPipeline" else None,
    )


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not readable JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return value


def random_weights(family: str) -> ModelSpec:
    """``family``'s real transformer and VAE configuration with random weights and no text encoders: what
    speed and memory measurements need, with nothing to download. Not a preset: it cannot encode a prompt,
    so it is for code that passes text embeddings itself (``benchmarks/gpu_speed.py``)."""
    defaults = {
        "hunyuanvideo": HUNYUANVIDEO_DEFAULTS,
        "tiny": TINY_DEFAULTS,
        HV15: HUNYUANVIDEO15_DEFAULTS["480p"],
        "tiny15": TINY15_DEFAULTS,
    }
    if family not in defaults:
        raise ValueError(f"no random-weight configuration for {family!r}; choose from {', '.join(defaults)}")
    model_family = HV15 if family in (HV15, "tiny15") else "hunyuanvideo"
    return ModelSpec(
        name=f"{family}-random", kind=KIND_RANDOM, source=family, defaults=defaults[family], family=model_family
    )

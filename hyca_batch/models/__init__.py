"""Model presets: the real HunyuanVideo (hub id or local diffusers directory) and the tiny offline one.

Importing this package is cheap (no diffusers/transformers import), so the job driver can resolve and
validate models; weights are only touched by ``load_model``.
"""

from hyca_batch.models.hunyuanvideo import HUNYUANVIDEO_DEFAULTS, HUNYUANVIDEO_HUB_ID, ModelUnavailableError
from hyca_batch.models.metadata import MODEL_METADATA_FILENAME
from hyca_batch.models.registry import (
    KIND_DIFFUSERS,
    KIND_TINY,
    PRESETS,
    LoadedModel,
    ModelSpec,
    default_device,
    load_model,
    resolve_model,
)
from hyca_batch.models.tiny import TINY_DEFAULTS

__all__ = [
    "HUNYUANVIDEO_DEFAULTS",
    "HUNYUANVIDEO_HUB_ID",
    "KIND_DIFFUSERS",
    "KIND_TINY",
    "MODEL_METADATA_FILENAME",
    "PRESETS",
    "TINY_DEFAULTS",
    "LoadedModel",
    "ModelSpec",
    "ModelUnavailableError",
    "default_device",
    "load_model",
    "resolve_model",
]

"""Models: presets and resolution (``registry``, cheap: no diffusers import), loading (``loading``), and one
module per way a pipeline is made (``hunyuanvideo`` from a hub id or directory, ``tiny`` from a seed,
``random_weights`` for real-size benchmarks). Weights are only touched by ``load_model``.
"""

from hyca_batch.models.hunyuanvideo import HUNYUANVIDEO_DEFAULTS, HUNYUANVIDEO_HUB_ID, ModelUnavailableError
from hyca_batch.models.loading import LoadedModel, load_model, resolve_device
from hyca_batch.models.metadata import MODEL_METADATA_FILENAME
from hyca_batch.models.registry import (
    KIND_DIFFUSERS,
    KIND_RANDOM,
    KIND_TINY,
    MINI_DEFAULTS,
    MINI_DIR,
    PRESETS,
    ModelSpec,
    random_weights,
    resolve_model,
)
from hyca_batch.models.tiny import TINY_DEFAULTS

__all__ = [
    "HUNYUANVIDEO_DEFAULTS",
    "HUNYUANVIDEO_HUB_ID",
    "KIND_DIFFUSERS",
    "KIND_RANDOM",
    "KIND_TINY",
    "MINI_DEFAULTS",
    "MINI_DIR",
    "MODEL_METADATA_FILENAME",
    "PRESETS",
    "TINY_DEFAULTS",
    "LoadedModel",
    "ModelSpec",
    "ModelUnavailableError",
    "load_model",
    "random_weights",
    "resolve_device",
    "resolve_model",
]

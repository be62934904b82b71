"""The plain data every layer passes around: what a video is asked to be, and what generating it gave.

This module imports nothing of the package, so the job driver, the replicas, the rank processes and the
cost report all agree on these shapes without pulling each other in. ``REQUEST_SCHEMA`` is a request as an
Arrow row: the form in which the driver holds and ships work (never a Python object per row).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class GenerationDefaults:
    """Per-video generation parameters: a model's defaults, which the job and each manifest row may override.

    Each field's ``help`` is what the command line shows for it (``flag`` where the option is spelled otherwise).
    """

    height: int = field(metadata={"help": "Video height in pixels (a multiple of 16)."})
    width: int = field(metadata={"help": "Video width in pixels (a multiple of 16)."})
    num_frames: int = field(metadata={"help": "Frames per video (4k+1)."})
    num_inference_steps: int = field(metadata={"help": "Denoising steps.", "flag": "steps"})
    guidance_scale: float = field(
        metadata={"help": "Guidance scale (HunyuanVideo's embedded guidance; classifier-free guidance for 1.5)."}
    )
    fps: int = field(metadata={"help": "Frames per second of the mp4."})

    def merged(self, **overrides: Any) -> GenerationDefaults:
        """These defaults with every non-None override applied."""
        return dataclasses.replace(self, **{k: v for k, v in overrides.items() if v is not None})


def latent_tokens(height: int, width: int, num_frames: int) -> int:
    """The transformer tokens of one video, which its memory and time grow with: HunyuanVideo's VAE compresses
    4x in time and 8x in space, and its patches are 2x2 (``manifest`` computes the same over columns)."""
    return ((num_frames - 1) // 4 + 1) * (height // 16) * (width // 16)


#: The fields that determine a video besides its prompt and seed, in schema order.
GENERATION_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(GenerationDefaults))

#: A validated request as it travels from the driver to the replicas (the manifest's carried columns follow).
#: The image fields are null for a text-to-video row. An image-to-video row has ``image_sha256`` (hex, of the bytes
#: the manifest's validation read) and either ``image`` (a local path made absolute, or an ``s3://`` URI: the
#: replica reads it) or ``image_bytes`` (the manifest held the image inline).
REQUEST_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("prompt", pa.string(), nullable=False),
        pa.field("seed", pa.int64(), nullable=False),
        *(
            pa.field(f.name, pa.float64() if f.type in (float, "float") else pa.int64(), nullable=False)
            for f in dataclasses.fields(GenerationDefaults)
        ),
        pa.field("image", pa.string()),
        pa.field("image_sha256", pa.string()),
        pa.field("image_bytes", pa.large_binary()),  # large: a manifest's inline images may pass 2 GB
        pa.field("source_file", pa.string(), nullable=False),
        pa.field("source_row", pa.int64(), nullable=False),
    ]
)


@dataclass(frozen=True)
class Request(GenerationDefaults):
    """One video to generate: its generation parameters (all of them set), prompt and seed, which determine its
    frames, plus where it came from. An image-to-video request also has its image (see ``REQUEST_SCHEMA``): on
    the replica ``image_bytes`` is always set before it generates (``hyca_batch.images.attach_image``)."""

    id: str
    prompt: str
    seed: int
    source_file: str = ""
    source_row: int = -1
    image: str | None = None  # a local path (absolute) or s3:// URI; None for inline bytes and text-to-video
    image_sha256: str | None = None  # of the image's bytes; None for text-to-video
    image_bytes: bytes | None = field(default=None, repr=False)
    extra: dict[str, Any] = field(default_factory=dict)  # the manifest's carried columns

    @classmethod
    def with_defaults(cls, defaults: GenerationDefaults, *, id: str, prompt: str, seed: int) -> Request:
        """A request at ``defaults``: probes, benchmarks and tests that have no manifest row."""
        return cls(id=id, prompt=prompt, seed=seed, **dataclasses.asdict(defaults))

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Request:
        """From a ``REQUEST_SCHEMA`` row (a record's row works too: it has no ``image_bytes``, and records of
        earlier versions no image fields); unknown columns go to ``extra``."""
        known = set(REQUEST_SCHEMA.names)
        return cls(**{k: row[k] for k in known if k in row}, extra={k: v for k, v in row.items() if k not in known})

    @classmethod
    def from_table(cls, table: pa.Table, carried: pa.Schema | None = None) -> Iterator[Request]:
        """The requests of a ``REQUEST_SCHEMA`` table, one at a time; of its other columns only ``carried``
        (the manifest's extra columns) go into ``extra``, so job bookkeeping columns never reach a record."""
        names = [*REQUEST_SCHEMA.names, *(carried.names if carried is not None else ())]
        for row in table.select(names).to_pylist():
            yield cls.from_row(row)

    def generation_params(self) -> dict[str, Any]:
        """Everything that determines the frames (the image by its sha256: None for text-to-video)."""
        return {name: getattr(self, name) for name in ("prompt", "seed", *GENERATION_FIELDS, "image_sha256")}


@dataclass
class GenerationResult:
    """One generated video, with how long its stages took and how many transformer passes it ran."""

    frames: np.ndarray  # (F, H, W, 3) uint8 RGB; empty on sequence-parallel ranks other than 0
    latents: torch.Tensor  # final latents, for fidelity comparisons
    timings: dict[str, float] = field(default_factory=dict)  # text_encode_s, denoise_s, decode_s
    transformer_passes_full: int = 0
    transformer_passes_skipped: int = 0
    mean_full_pass_s: float = 0.0
    cache_parts: dict[str, str] = field(default_factory=dict)  # hyca: the schedule and forecasts this video ran

    @property
    def speedup_estimate(self) -> float:
        """What the loop would have cost with every pass full, over what it cost: (passes x full pass) / denoise."""
        passes = self.transformer_passes_full + self.transformer_passes_skipped
        denoise = self.timings.get("denoise_s", 0.0)
        return passes * self.mean_full_pass_s / denoise if denoise > 0 else 0.0

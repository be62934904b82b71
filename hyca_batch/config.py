"""Typed job configuration: every knob and its default lives here.

Generation parameters left as ``None`` fall back to the model preset's defaults (a 64x64 tiny model and
720p HunyuanVideo want very different sizes), and the manifest can override them per row.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hyca_batch.hyca import FeatureCacheConfig
    from hyca_batch.parallel import ParallelConfig


@dataclass(frozen=True)
class GenerationDefaults:
    """Per-video generation parameters that a manifest row may override."""

    height: int
    width: int
    num_frames: int
    num_inference_steps: int
    guidance_scale: float
    fps: int

    def merged(self, **overrides: Any) -> "GenerationDefaults":
        """These defaults with every non-None override applied."""
        return dataclasses.replace(self, **{k: v for k, v in overrides.items() if v is not None})


@dataclass
class JobConfig:
    """One batch job. Stored (resolved) as run.json under the output URI."""

    manifests: list[str]
    out: str  # a directory, file:// or s3://bucket/prefix
    s3_endpoint_url: str | None = None  # None: AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL / AWS's own
    model: str = "tiny"
    cache: str = "none"  # none | fora | taylorseer | foca | hyca
    interval: int = 6  # a full transformer pass every N steps
    warmup: int = 0  # extra full steps at the start
    granularity: str = "block"  # block (per-module features) or stack (one residual, low memory)
    taylorseer_order: int = 2
    solver_map: str | None = None  # hyca: a calibrated map; None calibrates on the first prompt
    clusters: int = 8  # hyca calibration: channel clusters
    baseline_every: int = 0  # also generate every K-th video uncached, for measured speedup and fidelity
    replicas: int = 1
    sp: int = 1  # sequence-parallel ranks (devices) per replica: one video spread over them
    ulysses: int | None = None  # Ulysses degree; None: as much as the model's heads allow
    ring: int | None = None  # ring degree; ulysses x ring = sp
    sp_attention: str = "auto"  # auto | torch | xfuser
    sp_timeout_s: float = 600.0  # per collective: a dead or hung rank fails the video, never hangs the job
    max_attempts: int = 3
    address: str | None = None  # Ray cluster address; None: RAY_ADDRESS or an embedded local Ray
    device: str | None = None  # None: cuda when available, else cpu
    gpus_per_replica: float | None = None  # None: 1 on a GPU cluster, 0 on CPU
    cpus_per_replica: float = 1.0
    max_prompt_chars: int = 4000
    # Job-wide generation defaults; None means "the model preset's default".
    height: int | None = None
    width: int | None = None
    num_frames: int | None = None
    num_inference_steps: int | None = None
    guidance_scale: float | None = None
    fps: int | None = None
    progress: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    def generation_overrides(self) -> dict[str, Any]:
        """The job-wide generation settings, keyed like GenerationDefaults (None: not set)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(GenerationDefaults)}

    def cache_config(self) -> "FeatureCacheConfig":
        from hyca_batch.hyca import FeatureCacheConfig

        return FeatureCacheConfig(
            mode=self.cache,
            interval=self.interval,
            warmup=self.warmup,
            granularity=self.granularity,
            taylorseer_order=self.taylorseer_order,
        )

    def parallel_config(self) -> "ParallelConfig":
        from hyca_batch.parallel import ParallelConfig

        return ParallelConfig(
            sp=self.sp, ulysses=self.ulysses, ring=self.ring, attention=self.sp_attention, timeout_s=self.sp_timeout_s
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

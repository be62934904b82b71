"""Every knob of the system and its default, written once.

A job is a ``JobConfig`` holding one small frozen dataclass per concern (cache, calibration, parallelism,
resources). Each field carries its command-line help in ``metadata``, and the command line is derived from
these classes (``hyca_batch.cli.options``), so a default or a help text never has to be restated. The same
fields, flattened to one level, are a run's options: ``JobConfig.options()`` is what ``run.json`` records
and ``JobConfig.from_options`` reads back (the names are the flags without their dashes).

Generation parameters left unset fall back to the model's defaults (a 64x64 tiny model and 720p
HunyuanVideo want very different sizes), and each manifest row may override them again.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from hyca_batch.types import GENERATION_FIELDS

CACHE_MODES = ("none", "fora", "taylorseer", "foca", "hyca")
GRANULARITIES = ("block", "stack")  # block: per-module features; stack: one residual over all blocks
ATTENTION_BACKENDS = ("auto", "torch", "xfuser")
WEIGHTINGS = ("dsigma", "uniform")
SCHEDULES = ("uniform", "calibrated")  # calibrated: the full steps the solver map's calibration placed
FORECASTS = ("fixed", "learned")  # learned: ridge fits over the history compete with the fixed solvers
CLUSTERING_CHOICES = ("auto", "descriptors", "errors", "modules")  # auto: the lowest held-out error


def option(help: str, *, name: str | None = None, flag: str | None = None, **limits: float) -> dict[str, Any]:
    """Field metadata: the help text; ``name``, the option's name where it is not the field's (``--cache`` is
    ``CacheConfig.mode``); ``flag``, the command-line spelling where it differs from the name; ``min``/``max``."""
    return {"help": help, "name": name, "flag": flag, **limits}


def _choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"--{name} {value!r}: choose from {', '.join(choices)}")


@dataclass(frozen=True)
class CacheConfig:
    """How to cache: a full transformer pass every ``interval`` steps, a forecast by ``mode``'s solvers between."""

    mode: str = field(default="none", metadata=option(f"Feature cache: {', '.join(CACHE_MODES)}.", name="cache"))
    interval: int = field(default=6, metadata=option("Cache: a full transformer pass every N steps.", min=1))
    warmup: int = field(default=0, metadata=option("Cache: extra full steps at the start.", min=0))
    granularity: str = field(
        default="block", metadata=option("Cache: block (per-module features) or stack (one residual, low memory).")
    )
    taylorseer_order: int = field(default=2, metadata=option("taylorseer: Taylor order (1 or 2).", min=1, max=2))
    schedule: str = field(
        default="calibrated",
        metadata=option(
            "hyca: which steps run fully: uniform (every N-th) or calibrated (as many, placed by the calibration "
            "where forecasts fail most)."
        ),
    )

    full_steps: int = field(
        default=0,
        metadata=option(
            "hyca with --schedule calibrated: full transformer passes per video, placed by the calibration "
            "(0: as many as --interval gives).",
            min=0,
        ),
    )

    def __post_init__(self) -> None:
        _choice("cache", self.mode, CACHE_MODES)
        _choice("granularity", self.granularity, GRANULARITIES)
        _choice("schedule", self.schedule, SCHEDULES)
        if self.full_steps < 0 or (self.full_steps and self.schedule != "calibrated"):
            raise ValueError(f"--full-steps {self.full_steps}: needs --schedule calibrated and a count >= 1")
        if self.interval < 1 or self.warmup < 0:
            raise ValueError(f"--interval must be >= 1 and --warmup >= 0, got {self.interval} and {self.warmup}")
        if self.taylorseer_order not in (1, 2):
            raise ValueError(f"--taylorseer-order must be 1 or 2, got {self.taylorseer_order}")


@dataclass(frozen=True)
class CalibrationConfig:
    """How HyCa chooses its solvers: a probe run records ``probe_tokens`` positions of every cached feature,
    channels are clustered into ``clusters`` groups, each group takes its best solver (``hyca_batch.cache``)."""

    clusters: int = field(default=8, metadata=option("hyca calibration: channel clusters.", min=1))
    probe_tokens: int = field(
        default=512, metadata=option("hyca calibration: token positions sampled per feature.", min=1)
    )
    seed: int = field(
        default=0,
        metadata=option(
            "hyca calibration: seed of the token sample and of k-means (`calibrate`: of the probe's noise too).",
            name="calibration_seed",
        ),
    )
    weighting: str = field(
        default="dsigma",
        metadata=option(
            "hyca calibration: dsigma weighs a step's forecast error by the sampler's step size squared; "
            "uniform does not.",
            name="calibration_weighting",
        ),
    )

    prompts: int = field(
        default=3,
        metadata=option(
            "hyca calibration: prompts probed (a job's first pending ones); each is a fold of the held-out error.",
            name="calibration_prompts",
            min=1,
        ),
    )
    forecasts: str = field(
        default="learned",
        metadata=option("hyca calibration: fixed solvers only, or learned (ridge) forecasts where they generalize."),
    )
    clustering: str = field(
        default="auto",
        metadata=option(
            "hyca calibration: channel clusters by descriptors, errors (forecast-error profiles), modules, or auto "
            "(the lowest held-out error)."
        ),
    )

    def __post_init__(self) -> None:
        if self.clusters < 1 or self.probe_tokens < 1 or self.prompts < 1:
            raise ValueError(
                f"--clusters, --probe-tokens and --calibration-prompts must be >= 1, "
                f"got {self.clusters}, {self.probe_tokens} and {self.prompts}"
            )
        _choice("calibration-weighting", self.weighting, WEIGHTINGS)
        _choice("forecasts", self.forecasts, FORECASTS)
        _choice("clustering", self.clustering, CLUSTERING_CHOICES)


@dataclass(frozen=True)
class ParallelConfig:
    """``sp`` ranks per replica, as ``ulysses`` (all-to-all over heads) x ``ring`` (KV passed around).

    Ulysses moves each token once per attention and needs the heads to divide among its ranks; ring has no
    such limit but passes every KV block around. So the default is as much Ulysses as the heads allow
    (``ulysses=None``, ``ring=None``), which is xDiT's advice too.
    """

    sp: int = field(
        default=1, metadata=option("Sequence parallelism: GPUs per replica, one video spread over them.", min=1)
    )
    ulysses: int | None = field(
        default=None, metadata=option("SP: Ulysses degree (default: as many as the heads allow).")
    )
    ring: int | None = field(default=None, metadata=option("SP: ring degree (ulysses x ring = sp)."))
    attention: str = field(
        default="auto",
        metadata=option("SP attention: auto (xfuser on CUDA when installed), torch, xfuser.", name="sp_attention"),
    )
    timeout_s: float = field(
        default=600.0,
        metadata=option(
            "SP: seconds any collective may take before the video fails.", name="sp_timeout_s", flag="sp-timeout"
        ),
    )

    def __post_init__(self) -> None:
        if self.sp < 1:
            raise ValueError(f"--sp must be >= 1, got {self.sp}")
        for name in ("ulysses", "ring"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"--{name} must be >= 1, got {value}")
        if self.ulysses is not None and self.ring is not None and self.ulysses * self.ring != self.sp:
            raise ValueError(f"--ulysses {self.ulysses} x --ring {self.ring} must equal --sp {self.sp}")
        for name in ("ulysses", "ring"):
            value = getattr(self, name)
            if value is not None and self.sp % value:
                raise ValueError(f"--{name} {value} must divide --sp {self.sp}")
        _choice("sp-attention", self.attention, ATTENTION_BACKENDS)
        if self.timeout_s <= 0:
            raise ValueError(f"the collective timeout must be > 0 s, got {self.timeout_s}")

    def degrees(self, heads: int) -> tuple[int, int]:
        """(ulysses, ring) for a model with ``heads`` attention heads; a clear error if they do not fit."""
        if self.ulysses is not None:
            ulysses = self.ulysses
        elif self.ring is not None:
            ulysses = self.sp // self.ring
        else:
            ulysses = math.gcd(self.sp, heads)
        ring = self.sp // ulysses
        if heads % ulysses:
            raise ValueError(
                f"--ulysses {ulysses} does not divide the model's {heads} attention heads; "
                f"use a Ulysses degree that divides {heads} and make up --sp {self.sp} with --ring"
            )
        return ulysses, ring


@dataclass(frozen=True)
class ResourceConfig:
    """Where the job runs and what each replica reserves there."""

    replicas: int = field(default=1, metadata=option("Model replicas (each with --sp GPUs, or one CPU slot).", min=1))
    address: str | None = field(
        default=None, metadata=option("Ray cluster address (default: RAY_ADDRESS or a local Ray).")
    )
    device: str | None = field(default=None, metadata=option("cuda or cpu (default: cuda when available)."))
    gpus_per_replica: float | None = field(
        default=None, metadata=option("GPUs a replica reserves (default: --sp on a GPU cluster, none on CPU).")
    )
    cpus_per_replica: float = field(default=1.0, metadata=option("CPUs reserved per replica (torch threads on CPU)."))

    def __post_init__(self) -> None:
        if self.replicas < 1 or self.cpus_per_replica <= 0:
            raise ValueError(
                f"--replicas must be >= 1 and --cpus-per-replica > 0, got {self.replicas}, {self.cpus_per_replica}"
            )


@dataclass(frozen=True)
class JobConfig:
    """One batch job. Recorded, flattened (``options()``), in ``run.json`` under the output."""

    manifests: tuple[str, ...] = field(
        metadata=option("Parquet manifest files, directories or globs (local or s3://).")
    )
    out: str = field(
        metadata=option("Output directory or s3://bucket/prefix (videos/, records/, errors/, run.json, progress.json).")
    )
    model: str = field(
        default="tiny",
        metadata=option(
            "Preset (tiny, mini, hunyuanvideo, tiny15, hunyuanvideo15-480p, hunyuanvideo15-720p, and -i2v of both), "
            "hub id, or local diffusers directory."
        ),
    )
    s3_endpoint_url: str | None = field(
        default=None,
        metadata=option("S3-compatible endpoint (MinIO, Ceph, R2, ...); default: AWS_ENDPOINT_URL_S3, else AWS."),
    )
    #: Job-wide generation settings (GenerationDefaults' fields); an unset one is the model's default.
    generation: dict[str, Any] = field(default_factory=dict)
    cache: CacheConfig = CacheConfig()
    solver_map: str | None = field(
        default=None,
        metadata=option(
            "hyca: solver map from `hyca-batch calibrate` (default: calibrate on the first prompt, stored with the "
            "outputs)."
        ),
    )
    calibration: CalibrationConfig = CalibrationConfig()
    baseline_every: int = field(
        default=0,
        metadata=option(
            "Also generate every K-th video uncached and record measured speedup, PSNR and SSIM (0: never).", min=0
        ),
    )
    parallel: ParallelConfig = ParallelConfig()
    resources: ResourceConfig = ResourceConfig()
    max_attempts: int = field(default=3, metadata=option("Tries per video, counted across re-runs.", min=1))
    max_prompt_chars: int = field(default=4000, metadata=option("Longest prompt accepted, in characters.", min=1))
    video_timeout: float | None = field(
        default=None,
        metadata=option(
            "Seconds one video may take before it is abandoned, its replica restarted and an attempt charged "
            "(default: the model's, scaled by the video's size and steps; printed by --dry-run).",
            min=1,
        ),
    )
    max_tokens: int | None = field(
        default=None,
        metadata=option(
            "Largest video accepted, in latent tokens ((frames-1)/4+1) x height/16 x width/16 (default: the "
            "model's largest documented size; HunyuanVideo's 720x1280x129 is 118800).",
            min=1,
        ),
    )
    progress: bool = field(default=True, metadata=option("Show a progress bar."))

    def __post_init__(self) -> None:
        object.__setattr__(self, "manifests", tuple(self.manifests))
        unknown = sorted(set(self.generation) - set(GENERATION_FIELDS))
        if unknown:
            raise ValueError(f"unknown generation settings {unknown}; known: {', '.join(GENERATION_FIELDS)}")
        object.__setattr__(self, "generation", {k: v for k, v in self.generation.items() if v is not None})

    # -- the flat view: one name per option, as on the command line and in run.json ----------------------

    def options(self) -> dict[str, Any]:
        """Every setting under its option name (``cache``, ``interval``, ``sp``, ``height``, ...)."""
        flat: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "generation":
                flat.update({name: value.get(name) for name in GENERATION_FIELDS})
            elif f.name in SECTIONS:
                flat.update({option_name(g): getattr(value, g.name) for g in dataclasses.fields(value)})
            else:
                flat[f.name] = list(value) if f.name == "manifests" else value
        return flat

    @classmethod
    def from_options(cls, **options: Any) -> JobConfig:
        """The config of these options (names as ``options()`` gives them); unknown names are an error."""
        top = {f.name for f in dataclasses.fields(cls)} - {"generation", *SECTIONS}
        known = top | set(GENERATION_FIELDS)
        for section in SECTIONS.values():
            known |= {option_name(f) for f in dataclasses.fields(section)}
        if set(options) - known:
            raise TypeError(f"unknown job options {sorted(set(options) - known)}")
        return cls(
            **{name: options[name] for name in top if name in options},
            **{name: config_from_options(section, options) for name, section in SECTIONS.items()},
            generation={n: options[n] for n in GENERATION_FIELDS if n in options},
        )


#: The sub-configs a job holds, by field name: each is flattened into options of its own.
SECTIONS: dict[str, type] = {
    "cache": CacheConfig,
    "calibration": CalibrationConfig,
    "parallel": ParallelConfig,
    "resources": ResourceConfig,
}


def option_name(f: dataclasses.Field) -> str:
    """The name a config field goes by as an option: its ``name`` metadata, else the field's own."""
    return f.metadata.get("name") or f.name


def config_from_options(cls: type, options: dict[str, Any]) -> Any:
    """``cls`` (a config dataclass) built from those of ``options`` that name its fields; the rest are ignored."""
    by_option = {option_name(f): f.name for f in dataclasses.fields(cls)}
    return cls(**{by_option[k]: v for k, v in options.items() if k in by_option})

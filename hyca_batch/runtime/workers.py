"""What a backend builds: a loaded model and its video work, in one process or as a sequence-parallel rank.

``VideoWork`` generates or calibrates with a loaded model (the local backend's and every video rank's).
``ShardedModelRank`` is the part every rank worker has: load the model on this rank's device, join the
replica's process groups, shard the transformer. ``VideoRank`` adds the ``VideoWork`` that a replica's ranks
run; the real-size benchmark adds its own measurements the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch

from hyca_batch.cache import SolverMap
from hyca_batch.config import CacheConfig, CalibrationConfig, ParallelConfig
from hyca_batch.models import LoadedModel, ModelSpec, load_model, resolve_device
from hyca_batch.parallel import SequenceParallel, apply_sequence_parallel, init_groups
from hyca_batch.parallel.trace import CommTrace, trace_communication
from hyca_batch.pipeline.calibration import calibrate_model
from hyca_batch.pipeline.generate import VideoGenerator
from hyca_batch.types import GenerationResult, Request


@dataclass(frozen=True)
class RankSetup:
    """What a replica's backend builds, on one process or on each of its ranks."""

    model: ModelSpec
    parallel: ParallelConfig = ParallelConfig()
    cache: CacheConfig | None = None  # None: no generator (a calibration-only backend)
    solver_map: SolverMap | None = None
    device: str | None = None  # None: the rank's own GPU when CUDA is available, else the CPU
    threads: int = 1  # torch CPU threads per process (each rank is one)
    trace: bool = False  # count and time communication per transformer pass (parallel.trace)


def model_info(model: LoadedModel) -> dict[str, Any]:
    """What a backend reports about its model: the records and the cost report take name and device from it."""
    return {
        "model": model.spec.name,
        "device": str(model.device),
        "device_type": model.device.type,
        "device_name": model.device_name,
    }


class VideoWork:
    """A loaded model and, when the setup has a cache configuration, its generator. It generates or calibrates,
    not both: a calibration probe installs a cache of its own, and a transformer carries one cache at a time."""

    def __init__(self, model: LoadedModel, setup: RankSetup, parallel: SequenceParallel | None = None):
        self.model, self.parallel = model, parallel
        self.generator = None
        if setup.cache is not None:
            self.generator = VideoGenerator(model, setup.cache, setup.solver_map, parallel=parallel)

    def generate(self, request: Request, uncached: bool = False) -> GenerationResult:
        if self.generator is None:
            raise RuntimeError("opened without a cache configuration: it only calibrates")
        with self.generator.uncached() if uncached else nullcontext():
            return self.generator(request)

    def calibrate(self, requests: Sequence[Request], cache: CacheConfig, config: CalibrationConfig) -> SolverMap:
        if self.generator is not None:
            raise RuntimeError("calibration runs on a backend of its own, opened without a cache configuration")
        return calibrate_model(self.model, list(requests), cache, config, parallel=self.parallel)


class ShardedModelRank:
    """One rank's model, loaded on its device and sharded over the replica's groups."""

    def __init__(self, setup: RankSetup, rank: int, world: int, init_method: str):
        torch.set_num_threads(max(1, setup.threads))
        self.setup, self.rank = setup, rank
        device = resolve_device(setup.device, index=rank)
        if device.type == "cuda":
            torch.cuda.set_device(device)
        self.model = load_model(setup.model, device=device)
        transformer = self.model.pipeline.transformer
        self.groups = init_groups(setup.parallel, transformer.config.num_attention_heads, rank, init_method, device)
        self.sp = apply_sequence_parallel(transformer, self.groups, setup.parallel, device)

    def report(self) -> dict[str, Any]:
        return {
            **model_info(self.model),
            "ulysses": self.groups.ulysses,
            "ring": self.groups.ring,
            "attention": self.sp.attention_kernel,
        }


class VideoRank(ShardedModelRank):
    """A replica's rank: every rank runs each request; rank 0 returns the result (and alone has the frames)."""

    def __init__(self, setup: RankSetup, rank: int, world: int, init_method: str):
        super().__init__(setup, rank, world, init_method)
        self.work = VideoWork(self.model, setup, parallel=self.sp)
        self.tracer = None
        if setup.trace and self.work.generator is not None:
            self.tracer = trace_communication(self.model.pipeline.transformer, self.work.generator.cache.pass_is_full)

    def generate(self, request: Request, uncached: bool) -> GenerationResult | None:
        if self.tracer is not None:
            self.tracer.trace = CommTrace()
        result = self.work.generate(request, uncached)
        return result if self.rank == 0 else None

    def calibrate(self, requests: list[Request], cache: CacheConfig, config: CalibrationConfig) -> SolverMap | None:
        smap = self.work.calibrate(requests, cache, config)
        return smap if self.rank == 0 else None

    def last_trace(self) -> dict[str, Any] | None:
        """This rank's communication during the last call, when the setup asked for tracing."""
        return self.tracer.trace.summary() if self.tracer is not None else None

"""Where a replica's model runs: in this process (``--sp 1``) or on a group of rank processes (``--sp N``).

One interface for both, so the replica, the job's calibration and ``hyca-batch calibrate`` never branch on
the parallel degree themselves: ``open_backend`` picks, ``generate`` and ``calibrate`` run, ``info`` says on
what. A backend with a cache configuration generates; one without calibrates (a probe installs a cache of its
own, and a transformer carries one cache at a time).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from contextlib import nullcontext
from typing import Any

import torch

from hyca_batch.cache import SolverMap
from hyca_batch.config import CacheConfig, CalibrationConfig
from hyca_batch.models import load_model
from hyca_batch.pipeline.calibration import calibrate_model
from hyca_batch.pipeline.generate import VideoGenerator
from hyca_batch.runtime.ranks import RankGroup
from hyca_batch.runtime.workers import RankSetup, VideoRank
from hyca_batch.types import GenerationResult, Request


class Backend:
    """The interface: ``info`` (model, device_type, device_name, ...), ``generate``, ``calibrate``, ``close``."""

    info: dict[str, Any]

    def generate(self, request: Request, uncached: bool = False) -> GenerationResult:
        raise NotImplementedError

    def calibrate(self, requests: Sequence[Request], cache: CacheConfig, config: CalibrationConfig) -> SolverMap:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class LocalBackend(Backend):
    """The model in this process, loaded once."""

    def __init__(self, setup: RankSetup):
        torch.set_num_threads(max(1, setup.threads))
        self.model = load_model(setup.model, device=setup.device)
        self.generator = None
        if setup.cache is not None:
            self.generator = VideoGenerator(self.model, cache=setup.cache, solver_map=setup.solver_map)
        self.info = {
            "model": self.model.spec.name,
            "device": str(self.model.device),
            "device_type": self.model.device.type,
            "device_name": self.model.device_name,
        }

    def generate(self, request: Request, uncached: bool = False) -> GenerationResult:
        if self.generator is None:
            raise RuntimeError("this backend was opened without a cache configuration: it only calibrates")
        with self.generator.uncached() if uncached else nullcontext():
            return self.generator(request)

    def calibrate(self, requests: Sequence[Request], cache: CacheConfig, config: CalibrationConfig) -> SolverMap:
        if self.generator is not None:
            raise RuntimeError("calibration runs on a backend of its own, opened without a cache configuration")
        return calibrate_model(self.model, list(requests), cache, config)


class RankBackend(Backend):
    """The model sharded over ``setup.parallel.sp`` rank processes (``VideoRank``), started at once so that a model
    that cannot load fails here, before any video. A dead or failed rank raises ``RankFailure`` from the call that
    met it (that video fails, and is retried by the job); the group starts again on the next call."""

    def __init__(self, setup: RankSetup):
        self.group = RankGroup(VideoRank, setup, setup.parallel.sp)
        self.group.start()

    @property
    def info(self) -> dict[str, Any]:
        return self.group.info

    def generate(self, request: Request, uncached: bool = False) -> GenerationResult:
        return self.group.call("generate", request, uncached)

    def calibrate(self, requests: Sequence[Request], cache: CacheConfig, config: CalibrationConfig) -> SolverMap:
        return self.group.call("calibrate", list(requests), cache, config)

    @property
    def traces(self) -> list[dict[str, Any] | None]:
        """Every rank's communication during the last call (``RankSetup.trace``)."""
        return self.group.call_all("last_trace")

    def close(self) -> None:
        self.group.close()


def open_backend(setup: RankSetup, cpus: float | None = None) -> Backend:
    """The backend for ``setup``: ranks when ``setup.parallel.sp > 1``, else this process. ``cpus``, the CPUs the
    caller holds, sets the torch threads of each process (a rank gets its share)."""
    if cpus is not None:
        setup = dataclasses.replace(setup, threads=max(1, int(cpus) // setup.parallel.sp))
    return RankBackend(setup) if setup.parallel.sp > 1 else LocalBackend(setup)

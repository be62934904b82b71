"""Where a replica's model runs: in this process (``--sp 1``) or on a group of rank processes (``--sp N``).

One interface for both, so the replica, the job's calibration and ``hyca-batch calibrate`` never branch on
the parallel degree themselves: ``open_backend`` picks, ``generate`` and ``calibrate`` run, ``info`` says on
what. A backend with a cache configuration generates; one without calibrates (a probe installs a cache of its
own, and a transformer carries one cache at a time).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import torch

from hyca_batch.cache import SolverMap
from hyca_batch.config import CacheConfig, CalibrationConfig
from hyca_batch.models import load_model
from hyca_batch.runtime.ranks import RankGroup
from hyca_batch.runtime.workers import RankSetup, VideoRank, VideoWork, model_info
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
        self.work = VideoWork(load_model(setup.model, device=setup.device), setup)
        self.info = model_info(self.work.model)

    def generate(self, request: Request, uncached: bool = False) -> GenerationResult:
        return self.work.generate(request, uncached)

    def calibrate(self, requests: Sequence[Request], cache: CacheConfig, config: CalibrationConfig) -> SolverMap:
        return self.work.calibrate(requests, cache, config)


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

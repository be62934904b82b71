"""The HyCa solver map a job runs with: the one given, else the one its output already has, else calibrated now.

Calibration runs once, on the first pending prompts (``--calibration-prompts``, those with the first one's
step count), in a Ray task with a replica's resources (the driver may
have no GPU), on the same backend a replica would use; the map is stored with the outputs so a resumed run
uses the same one.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import pyarrow as pa

from hyca_batch.cache import SolverMap
from hyca_batch.config import JobConfig
from hyca_batch.images import attach_image
from hyca_batch.job.execute import init_ray, replica_gpus
from hyca_batch.models import ModelSpec
from hyca_batch.runtime import RankSetup, open_backend
from hyca_batch.storage import Storage
from hyca_batch.storage.layout import SOLVER_MAP_JSON_KEY, SOLVER_MAP_KEY
from hyca_batch.types import Request

log = logging.getLogger(__name__)


def job_solver_map(config: JobConfig, spec: ModelSpec, storage: Storage, pending: pa.Table) -> SolverMap | None:
    """hyca's map (None for every other mode), stored under the output."""
    if config.cache.mode != "hyca":
        return None
    if config.solver_map:
        smap = SolverMap.load(config.solver_map)
    elif storage.exists(SOLVER_MAP_KEY):
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / SOLVER_MAP_KEY
            path.write_bytes(storage.read_bytes(SOLVER_MAP_KEY))
            return SolverMap.load(path)
    else:
        import ray

        init_ray(config)
        requests = calibration_requests(pending, config.calibration.prompts)
        log.warning(
            "calibrating the HyCa solver map on %d prompt(s), %r first (interval %d, %s schedule)",
            len(requests),
            requests[0].prompt[:60],
            config.cache.interval,
            config.cache.schedule,
        )
        task = ray.remote(_calibrate).options(num_cpus=config.resources.cpus_per_replica, num_gpus=replica_gpus(config))
        smap = ray.get(task.remote(spec, requests, config))
    if smap.metadata.get("schedule_asked", "uniform") != config.cache.schedule:
        log.warning(
            "solver map %s was calibrated for the %s schedule; this run asks for %s: videos fall back to "
            "per-cluster solvers on the uniform schedule unless the map's schedule is the uniform one",
            smap.id,
            smap.metadata.get("schedule_asked", "uniform"),
            config.cache.schedule,
        )
    budget = smap.metadata.get("full_steps_budget")
    if config.cache.full_steps and budget is not None and budget != config.cache.full_steps:
        log.warning(
            "solver map %s places %s full steps; this run asks for %d: the map's schedule is what runs",
            smap.id,
            budget,
            config.cache.full_steps,
        )
    if smap.metadata.get("interval") != config.cache.interval:
        log.warning(
            "solver map %s was calibrated for interval %s; this run uses %d, where its choices may not be best",
            smap.id,
            smap.metadata.get("interval"),
            config.cache.interval,
        )
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / SOLVER_MAP_KEY
        smap.save(path)
        storage.put_bytes(SOLVER_MAP_KEY, path.read_bytes(), overwrite=True)
        storage.put_bytes(SOLVER_MAP_JSON_KEY, path.with_suffix(".json").read_bytes(), overwrite=True)
    return smap


def calibration_requests(pending: pa.Table, count: int) -> list[Request]:
    """The first ``count`` pending requests that share the first one's step count (a map is fitted for one)."""
    requests: list[Request] = []
    for request in Request.from_table(pending.slice(0, count * 8)):
        if not requests or request.num_inference_steps == requests[0].num_inference_steps:
            requests.append(request)
        if len(requests) == count:
            break
    return requests


def _calibrate(spec: ModelSpec, requests: list[Request], config: JobConfig) -> SolverMap:
    """In the Ray task: on a replica's backend (its --sp devices: a 720p probe may not fit on one)."""
    setup = RankSetup(model=spec, parallel=config.parallel, device=config.resources.device)
    # Image rows are probed as what they are, image-to-video (their images read here, as a replica reads them).
    requests = [attach_image(request, s3_endpoint_url=config.s3_endpoint_url) for request in requests]
    with open_backend(setup, cpus=config.resources.cpus_per_replica) as backend:
        return backend.calibrate(requests, config.cache, config.calibration)

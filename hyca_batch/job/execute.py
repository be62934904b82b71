"""The job on Ray: start (or join) Ray, size a replica's resources, and run every pending request through the
replica pool, retrying failures until each video is committed or out of attempts."""

from __future__ import annotations

import logging
import math
import os
import sys
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from hyca_batch.cache import SolverMap
from hyca_batch.config import JobConfig
from hyca_batch.job.errors import JobError
from hyca_batch.job.plan import Plan
from hyca_batch.job.progress import JobSummary, Progress
from hyca_batch.runtime.replica import Replica

log = logging.getLogger(__name__)


def _gpus_per_replica(config: JobConfig) -> float:
    import ray

    resources = config.resources
    if resources.gpus_per_replica is not None:
        return resources.gpus_per_replica
    if config.parallel.sp > 1:
        return config.parallel.sp  # one device per rank; on a CPU-only machine, stand-in GPUs (init_ray)
    return 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0


def replica_gpus(config: JobConfig) -> float:
    """GPUs per replica, checked against the cluster: a replica asking for more would wait forever."""
    import ray

    need, have = _gpus_per_replica(config), ray.cluster_resources().get("GPU", 0)
    if need > have:
        raise JobError(
            f"a replica needs {need:g} GPUs (--sp {config.parallel.sp}) and the Ray cluster has {have:g}. Use a "
            "smaller --sp, or on a CPU-only cluster give Ray stand-in GPUs (`ray start --num-gpus N`); an embedded "
            "local Ray adds them itself"
        )
    return need


def reservation(config: JobConfig) -> dict[str, Any]:
    """What the job holds while it runs: the cost report charges it for the whole run."""
    return {
        "replicas": config.resources.replicas,
        "gpus_per_replica": replica_gpus(config),
        "cpus_per_replica": config.resources.cpus_per_replica,
    }


def _blocks(table: pa.Table, replicas: int) -> list[pa.Table]:
    """Small blocks, so every replica gets work and the tail of the job stays short."""
    per_block = max(1, min(16, math.ceil(table.num_rows / (replicas * 16))))
    return [table.slice(i, per_block) for i in range(0, table.num_rows, per_block)]


def init_ray(config: JobConfig) -> None:
    """Join the cluster (``--address`` or RAY_ADDRESS), else start an embedded local Ray sized for the job."""
    import ray

    if ray.is_initialized():
        return
    address = config.resources.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, logging_level=logging.WARNING)
        return
    kwargs: dict[str, Any] = {}
    if config.parallel.sp > 1 and config.resources.gpus_per_replica is None:
        import torch

        if not torch.cuda.is_available():
            # No GPUs: N stand-in GPUs per replica, so Ray places sequence-parallel replicas as it would
            # on GPUs (the ranks run on the CPU).
            kwargs["num_gpus"] = config.parallel.sp * config.resources.replicas
    # "local": always a new embedded Ray, as documented. Left to its default, ray.init() joins whatever
    # /tmp/ray/ray_current_cluster names, and waits forever when that cluster is gone.
    ray.init(address="local", include_dashboard=False, logging_level=logging.WARNING, **kwargs)


def execute(
    config: JobConfig, plan: Plan, summary: JobSummary, solver_map: SolverMap | None, progress: Progress
) -> None:
    """Run ``plan.pending`` on ``config.resources.replicas`` replicas; failures are retried in further rounds."""
    import ray
    from tqdm import tqdm

    init_ray(config)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # the job's own bar counts videos, which is what a user waits for
    ctx.enable_operator_progress_bars = False
    for handler in logging.getLogger("ray.data").handlers:
        if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
            handler.setLevel(logging.WARNING)  # Ray Data's plan chatter stays in its session log file
    gpus = replica_gpus(config)
    pending, attempts, resources = plan.pending, plan.attempts, config.resources
    # In `ray job logs` (no terminal) every refresh is a line of its own: one every 30 s is plenty.
    bar = tqdm(
        total=pending.num_rows,
        unit="video",
        desc="generating",
        disable=not config.progress,
        mininterval=0.1 if sys.stderr.isatty() else 30.0,
    )
    remaining = pending
    while remaining.num_rows:
        ids = remaining.column("id").to_pylist()
        attempt_col = pa.array([attempts[i] + 1 for i in ids], type=pa.int64())
        table = remaining.append_column("attempt", attempt_col)
        ds = ray.data.from_arrow(_blocks(table, resources.replicas)).map_batches(
            Replica,
            fn_constructor_kwargs={
                "model": plan.spec,  # resolved: a relative model directory means the driver's
                "out": summary.out,  # the resolved URI: a replica's working directory is not the driver's
                "s3_endpoint_url": config.s3_endpoint_url,
                "cache": config.cache,
                "solver_map": solver_map,
                "baseline_every": config.baseline_every,
                "run_id": summary.run_id,
                "extra_schema": plan.manifest.extra_schema,
                "device": resources.device,
                "cpus": resources.cpus_per_replica,
                "parallel": config.parallel,
            },
            batch_size=1,
            batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=resources.replicas),
            num_cpus=resources.cpus_per_replica,
            num_gpus=gpus,
        )
        retry: list[str] = []
        for row in ds.iter_rows():
            attempts[row["id"]] = row["attempt"]
            if row["status"] in ("done", "already_done"):
                summary.done += row["status"] == "done"
                summary.skipped += row["status"] == "already_done"
                if row["status"] == "done":
                    summary.video_seconds.append(row["total_s"])
                    if row["speedup"] is not None:
                        summary.speedups.append(row["speedup"])
                bar.update(1)
            elif row["attempt"] < config.max_attempts:
                log.warning(
                    "video %s failed (attempt %d of %d), will retry: %s",
                    row["id"],
                    row["attempt"],
                    config.max_attempts,
                    row["error"],
                )
                retry.append(row["id"])
            else:
                summary.failed += 1
                summary.failures.append(f"{row['id']}: {row['error']} (after {row['attempt']} attempts)")
                bar.update(1)
            bar.set_postfix(done=summary.done, failed=summary.failed, retrying=len(retry))
            progress.retrying = len(retry)
            progress.update()
        remaining = pending.filter(pc.is_in(pending.column("id"), pa.array(retry, type=pa.string())))
    bar.close()

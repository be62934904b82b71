"""The job on Ray: start (or join) Ray, size a replica's resources, and stream every pending request through
one pool of replica actors, retrying failures in that pool until each video is committed or out of attempts."""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from collections import deque
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from hyca_batch.cache import SolverMap
from hyca_batch.config import JobConfig
from hyca_batch.job.errors import JobError
from hyca_batch.job.plan import Plan
from hyca_batch.job.progress import JobSummary, Progress
from hyca_batch.records import SnapshotWriter
from hyca_batch.runtime.replica import RESULT_SCHEMA, Replica

log = logging.getLogger(__name__)

#: Blocks queued on one replica at a time: one running, one waiting, so a replica never idles on the driver.
IN_FLIGHT = 2
#: Times Ray restarts a replica whose process died (OOM, a crash in native code) before the job gives it up.
MAX_REPLICA_RESTARTS = 3


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


def _block_rows(rows: int, replicas: int) -> int:
    """Small blocks, so every replica gets work and the tail of the job stays short."""
    return max(1, min(16, math.ceil(rows / (replicas * 16))))


def _own_rows(block: pa.Table) -> pa.Table:
    """A copy holding only the block's rows: a slice is pickled with its parent's whole buffers, which would send
    the entire plan with every block (measured: 11 MB for a 16-row slice of a 100k-row table, 2 KB copied)."""
    return block.take(pa.array(range(block.num_rows), pa.int64()))


class _Work:
    """The pending requests as a stream of blocks: small copies of slices of the plan's table, then the retries.

    Nothing per row is held besides the table itself; a retry is the failed rows of a finished block, taken
    again with their attempt number raised.
    """

    def __init__(self, pending: pa.Table, block_rows: int):
        self.pending, self.block_rows, self.cursor = pending, block_rows, 0
        self.retries: deque[pa.Table] = deque()
        # Videos queued or in flight again after a failed attempt (in this run or an earlier one).
        self.retrying = pc.sum(pc.greater(pending.column("attempt"), 1)).as_py() or 0

    def __bool__(self) -> bool:
        return bool(self.retries) or self.cursor < self.pending.num_rows

    def next(self) -> pa.Table:
        if self.retries:  # first: a retry holds its replica for one video, and the job's tail stays short
            return self.retries.popleft()
        block = self.pending.slice(self.cursor, self.block_rows)
        self.cursor += block.num_rows
        return _own_rows(block)

    def put_back(self, block: pa.Table) -> None:
        """A block that did not run (its replica was restarting): first in line again, its attempts unchanged."""
        self.retries.appendleft(block)

    def retry(self, block: pa.Table, ids: list[str]) -> None:
        again = block.filter(pc.is_in(block.column("id"), pa.array(ids, pa.string())))
        attempt = pc.add(again.column("attempt"), 1)
        again = again.set_column(again.schema.get_field_index("attempt"), "attempt", attempt)
        self.retries.extend(_own_rows(again.slice(i, 1)) for i in range(again.num_rows))
        self.retrying += again.num_rows


def execute(
    config: JobConfig,
    plan: Plan,
    summary: JobSummary,
    solver_map: SolverMap | None,
    progress: Progress,
    snapshot: SnapshotWriter,
) -> None:
    """Run ``plan.pending`` on ``config.resources.replicas`` replicas, created once for the whole job.

    Each replica holds at most ``IN_FLIGHT`` blocks, so work streams from the plan's table as replicas free up;
    a failed video goes back into the queue with its attempt raised (its model stays loaded), and a replica
    process that dies is restarted by Ray (at most ``MAX_REPLICA_RESTARTS`` times): the block it was running is
    charged an attempt and queued again, the block waiting behind it is queued again as it was.
    """
    import ray
    from tqdm import tqdm

    init_ray(config)
    gpus = replica_gpus(config)
    resources = config.resources
    replica_class = ray.remote(Replica).options(
        num_cpus=resources.cpus_per_replica,
        num_gpus=gpus,
        max_restarts=MAX_REPLICA_RESTARTS,
        max_task_retries=0,  # a block is never re-run behind the job's back: attempts are counted here
    )
    kwargs = {
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
    }
    replicas = [replica_class.remote(**kwargs) for _ in range(resources.replicas)]
    deaths = [0] * len(replicas)
    held = [0] * len(replicas)  # blocks in flight on each replica
    resting = [0.0] * len(replicas)  # a restarting replica gets no work until then (time.monotonic)
    work = _Work(plan.pending, _block_rows(plan.pending.num_rows, len(replicas)))
    in_flight: dict[Any, tuple[int, pa.Table, int]] = {}  # object ref -> (replica, block, submission number)
    submitted = 0
    # In `ray job logs` (no terminal) every refresh is a line of its own: one every 30 s is plenty.
    bar = tqdm(
        total=plan.pending.num_rows,
        unit="video",
        desc="generating",
        disable=not config.progress,
        mininterval=0.1 if sys.stderr.isatty() else 30.0,
    )
    try:
        while work or in_flight:
            now = time.monotonic()
            for r, replica in enumerate(replicas):
                while work and replica is not None and held[r] < IN_FLIGHT and resting[r] <= now:
                    block = work.next()
                    in_flight[replica.__call__.remote(block)] = (r, block, submitted)
                    held[r] += 1
                    submitted += 1
            if not in_flight:
                if all(replica is None for replica in replicas):
                    raise JobError("every replica died more often than it may be restarted; see the Ray logs")
                time.sleep(0.2)  # every live replica is restarting
                continue
            ready, _ = ray.wait(list(in_flight), num_returns=1, timeout=1.0)
            if not ready:
                continue
            r, block, number = in_flight.pop(ready[0])
            held[r] -= 1
            try:
                results, records = ray.get(ready[0])
            except ray.exceptions.ActorUnavailableError:
                work.put_back(block)  # the replica is restarting: nothing ran, or a retry finds the record
                resting[r] = time.monotonic() + 1.0
                continue
            except ray.exceptions.RayActorError as exc:
                if getattr(exc, "actor_init_failed", False):
                    raise  # the model cannot load: no replica will do better
                running = all(n > number for owner, _, n in in_flight.values() if owner == r)
                if not running:
                    work.put_back(block)  # it was waiting behind the block that was running: not its fault
                    continue
                deaths[r] += 1
                if deaths[r] > MAX_REPLICA_RESTARTS:
                    ray.kill(replicas[r])
                    replicas[r] = None
                log.warning("replica %d died (%d times) while generating %s: %s", r, deaths[r], block["id"], exc)
                results, records = _died(block, exc), None
            if records is not None:
                snapshot.add(records)
            work.retrying -= pc.sum(pc.greater(block.column("attempt"), 1)).as_py() or 0
            failed: list[str] = []
            for row in results.to_pylist():
                if row["status"] == "done":
                    summary.add_video(row["total_s"], row["speedup"])
                    bar.update(1)
                elif row["status"] == "already_done":
                    summary.skipped += 1
                    bar.update(1)
                elif row["attempt"] < config.max_attempts:
                    log.warning(
                        "video %s failed (attempt %d of %d), will retry: %s",
                        row["id"],
                        row["attempt"],
                        config.max_attempts,
                        row["error"],
                    )
                    failed.append(row["id"])
                else:
                    summary.failed += 1
                    summary.add_failure(f"{row['id']}: {row['error']} (after {row['attempt']} attempts)")
                    bar.update(1)
            if failed:
                work.retry(block, failed)
            bar.set_postfix(done=summary.done, failed=summary.failed, retrying=work.retrying)
            progress.retrying = work.retrying
            progress.update()
    finally:
        bar.close()
        for replica in replicas:  # the devices go back now: the snapshot and the summary need none
            if replica is not None:
                ray.kill(replica)


def _died(block: pa.Table, exc: BaseException) -> pa.Table:
    """A block whose replica process died: every video in it failed this attempt, with the reason."""
    reason = f"the replica process died while generating it: {str(exc).splitlines()[0] if str(exc) else exc!r}"
    ids = block.column("id").to_pylist()
    return pa.Table.from_pylist(
        [
            {"id": i, "status": "failed", "attempt": a, "total_s": 0.0, "speedup": None, "error": reason}
            for i, a in zip(ids, block.column("attempt").to_pylist())
        ],
        schema=RESULT_SCHEMA,
    )

"""The job on Ray: start (or join) Ray, size a replica's resources, and stream every pending request through
one pool of replica actors, retrying failures in that pool until each video is committed or out of attempts."""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from hyca_batch.cache import SolverMap
from hyca_batch.config import JobConfig
from hyca_batch.images import error_fields
from hyca_batch.job.errors import JobError
from hyca_batch.job.plan import Plan, VideoTimeout
from hyca_batch.job.progress import JobSummary, Progress
from hyca_batch.records import SnapshotWriter, utcnow, write_error
from hyca_batch.runtime.replica import RESULT_SCHEMA, Replica
from hyca_batch.storage import Storage, StorageError

log = logging.getLogger(__name__)

#: Blocks queued on one replica at a time: one running, one waiting, so a replica never idles on the driver.
IN_FLIGHT = 2
#: Deaths of a replica's process (OOM, a crash in native code) before the job retires its slot: enough for one
#: poison row to be charged every attempt (and the block it came in to be split) a few times over.
MAX_REPLICA_RESTARTS = 8
#: Device faults before a slot retires (each one replaces the replica: a new process, a new CUDA context).
MAX_DEVICE_FAULTS = 2


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

    def put_back_each(self, block: pa.Table) -> None:
        """A block whose replica died under it: each video first in line again on its own, attempts unchanged."""
        self.retries.extendleft(_own_rows(block.slice(i, 1)) for i in reversed(range(block.num_rows)))

    def done_with(self, block: pa.Table, results: pa.Table) -> None:
        """``retrying`` forgets the block's videos that came back (failures are counted again by ``retry``)."""
        came_back = block.filter(pc.is_in(block.column("id"), results.column("id")))
        self.retrying -= pc.sum(pc.greater(came_back.column("attempt"), 1)).as_py() or 0

    def retry(self, block: pa.Table, ids: list[str]) -> None:
        again = block.filter(pc.is_in(block.column("id"), pa.array(ids, pa.string())))
        attempt = pc.add(again.column("attempt"), 1)
        again = again.set_column(again.schema.get_field_index("attempt"), "attempt", attempt)
        self.retries.extend(_own_rows(again.slice(i, 1)) for i in range(again.num_rows))
        self.retrying += again.num_rows


@dataclass
class _Held:
    """A block on a replica: its result's ref, and once it runs (it is the replica's oldest), its deadline."""

    ref: Any
    block: pa.Table
    deadline: float | None = None
    doomed: bool = False  # its replica was killed or died before it ran: it goes back to the queue as it is


@dataclass
class _Slot:
    """One replica's place in the pool: its actor and the blocks it holds, the running one first."""

    actor: Any
    held: deque[_Held] = field(default_factory=deque)
    deaths: int = 0
    device_faults: int = 0
    overran: Any = None  # the ref of the block whose overrun had the replica killed
    ready: Any = None  # until this ref resolves, the replica is (re)starting: it gets no work

    def restart(self) -> None:
        """After a death or a kill: wait for the new process before giving it work; what it held goes back."""
        for held in self.held:
            held.doomed = held.doomed or held.ref != self.overran
        if self.actor is not None:
            self.ready = self.actor.__ray_ready__.remote()


def execute(
    config: JobConfig,
    plan: Plan,
    summary: JobSummary,
    solver_map: SolverMap | None,
    progress: Progress,
    snapshot: SnapshotWriter,
) -> None:
    """Run ``plan.pending`` on ``config.resources.replicas`` replicas, created once for the whole job.

    Each replica holds at most ``IN_FLIGHT`` blocks, so work streams from the plan's table as replicas free up; a
    failed video goes back into the queue with its attempt raised (its model stays loaded). What the replica
    cannot report itself, the job decides here, so that every fault ends:

    - a replica process that dies (OOM killer, a crash in native code) is restarted by Ray; the block it was
      running is split into single videos if it held several (which one killed it is not known), and a single
      video is charged an attempt, with an error record that says the process died;
    - a block that runs past its videos' timeouts has its replica killed and restarted, and is split or charged
      the same way, with an error record naming the timeout;
    - a device fault (``device_fault`` rows: a poisoned CUDA context, a failed communicator) has the replica
      replaced, and its videos go back to the queue uncharged;
    - blocks that were only waiting behind any of these go back to the queue as they were.

    A replica retires after ``MAX_REPLICA_RESTARTS`` deaths or ``MAX_DEVICE_FAULTS`` device faults; when all
    have, the job stops with an error. Every death either splits a block or charges a video, so a job ends.
    """
    import ray
    from tqdm import tqdm

    init_ray(config)
    gpus = replica_gpus(config)
    resources = config.resources
    options: dict[str, Any] = {
        "num_cpus": resources.cpus_per_replica,
        "num_gpus": gpus,
        # Ray always restarts a replica; the job retires a slot (MAX_REPLICA_RESTARTS, MAX_DEVICE_FAULTS), and a
        # timeout's restart charges its video: so restarts stay bounded while Ray never ends one on its own.
        "max_restarts": -1,
        "max_task_retries": 0,  # a block is never re-run behind the job's back: attempts are counted here
    }
    passed_on = {k: v for k, v in os.environ.items() if k.startswith("HYCA_")}
    if passed_on:  # the job's own settings (log level, fault hooks) reach its replicas wherever they run
        options["runtime_env"] = {"env_vars": passed_on}
    replica_class = ray.remote(Replica).options(**options)
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
    slots = [_Slot(replica_class.remote(**kwargs)) for _ in range(resources.replicas)]
    owner: dict[Any, _Slot] = {}
    work = _Work(plan.pending, _block_rows(plan.pending.num_rows, len(slots)))
    timeout = VideoTimeout(config, plan.spec)
    # In `ray job logs` (no terminal) every refresh is a line of its own: one every 30 s is plenty.
    bar = tqdm(
        total=plan.pending.num_rows,
        unit="video",
        desc="generating",
        disable=not config.progress,
        mininterval=0.1 if sys.stderr.isatty() else 30.0,
    )

    def kill(slot: _Slot, retire: bool = False) -> None:
        """Kill the slot's replica: Ray restarts it, unless it retires."""
        ray.kill(slot.actor, no_restart=retire)
        if retire:
            slot.actor = None
        slot.restart()

    def is_ready(slot: _Slot) -> bool:
        if slot.actor is None:
            return False
        if slot.ready is not None:
            if not ray.wait([slot.ready], timeout=0)[0]:
                return False
            try:
                ray.get(slot.ready)
            except ray.exceptions.RayActorError as exc:
                if getattr(exc, "actor_init_failed", False):
                    raise  # the model cannot load: no replica would do better
                slot.ready = slot.actor.__ray_ready__.remote()  # asked while it was going down: ask again
                return False
            slot.ready = None
        return True

    for slot in slots:
        slot.restart()
    try:
        while work or owner:
            now = time.monotonic()
            for slot in slots:
                while work and len(slot.held) < IN_FLIGHT and is_ready(slot):
                    block = work.next()
                    held = _Held(slot.actor.__call__.remote(block), block)
                    if not slot.held:
                        held.deadline = now + timeout.of(block)
                    slot.held.append(held)
                    owner[held.ref] = slot
            if not owner:
                if all(slot.actor is None for slot in slots):
                    raise JobError("every replica was retired after repeated deaths or device faults; see the log")
                time.sleep(0.2)  # every live replica is restarting
                continue
            for slot in slots:
                running = slot.held[0] if slot.held else None
                if running and running.deadline and now > running.deadline and slot.overran is None:
                    log.warning(
                        "a block of %d videos ran past its timeout: its replica is restarted", len(running.block)
                    )
                    slot.overran = running.ref
                    kill(slot)
            ready, _ = ray.wait(list(owner), num_returns=1, timeout=1.0)
            if not ready:
                continue
            slot = owner.pop(ready[0])
            held = next(h for h in slot.held if h.ref == ready[0])
            was_running = held is slot.held[0]
            slot.held.remove(held)
            if was_running and slot.held:
                slot.held[0].deadline = time.monotonic() + timeout.of(slot.held[0].block)
            block = held.block
            try:
                results, records = ray.get(held.ref)
            except ray.exceptions.RayActorError as exc:  # died (or Ray found it restarting) under this block
                if getattr(exc, "actor_init_failed", False):
                    raise  # the model cannot load: no replica will do better
                overran = held.ref == slot.overran
                if held.doomed or not (was_running or overran):
                    work.put_back(block)  # it only waited behind the block that failed: not its fault
                    continue
                if overran:
                    slot.overran = None
                    cause = f"it ran past its timeout of {timeout.of(block):.0f} s (--video-timeout)"
                else:
                    slot.deaths += 1
                    cause = f"the replica process died while generating it ({_death_detail(exc)})"
                    log.warning("replica process died (%d times in this slot): %s", slot.deaths, cause)
                if slot.deaths > MAX_REPLICA_RESTARTS:
                    kill(slot, retire=True)
                else:
                    slot.restart()  # the blocks it still held went down with it
                if block.num_rows > 1:  # which video did it is not known: each runs alone, uncharged
                    work.put_back_each(block)
                    continue
                results, records = _charged(plan.storage, block, cause, summary.run_id), None
            if records is not None:
                snapshot.add(records)
            faulty = [row["id"] for row in results.to_pylist() if row["status"] == "device_fault"]
            if faulty:
                slot.device_faults += 1
                log.warning("device fault on a replica (%d in this slot): %s", slot.device_faults, results["error"][0])
                work.put_back(block.filter(pc.is_in(block.column("id"), pa.array(faulty, pa.string()))))
                kill(slot, retire=slot.device_faults > MAX_DEVICE_FAULTS)
                results = results.filter(pc.not_equal(results.column("status"), "device_fault"))
            work.done_with(block, results)
            failed: list[str] = []
            for row in results.to_pylist():
                if row["status"] == "done":
                    summary.add_video(row["total_s"], row["speedup"], row["measured_speedup"], row["psnr"])
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
        for slot in slots:  # the devices go back now: the snapshot and the summary need none
            if slot.actor is not None:
                ray.kill(slot.actor)


def _death_detail(exc: BaseException) -> str:
    """What Ray knows of a dead replica process: its pid and how it ended (exit code, signal, OOM), where said."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    keep = [line for line in lines if line.startswith("pid:") or any(w in line.lower() for w in _DEATH_WORDS)]
    return "; ".join(keep[:3]) or (lines[0] if lines else type(exc).__name__)


_DEATH_WORDS = ("exit", "signal", "killed", "memory", "oom", "sigsegv", "segmentation")


def _charged(storage: Storage, block: pa.Table, cause: str, run_id: str) -> pa.Table:
    """A one-video block that failed where the replica could not say so itself (it died, or was killed for
    running too long): its error record, written here, and its ``failed`` result."""
    (row,) = block.select(["id", "prompt", "image", "image_sha256", "source_file", "source_row", "attempt"]).to_pylist()
    try:
        write_error(
            storage,
            {
                "id": row["id"],
                "status": "failed",
                "attempt": row["attempt"],
                "error_type": "VideoTimeout" if "timeout" in cause else "ReplicaDied",
                "message": cause,
                "prompt": row["prompt"],
                **error_fields(row["image"], row["image_sha256"]),
                "source_file": row["source_file"],
                "source_row": row["source_row"],
                "run_id": run_id,
                "at": utcnow().isoformat(),
            },
        )
    except (StorageError, OSError) as exc:
        cause += f" (and its error record could not be written: {exc})"
    return pa.Table.from_pylist(
        [{"id": row["id"], "status": "failed", "attempt": row["attempt"], "total_s": 0.0, "error": cause}],
        schema=RESULT_SCHEMA,
    )

"""``run_job``: plan, calibrate if needed, execute, keep the snapshot, close; ``dry_run``: the plan alone. Each
step lives in a module of its own."""

from __future__ import annotations

import dataclasses
import logging
import time
import uuid

import pyarrow as pa

from hyca_batch.config import JobConfig
from hyca_batch.job.errors import JobError
from hyca_batch.job.execute import execute, init_ray, reservation
from hyca_batch.job.plan import PlanCounts, plan_job
from hyca_batch.job.progress import JobSummary, Progress, package_versions
from hyca_batch.job.solver_map import job_solver_map
from hyca_batch.records import SnapshotWriter, update_snapshot, utcnow
from hyca_batch.storage import Storage, StorageError
from hyca_batch.storage.layout import SNAPSHOT, SOLVER_MAP_KEY

log = logging.getLogger(__name__)


def dry_run(config: JobConfig, *, force: bool = False) -> PlanCounts:
    """Validate and plan exactly as ``run_job`` would, writing nothing: what a run would do now."""
    return plan_job(config, force=force, dry_run=True).counts


def run_job(config: JobConfig, *, force: bool = False) -> JobSummary:
    """Generate every pending row of ``config.manifests`` into ``config.out``; a re-run resumes."""
    started_at, t_start = utcnow(), time.perf_counter()
    run_id = started_at.strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:8]
    summary = JobSummary(run_id=run_id, out=config.out)
    plan = plan_job(config, force=force, run_id=run_id)
    storage, counts = plan.storage, plan.counts
    summary.out, summary.total_rows = storage.uri, counts.rows
    summary.merged_duplicates, summary.rejected = counts.merged_duplicates, counts.rejected
    summary.skipped, summary.exhausted = counts.committed, counts.exhausted
    for err in plan.manifest.rejected:
        summary.add_failure(str(err))
    run_doc = {
        "run_id": run_id,
        "status": "running",
        "identity": plan.identity,
        "config": config.options(),
        "model": dataclasses.asdict(plan.spec),
        "versions": package_versions(),
        "manifest_files": plan.manifest.files,
        "plan": {k: v for k, v in counts.to_json().items() if k not in ("files", "rejected_examples")},
        "started_at": started_at.isoformat(),
    }
    if plan.forced_over is not None:  # --force: this output now mixes two configurations, and says so
        run_doc["forced_over"] = plan.forced_over
        log.warning("--force: writing into an output made with another configuration (%s)", plan.forced_over)
    progress = Progress(storage, summary, run_doc, plan.pending.num_rows, t_start)
    progress.start()
    log.info(
        "run %s: %d rows, %d to generate, %d already committed, %d rejected",
        run_id,
        summary.total_rows,
        plan.pending.num_rows,
        summary.skipped,
        summary.rejected,
    )
    snapshot = SnapshotWriter(storage, run_id)
    if plan.pending.num_rows:
        try:
            init_ray(config)
            run_doc["reservation"] = reservation(config)
            t_map = time.perf_counter()
            solver_map = job_solver_map(config, plan.spec, storage, plan.pending)
            if config.cache.mode == "hyca":
                run_doc["calibration_s"] = time.perf_counter() - t_map  # calibrating, or loading a map
            progress.update(force=True)  # the reservation on record at once: a killed driver is still charged
            if solver_map is not None:
                run_doc["solver_map"] = {
                    "id": solver_map.id,
                    "uri": storage.uri_for(SOLVER_MAP_KEY),
                    **solver_map.metadata,
                }
            execute(config, plan, summary, solver_map, progress, snapshot)
        except Exception as exc:  # the replicas could not run at all (model missing, no resources, ...)
            cause = _root_cause(exc)
            run_doc["error"] = cause
            _finish_snapshot(snapshot, storage, run_id, run_doc)
            progress.close("failed")
            raise JobError(f"the job stopped after {summary.done} videos: {cause}") from exc

    # The replicas are gone: the run's time ends here, and keeping the snapshot is the driver's own work.
    finished_at = utcnow()
    _finish_snapshot(snapshot, storage, run_id, run_doc)
    progress.close("finished", finished_at=finished_at)
    return summary


def _finish_snapshot(snapshot: SnapshotWriter, storage: Storage, run_id: str, run_doc: dict) -> None:
    """This run's records into ``records.parquet/`` (a cache for readers: failing to write it fails nothing)."""
    t0 = time.perf_counter()
    try:
        snapshot.flush()
        run_doc["snapshot_rows"] = update_snapshot(storage, run_id)
    except (StorageError, OSError, pa.ArrowException) as exc:
        log.warning("could not update %s: %s", storage.uri_for(SNAPSHOT.rstrip("/")), exc)
    run_doc["snapshot_s"] = round(time.perf_counter() - t0, 3)


def _root_cause(exc: BaseException) -> str:
    """The innermost real error, where Ray wraps a replica's exception in its own.

    Ray Data chains an empty marker exception (SystemException, UserCodeException) as ``__cause__``,
    and an actor that died in its constructor carries the original traceback as text: its last line is
    the error a user needs.
    """
    seen = set()
    while id(exc) not in seen:
        seen.add(id(exc))
        inner = getattr(exc, "cause", None)
        if not isinstance(inner, BaseException):
            inner = exc.__cause__
        if not isinstance(inner, BaseException) or not str(inner).strip():
            break
        exc = inner
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__

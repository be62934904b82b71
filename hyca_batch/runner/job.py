"""The batch job's driver: validate, resume, fan out over Ray Data, retry, summarize.

Validation reads every manifest on the driver before any model loads, because two checks need the whole
manifest at once (duplicate ids across files, and which ids a previous run already committed); the
validated requests then go to Ray Data as Arrow blocks, so the replicas never re-parse or re-validate.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import platform
import sys
import time
import tempfile
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from hyca_batch import __version__
from hyca_batch.config import JobConfig
from hyca_batch.hyca import SolverMap
from hyca_batch.manifest import Manifest, Request, RowError, check_size, read_manifest
from hyca_batch.models import ModelSpec, resolve_model
from hyca_batch.records import (
    SNAPSHOT_KEY,
    committed_ids,
    failed_ids,
    read_error,
    run_key,
    utcnow,
    write_error,
    write_snapshot,
)
from hyca_batch.runner.replica import Replica
from hyca_batch.storage import Storage, StorageError, open_storage

log = logging.getLogger(__name__)

RUN_KEY = "run.json"
PROGRESS_KEY = "progress.json"
SOLVER_MAP_KEY = "solver_map.safetensors"


class JobError(RuntimeError):
    """The job cannot start; the message says why and what to do."""


@dataclass
class JobSummary:
    run_id: str
    out: str
    total_rows: int = 0
    done: int = 0  # generated and committed by this run
    skipped: int = 0  # committed by an earlier run
    failed: int = 0  # failed in this run after every allowed attempt
    exhausted: int = 0  # failed in earlier runs max_attempts times; not tried again
    rejected: int = 0  # invalid rows (error records, never run)
    merged_duplicates: int = 0
    elapsed_s: float = 0.0
    video_seconds: list[float] = field(default_factory=list)
    speedups: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    @property
    def videos_per_minute(self) -> float:
        return 60.0 * self.done / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def mean_seconds_per_video(self) -> float:
        return sum(self.video_seconds) / len(self.video_seconds) if self.video_seconds else 0.0

    @property
    def mean_speedup(self) -> float:
        return sum(self.speedups) / len(self.speedups) if self.speedups else 0.0

    @property
    def ok(self) -> bool:
        return self.failed == 0 and self.exhausted == 0 and self.rejected == 0

    def counts(self) -> dict[str, Any]:
        return {
            "total_rows": self.total_rows,
            "done": self.done,
            "skipped": self.skipped,
            "failed": self.failed,
            "exhausted": self.exhausted,
            "rejected": self.rejected,
            "merged_duplicates": self.merged_duplicates,
            "elapsed_s": round(self.elapsed_s, 3),
            "videos_per_minute": round(self.videos_per_minute, 3),
            "mean_seconds_per_video": round(self.mean_seconds_per_video, 3),
            "mean_speedup_estimate": round(self.mean_speedup, 3),
        }


class Progress:
    """``progress.json`` under the output, rewritten as the job runs (at most every ``every_s``).

    The same numbers as the progress bar in ``ray job logs -f``, for dashboards and scripts that watch
    the bucket. The invocation's ``runs/<run_id>.json`` gets the counts and ``updated_at`` too, so that a
    driver killed mid-run leaves the time it ran on record (the cost report charges it). Failing to write
    either never stops the job.
    """

    def __init__(self, storage: Storage, summary: JobSummary, run_doc: dict[str, Any], to_generate: int,
                 t_start: float, every_s: float = 10.0):
        self.storage, self.summary, self.run_doc, self.to_generate = storage, summary, run_doc, to_generate
        self.t_start, self.every_s, self.last = t_start, every_s, -math.inf
        self.retrying = 0

    def update(self, status: str = "running", force: bool = False) -> None:
        now = time.perf_counter()
        if not force and now - self.last < self.every_s:
            return
        self.last = now
        s = self.summary
        s.elapsed_s = now - self.t_start  # so far; run_job sets the final value
        left = self.to_generate - s.done - s.failed
        rate = s.videos_per_minute / 60
        doc = {
            "run_id": s.run_id,
            "status": status,
            "to_generate": self.to_generate,
            "retrying": self.retrying,
            **s.counts(),
            "eta_s": round(left / rate, 1) if rate > 0 and status == "running" else None,
            "updated_at": utcnow().isoformat(),
        }
        self.run_doc.update(counts=s.counts(), updated_at=doc["updated_at"])
        for key, body in ((PROGRESS_KEY, doc), (run_key(s.run_id), self.run_doc)):
            try:
                self.storage.put_bytes(key, json.dumps(body, indent=2, default=str).encode(), overwrite=True)
            except (StorageError, OSError) as exc:
                log.warning("could not update %s: %s", self.storage.uri_for(key), exc)


def package_versions() -> dict[str, str]:
    versions = {"hyca_batch": __version__, "python": platform.python_version()}
    for name in ("torch", "diffusers", "transformers", "ray", "av", "pyarrow", "boto3"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def generation_identity(config: JobConfig, defaults: dict[str, Any], model_name: str) -> dict[str, Any]:
    """What must match for two runs to write into the same output: same inputs give the same videos."""
    cache = dataclasses.asdict(config.cache_config())
    if config.cache == "hyca":
        # A map given by path is pinned by its content; a calibrated one is stored with the outputs and reused.
        cache["solver_map"] = SolverMap.load(config.solver_map).id if config.solver_map else "calibrated"
    return {"model": model_name, "cache": cache, "defaults": defaults}


def run_job(config: JobConfig, *, force: bool = False) -> JobSummary:
    started_at, t_start = utcnow(), time.perf_counter()
    run_id = started_at.strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:8]

    spec = resolve_model(config.model)
    config.parallel_config()  # bad --sp/--ulysses/--ring fail here, before any work
    defaults = spec.defaults.merged(**config.generation_overrides())
    bad_defaults = check_size(defaults.height, defaults.width, defaults.num_frames)
    if bad_defaults:
        raise JobError("; ".join(f"job default {f} {m}" for f, m in bad_defaults))
    manifest = read_manifest(config.manifests, defaults, max_prompt_chars=config.max_prompt_chars,
                             s3_endpoint_url=config.s3_endpoint_url)
    # After the manifest, so that a bad manifest leaves no output directory behind; on S3 this checks the bucket.
    storage = open_storage(config.out, s3_endpoint_url=config.s3_endpoint_url)
    identity = generation_identity(config, dataclasses.asdict(defaults), spec.name)
    _check_previous_run(storage, identity, force)

    summary = JobSummary(run_id=run_id, out=storage.uri, total_rows=manifest.total_rows)
    summary.merged_duplicates = manifest.merged_duplicates
    committed = committed_ids(storage)
    _write_rejections(storage, manifest.rejected, committed, run_id, summary)

    pending, attempts, summary.skipped, summary.exhausted = _plan(storage, manifest, committed, config.max_attempts)
    run_doc = {
        "run_id": run_id,
        "status": "running",
        "identity": identity,
        "config": config.to_dict(),
        "model": dataclasses.asdict(spec),
        "versions": package_versions(),
        "manifest_files": manifest.files,
        "started_at": started_at.isoformat(),
    }
    storage.put_bytes(RUN_KEY, json.dumps(run_doc, indent=2, default=str).encode(), overwrite=True)
    log.info(
        "run %s: %d rows, %d to generate, %d already committed, %d rejected",
        run_id, manifest.total_rows, len(pending), summary.skipped, summary.rejected,
    )

    progress = Progress(storage, summary, run_doc, len(pending), t_start)
    progress.update(force=True)
    if len(pending):
        try:
            _init_ray(config)
            # What the job holds while it runs: the cost report charges it for the whole run.
            run_doc["reservation"] = {"replicas": config.replicas, "gpus_per_replica": _replica_gpus(config),
                                      "cpus_per_replica": config.cpus_per_replica}
            t_map = time.perf_counter()
            solver_map = _solver_map(config, spec, storage, pending)
            if config.cache == "hyca":
                run_doc["calibration_s"] = time.perf_counter() - t_map  # calibrating, or loading a map
            progress.update(force=True)  # the reservation on record at once: a killed driver is still charged
            if solver_map is not None:
                run_doc["solver_map"] = {"id": solver_map.id, "uri": storage.uri_for(SOLVER_MAP_KEY), **solver_map.metadata}
            _execute(config, spec, manifest, pending, attempts, run_id, summary, solver_map, progress)
        except Exception as exc:  # the replicas could not run at all (model missing, no resources, ...)
            cause = _root_cause(exc)
            run_doc["error"] = cause
            _close_run(storage, run_doc, summary, progress, "failed")
            raise JobError(f"the job stopped after {summary.done} videos: {cause}") from exc

    if summary.done:
        try:
            write_snapshot(storage)
        except (StorageError, OSError) as exc:  # only a cache for readers: records/ has everything
            log.warning("could not write %s: %s", storage.uri_for(SNAPSHOT_KEY), exc)
    summary.elapsed_s = time.perf_counter() - t_start
    _close_run(storage, run_doc, summary, progress, "finished")
    return summary


def _close_run(storage: Storage, run_doc: dict[str, Any], summary: JobSummary, progress: Progress, status: str) -> None:
    """The run's last word: progress.json, then run.json and ``runs/<run_id>.json`` (the output's history)."""
    run_doc["status"] = status
    progress.update(status, force=True)
    run_doc.update(finished_at=utcnow().isoformat(), counts=summary.counts())
    body = json.dumps(run_doc, indent=2, default=str).encode()
    storage.put_bytes(RUN_KEY, body, overwrite=True)
    storage.put_bytes(run_key(summary.run_id), body, overwrite=True)


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


def _check_previous_run(storage: Storage, identity: dict[str, Any], force: bool) -> None:
    if not storage.exists(RUN_KEY):
        return
    previous = json.loads(storage.read_bytes(RUN_KEY)).get("identity")
    if previous is not None and previous != identity and not force:
        raise JobError(
            f"{storage.uri_for(RUN_KEY)} was written by a run with a different configuration "
            f"({json.dumps(previous, sort_keys=True)} vs {json.dumps(identity, sort_keys=True)}); "
            "its videos would not match this run's. Use another --out, or --force to write into it anyway."
        )


def _write_rejections(
    storage: Storage, rejected: list[RowError], committed: set[str], run_id: str, summary: JobSummary
) -> None:
    by_key: dict[str, list[RowError]] = defaultdict(list)
    for err in rejected:
        by_key[err.key].append(err)
    for key, errs in by_key.items():
        summary.rejected += 1
        summary.failures.extend(str(e) for e in errs)
        if key in committed:
            continue  # an earlier valid row committed this id; the record stands
        message = "; ".join(str(e) for e in errs)
        previous = read_error(storage, key)
        if previous and previous.get("status") == "rejected" and previous.get("message") == message:
            continue  # the same rejection, already on record
        write_error(
            storage,
            {
                "id": key,
                "status": "rejected",
                "attempt": 0,
                "error_type": "ManifestError",
                "message": message,
                "problems": [dataclasses.asdict(e) for e in errs],
                "prompt": errs[0].prompt,
                "source_file": errs[0].file,
                "source_row": errs[0].row,
                "run_id": run_id,
                "at": utcnow().isoformat(),
            },
        )


def _plan(
    storage: Storage, manifest: Manifest, committed: set[str], max_attempts: int
) -> tuple[pa.Table, dict[str, int], int, int]:
    """Which requests to run now, with the number of attempts each has had."""
    ids = manifest.requests.column("id").to_pylist()
    errored = failed_ids(storage)
    attempts: dict[str, int] = {}
    skipped = exhausted = 0
    keep = []
    for i in ids:
        if i in committed:
            skipped += 1
            keep.append(False)
            continue
        tried = 0
        if i in errored:  # only ids with an error record cost a read
            previous = read_error(storage, i) or {}
            tried = int(previous.get("attempt", 0)) if previous.get("status") == "failed" else 0
        if tried >= max_attempts:
            exhausted += 1
            keep.append(False)
            continue
        attempts[i] = tried
        keep.append(True)
    # The manifest position travels with each request: --baseline-every K picks every K-th by it.
    requests = manifest.requests.append_column("ordinal", pa.array(range(len(ids)), type=pa.int64()))
    pending = requests.filter(pa.array(keep, type=pa.bool_())) if ids else requests
    return pending, attempts, skipped, exhausted


def _solver_map(config: JobConfig, spec: ModelSpec, storage: Storage, pending: pa.Table) -> SolverMap | None:
    """hyca's map: the one given, else the one an earlier run of this output calibrated, else calibrate now.

    Calibration runs once, on the first pending prompt, in a Ray task with a replica's resources (the
    driver may have no GPU), and the map is stored with the outputs so a resumed run uses the same one.
    """
    if config.cache != "hyca":
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

        _init_ray(config)
        request = Request.from_row(pending.slice(0, 1).to_pylist()[0])
        log.warning("calibrating the HyCa solver map on %r (interval %d, %d clusters)",
                    request.prompt[:60], config.interval, config.clusters)
        task = ray.remote(_calibrate).options(num_cpus=config.cpus_per_replica, num_gpus=_replica_gpus(config))
        smap = ray.get(task.remote(spec, request, config))
    if smap.metadata.get("interval") != config.interval:
        log.warning("solver map %s was calibrated for interval %s; this run uses %d, where its choices may not be best",
                    smap.id, smap.metadata.get("interval"), config.interval)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / SOLVER_MAP_KEY
        smap.save(path)
        storage.put_bytes(SOLVER_MAP_KEY, path.read_bytes(), overwrite=True)
        storage.put_bytes(SOLVER_MAP_KEY.replace(".safetensors", ".json"), path.with_suffix(".json").read_bytes(), overwrite=True)
    return smap


def _calibrate(spec: ModelSpec, request: Request, config: JobConfig) -> SolverMap:
    import torch

    from hyca_batch.hyca.probe import CalibrationConfig, calibrate_model
    from hyca_batch.models import load_model

    calibration = CalibrationConfig(
        interval=config.interval, clusters=config.clusters, warmup=config.warmup, granularity=config.granularity
    )
    threads = max(1, int(config.cpus_per_replica))
    if config.sp > 1:  # on the replica's N devices: a 720p probe may not fit on one
        from hyca_batch.parallel import RankGroup, RankSetup

        setup = RankSetup(model=spec, parallel=config.parallel_config(), device=config.device,
                          threads=max(1, threads // config.sp))
        with RankGroup(setup) as ranks:
            return ranks.calibrate([request], calibration)
    torch.set_num_threads(threads)
    device = config.device or ("cuda" if torch.cuda.is_available() else None)
    return calibrate_model(load_model(spec, device=device), [request], calibration)


def _gpus_per_replica(config: JobConfig) -> float:
    import ray

    if config.gpus_per_replica is not None:
        return config.gpus_per_replica
    if config.sp > 1:
        return config.sp  # one device per rank; on a CPU-only machine, fake GPUs (_init_ray)
    return 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0


def _replica_gpus(config: JobConfig) -> float:
    """GPUs per replica, checked against the cluster: a replica asking for more would wait forever."""
    import ray

    need, have = _gpus_per_replica(config), ray.cluster_resources().get("GPU", 0)
    if need > have:
        raise JobError(
            f"a replica needs {need:g} GPUs (--sp {config.sp}) and the Ray cluster has {have:g}. Use a smaller "
            "--sp, or on a CPU-only cluster give Ray stand-in GPUs (`ray start --num-gpus N`); an embedded "
            "local Ray adds them itself"
        )
    return need


def _blocks(table: pa.Table, replicas: int) -> list[pa.Table]:
    """Small blocks, so every replica gets work and the tail of the job stays short."""
    per_block = max(1, min(16, math.ceil(table.num_rows / (replicas * 16))))
    return [table.slice(i, per_block) for i in range(0, table.num_rows, per_block)]


def _init_ray(config: JobConfig) -> None:
    import ray

    if ray.is_initialized():
        return
    address = config.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, logging_level=logging.WARNING)
        return
    kwargs: dict[str, Any] = {}
    if config.sp > 1 and config.gpus_per_replica is None:
        import torch

        if not torch.cuda.is_available():
            # No GPUs: N stand-in GPUs per replica, so Ray places sequence-parallel replicas as it would
            # on GPUs (the ranks run on the CPU).
            kwargs["num_gpus"] = config.sp * config.replicas
    # "local": always a new embedded Ray, as documented. Left to its default, ray.init() joins whatever
    # /tmp/ray/ray_current_cluster names, and waits forever when that cluster is gone.
    ray.init(address="local", include_dashboard=False, logging_level=logging.WARNING, **kwargs)


def _execute(
    config: JobConfig,
    spec: ModelSpec,
    manifest: Manifest,
    pending: pa.Table,
    attempts: dict[str, int],
    run_id: str,
    summary: JobSummary,
    solver_map: SolverMap | None,
    progress: Progress,
) -> None:
    import ray
    from tqdm import tqdm

    _init_ray(config)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # the job's own bar counts videos, which is what a user waits for
    ctx.enable_operator_progress_bars = False
    for handler in logging.getLogger("ray.data").handlers:
        if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
            handler.setLevel(logging.WARNING)  # Ray Data's plan chatter stays in its session log file
    gpus = _replica_gpus(config)
    # In `ray job logs` (no terminal) every refresh is a line of its own: one every 30 s is plenty.
    bar = tqdm(total=pending.num_rows, unit="video", desc="generating", disable=not config.progress,
               mininterval=0.1 if sys.stderr.isatty() else 30.0)
    remaining = pending
    while remaining.num_rows:
        ids = remaining.column("id").to_pylist()
        attempt_col = pa.array([attempts[i] + 1 for i in ids], type=pa.int64())
        table = remaining.append_column("attempt", attempt_col)
        ds = ray.data.from_arrow(_blocks(table, config.replicas)).map_batches(
            Replica,
            fn_constructor_kwargs={
                "model": spec,  # resolved: a relative model directory means the driver's
                "out": summary.out,  # the resolved URI: a replica's working directory is not the driver's
                "s3_endpoint_url": config.s3_endpoint_url,
                "cache": config.cache_config(),
                "solver_map": solver_map,
                "baseline_every": config.baseline_every,
                "run_id": run_id,
                "extra_schema": manifest.extra_schema,
                "device": config.device,
                "threads": int(config.cpus_per_replica),
                "parallel": config.parallel_config(),
            },
            batch_size=1,
            batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=config.replicas),
            num_cpus=config.cpus_per_replica,
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
                log.warning("video %s failed (attempt %d of %d), will retry: %s",
                            row["id"], row["attempt"], config.max_attempts, row["error"])
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

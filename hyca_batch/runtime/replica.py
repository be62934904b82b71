"""The replica: a stateful callable, one per Ray actor, one model load per replica for the whole job.

The job streams blocks of requests to it (``job.execute``). It owns the whole life of a video: generate,
encode, put the mp4, then publish the record as the commit marker, and hands the committed records back so
the job can keep the output's snapshot without reading them again. It generates through a backend
(``backend``): in its own process, or with ``--sp N`` on the N devices it holds through a group of N rank
processes, whose rank 0's frames it writes. Nothing raises out of ``__call__``: a failing video becomes an
error record and a ``failed`` result row, so a block is never dropped and one bad video never costs the others.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import socket
import time
import traceback
import uuid
from typing import Any

import pyarrow as pa

from hyca_batch.cache import SolverMap
from hyca_batch.config import CacheConfig, ParallelConfig
from hyca_batch.images import attach_image, error_fields
from hyca_batch.models import ModelSpec
from hyca_batch.pipeline.encode import encode_mp4
from hyca_batch.pipeline.fidelity import psnr, relative_l2, ssim
from hyca_batch.records import committed_output, utcnow, write_error, write_record
from hyca_batch.runtime.backend import open_backend
from hyca_batch.runtime.ranks import RankFailure, load_object
from hyca_batch.runtime.workers import RankSetup
from hyca_batch.storage import AlreadyExists, open_storage
from hyca_batch.storage.layout import record_key, replica_key, video_key
from hyca_batch.types import GenerationResult, Request

log = logging.getLogger(__name__)

#: ``module:function`` (or ``/path/file.py:function``) called as ``function(replica, request)`` before each video:
#: instrumentation from outside the package (the fault tests kill, hang or break a replica with it). The job
#: passes every ``HYCA_*`` variable of its own environment on to the replicas.
REPLICA_HOOK_ENV = "HYCA_REPLICA_HOOK"

#: Errors after which a device cannot be trusted with the next video: a CUDA context poisoned by an illegal
#: access or a device-side assert, a failed NCCL communicator. Not the video's fault: the replica is replaced
#: and the video runs elsewhere, uncharged. (Running out of memory is the video's: it is charged as usual.)
DEVICE_FAULT_MARKERS = (
    "CUDA error",
    "CUBLAS_STATUS_",
    "CUDNN_STATUS_",
    "cuDNN error",
    "device-side assert",
    "NCCL error",
    "ncclUnhandledCudaError",
    "ncclSystemError",
)


def is_device_fault(exc: BaseException) -> bool:
    """Whether ``exc`` says the device (or the rank group on it) is broken, rather than this one video."""
    text = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, RankFailure) and "during start" in text:
        return True  # the group that replaces a failed one cannot start: every later video would fail the same
    return "out of memory" not in text and any(marker in text for marker in DEVICE_FAULT_MARKERS)


RESULT_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("status", pa.string()),  # done | already_done | failed | device_fault (not run: the device is broken)
        ("attempt", pa.int64()),
        ("total_s", pa.float64()),
        ("speedup", pa.float64()),  # the record's speedup_estimate, for the job summary
        ("measured_speedup", pa.float64()),  # with an uncached baseline (--baseline-every): measured
        ("psnr", pa.float64()),  # and the fidelity to it
        ("error", pa.string()),
    ]
)


class Replica:
    def __init__(
        self,
        *,
        model: ModelSpec,
        out: str,
        cache: CacheConfig,
        run_id: str,
        extra_schema: pa.Schema,
        solver_map: SolverMap | None = None,
        baseline_every: int = 0,
        device: str | None = None,
        cpus: float = 1.0,
        parallel: ParallelConfig = ParallelConfig(),
        s3_endpoint_url: str | None = None,
    ):
        started_at, t_load = utcnow(), time.perf_counter()
        self.parallel = parallel
        # A model that cannot load fails here, before any video, with or without --sp.
        self.backend = open_backend(
            RankSetup(model=model, parallel=parallel, cache=cache, solver_map=solver_map, device=device), cpus=cpus
        )
        info = self.backend.info
        self.model_name, self.device_type, self.device_name = info["model"], info["device_type"], info["device_name"]
        self.storage = open_storage(out, s3_endpoint_url=s3_endpoint_url)
        self.s3_endpoint_url = s3_endpoint_url  # also where s3:// images of image-to-video rows are read
        self._announce(run_id, started_at, time.perf_counter() - t_load)
        self.cache = cache
        self.solver_map_id = solver_map.id if solver_map is not None and cache.mode == "hyca" else None
        self.baseline_every = baseline_every
        self.run_id = run_id
        self.extra_schema = extra_schema
        hook = os.environ.get(REPLICA_HOOK_ENV)
        self.hook = load_object(hook) if hook else None

    def _announce(self, run_id: str, started_at: dt.datetime, load_s: float) -> None:
        """``runs/<run_id>/replica-*.json``: when this replica started and how long its model took to load.

        The cost report charges model loading from these; nothing else needs them, so failing to write one
        never stops the replica.
        """
        doc = {
            "run_id": run_id,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started_at": started_at.isoformat(),
            "load_s": load_s,
            "device_type": self.device_type,
            "device_name": self.device_name,
            "device_count": self.parallel.sp,
        }
        try:
            self.storage.put_bytes(replica_key(run_id, uuid.uuid4().hex[:12]), json.dumps(doc, indent=2).encode())
        except Exception as exc:  # noqa: BLE001 - bookkeeping only
            log.warning("could not record replica start-up: %s", exc)

    def __call__(self, batch: pa.Table) -> tuple[pa.Table, pa.Table | None]:
        """A block of requests (``REQUEST_SCHEMA``, the carried columns, ``attempt`` and ``ordinal``) to its
        results (``RESULT_SCHEMA``) and the records it committed (None if none)."""
        requests = Request.from_table(batch, carried=self.extra_schema)
        attempts, ordinals = batch.column("attempt").to_pylist(), batch.column("ordinal").to_pylist()
        rows, records = [], []
        for request, attempt, ordinal in zip(requests, attempts, ordinals):
            if rows and rows[-1]["status"] == "device_fault":  # the rest of the block waits for a sound device
                rows.append(self._result(request.id, "device_fault", attempt, time.perf_counter(), rows[-1]["error"]))
                continue
            row, record = self.process(request, attempt, ordinal)
            rows.append(row)
            if record is not None:
                records.append(record)
        committed = pa.concat_tables(records) if records else None
        return pa.Table.from_pylist(rows, schema=RESULT_SCHEMA), committed

    def process(self, request: Request, attempt: int, ordinal: int) -> tuple[dict[str, Any], pa.Table | None]:
        """Generate, encode and commit one video: its result and its record's row (None unless it committed).
        ``ordinal``, its place in the manifest, picks the baselines."""
        started_at, t0 = utcnow(), time.perf_counter()
        try:
            if self.storage.exists(record_key(request.id)):
                # Committed meanwhile (a concurrent job, an earlier attempt Ray thought lost): the record stands.
                return self._result(request.id, "already_done", attempt, t0), None
            # An image row's image, read here (never through the driver) and checked against the validated hash.
            request = attach_image(request, s3_endpoint_url=self.s3_endpoint_url)
            if self.hook is not None:
                self.hook(self, request)
            result = self.backend.generate(request)
            baseline = self._baseline(request, result) if self._wants_baseline(ordinal) else {}
            t_enc = time.perf_counter()
            data = encode_mp4(result.frames, request.fps)
            t_write = time.perf_counter()
            key, uri, created = self._put_video(request.id, data)
            record = {
                **request.generation_params(),
                "image": request.image,
                "id": request.id,
                "model": self.model_name,
                "cache_mode": self.cache.mode,
                "cache_interval": self.cache.interval,
                "solver_map_id": self.solver_map_id,
                "cache_schedule": result.cache_parts.get("schedule"),
                "cache_forecasts": result.cache_parts.get("forecasts"),
                **result.timings,
                "encode_s": t_write - t_enc,
                "transformer_passes_full": result.transformer_passes_full,
                "transformer_passes_skipped": result.transformer_passes_skipped,
                "full_pass_s": result.mean_full_pass_s,
                "speedup_estimate": result.speedup_estimate,
                **baseline,
                "device_type": self.device_type,
                "device_count": self.parallel.sp,
                "device_name": self.device_name,
                "status": "done",
                "attempt": attempt,
                "output_uri": uri,
                "bytes": len(data),
                "sha256": hashlib.sha256(data).hexdigest(),
                "started_at": started_at,
                "source_file": request.source_file,
                "source_row": request.source_row,
                "run_id": self.run_id,
            }
            # write_s covers the mp4 and the record; total_s everything up to the commit.
            record["finished_at"] = utcnow()
            record["write_s"] = time.perf_counter() - t_write
            record["total_s"] = time.perf_counter() - t0
            committed = write_record(self.storage, record, self.extra_schema, request.extra)
            if committed is None and created and committed_output(self.storage, request.id) != uri:
                # Another writer committed the id first, naming its own mp4 (or ours, when it found our bytes equal
                # to its own and named them: then they stay).
                self.storage.delete(key)
            status = "done" if committed is not None else "already_done"
            # Uncached, the estimate only measures loop overhead (~0.9); the summary shows speedups of caches.
            speedup = result.speedup_estimate if self.cache.mode != "none" else None
            measured = {k: baseline.get(k) for k in ("measured_speedup", "psnr")}
            return self._result(request.id, status, attempt, t0, speedup=speedup, **measured), committed
        except Exception as exc:  # one video's failure must not cost the batch
            if is_device_fault(exc):
                log.error("replica device fault on video %s: %s", request.id, exc)
                return self._result(request.id, "device_fault", attempt, t0, f"{type(exc).__name__}: {exc}"), None
            log.exception("video %s failed (attempt %d)", request.id, attempt)
            message = f"{type(exc).__name__}: {exc}"
            try:
                write_error(
                    self.storage,
                    {
                        "id": request.id,
                        "status": "failed",
                        "attempt": attempt,
                        "error_type": type(exc).__name__,
                        "message": str(exc),
                        "traceback": traceback.format_exc(),
                        "prompt": request.prompt,
                        **error_fields(request.image, request.image_sha256),
                        "source_file": request.source_file,
                        "source_row": request.source_row,
                        "run_id": self.run_id,
                        "at": utcnow().isoformat(),
                        "elapsed_s": time.perf_counter() - t0,  # the cost report charges failed tries
                    },
                )
            except Exception as write_exc:  # storage down: the driver still learns of the failure
                message += f" (and its error record could not be written: {write_exc})"
            return self._result(request.id, "failed", attempt, t0, message), None

    def _put_video(self, video_id: str, data: bytes) -> tuple[str, str, bool]:
        """Publish the mp4 exclusively, never over other bytes: (key, URI, whether this call created the object).

        The plain key is taken unless some earlier try left bytes there without committing (it crashed, or it is
        a second writer still running, whose record would then name those bytes). Bytes equal to ours (a seed
        gives the same video on the same device) are named as they are, so a try killed between its mp4 and its
        record leaves no stray copy behind; other bytes are left alone and this try's mp4 goes under a key of
        its own. The record that commits names its mp4, so its sha256 always matches the object.
        """
        key = video_key(video_id)
        try:
            return key, self.storage.put_bytes(key, data), True
        except AlreadyExists:
            if self.storage.read_bytes(key) == data:
                return key, self.storage.uri_for(key), False
        while True:
            key = video_key(video_id, attempt=uuid.uuid4().hex[:12])
            try:
                return key, self.storage.put_bytes(key, data), True
            except AlreadyExists:
                continue

    def _wants_baseline(self, ordinal: int) -> bool:
        return self.baseline_every > 0 and self.cache.mode != "none" and ordinal % self.baseline_every == 0

    def _baseline(self, request: Request, cached: GenerationResult) -> dict[str, float]:
        """The same request uncached, on the same model: the measured speedup and the cache's fidelity."""
        reference = self.backend.generate(request, uncached=True)
        return {
            "baseline_denoise_s": reference.timings["denoise_s"],
            "measured_speedup": reference.timings["denoise_s"] / cached.timings["denoise_s"],
            "psnr": psnr(reference.frames, cached.frames),
            "ssim": ssim(reference.frames, cached.frames),
            "latent_rel_l2": relative_l2(reference.latents, cached.latents),
        }

    @staticmethod
    def _result(
        video_id: str,
        status: str,
        attempt: int,
        t0: float,
        error: str | None = None,
        speedup: float | None = None,
        measured_speedup: float | None = None,
        psnr: float | None = None,
    ) -> dict[str, Any]:
        return {
            "id": video_id,
            "status": status,
            "attempt": attempt,
            "total_s": time.perf_counter() - t0,
            "speedup": speedup,
            "measured_speedup": measured_speedup,
            "psnr": psnr,
            "error": error,
        }

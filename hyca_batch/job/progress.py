"""What a running job tells the world: its counts (``JobSummary``), ``progress.json`` as it runs, and the run
documents (``run.json``, ``runs/<run_id>.json``) that a later run and the cost report read."""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import platform
import time
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

from hyca_batch import __version__
from hyca_batch.records import utcnow
from hyca_batch.storage import Storage, StorageError
from hyca_batch.storage.layout import PROGRESS_KEY, RUN_KEY, run_key

log = logging.getLogger(__name__)

#: Failures a summary lists by name; the error records hold every one.
MAX_FAILURES_SHOWN = 1000


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
    # Sums, not per-video lists: a million-video run keeps no Python object per video.
    video_seconds: float = 0.0
    speedup_sum: float = 0.0
    speedup_count: int = 0
    # Videos with an uncached baseline (--baseline-every): measured speedup and PSNR against it.
    baselines: int = 0
    measured_speedup_sum: float = 0.0
    psnr_sum: float = 0.0
    last_commit_at: dt.datetime | None = None  # when the run's last video committed: the end of generation
    failures: list[str] = field(default_factory=list)  # the first MAX_FAILURES_SHOWN, as "id: why"
    failures_more: int = 0  # and how many more

    def add_video(
        self, total_s: float, speedup: float | None, measured_speedup: float | None = None, psnr: float | None = None
    ) -> None:
        self.done += 1
        self.video_seconds += total_s
        self.last_commit_at = utcnow()
        if speedup is not None:
            self.speedup_sum += speedup
            self.speedup_count += 1
        if measured_speedup is not None and psnr is not None:
            self.baselines += 1
            self.measured_speedup_sum += measured_speedup
            self.psnr_sum += psnr

    def add_failure(self, line: str) -> None:
        if len(self.failures) < MAX_FAILURES_SHOWN:
            self.failures.append(line)
        else:
            self.failures_more += 1

    @property
    def videos_per_minute(self) -> float:
        return 60.0 * self.done / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def mean_seconds_per_video(self) -> float:
        return self.video_seconds / self.done if self.done else 0.0

    @property
    def mean_speedup(self) -> float:
        return self.speedup_sum / self.speedup_count if self.speedup_count else 0.0

    @property
    def mean_measured_speedup(self) -> float:
        return self.measured_speedup_sum / self.baselines if self.baselines else 0.0

    @property
    def mean_psnr(self) -> float:
        return self.psnr_sum / self.baselines if self.baselines else 0.0

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
            "baselines": self.baselines,
            "mean_measured_speedup": round(self.mean_measured_speedup, 3) if self.baselines else None,
            "mean_psnr": round(self.mean_psnr, 2) if self.baselines else None,
        }


def package_versions() -> dict[str, str]:
    versions = {"hyca_batch": __version__, "python": platform.python_version()}
    for name in ("torch", "diffusers", "transformers", "ray", "av", "pyarrow", "boto3"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def _put_json(storage: Storage, key: str, body: dict[str, Any]) -> None:
    storage.put_bytes(key, json.dumps(body, indent=2, default=str).encode(), overwrite=True)


class Progress:
    """``progress.json`` under the output, rewritten as the job runs (at most every ``every_s``).

    The same numbers as the progress bar in ``ray job logs -f``, for dashboards and scripts that watch
    the bucket. The invocation's ``runs/<run_id>.json`` gets the counts and ``updated_at`` too, so that a
    driver killed mid-run leaves the time it ran on record (the cost report charges it). Failing to write
    either never stops the job.
    """

    def __init__(
        self,
        storage: Storage,
        summary: JobSummary,
        run_doc: dict[str, Any],
        to_generate: int,
        t_start: float,
        every_s: float = 10.0,
    ):
        self.storage, self.summary, self.run_doc, self.to_generate = storage, summary, run_doc, to_generate
        self.t_start, self.every_s, self.last = t_start, every_s, -math.inf
        self.retrying = 0

    def start(self) -> None:
        """Publish ``run.json``: the output now belongs to this invocation's configuration."""
        _put_json(self.storage, RUN_KEY, self.run_doc)
        self.update(force=True)

    def update(self, status: str = "running", force: bool = False) -> None:
        now = time.perf_counter()
        if not force and now - self.last < self.every_s:
            return
        self.last = now
        s = self.summary
        s.elapsed_s = now - self.t_start
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
                _put_json(self.storage, key, body)
            except (StorageError, OSError) as exc:
                log.warning("could not update %s: %s", self.storage.uri_for(key), exc)

    def close(self, status: str, finished_at: dt.datetime | None = None) -> None:
        """The run's last word: progress.json, then run.json and ``runs/<run_id>.json`` (the output's history).

        ``finished_at`` is when the run's devices were released (default: now); the cost report charges the run
        up to it, so the driver's own bookkeeping after it (the snapshot) is not billed as generation.
        """
        self.run_doc["status"] = status
        self.update(status, force=True)
        self.run_doc.update(finished_at=(finished_at or utcnow()).isoformat(), counts=self.summary.counts())
        _put_json(self.storage, RUN_KEY, self.run_doc)
        _put_json(self.storage, run_key(self.summary.run_id), self.run_doc)

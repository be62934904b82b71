"""A run's GPU bill, and where it went, from what the job left in its output.

A *run* is one output (``--out``): every invocation that wrote into it (``runs/<run_id>.json``), its
records, error records, and the replicas' start-up notes (``runs/<run_id>/replica-*.json``). Each
invocation is charged for what it reserved (replicas x devices per replica) from its start to its end,
so model loading, start-up, calibration, failed tries and idle devices are all in the bill, and
cost per video x videos = the bill. The bill is then split by what the devices did: per video stage
(from the records), failed tries (from the error records), model loading, calibration, and the rest,
which is start-up and idle time.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from hyca_batch.records import read_records
from hyca_batch.report.prices import PriceTable
from hyca_batch.storage import Storage, open_storage
from hyca_batch.storage.layout import (
    ERRORS,
    RUNS,
    SOLVER_MAP_JSON_KEY,
    error_ids,
    error_key,
    is_replica_key,
    is_run_key,
    replica_run_id,
)

#: Device-time categories, in the order they are shown: per-video stages first, then overheads.
CATEGORIES: dict[str, str] = {
    "text_encode": "text encoding",
    "denoise": "denoising",
    "decode": "VAE decoding",
    "encode": "mp4 encoding",
    "write": "writing",
    "other_video": "other per-video work",
    "baseline": "uncached baselines",
    "failed_tries": "failed tries",
    "model_loading": "model loading",
    "calibration": "calibration",
    "idle_startup": "start-up and idle",
}
_STAGES = ("text_encode", "denoise", "decode", "encode", "write")

SUMMARY_SCHEMA = pa.schema(
    [
        pa.field("run", pa.string(), nullable=False),
        pa.field("uri", pa.string()),
        pa.field("model", pa.string()),
        pa.field("device", pa.string()),
        pa.field("device_unit", pa.string()),  # GPU or CPU core: what a device-hour is
        pa.field("usd_per_device_hour", pa.float64()),
        pa.field("invocations", pa.int64()),
        pa.field("replicas", pa.int64()),
        pa.field("sp", pa.int64()),
        pa.field("devices", pa.float64()),  # reserved by the latest invocation
        pa.field("cache_mode", pa.string()),
        pa.field("cache_interval", pa.int64()),
        pa.field("solver_map_id", pa.string()),
        pa.field("videos", pa.int64()),
        pa.field("failed", pa.int64()),
        pa.field("rejected", pa.int64()),
        pa.field("video_seconds", pa.float64()),  # seconds of generated video
        pa.field("wall_s", pa.float64()),
        pa.field("device_hours", pa.float64()),
        pa.field("bill_usd", pa.float64()),
        pa.field("cost_per_video_usd", pa.float64()),
        pa.field("cost_per_video_second_usd", pa.float64()),
        pa.field("videos_per_device_hour", pa.float64()),
        pa.field("mean_total_s", pa.float64()),
        pa.field("mean_denoise_s", pa.float64()),
        pa.field("mean_speedup_estimate", pa.float64()),
        pa.field("mean_measured_speedup", pa.float64()),
        pa.field("mean_psnr", pa.float64()),
        pa.field("uncached_estimate_usd", pa.float64()),
        pa.field("saved_usd", pa.float64()),
        *[pa.field(f"hours_{c}", pa.float64()) for c in CATEGORIES],
    ]
)


@dataclass
class Invocation:
    """One ``hyca-batch run`` into the output, with what it reserved and for how long."""

    run_id: str
    doc: dict[str, Any]
    started_at: dt.datetime
    ended_at: dt.datetime
    device_name: str
    device_unit: str
    devices_per_replica: float
    replicas: int
    usd_per_hour: float
    hours: dict[str, float] = field(default_factory=dict)

    @property
    def wall_s(self) -> float:
        return max(0.0, (self.ended_at - self.started_at).total_seconds())

    @property
    def device_hours(self) -> float:
        return self.replicas * self.devices_per_replica * self.wall_s / 3600

    @property
    def bill_usd(self) -> float:
        return self.device_hours * self.usd_per_hour


@dataclass
class RunCosts:
    """One output's costs: its summary row, its invocations, and per-video rows for the plots."""

    label: str
    uri: str
    summary: dict[str, Any]
    invocations: list[Invocation]
    videos: pa.Table  # id, run_id, total_s, stage seconds, speedup_estimate, measured_speedup, cost_usd
    failures: list[dict[str, Any]]
    solver_mix: dict[str, float]


def load_run(uri: str, prices: PriceTable, *, label: str | None = None, s3_endpoint_url: str | None = None) -> RunCosts:
    storage = open_storage(uri, s3_endpoint_url=s3_endpoint_url, create=False)  # a reader leaves no directory
    keys = storage.list(RUNS)
    run_keys = [k for k in keys if is_run_key(k)]
    if not run_keys:
        raise FileNotFoundError(f"{storage.uri}: no runs/*.json here; is this the --out of a hyca-batch run?")
    replica_keys = [k for k in keys if is_replica_key(k)]
    error_keys = [error_key(i) for i in error_ids(storage.list(ERRORS))]
    # hyca runs: the readable map
    map_keys = [SOLVER_MAP_JSON_KEY] if storage.exists(SOLVER_MAP_JSON_KEY) else []
    docs = _read_json(storage, run_keys + replica_keys + error_keys + map_keys)
    records = read_records(storage)

    replicas_by_run: dict[str, list[dict[str, Any]]] = {}
    for k in replica_keys:
        replicas_by_run.setdefault(replica_run_id(k), []).append(docs[k])
    errors = [docs[k] for k in error_keys]
    # An invocation whose replicas never started (a model that failed to load) still held its devices: it is
    # priced as the output's other invocations ran.
    seen = [docs[k].get("device_name") for k in replica_keys] + (
        records.column("device_name").to_pylist() if "device_name" in records.column_names else []
    )
    usual = max(set(n for n in seen if n), key=seen.count, default=None)
    invocations = [
        _invocation(docs[k], records, replicas_by_run.get(docs[k]["run_id"], []), errors, prices, usual)
        for k in sorted(run_keys)
    ]
    invocations.sort(key=lambda inv: inv.started_at)
    videos = _video_rows(records, {inv.run_id: inv for inv in invocations})
    failures = _failures(errors, set(records.column("id").to_pylist()))
    solver_mix = _solver_mix(docs.get(SOLVER_MAP_JSON_KEY))
    name = label or storage.uri.rstrip("/").rsplit("/", 1)[-1]
    summary = _summary(name, storage.uri, invocations, records, videos, failures)
    return RunCosts(name, storage.uri, summary, invocations, videos, failures, solver_mix)


def _read_json(storage: Storage, keys: list[str]) -> dict[str, Any]:
    """Many small objects at once: on S3 each is a round trip, so they go in parallel."""
    docs = {}
    for key, body in zip(keys, storage.read_many(keys)):
        if body is None:
            raise FileNotFoundError(f"{storage.uri_for(key)} was listed but is gone; run the report again")
        docs[key] = json.loads(body)
    return docs


def _time(value: Any) -> dt.datetime | None:
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)
    return _time(dt.datetime.fromisoformat(str(value)))


def _invocation(
    doc: dict[str, Any],
    records: pa.Table,
    replicas: list[dict[str, Any]],
    errors: list[dict[str, Any]],
    prices: PriceTable,
    usual_device: str | None,
) -> Invocation:
    run_id = doc["run_id"]
    mine = records.filter(pc.equal(records.column("run_id"), run_id)) if records.num_rows else records
    started = _time(doc["started_at"])
    # A driver killed mid-run leaves its last heartbeat (updated_at); failing that, its last video.
    ends = [_time(doc.get("finished_at")) or _time(doc.get("updated_at"))]
    if mine.num_rows:
        ends.append(pc.max(mine.column("finished_at")).as_py())
    ended = max([t for t in ends if t is not None], default=started)

    names = [r["device_name"] for r in replicas if r.get("device_name")]
    if not names and "device_name" in mine.column_names:
        names = [n for n in mine.column("device_name").to_pylist() if n]
    reservation = doc.get("reservation")
    if reservation is None:  # nothing was left to generate: no replica was started
        replicas_n, gpus, cpus = 0, 0.0, 0.0
    else:
        replicas_n = int(reservation["replicas"])
        gpus, cpus = float(reservation["gpus_per_replica"]), float(reservation["cpus_per_replica"])
    if not names and usual_device:
        names = [usual_device]
    device_type = "cpu" if names and names[0] == "cpu" else "cuda" if names or gpus > 0 else "cpu"
    device_name = names[0] if names else ("cpu" if device_type == "cpu" else "unknown GPU")
    if device_type == "cpu":
        unit, per_replica = "CPU core", cpus
    else:
        unit, per_replica = "GPU", gpus
    _, price = prices.lookup(device_name) if replicas_n else ("", 0.0)
    inv = Invocation(run_id, doc, started, ended, device_name, unit, per_replica, replicas_n, price)

    # Device-hours by what the devices were doing. Each category is charged the replica's whole reservation.
    hours = dict.fromkeys(CATEGORIES, 0.0)
    scale = per_replica / 3600
    if mine.num_rows:
        sums = {c: _sum(mine, f"{c}_s") for c in _STAGES}
        baseline = _sum(mine, "baseline_denoise_s")
        for c in _STAGES:
            hours[c] = sums[c] * scale
        hours["baseline"] = baseline * scale
        hours["other_video"] = max(0.0, _sum(mine, "total_s") - sum(sums.values()) - baseline) * scale
    for err in errors:
        for attempt in [err, *err.get("history", [])]:
            if attempt.get("run_id") == run_id and attempt.get("status") == "failed":
                hours["failed_tries"] += float(attempt.get("elapsed_s") or 0.0) * scale
    hours["model_loading"] = sum(float(r.get("load_s") or 0.0) for r in replicas) * scale
    hours["calibration"] = float(doc.get("calibration_s") or 0.0) * scale
    hours["idle_startup"] = max(0.0, inv.device_hours - sum(hours.values()))
    inv.hours = hours
    return inv


def _sum(table: pa.Table, column: str) -> float:
    if column not in table.column_names or table.num_rows == 0:
        return 0.0
    return float(pc.sum(table.column(column)).as_py() or 0.0)


def _video_rows(records: pa.Table, invocations: dict[str, Invocation]) -> pa.Table:
    """Per video: its times, speedups, its share of the bill and what it saved against uncached."""
    rows = []
    for rec in records.to_pylist():
        inv = invocations.get(rec["run_id"])
        per_replica, price = (inv.devices_per_replica, inv.usd_per_hour) if inv else (0.0, 0.0)
        cached = rec["cache_mode"] not in (None, "none")
        uncached_denoise = rec["denoise_s"] or 0.0
        if cached:
            if rec.get("baseline_denoise_s") is not None:
                uncached_denoise = rec["baseline_denoise_s"]
            elif rec.get("speedup_estimate") is not None:
                uncached_denoise = rec["speedup_estimate"] * (rec["denoise_s"] or 0.0)
        saved_s = uncached_denoise - (rec["denoise_s"] or 0.0)  # negative where the cache made it slower
        rows.append(
            {
                "id": rec["id"],
                "run_id": rec["run_id"],
                "video_seconds": rec["num_frames"] / rec["fps"] if rec.get("fps") else 0.0,
                **{f"{c}_s": rec.get(f"{c}_s") for c in _STAGES},
                "total_s": rec["total_s"],
                "cached": cached,
                "speedup_estimate": rec["speedup_estimate"] if cached else None,
                "measured_speedup": rec.get("measured_speedup"),
                "psnr": rec.get("psnr"),
                "saved_usd": saved_s * per_replica * price / 3600,
            }
        )
    schema = pa.schema(
        [
            ("id", pa.string()),
            ("run_id", pa.string()),
            ("video_seconds", pa.float64()),
            *[(f"{c}_s", pa.float64()) for c in _STAGES],
            ("total_s", pa.float64()),
            ("cached", pa.bool_()),
            ("speedup_estimate", pa.float64()),
            ("measured_speedup", pa.float64()),
            ("psnr", pa.float64()),
            ("saved_usd", pa.float64()),
        ]
    )
    return pa.Table.from_pylist(rows, schema=schema)


def _failures(errors: list[dict[str, Any]], committed: set[str]) -> list[dict[str, Any]]:
    """Ids still without a video: failed after their tries, or rejected as bad input."""
    out = []
    for err in errors:
        if err.get("id") in committed:
            continue  # failed once, then succeeded
        out.append(
            {
                "id": err.get("id"),
                "status": err.get("status"),
                "attempts": err.get("attempt"),
                "message": str(err.get("message", "")).strip().splitlines()[0][:300] if err.get("message") else "",
                "source": f"{err.get('source_file')} row {err.get('source_row')}",
            }
        )
    return sorted(out, key=lambda f: (f["status"] or "", f["id"] or ""))


def _solver_mix(summary: dict[str, Any] | None) -> dict[str, float]:
    """hyca: the share of cached channels forecast by each solver."""
    if not summary:
        return {}
    counts: dict[str, int] = {}
    for cluster in summary.get("clusters", []):
        counts[cluster["solver"]] = counts.get(cluster["solver"], 0) + int(cluster["channels"])
    total = sum(counts.values()) or 1
    return {s: n / total for s, n in sorted(counts.items(), key=lambda kv: -kv[1])}


def _mean(values: list[Any]) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def _summary(
    name: str,
    uri: str,
    invocations: list[Invocation],
    records: pa.Table,
    videos: pa.Table,
    failures: list[dict[str, Any]],
) -> dict[str, Any]:
    latest = invocations[-1]
    config = latest.doc.get("config", {})
    n = videos.num_rows
    bill = sum(inv.bill_usd for inv in invocations)
    device_hours = sum(inv.device_hours for inv in invocations)
    video_seconds = _sum(videos, "video_seconds")
    saved = _sum(videos, "saved_usd")
    charged = [inv for inv in invocations if inv.replicas]
    devices = sorted({inv.device_name for inv in charged}) or [latest.device_name]
    units = sorted({inv.device_unit for inv in charged}) or [latest.device_unit]
    prices = sorted({inv.usd_per_hour for inv in charged})
    speedups = videos.filter(videos.column("cached")) if n else videos
    row = {
        "run": name,
        "uri": uri,
        "model": ", ".join(sorted(set(records.column("model").to_pylist())))
        if n
        else latest.doc.get("model", {}).get("name"),
        "device": ", ".join(devices),
        "device_unit": ", ".join(units),
        "usd_per_device_hour": prices[0] if len(prices) == 1 else None,
        "invocations": len(invocations),
        "replicas": int(config.get("replicas", 0)),
        "sp": int(config.get("sp", 1)),
        "devices": latest.replicas * latest.devices_per_replica if latest.replicas else None,
        "cache_mode": config.get("cache"),
        "cache_interval": int(config["interval"]) if config.get("cache", "none") != "none" else None,
        "solver_map_id": (latest.doc.get("solver_map") or {}).get("id"),
        "videos": n,
        "failed": sum(f["status"] == "failed" for f in failures),
        "rejected": sum(f["status"] == "rejected" for f in failures),
        "video_seconds": video_seconds,
        "wall_s": sum(inv.wall_s for inv in invocations),
        "device_hours": device_hours,
        "bill_usd": bill,
        "cost_per_video_usd": bill / n if n else None,
        "cost_per_video_second_usd": bill / video_seconds if video_seconds else None,
        "videos_per_device_hour": n / device_hours if device_hours else None,
        "mean_total_s": _mean(videos.column("total_s").to_pylist()),
        "mean_denoise_s": _mean(videos.column("denoise_s").to_pylist()),
        "mean_speedup_estimate": _mean(speedups.column("speedup_estimate").to_pylist()),
        "mean_measured_speedup": _mean(videos.column("measured_speedup").to_pylist()),
        "mean_psnr": _mean(videos.column("psnr").to_pylist()),
        "uncached_estimate_usd": bill + saved,
        "saved_usd": saved,
    }
    for c in CATEGORIES:
        row[f"hours_{c}"] = sum(inv.hours[c] for inv in invocations)
    return row


def hours_unit(runs: list[RunCosts]) -> str:
    """What the runs' device-hours are: "GPU-hours", "CPU core-hours", or "device-hours" when they mix."""
    units = {r.summary["device_unit"] for r in runs}
    return f"{units.pop()}-hours" if len(units) == 1 else "device-hours"


def summary_table(runs: list[RunCosts]) -> pa.Table:
    return pa.Table.from_pylist([r.summary for r in runs], schema=SUMMARY_SCHEMA)

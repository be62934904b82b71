"""The per-video record: one explicit schema, one Parquet file per video, written last.

A record under ``records/<id>.parquet`` is the commit marker of its video: it is published with an
exclusive put after the mp4, so its presence means the video is complete, and a re-run skips the id.
Failures are ``errors/<id>.json`` (plain JSON, because they carry free-form tracebacks and the history
of attempts, and a person reads them). The manifest's extra columns are appended to the record with the
types they had in the manifest.
"""

from __future__ import annotations

import datetime as dt
import io
import json
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from hyca_batch.storage import AlreadyExists, Storage
from hyca_batch.storage.layout import ERRORS, RECORDS, SNAPSHOT_KEY, error_ids, error_key, record_ids, record_key
from hyca_batch.types import GENERATION_FIELDS, REQUEST_SCHEMA

RECORD_VERSION = "1"

RECORD_SCHEMA = pa.schema(
    [
        REQUEST_SCHEMA.field("id"),
        *(REQUEST_SCHEMA.field(name).with_nullable(True) for name in ("prompt", "seed")),
        pa.field("model", pa.string()),
        *(REQUEST_SCHEMA.field(name).with_nullable(True) for name in GENERATION_FIELDS),
        pa.field("cache_mode", pa.string()),
        pa.field("cache_interval", pa.int64()),
        pa.field("solver_map_id", pa.string()),
        pa.field("text_encode_s", pa.float64()),
        pa.field("denoise_s", pa.float64()),
        pa.field("decode_s", pa.float64()),
        pa.field("encode_s", pa.float64()),
        pa.field("write_s", pa.float64()),
        pa.field("total_s", pa.float64()),
        pa.field("transformer_passes_full", pa.int64()),
        pa.field("transformer_passes_skipped", pa.int64()),
        pa.field("full_pass_s", pa.float64()),
        pa.field("speedup_estimate", pa.float64()),
        pa.field("baseline_denoise_s", pa.float64()),
        pa.field("measured_speedup", pa.float64()),
        pa.field("psnr", pa.float64()),
        pa.field("ssim", pa.float64()),
        pa.field("latent_rel_l2", pa.float64()),
        pa.field("device_type", pa.string()),
        pa.field("device_count", pa.int64()),
        pa.field("device_name", pa.string()),
        pa.field("status", pa.string()),
        pa.field("attempt", pa.int64()),
        pa.field("output_uri", pa.string()),
        pa.field("bytes", pa.int64()),
        pa.field("sha256", pa.string()),
        pa.field("started_at", pa.timestamp("us", tz="UTC")),
        pa.field("finished_at", pa.timestamp("us", tz="UTC")),
        *(REQUEST_SCHEMA.field(name).with_nullable(True) for name in ("source_file", "source_row")),
        pa.field("run_id", pa.string()),
    ],
    metadata={"hyca_batch.record_version": RECORD_VERSION},
)

#: Fields that are null unless the video had an uncached baseline (--baseline-every) or a solver map.
OPTIONAL_FIELDS = frozenset(
    {"solver_map_id", "baseline_denoise_s", "measured_speedup", "psnr", "ssim", "latent_rel_l2"}
)

#: Names a manifest's extra columns may not use, since the record already means something by them.
RESERVED_FIELDS = frozenset(RECORD_SCHEMA.names) | {"error", "error_type", "field", "traceback", "history"}


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def record_table(record: dict[str, Any], extra_schema: pa.Schema, extra: dict[str, Any]) -> pa.Table:
    """One record as a one-row table: the fixed schema, then the manifest's extra columns."""
    schema = pa.schema(list(RECORD_SCHEMA) + list(extra_schema), metadata=RECORD_SCHEMA.metadata)
    row = {name: record.get(name) for name in RECORD_SCHEMA.names}
    row.update({name: extra.get(name) for name in extra_schema.names})
    return pa.Table.from_pylist([row], schema=schema)


def write_record(storage: Storage, record: dict[str, Any], extra_schema: pa.Schema, extra: dict[str, Any]) -> bool:
    """Publish the record (the commit marker). False when the id was already committed."""
    buf = io.BytesIO()
    pq.write_table(record_table(record, extra_schema, extra), buf)
    try:
        storage.put_bytes(record_key(record["id"]), buf.getvalue())
    except AlreadyExists:
        return False
    return True


def write_error(storage: Storage, error: dict[str, Any]) -> None:
    """Write (or replace) the error record of an id, keeping the earlier attempts' errors in ``history``."""
    key = error_key(error["id"])
    history: list[dict[str, Any]] = []
    if storage.exists(key):
        try:
            previous = json.loads(storage.read_bytes(key))
            history = previous.pop("history", []) + [previous]
        except (ValueError, FileNotFoundError):
            history = []
    body = {**error, "history": history}
    storage.put_bytes(key, json.dumps(body, indent=2, default=str).encode(), overwrite=True)


def read_error(storage: Storage, video_id: str) -> dict[str, Any] | None:
    try:
        return json.loads(storage.read_bytes(error_key(video_id)))
    except FileNotFoundError:
        return None


def committed_ids(storage: Storage) -> set[str]:
    """Ids with a record: one listing, not a request per video."""
    return set(record_ids(storage.list(RECORDS)))


def failed_ids(storage: Storage) -> set[str]:
    return set(error_ids(storage.list(ERRORS)))


def read_records(storage: Storage) -> pa.Table:
    """All records of a run as one table (extra columns unified across files).

    ``records/`` is the truth; ``records.parquet`` (written by :func:`write_snapshot` at the end of each
    run) holds the same rows in one file, because reading ten thousand one-row files costs seconds per
    thousand. Records are never rewritten, so a snapshot row is always right; only ids that the snapshot
    does not have yet are read one file each.
    """
    listed = record_ids(storage.list(RECORDS))
    keys = [record_key(i) for i in listed]
    if not keys:
        return RECORD_SCHEMA.empty_table()
    fs, base = storage.arrow_filesystem()
    base = base.rstrip("/")
    ids = pa.array(listed, type=pa.string())
    tables: list[pa.Table] = []
    if storage.exists(SNAPSHOT_KEY):
        snapshot = pq.read_table(f"{base}/{SNAPSHOT_KEY}", filesystem=fs)
        tables.append(snapshot.filter(pc.is_in(snapshot.column("id"), ids)))  # a record removed by hand stays gone
        keys = [k for k, covered in zip(keys, pc.is_in(ids, tables[0].column("id")).to_pylist()) if not covered]
    if keys:
        paths = [f"{base}/{k}" for k in keys]
        # Every footer is read: runs that appended extra columns later still come back as one table.
        schema = pa.unify_schemas([pq.read_schema(p, filesystem=fs) for p in paths], promote_options="permissive")
        tables.append(pads.dataset(paths, filesystem=fs, format="parquet", schema=schema).to_table())
    return pa.concat_tables(tables, promote_options="permissive") if len(tables) > 1 else tables[0]


def write_snapshot(storage: Storage) -> int:
    """Write ``records.parquet``: every record so far in one file, for fast reading. Returns its row count."""
    table = read_records(storage)
    buf = io.BytesIO()
    pq.write_table(table, buf)
    storage.put_bytes(SNAPSHOT_KEY, buf.getvalue(), overwrite=True)
    return table.num_rows

"""The per-video record: one explicit schema, one Parquet file per video, written last.

A record under ``records/<id>.parquet`` is the commit marker of its video: it is published with an
exclusive put after the mp4, so its presence means the video is complete, and a re-run skips the id.
Failures are ``errors/<id>.json`` (plain JSON, because they carry free-form tracebacks and the history
of attempts, and a person reads them). The manifest's extra columns are appended to the record with the
types they had in the manifest.

Reading a million one-row files costs a million requests, so ``records.parquet/`` holds the same rows in a
few part files: the job writes the rows its replicas hand back as they commit (staging parts), and at its
end turns them into one part per run, never re-reading a record it already has. Each snapshot row carries
the last-modified time its record file had (``_modified``); a row stands for its record only while a listing
of ``records/`` still shows that time, so a record deleted or regenerated is read again, never shadowed.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from hyca_batch.storage import AlreadyExists, Storage, StorageError
from hyca_batch.storage.base import BULK_WORKERS
from hyca_batch.storage.layout import (
    ERRORS,
    LEGACY_SNAPSHOT_KEY,
    RECORDS,
    SNAPSHOT,
    error_key,
    is_staging_part,
    record_key,
    snapshot_part_key,
)
from hyca_batch.types import GENERATION_FIELDS, REQUEST_SCHEMA

log = logging.getLogger(__name__)

RECORD_VERSION = "1"

RECORD_SCHEMA = pa.schema(
    [
        REQUEST_SCHEMA.field("id"),
        *(REQUEST_SCHEMA.field(name).with_nullable(True) for name in ("prompt", "seed")),
        pa.field("model", pa.string()),
        *(REQUEST_SCHEMA.field(name).with_nullable(True) for name in GENERATION_FIELDS),
        # An image-to-video row's image: its reference (absolute path or s3:// URI; null when it was inline) and
        # the sha256 of its bytes. Both null for text-to-video.
        REQUEST_SCHEMA.field("image"),
        REQUEST_SCHEMA.field("image_sha256"),
        pa.field("cache_mode", pa.string()),
        pa.field("cache_interval", pa.int64()),
        pa.field("solver_map_id", pa.string()),
        pa.field("cache_schedule", pa.string()),
        pa.field("cache_forecasts", pa.string()),
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

#: Fields that are null unless the video had an uncached baseline (--baseline-every), a solver map or an image.
OPTIONAL_FIELDS = frozenset(
    {
        "image",
        "image_sha256",
        "solver_map_id",
        "cache_schedule",
        "cache_forecasts",
        "baseline_denoise_s",
        "measured_speedup",
        "psnr",
        "ssim",
        "latent_rel_l2",
    }
)

#: Names a manifest's extra columns may not use, since the record already means something by them.
RESERVED_FIELDS = frozenset(RECORD_SCHEMA.names) | {
    "error",
    "error_type",
    "field",
    "traceback",
    "history",
    "ordinal",  # the job's own column: a request's place in the manifest
    "image_bytes",  # a request's inline image (never in a record: the request carries it)
}


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def record_table(record: dict[str, Any], extra_schema: pa.Schema, extra: dict[str, Any]) -> pa.Table:
    """One record as a one-row table: the fixed schema, then the manifest's extra columns."""
    schema = pa.schema(list(RECORD_SCHEMA) + list(extra_schema), metadata=RECORD_SCHEMA.metadata)
    row = {name: record.get(name) for name in RECORD_SCHEMA.names}
    row.update({name: extra.get(name) for name in extra_schema.names})
    return pa.Table.from_pylist([row], schema=schema)


def parquet_bytes(table: pa.Table) -> bytes:
    """A table as the bytes of one Parquet file (records and snapshot parts are put whole)."""
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


def write_record(
    storage: Storage, record: dict[str, Any], extra_schema: pa.Schema, extra: dict[str, Any]
) -> pa.Table | None:
    """Publish the record (the commit marker): its one-row table, or None when the id was already committed."""
    table = record_table(record, extra_schema, extra)
    try:
        storage.put_bytes(record_key(record["id"]), parquet_bytes(table))
    except AlreadyExists:
        return None
    return table


def committed_output(storage: Storage, video_id: str) -> str | None:
    """The mp4 URI the committed record of ``video_id`` names (a record is created once and never replaced)."""
    body = storage.read_bytes(record_key(video_id))
    return pq.read_table(pa.BufferReader(body), columns=["output_uri"]).column("output_uri")[0].as_py()


def error_body(error: dict[str, Any], previous: bytes | None) -> bytes:
    """An error record's JSON, with the earlier attempts' errors (``previous``, the record it replaces) in
    ``history``."""
    history: list[dict[str, Any]] = []
    if previous is not None:
        try:
            earlier = json.loads(previous)
            history = earlier.pop("history", []) + [earlier]
        except ValueError:
            history = []
    return json.dumps({**error, "history": history}, indent=2, default=str).encode()


def write_error(storage: Storage, error: dict[str, Any]) -> None:
    """Write (or replace) the error record of an id, keeping the earlier attempts' errors in ``history``."""
    key = error_key(error["id"])
    (previous,) = storage.read_many([key])
    storage.put_bytes(key, error_body(error, previous), overwrite=True)


def read_error(storage: Storage, video_id: str) -> dict[str, Any] | None:
    try:
        return json.loads(storage.read_bytes(error_key(video_id)))
    except FileNotFoundError:
        return None


#: The snapshot's bookkeeping column: the last-modified time of the record file its row was taken from.
MODIFIED = "_modified"
#: More parts than this and the end of a run merges them into one (each part is a request for readers).
MAX_SNAPSHOT_PARTS = 16
#: Rows a staging part holds: a running job's memory for records it has not written out yet.
STAGING_ROWS = 10_000


def _listed(storage: Storage, prefix: str, suffix: str) -> pa.Table:
    """``id`` and ``_modified`` of every object ``<prefix><id><suffix>``: one listing, held as Arrow."""
    listing = storage.listing(prefix)
    keys = listing.column("key")
    listing = listing.filter(pc.and_(pc.starts_with(keys, prefix), pc.ends_with(keys, suffix)))
    ids = pc.utf8_slice_codeunits(listing.column("key"), len(prefix), -len(suffix))
    return pa.table({"id": ids, MODIFIED: listing.column("modified")})


def committed_listing(storage: Storage) -> pa.Table:
    """``id`` and ``_modified`` of every record: one listing, not a request per video (``read_records`` takes it
    back, so a plan lists ``records/`` once)."""
    return _listed(storage, RECORDS, ".parquet")


def failed_ids(storage: Storage) -> pa.Array:
    """Ids with an error record (rejected or failed)."""
    return _listed(storage, ERRORS, ".json").column("id").combine_chunks()


def _unify(tables: list[pa.Table]) -> pa.Table:
    """One table from tables whose columns may differ (records of runs with other extra columns).

    Tables of one schema are concatenated first (cheap); a column whose type changed between runs is kept as
    text rather than failing every reader.
    """
    groups: dict[pa.Schema, list[pa.Table]] = {}
    for t in tables:
        groups.setdefault(t.schema.remove_metadata(), []).append(t)
    merged = [pa.concat_tables(g) if len(g) > 1 else g[0] for g in groups.values()]
    if len(merged) == 1:
        return merged[0]
    try:
        return pa.concat_tables(merged, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        types: dict[str, set[pa.DataType]] = {}
        for t in merged:
            for f in t.schema:
                if not pa.types.is_null(f.type):
                    types.setdefault(f.name, set()).add(f.type)
        clash = [name for name, seen in types.items() if len(seen) > 1]
        log.warning("columns %s have different types in different records; they are read as text", clash)
        merged = [_as_text(t, clash) for t in merged]
        return pa.concat_tables(merged, promote_options="permissive")


def _as_text(table: pa.Table, names: list[str]) -> pa.Table:
    for n in names:
        if n in table.column_names:
            table = table.set_column(table.schema.get_field_index(n), n, table.column(n).cast(pa.string()))
    return table


def _read_files(
    storage: Storage, keys: list[str], batch: int = 10_000, columns: list[str] | None = None
) -> pa.Table | None:
    """Many Parquet objects as one table, read concurrently a batch at a time (memory stays per batch)."""
    fs, base = storage.arrow_filesystem()
    base = base.rstrip("/")

    def read(key: str) -> pa.Table:
        if columns is None:
            return pq.read_table(f"{base}/{key}", filesystem=fs)
        # Only the columns the file has: a record of an earlier version lacks the newer fields (read_records
        # gives them as nulls).
        with fs.open_input_file(f"{base}/{key}") as f:
            parquet = pq.ParquetFile(f)
            return parquet.read(columns=[c for c in columns if c in parquet.schema_arrow.names])

    out: list[pa.Table] = []
    with ThreadPoolExecutor(max_workers=BULK_WORKERS) as pool:
        for start in range(0, len(keys), batch):
            out.append(_unify(list(pool.map(read, keys[start : start + batch]))))
    return _unify(out) if out else None


def _first_per_id(table: pa.Table, newest: bool = False) -> pa.Table:
    """One row per id: the first, or with ``newest`` the one finished last (a regenerated record's)."""
    if newest:
        table = table.sort_by([("id", "ascending"), ("finished_at", "descending")])
    numbered = table.append_column("_i", pa.array(range(table.num_rows), pa.int64()))
    firsts = numbered.group_by("id", use_threads=False).aggregate([("_i", "min")]).column("_i_min")
    return table.take(pc.sort_indices(firsts))


def _covering(snapshot: pa.Table | None, listed: pa.Table) -> pa.Table | None:
    """The snapshot rows that still stand for their record: same id, same last-modified time as listed."""
    if snapshot is None or not snapshot.num_rows:
        return None

    def key(t: pa.Table) -> pa.ChunkedArray:
        return pc.binary_join_element_wise(t.column("id"), t.column(MODIFIED).cast(pa.string()), "\x00")

    return _first_per_id(snapshot.filter(pc.is_in(key(snapshot), key(listed))))


def _read_snapshot(storage: Storage, keys: list[str], columns: list[str] | None = None) -> pa.Table | None:
    """The given parts as one table (only ``columns``, if given); None, with a warning, when one cannot be read
    or merged."""
    if not keys:
        return None
    try:
        return _unify_parts(_read_files(storage, keys, batch=BULK_WORKERS, columns=columns))
    except (pa.ArrowException, OSError, StorageError, KeyError) as exc:
        log.warning("%s cannot be read (%s): records/ is read instead", storage.uri_for(SNAPSHOT.rstrip("/")), exc)
        return None


def _unify_parts(table: pa.Table | None) -> pa.Table | None:
    if table is not None and MODIFIED not in table.column_names:
        raise KeyError(f"a part has no {MODIFIED} column")
    return table


def _snapshot_parts(storage: Storage) -> list[str]:
    return [k for k in storage.list(SNAPSHOT) if k.endswith(".parquet")]


def read_records(
    storage: Storage,
    *,
    ids: pa.Array | None = None,
    columns: list[str] | None = None,
    listed: pa.Table | None = None,
) -> pa.Table:
    """All records of an output as one table (extra columns unified across runs); only those of ``ids`` and
    only ``columns`` (besides ``id``), when given.

    The snapshot's rows that still match ``records/`` come from its few part files; only the records it does
    not cover (committed by a job still running or one that was killed, or changed since) are read one file
    each. ``listed``: a ``committed_listing`` the caller already has.
    """
    if listed is None:
        listed = committed_listing(storage)
    if ids is not None:
        listed = listed.filter(pc.is_in(listed.column("id"), ids))
    wanted = None if columns is None else list(dict.fromkeys(["id", *columns]))
    if not listed.num_rows:
        return RECORD_SCHEMA.empty_table() if wanted is None else RECORD_SCHEMA.empty_table().select(wanted)
    parts = [k for k in _snapshot_parts(storage) if not is_staging_part(k)]
    snapshot = _read_snapshot(storage, parts, columns=None if wanted is None else [*wanted, MODIFIED])
    covered = _covering(snapshot, listed)
    tables = [] if covered is None else [covered.drop_columns([MODIFIED])]
    have = covered.column("id") if covered is not None else pa.array([], pa.string())
    missing = listed.filter(pc.invert(pc.is_in(listed.column("id"), have))).column("id").to_pylist()
    if missing:
        tables.append(_read_files(storage, [record_key(i) for i in missing], columns=wanted))
    table = _unify(tables)
    for name in wanted or ():  # asked for, but no record has it (all written before the field existed)
        if name not in table.column_names:
            kind = RECORD_SCHEMA.field(name).type if name in RECORD_SCHEMA.names else pa.null()
            table = table.append_column(pa.field(name, kind), pa.nulls(table.num_rows, kind))
    return table


class SnapshotWriter:
    """This run's records as its replicas commit them, written as staging parts of at most ``STAGING_ROWS``.

    The job hands it each committed record's row; nothing is read back from ``records/``. Failing to write a
    part never stops the job: the snapshot is a cache, and ``update_snapshot`` reads what it lacks.
    """

    def __init__(self, storage: Storage, run_id: str, rows: int = STAGING_ROWS):
        self.storage, self.run_id, self.rows = storage, run_id, rows
        self.buffer: list[pa.Table] = []
        self.buffered = 0
        self.parts = 0

    def add(self, record: pa.Table) -> None:
        self.buffer.append(record)
        self.buffered += record.num_rows
        if self.buffered >= self.rows:
            self.flush()

    def flush(self) -> None:
        if not self.buffer:
            return
        table, self.buffer, self.buffered = _unify(self.buffer), [], 0
        key = snapshot_part_key(self.run_id, staging=self.parts)
        self.parts += 1
        try:
            self.storage.put_bytes(key, parquet_bytes(table), overwrite=True)
        except (StorageError, OSError) as exc:
            log.warning("could not write %s (records/ will be read instead): %s", self.storage.uri_for(key), exc)


def update_snapshot(storage: Storage, run_id: str) -> int:
    """At a run's end: its staging parts (and any record no part covers) become ``part-<run_id>``; with too many
    parts, or a snapshot that cannot be merged, the parts are merged (rebuilt) into one. Returns the rows written.

    Only this run's rows and the uncovered records are read, so the cost follows the run, not the output.
    """
    listed = _listed(storage, RECORDS, ".parquet")
    parts = _snapshot_parts(storage)
    final = [k for k in parts if not is_staging_part(k)]
    mine = [k for k in parts if is_staging_part(k, run_id)]
    # Which records the parts cover needs only two columns of them; all of each part is read only to merge.
    merge = len(final) + 1 > MAX_SNAPSHOT_PARTS
    snapshot = _read_snapshot(storage, final, columns=None if merge else ["id", MODIFIED])
    rebuild = snapshot is None and bool(final)
    covered = _covering(snapshot, listed)

    new: list[pa.Table] = []
    staged = _read_files(storage, mine) if mine else None
    if staged is not None and staged.num_rows:
        # Rows the replicas handed back this run: their record files' times from the listing (a row whose
        # record is gone is dropped), the newest row where an id was committed twice.
        where = pc.index_in(staged.column("id"), listed.column("id"))
        staged = staged.append_column(MODIFIED, listed.column(MODIFIED).take(where)).filter(pc.is_valid(where))
        new.append(_first_per_id(staged, newest=True))
    have = pa.chunked_array(
        [chunk for t in [*new, covered] if t is not None for chunk in t.column("id").chunks], pa.string()
    )
    missing = listed.filter(pc.invert(pc.is_in(listed.column("id"), have)))
    if missing.num_rows:
        rows = _read_files(storage, [record_key(i) for i in missing.column("id").to_pylist()])
        where = pc.index_in(rows.column("id"), missing.column("id"))
        new.append(rows.append_column(MODIFIED, missing.column(MODIFIED).take(where)))
    merge = merge or rebuild
    if merge and covered is not None:
        new.insert(0, covered)
    if storage.exists(LEGACY_SNAPSHOT_KEY):
        # An earlier version's single file: never read (it cannot say which rows are current), and on a local
        # disk it is in the way of the directory.
        storage.delete(LEGACY_SNAPSHOT_KEY)
    written = 0
    if new:
        table = _unify(new)
        storage.put_bytes(snapshot_part_key(run_id), parquet_bytes(table), overwrite=True)
        written = table.num_rows
    # Only after the new part is in place: a reader between the two sees duplicates (it keeps one per id).
    stale = [k for k in parts if is_staging_part(k)] + (final if merge else [])
    for key in stale:
        if key != snapshot_part_key(run_id):
            storage.delete(key)
    return written

"""Parquet manifests: one row per video, validated in full before any model work.

Two kinds of problem, kept apart on purpose:
- a file that cannot be used at all (unreadable, not Parquet, no ``prompt`` column, a column of a type
  that cannot hold its field) raises :class:`ManifestError`, naming every such file and field at once,
  so a typo costs seconds instead of a GPU start;
- a bad row (empty prompt, unsupported size, negative seed, conflicting duplicate id, an image that cannot be
  read, ...) becomes a :class:`RowError` that the job writes as an error record; every good row still runs.

An ``image`` column makes its rows image-to-video: a path (relative to the manifest) or ``s3://`` URI, or the
image's bytes inline. Each image is read and decoded once here, in a thread pool (``hyca_batch.images``), and
its sha256 joins the request: the video's id, duplicates and the drift check of re-runs go by it. The video
size of an image row is the model's bucket for its image, never the job's defaults.

Rows are numbered from 0 within their file, as pyarrow and pandas number them.
"""

from __future__ import annotations

import fnmatch
import functools
import glob
import hashlib
import json
import os
import re
from collections import defaultdict
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pyarrow.types as pat

from hyca_batch.images import MAX_IMAGE_SIDE, MIN_IMAGE_SIDE, ImageError, ImageInfo, inspect_image, read_image
from hyca_batch.images import resolve_reference as resolve_image_reference
from hyca_batch.records import RESERVED_FIELDS
from hyca_batch.storage import StorageError, open_storage
from hyca_batch.types import GENERATION_FIELDS, REQUEST_SCHEMA, GenerationDefaults

#: Columns a manifest row may set; every other column is carried into the record unchanged.
KNOWN_COLUMNS = ("prompt", "id", "seed", *GENERATION_FIELDS, "image")

#: A valid id, matched against the whole id: RE2 (pyarrow) reads ``$`` as the end of the text, and Python code
#: uses ``fullmatch``, so "abc\n" is no id.
ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
MAX_SEED = 2**63 - 1
#: Images read and decoded at once during validation: I/O bound on S3, and each holds one decoded image.
IMAGE_WORKERS = 16
#: Image rows handed to the pool at a time (a future per row of a million-row column would not be small).
IMAGE_CHUNK = 1024

#: A model's image-to-video sizing: an image's (height, width) to its video's (``ModelSpec.image_video_size``).
ImageVideoSize = Callable[[int, int], tuple[int, int]]


class ManifestError(ValueError):
    """The manifest cannot be used at all; the message names every file and field at fault."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("invalid manifest:\n  " + "\n  ".join(problems))


@dataclass(frozen=True)
class RowError:
    """One rejected row: where it is, which field, and why."""

    file: str
    row: int
    field: str
    message: str
    key: str  # the id its error record is stored under
    prompt: str | None = None
    reason: str = ""  # the message without its values, for counting rejections by kind
    # An image row's image reference (None: inline bytes, or no image): as the row gives it, or resolved (absolute
    # path) for a row rejected after its image was validated (a duplicate id, drift).
    image: str | None = None

    def __str__(self) -> str:
        return f"{self.file}: row {self.row}: {self.field}: {self.message}"


@dataclass
class Manifest:
    """Validated requests (``REQUEST_SCHEMA`` plus the carried extra columns) and the rejected rows."""

    files: list[str]
    requests: pa.Table
    rejected: list[RowError]
    extra_schema: pa.Schema
    merged_duplicates: int = 0
    total_rows: int = 0  # rows read, over every file

    @property
    def rejected_rows(self) -> int:
        """Rows rejected (a row may fail several checks; each is a RowError)."""
        return len({(e.file, e.row) for e in self.rejected})


@functools.lru_cache(maxsize=16)
def _s3_root(bucket: str, endpoint_url: str | None):
    return open_storage(f"s3://{bucket}", s3_endpoint_url=endpoint_url)  # checks the bucket, once


def _s3_bucket(uri: str, endpoint_url: str | None):
    """(storage at the bucket's root, key) for ``s3://bucket/key``."""
    bucket, _, key = uri[len("s3://") :].partition("/")
    return _s3_root(bucket, endpoint_url), key


def _expand_s3(spec: str, endpoint_url: str | None, problems: list[str]) -> list[str]:
    """The same three forms on S3: an object, a "directory" (every ``*.parquet`` under the prefix), a glob."""
    try:
        store, key = _s3_bucket(spec, endpoint_url)
        if any(ch in key for ch in "*?["):
            fixed = re.split(r"[*?\[]", key, maxsplit=1)[0]
            keys = [k for k in store.list(fixed) if fnmatch.fnmatchcase(k, key)]
            kind = "the pattern matches no object"
        elif key.endswith(".parquet"):
            keys = [key] if store.exists(key) else []
            kind = "no such object"
        else:
            prefix = key.rstrip("/") + "/" if key else ""
            keys = [k for k in store.list(prefix) if k.endswith(".parquet")]
            kind = "the prefix holds no *.parquet object"
    except (StorageError, ValueError) as exc:
        problems.append(f"{spec}: {exc}")
        return []
    if not keys:
        problems.append(f"{spec}: {kind}")
    return [f"s3://{store.bucket}/{k}" for k in keys]


def expand_inputs(inputs: Iterable[str], *, s3_endpoint_url: str | None = None) -> list[str]:
    """Files named by paths, directories (every ``*.parquet`` below) and globs, local or on S3, in a stable order."""
    files: list[str] = []
    problems: list[str] = []
    for spec in inputs:
        if spec.startswith("s3://"):
            files.extend(_expand_s3(spec, s3_endpoint_url, problems))
        elif any(ch in spec for ch in "*?["):
            matched = sorted(p for p in glob.glob(spec, recursive=True) if os.path.isfile(p))
            if not matched:
                problems.append(f"{spec}: the pattern matches no file")
            files.extend(matched)
        elif os.path.isdir(spec):
            matched = sorted(glob.glob(os.path.join(spec, "**", "*.parquet"), recursive=True))
            if not matched:
                problems.append(f"{spec}: the directory holds no *.parquet file")
            files.extend(matched)
        elif os.path.isfile(spec):
            files.append(spec)
        else:
            problems.append(f"{spec}: no such file or directory")
    if not files and not problems:
        problems.append("no manifest given")
    if problems:
        raise ManifestError(problems)
    # A file named twice (a directory and a glob over it) is read once.
    return list(dict.fromkeys(f if f.startswith("s3://") else os.path.abspath(f) for f in files))


def default_id(params: dict[str, Any], explicit_seed: bool) -> str:
    """A stable id from the generation parameters, so a re-run of the same row finds the same id.

    The seed is part of the hash only when the row gives one; otherwise the seed derives from the id. An image
    row's ``image_sha256`` is part of it; a text row has none (or None), so text rows keep their ids. This is
    the reference for one row; :func:`_default_ids` computes the same for a whole column.
    """
    payload = {k: v for k, v in params.items() if (k != "seed" or explicit_seed) and (k != "image_sha256" or v)}
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True, ensure_ascii=False).encode()).hexdigest()
    return "v" + digest[:20]


def default_seed(video_id: str) -> int:
    """A seed derived from the id: stable across runs and machines, different for every id."""
    return int.from_bytes(hashlib.sha256(f"seed:{video_id}".encode()).digest()[:4], "big")


def check_size(height: int, width: int, num_frames: int) -> list[tuple[str, str]]:
    """(field, message) for every size HunyuanVideo cannot take (one request; rows are checked by column)."""
    problems = []
    for name, value in (("height", height), ("width", width)):
        if value <= 0 or value % 16:
            problems.append((name, _MESSAGES["multiple16"][1].format(value=value)))
    if num_frames <= 0 or num_frames % 4 != 1:
        problems.append(("num_frames", _MESSAGES["frames"][1].format(value=num_frames)))
    return problems


def read_manifest(
    inputs: Iterable[str],
    defaults: GenerationDefaults,
    *,
    max_prompt_chars: int = 4000,
    max_tokens: int | None = None,
    s3_endpoint_url: str | None = None,
    image_video_size: ImageVideoSize | None = None,
    model_name: str | None = None,
) -> Manifest:
    """Read, validate and resolve every row of the given manifests (local files or ``s3://`` objects).

    Every check runs over whole columns with pyarrow compute; Python touches only the rows that fail (to word
    their messages), the ids it must hash, and the images of image rows (read concurrently). Image rows need
    ``image_video_size``, the model's sizing (None: the model ``model_name`` has no image-to-video pipeline, and
    every image row is rejected without reading its image).
    """
    files = expand_inputs(inputs, s3_endpoint_url=s3_endpoint_url)
    tables: list[tuple[str, pa.Table]] = []
    problems: list[str] = []
    for path in files:
        try:
            if path.startswith("s3://"):
                store, key = _s3_bucket(path, s3_endpoint_url)
                fs, base = store.arrow_filesystem()
                table = pq.read_table(f"{base}/{key}", filesystem=fs)
            else:
                table = pq.read_table(path)
        except (pa.ArrowException, OSError, StorageError) as exc:
            problems.append(f"{path}: not a readable Parquet file ({exc})")
            continue
        problems.extend(_check_columns(path, table.schema))
        tables.append((path, table))
    extra_schema = _extra_schema(tables, problems)
    if problems:
        raise ManifestError(problems)

    schema = pa.schema(list(REQUEST_SCHEMA) + list(extra_schema))
    parts: list[pa.Table] = []
    rejected: list[RowError] = []
    rows = 0
    images = _ImageOptions(image_video_size, model_name, s3_endpoint_url)
    while tables:
        path, table = tables.pop(0)  # each file's raw table is released once resolved
        part, bad = _resolve(path, table, defaults, max_prompt_chars, max_tokens, extra_schema, images)
        rows += table.num_rows
        parts.append(part.cast(schema))
        rejected.extend(bad)
        del table
    requests = pa.concat_tables(parts) if parts else schema.empty_table()
    requests, dup_rejected, merged = _dedupe(requests)
    rejected.extend(dup_rejected)
    return Manifest(files, requests, rejected, extra_schema, merged, rows)


def _check_columns(path: str, schema: pa.Schema) -> list[str]:
    problems = []
    if "prompt" not in schema.names:
        problems.append(f"{path}: field 'prompt': required column is missing (columns: {', '.join(schema.names)})")
    for name in KNOWN_COLUMNS:
        if name not in schema.names:
            continue
        typ = schema.field(name).type
        if name == "prompt":
            ok = pat.is_string(typ) or pat.is_large_string(typ) or pat.is_binary(typ) or pat.is_large_binary(typ)
        elif name == "id":
            ok = pat.is_string(typ) or pat.is_large_string(typ) or pat.is_integer(typ) or pat.is_null(typ)
        elif name == "image":
            ok = any(is_type(typ) for is_type in (pat.is_string, pat.is_large_string, pat.is_binary))
            ok = ok or pat.is_large_binary(typ) or pat.is_null(typ)
            if not ok:
                problems.append(
                    f"{path}: field 'image': column type {typ} cannot hold it (a path or s3:// URI as a string, "
                    "or the image's bytes as binary)"
                )
                continue
        else:
            ok = pat.is_integer(typ) or pat.is_floating(typ) or pat.is_null(typ)
        if not ok:
            problems.append(f"{path}: field '{name}': column type {typ} cannot hold it")
    for name in schema.names:
        if name in RESERVED_FIELDS and name not in KNOWN_COLUMNS:
            problems.append(f"{path}: field '{name}': the name is reserved for the video record; rename the column")
    return problems


def _extra_names(schema: pa.Schema) -> list[str]:
    return [n for n in schema.names if n not in KNOWN_COLUMNS and not n.startswith("__index_level_")]


def _extra_schema(tables: list[tuple[str, pa.Table]], problems: list[str]) -> pa.Schema:
    """One schema for the carried columns of all files; a column typed differently in two files is an error."""
    fields: dict[str, tuple[pa.Field, str]] = {}
    for path, table in tables:
        for name in _extra_names(table.schema):
            f = table.schema.field(name)
            if name not in fields or pat.is_null(fields[name][0].type):
                fields[name] = (f, path)
            elif not (pat.is_null(f.type) or f.type == fields[name][0].type):
                first, first_path = fields[name]
                problems.append(f"{path}: field '{name}': type {f.type} differs from {first.type} in {first_path}")
    return pa.schema([f.with_nullable(True) for f, _ in fields.values()])


#: Each kind of rejection: (its reason, which a plan counts rows by, and its wording with the row's values).
_MESSAGES = {
    "utf8": ("is not valid UTF-8", "is not valid UTF-8 ({reason} at byte {start})"),
    "null": ("is null", "is null"),
    "empty": ("is empty", "is empty"),
    "long": ("is too long", "has {value} characters; the limit is {limit}"),
    "integer": ("must be an integer", "must be an integer, got {value!r}"),
    "nan": ("is NaN", "is NaN, which is no number (leave it null for the default)"),
    "tokens": ("is larger than --max-tokens", "{value} latent tokens; the limit is {limit} (--max-tokens)"),
    "multiple16": ("must be a positive multiple of 16", "must be a positive multiple of 16, got {value}"),
    "frames": ("must be 4k+1", "must be 4k+1 (1, 5, 9, ..., 129), got {value}"),
    "steps": ("must be between 1 and 1000", "must be between 1 and 1000, got {value}"),
    "fps": ("must be between 1 and 240", "must be between 1 and 240, got {value}"),
    "guidance": ("must be a finite number >= 0", "must be a finite number >= 0, got {value}"),
    "seed": ("must be between 0 and 2**63-1", "must be between 0 and 2**63-1, got {value}"),
    "id": ("does not match the id pattern", "{value!r} must match {pattern} (it names output files)"),
    "duplicate": (
        "duplicate id with different parameters",
        "duplicate id {value!r} with different parameters (at {places})",
    ),
    "case": (
        "differs from another id only by case",
        "id {value!r} differs only by case from {others} (at {places}): on case-insensitive storage they are one file",
    ),
    "image_empty": ("is empty", "is empty (leave it null for a text-to-video row)"),
    "image_read": ("cannot be read", "cannot be read: {value}"),
    "image_decode": ("is not a decodable image", "{value}"),
    "image_small": (f"is smaller than {MIN_IMAGE_SIDE}x{MIN_IMAGE_SIDE} pixels", "{value}"),
    "image_large": (f"is larger than {MAX_IMAGE_SIDE}x{MAX_IMAGE_SIDE} pixels", "{value}"),
    "no_i2v": ("the model has no image-to-video pipeline", "{model} has no image-to-video pipeline"),
    "image_size": ("the size of an image row follows its image", "is {value}"),
}
#: The ranges of the integer fields besides the size (which ``check_size`` words).
_RANGES = {"num_inference_steps": (1, 1000, "steps"), "fps": (1, 240, "fps")}


def reason_of(error: RowError) -> str:
    """What a rejection is, without its values: ``"height: must be a positive multiple of 16"``."""
    return f"{error.field}: {error.reason}"


class _Rejections:
    """The failed checks of one file, as boolean masks over its rows; messages are worded for failing rows only."""

    def __init__(self, path: str, n: int):
        self.path, self.n = path, n
        self.bad = np.zeros(n, dtype=bool)
        self.found: list[tuple[int, int, str, str, str]] = []  # (row, order, field, message, reason)

    def add(self, mask: pa.Array | np.ndarray, field: str, kind: str, values: pa.Array | None = None, **fmt: Any):
        """Reject the rows where ``mask`` holds, worded by ``_MESSAGES[kind]`` with each row's ``values``."""
        if isinstance(mask, pa.Array | pa.ChunkedArray):
            mask = pc.fill_null(mask, False).to_numpy(zero_copy_only=False)
        rows = np.flatnonzero(mask)
        if not len(rows):
            return
        self.bad[rows] = True
        reason, template = _MESSAGES[kind]
        shown = values.take(pa.array(rows)).to_pylist() if values is not None else [None] * len(rows)
        for row, value in zip(rows.tolist(), shown):
            self.found.append((row, len(self.found), field, template.format(value=value, **fmt), reason))

    def add_rows(self, rows: list[int], field: str, kind: str, values: list[Any] | None = None, **fmt: Any) -> None:
        """Reject the given rows (found one by one, as images are), worded as in ``add``."""
        reason, template = _MESSAGES[kind]
        for row, value in zip(rows, values if values is not None else [None] * len(rows)):
            self.bad[row] = True
            self.found.append((row, len(self.found), field, template.format(value=value, **fmt), reason))

    def mask(self, rows: list[int]) -> None:
        self.bad[rows] = True


def _column(table: pa.Table, name: str) -> pa.Array | None:
    if name not in table.schema.names or pat.is_null(table.schema.field(name).type):
        return None
    column = table.column(name)
    return column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)


def _prompts(table: pa.Table, rej: _Rejections, max_chars: int) -> pa.Array:
    """The prompt column as UTF-8 strings; null, empty, too long or undecodable prompts are rejected."""
    raw = _column(table, "prompt")
    if raw is None:
        raw = pa.nulls(table.num_rows, pa.string())
    undecodable = np.zeros(table.num_rows, dtype=bool)
    if pat.is_binary(raw.type) or pat.is_large_binary(raw.type):
        raw, undecodable = _decode_utf8(raw, rej)
    prompts = raw.cast(pa.string())
    rej.add(pc.and_(pc.is_null(prompts), pa.array(~undecodable)), "prompt", "null")
    lengths = pc.utf8_length(prompts)
    rej.add(pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(prompts)), 0), "prompt", "empty")
    too_long = pc.and_(pc.greater(lengths, max_chars), pc.greater(pc.utf8_length(pc.utf8_trim_whitespace(prompts)), 0))
    rej.add(too_long, "prompt", "long", lengths, limit=max_chars)
    return prompts


def _decode_utf8(raw: pa.Array, rej: _Rejections) -> tuple[pa.Array, np.ndarray]:
    """A binary column as strings: blocks that are valid UTF-8 convert at once; only a failing block is
    decoded value by value, to find and word the bad rows."""
    block = 4096
    pieces, bad = [], np.zeros(len(raw), dtype=bool)
    for start in range(0, len(raw), block):
        chunk = raw.slice(start, block)
        try:
            pieces.append(chunk.cast(pa.string()))
            continue
        except pa.ArrowInvalid:
            pass
        values: list[str | None] = []
        for offset, data in enumerate(chunk.to_pylist()):
            try:
                values.append(None if data is None else data.decode("utf-8"))
            except UnicodeDecodeError as exc:
                values.append(None)
                bad[start + offset] = True
                row = np.zeros(len(raw), dtype=bool)
                row[start + offset] = True
                rej.add(row, "prompt", "utf8", reason=exc.reason, start=exc.start)
        pieces.append(pa.array(values, pa.string()))
    return (pa.concat_arrays(pieces) if pieces else pa.array([], pa.string())), bad


def _numbers(table: pa.Table, name: str, rej: _Rejections, *, floating: bool) -> tuple[pa.Array | None, np.ndarray]:
    """A numeric field as int64 (float64 for ``floating``) with nulls where the row leaves it to the default;
    values that are not integers (or do not fit int64) are rejected. Returns (values, rejected rows)."""
    raw = _column(table, name)
    bad = np.zeros(table.num_rows, dtype=bool)
    if raw is None:
        return None, bad
    if pat.is_floating(raw.type):
        values = raw.cast(pa.float64())
        nan = pc.fill_null(pc.is_nan(values), False)
        if pc.any(nan).as_py():  # a NaN is a value, not a missing one (pandas writes null for None)
            bad = nan.to_numpy(zero_copy_only=False)
            rej.add(bad, name, "nan")
            values = pc.if_else(nan, pa.scalar(None, pa.float64()), values)
        if floating:
            return values, bad
        finite = pc.is_finite(values)
        whole = pc.and_(finite, pc.equal(values, pc.floor(values)))
        fits = pc.and_(pc.greater_equal(values, -(2.0**63)), pc.less(values, 2.0**63))
        not_int = pc.and_(pc.is_valid(values), pc.invert(pc.and_(whole, fits)))
        rej.add(not_int, name, "integer", values)
        bad = bad | pc.fill_null(not_int, False).to_numpy(zero_copy_only=False)
        values = pc.if_else(not_int, pa.scalar(None, pa.float64()), values).cast(pa.int64())
        return values, bad
    if floating:
        return raw.cast(pa.float64()), bad
    if raw.type == pa.uint64():
        over = pc.greater(raw, MAX_SEED)
        bad = pc.fill_null(over, False).to_numpy(zero_copy_only=False)
        rej.add(bad, name, "seed" if name == "seed" else "integer", raw)
        raw = pc.if_else(over, pa.scalar(None, pa.uint64()), raw)
    return raw.cast(pa.int64()), bad


def _outside(values: pa.Array, low: float, high: float) -> pa.Array:
    return pc.or_(pc.less(values, low), pc.greater(values, high))


@dataclass(frozen=True)
class _ImageOptions:
    """What validating image rows needs besides the file: the model's sizing (None: no image-to-video) and name,
    and the S3 endpoint of ``s3://`` images."""

    video_size: ImageVideoSize | None = None
    model_name: str | None = None
    s3_endpoint_url: str | None = None


@dataclass
class _Images:
    """One file's image columns, over all its rows (null where a row has no usable image)."""

    given: pa.Array  # string: the reference as the row gives it (null for inline bytes and text rows)
    ref: pa.Array  # string: the reference resolved (absolute path, s3:// URI)
    sha256: pa.Array  # string: hex digest of the image's bytes
    inline: pa.Array  # binary: the bytes of inline images
    image_size: pa.Array  # string: "HxW" of the image, for messages
    height: pa.Array  # int64: the video's height and width, the model's bucket for the image
    width: pa.Array


def _manifest_dir(path: str) -> str:
    """Where relative image paths of the manifest at ``path`` start: its directory (or S3 prefix)."""
    return path.rsplit("/", 1)[0] if path.startswith("s3://") else os.path.dirname(os.path.abspath(path))


def _images(path: str, table: pa.Table, rej: _Rejections, options: _ImageOptions) -> _Images | None:
    """Read, decode and size the image of every row that has one (None when the file has no ``image`` column).

    Only image rows cost a read, done by ``IMAGE_WORKERS`` threads; each bad image is a RowError (field
    ``image``) of its row alone. Without ``options.video_size`` every image row is rejected unread.
    """
    if "image" not in table.schema.names or pat.is_null(table.schema.field("image").type):
        return None
    n = table.num_rows
    column = table.column("image")
    inline = pat.is_binary(column.type) or pat.is_large_binary(column.type)
    if inline:
        raw = column.cast(pa.large_binary()).combine_chunks()  # inline images add up past 2 GB in one file
        given = pa.nulls(n, pa.string())
        present = pc.is_valid(raw)
    else:
        raw = column.cast(pa.string()).combine_chunks()
        given = raw
        blank = pc.fill_null(pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(raw)), 0), False)
        rej.add(blank, "image", "image_empty")
        present = pc.and_(pc.is_valid(raw), pc.invert(blank))
    rows = np.flatnonzero(pc.fill_null(present, False).to_numpy(zero_copy_only=False))
    found: list[tuple[str | None, ImageInfo | None]] = [(None, None)] * len(rows)
    if options.video_size is None:
        model = f"model {options.model_name!r}" if options.model_name else "the model"
        rej.add_rows(rows.tolist(), "image", "no_i2v", model=model)
    elif len(rows):
        base = _manifest_dir(path)

        def check(row: int) -> tuple[str | None, ImageInfo | ImageError]:
            ref = None
            try:
                if inline:
                    data = raw[row].as_py()
                else:
                    ref = resolve_image_reference(raw[row].as_py(), base)
                    data = read_image(ref, s3_endpoint_url=options.s3_endpoint_url)
                return ref, inspect_image(data)
            except ImageError as exc:
                return ref, exc

        failed: dict[str, tuple[list[int], list[str]]] = defaultdict(lambda: ([], []))
        with ThreadPoolExecutor(max_workers=IMAGE_WORKERS) as pool:
            for start in range(0, len(rows), IMAGE_CHUNK):
                chunk = rows[start : start + IMAGE_CHUNK].tolist()
                for i, row, (ref, out) in zip(range(start, start + len(chunk)), chunk, pool.map(check, chunk)):
                    if isinstance(out, ImageError):
                        failed[out.kind][0].append(row)
                        failed[out.kind][1].append(str(out))
                        out = None
                    found[i] = (ref, out)
        for kind, (bad_rows, messages) in failed.items():
            rej.add_rows(bad_rows, "image", f"image_{kind}", messages)

    infos = [info for _, info in found]
    buckets = {(i.height, i.width): options.video_size(i.height, i.width) for i in infos if i is not None}
    place = np.full(n, -1, dtype=np.int64)
    place[rows] = np.arange(len(rows))
    where = pa.array(place, mask=place < 0)

    def spread(values: list[Any], kind: pa.DataType) -> pa.Array:
        return pa.array(values, kind).take(where)

    return _Images(
        given=given,
        ref=spread([ref for ref, _ in found], pa.string()),
        sha256=spread([i and i.sha256 for i in infos], pa.string()),
        inline=raw if inline else pa.nulls(n, pa.large_binary()),
        image_size=spread([i and f"{i.height}x{i.width}" for i in infos], pa.string()),
        height=spread([i and buckets[i.height, i.width][0] for i in infos], pa.int64()),
        width=spread([i and buckets[i.height, i.width][1] for i in infos], pa.int64()),
    )


def _image_sizes(
    images: _Images, explicit: dict[str, pa.Array | None], params: dict[str, pa.Array], rej: _Rejections
) -> None:
    """An image row's height and width become its image's bucket; a row that asks for another size is rejected
    (the job's defaults never apply to it)."""
    sized = pc.is_valid(images.height)
    bucket = pc.binary_join_element_wise(images.height.cast(pa.string()), images.width.cast(pa.string()), "x")
    for name in ("height", "width"):
        target = getattr(images, name)
        asked = explicit[name]
        if asked is not None:
            conflict = pc.not_equal(asked, target)  # null unless both are set
            text = pc.binary_join_element_wise(
                asked.cast(pa.string()),
                ", but the size of an image row follows its image: its ",
                images.image_size,
                " (HxW) image makes a ",
                bucket,
                " (HxW) video; leave height and width null",
                "",
            )
            rej.add(conflict, name, "image_size", text)
        params[name] = pc.if_else(sized, target, params[name])


def _resolve(
    path: str,
    table: pa.Table,
    defaults: GenerationDefaults,
    max_prompt_chars: int,
    max_tokens: int | None,
    extra_schema: pa.Schema,
    image_options: _ImageOptions = _ImageOptions(),
) -> tuple[pa.Table, list[RowError]]:
    """One file's rows as requests (``REQUEST_SCHEMA`` + carried columns) and its rejected rows."""
    n = table.num_rows
    rej = _Rejections(path, n)
    prompts = _prompts(table, rej, max_prompt_chars)

    params: dict[str, pa.Array] = {}
    explicit: dict[str, pa.Array | None] = {}
    unparsed: dict[str, np.ndarray] = {}
    for name in GENERATION_FIELDS:
        floating = name == "guidance_scale"
        values, unparsed[name] = _numbers(table, name, rej, floating=floating)
        explicit[name] = values
        default = getattr(defaults, name)
        kind = pa.float64() if floating else pa.int64()
        params[name] = pa.repeat(pa.scalar(default, kind), n) if values is None else pc.fill_null(values, default)
    images = _images(path, table, rej, image_options)
    if images is not None:
        _image_sizes(images, explicit, params, rej)
    else:
        nothing = pa.nulls(n, pa.string())
        no_bytes = pa.nulls(n, pa.large_binary())
        images = _Images(nothing, nothing, nothing, no_bytes, nothing, *[pa.nulls(n, pa.int64())] * 2)
    size_parsed = ~(unparsed["height"] | unparsed["width"] | unparsed["num_frames"])
    for name in ("height", "width"):
        v = params[name]
        wrong = pc.or_(pc.less_equal(v, 0), pc.not_equal(pc.modulo(v, 16), 0))
        rej.add(pc.and_(wrong, pa.array(size_parsed)), name, "multiple16", v)
    frames = params["num_frames"]
    wrong = pc.or_(pc.less_equal(frames, 0), pc.not_equal(pc.modulo(frames, 4), 1))
    rej.add(pc.and_(wrong, pa.array(size_parsed)), "num_frames", "frames", frames)
    if max_tokens is not None:  # the size is bounded: memory and time grow with it
        tokens = pc.multiply(
            pc.add(pc.divide(pc.subtract(frames, 1), 4), 1),
            pc.multiply(pc.divide(params["height"], 16), pc.divide(params["width"], 16)),
        )
        sized = pc.and_(pa.array(size_parsed & ~rej.bad), pc.greater(tokens, max_tokens))
        size = pc.binary_join_element_wise(
            params["height"].cast(pa.string()), params["width"].cast(pa.string()), frames.cast(pa.string()), "x"
        )
        text = pc.binary_join_element_wise(size, tokens.cast(pa.string()), " (HxWxF) is ")
        rej.add(sized, "size", "tokens", text, limit=max_tokens)
    for name, (low, high, kind) in _RANGES.items():
        rej.add(pc.and_(_outside(params[name], low, high), pa.array(~unparsed[name])), name, kind, params[name])
    guidance = params["guidance_scale"]
    rej.add(
        pc.invert(pc.and_(pc.is_finite(guidance), pc.greater_equal(guidance, 0))),
        "guidance_scale",
        "guidance",
        guidance,
    )

    seeds, _ = _numbers(table, "seed", rej, floating=False)
    if seeds is None:
        seeds = pa.nulls(n, pa.int64())
    rej.add(_outside(seeds, 0, MAX_SEED), "seed", "seed", seeds)
    explicit_seed = pc.is_valid(seeds)

    ids = _column(table, "id")
    if ids is None:
        ids = pa.nulls(n, pa.string())
    ids = ids.cast(pa.string())
    malformed = pc.and_(pc.is_valid(ids), pc.invert(pc.match_substring_regex(ids, ID_PATTERN.pattern)))
    shown = pc.utf8_slice_codeunits(ids, 0, 80)
    rej.add(malformed, "id", "id", shown, pattern=ID_PATTERN.pattern)
    ids = pc.if_else(malformed, pa.scalar(None, pa.string()), ids)

    rejected = _row_errors(rej, ids, prompts, images.given)
    good = pa.array(np.flatnonzero(~rej.bad))
    keep = {name: column.take(good) for name, column in params.items()}
    prompts, ids, seeds, explicit_seed = prompts.take(good), ids.take(good), seeds.take(good), explicit_seed.take(good)
    image_sha256 = images.sha256.take(good)
    derived = pc.is_null(ids)
    if pc.any(derived).as_py():
        missing = pa.array(np.flatnonzero(derived.to_numpy(zero_copy_only=False)))
        new = _default_ids(
            prompts.take(missing),
            seeds.take(missing),
            explicit_seed.take(missing),
            {k: v.take(missing) for k, v in keep.items()},
            image_sha256.take(missing),
        )
        ids = pc.replace_with_mask(ids, derived, new)
    seeds = pc.if_else(explicit_seed, seeds, _default_seeds(ids))
    columns: dict[str, pa.Array] = {"id": ids, "prompt": prompts, "seed": seeds, **keep}
    columns["image"] = images.ref.take(good)
    columns["image_sha256"] = image_sha256
    columns["image_bytes"] = images.inline.take(good)
    columns["source_file"] = pa.DictionaryArray.from_arrays(
        pa.array(np.zeros(len(good), dtype=np.int32)), pa.array([path])
    ).cast(pa.string())
    columns["source_row"] = good.cast(pa.int64())
    for field in extra_schema:
        column = _column(table, field.name) if field.name in table.schema.names else None
        if column is None:
            column = pa.nulls(n, field.type)
        columns[field.name] = column.cast(field.type).take(good)
    return pa.table(columns), rejected


def _row_errors(rej: _Rejections, ids: pa.Array, prompts: pa.Array, images: pa.Array) -> list[RowError]:
    """RowErrors for the rejected rows, in row order; a row's key is its id when valid, else one from its place."""
    if not rej.found:
        return []
    rows = sorted({row for row, *_ in rej.found})
    taken = pa.array(rows)
    keys = dict(zip(rows, ids.take(taken).to_pylist()))
    texts = dict(zip(rows, prompts.take(taken).to_pylist()))
    given = dict(zip(rows, images.take(taken).to_pylist()))
    errors = []
    for row, _, field, message, reason in sorted(rej.found):
        key = keys[row] or "row-" + hashlib.sha256(f"{rej.path}:{row}".encode()).hexdigest()[:20]
        errors.append(RowError(rej.path, row, field, message, key, texts[row], reason, given[row]))
    return errors


def _json_strings(values: pa.Array) -> pa.Array:
    """``json.dumps(v, ensure_ascii=False)`` of every string: quoted, and escaped only where needed."""
    quoted = pc.binary_join_element_wise('"', values, '"', "")
    needs = pc.match_substring_regex(values, r'[\x00-\x1f"\\]')
    if not pc.any(needs).as_py():
        return quoted
    escaped = [json.dumps(v, ensure_ascii=False) for v in pc.filter(values, needs).to_pylist()]
    return pc.replace_with_mask(quoted, needs, pa.array(escaped, pa.string()))


def _default_ids(
    prompts: pa.Array,
    seeds: pa.Array,
    explicit_seed: pa.Array,
    params: dict[str, pa.Array],
    image_sha256: pa.Array | None = None,
) -> pa.Array:
    """:func:`default_id` of every row: the same JSON, built column by column, then hashed."""
    as_json: dict[str, pa.Array] = {"prompt": _json_strings(prompts)}
    if image_sha256 is not None and image_sha256.null_count < len(image_sha256):
        # Hex needs no escaping; like the seed, present only where the row has it (so text rows keep their ids).
        text = pc.binary_join_element_wise('"image_sha256": "', image_sha256, '", ', "")
        as_json["image_sha256"] = pc.fill_null(text, "")
    for name, values in params.items():
        if pat.is_floating(values.type):  # Python's float repr, as json.dumps writes it: one per distinct value
            distinct = pc.unique(values)
            text = pa.array([json.dumps(v) for v in distinct.to_pylist()], pa.string())
            as_json[name] = text.take(pc.index_in(values, distinct))
        else:
            as_json[name] = values.cast(pa.string())
    seed_text = pc.binary_join_element_wise('"seed": ', seeds.cast(pa.string()), ", ", "")
    as_json["seed"] = pc.if_else(explicit_seed, seed_text, "")
    pieces: list[Any] = ["{"]
    names = sorted(as_json)
    for i, name in enumerate(names):
        if name in ("seed", "image_sha256"):  # never last ("width" sorts after them)
            pieces.append(as_json[name])  # carries its own separator: absent when the row has none
            continue
        last = i == len(names) - 1
        pieces += [f'"{name}": ', as_json[name], "}" if last else ", "]
    payload = pc.binary_join_element_wise(*pieces, "")
    # sha256 has no Arrow kernel: this (and _default_seeds) is the one step per row, over bare bytes.
    digests = [hashlib.sha256(b).hexdigest()[:20] for b in payload.cast(pa.binary()).to_pylist()]
    return pc.binary_join_element_wise("v", pa.array(digests, pa.string()), "")


def _default_seeds(ids: pa.Array) -> pa.Array:
    """:func:`default_seed` of every id."""
    prefixed = pc.binary_join_element_wise("seed:", ids, "").cast(pa.binary())
    packed = b"".join(hashlib.sha256(b).digest()[:4] for b in prefixed.to_pylist())
    return pa.array(np.frombuffer(packed, dtype=">u4").astype(np.int64))


def _dedupe(requests: pa.Table) -> tuple[pa.Table, list[RowError], int]:
    """Identical duplicates collapse to one video; an id claimed by different rows is rejected everywhere.

    Running either of two conflicting rows would write a video the user may not have meant under that id,
    so neither runs, and the one error record lists every place the id appears. Grouped by Arrow: only the
    rows whose id repeats are looked at again.
    """
    n = requests.num_rows
    table = requests.append_column("_row", pa.array(np.arange(n, dtype=np.int64)))
    counts = table.group_by("id").aggregate([([], "count_all")])
    repeated = counts.filter(pc.greater(counts.column("count_all"), 1)).column("id")
    rejected: list[RowError] = []
    merged = 0
    if len(repeated):
        in_repeated = pc.is_in(table.column("id"), repeated)
        dups = table.filter(in_repeated)
        signatures = dups.group_by(["id", "prompt", "seed", *GENERATION_FIELDS, "image_sha256"]).aggregate([])
        variants = signatures.group_by("id").aggregate([([], "count_all")])
        conflicting = variants.filter(pc.greater(variants.column("count_all"), 1)).column("id")
        conflicts = dups.filter(pc.is_in(dups.column("id"), conflicting))
        agreeing = dups.filter(pc.invert(pc.is_in(dups.column("id"), conflicting)))
        firsts = agreeing.group_by("id").aggregate([("_row", "min")]).column("_row_min")
        merged = agreeing.num_rows - len(firsts)
        keep = pc.or_(pc.invert(in_repeated), pc.is_in(table.column("_row"), firsts))
        table = table.filter(keep)
        rejected = _group_errors(conflicts, "duplicate")
    # Ids equal but for case name one file on case-insensitive storage (SMB, APFS): none of them runs.
    lower = pc.utf8_lower(table.column("id"))
    if pc.count_distinct(lower).as_py() == table.num_rows:  # the ids are unique here: one hash pass says "none"
        clashing = []
    else:
        spellings = pa.table({"lower": lower, "id": table.column("id")}).group_by("lower")
        spellings = spellings.aggregate([("id", "count_distinct")])
        clashing = spellings.filter(pc.greater(spellings.column("id_count_distinct"), 1)).column("lower")
    if len(clashing):
        in_clash = pc.is_in(lower, clashing)
        rejected += _group_errors(table.filter(in_clash), "case", str.lower)
        table = table.filter(pc.invert(in_clash))
    table = table.drop_columns(["_row"]).sort_by([("source_file", "ascending"), ("source_row", "ascending")])
    return table, rejected, merged


def _group_errors(table: pa.Table, kind: str, group: Callable[[str], str] = str) -> list[RowError]:
    """A RowError for every row of ``table``, whose ids clash in groups (``group`` of the id): each message lists
    every place of its group and the group's other spellings; the group shares one error record."""
    rows = table.select(["id", "prompt", "source_file", "source_row", "image"]).to_pylist()
    places: dict[str, list[str]] = defaultdict(list)
    spellings: dict[str, set[str]] = defaultdict(set)
    for r in rows:
        places[group(r["id"])].append(f"{r['source_file']} row {r['source_row']}")
        spellings[group(r["id"])].add(r["id"])
    reason, template = _MESSAGES[kind]
    errors = []
    for r in sorted(rows, key=lambda r: (r["source_file"], r["source_row"])):
        key = group(r["id"])  # for case clashes, the spelling every case-insensitive store agrees on
        others = ", ".join(repr(i) for i in sorted(spellings[key] - {r["id"]}))
        message = template.format(value=r["id"], others=others, places=", ".join(places[key]))
        errors.append(RowError(r["source_file"], r["source_row"], "id", message, key, r["prompt"], reason, r["image"]))
    return errors

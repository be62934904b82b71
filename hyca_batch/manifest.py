"""Parquet manifests: one row per video, validated in full before any model work.

Two kinds of problem, kept apart on purpose:
- a file that cannot be used at all (unreadable, not Parquet, no ``prompt`` column, a column of a type
  that cannot hold its field) raises :class:`ManifestError`, naming every such file and field at once,
  so a typo costs seconds instead of a GPU start;
- a bad row (empty prompt, unsupported size, negative seed, conflicting duplicate id, ...) becomes a
  :class:`RowError` that the job writes as an error record; every good row still runs.

Rows are numbered from 0 within their file, as pyarrow and pandas number them.
"""

from __future__ import annotations

import fnmatch
import functools
import glob
import hashlib
import json
import math
import os
import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pyarrow.types as pat

from hyca_batch.records import RESERVED_FIELDS
from hyca_batch.storage import StorageError, open_storage
from hyca_batch.types import GENERATION_FIELDS, REQUEST_SCHEMA, GenerationDefaults, Request

#: Columns a manifest row may set; every other column is carried into the record unchanged.
KNOWN_COLUMNS = ("prompt", "id", "seed", *GENERATION_FIELDS)

ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
MAX_SEED = 2**63 - 1


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

    @property
    def total_rows(self) -> int:
        return self.requests.num_rows + len(self.rejected) + self.merged_duplicates


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

    The seed is part of the hash only when the row gives one; otherwise the seed derives from the id.
    """
    payload = {k: v for k, v in params.items() if k != "seed" or explicit_seed}
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True, ensure_ascii=False).encode()).hexdigest()
    return "v" + digest[:20]


def default_seed(video_id: str) -> int:
    """A seed derived from the id: stable across runs and machines, different for every id."""
    return int.from_bytes(hashlib.sha256(f"seed:{video_id}".encode()).digest()[:4], "big")


def check_size(height: int, width: int, num_frames: int) -> list[tuple[str, str]]:
    """(field, message) for every size HunyuanVideo cannot take."""
    problems = []
    for name, value in (("height", height), ("width", width)):
        if value <= 0 or value % 16:
            problems.append((name, f"must be a positive multiple of 16, got {value}"))
    if num_frames <= 0 or num_frames % 4 != 1:
        problems.append(("num_frames", f"must be 4k+1 (1, 5, 9, ..., 129), got {num_frames}"))
    return problems


def read_manifest(
    inputs: Iterable[str],
    defaults: GenerationDefaults,
    *,
    max_prompt_chars: int = 4000,
    s3_endpoint_url: str | None = None,
) -> Manifest:
    """Read, validate and resolve every row of the given manifests (local files or ``s3://`` objects)."""
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

    rows: list[dict[str, Any]] = []
    rejected: list[RowError] = []
    for path, table in tables:
        _resolve_rows(path, table, defaults, max_prompt_chars, extra_schema, rows, rejected)
    rows, dup_rejected, merged = _dedupe(rows)
    rejected.extend(dup_rejected)

    schema = pa.schema(list(REQUEST_SCHEMA) + list(extra_schema))
    requests = pa.Table.from_pylist(rows, schema=schema)
    return Manifest(files, requests, rejected, extra_schema, merged)


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
            ok = pat.is_string(typ) or pat.is_large_string(typ) or pat.is_integer(typ)
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


def _as_int(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError(f"must be an integer, got {value!r}")
    if isinstance(value, float):
        if not math.isfinite(value) or value != int(value):
            raise ValueError(f"must be an integer, got {value!r}")
        return int(value)
    return int(value)


def _resolve_rows(
    path: str,
    table: pa.Table,
    defaults: GenerationDefaults,
    max_prompt_chars: int,
    extra_schema: pa.Schema,
    out: list[dict[str, Any]],
    rejected: list[RowError],
) -> None:
    n = table.num_rows
    cols = {name: table.column(name).to_pylist() for name in KNOWN_COLUMNS if name in table.schema.names}
    extras = {name: table.column(name).to_pylist() for name in _extra_names(table.schema)}
    for name in extra_schema.names:
        extras.setdefault(name, [None] * n)

    for row in range(n):
        errors: list[tuple[str, str]] = []
        prompt = cols["prompt"][row]
        if isinstance(prompt, bytes):
            try:
                prompt = prompt.decode("utf-8")
            except UnicodeDecodeError as exc:
                errors.append(("prompt", f"is not valid UTF-8 ({exc.reason} at byte {exc.start})"))
                prompt = None
        if prompt is None and not errors:
            errors.append(("prompt", "is null"))
        elif isinstance(prompt, str):
            if not prompt.strip():
                errors.append(("prompt", "is empty"))
            elif len(prompt) > max_prompt_chars:
                errors.append(("prompt", f"has {len(prompt)} characters; the limit is {max_prompt_chars}"))

        params: dict[str, Any] = {}
        for name in GENERATION_FIELDS:
            value = cols.get(name, [None] * n)[row]
            if value is None or (isinstance(value, float) and math.isnan(value)):
                params[name] = getattr(defaults, name)
                continue
            try:
                params[name] = float(value) if name == "guidance_scale" else _as_int(value)
            except (TypeError, ValueError) as exc:
                errors.append((name, str(exc)))
        if not any(f in ("height", "width", "num_frames") for f, _ in errors):
            errors.extend(check_size(params["height"], params["width"], params["num_frames"]))
        if "num_inference_steps" in params and not 1 <= params["num_inference_steps"] <= 1000:
            errors.append(("num_inference_steps", f"must be between 1 and 1000, got {params['num_inference_steps']}"))
        if "fps" in params and not 1 <= params["fps"] <= 240:
            errors.append(("fps", f"must be between 1 and 240, got {params['fps']}"))
        if "guidance_scale" in params and not (
            math.isfinite(params["guidance_scale"]) and params["guidance_scale"] >= 0
        ):
            errors.append(("guidance_scale", f"must be a finite number >= 0, got {params['guidance_scale']}"))

        seed_value = cols.get("seed", [None] * n)[row]
        explicit_seed = seed_value is not None and not (isinstance(seed_value, float) and math.isnan(seed_value))
        seed: int | None = None
        if explicit_seed:
            try:
                seed = _as_int(seed_value)
                if not 0 <= seed <= MAX_SEED:
                    raise ValueError(f"must be between 0 and 2**63-1, got {seed}")
            except (TypeError, ValueError) as exc:
                errors.append(("seed", str(exc)))

        raw_id = cols.get("id", [None] * n)[row]
        video_id: str | None = None
        if raw_id is not None:
            video_id = str(raw_id)
            if not ID_PATTERN.match(video_id):
                errors.append(("id", f"{video_id[:80]!r} must match {ID_PATTERN.pattern} (it names output files)"))
                video_id = None
        if video_id is None and not errors:
            video_id = default_id({"prompt": prompt, "seed": seed, **params}, explicit_seed)

        if errors:
            key = video_id or "row-" + hashlib.sha256(f"{path}:{row}".encode()).hexdigest()[:20]
            for fld, msg in errors:
                rejected.append(RowError(path, row, fld, msg, key, prompt if isinstance(prompt, str) else None))
            continue
        record = {
            "id": video_id,
            "prompt": prompt,
            "seed": seed if explicit_seed else default_seed(video_id),
            **params,
            "source_file": path,
            "source_row": row,
        }
        record.update({name: extras[name][row] for name in extra_schema.names})
        out.append(record)


def _dedupe(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[RowError], int]:
    """Identical duplicates collapse to one video; an id claimed by different rows is rejected everywhere.

    Running either of two conflicting rows would write a video the user may not have meant under that id,
    so neither runs, and the one error record lists every place the id appears.
    """
    by_id: dict[str, list[int]] = defaultdict(list)
    for i, row in enumerate(rows):
        by_id[row["id"]].append(i)
    keep: list[dict[str, Any]] = []
    rejected: list[RowError] = []
    merged = 0
    for video_id, idxs in by_id.items():
        first = rows[idxs[0]]
        if len(idxs) == 1:
            keep.append(first)
            continue
        signature = [Request.from_row(rows[i]).generation_params() for i in idxs]
        if all(s == signature[0] for s in signature):
            keep.append(first)
            merged += len(idxs) - 1
            continue
        places = ", ".join(f"{rows[i]['source_file']} row {rows[i]['source_row']}" for i in idxs)
        for i in idxs:
            r = rows[i]
            rejected.append(
                RowError(
                    r["source_file"],
                    r["source_row"],
                    "id",
                    f"duplicate id {video_id!r} with different parameters (at {places})",
                    video_id,
                    r["prompt"],
                )
            )
    keep.sort(key=lambda r: (r["source_file"], r["source_row"]))
    return keep, rejected, merged

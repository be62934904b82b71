"""Before any model loads: read and validate the manifests, check the output, and decide what to run.

Validation reads every manifest on the driver, because two checks need the whole manifest at once
(duplicate ids across files, and which ids a previous run already committed). Everything here works on whole
Arrow columns: the committed ids come from one listing of ``records/``, the attempts so far from the error
records of the ids that have one (read concurrently), and the rejections are written in one concurrent batch.
The result is a ``Plan``: the pending requests as one Arrow table (with each one's manifest position and the
number of its next attempt) and the counts (``PlanCounts``) that ``--dry-run`` prints and the summary reports.
"""

from __future__ import annotations

import dataclasses
import json
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from hyca_batch.cache import SolverMap
from hyca_batch.config import JobConfig
from hyca_batch.job.errors import JobError
from hyca_batch.manifest import Manifest, RowError, check_size, read_manifest, reason_of
from hyca_batch.models import ModelSpec, resolve_model
from hyca_batch.records import committed_ids, error_body, failed_ids, utcnow
from hyca_batch.storage import Storage, open_storage
from hyca_batch.storage.layout import RUN_KEY, error_key

#: Examples of each kind of rejection a plan shows (the error records hold every one).
EXAMPLES_PER_REASON = 3


@dataclass
class PlanCounts:
    """What a run of this manifest into this output would do; ``--plan-json`` writes it as it is.

    ``rows`` = ``merged_duplicates`` + ``rejected`` + ``committed`` + ``exhausted`` + ``pending``.
    """

    rows: int = 0  # read, over every manifest file
    merged_duplicates: int = 0  # identical repeats of a row, folded into it
    rejected: int = 0  # rows that fail validation (or claim an id another row claims differently)
    committed: int = 0  # already generated into this output
    exhausted: int = 0  # failed --max-attempts times in earlier runs: not tried again
    pending: int = 0  # to generate now
    retrying: int = 0  # of the pending, those that failed before
    rejected_by_reason: dict[str, int] = field(default_factory=dict)  # "field: what is wrong" -> rows
    rejected_examples: dict[str, list[str]] = field(default_factory=dict)  # reason -> "file: row N: field: ..."
    files: list[str] = field(default_factory=list)
    out: str = ""
    model: str = ""

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class Plan:
    """What this invocation will do."""

    spec: ModelSpec
    storage: Storage
    manifest: Manifest
    identity: dict[str, Any]
    pending: pa.Table  # REQUEST_SCHEMA + carried columns + ordinal + attempt (the number of the next one)
    counts: PlanCounts


def generation_identity(config: JobConfig, defaults: dict[str, Any], model_name: str) -> dict[str, Any]:
    """What must match for two runs to write into the same output: same inputs give the same videos."""
    cache = dataclasses.asdict(config.cache)
    if config.cache.mode == "hyca":
        # A map given by path is pinned by its content; a calibrated one is stored with the outputs and reused.
        cache["solver_map"] = SolverMap.load(config.solver_map).id if config.solver_map else "calibrated"
    return {"model": model_name, "cache": cache, "defaults": defaults}


def plan_job(config: JobConfig, *, force: bool = False, run_id: str = "", dry_run: bool = False) -> Plan:
    """Validate everything, check the output is this configuration's, choose the pending rows and, unless
    ``dry_run``, write the rejected rows' error records. A dry run writes nothing, not even the output's
    directory."""
    spec = resolve_model(config.model)
    defaults = spec.defaults.merged(**config.generation)
    bad_defaults = check_size(defaults.height, defaults.width, defaults.num_frames)
    if bad_defaults:
        raise JobError("; ".join(f"job default {f} {m}" for f, m in bad_defaults))
    manifest = read_manifest(
        config.manifests, defaults, max_prompt_chars=config.max_prompt_chars, s3_endpoint_url=config.s3_endpoint_url
    )
    # After the manifest, so that a bad manifest leaves no output directory behind; on S3 this checks the bucket.
    storage = open_storage(config.out, s3_endpoint_url=config.s3_endpoint_url, create=not dry_run)
    identity = generation_identity(config, dataclasses.asdict(defaults), spec.name)
    check_previous_run(storage, identity, force)

    committed, errored = committed_ids(storage), failed_ids(storage)
    pending, counts = choose_pending(storage, manifest, committed, errored, config.max_attempts)
    counts.out, counts.model = storage.uri, spec.name
    if not dry_run:
        write_rejections(storage, manifest.rejected, committed, errored, run_id)
    return Plan(spec, storage, manifest, identity, pending, counts)


def check_previous_run(storage: Storage, identity: dict[str, Any], force: bool) -> None:
    """An output belongs to one configuration: another would mix videos that do not match (``--force`` allows)."""
    if not storage.exists(RUN_KEY):
        return
    previous = json.loads(storage.read_bytes(RUN_KEY)).get("identity")
    if previous is not None and previous != identity and not force:
        raise JobError(
            f"{storage.uri_for(RUN_KEY)} was written by a run with a different configuration "
            f"({json.dumps(previous, sort_keys=True)} vs {json.dumps(identity, sort_keys=True)}); "
            "its videos would not match this run's. Use another --out, or --force to write into it anyway."
        )


def choose_pending(
    storage: Storage, manifest: Manifest, committed: pa.Array, errored: pa.Array, max_attempts: int
) -> tuple[pa.Table, PlanCounts]:
    """Which requests to run now, each with the number of its next attempt, and the plan's counts.

    Only ids with an error record cost a read (all of them at once): its ``attempt`` if the video failed.
    """
    requests = manifest.requests
    ids = requests.column("id")
    done = pc.is_in(ids, committed)
    had_error = pc.and_(pc.is_in(ids, errored), pc.invert(done))
    tried = np.zeros(requests.num_rows, dtype=np.int64)
    rows = np.flatnonzero(pc.fill_null(had_error, False).to_numpy(zero_copy_only=False))
    if len(rows):
        keys = [error_key(i) for i in ids.take(pa.array(rows)).to_pylist()]
        docs = [json.loads(body) if body else {} for body in storage.read_many(keys)]
        tried[rows] = [int(d.get("attempt", 0)) if d.get("status") == "failed" else 0 for d in docs]
    out_of_attempts = pc.and_(pa.array(tried >= max_attempts), pc.invert(done))
    keep = pc.invert(pc.or_(done, out_of_attempts))
    # The manifest position travels with each request: --baseline-every K picks every K-th by it.
    requests = requests.append_column("ordinal", pa.array(np.arange(requests.num_rows, dtype=np.int64)))
    requests = requests.append_column("attempt", pa.array(tried + 1))
    pending = requests.filter(keep)
    counts = PlanCounts(
        rows=manifest.total_rows,
        merged_duplicates=manifest.merged_duplicates,
        rejected=manifest.rejected_rows,
        committed=pc.sum(done).as_py() or 0,
        exhausted=pc.sum(out_of_attempts).as_py() or 0,
        pending=pending.num_rows,
        retrying=int((tried[keep.to_numpy(zero_copy_only=False)] > 0).sum()),
        files=manifest.files,
    )
    rows_by_reason: dict[str, set[tuple[str, int]]] = defaultdict(set)
    for err in manifest.rejected:
        reason = reason_of(err)
        rows_by_reason[reason].add((err.file, err.row))
        examples = counts.rejected_examples.setdefault(reason, [])
        if len(examples) < EXAMPLES_PER_REASON:
            examples.append(str(err))
    counts.rejected_by_reason = {r: len(v) for r, v in sorted(rows_by_reason.items(), key=lambda kv: -len(kv[1]))}
    return pending, counts


def write_rejections(
    storage: Storage, rejected: list[RowError], committed: pa.Array, errored: pa.Array, run_id: str
) -> None:
    """One error record per rejected id (rows that share an id share it), unless it is already on record; all
    written in one concurrent batch, after one concurrent read of the ones that exist."""
    by_key: dict[str, list[RowError]] = defaultdict(list)
    for err in rejected:
        by_key[err.key].append(err)
    keys = pa.array(list(by_key), pa.string())
    # An earlier valid row committed the id: the record stands.
    keys = keys.filter(pc.invert(pc.is_in(keys, committed))).to_pylist()
    on_record = [k for k, known in zip(keys, pc.is_in(pa.array(keys, pa.string()), errored).to_pylist()) if known]
    previous = dict(zip(on_record, storage.read_many([error_key(k) for k in on_record])))
    at = utcnow().isoformat()
    items = []
    for key in keys:
        errs = by_key[key]
        message = "; ".join(str(e) for e in errs)
        before = previous.get(key)
        if before is not None:
            doc = json.loads(before)
            if doc.get("status") == "rejected" and doc.get("message") == message:
                continue  # the same rejection, already on record
        error = {
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
            "at": at,
        }
        items.append((error_key(key), error_body(error, before)))
    storage.put_many(items, overwrite=True)

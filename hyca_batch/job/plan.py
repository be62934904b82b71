"""Before any model loads: read and validate the manifests, check the output, and decide what to run.

Validation reads every manifest on the driver, because two checks need the whole manifest at once
(duplicate ids across files, and which ids a previous run already committed). The result is a ``Plan``:
the pending requests as one Arrow table (with each one's manifest position), how many attempts each has had,
and the counts the summary reports.
"""

from __future__ import annotations

import dataclasses
import json
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from hyca_batch.cache import SolverMap
from hyca_batch.config import JobConfig
from hyca_batch.job.errors import JobError
from hyca_batch.job.progress import JobSummary
from hyca_batch.manifest import Manifest, RowError, check_size, read_manifest
from hyca_batch.models import ModelSpec, resolve_model
from hyca_batch.records import committed_ids, failed_ids, read_error, utcnow, write_error
from hyca_batch.storage import Storage, open_storage
from hyca_batch.storage.layout import RUN_KEY


@dataclass
class Plan:
    """What this invocation will do."""

    spec: ModelSpec
    storage: Storage
    manifest: Manifest
    identity: dict[str, Any]
    pending: pa.Table  # REQUEST_SCHEMA + carried columns + ordinal: the requests to run now
    attempts: dict[str, int]  # id -> attempts so far (counted across runs)


def generation_identity(config: JobConfig, defaults: dict[str, Any], model_name: str) -> dict[str, Any]:
    """What must match for two runs to write into the same output: same inputs give the same videos."""
    cache = dataclasses.asdict(config.cache)
    if config.cache.mode == "hyca":
        # A map given by path is pinned by its content; a calibrated one is stored with the outputs and reused.
        cache["solver_map"] = SolverMap.load(config.solver_map).id if config.solver_map else "calibrated"
    return {"model": model_name, "cache": cache, "defaults": defaults}


def plan_job(config: JobConfig, summary: JobSummary, force: bool) -> Plan:
    """Validate everything, check the output is this configuration's, record rejections, choose the pending rows."""
    spec = resolve_model(config.model)
    defaults = spec.defaults.merged(**config.generation)
    bad_defaults = check_size(defaults.height, defaults.width, defaults.num_frames)
    if bad_defaults:
        raise JobError("; ".join(f"job default {f} {m}" for f, m in bad_defaults))
    manifest = read_manifest(
        config.manifests, defaults, max_prompt_chars=config.max_prompt_chars, s3_endpoint_url=config.s3_endpoint_url
    )
    # After the manifest, so that a bad manifest leaves no output directory behind; on S3 this checks the bucket.
    storage = open_storage(config.out, s3_endpoint_url=config.s3_endpoint_url)
    identity = generation_identity(config, dataclasses.asdict(defaults), spec.name)
    check_previous_run(storage, identity, force)

    summary.out, summary.total_rows = storage.uri, manifest.total_rows
    summary.merged_duplicates = manifest.merged_duplicates
    committed = committed_ids(storage)
    write_rejections(storage, manifest.rejected, committed, summary)
    pending, attempts, summary.skipped, summary.exhausted = choose_pending(
        storage, manifest, committed, config.max_attempts
    )
    return Plan(spec, storage, manifest, identity, pending, attempts)


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


def write_rejections(storage: Storage, rejected: list[RowError], committed: set[str], summary: JobSummary) -> None:
    """One error record per rejected id (rows that share an id share it), unless it is already on record."""
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
                "run_id": summary.run_id,
                "at": utcnow().isoformat(),
            },
        )


def choose_pending(
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

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
import uuid
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
from hyca_batch.records import committed_listing, error_body, failed_ids, read_records, utcnow
from hyca_batch.storage import AlreadyExists, Storage, StorageError, open_storage
from hyca_batch.storage.layout import IDENTITY_KEY, RUN_KEY, error_key, probe_key
from hyca_batch.types import GENERATION_FIELDS, latent_tokens

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
    video_timeout_s: float = 0.0  # how long a video of the default size may take (--video-timeout)
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
    forced_over: dict[str, Any] | None = None  # the other configuration this output holds, with --force


class VideoTimeout:
    """How long a video may take: ``--video-timeout``, else the model's (``ModelSpec.video_timeout_s``, for its
    default size and steps) scaled by the video's latent tokens x steps, doubled when a baseline may run too."""

    def __init__(self, config: JobConfig, spec: ModelSpec):
        self.fixed = config.video_timeout
        self.spec = spec
        d = spec.defaults
        self.reference = latent_tokens(d.height, d.width, d.num_frames) * d.num_inference_steps
        self.factor = 2.0 if config.baseline_every and config.cache.mode != "none" else 1.0

    def of_size(self, height: int, width: int, num_frames: int, steps: int) -> float:
        if self.fixed is not None:
            return self.fixed
        work = latent_tokens(height, width, num_frames) * steps
        return self.factor * self.spec.video_timeout_s * max(1.0, work / self.reference)

    def of(self, block: pa.Table) -> float:
        """The block's videos' timeouts, summed: they run one after another."""
        columns = [block.column(n).to_pylist() for n in ("height", "width", "num_frames", "num_inference_steps")]
        return sum(self.of_size(*size) for size in zip(*columns))


def generation_identity(config: JobConfig, defaults: dict[str, Any], model_name: str) -> dict[str, Any]:
    """What must match for two runs to write into the same output: same inputs give the same videos."""
    cache = dataclasses.asdict(config.cache)
    if config.cache.mode != "hyca":
        # Only hyca has a calibrated schedule: other modes' outputs stay as they were.
        del cache["schedule"], cache["full_steps"]
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
    max_tokens = config.max_tokens or spec.max_tokens
    tokens = latent_tokens(defaults.height, defaults.width, defaults.num_frames)
    if tokens > max_tokens:
        raise JobError(
            f"the job's default size {defaults.height}x{defaults.width}x{defaults.num_frames} is {tokens} latent "
            f"tokens; the limit for {spec.name} is {max_tokens} (--max-tokens)"
        )
    manifest = read_manifest(
        config.manifests,
        defaults,
        max_prompt_chars=config.max_prompt_chars,
        max_tokens=max_tokens,
        s3_endpoint_url=config.s3_endpoint_url,
        image_video_size=spec.image_video_size if spec.i2v_target_size is not None else None,
        model_name=spec.name,
    )
    # After the manifest, so that a bad manifest leaves no output directory behind; on S3 this checks the bucket.
    storage = open_storage(config.out, s3_endpoint_url=config.s3_endpoint_url, create=not dry_run)
    identity = generation_identity(config, dataclasses.asdict(defaults), spec.name)
    forced_over = check_previous_run(storage, identity, force)

    if not dry_run:
        check_exclusive(storage)
        claim_output(storage, identity, force)
    listing, errored = committed_listing(storage), failed_ids(storage)
    committed = listing.column("id")
    pending, counts = choose_pending(storage, manifest, listing, errored, config.max_attempts)
    counts.out, counts.model = storage.uri, spec.name
    counts.video_timeout_s = VideoTimeout(config, spec).of_size(
        defaults.height, defaults.width, defaults.num_frames, defaults.num_inference_steps
    )
    if not dry_run:
        write_rejections(storage, manifest.rejected, committed, errored, run_id)
    return Plan(spec, storage, manifest, identity, pending, counts, forced_over)


def check_previous_run(storage: Storage, identity: dict[str, Any], force: bool) -> dict[str, Any] | None:
    """An output belongs to one configuration: another would mix videos that do not match (``--force`` allows,
    and the identity it overrode is returned, for run.json to say so). Reads only: ``claim_output`` binds it."""
    if storage.exists(IDENTITY_KEY):
        where, previous = IDENTITY_KEY, json.loads(storage.read_bytes(IDENTITY_KEY))
    elif storage.exists(RUN_KEY):  # an output of an earlier version
        where, previous = RUN_KEY, json.loads(storage.read_bytes(RUN_KEY)).get("identity")
    else:
        return None
    if previous is None or previous == identity:
        return None
    if not force:
        raise _other_configuration(storage, where, previous, identity)
    return previous


def claim_output(storage: Storage, identity: dict[str, Any], force: bool) -> None:
    """Bind the output to this configuration with an exclusive write, so that of two jobs with different
    configurations starting at once on one output, one is refused (a check of run.json alone lets both in)."""
    body = json.dumps(identity, sort_keys=True, indent=2).encode()
    if force:  # the user chose to mix: the output is bound to this configuration from now on
        storage.put_bytes(IDENTITY_KEY, body, overwrite=True)
        return
    try:
        storage.put_bytes(IDENTITY_KEY, body)
    except AlreadyExists:
        previous = json.loads(storage.read_bytes(IDENTITY_KEY))
        if previous != identity:
            raise _other_configuration(storage, IDENTITY_KEY, previous, identity) from None


def _other_configuration(storage: Storage, key: str, previous: Any, identity: dict[str, Any]) -> JobError:
    return JobError(
        f"{storage.uri_for(key)} says the output was made with a different configuration "
        f"({json.dumps(previous, sort_keys=True)} vs {json.dumps(identity, sort_keys=True)}); "
        "its videos would not match this run's. Use another --out, or --force to write into it anyway."
    )


def check_exclusive(storage: Storage) -> None:
    """Exactly-once rests on exclusive creation (S3 ``If-None-Match: *``, a hard link on disk): probe it once,
    since a store that ignores the condition (some S3 look-alikes) or a mount without hard links (gcsfuse, s3fs)
    would otherwise lose it silently or fail every record after its video was made."""
    key = probe_key(uuid.uuid4().hex)
    try:
        storage.put_bytes(key, b"first")
        try:
            storage.put_bytes(key, b"second")
        except AlreadyExists:
            return
        raise JobError(
            f"{storage.uri} accepted a second exclusive write of one object, so it cannot keep each video committed "
            "exactly once (an S3 endpoint that ignores If-None-Match?). Use a store that honours conditional writes"
        )
    except StorageError as exc:
        if isinstance(exc, AlreadyExists):
            raise
        raise JobError(
            f"{storage.uri} cannot create objects exclusively ({exc}): a local output needs a filesystem with hard "
            "links (not gcsfuse or s3fs); write to s3:// instead"
        ) from exc
    finally:
        try:
            storage.delete(key)
        except StorageError:
            pass


def choose_pending(
    storage: Storage, manifest: Manifest, listing: pa.Table, errored: pa.Array, max_attempts: int
) -> tuple[pa.Table, PlanCounts]:
    """Which requests to run now, each with the number of its next attempt, and the plan's counts.

    Only ids with an error record cost a read (all of them at once): its ``attempt`` if the video failed.
    """
    requests = manifest.requests
    ids = requests.column("id")
    done = pc.is_in(ids, listing.column("id"))
    drifted = _drift(storage, requests, done, listing)
    if drifted is not None:  # not committed as asked: reported, counted as rejected, never run over the record
        mask, errors = drifted
        manifest.rejected.extend(errors)
        requests, done = requests.filter(pc.invert(mask)), done.filter(pc.invert(mask))
        manifest.requests = requests
        ids = requests.column("id")
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


def _drift(
    storage: Storage, requests: pa.Table, done: pa.Array, listing: pa.Table
) -> tuple[pa.Array, list[RowError]] | None:
    """Rows whose id is committed with other generation parameters (the prompt or the seed changed under an
    explicit id, another default, another image): a mask over ``requests`` and their RowErrors, or None when there
    are none. The committed values come from the snapshot (two columns' worth) and the few records it does not
    cover."""
    if not pc.any(done).as_py():
        return None
    fields = ["prompt", "seed", *GENERATION_FIELDS, "image_sha256"]
    asked = requests.filter(done)
    recorded = read_records(storage, ids=asked.column("id"), columns=fields, listed=listing)
    where = pc.index_in(asked.column("id"), recorded.column("id"))
    differs = {}
    for name in fields:
        was = recorded.column(name).take(where)
        differs[name] = pc.fill_null(pc.not_equal(was, asked.column(name)), False)  # unknown: not drift
    # A null image_sha256 is a value: text-to-video (records from before images existed read as null too). A
    # text video committed under an id that now has an image (or the reverse) drifted; a record that was not read,
    # or says nothing of what it generated (no prompt), did not.
    was = recorded.column("image_sha256").take(where)
    known = pc.is_valid(recorded.column("prompt").take(where))
    one_sided = pc.and_(known, pc.not_equal(pc.is_null(was), pc.is_null(asked.column("image_sha256"))))
    differs["image_sha256"] = pc.or_(differs["image_sha256"], one_sided)
    any_field = differs[fields[0]]
    for name in fields[1:]:
        any_field = pc.or_(any_field, differs[name])
    if not pc.any(any_field).as_py():
        return None
    rows = np.flatnonzero(any_field.to_numpy(zero_copy_only=False))
    taken = pa.array(rows)
    was_rows = recorded.take(where.take(taken)).to_pylist()
    errors = []
    for now, was in zip(asked.take(taken).to_pylist(), was_rows):
        changed = "; ".join(
            f"{n}: {was[n]!r} -> {now[n]!r}"
            for n in fields
            if (was[n] is not None or n == "image_sha256") and was[n] != now[n]
        )
        errors.append(
            RowError(
                now["source_file"],
                now["source_row"],
                "id",
                f"{now['id']!r} is already committed with other parameters ({changed}); give the row a new id, or "
                "delete the record and its video to make it again",
                now["id"],
                now["prompt"],
                "already committed with other parameters",
                now["image"],
            )
        )
    # The mask over all requests: the asked rows are the committed ones, in order.
    full = np.zeros(requests.num_rows, dtype=bool)
    full[np.flatnonzero(done.to_numpy(zero_copy_only=False))[rows]] = True
    return pa.array(full), errors


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
            "problems": [_problem(e) for e in errs],
            "prompt": errs[0].prompt,
            **({"image": errs[0].image} if errs[0].image is not None else {}),
            "source_file": errs[0].file,
            "source_row": errs[0].row,
            "run_id": run_id,
            "at": at,
        }
        items.append((error_key(key), error_body(error, before)))
    storage.put_many(items, overwrite=True)


def _problem(error: RowError) -> dict[str, Any]:
    """A rejection as its error record lists it; ``image`` only for an image row given by reference."""
    doc = dataclasses.asdict(error)
    if doc["image"] is None:
        del doc["image"]
    return doc

"""Every key a run writes under its output, in one place: the job, the replicas, the records and the cost
report all read and write through these names, so the layout can only change here.

```
videos/<id>.mp4                   the video (written before its record, exclusively; videos/<id>.<try>.mp4 when
                                  an uncommitted try left bytes under the plain key)
records/<id>.parquet              the video's record: its commit marker, written last and exclusively
errors/<id>.json                  why a row was rejected or a video failed, with every earlier attempt
records.parquet/part-*.parquet    the records in a few files (a cache for readers; records/ is the truth)
identity.json                     the configuration (model, cache, defaults) the output is bound to
run.json                          the latest invocation's options, identity, versions and counts
progress.json                     the running invocation's counts and ETA, rewritten as it runs
runs/<run_id>.json                every invocation's document (the cost report charges each)
runs/<run_id>/replica-<r>.json    when each replica started and how long its model took to load
solver_map.safetensors (+ .json)  the HyCa solver map the output was made with, and its readable twin
```
"""

from __future__ import annotations

RUN_KEY = "run.json"
IDENTITY_KEY = "identity.json"  # the configuration the output is bound to, created exclusively by the first run
PROGRESS_KEY = "progress.json"
SNAPSHOT = "records.parquet/"  # a Parquet dataset directory: pandas, pyarrow and duckdb read it as one table
LEGACY_SNAPSHOT_KEY = "records.parquet"  # the single file earlier versions wrote; replaced on the next run
SOLVER_MAP_KEY = "solver_map.safetensors"
SOLVER_MAP_JSON_KEY = "solver_map.json"  # SolverMap.save writes it beside the map

VIDEOS, RECORDS, ERRORS, RUNS = "videos/", "records/", "errors/", "runs/"
_VIDEO, _RECORD, _ERROR = ".mp4", ".parquet", ".json"


def video_key(video_id: str, attempt: str | None = None) -> str:
    """``videos/<id>.mp4``; ``videos/<id>.<attempt>.mp4`` for a try that found other uncommitted bytes there (the
    record's ``output_uri`` always names the one that committed)."""
    return f"{VIDEOS}{video_id}{'.' + attempt if attempt else ''}{_VIDEO}"


def record_key(video_id: str) -> str:
    return f"{RECORDS}{video_id}{_RECORD}"


def error_key(video_id: str) -> str:
    return f"{ERRORS}{video_id}{_ERROR}"


def probe_key(token: str) -> str:
    """A short-lived object with which a run checks that the store refuses a second exclusive write."""
    return f"probes/{token}"


def snapshot_part_key(run_id: str, staging: int | None = None) -> str:
    """A run's part of the snapshot; ``staging`` parts are written while it runs and merged at its end."""
    name = f"part-{run_id}" if staging is None else f"staging-{run_id}-{staging:05d}"
    return f"{SNAPSHOT}{name}.parquet"


def is_staging_part(key: str, run_id: str | None = None) -> bool:
    """Whether ``key`` is a staging part (of ``run_id``, when given)."""
    name = key[len(SNAPSHOT) :]
    return key.startswith(SNAPSHOT) and name.startswith("staging-" + (f"{run_id}-" if run_id else ""))


def run_key(run_id: str) -> str:
    """One job invocation's document: its configuration, reservation, timing and counts."""
    return f"{RUNS}{run_id}.json"


def replica_key(run_id: str, replica: str) -> str:
    return f"{RUNS}{run_id}/replica-{replica}.json"


def record_ids(keys: list[str]) -> list[str]:
    """The video ids of the record keys among ``keys`` (a listing of ``RECORDS``)."""
    return _ids(keys, RECORDS, _RECORD)


def error_ids(keys: list[str]) -> list[str]:
    """The ids of the error keys among ``keys`` (a listing of ``ERRORS``)."""
    return _ids(keys, ERRORS, _ERROR)


def is_run_key(key: str) -> bool:
    return key.startswith(RUNS) and key.endswith(".json") and "/" not in key[len(RUNS) :]


def is_replica_key(key: str) -> bool:
    run_id, _, name = key[len(RUNS) :].partition("/")
    return (
        key.startswith(RUNS)
        and bool(run_id)
        and "/" not in name
        and name.startswith("replica-")
        and name.endswith(".json")
    )


def replica_run_id(key: str) -> str:
    """The run id a replica key (``is_replica_key``) belongs to."""
    return key[len(RUNS) :].partition("/")[0]


def _ids(keys: list[str], prefix: str, suffix: str) -> list[str]:
    return [k[len(prefix) : -len(suffix)] for k in keys if k.startswith(prefix) and k.endswith(suffix)]

"""Faults a long batch meets, each injected for real (``tests/faults.py``): a row that kills its replica process,
a row that hangs, a replica whose device breaks, leftover and concurrent writers. Every test checks the same
invariants: the job ended, each good row has one record and one video whose bytes the record describes, and each
bad row has an error record that says what happened."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
from pathlib import Path

import pytest
from faults import replica_fault_env

from hyca_batch.config import JobConfig
from hyca_batch.job import JobError, dry_run, run_job
from hyca_batch.records import read_records
from hyca_batch.storage import open_storage

STEPS = 2
# The local S3 endpoint first: its credentials are in the environment before this module's Ray starts, so the
# replicas have them (session fixtures are set up before module ones).
pytestmark = pytest.mark.usefixtures("s3")


@pytest.fixture
def faults(tmp_path, monkeypatch) -> Path:
    directory = tmp_path / "faults"
    directory.mkdir()
    for name, value in replica_fault_env(directory).items():
        monkeypatch.setenv(name, value)
    return directory


def config(manifest: str, out: Path, **kw) -> JobConfig:
    return JobConfig.from_options(
        manifests=[manifest], out=str(out), model="tiny", progress=False, num_inference_steps=STEPS, **kw
    )


def assert_consistent(out, good: list[str], s3_endpoint_url: str | None = None) -> dict[str, dict]:
    """One record per good id, each naming an mp4 whose bytes it describes; no record for anything else."""
    storage = open_storage(str(out), s3_endpoint_url=s3_endpoint_url)
    records = read_records(storage).to_pylist()
    by_id = {r["id"]: r for r in records}
    assert sorted(by_id) == sorted(good) and len(records) == len(good)
    for rec in records:
        data = storage.read_bytes(rec["output_uri"][len(storage.uri) + 1 :])
        assert rec["sha256"] == hashlib.sha256(data).hexdigest() and rec["bytes"] == len(data)
    return by_id


def error(out: Path, video_id: str) -> dict:
    return json.loads((out / "errors" / f"{video_id}.json").read_text())


def test_a_row_that_kills_its_replica_ends_with_an_error_record(ray_session, faults, write_manifest, tmp_path):
    manifest = write_manifest(prompt=["one", "POISON two", "three"], id=["one", "poison", "three"])
    out = tmp_path / "out"
    summary = run_job(config(manifest, out, max_attempts=2))
    assert (summary.failed, summary.done + summary.skipped) == (1, 2)
    by_id = assert_consistent(out, ["one", "three"])
    assert all(r["attempt"] == 1 for r in by_id.values())  # its neighbours were never charged
    err = error(out, "poison")
    assert err["status"] == "failed" and err["attempt"] == 2 and err["error_type"] == "ReplicaDied"
    assert "the replica process died" in err["message"] and len(err["history"]) == 1
    # A re-run does not try it again: its attempts are on record.
    again = run_job(config(manifest, out, max_attempts=2))
    assert (again.exhausted, again.skipped, again.done) == (1, 2, 0)


def test_a_row_that_hangs_is_abandoned_at_its_timeout(ray_session, faults, write_manifest, tmp_path):
    manifest = write_manifest(prompt=["fine", "HANG"], id=["fine", "hang"])
    out = tmp_path / "out"
    summary = run_job(config(manifest, out, max_attempts=1, video_timeout=8))
    assert (summary.done, summary.failed) == (1, 1)
    assert_consistent(out, ["fine"])
    err = error(out, "hang")
    assert err["error_type"] == "VideoTimeout" and "timeout of 8 s" in err["message"] and err["attempt"] == 1


def test_a_broken_device_takes_its_replica_out_not_the_videos(ray_session, faults, write_manifest, tmp_path):
    (faults / "broken-device").touch()
    ids = [f"v{i}" for i in range(4)]
    manifest = write_manifest(prompt=[f"a shape number {i}" for i in range(4)], id=ids)
    out = tmp_path / "out"
    summary = run_job(config(manifest, out, replicas=2, max_attempts=1))
    assert (faults / "broken-pid").exists(), "no replica claimed the broken device"
    assert summary.done == 4 and summary.failed == 0
    by_id = assert_consistent(out, ids)
    assert all(r["attempt"] == 1 for r in by_id.values())  # the device's fault cost no video an attempt
    assert not (out / "errors").exists()


def test_a_failing_video_retries_in_the_same_pool(ray_session, faults, write_manifest, tmp_path):
    (faults / "fail").touch()
    manifest = write_manifest(prompt=["FAIL one", "fine"], id=["flaky", "fine"])
    out = tmp_path / "out"
    first = run_job(config(manifest, out, max_attempts=2))
    assert (first.done, first.failed) == (1, 1)
    assert len(list((out / "runs" / first.run_id).glob("replica-*.json"))) == 1  # retried without a new replica
    (faults / "fail").unlink()
    second = run_job(config(manifest, out, max_attempts=3))
    assert (second.done, second.skipped) == (1, 1)
    assert assert_consistent(out, ["flaky", "fine"])["flaky"]["attempt"] == 3


def test_bytes_left_by_an_uncommitted_try_are_never_replaced(ray_session, write_manifest, tmp_path):
    manifest = write_manifest(prompt=["a red circle"], id=["clip"])
    out = tmp_path / "out"
    leftover = out / "videos" / "clip.mp4"
    leftover.parent.mkdir(parents=True)
    leftover.write_bytes(b"a crashed writer's bytes, or a live writer's")
    assert run_job(config(manifest, out)).done == 1
    rec = assert_consistent(out, ["clip"])["clip"]
    assert Path(rec["output_uri"]).name.startswith("clip.") and Path(rec["output_uri"]) != leftover
    assert leftover.read_bytes() == b"a crashed writer's bytes, or a live writer's"


def test_a_killed_tries_mp4_equal_to_the_retrys_is_named_not_copied(ray_session, write_manifest, tmp_path):
    """A try killed between its mp4 and its record (a driver killed mid-job) left exactly the bytes the retry makes:
    the retry's record names them, and no second copy is left beside them."""
    manifest = write_manifest(prompt=["a red circle"], id=["clip"])
    first = tmp_path / "first"
    assert run_job(config(manifest, first)).done == 1
    out = tmp_path / "out"
    (out / "videos").mkdir(parents=True)
    shutil.copy(first / "videos" / "clip.mp4", out / "videos" / "clip.mp4")  # the killed try's mp4, no record
    assert run_job(config(manifest, out)).done == 1
    rec = assert_consistent(out, ["clip"])["clip"]
    assert Path(rec["output_uri"]) == out / "videos" / "clip.mp4"
    assert sorted(p.name for p in (out / "videos").iterdir()) == ["clip.mp4"]


@pytest.mark.parametrize("where", ["local", "s3"])
def test_two_jobs_on_one_output_commit_each_id_once(ray_session, s3, write_manifest, tmp_path, where):
    ids = [f"c{i}" for i in range(4)]
    manifest = write_manifest(prompt=[f"a shape number {i}" for i in range(4)], id=ids)
    out, endpoint = (tmp_path / "out", None) if where == "local" else (f"s3://{s3.new_bucket()}/run", s3.endpoint)
    summaries: list = []

    def job() -> None:
        summaries.append(run_job(config(manifest, out, s3_endpoint_url=endpoint)))

    jobs = [threading.Thread(target=job) for _ in range(2)]
    for thread in jobs:
        thread.start()
    for thread in jobs:
        thread.join(timeout=600)
    assert len(summaries) == 2, "a job did not end"
    assert sum(s.done for s in summaries) == 4 and all(s.failed == 0 for s in summaries)
    by_id = assert_consistent(out, ids, endpoint)
    # Every mp4 in the output is named by its id's record: a writer that lost the race removed its own.
    storage = open_storage(str(out), s3_endpoint_url=endpoint)
    assert set(storage.list("videos/")) == {r["output_uri"][len(storage.uri) + 1 :] for r in by_id.values()}


def test_a_row_that_drifted_from_its_committed_video_is_reported(ray_session, write_manifest, tmp_path):
    out = tmp_path / "out"
    first = write_manifest("a.parquet", prompt=["a red circle", "a green square"], id=["x", "y"], seed=[1, 2])
    assert run_job(config(first, out)).done == 2
    before = assert_consistent(out, ["x", "y"])["x"]
    # The same id now asks for another prompt: not skipped as done, not generated over the record.
    second = write_manifest("b.parquet", prompt=["a blue circle", "a green square"], id=["x", "y"], seed=[1, 2])
    plan = dry_run(config(second, out))
    assert (plan.rejected, plan.committed, plan.pending) == (1, 1, 0)
    assert plan.rejected_by_reason == {"id: already committed with other parameters": 1}
    assert "prompt: 'a red circle' -> 'a blue circle'" in plan.rejected_examples[next(iter(plan.rejected_examples))][0]
    summary = run_job(config(second, out))
    assert (summary.rejected, summary.skipped, summary.done) == (1, 1, 0) and not summary.ok
    assert assert_consistent(out, ["x", "y"])["x"]["sha256"] == before["sha256"]
    # --force into an output of another configuration says so in run.json.
    run_job(config(second, out, fps=12), force=True)
    run = json.loads((out / "run.json").read_text())
    assert run["forced_over"]["defaults"]["fps"] == 8 and run["identity"]["defaults"]["fps"] == 12


def test_a_store_that_cannot_create_exclusively_is_refused(s3, flaky_s3, write_manifest, tmp_path, monkeypatch):
    manifest = write_manifest(prompt=["one"])
    flaky_s3.ignore_conditions = True  # an S3 look-alike that ignores If-None-Match
    bucket = s3.new_bucket()
    with pytest.raises(JobError, match="accepted a second exclusive write"):
        run_job(config(manifest, f"s3://{bucket}/run", s3_endpoint_url=flaky_s3.endpoint))
    assert not s3.client().list_objects_v2(Bucket=bucket).get("Contents")  # nothing left behind

    def no_hard_links(src, dst):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_hard_links)  # a mount without hard links (gcsfuse, s3fs)
    with pytest.raises(JobError, match="hard links"):
        run_job(config(manifest, tmp_path / "out"))


def test_jobs_of_two_configurations_starting_at_once_cannot_share_an_output(ray_session, write_manifest, tmp_path):
    manifest = write_manifest(prompt=["a red circle"], id=["one"])
    out = tmp_path / "out"
    ended: list = []

    def job(**kw) -> None:
        try:
            ended.append(run_job(config(manifest, out, **kw)))
        except JobError as exc:
            ended.append(exc)

    jobs = [threading.Thread(target=job), threading.Thread(target=job, kwargs={"fps": 12})]
    for thread in jobs:
        thread.start()
    for thread in jobs:
        thread.join(timeout=600)
    refused = [e for e in ended if isinstance(e, JobError)]
    assert len(ended) == 2 and len(refused) == 1 and "different configuration" in str(refused[0])
    bound = json.loads((out / "identity.json").read_text())
    assert assert_consistent(out, ["one"])["one"]["fps"] == bound["defaults"]["fps"]

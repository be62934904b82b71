"""The batch job with its manifest and outputs on S3 (a real HTTP endpoint: moto's server), and its faults.

Every id must end with exactly one video and one record, whatever dies: a replica mid-job, the driver
(then the job is resubmitted), or the S3 endpoint for a while.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hyca_batch.config import JobConfig
from hyca_batch.job import JobError, dry_run, run_job
from hyca_batch.pipeline.encode import decode_mp4
from hyca_batch.records import read_records
from hyca_batch.storage import StorageError, open_storage

STEPS = 3


def put_manifest(s3, bucket: str, key: str, prompts: list[str]) -> str:
    buf = io.BytesIO()
    pq.write_table(pa.table({"prompt": prompts}), buf)
    s3.client().put_object(Bucket=bucket, Key=key, Body=buf.getvalue())
    return f"s3://{bucket}/{key}"


def config(manifests: list[str], out: str, endpoint: str, **kw) -> JobConfig:
    return JobConfig.from_options(
        manifests=manifests,
        out=out,
        s3_endpoint_url=endpoint,
        model="tiny",
        progress=False,
        num_inference_steps=STEPS,
        **kw,
    )


def objects(s3, bucket: str, prefix: str) -> dict[str, dict]:
    pages = s3.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return {o["Key"][len(prefix) :]: o for page in pages for o in page.get("Contents", [])}


def assert_complete(s3, bucket: str, prefix: str, n: int) -> list[dict]:
    """Exactly one mp4 and one record per id, and every mp4 decodes to the record's frames."""
    store = open_storage(f"s3://{bucket}/{prefix}", s3_endpoint_url=s3.endpoint)
    records = read_records(store).to_pylist()
    keys = objects(s3, bucket, f"{prefix}/")
    ids = [r["id"] for r in records]
    assert len(ids) == len(set(ids)) == n
    assert sorted(k for k in keys if k.startswith("videos/")) == sorted(f"videos/{i}.mp4" for i in ids)
    for rec in records:
        assert rec["output_uri"] == f"s3://{bucket}/{prefix}/videos/{rec['id']}.mp4"
        video = decode_mp4(store.read_bytes(f"videos/{rec['id']}.mp4"))
        assert video.frames.shape[0] == rec["num_frames"]
    return records


BAD_ROWS = {  # id -> (prompt, seed, height, the field its error names)
    "non-utf8": (b"\xff\xfe a circle", 1.0, None, "prompt"),
    "empty": (b"", 1.0, None, "prompt"),
    "null": (None, 1.0, None, "prompt"),
    "huge": (b"x" * 5000, 1.0, None, "prompt"),
    "negative-seed": (b"a circle", -1.0, None, "seed"),
    "fractional-seed": (b"a circle", 1.5, None, "seed"),
    "bad-size": (b"a circle", 1.0, 72, "height"),
    "dup": (b"one prompt", 1.0, None, "id"),
}


def put_bad_rows(s3, bucket: str, key: str) -> None:
    """The bad-input matrix in one file (binary prompts, so one can be non-UTF-8), plus a conflicting duplicate."""
    ids = [*BAD_ROWS, "dup"]
    rows = [*BAD_ROWS.values(), (b"another prompt", 1.0, None, "id")]
    table = pa.table(
        {
            "id": ids,
            "prompt": pa.array([r[0] for r in rows], type=pa.binary()),
            "seed": pa.array([r[1] for r in rows], type=pa.float64()),
            "height": pa.array([r[2] for r in rows], type=pa.int64()),
        }
    )
    buf = io.BytesIO()
    pq.write_table(table, buf)
    s3.client().put_object(Bucket=bucket, Key=key, Body=buf.getvalue())


def test_manifests_and_outputs_on_s3_resume_and_progress(s3, ray_session):
    bucket = s3.new_bucket()
    put_manifest(s3, bucket, "manifests/part-0.parquet", ["a red circle moving left", "a blue square"])
    put_manifest(s3, bucket, "manifests/part-1.parquet", ["a green triangle moving up"])
    put_bad_rows(s3, bucket, "manifests/part-2.parquet")
    out = f"s3://{bucket}/runs/one"
    summary = run_job(config([f"s3://{bucket}/manifests/part-*.parquet"], out, s3.endpoint))
    # Every bad row has its error record naming file, row and field; the good rows all finish.
    assert (summary.done, summary.failed, summary.rejected) == (3, 0, len(BAD_ROWS) + 1)  # rows: two claim "dup"
    store = open_storage(out, s3_endpoint_url=s3.endpoint)
    for vid, (*_, fieldname) in BAD_ROWS.items():
        error = json.loads(store.read_bytes(f"errors/{vid}.json"))
        assert error["status"] == "rejected" and error["source_file"].endswith("/manifests/part-2.parquet")
        assert any(p["field"] == fieldname for p in error["problems"]), (vid, error["problems"])
    records = assert_complete(s3, bucket, "runs/one", 3)
    assert {r["source_file"] for r in records} == {
        f"s3://{bucket}/manifests/part-0.parquet",
        f"s3://{bucket}/manifests/part-1.parquet",
    }
    progress = json.loads(store.read_bytes("progress.json"))
    assert progress["status"] == "finished" and progress["done"] == 3 and progress["to_generate"] == 3
    assert json.loads(store.read_bytes("run.json"))["status"] == "finished"

    # Resubmitted (a "directory" of manifests this time): nothing generated again, nothing rewritten.
    before = {
        k: o["ETag"] for k, o in objects(s3, bucket, "runs/one/").items() if k.startswith(("videos/", "records/"))
    }
    again = run_job(config([f"s3://{bucket}/manifests"], out, s3.endpoint))
    assert (again.done, again.skipped, again.rejected) == (0, 3, len(BAD_ROWS) + 1)
    after = {k: o["ETag"] for k, o in objects(s3, bucket, "runs/one/").items() if k.startswith(("videos/", "records/"))}
    assert after == before
    with pytest.raises(JobError, match="different configuration"):
        run_job(config([f"s3://{bucket}/manifests"], out, s3.endpoint, fps=12))


def test_a_missing_bucket_or_manifest_fails_before_any_model_work(s3, ray_session, write_manifest):
    manifest = write_manifest(prompt=["one"])
    with pytest.raises(StorageError, match="bucket 'no-such-bucket-1' does not exist"):
        run_job(config([manifest], "s3://no-such-bucket-1/run", s3.endpoint))
    bucket = s3.new_bucket()
    with pytest.raises(Exception, match=r"s3://.*/nothing/here\.parquet: no such object"):
        run_job(config([f"s3://{bucket}/nothing/here.parquet"], f"s3://{bucket}/run", s3.endpoint))
    with pytest.raises(Exception, match="no-such-bucket-2.*does not exist"):
        run_job(config(["s3://no-such-bucket-2/m.parquet"], f"s3://{bucket}/run", s3.endpoint))
    s3.client().put_object(Bucket=bucket, Key="broken.parquet", Body=b"PAR1 this is not parquet")
    with pytest.raises(Exception, match=r"s3://.*/broken\.parquet: not a readable Parquet file"):
        run_job(config([f"s3://{bucket}/broken.parquet"], f"s3://{bucket}/run", s3.endpoint))
    assert objects(s3, bucket, "run/") == {}


def test_the_endpoint_failing_for_a_while_loses_nothing(s3, flaky_s3, ray_session):
    bucket = s3.new_bucket()
    manifest = put_manifest(s3, bucket, "m.parquet", [f"a shape number {i}" for i in range(3)])
    flaky_s3.fail_for(4.0, after="/videos/")  # from the first video upload on, every request gets a 503
    summary = run_job(config([manifest], f"s3://{bucket}/run", flaky_s3.endpoint))
    assert flaky_s3.failed > 0, "the outage never happened"
    assert summary.done == 3 and summary.failed == 0
    assert_complete(s3, bucket, "run", 3)


def _replica_pids() -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "cmdline").read_bytes().startswith(b"ray::Replica"):
                    pids.append(int(entry.name))
            except OSError:
                pass
    return pids


def test_a_replica_killed_mid_job_loses_and_duplicates_nothing(s3, ray_session):
    bucket, n = s3.new_bucket(), 6
    manifest = put_manifest(s3, bucket, "m.parquet", [f"a shape number {i} moving left" for i in range(n)])
    killed: list[int] = []

    def kill_a_replica_after_the_first_record() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not killed:
            if any(k.startswith("records/") for k in objects(s3, bucket, "run/")):
                for pid in _replica_pids():
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
            time.sleep(0.2)

    import threading

    killer = threading.Thread(target=kill_a_replica_after_the_first_record, daemon=True)
    killer.start()
    summary = run_job(config([manifest], f"s3://{bucket}/run", s3.endpoint))
    killer.join()
    assert killed, "no replica was killed"
    assert summary.failed == 0 and summary.done + summary.skipped == n
    assert_complete(s3, bucket, "run", n)


def test_the_driver_killed_and_the_job_resubmitted_resumes(s3, ray_session):
    bucket, n = s3.new_bucket(), 8
    manifest = put_manifest(s3, bucket, "m.parquet", [f"a shape number {i} moving left" for i in range(n)])
    out = f"s3://{bucket}/run"
    address = ray_session.get_runtime_context().gcs_address
    cmd = [
        sys.executable,
        "-m",
        "hyca_batch.cli",
        "run",
        manifest,
        "--out",
        out,
        "--s3-endpoint-url",
        s3.endpoint,
        "--address",
        address,
        "--steps",
        str(STEPS),
        "--no-progress",
    ]
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and sum(k.startswith("records/") for k in objects(s3, bucket, "run/")) < 2:
        assert proc.poll() is None, proc.stderr.read().decode()
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    # The dead driver's replicas go with it; wait until nothing new is committed.
    seen, quiet = None, time.monotonic()
    while time.monotonic() - quiet < 5:
        now = sorted(k for k in objects(s3, bucket, "run/") if k.startswith("records/"))
        if now != seen:
            seen, quiet = now, time.monotonic()
        time.sleep(0.25)
    before = {k: o["LastModified"] for k, o in objects(s3, bucket, "run/").items() if k.startswith("records/")}
    assert 2 <= len(before) < n, "the kill should land mid-job"

    # A dry run says what the resubmitted job then does, and writes nothing.
    listing = objects(s3, bucket, "run/")
    planned = dry_run(config([manifest], out, s3.endpoint))
    assert objects(s3, bucket, "run/").keys() == listing.keys()
    assert (planned.rows, planned.committed, planned.pending) == (n, len(before), n - len(before))

    summary = run_job(config([manifest], out, s3.endpoint))
    assert summary.skipped == planned.committed and summary.done == planned.pending and summary.failed == 0
    replanned = dry_run(config([manifest], out, s3.endpoint))
    assert (replanned.committed, replanned.pending) == (n, 0)
    # The snapshot: one part (the killed run's records read from their files once), no staging left over.
    assert [k[:5] for k in objects(s3, bucket, "run/records.parquet/")] == ["part-"]
    after = {k: o["LastModified"] for k, o in objects(s3, bucket, "run/").items() if k.startswith("records/")}
    assert all(after[k] == t for k, t in before.items())  # nothing committed was generated again
    records = assert_complete(s3, bucket, "run", n)
    assert len({r["run_id"] for r in records}) == 2

    # The cost report reads both invocations from S3 and charges the killed one up to its last heartbeat.
    from hyca_batch.report import build_report

    report = build_report([out], f"s3://{bucket}/report", s3_endpoint_url=s3.endpoint).runs[0]
    killed, resumed = report.invocations
    assert killed.doc["status"] == "running" and resumed.doc["status"] == "finished"
    assert killed.bill_usd > 0 and resumed.bill_usd > 0 and killed.ended_at <= resumed.started_at
    assert report.summary["videos"] == n
    assert report.summary["cost_per_video_usd"] * n == pytest.approx(killed.bill_usd + resumed.bill_usd)
    assert {"report.html", "summary.csv", "summary.parquet"} <= set(objects(s3, bucket, "report/"))

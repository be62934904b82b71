"""End to end as a user runs it: a Ray head on 127.0.0.1 with token authentication, ``ray job submit``
of ``jobs/generate.py`` with the README's command line, a manifest and outputs in S3 (moto's server)."""

from __future__ import annotations

import io
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from hyca_batch.pipeline.encode import decode_mp4
from hyca_batch.records import read_records
from hyca_batch.storage import open_storage

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_dashboard(port: int, head: subprocess.Popen, limit_s: float = 120) -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        assert head.poll() is None, "ray start --head exited"
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.5)
    raise AssertionError("the Ray dashboard (job server) did not come up")


def test_ray_job_submit_generates_into_s3(s3, tmp_path):
    bucket = s3.new_bucket()
    buf = io.BytesIO()
    pq.write_table(pa.table({"prompt": ["a red circle moving left", "a green square moving up"]}), buf)
    s3.client().put_object(Bucket=bucket, Key="manifests/m.parquet", Body=buf.getvalue())

    dashboard = free_port()
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",  # `python` in the entrypoint is this venv's, as in an image
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(16),  # the head and every client must present it
        "RAY_ADDRESS": "",
    }
    head = subprocess.Popen(
        [
            str(BIN / "ray"),
            "start",
            "--head",
            "--block",
            "--node-ip-address=127.0.0.1",
            f"--port={free_port()}",
            "--include-dashboard=true",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dashboard}",
            "--num-cpus=2",
            f"--object-store-memory={96 * 1024 * 1024}",
            "--disable-usage-stats",
        ],
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    address = f"http://127.0.0.1:{dashboard}"
    job_id = f"hyca-test-{secrets.token_hex(4)}"
    try:
        wait_for_dashboard(dashboard, head)
        runtime_env = {
            "env_vars": {k: os.environ[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
        }
        submit = subprocess.run(
            [
                str(BIN / "ray"),
                "job",
                "submit",
                "--address",
                address,
                "--no-wait",
                "--submission-id",
                job_id,
                "--working-dir",
                ".",
                "--runtime-env-json",
                json.dumps(runtime_env),
                "--",
                "python",
                "jobs/generate.py",
                f"s3://{bucket}/manifests/m.parquet",
                "--out",
                f"s3://{bucket}/run",
                "--s3-endpoint-url",
                s3.endpoint,
                "--steps",
                "3",
            ],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert submit.returncode == 0, submit.stdout + submit.stderr
        status, deadline = "timed out", time.monotonic() + 240
        while time.monotonic() < deadline:
            query = subprocess.run(
                [str(BIN / "ray"), "job", "status", "--address", address, job_id],
                env=env,
                capture_output=True,
                text=True,
            )
            said = (query.stdout + query.stderr).lower()  # the CLI logs "Job '<id>' succeeded" to stderr
            ended = [
                word
                for word in ("succeeded", "failed", "stopped")
                if f"{job_id}' {word}" in said or f"{job_id}' was {word}" in said
            ]
            if ended:
                status = ended[0]
                break
            time.sleep(2)
        logs = subprocess.run(
            [str(BIN / "ray"), "job", "logs", "--address", address, job_id], env=env, capture_output=True, text=True
        ).stdout
        assert status == "succeeded", f"job {job_id}: {status}\n{logs[-5000:]}"
        assert "done" in logs  # the job's summary table reached `ray job logs`
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)

    store = open_storage(f"s3://{bucket}/run", s3_endpoint_url=s3.endpoint)
    records = read_records(store).to_pylist()
    assert len(records) == 2 and {r["status"] for r in records} == {"done"}
    for rec in records:
        assert decode_mp4(store.read_bytes(f"videos/{rec['id']}.mp4")).frames.shape[0] == rec["num_frames"]
    assert json.loads(store.read_bytes("progress.json"))["status"] == "finished"

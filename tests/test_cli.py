"""The command line as a user runs it: exit codes, error messages, and the demo itself."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hyca_batch.pipeline.encode import decode_mp4

CLI = [sys.executable, "-m", "hyca_batch.cli"]


def run_cli(*args: str, env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*CLI, *args], capture_output=True, text=True, timeout=300, env={**os.environ, **(env or {})}, cwd=cwd
    )


def test_a_bad_manifest_file_stops_the_job_before_any_model_work(tmp_path):
    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"text": ["no prompt column"]}), bad)
    proc = run_cli("run", str(bad), "--out", str(tmp_path / "out"))
    assert proc.returncode == 2
    assert str(bad) in proc.stderr and "field 'prompt'" in proc.stderr
    assert not (tmp_path / "out").exists()  # nothing written, nothing loaded


def test_unknown_cache_mode_is_refused(tmp_path):
    proc = run_cli("run", "x.parquet", "--out", str(tmp_path / "out"), "--cache", "magic")
    assert proc.returncode != 0 and "magic" in proc.stderr


def test_an_unknown_model_is_a_clear_error(tmp_path):
    manifest = tmp_path / "m.parquet"
    pq.write_table(pa.table({"prompt": ["hi"]}), manifest)
    proc = run_cli("run", str(manifest), "--out", str(tmp_path / "out"), "--model", "no-such-model")
    assert proc.returncode == 2 and "no-such-model" in proc.stderr and "tiny" in proc.stderr


def test_demo_end_to_end(ray_session, tmp_path):
    # The README's demo, on the test module's Ray (RAY_ADDRESS), run twice: the second run resumes.
    env = {"RAY_ADDRESS": ray_session.get_runtime_context().gcs_address}
    first = run_cli("demo", "--out", "demo", env=env, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    videos = sorted((tmp_path / "demo" / "videos").glob("*.mp4"))
    records = sorted((tmp_path / "demo" / "records").glob("*.parquet"))
    assert len(videos) == 4 and len(records) == 4
    for video in videos:
        assert decode_mp4(video.read_bytes()).frames.shape[0] == 9
    assert "demo finished" in first.stderr
    # It ends with its cost report (tests/test_report.py checks the numbers).
    summary = pq.read_table(tmp_path / "demo" / "report" / "summary.parquet").to_pylist()
    assert summary[0]["videos"] == 4 and summary[0]["bill_usd"] > 0 and summary[0]["device"] == "cpu"
    assert (tmp_path / "demo" / "report" / "report.html").stat().st_size > 10_000
    # The demo runs the trained mini model: its videos show what their prompts say (the mp4s decoded back,
    # so this also covers the encoder). One of the four may miss (the learned-model test has the numbers).
    from hyca_batch.records import read_records
    from hyca_batch.storage import open_storage
    from hyca_batch.training import synthetic as S

    table = read_records(open_storage(str(tmp_path / "demo")))
    assert set(table.column("model").to_pylist()) == {"mini"}
    shown = 0
    for prompt, rid in zip(table.column("prompt").to_pylist(), table.column("id").to_pylist()):
        color, _, motion, _ = S.parse_prompt(prompt)
        m = S.measure_clip(decode_mp4((tmp_path / "demo" / "videos" / f"{rid}.mp4").read_bytes()).frames)
        shown += m.color == color and m.motion == motion
    assert shown >= 3, f"only {shown}/4 demo videos show their prompt"
    second = run_cli("demo", "--out", "demo", env=env, cwd=tmp_path)
    assert second.returncode == 0
    assert sorted((tmp_path / "demo" / "records").glob("*.parquet")) == records
    assert "│    4 │    0 │       4 │" in second.stderr  # rows, done, skipped

    # The dry run of a bigger manifest into the same output: its plan, priced at what the demo's videos cost.
    demo_manifest = pq.read_table(tmp_path / "demo" / "manifest.parquet")
    more = pa.table({"prompt": ["a red square moving up", "a blue circle", ""]})
    pq.write_table(pa.concat_tables([demo_manifest, more], promote_options="default"), tmp_path / "more.parquet")
    files = sorted(p for p in (tmp_path / "demo").rglob("*"))
    plan = run_cli(
        "run",
        "more.parquet",
        "--out",
        "demo",
        "--model",
        "mini",
        "--cache",
        "hyca",
        "--dry-run",
        "--plan-json",
        "plan.json",
        env=env,
        cwd=tmp_path,
    )
    assert plan.returncode == 0, plan.stderr
    assert sorted(p for p in (tmp_path / "demo").rglob("*")) == files  # nothing written
    doc = json.loads((tmp_path / "plan.json").read_text())
    assert (doc["rows"], doc["committed"], doc["pending"], doc["rejected"], doc["merged_duplicates"]) == (7, 4, 2, 1, 0)
    assert doc["rejected_by_reason"] == {"prompt: is empty": 1}
    assert "more.parquet: row 6: prompt: is empty" in doc["rejected_examples"]["prompt: is empty"][0]
    per_video = summary[0]["bill_usd"] / summary[0]["videos"]
    assert doc["estimate"]["cost_usd"] == pytest.approx(2 * per_video, rel=0.01)
    assert "to generate" in plan.stderr and "nothing was written" in plan.stderr


def test_jobs_entrypoint_takes_the_run_options(tmp_path):
    proc = subprocess.run(
        [sys.executable, "jobs/generate.py", "--help"],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
        timeout=120,
    )
    assert proc.returncode == 0 and "--replicas" in proc.stdout and "--out" in proc.stdout


def test_run_with_a_relative_model_directory_and_output(ray_session, tmp_path, write_manifest):
    from hyca_batch.models.tiny import save_tiny_pipeline
    from hyca_batch.records import read_records
    from hyca_batch.storage import open_storage

    save_tiny_pipeline(tmp_path / "mymodel")
    write_manifest("m.parquet", prompt=["a green square moving up", "a red circle moving left"])
    env = {"RAY_ADDRESS": ray_session.get_runtime_context().gcs_address, "HF_HUB_OFFLINE": "1"}
    proc = run_cli(
        "run", "m.parquet", "--out", "out", "--model", "mymodel", "--steps", "2", "--no-progress", env=env, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    records = read_records(open_storage(str(tmp_path / "out"))).to_pylist()
    assert len(records) == 2
    assert {r["model"] for r in records} == {str(tmp_path / "mymodel")}
    assert all(Path(r["output_uri"]).is_file() for r in records)


def test_a_dry_run_prints_the_plan_and_leaves_no_output(tmp_path):
    manifest = tmp_path / "m.parquet"
    pq.write_table(pa.table({"prompt": ["a red circle", "", "a red circle"], "id": ["x", None, "x"]}), manifest)
    proc = run_cli("run", str(manifest), "--out", str(tmp_path / "out"), "--dry-run", "--strict")
    assert proc.returncode == 1, proc.stderr  # --strict: a rejected row
    assert not (tmp_path / "out").exists()
    assert f"{manifest}: row 1: prompt: is empty" in proc.stderr and "1 x prompt: is empty" in proc.stderr
    assert "none yet" in proc.stderr  # no estimate for an output with no video
    proc = run_cli("run", str(manifest), "--out", str(tmp_path / "out"), "--plan-json", "p.json")
    assert proc.returncode == 2 and "--plan-json needs --dry-run" in proc.stderr

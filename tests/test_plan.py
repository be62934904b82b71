"""Planning at scale: a 200k-row manifest over three files, with bad rows of every kind, duplicates and an
output that already holds committed, failed and exhausted ids; the dry run's counts are exact and it writes
nothing; the rejections go out in one batch and are not rewritten by the next plan."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from hyca_batch.config import JobConfig
from hyca_batch.job import dry_run
from hyca_batch.job.plan import choose_pending, plan_job
from hyca_batch.manifest import default_id, read_manifest
from hyca_batch.models import resolve_model
from hyca_batch.records import committed_listing, failed_ids, parquet_bytes, write_error, write_record
from hyca_batch.storage import open_storage
from hyca_batch.storage.layout import record_key
from hyca_batch.types import GenerationDefaults

DEFAULTS = GenerationDefaults(height=64, width=64, num_frames=9, num_inference_steps=4, guidance_scale=6.0, fps=8)
SIZES = {"a.parquet": 100_000, "b.parquet": 80_000, "c.parquet": 20_000}
# (file, row) -> column overrides; each a bad row of one kind
BAD = {
    "prompt: is null": [("a.parquet", r) for r in (5, 6, 7)],
    "prompt: is empty": [("a.parquet", 10), ("b.parquet", 11)],
    "prompt: is too long": [("b.parquet", 12)],
    "height: must be a positive multiple of 16": [("a.parquet", r) for r in (20, 21, 22, 23)],
    "num_frames: must be 4k+1": [("c.parquet", 30)],
    "seed: must be between 0 and 2**63-1": [("a.parquet", 40), ("b.parquet", 40)],
    "seed: must be an integer": [("b.parquet", 41)],
    "id: does not match the id pattern": [("a.parquet", 50), ("c.parquet", 51)],
    "num_inference_steps: must be between 1 and 1000": [("c.parquet", 60)],
}
MERGED = 10  # c.parquet rows 100..109 repeat a.parquet rows 100..109 exactly
CONFLICTS = 2  # "dup-1" claimed by a.parquet row 200 and b.parquet row 200 with different prompts


def _manifests(directory) -> list[str]:
    paths = []
    for name, n in SIZES.items():
        rows = np.arange(n)
        prompt = pc.binary_join_element_wise(f"a shape from {name} number ", pa.array(rows).cast(pa.string()), "")
        columns = {
            "prompt": prompt.to_pylist(),
            "id": [None] * n,
            "seed": [None] * n,
            "height": pa.nulls(n, pa.int64()).to_pylist(),
            "num_frames": pa.nulls(n, pa.int64()).to_pylist(),
            "num_inference_steps": pa.nulls(n, pa.int64()).to_pylist(),
            "shard": rows % 7,
        }
        if name != "c.parquet":
            columns["score"] = rows / n  # c.parquet has none: carried as nulls
        for reason, places in BAD.items():
            for file, row in places:
                if file != name:
                    continue
                field = reason.split(":")[0]
                value = {
                    "prompt: is null": None,
                    "prompt: is empty": "   ",
                    "prompt: is too long": "x" * 5000,
                    "height: must be a positive multiple of 16": 60,
                    "num_frames: must be 4k+1": 8,
                    "seed: must be between 0 and 2**63-1": -3.0,
                    "seed: must be an integer": 2.5,
                    "id: does not match the id pattern": "bad\n",
                    "num_inference_steps: must be between 1 and 1000": 0,
                }[reason]
                columns[field][row] = value
        if name == "c.parquet":
            for row in range(100, 100 + MERGED):
                columns["prompt"][row] = f"a shape from a.parquet number {row}"
        if name in ("a.parquet", "b.parquet"):
            columns["id"][200] = "dup-1"
        table = pa.table({k: v if isinstance(v, pa.Array) else pa.array(v) for k, v in columns.items()})
        table = table.set_column(table.schema.get_field_index("id"), "id", table.column("id").cast(pa.string()))
        path = str(directory / name)
        pq.write_table(table, path)
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def manifests(tmp_path_factory):
    return _manifests(tmp_path_factory.mktemp("manifests"))


def _config(manifests, out) -> JobConfig:
    return JobConfig.from_options(
        manifests=manifests, out=str(out), model="mini", progress=False, num_inference_steps=4, max_attempts=3
    )


def test_a_200k_row_plan_counts_every_row(manifests, tmp_path):
    rows = sum(SIZES.values())
    rejected = sum(len(v) for v in BAD.values()) + CONFLICTS
    valid = rows - rejected - MERGED
    out = tmp_path / "out"

    counts = dry_run(_config(manifests, out))
    assert not out.exists()  # a dry run leaves nothing behind, not even the directory
    assert (counts.rows, counts.merged_duplicates, counts.rejected) == (rows, MERGED, rejected)
    assert (counts.committed, counts.exhausted, counts.pending) == (0, 0, valid)
    want = {reason: len(places) for reason, places in BAD.items()}
    assert counts.rejected_by_reason == {**want, "id: duplicate id with different parameters": CONFLICTS}
    example = counts.rejected_examples[next(r for r in counts.rejected_by_reason if r.startswith("height"))][0]
    assert example.startswith(manifests[0]) and "row 20: height: must be a positive multiple of 16, got 60" in example
    assert json.loads(json.dumps(counts.to_json()))["pending"] == valid

    # An output that already holds some of these ids: committed, failed once (retried), failed out.
    storage = open_storage(str(out))
    ids = read_manifest(manifests, DEFAULTS).requests.column("id").to_pylist()
    for i in ids[:50]:
        write_record(storage, {"id": i, "status": "done"}, pa.schema([]), {})
    for n, i in enumerate(ids[50:70]):
        write_error(storage, {"id": i, "status": "failed", "attempt": 3 if n < 10 else 1})
    before = sorted(storage.list())
    counts = dry_run(_config(manifests, out))
    assert sorted(storage.list()) == before
    assert (counts.committed, counts.exhausted, counts.retrying) == (50, 10, 10)
    assert counts.pending == valid - 60
    assert counts.rows == counts.merged_duplicates + counts.rejected + counts.committed + counts.exhausted + (
        counts.pending
    )

    # A real plan writes one error record per rejected id, and the next plan rewrites none of them.
    plan = plan_job(_config(manifests, out), run_id="r1")
    assert plan.pending.num_rows == counts.pending
    assert plan.pending.column("attempt").to_pylist().count(2) == 10  # the ten failed once try their second
    errors = {p.name: p.stat().st_mtime_ns for p in (out / "errors").iterdir()}
    assert len(errors) == 20 + rejected - 1  # the two rows claiming "dup-1" share one record
    plan_job(_config(manifests, out), run_id="r2")
    assert {p.name: p.stat().st_mtime_ns for p in (out / "errors").iterdir()} == errors
    doc = json.loads((out / "errors" / "dup-1.json").read_text())
    assert (
        doc["status"] == "rejected" and "a.parquet row 200" in doc["message"] and "b.parquet row 200" in doc["message"]
    )


def test_column_ids_are_the_ids_of_one_row(tmp_path):
    """The vectorized ids and seeds equal the one-row reference, for prompts that need JSON escaping."""
    prompts = ['say "hi"', "two\nlines", "tab\there", "back\\slash", "ünïcödé 🐱", "\x01ctl", "plain"]
    seeds = [None, 3, None, 2**40, None, 7, None]
    guidance = [None, 7.25, 1e-05, None, 6.0, None, 3.0]
    path = tmp_path / "m.parquet"
    pq.write_table(
        pa.table(
            {
                "prompt": prompts,
                "seed": pa.array(seeds, pa.int64()),
                "guidance_scale": pa.array(guidance, pa.float64()),
            }
        ),
        path,
    )
    rows = read_manifest([str(path)], DEFAULTS).requests.to_pylist()
    for prompt, seed, g, row in zip(prompts, seeds, guidance, rows):
        params = {
            "prompt": prompt,
            "seed": seed,
            "height": 64,
            "width": 64,
            "num_frames": 9,
            "num_inference_steps": 4,
            "guidance_scale": 6.0 if g is None else g,
            "fps": 8,
        }
        assert row["id"] == default_id(params, seed is not None), prompt
    assert os.path.getsize(path) > 0


def test_the_plan_scale_benchmark_runs_and_checks_its_counts(tmp_path):
    """A smoke run of benchmarks/plan_scale.py: small sizes, a resume on disk and on the local S3 endpoint. The
    script checks every count against what it built (a wrong one exits non-zero)."""
    out = tmp_path / "plan_scale.json"
    proc = subprocess.run(
        [sys.executable, "benchmarks/plan_scale.py", "--sizes", "2000,4000", "--committed", "300", "--json", str(out)],
        cwd=Path(__file__).resolve().parent.parent,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    result = json.loads(out.read_text())
    assert [p["rows"] for p in result["plans"]] == [2000, 4000]
    assert result["ratio"]["rows"] == 2 and result["ratio"]["seconds"] > 0
    assert [(r["storage"], r["committed"]) for r in result["resume"]] == [("local", 300), ("s3", 300)]
    assert "4000 / 2000 rows" in proc.stdout


def test_a_changed_image_on_rerun_is_drift_not_skipped(tmp_path, write_image):
    """A re-run after an image file changed: under an explicit id the committed video no longer matches the row
    (drift, reported and not run), under a derived id the row is a new video; text rows stay committed, also
    against records written before records had image fields."""
    i2v = dataclasses.replace(resolve_model("tiny"), i2v_target_size=64)
    write_image("imgs/a.png")
    write_image("imgs/b.png", color=(0, 90, 0))
    path = str(tmp_path / "m.parquet")
    pq.write_table(
        pa.table(
            {
                "prompt": ["explicit", "derived", "text", "old text"],
                "id": ["clip-1", None, "t-1", "t-2"],
                "image": ["imgs/a.png", "imgs/b.png", None, None],
            }
        ),
        path,
    )

    def plan():
        manifest = read_manifest([path], DEFAULTS, image_video_size=i2v.image_video_size, model_name=i2v.name)
        pending, counts = choose_pending(storage, manifest, committed_listing(storage), failed_ids(storage), 3)
        return manifest, pending, counts

    storage = open_storage(str(tmp_path / "out"))
    first, _, _ = plan()
    for row in first.requests.to_pylist():
        record = {k: v for k, v in row.items() if k != "image_bytes"} | {"status": "done"}
        if row["id"] == "t-2":  # a record of an earlier version: no image columns at all
            table = pa.table({k: [v] for k, v in record.items() if not k.startswith("image")})
            storage.put_bytes(record_key(row["id"]), parquet_bytes(table))
        else:
            write_record(storage, record, pa.schema([]), {})
    manifest, pending, counts = plan()
    assert (counts.committed, counts.pending, counts.rejected) == (4, 0, 0)

    write_image("imgs/a.png", color=(1, 2, 3))
    write_image("imgs/b.png", color=(4, 5, 6))
    manifest, pending, counts = plan()
    assert (counts.committed, counts.rejected) == (2, 1)
    assert pending.column("prompt").to_pylist() == ["derived"]  # a new image, a new id: a new video
    (drift,) = manifest.rejected
    assert (drift.row, drift.field, drift.key, drift.image) == (0, "id", "clip-1", str(tmp_path / "imgs" / "a.png"))
    assert "already committed with other parameters" in drift.message and "image_sha256: " in drift.message
    assert counts.rejected_by_reason == {"id: already committed with other parameters": 1}

    # A text video committed under an id that now names an image has drifted too.
    pq.write_table(pa.table({"prompt": ["text"], "id": ["t-1"], "image": ["imgs/a.png"]}), path)
    manifest, pending, counts = plan()
    assert (counts.rejected, counts.pending) == (1, 0) and "image_sha256: None -> " in manifest.rejected[0].message

"""The batch job end to end on an embedded Ray: real mp4s, complete records, errors, retries, resume."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import pyarrow as pa
import pytest

from hyca_batch.config import JobConfig
from hyca_batch.job import JobError, run_job
from hyca_batch.pipeline.encode import decode_mp4
from hyca_batch.records import OPTIONAL_FIELDS, RECORD_SCHEMA, read_records
from hyca_batch.storage import open_storage

STEPS = 3


def config(manifest: str, out: Path, **kw) -> JobConfig:
    return JobConfig.from_options(
        manifests=[manifest], out=str(out), model="tiny", progress=False, num_inference_steps=STEPS, **kw
    )


def test_end_to_end_videos_records_and_errors(ray_session, write_manifest, tmp_path):
    manifest = write_manifest(
        prompt=["a red circle moving left", "a green square moving up", "a blue triangle", "bad size"],
        height=pa.array([None, 80, None, 72], type=pa.int64()),
        tag=["a", "b", "c", "d"],
    )
    out = tmp_path / "out"
    summary = run_job(config(manifest, out))
    assert (summary.done, summary.rejected, summary.failed, summary.skipped) == (3, 1, 0, 0)

    records = read_records(open_storage(str(out))).to_pylist()
    assert len(records) == 3
    for rec in records:
        for name in RECORD_SCHEMA.names:
            assert (rec[name] is None) == (name in OPTIONAL_FIELDS), name
        data = Path(rec["output_uri"]).read_bytes()
        assert rec["bytes"] == len(data) and rec["sha256"] == hashlib.sha256(data).hexdigest()
        video = decode_mp4(data)
        assert video.frames.shape == (rec["num_frames"], rec["height"], rec["width"], 3)
        assert round(video.fps) == rec["fps"] and video.codec == "h264" and video.pix_fmt == "yuv420p"
        assert video.frames.std() > 0  # not a blank clip
        assert rec["status"] == "done" and rec["attempt"] == 1 and rec["model"] == "tiny"
        assert rec["transformer_passes_full"] == STEPS and rec["transformer_passes_skipped"] == 0
        assert rec["device_type"] == "cpu" and rec["cache_mode"] == "none"
        assert rec["full_pass_s"] > 0 and 0.5 < rec["speedup_estimate"] < 1.5  # uncached: about 1 by definition
        assert min(rec["text_encode_s"], rec["denoise_s"], rec["decode_s"], rec["encode_s"], rec["write_s"]) > 0
        assert rec["total_s"] >= rec["denoise_s"] + rec["decode_s"]
        assert rec["finished_at"] >= rec["started_at"]
    assert sorted(r["tag"] for r in records) == ["a", "b", "c"]  # manifest metadata carried
    assert {r["height"] for r in records} == {64, 80}

    errors = list((out / "errors").glob("*.json"))
    assert len(errors) == 1
    err = json.loads(errors[0].read_text())
    assert err["status"] == "rejected" and err["source_row"] == 3 and "height" in err["message"]

    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "finished" and run["counts"]["done"] == 3 and run["versions"]["torch"]

    # A second run into the same output generates nothing and rewrites nothing.
    mtimes = {p: p.stat().st_mtime_ns for p in (out / "records").iterdir()}
    again = run_job(config(manifest, out))
    assert (again.done, again.skipped, again.rejected) == (0, 3, 1)
    assert {p: p.stat().st_mtime_ns for p in (out / "records").iterdir()} == mtimes
    assert len(list((out / "runs").glob("*.json"))) == 2


def test_rerun_with_a_different_configuration_is_refused(ray_session, write_manifest, tmp_path):
    manifest = write_manifest(prompt=["one"])
    out = tmp_path / "out"
    run_job(config(manifest, out))
    with pytest.raises(JobError, match="different configuration"):
        run_job(config(manifest, out, fps=12))


def test_replicas_that_cannot_load_the_model_stop_the_job_with_the_cause(ray_session, write_manifest, tmp_path):
    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "model_index.json").write_text('{"_class_name": "HunyuanVideoPipeline"}')
    manifest = write_manifest(prompt=["one"])
    out = tmp_path / "out"
    with pytest.raises(JobError, match="broken-model"):
        run_job(JobConfig.from_options(manifests=[manifest], out=str(out), model=str(broken), progress=False))
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "failed" and "broken-model" in run["error"]


def test_hyca_job_calibrates_once_records_the_cache_and_baselines(ray_session, write_manifest, tmp_path):
    manifest = write_manifest(prompt=["a red circle moving left", "a green square moving up", "a blue circle"])
    out = tmp_path / "out"
    cfg = dataclasses.replace(
        config(manifest, out, cache="hyca", interval=3, clusters=3, baseline_every=2),
        generation={"num_inference_steps": 9},
    )
    summary = run_job(cfg)
    assert summary.done == 3 and summary.failed == 0
    map_file = out / "solver_map.safetensors"
    assert map_file.is_file() and (out / "solver_map.json").is_file()
    run = json.loads((out / "run.json").read_text())
    records = sorted(read_records(open_storage(str(out))).to_pylist(), key=lambda r: r["source_row"])
    for rec in records:
        assert rec["cache_mode"] == "hyca" and rec["cache_interval"] == 3
        assert (rec["transformer_passes_full"], rec["transformer_passes_skipped"]) == (3, 6)
        assert rec["solver_map_id"] == run["solver_map"]["id"]
        assert rec["speedup_estimate"] > 1.0  # six of nine passes forecast
        # The map was fitted for these nine steps: its schedule (calibrated by default) and per-step forecasts ran.
        assert (rec["cache_schedule"], rec["cache_forecasts"]) == (run["solver_map"]["schedule"], "per-step learned")
    smap_json = json.loads((out / "solver_map.json").read_text())
    assert smap_json["metadata"]["folds"] == 3 and smap_json["metadata"]["prompts"] == [
        "a red circle moving left",
        "a green square moving up",
        "a blue circle",
    ]  # calibrated on the first three pending prompts
    assert len(smap_json["full_steps"]) == 3 and smap_json["metadata"]["forecasts"] == "learned"
    assert (summary.baselines, summary.mean_psnr > 0, summary.mean_measured_speedup > 0) == (2, True, True)
    with_baseline = [r["source_row"] for r in records if r["psnr"] is not None]
    assert with_baseline == [0, 2]  # every 2nd video by manifest position
    for rec in (records[0], records[2]):
        assert rec["baseline_denoise_s"] > 0 and rec["measured_speedup"] > 0
        assert 0 < rec["ssim"] <= 1 and rec["psnr"] > 0 and rec["latent_rel_l2"] > 0

    # A resumed run with one more prompt reuses the stored map instead of calibrating again.
    before = map_file.read_bytes()
    manifest2 = write_manifest(
        "more.parquet",
        prompt=["a red circle moving left", "a green square moving up", "a blue circle", "a yellow triangle"],
    )
    cfg2 = dataclasses.replace(cfg, manifests=[manifest2])
    again = run_job(cfg2)
    assert (again.done, again.skipped) == (1, 3)
    assert map_file.read_bytes() == before
    new = [r for r in read_records(open_storage(str(out))).to_pylist() if r["prompt"] == "a yellow triangle"]
    assert new[0]["solver_map_id"] == run["solver_map"]["id"]

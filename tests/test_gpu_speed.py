"""benchmarks/gpu_speed.py on CPU with --scaled-down: the code path the GPU run takes, on the tiny config.

No timing is asserted (a shared CPU makes any threshold flaky). What is checked: the real configuration's
parameter count (on the meta device), the pass counts against the cache schedule, that skipped passes run
no attention, that the cache holds exactly the history it was predicted to, the derived-loop (prefix) path,
out-of-memory handling under a memory cap, and that each run appends its own dated table.
"""

from __future__ import annotations

import importlib.util
import json
import math
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SPEC = importlib.util.spec_from_file_location("gpu_speed", ROOT / "benchmarks" / "gpu_speed.py")
gpu_speed = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(gpu_speed)

GIB = 1024**3
SMALL, LARGE = [64, 64, 9], [96, 96, 17]


def test_real_config_parameter_count_on_meta():
    model = gpu_speed.meta_transformer()
    assert next(model.parameters()).device.type == "meta"
    count = gpu_speed.parameter_count(model)
    assert 12.8e9 < count < 13.0e9, count  # HunyuanVideo's 13B transformer (12.82 B)
    cfg = model.config
    assert (cfg.num_layers, cfg.num_single_layers, cfg.num_attention_heads * cfg.attention_head_dim) == (20, 40, 3072)
    # 720p x 129 frames is the 119k-token video the README talks about
    assert gpu_speed.video_tokens((720, 1280, 129), gpu_speed.REAL_TRANSFORMER) == 33 * 45 * 80


def test_prefix_covers_every_history_depth():
    # taylorseer order 2 at N=5 keeps 3 slots: full 0, 5, 10; step 11 is the first forecast from 3 points, 12 a second
    assert gpu_speed.prefix_steps(50, "taylorseer", 5, 3) == 13
    assert gpu_speed.prefix_steps(50, "none", 1, 0) == 2
    assert gpu_speed.prefix_steps(50, "hyca", 6, 1) == 3
    full = gpu_speed.schedule(50, "hyca", 6)
    assert sum(full) == 9 and gpu_speed.depths(full, 4)[19] == 4


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gpu_speed")
    md = tmp / "RESULTS.md"
    first = gpu_speed.main(["--scaled-down", "--json", str(tmp / "a.json"), "--results-md", str(md), "--threads", "1"])
    # Second run: a memory cap between "weights" and "weights + taylorseer's history at the larger size", the
    # schedule's prefix only (the loop derived, as on a GPU), and the out-of-memory exception really raised.
    row = next(r for r in first["rows"] if r["size"] == LARGE and r["mode"] == "taylorseer")
    cap = first["model"]["transformer_bytes"] + row["cache_bytes"] // 2
    second = gpu_speed.main(
        [
            "--scaled-down",
            "--json",
            str(tmp / "b.json"),
            "--results-md",
            str(md),
            "--threads",
            "1",
            "--loop",
            "prefix",
            "--max-memory-gb",
            repr(cap / GIB),
            "--no-predict-oom",
        ]
    )
    return first, second, md, tmp


def test_every_mode_runs_the_schedule_and_forecasts_without_attention(runs):
    first, _, _, tmp = runs
    assert json.loads((tmp / "a.json").read_text())["rows"] == json.loads(json.dumps(first["rows"]))
    assert first["environment"]["device_type"] == "cpu" and first["environment"]["torch"]
    assert first["attention"]["sdpa_kernel"] != "unknown" and first["attention"]["mask"].startswith("bool")
    rows = {(tuple(r["size"]), r["mode"]): r for r in first["rows"]}
    assert set(rows) == {(tuple(s), m) for s in (SMALL, LARGE) for m in ("none", "taylorseer", "hyca")}
    expected_full = {"none": 50, "taylorseer": 10, "hyca": 9}  # steps 0, 5, ..., 45 and 0, 6, ..., 48
    for (_size, mode), r in rows.items():
        assert r["status"] == "ok" and r["finite"] and r["loop"] == "measured" and r["measured_steps"] == 50
        assert (r["full_passes"], r["skipped_passes"]) == (expected_full[mode], 50 - expected_full[mode])
        assert (r["schedule_full_passes"], r["schedule_skipped_passes"]) == (r["full_passes"], r["skipped_passes"])
        assert r["full_step_s"] > 0 and r["loop_s_measured"] > 0 and r["loop_s_derived"] > 0
        assert len(r["full_step_s_all"]) == r["full_passes"]
        assert r["attention_calls_per_full_pass"] == 4  # 2 double + 2 single blocks
        assert r["attention_calls_in_skipped_passes"] == 0
        assert r["speedup_derived"] > 0 and r["speedup_measured"] > 0
        if mode == "none":
            assert r["cache_bytes"] == 0 and r["skipped_step_s"] is None
            continue
        assert r["skipped_step_s"] > 0 and 0 < r["forecast_share"] < 1
        # the history the cache really held is what the memory prediction says
        assert r["cache_bytes"] == r["predicted_cache_bytes"] > 0
        assert r["history_slots"] == (3 if mode == "taylorseer" else max(r["history_slots"], 1))
    assert rows[(tuple(LARGE), "taylorseer")]["cache_bytes"] > rows[(tuple(SMALL), "taylorseer")]["cache_bytes"]
    assert first["calibration"]["block"]["solver_map_id"] == rows[(tuple(SMALL), "hyca")]["solver_map_id"]
    assert Path(first["calibration"]["block"]["saved_to"]).is_file()
    assert [v["status"] for v in first["vae"]] == ["ok", "ok"]
    assert first["vae"][1]["output_shape"] == [1, 3, 17, 96, 96] and first["vae"][1]["decode_s"] > 0


def test_prefix_loop_and_out_of_memory(runs):
    first, second, _, _ = runs
    rows = {(tuple(r["size"]), r["mode"], r["granularity"]): r for r in second["rows"]}
    ts = rows[(tuple(SMALL), "taylorseer", "block")]
    assert ts["status"] == "ok" and ts["loop"] == "derived" and ts["measured_steps"] == 13
    assert (ts["full_passes"], ts["skipped_passes"]) == (3, 10)  # steps 0, 5, 10 full
    assert (ts["schedule_full_passes"], ts["schedule_skipped_passes"]) == (10, 40)
    assert set(ts["skipped_by_depth"]) == {"1", "2", "3"}
    assert ts["attention_calls_in_skipped_passes"] == 0
    assert math.isfinite(ts["loop_s_derived"]) and ts["speedup_derived"] > 0 and ts["speedup_measured"] is None
    none = rows[(tuple(LARGE), "none", None)]
    assert none["status"] == "ok" and none["measured_steps"] == 2
    oom = rows[(tuple(LARGE), "taylorseer", "block")]
    assert oom["status"] == "oom" and "simulated" in oom["error"] and oom["speedup_derived"] is None
    assert oom["predicted_cache_bytes"] > oom["cache_bytes"] > 0  # it failed on the way to its full history
    stack = rows[(tuple(LARGE), "taylorseer", "stack")]  # the low-memory granularity, run in its place
    assert stack["status"] == "ok" and stack["cache_bytes"] < oom["cache_bytes"]
    assert second["vae"][1]["status"] == "oom"


def test_each_run_appends_a_dated_table(runs):
    _, _, md, _ = runs
    text = md.read_text()
    assert text.startswith("# GPU benchmark results")
    headings = re.findall(r"^## (\d{4}-\d\d-\d\dT[\d:]+\+00:00) - (.+)$", text, flags=re.M)
    assert len(headings) == 2 and all("cpu" in device for _, device in headings)
    assert text.count("| size | cache | N |") == 2
    assert re.search(r"^\| 96x96x17 \| taylorseer \| 5 \| block \| oom \|", text, flags=re.M)
    assert re.search(r"^\| 64x64x9 \| hyca \| 6 \| block \| ok \|.*\| 9 / 41 \|", text, flags=re.M)


def test_hunyuanvideo15_real_config_on_meta():
    model = gpu_speed.meta_transformer(family="hunyuanvideo15")
    assert type(model).__name__ == "HunyuanVideo15Transformer3DModel"
    assert 8.3e9 < gpu_speed.parameter_count(model) < 8.4e9  # HunyuanVideo 1.5's 8.3B transformer
    assert model.config.num_layers == 54 and not hasattr(model, "single_transformer_blocks")
    # 16x spatial VAE, patch 1: 720p x 121 frames is 31 x 45 x 80 tokens
    assert gpu_speed.video_tokens((720, 1280, 121), gpu_speed.REAL_TRANSFORMER_15, 16, 4) == 31 * 45 * 80


def test_scaled_down_hunyuanvideo15(tmp_path, capsys):
    """--family hunyuanvideo15 --scaled-down: tiny15's 3 dual-stream blocks, classifier-free guidance (two passes
    per step, each context with its own history), the cached/uncached ratio in the JSON and the table."""
    steps = 8
    md = tmp_path / "RESULTS.md"
    argv = [
        "--scaled-down",
        "--family",
        "hunyuanvideo15",
        "--steps",
        str(steps),
        "--sizes",
        "64x64x9",
        "--threads",
        "1",
    ]
    result = gpu_speed.main([*argv, "--json", str(tmp_path / "v15.json"), "--results-md", str(md)])
    out = capsys.readouterr().out
    assert result["family"] == "hunyuanvideo15" and result["model"]["configuration"] == "tiny15"
    assert json.loads((tmp_path / "v15.json").read_text())["family"] == "hunyuanvideo15"
    assert result["block_text_tokens"] == 16 + 256 + 729
    assert out.startswith("gpu_speed: HunyuanVideo 1.5 (hunyuanvideo15), cpu")
    rows = {r["mode"]: r for r in result["rows"]}
    assert set(rows) == {"none", "taylorseer", "hyca"}
    for mode, r in rows.items():
        assert r["status"] == "ok" and r["finite"] and r["loop"] == "measured"
        assert r["passes_per_step"] == 2  # conditional and unconditional
        full = gpu_speed.schedule(steps, mode, r["interval"] or 1)
        assert (r["full_passes"], r["skipped_passes"]) == (2 * sum(full), 2 * (steps - sum(full)))
        assert (r["schedule_full_passes"], r["schedule_skipped_passes"]) == (r["full_passes"], r["skipped_passes"])
        assert r["attention_calls_per_full_pass"] == 3 and r["attention_calls_in_skipped_passes"] == 0
        assert r["speedup_measured"] > 0 and r["speedup_derived"] > 0  # the cached / uncached ratio
        if mode != "none":  # both contexts' histories, as predicted (taylorseer fills 2 of its 3 slots in 8 steps)
            slots = r["history_slots"]
            assert r["cache_bytes"] == r["predicted_cache_bytes"] * min(sum(full), slots) // slots > 0
    assert result["calibration"]["block"]["solver_map_id"] == rows["hyca"]["solver_map_id"]
    assert result["vae"][0]["status"] == "ok" and result["vae"][0]["output_shape"] == [1, 3, 9, 64, 64]
    text = md.read_text()
    assert re.search(r"^## .+ - cpu .+ - HunyuanVideo 1\.5 \(hunyuanvideo15\) \(scaled-down .+tiny15", text, re.M)
    assert "2 transformer passes per step" in text and f"({steps} steps x 2 passes)" in text
    assert re.search(r"^\| 64x64x9 \| hyca \| 6 \| block \| ok \|.*\| 4 / 12 \|.*\| [\d.]+x \|", text, flags=re.M)

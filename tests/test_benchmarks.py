"""Smoke test of benchmarks/cache_quality.py --quick: every method at every quick interval, numbers that add up; and
a smaller run on the tiny HunyuanVideo 1.5 (tiny15: classifier-free guidance, peers that may not apply).

Nothing here asserts a timing (a CPU shared with other work makes any wall-clock threshold flaky); it checks
the schedule (pass counts and FLOPs ratios follow from N and the step count), that every cache really
engaged and left no state behind, and that fidelity is finite and gets worse as N grows.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "cache_quality.py"
QUICK_INTERVALS = (3, 6)
QUICK_STEPS = 12
HYCA = ("hyca-v1", "hyca-uniform-fixed", "hyca-uniform-learned", "hyca-calibrated-fixed", "hyca")
OUR_METHODS = ("fora", "taylorseer-o1", "taylorseer-o2", "foca", *HYCA)
DIFFUSERS_TAYLORSEER = ("diffusers-taylorseer-o1", "diffusers-taylorseer-o2")
FBC = ("diffusers-fbc-0.05", "diffusers-fbc-0.1", "diffusers-fbc-0.2")
BUDGETS = ("hyca-k8", "hyca-k9")  # the default fractions 0.625 and 0.75 of 12 steps computed fully


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "cache_quality.json"
    proc = subprocess.run(
        # cache-dit is the optional `bench` extra, which CI does not install: its rows are left out here.
        [
            sys.executable,
            str(SCRIPT),
            "--quick",
            "--model",
            "tiny",
            "--threads",
            "1",
            "--no-cache-dit",
            "--json",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, f"benchmark failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return json.loads(out.read_text()), proc.stdout, out


@pytest.mark.timeout(360)
def test_cache_quality_quick(quick):
    result, stdout, out = quick
    assert result["model"] == "tiny" and result["steps"] == QUICK_STEPS
    assert result["intervals"] == list(QUICK_INTERVALS)
    assert len(result["prompts"]) == 1
    calibration = {c["prompt"] for c in result["calibration"]["prompts"]}
    assert len(calibration) == 3 and not calibration & {p["prompt"] for p in result["prompts"]}
    assert out.with_suffix(".png").stat().st_size > 10_000  # the frontier plot, beside the JSON
    assert {"torch", "diffusers"} <= set(result["versions"]) and result["date"] and result["device"] == "cpu"
    assert result["reference"][0]["transformer_flops"] > 0

    rows = {(r["method"], r["interval"]): r for r in result["rows"]}
    assert len(rows) == len(result["rows"]), "one row per (method, N)"
    expected = {(m, n) for n in QUICK_INTERVALS for m in OUR_METHODS + DIFFUSERS_TAYLORSEER}
    expected |= {(m, None) for m in FBC + BUDGETS}
    assert set(rows) == expected

    for row in result["rows"]:
        assert row["deterministic"], f"{row['method']} N={row['interval']}: repeated runs differ (state leaked)"
        assert row["transformer_passes"] == QUICK_STEPS
        assert row["speedup"] is not None and math.isfinite(row["speedup"]) and row["speedup"] > 0
        assert 0 <= row["latent_rel_l2"] < 0.2
        assert 0.9 < row["ssim"] <= 1.0
        assert row["flops_ratio_measured"] is not None and row["flops_ratio_measured"] >= 0.99

    maps = result["calibration"]["maps"]
    assert maps["hyca"][str(3)]["solver_map_id"] != maps["hyca"][str(6)]["solver_map_id"]
    assert not maps["hyca-v1"][str(3)]["per_step"] and maps["hyca"][str(3)]["per_step"]
    for n in QUICK_INTERVALS:
        full = math.ceil(QUICK_STEPS / n)
        ours = [rows[(m, n)] for m in OUR_METHODS]
        for row in ours:
            assert row["full_passes"] == full, row
            assert row["flops_ratio"] == pytest.approx(QUICK_STEPS / full, rel=1e-3)
            assert row["block_compute_fraction"] == pytest.approx(full / QUICK_STEPS, rel=1e-5)
            # Forecast passes still run the embedders and recompute gates: measured savings are real but
            # below the theoretical ratio, and the same for every one of our modes (same schedule).
            assert 1.2 < row["flops_ratio_measured"] <= row["flops_ratio"] + 1e-6
            assert row["flops_ratio_measured"] == pytest.approx(ours[0]["flops_ratio_measured"], rel=1e-6)
            assert row["psnr"] is not None and math.isfinite(row["psnr"]) and row["psnr"] > 25
            assert row["latent_rel_l2"] > 0, f"{row['method']} N={n} equals the uncached video: nothing was forecast"
        for m in HYCA:
            assert rows[(m, n)]["solver_map_id"] == maps[m][str(n)]["solver_map_id"]
            assert len(maps[m][str(n)]["full_steps"]) == full
        for m in DIFFUSERS_TAYLORSEER:
            row = rows[(m, n)]
            assert row["flops_ratio"] is None
            # The hooks engaged (its own schedule, from the first block's attention calls) ...
            assert row["full_passes"] == row["expected_full_passes"] < QUICK_STEPS
            # ... but it forecasts attention only, so it saves fewer FLOPs than our whole-block forecasts.
            assert 1.0 < row["flops_ratio_measured"] < ours[0]["flops_ratio_measured"]
            assert row["latent_rel_l2"] > 0

    for m in OUR_METHODS + DIFFUSERS_TAYLORSEER:  # fewer full passes, larger error
        assert rows[(m, 6)]["latent_rel_l2"] > rows[(m, 3)]["latent_rel_l2"], m
    for m in OUR_METHODS:
        assert rows[(m, 6)]["psnr"] < rows[(m, 3)]["psnr"], m

    for m, budget in zip(BUDGETS, (8, 9)):  # hyca at a budget of full steps, placed by its calibration
        row = rows[(m, None)]
        assert row["full_passes"] == budget == len(maps[m][f"K={budget}"]["full_steps"])
        assert row["block_compute_fraction"] == pytest.approx(budget / QUICK_STEPS, rel=1e-5)
        assert row["latent_rel_l2"] < rows[("hyca", 3)]["latent_rel_l2"]  # more full steps, closer to uncached
    for m in FBC:
        row = rows[(m, None)]
        assert row["flops_ratio"] is None and 1 <= row["full_passes"] <= QUICK_STEPS
        if row["full_passes"] == QUICK_STEPS:  # never skipped: exactly the uncached video
            assert row["latent_rel_l2"] == 0 and row["psnr"] is None

    lines = stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("method"))
    assert "latent rel L2" in lines[header] and "FLOPs x" in lines[header]
    for n in QUICK_INTERVALS:
        assert any(line.startswith(f"N={n}: lowest latent rel L2: ") for line in lines)


@pytest.mark.timeout(300)
def test_cache_quality_tiny15(tmp_path):
    """The tiny HunyuanVideo 1.5 (random weights; the numbers only show the path runs): calibration, hyca, a uniform
    baseline and diffusers' TaylorSeer under classifier-free guidance (two passes per step), and FirstBlockCache
    either run or listed as not run with its reason, never dropped."""
    steps, n = 4, 3
    out = tmp_path / "cache_quality_tiny15.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--model",
            "tiny15",
            "--threads",
            "1",
            "--steps",
            str(steps),
            "--intervals",
            str(n),
            "--repeats",
            "1",
            "--prompts",
            "a red circle moving left on a black background",
            "--calibration-prompts",
            "a blue circle moving right on a gray background",
            "--fbc-thresholds",
            "0.1",
            "--hyca-fractions",
            "",
            "--no-cache-dit",
            "--json",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert proc.returncode == 0, f"benchmark failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    result = json.loads(out.read_text())
    assert result["model"] == "tiny15" and result["family"] == "hunyuanvideo15"
    assert result["passes_per_step"] == 2 and result["steps"] == steps
    assert out.with_suffix(".png").stat().st_size > 10_000
    rows = {(r["method"], r["interval"]): r for r in result["rows"]}
    listed = {m for entry in result["not_run"] for m in entry["methods"]}
    for entry in result["not_run"]:
        assert entry["reason"] and f"NOT RUN on tiny15: {', '.join(entry['methods'])}" in proc.stdout
    # Every requested method ran or says why not.
    assert ("diffusers-fbc-0.1", None) in rows or "diffusers-fbc-0.1 N=-" in listed
    full = 2 * math.ceil(steps / n)  # steps 0 and 3, in both passes
    for m in ("hyca", "fora", "taylorseer-o2"):
        row = rows[(m, n)]
        assert row["deterministic"] and row["transformer_passes"] == 2 * steps
        assert row["full_passes"] == full and row["block_compute_fraction"] == pytest.approx(full / (2 * steps))
        assert row["block_compute_fraction"] < 1
        assert row["psnr"] is not None and math.isfinite(row["psnr"]) and math.isfinite(row["latent_rel_l2"])
    assert rows[("hyca", n)]["solver_map_id"] == result["calibration"]["maps"]["hyca"][str(n)]["solver_map_id"]
    ts = rows[("diffusers-taylorseer-o1", n)]  # its state is per cache context: each pass on its own schedule
    assert ts["full_passes"] == ts["expected_full_passes"] == 2 * 2 and ts["block_compute_fraction"] < 1
    assert "family hunyuanvideo15: 2 transformer passes per step" in proc.stdout


@pytest.mark.timeout(300)
def test_sp_scaling_runs_one_and_two_ranks(tmp_path):
    out = tmp_path / "sp_scaling.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "sp_scaling.py"),
            "--model",
            "tiny",
            "--height",
            "64",
            "--width",
            "64",
            "--frames",
            "9",
            "--steps",
            "4",
            "--cache",
            "taylorseer",
            "--interval",
            "2",
            "--repeats",
            "1",
            "--sp",
            "1",
            "2",
            "--json",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert proc.returncode == 0, f"benchmark failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    result = json.loads(out.read_text())
    one, two = result["rows"]
    assert (one["sp"], two["sp"]) == (1, 2) and two["ulysses"] == 2
    assert one["collectives_per_full_step"] == 0 and one["comm_share"] == 0
    assert two["collectives_per_full_step"] == 16 and 0 < two["comm_share"] < 1  # 4 blocks x 4 all-to-alls
    assert two["skipped_steps"] == 2 and two["collectives_in_skipped_steps"] == 0
    assert one["full_step_s"] > 0 and two["speedup_vs_1"] == pytest.approx(one["full_step_s"] / two["full_step_s"])
    assert any(line.lstrip().startswith("2 ") and "x" in line for line in proc.stdout.splitlines())

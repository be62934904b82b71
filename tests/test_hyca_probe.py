"""Calibration on the tiny model through the real hooks, the calibrate command, and a job given a map."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from hyca_batch.cache import SolverMap, TrajectoryProbe
from hyca_batch.cache.calibrate import forecast_errors
from hyca_batch.cache.schedule import schedule_full_steps
from hyca_batch.cache.solvers import SOLVERS
from hyca_batch.config import CacheConfig, CalibrationConfig
from hyca_batch.models import load_model
from hyca_batch.pipeline.calibration import calibrate_model, record_trajectories, step_weights
from hyca_batch.types import Request

STEPS, INTERVAL = 16, 4
CACHE = CacheConfig(mode="hyca", interval=INTERVAL)
CONFIG = CalibrationConfig(clusters=4, probe_tokens=64)


def request(prompt: str, seed: int) -> Request:
    return Request(
        id="p",
        prompt=prompt,
        seed=seed,
        height=64,
        width=64,
        num_frames=9,
        num_inference_steps=STEPS,
        guidance_scale=6.0,
        fps=8,
    )


@pytest.fixture(scope="module")
def model():
    return load_model("tiny", device="cpu")


@pytest.fixture(scope="module")
def smap(model):
    return calibrate_model(model, [request("a red circle moving left on a blue background", 0)], CACHE, CONFIG)


def test_calibration_is_deterministic_and_covers_every_cached_module(model, smap):
    again = calibrate_model(model, [request("a red circle moving left on a blue background", 0)], CACHE, CONFIG)
    assert again.id == smap.id
    assert all(torch.equal(smap.channel_cluster[k], again.channel_cluster[k]) for k in smap.channel_cluster)
    transformer = model.pipeline.transformer
    assert len(smap.channel_cluster) == 4 * len(transformer.transformer_blocks) + len(
        transformer.single_transformer_blocks
    )
    assert smap.metadata["interval"] == INTERVAL and smap.metadata["weighting"] == "dsigma"
    assert getattr(transformer, "_hyca_cache", None) is None  # the probe uninstalled itself


def test_probe_leaves_out_text_padding(model):
    traj = record_trajectories(model, [request("a red circle", 0)], CalibrationConfig(probe_tokens=10_000))
    embeds, _, mask = model.pipeline.encode_prompt(prompt="a red circle", device="cpu")
    valid_text = int(mask.sum())
    image_tokens = 3 * 4 * 4  # 3 latent frames of 8x8 latents, patch size 2
    assert traj["double.0.attn"].shape[1] == image_tokens
    assert traj["double.0.ctx_attn"].shape[1] == valid_text < embeds.shape[1]
    assert traj["single.0.proj_out"].shape[1] == image_tokens + valid_text


def test_hyca_forecasts_a_held_out_prompt_no_worse_than_any_uniform_solver(model, smap):
    """The calibration objective, measured on a prompt the map never saw."""
    held_out = record_trajectories(model, [request("a green square moving up on a black background", 5)], CONFIG)
    full = schedule_full_steps(STEPS, INTERVAL)
    weights = step_weights(model.pipeline.scheduler, STEPS)
    mixed, uniform = 0.0, torch.zeros(len(SOLVERS), dtype=torch.float64)
    for name, traj in held_out.items():
        errors = forecast_errors(traj, full, step_weights=weights) / traj.double().square().mean()
        chosen = smap.channel_solver(name)
        mixed += errors.gather(0, chosen.view(1, -1)).sum().item()
        uniform += errors.sum(dim=1)
    assert mixed <= uniform.min().item()


def test_calibrate_command_writes_a_loadable_map(tmp_path):
    out = tmp_path / "map.safetensors"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "hyca_batch.cli",
            "calibrate",
            "--out",
            str(out),
            "--steps",
            "12",
            "--interval",
            "3",
            "--clusters",
            "3",
            "--probe-tokens",
            "32",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    smap = SolverMap.load(out)
    md = smap.metadata
    # auto clustering: --clusters k-means clusters, unless one cluster per module had the lower held-out error
    assert md["interval"] == 3 and len(smap.cluster_solver) == (md["modules"] if md["clustering"] == "modules" else 3)
    assert md["folds"] == 2 and md["forecasts"] == "learned" and md["schedule_asked"] == "calibrated"
    assert sum(smap.full_steps()) == 4 and "held-out" in proc.stderr
    assert json.loads(out.with_suffix(".json").read_text())["id"] == smap.id
    assert smap.id in proc.stderr and "best uniform solver" in proc.stderr


def test_a_map_for_another_granularity_is_refused_before_any_video(ray_session, smap, tmp_path, write_manifest):
    from hyca_batch.config import JobConfig
    from hyca_batch.job import JobError, run_job

    path = tmp_path / "map.safetensors"
    smap.save(path)
    manifest = write_manifest(prompt=["a red circle"])
    config = JobConfig.from_options(
        manifests=[manifest],
        out=str(tmp_path / "out"),
        cache="hyca",
        solver_map=str(path),
        granularity="stack",
        interval=INTERVAL,
        num_inference_steps=STEPS,
        progress=False,
    )
    with pytest.raises(JobError, match="no entry for module 'stack.img'"):
        run_job(config)


def test_a_shorter_prompt_is_sampled_within_its_own_tokens():
    """Calibration on several prompts: a later prompt with fewer usable text positions (padding, or dropped by
    sequence parallelism) is sampled inside them, at the same count so the prompts stack as folds."""

    def positions(n: int) -> torch.Tensor:  # a feature whose value says its position
        return torch.arange(n, dtype=torch.float32).reshape(1, n, 1).expand(1, n, 3)

    probe = TrajectoryProbe(tokens=8)
    probe.record("cond", "double.0.ctx_attn", positions(10))  # 10 usable: 8 sampled
    probe.record("cond", "double.0.ctx_attn", positions(10), padding=6)  # 4 usable, the rest padding
    probe.record("cond", "double.0.ctx_attn", positions(5))  # 5 positions in all (padding dropped)
    first, padded, short = probe.recording["cond"]["double.0.ctx_attn"]
    assert first.shape == padded.shape == short.shape == (8, 3)
    assert int(padded.max()) < 4 and int(short.max()) < 5
    assert set(padded[:, 0].tolist()) == {0.0, 1.0, 2.0, 3.0}  # all of them, some twice

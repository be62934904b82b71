"""HyCa calibration: descriptors, k-means, schedule replay, per-cluster solver choice, the solver map file."""

from __future__ import annotations

import json
import math

import pytest
import torch

from hyca_batch.cache.calibrate import (
    DESCRIPTORS,
    calibrate,
    channel_descriptors,
    forecast_errors,
    kmeans,
    schedule_full_steps,
)
from hyca_batch.cache.solver_map import SolverMap
from hyca_batch.cache.solvers import SOLVERS, max_points

T, K, D = 30, 6, 24
INTERVAL = 3


def _two_kinds(seed: int, scale: float, half: int = D // 2) -> torch.Tensor:
    """(T, K, 2*half): the first half of the channels drift linearly, the second half oscillate fast."""
    gen = torch.Generator().manual_seed(seed)
    t = torch.arange(T, dtype=torch.float64).view(T, 1, 1)
    offset = torch.randn(1, K, half, generator=gen, dtype=torch.float64)
    slope = torch.randn(1, K, half, generator=gen, dtype=torch.float64) / 2
    phase = torch.rand(1, K, half, generator=gen, dtype=torch.float64) * 2 * math.pi
    linear = offset + slope * t
    oscillating = torch.sin(2 * math.pi * t / 5 + phase)
    return (scale * torch.cat([linear, oscillating], dim=2)).float()


@pytest.fixture(scope="module")
def recording() -> dict[str, torch.Tensor]:
    # two modules four orders of magnitude apart: normalization must keep the small one relevant
    return {"blocks.0.attn": _two_kinds(0, 100.0), "blocks.1.ff": _two_kinds(1, 0.01)}


def test_descriptors_finite_and_telling():
    gen = torch.Generator().manual_seed(0)
    t = torch.arange(T, dtype=torch.float32).view(T, 1, 1).expand(T, K, 1)
    channels = [
        torch.zeros(T, K, 1),  # constant zero
        torch.full((T, K, 1), 3.0),  # constant
        2.0 + 0.5 * t,  # linear
        torch.randn(T, K, 1, generator=gen),  # noise
    ]
    desc = channel_descriptors(torch.cat(channels, dim=2))
    assert desc.shape == (4, len(DESCRIPTORS))
    assert torch.isfinite(desc).all()
    curvature, flatness = DESCRIPTORS.index("log_curvature_ratio"), DESCRIPTORS.index("log_spectral_flatness")
    assert desc[2, curvature] < desc[3, curvature] - 5  # a line has no second difference, noise does
    assert desc[2, flatness] < desc[3, flatness] - 5  # a line's increments are a pure tone at DC
    # scale-free: multiplying the module by a constant changes nothing
    torch.testing.assert_close(channel_descriptors(torch.cat(channels, 2) * 1e4), desc, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="4 steps"):
        channel_descriptors(torch.zeros(3, K, 2))


def _blobs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    centers = torch.tensor([[0.0, 0.0, 0.0], [20.0, 0.0, 5.0], [0.0, 30.0, -10.0]])
    truth = torch.arange(3).repeat_interleave(40)
    return centers[truth] + torch.randn(120, 3, generator=gen), truth


def test_kmeans_separates_blobs_and_is_deterministic():
    x, truth = _blobs()
    labels, centers = kmeans(x, 3, seed=5)
    assert labels.shape == (120,) and centers.shape == (3, 3)
    for blob in range(3):
        assert labels[truth == blob].unique().numel() == 1
    assert labels.unique().numel() == 3
    # centers come back in the input's units, near the true blob centers
    for blob in range(3):
        assert torch.allclose(centers[labels[truth == blob][0]], x[truth == blob].mean(0), atol=1e-5)
    assert centers.dtype == x.dtype
    again = kmeans(x, 3, seed=5)
    assert torch.equal(labels, again[0]) and torch.equal(centers, again[1])


def test_kmeans_more_clusters_than_distinct_points():
    x = torch.tensor([[0.0, 1.0]] * 4 + [[5.0, -1.0]] * 3)
    labels, centers = kmeans(x, 5, seed=0)
    assert centers.shape == (5, 2)
    assert labels.min() >= 0 and labels.max() < 5
    assert labels[:4].unique().numel() == 1 and labels[4:].unique().numel() == 1
    assert labels[0] != labels[4]
    single, _ = kmeans(torch.ones(3, 2), 4, seed=1)
    assert torch.equal(single, torch.zeros(3, dtype=torch.long))


def test_schedule_full_steps():
    full = schedule_full_steps(50, 6)
    assert sum(full) == 9 and [t for t, f in enumerate(full) if f][-1] == 48
    assert all(schedule_full_steps(7, 1))
    assert schedule_full_steps(8, 4, warmup=3) == [True, True, True, False, True, False, False, False]
    with pytest.raises(ValueError):
        schedule_full_steps(10, 0)


def test_forecast_errors_replays_the_schedule():
    # x(t) = b t: one full step of history forces reuse, two or more make every extrapolator exact
    slope = torch.tensor([1.0, -2.0])
    traj = (torch.arange(10.0).view(10, 1, 1) * slope).expand(10, 3, 2).contiguous()
    errors = forecast_errors(traj, schedule_full_steps(10, 3), history=4)  # full at 0, 3, 6, 9
    assert errors.shape == (len(SOLVERS), 2)
    per_token = slope.double().square() * 3
    torch.testing.assert_close(errors[SOLVERS.index("reuse")], per_token * 3 * (1 + 4))  # steps 1,2 4,5 7,8
    for name in SOLVERS[1:]:
        torch.testing.assert_close(errors[SOLVERS.index(name)], per_token * (1 + 4))  # only steps 1, 2
    # with a history of one every solver falls back to reuse
    one = forecast_errors(traj, schedule_full_steps(10, 3), history=1)
    assert torch.equal(one, one[:1].expand_as(one))
    with pytest.raises(ValueError, match="first step"):
        forecast_errors(traj, [False] + [True] * 9)


def test_interval_one_has_no_forecast_error(recording):
    traj = recording["blocks.0.attn"]
    errors = forecast_errors(traj, schedule_full_steps(T, 1))
    assert torch.equal(errors, torch.zeros_like(errors))


def _normalized_errors(recording: dict[str, torch.Tensor], candidates=SOLVERS) -> dict[str, torch.Tensor]:
    full = schedule_full_steps(T, INTERVAL)
    return {
        name: forecast_errors(traj, full, max_points(candidates)) / traj.double().square().mean()
        for name, traj in recording.items()
    }


def test_calibration_splits_linear_from_oscillating(recording):
    solver_map = calibrate(recording, num_steps=T, interval=INTERVAL, clusters=2, seed=0)
    for name in recording:
        chosen = solver_map.channel_solver(name)
        linear, oscillating = chosen[: D // 2], chosen[D // 2 :]
        assert linear.unique().numel() == 1 and oscillating.unique().numel() == 1
        assert SOLVERS[int(linear[0])] != "reuse"  # a drift is worth extrapolating
        assert SOLVERS[int(oscillating[0])] == "reuse"  # a fast oscillation is not
    assert solver_map.solver_names_used() == {SOLVERS[int(i)] for i in solver_map.cluster_solver}

    errors = _normalized_errors(recording)
    mix = sum(float(e.gather(0, solver_map.channel_solver(n).unsqueeze(0)).sum()) for n, e in errors.items())
    uniform = {s: sum(float(e[i].sum()) for e in errors.values()) for i, s in enumerate(SOLVERS)}
    assert mix <= min(uniform.values()) * (1 + 1e-9)
    assert mix < 0.9 * min(uniform.values())  # and here strictly better than any single solver
    assert solver_map.metadata["total_error"] == pytest.approx(mix, rel=1e-9)
    assert solver_map.metadata["uniform_errors"] == pytest.approx(uniform, rel=1e-9)


def test_calibration_respects_candidates(recording):
    solver_map = calibrate(recording, num_steps=T, interval=INTERVAL, clusters=2, candidates=("ab3", "taylor1"))
    assert solver_map.solver_names_used() <= {"ab3", "taylor1"}
    assert solver_map.metadata["history"] == 4
    with pytest.raises(ValueError, match="rk4"):
        calibrate(recording, num_steps=T, interval=INTERVAL, clusters=2, candidates=("rk4",))
    with pytest.raises(ValueError, match="blocks"):
        calibrate(recording, num_steps=T + 1, interval=INTERVAL, clusters=2)


def test_calibration_is_deterministic(recording):
    first = calibrate(recording, num_steps=T, interval=INTERVAL, clusters=3, seed=4, metadata={"model": "tiny"})
    reordered = dict(reversed(list(recording.items())))
    second = calibrate(reordered, num_steps=T, interval=INTERVAL, clusters=3, seed=4, metadata={"model": "tiny"})
    assert first.id == second.id
    assert len(first.id) == 16 and int(first.id, 16) >= 0
    other = calibrate(recording, num_steps=T, interval=INTERVAL, clusters=3, seed=4, metadata={"model": "big"})
    assert other.id != first.id  # calibration-relevant metadata is part of the identity
    first.metadata["created_at"] = "yesterday"
    assert first.id == second.id  # the timestamp is not


def test_save_load_round_trip(recording, tmp_path):
    solver_map = calibrate(recording, num_steps=T, interval=INTERVAL, clusters=2, metadata={"height": 64})
    path = tmp_path / "maps" / "tiny.safetensors"
    solver_map.save(path)
    loaded = SolverMap.load(path)
    assert loaded.id == solver_map.id
    assert loaded.solvers == solver_map.solvers
    assert torch.equal(loaded.cluster_solver, solver_map.cluster_solver)
    assert torch.equal(loaded.cluster_error, solver_map.cluster_error)
    assert loaded.channel_cluster.keys() == solver_map.channel_cluster.keys()
    for name in recording:
        assert torch.equal(loaded.channel_cluster[name], solver_map.channel_cluster[name])
        assert torch.equal(loaded.channel_solver(name), solver_map.channel_solver(name))
    assert loaded.metadata == json.loads(json.dumps(solver_map.metadata))

    readable = json.loads(path.with_suffix(".json").read_text())
    assert readable["id"] == solver_map.id
    assert [c["solver"] for c in readable["clusters"]] == solver_map.metadata["cluster_solvers"]
    assert sum(c["channels"] for c in readable["clusters"]) == 2 * D
    assert readable["metadata"]["height"] == 64


def test_load_errors_name_the_path(tmp_path):
    missing = tmp_path / "absent.safetensors"
    with pytest.raises(FileNotFoundError, match="absent.safetensors"):
        SolverMap.load(missing)
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not a header at all")
    with pytest.raises(ValueError, match="corrupt.safetensors"):
        SolverMap.load(corrupt)
    with pytest.raises(KeyError, match="nope"):
        SolverMap.uniform("reuse", {"a": 4}).channel_solver("nope")


def test_uniform_map(tmp_path):
    dims = {"blocks.0.attn": 8, "single.0.linear2": 5}
    solver_map = SolverMap.uniform("pc", dims, metadata={"model": "tiny"})
    for name, dim in dims.items():
        assert torch.equal(solver_map.channel_solver(name), torch.full((dim,), SOLVERS.index("pc")))
        assert solver_map.solver_names_used(name) == {"pc"}
    assert solver_map.metadata["model"] == "tiny" and solver_map.metadata["solver"] == "pc"
    assert SolverMap.uniform("reuse", dims, {"model": "tiny"}).id != solver_map.id
    solver_map.save(tmp_path / "foca.safetensors")
    assert SolverMap.load(tmp_path / "foca.safetensors").id == solver_map.id
    assert json.loads((tmp_path / "foca.json").read_text())["clusters"][0]["solver"] == "pc"
    with pytest.raises(ValueError, match="rk4"):
        SolverMap.uniform("rk4", dims)

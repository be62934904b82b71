"""HyCa's per-step forecasts and calibrated schedule: the ridge fit, the held-out choice, the schedule optimizer, the
map that carries them and the runtime that replays them."""

from __future__ import annotations

import itertools

import pytest
import torch

from hyca_batch.cache import SolverMap, cached_modules
from hyca_batch.cache.calibrate import calibrate
from hyca_batch.cache.fit import CANDIDATES, HISTORY, _ridge, choose, cluster_grams, fit_schedule, skip_cost_table
from hyca_batch.cache.schedule import optimize_schedule, schedule_cost, schedule_full_steps
from hyca_batch.cache.solvers import SOLVERS, coefficient_table
from hyca_batch.config import CacheConfig
from hyca_batch.models import load_model
from hyca_batch.pipeline.generate import VideoGenerator
from hyca_batch.types import Request

T = 12


def polynomial_recording(degree: int, tokens: int = 40, channels: int = 6, seed: int = 0) -> dict[str, torch.Tensor]:
    """Every (token, channel) a random polynomial of ``degree`` in the step index: the data of an exact solver."""
    gen = torch.Generator().manual_seed(seed)
    t = torch.arange(T, dtype=torch.float64)
    coef = torch.randn(degree + 1, tokens, channels, generator=gen, dtype=torch.float64)
    traj = sum(coef[p] * t[:, None, None] ** p for p in range(degree + 1))
    return {"double.0.attn": traj}


def one_cluster_grams(recording, prompts: int = 2) -> torch.Tensor:
    labels = {name: torch.zeros(traj.shape[2], dtype=torch.long) for name, traj in recording.items()}
    return cluster_grams({k: v.double() for k, v in recording.items()}, labels, 1, prompts)


def test_the_least_squares_fit_is_a_solver_on_that_solvers_polynomial():
    grams = one_cluster_grams(polynomial_recording(2)).sum(0)[0]  # (T, T)
    nodes, target = [6, 3, 0], 9
    a = grams[nodes][:, nodes]
    g = grams[nodes, target]
    fitted = _ridge(a, g, torch.zeros(3, dtype=torch.float64), alpha=1e-12)
    taylor2 = coefficient_table(nodes, target)[SOLVERS.index("taylor2")]
    assert torch.allclose(fitted, taylor2, atol=1e-5), (fitted, taylor2)
    # Pulled toward the exact solver, any strength of ridge stays on it.
    assert torch.allclose(_ridge(a, g, taylor2, alpha=100.0), taylor2, atol=1e-9)


def test_the_choice_keeps_the_exact_solver_and_learns_where_no_fixed_one_fits():
    grams = one_cluster_grams(polynomial_recording(2))
    nodes, targets = torch.tensor([[6, 3, 0], [9, 6, 3]]), torch.tensor([8, 11])
    choice = choose(grams, nodes, targets, learned=True)
    # taylor2 is exact here; a learned forecast ties with it at best, and ties go to the fixed solver.
    assert [CANDIDATES[i] for i in choice.candidate[0].tolist()] == ["taylor2", "taylor2"]
    assert float(choice.held_out.abs().max()) < 1e-6
    table = torch.stack(
        [coefficient_table(n.tolist(), int(t))[SOLVERS.index("taylor2")] for n, t in zip(nodes, targets)]
    )
    assert torch.allclose(choice.coefficients[0], table)

    # Only reuse allowed: the ridge fit (toward reuse) forecasts a quadratic far better than reuse can.
    limited = choose(grams, nodes, targets, learned=True, allowed=("reuse",))
    assert all(CANDIDATES[i].startswith("learned") for i in limited.candidate[0].tolist())
    reuse = choose(grams, nodes, targets, learned=False, allowed=("reuse",))
    assert bool((limited.held_out < 0.5 * reuse.held_out).all())
    # With four full steps of history a learned forecast still reads three (no extra cache memory).
    four = choose(grams, torch.tensor([[9, 6, 3, 0]]), torch.tensor([11]), learned=True, allowed=("reuse",))
    assert CANDIDATES[int(four.candidate[0, 0])].startswith("learned") and float(four.coefficients[0, 0, 3]) == 0.0


def distance_cost(steps: int, max_gap: int, weight=lambda t: 1.0) -> torch.Tensor:
    """A cost that depends only on how far a skipped step lies from its newest full step (convex), times a weight
    per step: no history dependence."""
    cost = torch.zeros(steps, max_gap + 1, max_gap + 1, max_gap, dtype=torch.float64)
    for a, d in itertools.product(range(steps), range(1, max_gap)):
        if a + d < steps:
            cost[a, :, :, d] = weight(a + d) * d * d
    return cost


def brute_force(cost: torch.Tensor, steps: int, full: int) -> float:
    return min(
        schedule_cost(cost, [t == 0 or t in rest for t in range(steps)])
        for rest in itertools.combinations(range(1, steps), full - 1)
    )


def test_flat_errors_give_the_uniform_schedule_back():
    uniform = schedule_full_steps(24, 6)
    assert optimize_schedule(distance_cost(24, 12), sum(uniform), uniform) == uniform
    # Errors that do not depend on the schedule at all: every schedule ties, and the baseline stands.
    flat = torch.ones(24, 13, 13, 12, dtype=torch.float64)
    assert optimize_schedule(flat, sum(uniform), uniform) == uniform


def test_the_optimizer_beats_uniform_where_late_steps_matter_and_is_optimal():
    steps, max_gap = 12, 8
    late = distance_cost(steps, max_gap, weight=lambda t: 1.0 if t < 6 else 20.0)
    uniform = schedule_full_steps(steps, 4)  # full at 0, 4, 8
    best = optimize_schedule(late, sum(uniform), uniform)
    assert sum(best) == sum(uniform) and best[0]
    assert schedule_cost(late, best) < schedule_cost(late, uniform)
    assert [t for t, f in enumerate(best) if f][1] >= 5  # the second full step moves toward the costly half
    # The dynamic program finds the best of every placement (history-dependent costs too).
    gen = torch.Generator().manual_seed(1)
    random = torch.rand(steps, max_gap + 1, max_gap + 1, max_gap, generator=gen, dtype=torch.float64)
    for full in (2, 3, 4):
        chosen = optimize_schedule(random, full)
        assert schedule_cost(random, chosen) == pytest.approx(brute_force(random, steps, full))


def test_the_calibrated_schedule_forecasts_no_worse_than_uniform_and_is_deterministic():
    gen = torch.Generator().manual_seed(0)
    t = torch.linspace(0, 1, T)[:, None, None]
    slow = t * torch.randn(30, 4, generator=gen)
    fast = torch.sin(12 * t * t + torch.rand(30, 4, generator=gen))  # changes fastest late
    recording = {"double.0.attn": slow.float(), "double.0.ff": fast.float()}
    args = dict(num_steps=T, interval=4, clusters=2, prompts=2, forecasts="learned", schedule="calibrated")
    first = calibrate(recording, **args, clustering="auto")
    again = calibrate(dict(reversed(list(recording.items()))), **args, clustering="auto")
    assert first.id == again.id
    md = first.metadata
    assert md["clustering"] in ("descriptors", "errors", "modules") and len(md["clustering_held_out"]) == 3
    errors = md["held_out_error"]
    assert md["schedule"] == "calibrated" and errors["calibrated_schedule"] < errors["uniform_schedule"]
    assert sum(first.full_steps()) == sum(schedule_full_steps(T, 4)) and first.full_steps() != schedule_full_steps(T, 4)
    # The stored forecasts are the fit of the stored schedule, zero at full steps.
    assert bool((first.step_coefficients[:, torch.tensor(first.full_steps())] == 0).all())
    assert bool((first.step_choice[:, torch.tensor(first.full_steps())] == -1).all())
    uniform = calibrate(recording, **{**args, "schedule": "uniform"}, clustering="auto")
    assert uniform.full_steps() == schedule_full_steps(T, 4) and uniform.metadata["schedule"] == "uniform"
    # A budget of full steps other than the interval's: the calibrated schedule has exactly that many.
    budget = calibrate(recording, **args, full_steps=7)
    assert sum(budget.full_steps()) == 7 == budget.metadata["full_steps_budget"] and budget.full_steps()[0]
    with pytest.raises(ValueError, match="budget"):
        calibrate(recording, **{**args, "schedule": "uniform"}, full_steps=7)
    with pytest.raises(ValueError, match="--full-steps"):
        CacheConfig(mode="hyca", schedule="uniform", full_steps=7)


def test_a_map_with_per_step_forecasts_round_trips(tmp_path):
    recording = polynomial_recording(3)
    smap = calibrate(
        recording, num_steps=T, interval=3, clusters=2, prompts=2, forecasts="learned", schedule="calibrated"
    )
    smap.save(tmp_path / "m.safetensors")
    loaded = SolverMap.load(tmp_path / "m.safetensors")
    assert loaded.id == smap.id and loaded.full_steps() == smap.full_steps()
    assert torch.equal(loaded.step_coefficients, smap.step_coefficients)
    summary = (tmp_path / "m.json").read_text()
    assert '"full_steps"' in summary and '"step_forecasts"' in summary
    with pytest.raises(ValueError, match="all of"):
        SolverMap(smap.solvers, smap.cluster_solver, smap.channel_cluster, smap.cluster_error, schedule=smap.schedule)


# -- the runtime ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model():
    return load_model("tiny", device="cpu")


def request(steps: int) -> Request:
    return Request(
        id="f",
        prompt="a red circle moving left",
        seed=5,
        height=64,
        width=64,
        num_frames=9,
        num_inference_steps=steps,
        guidance_scale=6.0,
        fps=8,
    )


def per_step_map(transformer, schedule: list[bool], solver: str) -> SolverMap:
    """A one-cluster map whose per-step forecasts are ``solver``'s coefficients on ``schedule``."""
    smap = SolverMap.uniform(solver, cached_modules(transformer))
    coefficients = torch.zeros(1, len(schedule), HISTORY, dtype=torch.float64)
    choice = torch.full((1, len(schedule)), -1)
    past: list[int] = []
    for t, full in enumerate(schedule):
        if full:
            past = [t, *past][:HISTORY]
            continue
        coefficients[0, t, : len(past)] = coefficient_table(past, t)[SOLVERS.index(solver)]
        choice[0, t] = SOLVERS.index(solver)
    smap.metadata.update(kind="hyca", schedule="calibrated", forecasts="fixed")
    return SolverMap(
        smap.solvers,
        smap.cluster_solver,
        smap.channel_cluster,
        smap.cluster_error,
        smap.metadata,
        schedule=torch.tensor(schedule),
        step_coefficients=coefficients,
        step_choice=choice,
    )


def run(model, config: CacheConfig, req: Request, smap: SolverMap | None = None):
    gen = VideoGenerator(model, cache=config, solver_map=smap)
    try:
        return gen(req)
    finally:
        gen.cache.remove()


def test_per_step_forecasts_replay_the_fixed_solver_they_encode(model):
    uniform = schedule_full_steps(12, 3)
    smap = per_step_map(model.pipeline.transformer, uniform, "taylor2")
    fixed = run(model, CacheConfig(mode="taylorseer", interval=3), request(12))
    per_step = run(model, CacheConfig(mode="hyca", interval=3), request(12), smap)
    assert per_step.cache_parts == {"schedule": "calibrated", "forecasts": "per-step fixed"}
    assert (per_step.transformer_passes_full, per_step.transformer_passes_skipped) == (4, 8)
    assert torch.allclose(per_step.latents, fixed.latents, atol=1e-5)


def test_the_calibrated_schedule_is_run_and_other_step_counts_fall_back(model):
    schedule = [t in (0, 1, 2, 9) for t in range(12)]
    smap = per_step_map(model.pipeline.transformer, schedule, "taylor1")
    gen = VideoGenerator(model, cache=CacheConfig(mode="hyca", interval=3), solver_map=smap)
    full_at: list[int] = []
    step = [0]

    def count(module, inputs, output):
        if gen.cache.pass_is_full():
            full_at.append(step[0])
        step[0] += 1

    handle = model.pipeline.transformer.register_forward_hook(count)
    try:
        result = gen(request(12))
        assert full_at == [0, 1, 2, 9] and result.transformer_passes_full == 4
        # 10 steps: the map was fitted for 12, so each cluster's own solver runs on the uniform schedule.
        full_at.clear()
        step[0] = 0
        other = gen(request(10))
        assert full_at == [0, 3, 6, 9] and other.cache_parts["forecasts"] == "per-cluster solvers"
        # --schedule uniform with a map fitted on another schedule: the same fallback.
        gen.cache.config = CacheConfig(mode="hyca", interval=3, schedule="uniform")
        full_at.clear()
        step[0] = 0
        assert gen(request(12)).cache_parts == {"schedule": "uniform", "forecasts": "per-cluster solvers"}
        assert full_at == [0, 3, 6, 9]
    finally:
        handle.remove()
        gen.cache.remove()


def test_the_cost_table_prices_a_schedule_as_its_fit_does():
    """With three-point candidates the search's cost of a schedule is exactly the fitted schedule's error."""
    grams = one_cluster_grams(polynomial_recording(3, seed=2))
    weights = [0.5 + t for t in range(T)]
    three = ("reuse", "taylor1", "taylor2", "bdf2")
    table = skip_cost_table(grams, 6, weights, learned=False, allowed=three)
    for schedule in (schedule_full_steps(T, 3), [t in (0, 1, 5, 8) for t in range(T)]):
        fit = fit_schedule(grams, schedule, weights, learned=False, allowed=three)
        assert schedule_cost(table, schedule) == pytest.approx(fit.error, rel=1e-9)

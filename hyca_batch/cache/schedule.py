"""Which denoising steps run the transformer fully: the one rule the hooks, calibration and the benchmarks share.

Calibration replays the schedule on a probe's recording to score each solver, so its choices are only right
while the runtime skips exactly the same steps; both call this module. A calibrated schedule
(``optimize_schedule``) places the same number of full steps where the recording says forecasts fail most;
it is stored in the solver map and replayed the same way.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def is_full_step(step: int, interval: int, warmup: int = 0) -> bool:
    """Step ``step`` (0-based) is computed fully: in the warm-up, or every ``interval``-th step (1: every step)."""
    return step < warmup or step % interval == 0


def schedule_full_steps(num_steps: int, interval: int, warmup: int = 0) -> list[bool]:
    """``is_full_step`` for every step of a ``num_steps`` loop."""
    if num_steps < 1 or interval < 1 or warmup < 0:
        raise ValueError(f"need num_steps >= 1, interval >= 1, warmup >= 0; got {num_steps}, {interval}, {warmup}")
    return [is_full_step(t, interval, warmup) for t in range(num_steps)]


def optimize_schedule(cost: torch.Tensor, full_steps: int, baseline: Sequence[bool] | None = None) -> list[bool]:
    """The schedule of ``full_steps`` full steps (step 0 among them) whose skipped steps cost least, by dynamic
    programming over (newest full step, its two preceding gaps).

    ``cost[a, g1, g2, d]`` (shape (T, G+1, G+1, G), from ``cache.fit.skip_cost_table``) is the cost of skipping
    step a+d when the newest full steps are a, a-g1, a-g1-g2; no two full steps lie more than G apart. The
    ``baseline`` (e.g. the uniform schedule) is returned unless the optimum is strictly cheaper, so flat costs
    give the baseline back.
    """
    steps, gaps = cost.shape[0], cost.shape[-1]
    if full_steps < 1 or full_steps > steps:
        raise ValueError(f"{full_steps} full steps do not fit a {steps}-step loop")
    # seg[a, g1, g2, g]: every step strictly between a and a+g skipped.
    seg = torch.zeros(*cost.shape[:3], gaps + 1, dtype=torch.float64)
    seg[..., 2:] = cost[..., 1:].cumsum(-1)
    seg = seg.tolist()
    states: dict[tuple[int, int, int], tuple[float, tuple[int, ...]]] = {(0, 0, 0): (0.0, (0,))}
    for placed in range(1, full_steps):
        last_start = steps - (full_steps - placed)  # room for the full steps still to place
        new: dict[tuple[int, int, int], tuple[float, tuple[int, ...]]] = {}
        for (a, g1, g2), (value, path) in sorted(states.items()):
            row = seg[a][g1][g2]
            for g in range(1, min(gaps, last_start - a) + 1):
                total = value + row[g]
                key = (a + g, g, g1)
                if total < new.get(key, (float("inf"),))[0]:
                    new[key] = (total, (*path, a + g))
        states = new
    best: tuple[float, tuple[int, ...]] = (float("inf"), ())
    for (a, g1, g2), (value, path) in sorted(states.items()):
        if steps - a <= gaps:
            total = value + seg[a][g1][g2][steps - a]
            if total < best[0]:
                best = (total, path)
    if not best[1]:
        raise ValueError(f"no schedule of {full_steps} full steps in {steps} keeps every gap within {gaps}")
    chosen = [t in best[1] for t in range(steps)]
    if baseline is not None:
        baseline = list(baseline)
        if sum(baseline) != full_steps or not baseline[0]:
            raise ValueError(f"the baseline schedule must have {full_steps} full steps, step 0 among them")
        if best[0] >= schedule_cost(cost, baseline) * (1 - 1e-9):
            return baseline
    return chosen


def schedule_cost(cost: torch.Tensor, schedule: Sequence[bool]) -> float:
    """The cost ``optimize_schedule`` gives ``schedule`` (the same three-point history); inf where a gap is too long."""
    total, nodes = 0.0, []
    for t, full in enumerate(schedule):
        if full:
            nodes = [t, *nodes][:3]
            continue
        a = nodes[0]
        g1 = a - nodes[1] if len(nodes) > 1 else 0
        g2 = nodes[1] - nodes[2] if len(nodes) > 2 else 0
        d = t - a
        if g1 > cost.shape[1] - 1 or g2 > cost.shape[2] - 1 or d >= cost.shape[3]:
            return float("inf")
        total += float(cost[a, g1, g2, d])
    return total

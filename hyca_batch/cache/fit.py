"""HyCa's per-step forecasts, chosen and fitted from Gram statistics of the probe's recording.

A forecast is linear in the history, ``F_t ~ sum_j c_j F_{n_j}``, so its squared error over a cluster of
channels is the quadratic form ``c'G[n,n]c - 2c'G[n,t] + G[t,t]`` in the cluster's Gram matrix of steps,
``G[i,j] = sum over tokens and channels of F_i F_j``. One (clusters, steps, steps) Gram per fold of the
recording is therefore all that calibration needs: the error of every fixed solver at every (history,
target), a ridge fit of free coefficients (``learned``), the held-out error that decides between them, and
the cost table the schedule optimizer searches, all without replaying the recording again.

Folds are the calibration prompts (or, with one prompt, two interleaved halves of its sampled tokens). A
learned forecast is fitted on all folds but one and scored on the one left out; it replaces a fixed solver
only where that held-out error is lower, so it is used only where it generalizes. The ridge pulls toward
the best fixed solver, so every fixed solver is the limit of a learned forecast, and the runtime cost stays
one multiply-add per history slot.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from hyca_batch.cache.solvers import SOLVERS, coefficient_table, max_points

#: History slots the runtime keeps at most, and so the width of every coefficient table.
HISTORY = max_points(SOLVERS)
#: Full steps a learned forecast reads at most: taylor2's, so learning costs no cache memory over the usual fixed
#: choice (a history slot of every cached module is gigabytes at 720p). Four gained 0.06-0.08 dB on mini at N=5-6.
LEARNED_POINTS = 3
#: Ridge strengths, relative to the mean diagonal of the history's Gram block.
RIDGE_ALPHAS: tuple[float, ...] = (1.0, 10.0, 100.0)
LEARNED: tuple[str, ...] = tuple(f"learned-{a:g}" for a in RIDGE_ALPHAS)
#: Every forecast a (cluster, step) may use: the fixed solvers, then a ridge fit per strength.
CANDIDATES: tuple[str, ...] = (*SOLVERS, *LEARNED)
TIE_TOLERANCE = 1e-6  # relative: a candidate must beat an earlier (simpler) one by more than this
_BATCH = 16384  # (history, target) configurations per block: bounds the (F, C, B, h, h) working set


def fold_indices(tokens: int, prompts: int) -> list[torch.Tensor]:
    """Token positions of each fold of a recording of ``prompts`` prompts concatenated over ``tokens`` positions."""
    if prompts >= 2:
        if tokens % prompts:
            raise ValueError(f"{tokens} recorded tokens do not split evenly over {prompts} prompts")
        return list(torch.arange(tokens).chunk(prompts))
    if tokens < 2:
        return [torch.arange(tokens)]
    return [torch.arange(0, tokens, 2), torch.arange(1, tokens, 2)]


def cluster_grams(
    trajectories: dict[str, torch.Tensor],
    labels: dict[str, torch.Tensor],
    clusters: int,
    prompts: int,
) -> torch.Tensor:
    """(folds, clusters, T, T) float64: each cluster's Gram of steps per fold (``fold_indices``; modules record
    different token counts, text fewer), each module divided by its mean square first (so large-magnitude modules
    do not dominate, as in ``calibrate.forecast_errors``)."""
    names = sorted(trajectories)
    steps, tokens = trajectories[names[0]].shape[:2]
    grams = torch.zeros(len(fold_indices(tokens, prompts)), clusters, steps, steps, dtype=torch.float64)
    for name in names:
        traj = trajectories[name].double()
        folds = fold_indices(traj.shape[1], prompts)
        x = traj / traj.square().mean().clamp_min(1e-30).sqrt()
        label = labels[name].cpu()
        for c in label.unique().tolist():
            xc = x[..., label == c]
            for f, index in enumerate(folds):
                flat = xc[:, index].reshape(steps, -1)
                grams[f, c] += flat @ flat.T
    return grams


@dataclass
class Choice:
    """Per cluster and (history, target) configuration: the chosen candidate and its coefficients."""

    candidate: torch.Tensor  # (C, B) long, index into CANDIDATES
    held_out: torch.Tensor  # (C, B) float64: the chosen candidate's error on folds left out of its fit
    coefficients: torch.Tensor  # (C, B, h) float64, fitted on every fold


def _fixed_coefficients(nodes: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(B, S, h): every fixed solver's coefficients; they depend only on the offsets, so each offset pattern is
    derived once."""
    offsets = torch.cat([nodes - nodes[:, :1], (targets - nodes[:, 0]).unsqueeze(1)], dim=1)
    patterns, inverse = offsets.unique(dim=0, return_inverse=True)
    tables = torch.stack([coefficient_table(p[:-1].tolist(), float(p[-1])) for p in patterns])
    return tables[inverse]


def _quadratic(coef: torch.Tensor, a: torch.Tensor, g: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    """c'Ac - 2c'g + e over the last axes (coef (..., h), a (..., h, h), g (..., h), e (...))."""
    return torch.einsum("...i,...ij,...j->...", coef, a, coef) - 2 * (coef * g).sum(-1) + e


def _ridge(a: torch.Tensor, g: torch.Tensor, prior: torch.Tensor, alpha: float) -> torch.Tensor:
    """argmin c'Ac - 2c'g + lam |c - prior|^2 with lam = alpha x mean diagonal of A (a tiny floor keeps an all-zero
    cluster solvable: it returns the prior)."""
    h = a.shape[-1]
    lam = (alpha * a.diagonal(dim1=-2, dim2=-1).mean(-1)).clamp_min(1e-30)
    eye = torch.eye(h, dtype=a.dtype)
    return torch.linalg.solve(a + lam[..., None, None] * eye, (g + lam[..., None] * prior).unsqueeze(-1)).squeeze(-1)


def choose(
    grams: torch.Tensor,
    nodes: torch.Tensor,
    targets: torch.Tensor,
    *,
    learned: bool = True,
    allowed: Sequence[str] = SOLVERS,
) -> Choice:
    """The best forecast per cluster for each configuration (history ``nodes`` (B, h), newest first, forecasting
    step ``targets`` (B,)), judged by held-out error: the sum over folds of the error on that fold of a fit to the
    others. Fixed solvers fit nothing, so theirs is their whole error. Ties go to the earlier (simpler) candidate.
    """
    folds, clusters = grams.shape[:2]
    learned = learned and folds >= 2
    fixed = _fixed_coefficients(nodes, targets)  # (B, S, h)
    rows = nodes.unsqueeze(-1)
    a = grams[:, :, rows, nodes.unsqueeze(1)]  # (F, C, B, h, h)
    g = grams[:, :, nodes, targets.unsqueeze(1)]  # (F, C, B, h)
    e = grams[:, :, targets, targets]  # (F, C, B)
    fixed_error = _quadratic(fixed, a.unsqueeze(3), g.unsqueeze(3), e.unsqueeze(3))  # (F, C, B, S)
    mask = torch.tensor([name not in allowed for name in SOLVERS])
    total = fixed_error.sum(0).masked_fill(mask, torch.inf)  # (C, B, S)
    scores = [total]
    points = min(nodes.shape[1], LEARNED_POINTS)
    # A learned forecast starts from the best fixed solver that reads no more than it may.
    too_wide = ~(fixed[..., points:] == 0).all(-1)  # (B, S)

    def pad(coef: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.pad(coef, (0, nodes.shape[1] - points))

    if learned:
        a_all, g_all = a.sum(0)[..., :points, :points], g.sum(0)[..., :points]
        a_train, g_train = a_all - a[..., :points, :points], g_all - g[..., :points]
        train_best = (total - fixed_error).masked_fill(too_wide, torch.inf).argmin(-1)  # (F, C, B): each fold's prior
        prior = fixed.expand(folds, clusters, *fixed.shape).gather(
            3, train_best[..., None, None].expand(*train_best.shape, 1, fixed.shape[-1])
        )[..., 0, :points]
        fits = [pad(_ridge(a_train, g_train, prior, alpha)) for alpha in RIDGE_ALPHAS]
        scores.append(torch.stack([_quadratic(c, a, g, e).sum(0) for c in fits], -1))
    score = torch.cat(scores, -1)  # (C, B, candidates)
    # Errors within TIE_TOLERANCE of the best, or below 1e-12 of the target's energy (rounding), tie.
    slack = (score.min(-1).values * TIE_TOLERANCE).clamp_min(1e-12 * e.sum(0)) + 1e-300
    candidate = (score <= (score.min(-1).values + slack).unsqueeze(-1)).int().argmax(-1)
    held_out = score.gather(-1, candidate.unsqueeze(-1)).squeeze(-1)

    solver = candidate.clamp_max(len(SOLVERS) - 1)
    batch = torch.arange(nodes.shape[0]).expand(clusters, -1)
    coefficients = fixed[batch, solver]  # (C, B, h)
    if learned and bool((candidate >= len(SOLVERS)).any()):
        prior = fixed[batch, total.masked_fill(too_wide, torch.inf).argmin(-1)][..., :points]
        for k, alpha in enumerate(RIDGE_ALPHAS):
            use = candidate == len(SOLVERS) + k
            if use.any():
                coefficients[use] = pad(_ridge(a_all, g_all, prior, alpha))[use]
    return Choice(candidate, held_out, coefficients)


def choose_batched(grams: torch.Tensor, nodes: torch.Tensor, targets: torch.Tensor, **kwargs) -> Choice:
    """``choose`` over blocks of configurations (memory stays bounded for a long schedule's cost table)."""
    parts = [
        choose(grams, nodes[i : i + _BATCH], targets[i : i + _BATCH], **kwargs) for i in range(0, len(targets), _BATCH)
    ]
    fields = ("candidate", "held_out", "coefficients")
    return Choice(*(torch.cat([getattr(p, f) for p in parts], dim=1) for f in fields))


@dataclass
class ScheduleFit:
    """The forecasts of one schedule: per cluster and step, coefficients over the newest ``HISTORY`` full steps."""

    schedule: list[bool]
    coefficients: torch.Tensor  # (C, T, HISTORY) float64, zero at full steps
    candidate: torch.Tensor  # (C, T) long into CANDIDATES, -1 at full steps
    held_out: torch.Tensor  # (C, T) float64, step-weighted, zero at full steps

    @property
    def error(self) -> float:
        return float(self.held_out.sum())


def fit_schedule(
    grams: torch.Tensor,
    schedule: Sequence[bool],
    step_weights: Sequence[float] | None = None,
    **kwargs,
) -> ScheduleFit:
    """Choose every skipped step's forecast, per cluster, exactly as the runtime will replay ``schedule``: the
    forecast at step t reads the newest ``HISTORY`` full steps before it."""
    clusters, steps = grams.shape[1], grams.shape[2]
    if len(schedule) != steps:
        raise ValueError(f"a {len(schedule)}-step schedule for a {steps}-step recording")
    if not schedule[0]:
        raise ValueError("the first step must be full: nothing precedes it to forecast from")
    weights = torch.ones(steps, dtype=torch.float64) if step_weights is None else torch.tensor(step_weights).double()
    coefficients = torch.zeros(clusters, steps, HISTORY, dtype=torch.float64)
    candidate = torch.full((clusters, steps), -1, dtype=torch.long)
    held_out = torch.zeros(clusters, steps, dtype=torch.float64)
    by_length: dict[int, list[tuple[list[int], int]]] = {}
    past: list[int] = []
    for t, full in enumerate(schedule):
        if full:
            past = [t, *past][:HISTORY]
        else:
            by_length.setdefault(len(past), []).append((past, t))
    for h, configs in by_length.items():
        targets = torch.tensor([t for _, t in configs])
        choice = choose_batched(grams, torch.tensor([n for n, _ in configs]), targets, **kwargs)
        coefficients[:, targets, :h] = choice.coefficients
        candidate[:, targets] = choice.candidate
        held_out[:, targets] = choice.held_out * weights[targets]
    return ScheduleFit(list(schedule), coefficients, candidate, held_out)


def skip_cost_table(
    grams: torch.Tensor, max_gap: int, step_weights: Sequence[float] | None = None, **kwargs
) -> torch.Tensor:
    """(T, G+1, G+1, G) float64 for ``schedule.optimize_schedule``: ``cost[a, g1, g2, d]`` is the step-weighted
    held-out error, summed over clusters, of skipping step a+d when the newest full steps are a, a-g1 and a-g1-g2
    (a gap of 0: no such step). Three history points, where the runtime may use four: the search's state stays
    small, and the chosen schedule is fitted again with the full history. Unreachable entries are inf; steps past
    the end cost nothing."""
    steps = grams.shape[2]
    weights = torch.ones(steps, dtype=torch.float64) if step_weights is None else torch.tensor(step_weights).double()
    cost = torch.full((steps, max_gap + 1, max_gap + 1, max_gap), torch.inf, dtype=torch.float64)
    configs: dict[int, list[tuple[tuple[int, ...], tuple[int, int, int, int]]]] = {}
    for a in range(steps):
        for g1 in range(max_gap + 1):
            for g2 in range(max_gap + 1 if g1 else 1):
                # Reachable only as a schedule builds them: the history ends at step 0, the first full step.
                if (g1 == 0) != (a == 0) or (g1 and (g2 == 0) != (a == g1)) or a - g1 - g2 < 0:
                    continue
                nodes = (a,) + ((a - g1,) if g1 else ()) + ((a - g1 - g2,) if g2 else ())
                cost[a, g1, g2, 1:] = 0.0
                for d in range(1, max_gap):
                    if a + d < steps:
                        configs.setdefault(len(nodes), []).append((nodes, (a, g1, g2, d)))
    for configs_h in configs.values():
        nodes = torch.tensor([n for n, _ in configs_h])
        where = torch.tensor([w for _, w in configs_h])
        targets = where[:, 0] + where[:, 3]
        choice = choose_batched(grams, nodes, targets, **kwargs)
        cost[where[:, 0], where[:, 1], where[:, 2], where[:, 3]] = choice.held_out.sum(0) * weights[targets]
    return cost

"""HyCa's candidate solvers: linear forecasts of a feature from its values at past full steps.

Every solver maps history samples ``F_0`` (newest, at time ``t_0``), ``F_1`` (``t_1 < t_0``), ... to a
forecast at a target time ``t > t_0`` (time is the denoising step index). Each is written once, as a
readable scalar formula over general (possibly non-uniform) node times. Because each formula is
linear in the values, its coefficients are *derived* by evaluating it on unit vectors, so the
per-channel coefficient tables the runtime multiplies with the cached history reproduce the formulas
by construction, and a forecast is one multiply-add per history slot whatever the solver.

The derivative-based solvers (Adams-Bashforth, BDF2, predictor-corrector) see the feature only
through first-order backward differences ``d_i = (F_i - F_{i+1}) / (t_i - t_{i+1})`` assigned to node
``t_i``; those estimates are exact only for linear trajectories, which caps their exact degree at 1.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch

Forecast = Callable[[Sequence[float], Sequence[float], float], float]


def _slope(values: Sequence[float], times: Sequence[float], i: int) -> float:
    """First-order backward difference d_i = (F_i - F_{i+1}) / (t_i - t_{i+1}), assigned to t_i."""
    return (values[i] - values[i + 1]) / (times[i] - times[i + 1])


def reuse(values: Sequence[float], times: Sequence[float], target: float) -> float:
    """Order 0 (FORA): the newest value."""
    return values[0]


def taylor1(values: Sequence[float], times: Sequence[float], target: float) -> float:
    """Newton divided-difference extrapolation of degree 1 through (t_0, F_0), (t_1, F_1)."""
    return values[0] + (target - times[0]) * _slope(values, times, 0)


def taylor2(values: Sequence[float], times: Sequence[float], target: float) -> float:
    """Newton divided-difference extrapolation of degree 2 through the three newest points."""
    d01 = _slope(values, times, 0)
    d12 = _slope(values, times, 1)
    d012 = (d01 - d12) / (times[0] - times[2])
    return values[0] + (target - times[0]) * d01 + (target - times[0]) * (target - times[1]) * d012


def ab2(values: Sequence[float], times: Sequence[float], target: float) -> float:
    """Variable-step Adams-Bashforth 2: integrate the line through (t_0, d_0), (t_1, d_1) over [t_0, t]."""
    d0, d1 = _slope(values, times, 0), _slope(values, times, 1)
    h = target - times[0]
    return values[0] + h * d0 + h * h / 2 * (d0 - d1) / (times[0] - times[1])


def ab3(values: Sequence[float], times: Sequence[float], target: float) -> float:
    """Variable-step Adams-Bashforth 3: integrate the parabola through (t_i, d_i), i < 3, over [t_0, t].

    With u = s - t_0 the parabola is d_0 + u [d_0,d_1] + u (u + t_0 - t_1) [d_0,d_1,d_2], whose integral
    over u in [0, h] gives the three terms below.
    """
    t0, t1, t2 = times[0], times[1], times[2]
    d0, d1, d2 = (_slope(values, times, i) for i in range(3))
    dd01 = (d0 - d1) / (t0 - t1)
    dd012 = (dd01 - (d1 - d2) / (t1 - t2)) / (t0 - t2)
    h = target - t0
    return values[0] + h * d0 + h * h / 2 * dd01 + (h**3 / 3 + (t0 - t1) * h * h / 2) * dd012


def bdf2(values: Sequence[float], times: Sequence[float], target: float) -> float:
    """Variable-step BDF2 on nodes (t_1, t_0, t), with f(t) predicted by extrapolating d_0, d_1 linearly.

    F(t) - (1+w)^2/(1+2w) F_0 + w^2/(1+2w) F_1 = h (1+w)/(1+2w) f(t),  h = t - t_0,  w = h / (t_0 - t_1).
    """
    d0, d1 = _slope(values, times, 0), _slope(values, times, 1)
    h = target - times[0]
    w = h / (times[0] - times[1])
    f_pred = d0 + h * (d0 - d1) / (times[0] - times[1])
    return ((1 + w) ** 2 * values[0] - w * w * values[1] + h * (1 + w) * f_pred) / (1 + 2 * w)


def pc(values: Sequence[float], times: Sequence[float], target: float) -> float:
    """Heun / Adams-Moulton predictor-corrector: AB2 predicts, the trapezoid rule corrects.

    The derivative at the target is read off the predictor, f* = (P - F_0) / h.
    """
    predicted = ab2(values, times, target)
    h = target - times[0]
    f_star = (predicted - values[0]) / h
    return values[0] + h / 2 * (_slope(values, times, 0) + f_star)


@dataclass(frozen=True)
class Solver:
    """A named forecast formula, the history it needs and the polynomial degree it reproduces."""

    name: str
    points: int
    exact_degree: int
    fn: Forecast


SOLVERS: tuple[str, ...] = ("reuse", "taylor1", "taylor2", "ab2", "ab3", "bdf2", "pc")

_REGISTRY: dict[str, Solver] = {
    s.name: s
    for s in (
        Solver("reuse", 1, 0, reuse),
        Solver("taylor1", 2, 1, taylor1),
        Solver("taylor2", 3, 2, taylor2),
        Solver("ab2", 3, 1, ab2),
        Solver("ab3", 4, 1, ab3),
        Solver("bdf2", 3, 1, bdf2),
        Solver("pc", 3, 1, pc),
    )
}

# Early in the schedule the history is short: each solver degrades to the best one that fits.
_FALLBACK: dict[str, str] = {
    "taylor1": "reuse",
    "taylor2": "taylor1",
    "ab2": "taylor1",
    "ab3": "ab2",
    "bdf2": "taylor1",
    "pc": "taylor1",
}


def get_solver(name: str) -> Solver:
    """The solver called ``name``; a ValueError lists the known names."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown solver {name!r}; known solvers: {', '.join(SOLVERS)}") from None


def resolve_solver(name: str, available: int) -> Solver:
    """The solver actually used for ``name`` when only ``available`` history points exist."""
    solver = get_solver(name)
    while solver.points > available:
        solver = _REGISTRY[_FALLBACK[solver.name]]
    return solver


def _check_nodes(times: tuple[float, ...], target: float) -> None:
    if not times:
        raise ValueError("a forecast needs at least one history point")
    if not all(math.isfinite(t) for t in (*times, target)):
        raise ValueError(f"history times and target must be finite, got {times} -> {target}")
    if any(a <= b for a, b in zip(times, times[1:])):
        raise ValueError(f"history times must be strictly decreasing (newest first), got {times}")
    if target <= times[0]:
        raise ValueError(f"target {target} must lie after the newest history time {times[0]}")


@functools.lru_cache(maxsize=4096)
def _coefficients(name: str, times: tuple[float, ...], target: float) -> tuple[float, ...]:
    """Coefficients of ``name`` over ``times``: its formula applied to each unit vector."""
    _check_nodes(times, target)
    solver = resolve_solver(name, len(times))
    nodes = times[: solver.points]
    coeffs = []
    for j in range(solver.points):
        unit = [1.0 if i == j else 0.0 for i in range(solver.points)]
        coeffs.append(float(solver.fn(unit, nodes, target)))
    return tuple(coeffs) + (0.0,) * (len(times) - solver.points)


def _key(times: Sequence[float], target: float) -> tuple[tuple[float, ...], float]:
    return tuple(float(t) for t in times), float(target)


def solver_coefficients(name: str, times: Sequence[float], target: float) -> torch.Tensor:
    """float64 (len(times),): forecast = sum_j c_j F_j. Unused slots are zero; short history falls back."""
    get_solver(name)
    return torch.tensor(_coefficients(name, *_key(times, target)), dtype=torch.float64)


def coefficient_table(times: Sequence[float], target: float) -> torch.Tensor:
    """float64 (len(SOLVERS), len(times)): row s holds the coefficients of SOLVERS[s].

    The runtime builds this once per skipped step and gathers each channel's row by its solver index.
    """
    key = _key(times, target)
    return torch.tensor([_coefficients(name, *key) for name in SOLVERS], dtype=torch.float64)


def max_points(solver_names: Iterable[str]) -> int:
    """History length that lets every named solver run without falling back (1 for no solvers)."""
    return max((get_solver(name).points for name in solver_names), default=1)

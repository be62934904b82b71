"""HyCa solvers: declared exactness is tight, tables reproduce the formulas, fallbacks, textbook values."""

from __future__ import annotations

import random

import pytest
import torch

from hyca_batch.cache.solvers import (
    SOLVERS,
    coefficient_table,
    get_solver,
    max_points,
    solver_coefficients,
)

NODE_SETS = {
    "uniform6": [18.0, 12.0, 6.0, 0.0],
    "uniform1": [3.0, 2.0, 1.0, 0.0],
    "nonuniform": [20.0, 13.0, 9.0, 2.0],
    "warmup_then_sparse": [12.0, 2.0, 1.0, 0.0],
}
TARGETS = (1.0, 2.5, 5.0, 11.0)  # offsets past the newest node


def _poly(coeffs: list[float]):
    return lambda s: sum(c * s**i for i, c in enumerate(coeffs))


def _random_poly(rng: random.Random, degree: int) -> list[float]:
    coeffs = [rng.uniform(-1, 1) for _ in range(degree + 1)]
    if degree > 0:  # a leading coefficient away from zero makes the polynomial generic of that degree
        coeffs[-1] = rng.choice([-1, 1]) * rng.uniform(0.5, 1.5)
    return coeffs


def test_public_names_and_order():
    assert SOLVERS == ("reuse", "taylor1", "taylor2", "ab2", "ab3", "bdf2", "pc")
    declared = {n: (get_solver(n).points, get_solver(n).exact_degree) for n in SOLVERS}
    assert declared == {
        "reuse": (1, 0),
        "taylor1": (2, 1),
        "taylor2": (3, 2),
        "ab2": (3, 1),
        "ab3": (4, 1),
        "bdf2": (3, 1),
        "pc": (3, 1),
    }


def _case(rng: random.Random, degree: int, nodes, offset: float):
    """A random polynomial of ``degree`` sampled at ``nodes``, its target, and the tolerance scale."""
    p = _poly(_random_poly(rng, degree))
    target = nodes[0] + offset
    values = [p(t) for t in nodes]
    return p, target, values, 1 + max(abs(v) for v in values) + abs(p(target))


@pytest.mark.parametrize("name", SOLVERS)
def test_exact_up_to_declared_degree(name):
    solver = get_solver(name)
    rng = random.Random(SOLVERS.index(name))
    for degree in range(solver.exact_degree + 1):
        for nodes in NODE_SETS.values():
            for offset in TARGETS:
                p, target, values, scale = _case(rng, degree, nodes, offset)
                assert solver.fn(values, nodes, target) == pytest.approx(p(target), abs=1e-10 * scale)
                coef = solver_coefficients(name, nodes, target)
                assert float(coef @ torch.tensor(values, dtype=torch.float64)) == pytest.approx(
                    p(target), abs=1e-10 * scale
                )


@pytest.mark.parametrize("name", SOLVERS)
def test_not_exact_on_next_degree(name):
    solver = get_solver(name)
    rng = random.Random(100 + SOLVERS.index(name))
    degree = solver.exact_degree + 1
    for nodes in NODE_SETS.values():
        for offset in TARGETS:
            p, target, values, scale = _case(rng, degree, nodes, offset)
            assert abs(solver.fn(values, nodes, target) - p(target)) > 1e-6 * scale, (name, nodes, offset)


@pytest.mark.parametrize("nodes", list(NODE_SETS.values()), ids=list(NODE_SETS))
def test_table_reproduces_formulas_on_random_histories(nodes):
    rng = random.Random(3)
    for offset in TARGETS:
        target = nodes[0] + offset
        table = coefficient_table(nodes, target)
        assert table.dtype == torch.float64 and table.shape == (len(SOLVERS), len(nodes))
        for _ in range(5):
            values = [rng.gauss(0, 3) for _ in nodes]
            got = table @ torch.tensor(values, dtype=torch.float64)
            for row, name in enumerate(SOLVERS):
                solver = get_solver(name)
                want = solver.fn(values[: solver.points], nodes[: solver.points], target)
                assert float(got[row]) == pytest.approx(want, rel=1e-12, abs=1e-12)
                assert torch.equal(table[row], solver_coefficients(name, nodes, target))


@pytest.mark.parametrize("length", [1, 2, 3, 4, 6])
def test_rows_sum_to_one(length):
    nodes = [float(5 * (length - i)) for i in range(length)]
    for offset in TARGETS:
        table = coefficient_table(nodes, nodes[0] + offset)
        torch.testing.assert_close(table.sum(1), torch.ones(len(SOLVERS), dtype=torch.float64))


def test_declared_points_are_tight():
    """Each solver reads exactly ``points`` slots: the last one matters, any beyond it get zero."""
    nodes, target = [18.0, 12.0, 6.0, 0.0, -6.0], 21.0
    for name in SOLVERS:
        points = get_solver(name).points
        coef = solver_coefficients(name, nodes, target)
        assert coef[points - 1] != 0, name
        assert torch.all(coef[points:] == 0), name


def test_fallback_when_history_is_short():
    def row(name, nodes):
        return solver_coefficients(name, nodes, nodes[0] + 3)

    one, two, three = [12.0], [12.0, 6.0], [12.0, 6.0, 0.0]
    for name in SOLVERS:
        torch.testing.assert_close(row(name, one), torch.ones(1, dtype=torch.float64))
    for name in ("taylor2", "ab2", "ab3", "bdf2", "pc"):
        assert torch.equal(row(name, two), row("taylor1", two)), name
    assert torch.equal(row("ab3", three), row("ab2", three))
    assert not torch.equal(row("taylor2", three), row("taylor1", three))
    assert not torch.equal(row("taylor1", two), row("reuse", two))


@pytest.mark.parametrize("interval", [1, 3, 6])
def test_textbook_coefficients(interval):
    n = float(interval)
    t0 = 4 * n
    nodes = [t0, t0 - n, t0 - 2 * n, t0 - 3 * n]

    def coef(name, j, length=4):
        return solver_coefficients(name, nodes[:length], t0 + j).tolist()

    for j in range(1, interval + 1):
        assert coef("taylor1", j, 2) == pytest.approx([1 + j / n, -j / n])
    # One full interval ahead (j = N), the classic constant-step formulas:
    assert coef("taylor2", n) == pytest.approx([3, -3, 1, 0])
    # AB2: F0 + N (3/2 d0 - 1/2 d1), d_i = (F_i - F_{i+1}) / N
    assert coef("ab2", n) == pytest.approx([5 / 2, -2, 1 / 2, 0])
    # AB3: F0 + N (23/12 d0 - 16/12 d1 + 5/12 d2)
    assert coef("ab3", n) == pytest.approx([35 / 12, -39 / 12, 21 / 12, -5 / 12])
    # BDF2 (w = 1): (4 F0 - F1 + 2 N f) / 3 with f = 2 d0 - d1
    assert coef("bdf2", n) == pytest.approx([8 / 3, -7 / 3, 2 / 3, 0])
    # Heun: F0 + N/2 (d0 + (P - F0)/N), P the AB2 forecast
    assert coef("pc", n) == pytest.approx([9 / 4, -3 / 2, 1 / 4, 0])
    assert coef("reuse", n) == [1, 0, 0, 0]


def test_unknown_name_and_bad_nodes():
    with pytest.raises(ValueError) as err:
        get_solver("rk4")
    assert "rk4" in str(err.value) and all(name in str(err.value) for name in SOLVERS)
    with pytest.raises(ValueError, match="rk4"):
        solver_coefficients("rk4", [1.0, 0.0], 2.0)
    with pytest.raises(ValueError, match="rk4"):
        max_points(["reuse", "rk4"])
    with pytest.raises(ValueError, match="after"):
        coefficient_table([6.0, 0.0], 6.0)
    with pytest.raises(ValueError, match="decreasing"):
        coefficient_table([0.0, 6.0], 9.0)
    with pytest.raises(ValueError, match="at least one"):
        coefficient_table([], 1.0)


def test_max_points():
    assert max_points(["reuse"]) == 1
    assert max_points(["taylor1", "reuse"]) == 2
    assert max_points(["pc", "bdf2"]) == 3
    assert max_points(SOLVERS) == 4
    assert max_points([]) == 1

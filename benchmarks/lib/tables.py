"""Number helpers both benchmark scripts fill their rows and tables with: a mean of possibly no values, a format of
possibly no value (a measurement that did not happen shows as ``-``, not as an error)."""

from __future__ import annotations

from collections.abc import Sequence


def mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def fmt(value: float | None, spec: str = ".3g", none: str = "-") -> str:
    return none if value is None else format(value, spec)

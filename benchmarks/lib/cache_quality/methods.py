"""The compared methods: our FeatureCache modes at every N, diffusers' TaylorSeer at every N (its schedule computed
as its hook does, to check it engaged) and FirstBlockCache per threshold, cache-dit's DBCache with each calibrator
at every N (our schedule as its steps mask) and per threshold, and the order the table lists them in."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from benchmarks.lib.cache_quality.peers import CACHE_DIT_CALIBRATORS, method_name

#: diffusers' TaylorSeer cannot forecast before its first refresh: 1 is the fewest warmup steps it takes.
DIFFUSERS_TAYLORSEER_WARMUP = 1
#: HyCa's parts, switched on one at a time: hyca-v1 is the per-cluster solver on the uniform schedule (before per-step
#: forecasts); hyca is the default (calibrated schedule, learned forecasts, clustering by held-out error).
HYCA_VARIANTS: dict[str, dict[str, Any]] = {
    "hyca-v1": {"schedule": "uniform", "forecasts": "fixed", "clustering": "descriptors", "per_step": False},
    "hyca-uniform-fixed": {"schedule": "uniform", "forecasts": "fixed", "clustering": "auto"},
    "hyca-uniform-learned": {"schedule": "uniform", "forecasts": "learned", "clustering": "auto"},
    "hyca-calibrated-fixed": {"schedule": "calibrated", "forecasts": "fixed", "clustering": "auto"},
    "hyca": {"schedule": "calibrated", "forecasts": "learned", "clustering": "auto"},
}
OUR_METHODS = ("fora", "taylorseer-o1", "taylorseer-o2", "foca", *HYCA_VARIANTS)
DIFFUSERS_TAYLORSEER_METHODS = ("diffusers-taylorseer-o1", "diffusers-taylorseer-o2")
CACHE_DIT_METHODS = tuple(method_name(c) for c in CACHE_DIT_CALIBRATORS)


@dataclass(frozen=True)
class Method:
    name: str
    family: str  # "hyca_batch" (our FeatureCache), "diffusers" or "cache-dit"
    interval: int | None  # None: adaptive (FirstBlockCache, cache-dit with a threshold)
    params: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)


def build_methods(
    intervals: Sequence[int],
    fbc_thresholds: Sequence[float],
    with_diffusers: bool,
    cache_dit_calibrators: Sequence[str] = (),
    cache_dit_thresholds: Sequence[float] = (),
    hyca_budgets: Sequence[int] = (),
) -> list[Method]:
    """Every (method, N); cache-dit's only for the calibrators given (none: no cache-dit methods); hyca at each
    budget of full steps (``hyca-k<K>``: the default hyca with ``--full-steps K``, no N)."""
    methods: list[Method] = [
        Method(budget_name(k), "hyca_batch", None, {"mode": "hyca", **HYCA_VARIANTS["hyca"], "full_steps": k})
        for k in hyca_budgets
    ]
    for n in intervals:
        methods += [
            Method("fora", "hyca_batch", n, {"mode": "fora"}),
            Method("taylorseer-o1", "hyca_batch", n, {"mode": "taylorseer", "taylorseer_order": 1}),
            Method("taylorseer-o2", "hyca_batch", n, {"mode": "taylorseer", "taylorseer_order": 2}),
            Method("foca", "hyca_batch", n, {"mode": "foca"}),
            *(Method(name, "hyca_batch", n, {"mode": "hyca", **parts}) for name, parts in HYCA_VARIANTS.items()),
        ]
        if with_diffusers:
            for order in (1, 2):
                methods.append(
                    Method(
                        f"diffusers-taylorseer-o{order}",
                        "diffusers",
                        n,
                        {
                            "cache": "TaylorSeerCacheConfig",
                            "cache_interval": n,
                            "max_order": order,
                            "disable_cache_before_step": DIFFUSERS_TAYLORSEER_WARMUP,
                        },
                    )
                )
        for calibrator in cache_dit_calibrators:
            methods.append(
                Method(method_name(calibrator), "cache-dit", n, {"cache": "DBCache", "calibrator": calibrator})
            )
    if with_diffusers:
        for threshold in fbc_thresholds:
            methods.append(
                Method(
                    f"diffusers-fbc-{threshold:g}",
                    "diffusers",
                    None,
                    {"cache": "FirstBlockCacheConfig", "threshold": threshold},
                )
            )
    for calibrator in cache_dit_calibrators:
        for threshold in cache_dit_thresholds:
            methods.append(
                Method(
                    method_name(calibrator, threshold),
                    "cache-dit",
                    None,
                    {"cache": "DBCache", "calibrator": calibrator, "residual_diff_threshold": threshold},
                )
            )
    return methods


def _threshold(name: str) -> float:
    try:
        return float(name.rsplit("-", 1)[1].lstrip("r"))
    except ValueError:
        return 0.0


def budget_name(full_steps: int) -> str:
    return f"hyca-k{full_steps}"


def method_order(name: str) -> tuple[int, float, str]:
    """Our modes (hyca variants, ``hyca-*``, after hyca), diffusers' TaylorSeer, cache-dit at N, then the adaptive
    ones: FirstBlockCache by threshold, cache-dit by calibrator and threshold."""
    known = (*OUR_METHODS, *DIFFUSERS_TAYLORSEER_METHODS, *CACHE_DIT_METHODS)
    if name in known:
        rank = known.index(name)
        return (rank + (1 if rank > OUR_METHODS.index("hyca") else 0), 0.0, name)
    if name.startswith("hyca"):
        return (OUR_METHODS.index("hyca") + 1, 0.0, name)
    if name.startswith("diffusers-fbc-"):
        return (len(known) + 1, _threshold(name), name)
    for i, base in enumerate(CACHE_DIT_METHODS):
        if name.startswith(f"{base}-r"):
            return (len(known) + 2 + i, _threshold(name), name)
    return (len(known) + 2 + len(CACHE_DIT_METHODS), 0.0, name)


def row_order(row: dict) -> tuple:
    n = row["interval"]
    return (n is None, n or 0, *method_order(row["method"]))


def diffusers_taylorseer_expected_refreshes(steps: int, interval: int, warmup: int) -> int:
    """Passes where diffusers' TaylorSeer computes (its own schedule, copied from TaylorSeerCacheHook)."""
    return sum(1 for s in range(steps) if s < warmup or (s - warmup - 1) % interval == 0)

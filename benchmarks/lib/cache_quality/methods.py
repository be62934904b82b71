"""The compared methods: our FeatureCache modes at every N, diffusers' TaylorSeer at every N (its schedule computed
as its hook does, to check it engaged) and FirstBlockCache per threshold, and the order the table lists them in."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

#: diffusers' TaylorSeer cannot forecast before its first refresh: 1 is the fewest warmup steps it takes.
DIFFUSERS_TAYLORSEER_WARMUP = 1
OUR_METHODS = ("fora", "taylorseer-o1", "taylorseer-o2", "foca", "hyca")
DIFFUSERS_TAYLORSEER_METHODS = ("diffusers-taylorseer-o1", "diffusers-taylorseer-o2")


@dataclass(frozen=True)
class Method:
    name: str
    family: str  # "hyca_batch" (our FeatureCache) or "diffusers"
    interval: int | None  # None: adaptive (FirstBlockCache)
    params: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)


def build_methods(intervals: Sequence[int], fbc_thresholds: Sequence[float], with_diffusers: bool) -> list[Method]:
    methods: list[Method] = []
    for n in intervals:
        methods += [
            Method("fora", "hyca_batch", n, {"mode": "fora"}),
            Method("taylorseer-o1", "hyca_batch", n, {"mode": "taylorseer", "taylorseer_order": 1}),
            Method("taylorseer-o2", "hyca_batch", n, {"mode": "taylorseer", "taylorseer_order": 2}),
            Method("foca", "hyca_batch", n, {"mode": "foca"}),
            Method("hyca", "hyca_batch", n, {"mode": "hyca"}),
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
    return methods


def method_order(name: str) -> tuple[int, float, str]:
    """Our modes, then diffusers' TaylorSeer, then FirstBlockCache by threshold."""
    known = (*OUR_METHODS, *DIFFUSERS_TAYLORSEER_METHODS)
    if name in known:
        return (known.index(name), 0.0, name)
    if name.startswith("diffusers-fbc-"):
        return (len(known), float(name.rsplit("-", 1)[1]), name)
    return (len(known) + 1, 0.0, name)


def row_order(row: dict) -> tuple:
    n = row["interval"]
    return (n is None, n or 0, *method_order(row["method"]))


def diffusers_taylorseer_expected_refreshes(steps: int, interval: int, warmup: int) -> int:
    """Passes where diffusers' TaylorSeer computes (its own schedule, copied from TaylorSeerCacheHook)."""
    return sum(1 for s in range(steps) if s < warmup or (s - warmup - 1) % interval == 0)

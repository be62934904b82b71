"""How one video is spread over a replica's devices: the sequence-parallel degrees and their limits."""

from __future__ import annotations

import math
from dataclasses import dataclass

ATTENTION_BACKENDS = ("auto", "torch", "xfuser")


@dataclass(frozen=True)
class ParallelConfig:
    """``sp`` ranks per replica, as ``ulysses`` (all-to-all over heads) x ``ring`` (KV passed around).

    Ulysses moves each token once per attention and needs the heads to divide among its ranks; ring
    has no such limit but passes every KV block around. So the default is as much Ulysses as the
    heads allow (``ulysses=None``, ``ring=None``), which is xDiT's advice too.
    """

    sp: int = 1
    ulysses: int | None = None
    ring: int | None = None
    attention: str = "auto"  # auto: xfuser's USP on CUDA when it imports, else the torch kernel
    timeout_s: float = 600.0  # every collective; a dead or hung rank fails the video instead of hanging

    def __post_init__(self) -> None:
        if self.sp < 1:
            raise ValueError(f"--sp must be >= 1, got {self.sp}")
        for name in ("ulysses", "ring"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"--{name} must be >= 1, got {value}")
        if self.ulysses is not None and self.ring is not None and self.ulysses * self.ring != self.sp:
            raise ValueError(f"--ulysses {self.ulysses} x --ring {self.ring} must equal --sp {self.sp}")
        for name in ("ulysses", "ring"):
            value = getattr(self, name)
            if value is not None and self.sp % value:
                raise ValueError(f"--{name} {value} must divide --sp {self.sp}")
        if self.attention not in ATTENTION_BACKENDS:
            raise ValueError(f"attention backend {self.attention!r}; choose from {', '.join(ATTENTION_BACKENDS)}")
        if self.timeout_s <= 0:
            raise ValueError(f"the collective timeout must be > 0 s, got {self.timeout_s}")

    def degrees(self, heads: int) -> tuple[int, int]:
        """(ulysses, ring) for a model with ``heads`` attention heads; a clear error if they do not fit."""
        if self.ulysses is not None:
            ulysses = self.ulysses
        elif self.ring is not None:
            ulysses = self.sp // self.ring
        else:
            ulysses = math.gcd(self.sp, heads)
        ring = self.sp // ulysses
        if heads % ulysses:
            raise ValueError(
                f"--ulysses {ulysses} does not divide the model's {heads} attention heads; "
                f"use a Ulysses degree that divides {heads} and make up --sp {self.sp} with --ring"
            )
        return ulysses, ring

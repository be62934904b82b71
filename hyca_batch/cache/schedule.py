"""Which denoising steps run the transformer fully: the one rule the hooks, calibration and the benchmarks share.

Calibration replays the schedule on a probe's recording to score each solver, so its choices are only right
while the runtime skips exactly the same steps; both call this module.
"""

from __future__ import annotations


def is_full_step(step: int, interval: int, warmup: int = 0) -> bool:
    """Step ``step`` (0-based) is computed fully: in the warm-up, or every ``interval``-th step (1: every step)."""
    return step < warmup or step % interval == 0


def schedule_full_steps(num_steps: int, interval: int, warmup: int = 0) -> list[bool]:
    """``is_full_step`` for every step of a ``num_steps`` loop."""
    if num_steps < 1 or interval < 1 or warmup < 0:
        raise ValueError(f"need num_steps >= 1, interval >= 1, warmup >= 0; got {num_steps}, {interval}, {warmup}")
    return [is_full_step(t, interval, warmup) for t in range(num_steps)]

"""Sizes and the step schedule: a size's video tokens, which steps the cache computes fully, the history depth
each forecast uses, and the prefix of the schedule that measures every depth (the derived loop)."""

from __future__ import annotations

from collections.abc import Sequence

from hyca_batch.cache.schedule import schedule_full_steps


def size_name(size: Sequence[int]) -> str:
    """HEIGHTxWIDTHxFRAMES, as on the command line."""
    return "x".join(map(str, size))


def video_tokens(size: Sequence[int], config: dict, spatial: int = 8, temporal: int = 4) -> int:
    """Video tokens of a size: latent frames and cells (the VAE's ``spatial`` x ``temporal`` compression, 8 x 4 for
    HunyuanVideo, 16 x 4 for HunyuanVideo 1.5) over the transformer's patch."""
    h, w, f = size
    p, pt = config["patch_size"], config["patch_size_t"]
    return ((f - 1) // temporal + 1) // pt * (h // spatial // p) * (w // spatial // p)


def schedule(steps: int, mode: str, interval: int) -> list[bool]:
    """Which of ``steps`` steps the cache computes fully (the hooks' own rule: ``hyca_batch.cache.schedule``)."""
    return [True] * steps if mode == "none" else schedule_full_steps(steps, interval)


def depths(full: Sequence[bool], cap: int) -> list[int]:
    """Per step: the history depth a forecast at that step uses (full steps before it, capped); 0 for full steps."""
    seen, out = 0, []
    for is_full in full:
        out.append(0 if is_full else min(seen, cap))
        seen += is_full
    return out


def prefix_steps(steps: int, mode: str, interval: int, history: int) -> int:
    """Steps of the schedule to run so that every history depth the cache reaches is measured once."""
    if mode == "none":
        return min(steps, 2)  # a warm-up pass and a timed one
    full = schedule(steps, mode, interval)
    d = depths(full, max(1, history))
    deepest = max(d) if any(d) else 0
    for k, depth in enumerate(d):
        if depth == deepest and not full[k]:
            # ... and the next step too when it is skipped: two passes at the deepest depth, no extra full pass
            return k + 2 if k + 1 < steps and not full[k + 1] else k + 1
    return steps

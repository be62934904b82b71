"""Synthetic captioned clips for the ``mini`` model: one colored shape moving on a plain background.

Each clip is a (color, shape, motion, background) combination plus random placement, size and speed,
drawn from a seed, with a prompt that says what it shows ("a red circle moving left on a black
background"). Everything is numpy and deterministic: ``make_clip(spec)`` is a pure function of the
spec and ``sample_specs(n, seed, split)`` of its arguments.

A fixed set of (color, shape, motion) triples is held out of training (``is_held_out``); every color,
shape and motion, and every pair of them, still occurs in training, so a held-out prompt is a new
composition of known words. ``measure_clip`` reads color and motion back from frames (generated or
drawn) for the learned-model test and for evaluation during training.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import product

import numpy as np

HEIGHT = 64
WIDTH = 64
NUM_FRAMES = 9

# Foreground colors: six hues spread around the wheel, so "dominant foreground hue" is unambiguous.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (225, 35, 35),
    "yellow": (235, 215, 30),
    "green": (40, 190, 60),
    "cyan": (30, 210, 220),
    "blue": (35, 75, 230),
    "purple": (165, 50, 215),
}
# Backgrounds: achromatic, so no background word is also a foreground color word.
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "black": (15, 15, 15),
    "gray": (120, 120, 120),
    "white": (240, 240, 240),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
MOTIONS: tuple[str, ...] = ("left", "right", "up", "down", "grow", "shrink")
_MOTION_WORDS = {
    "left": "moving left",
    "right": "moving right",
    "up": "moving up",
    "down": "moving down",
    "grow": "growing",
    "shrink": "shrinking",
}

SPLITS = ("train", "heldout")


@dataclass(frozen=True)
class ClipSpec:
    color: str
    shape: str
    motion: str
    background: str
    # Placement: center (x, y) and half-size r, at the first and at the last frame (pixels).
    x0: float
    y0: float
    r0: float
    x1: float
    y1: float
    r1: float

    @property
    def prompt(self) -> str:
        return make_prompt(self.color, self.shape, self.motion, self.background)


def make_prompt(color: str, shape: str, motion: str, background: str) -> str:
    return f"a {color} {shape} {_MOTION_WORDS[motion]} on a {background} background"


def is_held_out(color: str, shape: str, motion: str) -> bool:
    """18 of the 108 (color, shape, motion) triples: for each (color, shape) pair exactly one motion,
    each motion three times; every pair of words still appears together in training."""
    ci, si, mi = list(COLORS).index(color), SHAPES.index(shape), MOTIONS.index(motion)
    return (ci + 2 * si + mi) % 6 == 0


def combinations(split: str) -> list[tuple[str, str, str, str]]:
    """All (color, shape, motion, background) combinations of ``split`` ("train" or "heldout")."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    want = split == "heldout"
    return [
        (c, s, m, b) for c, s, m, b in product(COLORS, SHAPES, MOTIONS, BACKGROUNDS) if is_held_out(c, s, m) == want
    ]


def prompts(split: str) -> list[str]:
    return [make_prompt(*combo) for combo in combinations(split)]


def heldout_test_combinations() -> list[tuple[str, str, str, str]]:
    """One combination per held-out (color, shape, motion) triple, backgrounds rotating: 18 prompts
    the model never saw, each a new composition of words it did see (the learned-model test)."""
    triples: dict[tuple[str, str, str], list[tuple[str, str, str, str]]] = {}
    for combo in combinations("heldout"):
        triples.setdefault(combo[:3], []).append(combo)
    return [options[i % len(options)] for i, options in enumerate(triples.values())]


def random_spec(rng: np.random.Generator, color: str, shape: str, motion: str, background: str) -> ClipSpec:
    """Random placement for one combination: moves travel 20-26 px through the middle of the frame,
    size changes go between half-sizes of about 4-6 and 12-15 px around the middle.

    Placement varies by a few pixels only. With objects anywhere in the frame (the first version) a
    clip's start position was a free choice the model had to make and keep consistent across frames;
    after 3,000 steps the mini transformer drew growing and shrinking objects (always central) right
    and moving ones as scattered fragments, training prompts included. What the model must learn from
    the prompt (color, shape, motion, background) is unchanged.
    """
    mid = WIDTH / 2
    if motion in ("grow", "shrink"):
        small, big = rng.uniform(4.0, 6.0), rng.uniform(12.0, 15.0)
        cx, cy = mid + rng.uniform(-4.0, 4.0, size=2)
        r0, r1 = (small, big) if motion == "grow" else (big, small)
        return ClipSpec(color, shape, motion, background, cx, cy, r0, cx, cy, r1)
    r = rng.uniform(7.0, 10.0)
    d = rng.uniform(20.0, 26.0)
    center = mid + rng.uniform(-4.0, 4.0)  # of the path, along the motion
    across = mid + rng.uniform(-6.0, 6.0)
    sign = -1.0 if motion in ("left", "up") else 1.0
    start, end = center - sign * d / 2, center + sign * d / 2
    if motion in ("left", "right"):
        return ClipSpec(color, shape, motion, background, start, across, r, end, across, r)
    return ClipSpec(color, shape, motion, background, across, start, r, across, end, r)


def sample_specs(n: int, seed: int, split: str = "train") -> list[ClipSpec]:
    """``n`` clips of ``split``, cycling through its combinations in a seeded shuffled order."""
    rng = np.random.default_rng(seed)
    combos = combinations(split)
    specs: list[ClipSpec] = []
    while len(specs) < n:
        for i in rng.permutation(len(combos)):
            if len(specs) == n:
                break
            specs.append(random_spec(rng, *combos[i]))
    return specs


def _shape_mask(shape: str, cx: float, cy: float, r: float, supersample: int = 4) -> np.ndarray:
    """Anti-aliased coverage in [0, 1] of one shape, (H, W), by supersampling the pixel grid."""
    k = supersample
    ys = (np.arange(HEIGHT * k) + 0.5) / k
    xs = (np.arange(WIDTH * k) + 0.5) / k
    dx = xs[None, :] - cx
    dy = ys[:, None] - cy
    if shape == "circle":
        inside = dx**2 + dy**2 <= r**2
    elif shape == "square":
        side = r * 0.88  # about the circle's area
        inside = (np.abs(dx) <= side) & (np.abs(dy) <= side)
    elif shape == "triangle":  # apex up, base at the bottom
        half = 1.15 * r
        t = (dy + half) / (2 * half)  # 0 at the apex, 1 at the base
        inside = (t >= 0) & (t <= 1) & (np.abs(dx) <= t * half * 1.15)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return inside.reshape(HEIGHT, k, WIDTH, k).mean(axis=(1, 3))


def make_clip(spec: ClipSpec) -> np.ndarray:
    """The clip for ``spec``: (F, H, W, 3) uint8 RGB, the object moving linearly from start to end."""
    bg = np.asarray(BACKGROUNDS[spec.background], dtype=np.float32)
    fg = np.asarray(COLORS[spec.color], dtype=np.float32)
    frames = np.empty((NUM_FRAMES, HEIGHT, WIDTH, 3), dtype=np.uint8)
    for f in range(NUM_FRAMES):
        a = f / (NUM_FRAMES - 1)
        cx = (1 - a) * spec.x0 + a * spec.x1
        cy = (1 - a) * spec.y0 + a * spec.y1
        r = (1 - a) * spec.r0 + a * spec.r1
        m = _shape_mask(spec.shape, cx, cy, r)[..., None]
        frames[f] = np.round(m * fg + (1 - m) * bg).astype(np.uint8)
    return frames


@dataclass(frozen=True)
class ClipMeasurement:
    color: str | None  # nearest foreground palette color of the foreground pixels; None: no foreground
    motion: str | None
    dx: float  # centroid shift, last frames minus first frames (pixels; +x right, +y down)
    dy: float
    log_area_ratio: float
    foreground_fraction: float


def measure_clip(frames: np.ndarray, threshold: float = 60.0) -> ClipMeasurement:
    """Read the dominant foreground color and the motion back from (F, H, W, 3) uint8 frames.

    The background is the median color of the frame borders; foreground pixels differ from it by
    more than ``threshold`` (RGB distance, 0-255 scale). Color: the palette color nearest the mean
    foreground pixel. Motion: the centroid shift and the log area ratio between the first and the last
    three frames; a move of the centroid (normalized by 20 px) beats a size change (normalized by a
    log area ratio of 1.0) or vice versa.
    """
    x = frames.astype(np.float32)
    border = np.concatenate([x[:, 0, :], x[:, -1, :], x[:, :, 0], x[:, :, -1]], axis=1).reshape(-1, 3)
    bg = np.median(border, axis=0)
    mask = np.linalg.norm(x - bg, axis=-1) > threshold  # (F, H, W)
    fraction = float(mask.mean())
    if mask.sum() < 4:
        return ClipMeasurement(None, None, 0.0, 0.0, 0.0, fraction)
    mean_fg = x[mask].mean(axis=0)
    names = list(COLORS)
    palette = np.asarray([COLORS[n] for n in names], dtype=np.float32)
    color = names[int(np.argmin(np.linalg.norm(palette - mean_fg, axis=1)))]

    ys, xs = (
        np.mgrid[0:HEIGHT, 0:WIDTH]
        if frames.shape[1:3] == (HEIGHT, WIDTH)
        else np.mgrid[0 : frames.shape[1], 0 : frames.shape[2]]
    )
    areas, cxs, cys = [], [], []
    for m in mask:
        a = float(m.sum())
        areas.append(a)
        cxs.append(float((xs * m).sum() / a) if a else np.nan)
        cys.append(float((ys * m).sum() / a) if a else np.nan)
    areas_a, cxs_a, cys_a = np.asarray(areas), np.asarray(cxs), np.asarray(cys)
    k = max(1, len(frames) // 3)
    dx = float(np.nanmean(cxs_a[-k:]) - np.nanmean(cxs_a[:k])) if np.isfinite(cxs_a).any() else 0.0
    dy = float(np.nanmean(cys_a[-k:]) - np.nanmean(cys_a[:k])) if np.isfinite(cys_a).any() else 0.0
    dx, dy = (0.0 if np.isnan(dx) else dx), (0.0 if np.isnan(dy) else dy)
    ratio = float(np.log((areas_a[-k:].mean() + 1.0) / (areas_a[:k].mean() + 1.0)))
    move, size = max(abs(dx), abs(dy)) / 20.0, abs(ratio) / 1.0
    if size > move:
        motion = "grow" if ratio > 0 else "shrink"
    elif abs(dx) >= abs(dy):
        motion = "right" if dx > 0 else "left"
    else:
        motion = "down" if dy > 0 else "up"
    return ClipMeasurement(color, motion, dx, dy, ratio, fraction)


def parse_prompt(prompt: str) -> tuple[str, str, str, str]:
    """(color, shape, motion, background) of a prompt made by ``make_prompt``."""
    for combo in product(COLORS, SHAPES, MOTIONS, BACKGROUNDS):
        if make_prompt(*combo) == prompt:
            return combo
    raise ValueError(f"not a synthetic-clip prompt: {prompt!r}")

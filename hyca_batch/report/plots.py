"""The report's figures (matplotlib, headless), each returned as PNG bytes for embedding in the page.

One figure per question a reader asks: what does a video cost, where did the device-hours go, what
did the cache save, how fast were the videos, how large was the speedup. Runs are always side by side
in the same order and colors.
"""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")  # no display on a cluster node or in CI

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from hyca_batch.report.costs import CATEGORIES, RunCosts, hours_unit  # noqa: E402
from hyca_batch.report.format import fmt  # noqa: E402

_COLORS = plt.get_cmap("tab10").colors
_CATEGORY_COLORS = dict(zip(CATEGORIES, plt.get_cmap("tab20").colors))


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def cost_per_video(runs: list[RunCosts]) -> bytes:
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), layout="constrained")
    labels = [r.label for r in runs]
    for ax, key, title, ylabel in (
        (axes[0], "cost_per_video_usd", "Cost per video", "USD per video"),
        (axes[1], "cost_per_video_second_usd", "Cost per second of generated video", "USD per video-second"),
    ):
        values = [r.summary[key] or 0.0 for r in runs]
        bars = ax.bar(labels, values, color=_COLORS[: len(runs)])
        ax.bar_label(bars, labels=[fmt(v, "usd") for v in values], padding=2, fontsize=9)
        ax.set_title(title)
        ax.set_ylabel(ylabel)
        ax.set_ylim(0, max(values + [1e-9]) * 1.2)
        ax.tick_params(axis="x", rotation=15)
    fig.supxlabel("Everything charged: model loading, start-up, idle and failed tries included", fontsize=9)
    return _png(fig)


def breakdown(runs: list[RunCosts]) -> bytes:
    fig, ax = plt.subplots(figsize=(10, 2.0 + 0.6 * len(runs)), layout="constrained")
    labels = [r.label for r in runs]
    left = [0.0] * len(runs)
    for c, name in CATEGORIES.items():
        values = [r.summary[f"hours_{c}"] for r in runs]
        if not any(values):
            continue
        ax.barh(labels, values, left=left, label=name, color=_CATEGORY_COLORS[c])
        left = [a + b for a, b in zip(left, values)]
    ax.invert_yaxis()
    ax.set_xlabel(hours_unit(runs))
    ax.set_title("Where the device-hours went")
    fig.legend(loc="outside lower center", ncol=4, fontsize=8, frameon=False)
    return _png(fig)


def savings(runs: list[RunCosts]) -> bytes:
    fig, ax = plt.subplots(figsize=(10, 3.4))
    x = range(len(runs))
    bills = [r.summary["bill_usd"] for r in runs]
    uncached = [r.summary["uncached_estimate_usd"] for r in runs]
    width = 0.38
    a = ax.bar([i - width / 2 for i in x], uncached, width, label="estimated uncached bill", color="#bbbbbb")
    b = ax.bar([i + width / 2 for i in x], bills, width, label="actual bill", color=_COLORS[0])
    ax.bar_label(a, labels=[fmt(v, "usd") for v in uncached], padding=2, fontsize=8)
    ax.bar_label(b, labels=[fmt(v, "usd") for v in bills], padding=2, fontsize=8)
    ax.set_xticks(list(x), [r.label for r in runs])
    ax.set_ylabel("USD for the run")
    ax.set_ylim(0, max(uncached + [1e-9]) * 1.2)
    ax.set_title("The bill against the same videos uncached")
    ax.legend(fontsize=8)
    return _png(fig)


def seconds_per_video(runs: list[RunCosts]) -> bytes:
    fig, ax = plt.subplots(figsize=(10, 3.4))
    data = [[v for v in r.videos.column("total_s").to_pylist() if v is not None] or [0.0] for r in runs]
    parts = ax.boxplot(data, patch_artist=True, showfliers=True)
    for patch, color in zip(parts["boxes"], _COLORS):
        patch.set_facecolor(color)
        patch.set_alpha(0.6)
    ax.set_xticks(range(1, len(runs) + 1), [r.label for r in runs])
    ax.set_ylabel("seconds per video (one replica)")
    ax.set_ylim(bottom=0)
    ax.set_title("Time per video, start to commit")
    return _png(fig)


def speedups(runs: list[RunCosts]) -> bytes | None:
    """Histogram of each cached run's speedups; None when no run used a cache."""
    cached = [(i, r) for i, r in enumerate(runs) if any(r.videos.column("cached").to_pylist())]
    if not cached:
        return None
    fig, ax = plt.subplots(figsize=(10, 3.4))
    for i, r in cached:
        est = [v for v in r.videos.column("speedup_estimate").to_pylist() if v is not None]
        ax.hist(est, bins=20, alpha=0.55, color=_COLORS[i % len(_COLORS)], label=f"{r.label} (estimated)")
        measured = [v for v in r.videos.column("measured_speedup").to_pylist() if v is not None]
        if measured:
            ax.plot(
                measured,
                [0] * len(measured),
                "v",
                color=_COLORS[i % len(_COLORS)],
                markersize=9,
                label=f"{r.label} (measured against an uncached run)",
                clip_on=False,
            )
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_xlabel("denoising speedup against uncached (x)")
    ax.set_ylabel("videos")
    ax.set_title("Speedup from feature caching")
    ax.legend(fontsize=8)
    return _png(fig)


def all_figures(runs: list[RunCosts]) -> dict[str, bytes]:
    figures = {
        "cost_per_video": cost_per_video(runs),
        "breakdown": breakdown(runs),
        "savings": savings(runs),
        "seconds_per_video": seconds_per_video(runs),
    }
    speedup = speedups(runs)
    if speedup is not None:
        figures["speedups"] = speedup
    return figures

"""The benchmark's figure: fidelity against compute, one line per method.

Left: PSNR of the decoded frames against the block-compute fraction (attention and MLP sub-computations that ran /
the uncached run's); right: the relative L2 of the final latents (log scale) against the same axis. Each of our
modes, each hyca variant (``hyca-*``, in hyca's warm colours, a line each), diffusers' TaylorSeer per order,
FirstBlockCache across its thresholds and cache-dit per calibrator (its fixed schedules one line, its thresholds a
dashed one) is a line; points at N are labelled by N, adaptive ones by their threshold. A video identical to the
uncached one (PSNR inf, error 0) cannot be drawn on these axes and is left out (the table lists it).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from benchmarks.lib.cache_quality.methods import CACHE_DIT_METHODS, OUR_METHODS, method_order

#: Our uniform modes: cool colours. hyca and its variants: warm ones (HYCA_COLOURS, in name order after hyca).
OUR_COLOURS = {"fora": "#1f77b4", "taylorseer-o1": "#17becf", "taylorseer-o2": "#2ca02c", "foca": "#7f9a0e"}
HYCA_COLOURS = ("#d62728", "#e377c2", "#8b0000", "#ff6f61", "#c71585", "#b8860b", "#ff1493", "#a0522d")
HYCA_MARKERS = ("*", "P", "h", "X", "d", "p", "H", "8")
PEER_STYLES = {
    "diffusers-taylorseer-o1": ("#7f7f7f", "s"),
    "diffusers-taylorseer-o2": ("#3a3a3a", "s"),
    "diffusers-fbc": ("#bcbd22", "D"),
    "cache-dit-dbcache": ("#8c564b", "^"),
    "cache-dit-taylorseer": ("#ff7f0e", "^"),
    "cache-dit-foca": ("#e6ab02", "^"),
    "cache-dit-dmd": ("#9467bd", "^"),
}
FALLBACK_COLOURS = ("#17a589", "#5d6d7e", "#a93226", "#2e86c1", "#7d3c98")


@dataclass(frozen=True)
class Series:
    key: str  # what the legend says
    colour: str
    marker: str
    dashed: bool = False  # adaptive (thresholds) rather than a fixed schedule
    filled: bool = True


def _cache_dit_base(name: str) -> str | None:
    return next((base for base in CACHE_DIT_METHODS if name == base or name.startswith(f"{base}-r")), None)


def series_of(row: dict, hyca_names: list[str]) -> Series:
    """The line a row belongs to, and how it is drawn."""
    name = row["method"]
    if name.startswith("hyca-k"):  # the default hyca at a budget of full steps: a point of hyca's own line
        name = "hyca"
    if name.startswith("hyca"):
        i = hyca_names.index(name) if name in hyca_names else 0
        return Series(name, HYCA_COLOURS[i % len(HYCA_COLOURS)], HYCA_MARKERS[i % len(HYCA_MARKERS)])
    if name in OUR_COLOURS:
        return Series(name, OUR_COLOURS[name], "o")
    if name.startswith("diffusers-fbc-"):
        colour, marker = PEER_STYLES["diffusers-fbc"]
        return Series("diffusers-fbc (thresholds)", colour, marker, dashed=True)
    base = _cache_dit_base(name)
    if base is not None:
        colour, marker = PEER_STYLES[base]
        if row["interval"] is None:
            return Series(f"{base} (thresholds)", colour, "v", dashed=True, filled=False)
        return Series(base, colour, marker)
    if name in PEER_STYLES:
        return Series(name, *PEER_STYLES[name])
    colour = FALLBACK_COLOURS[sum(map(ord, name)) % len(FALLBACK_COLOURS)]
    return Series(name, colour, "o" if row["family"] == "hyca_batch" else "s")


def _point_label(row: dict) -> str:
    if row["interval"] is not None:
        return str(row["interval"])
    if row["params"].get("full_steps"):
        return f"K={row['params']['full_steps']}"
    threshold = row["params"].get("threshold", row["params"].get("residual_diff_threshold"))
    return f"{threshold:g}" if threshold is not None else ""


def write_plot(result: dict, path: Path) -> Path:
    """Draw ``result`` (the benchmark's JSON) to the PNG ``path``."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    rows = [r for r in result["rows"] if r.get("block_compute_fraction") is not None]
    hyca_names = sorted(
        {r["method"] for r in rows if r["method"].startswith("hyca") and not r["method"].startswith("hyca-k")},
        key=lambda n: (n != "hyca", n),
    )
    groups: dict[Series, list[dict]] = {}
    for row in rows:
        groups.setdefault(series_of(row, hyca_names), []).append(row)
    order = sorted(groups, key=lambda s: (s.dashed, method_order(groups[s][0]["method"]), s.key))

    fig = Figure(figsize=(15, 6.2), layout="constrained")
    psnr_ax, l2_ax = fig.subplots(1, 2, sharex=True)
    panels = (
        (psnr_ax, "psnr", "PSNR of the decoded frames vs uncached (dB, higher is better)", False),
        (l2_ax, "latent_rel_l2", "relative L2 of the final latents vs uncached (lower is better)", True),
    )
    left_out = [r for r in rows if r["psnr"] is None]
    for ax, key, title, log in panels:
        for series in order:
            points = sorted(
                (r["block_compute_fraction"], r[key], _point_label(r))
                for r in groups[series]
                if r[key] is not None and (not log or r[key] > 0)
            )
            if not points:
                continue
            xs, ys, labels = zip(*points)
            hyca = series.key.startswith("hyca")
            ax.plot(
                xs,
                ys,
                linestyle="--" if series.dashed else "-",
                linewidth=1.2 if not hyca else 1.8,
                color=series.colour,
                marker=series.marker,
                markersize=9 if hyca else 6,
                markerfacecolor=series.colour if series.filled else "none",
                alpha=0.9,
            )
            for x, y, label in zip(xs, ys, labels):
                ax.annotate(label, (x, y), textcoords="offset points", xytext=(4, 3), fontsize=7, color=series.colour)
        if log:
            ax.set_yscale("log")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("block-compute fraction (attention + MLP sub-computations run / uncached run's)")
        ax.set_xlim(0, 1.05)
        ax.grid(True, which="both", alpha=0.3)
    psnr_ax.set_ylabel("PSNR (dB)")
    l2_ax.set_ylabel("latent relative L2")

    handles = [
        Line2D(
            [],
            [],
            color=s.colour,
            marker=s.marker,
            linestyle="--" if s.dashed else "-",
            markerfacecolor=s.colour if s.filled else "none",
            markersize=9 if s.key.startswith("hyca") else 6,
        )
        for s in order
    ]
    legend_title = "method (labels: N, or threshold)"
    fig.legend(handles, [s.key for s in order], loc="outside right center", title=legend_title, fontsize=8)
    prompts = len(result["prompts"])
    fig.suptitle(
        f"Cache quality vs compute: model {result['model']}, {result['steps']} steps, "
        f"{result['width']}x{result['height']}x{result['num_frames']}, {prompts} prompt{'s' if prompts != 1 else ''}"
        f" (means), {result['device']}",
        fontsize=12,
    )
    notes = []
    if any(m in {r["method"] for r in rows} for m in OUR_METHODS):
        notes.append("our modes skip whole passes (fraction = full passes / steps)")
    if result.get("cache_dit"):
        notes.append(
            f"cache-dit DBCache F{result['cache_dit']['Fn_compute_blocks']}B{result['cache_dit']['Bn_compute_blocks']}"
            " computes its first block at every step"
        )
    if left_out:
        notes.append("not drawn, identical to uncached: " + ", ".join(sorted({r["method"] for r in left_out})))
    for entry in result.get("not_run") or []:  # peers that cannot run on this model (the JSON says why)
        notes.append(f"not run on {result['model']}: {entry['peer']}")
    if notes:
        fig.text(0.01, -0.01, "; ".join(notes), fontsize=8, ha="left", va="top")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    return path

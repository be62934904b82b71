"""What the benchmark writes: progress on stderr, the text table (one block of rows per N, the winners per N, the
solver maps, and the peers that did not run on the model, with why) on stdout."""

from __future__ import annotations

import sys

from benchmarks.lib.tables import fmt

METHOD_WIDTH = 28


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def format_report(result: dict) -> str:
    lines = [
        f"cache quality: model {result['model']} on {result['device']} ({result['dtype']}, "
        f"{result['torch_threads']} thread(s)), {result['steps']} steps, "
        f"{result['width']}x{result['height']}x{result['num_frames']}, {len(result['prompts'])} prompt(s), "
        f"best of {result['repeats']}+ timed pair(s); torch {result['versions']['torch']}, "
        f"diffusers {result['versions']['diffusers']}"
        + (f", cache-dit {result['versions']['cache_dit']}" if result["versions"].get("cache_dit") else ""),
        "uncached denoise, best per prompt: "
        + ", ".join(f"{r['denoise_s'] * 1000:.0f} ms" for r in result["reference"])
        + " (slowest/best of its "
        + ", ".join(f"{r['timed_runs']}" for r in result["reference"])
        + " timed runs: "
        + ", ".join(f"{r['slowest_over_best']:.1f}x" for r in result["reference"])
        + ")",
    ]
    if result.get("family", "hunyuanvideo") != "hunyuanvideo" or result.get("passes_per_step", 1) > 1:
        lines.append(
            f"family {result['family']}: {result['passes_per_step']} transformer passes per step "
            + ("(classifier-free guidance: conditional and unconditional); " if result["passes_per_step"] > 1 else "")
            + "full, blocks and FLOPs count every pass"
        )
    cache_dit = result.get("cache_dit")
    if cache_dit:
        lines.append(
            f"cache-dit: DBCache F{cache_dit['Fn_compute_blocks']}B{cache_dit['Bn_compute_blocks']}, "
            f"{cache_dit['adapter']}; at N: our schedule as its static steps mask; -r<x>: residual_diff_threshold x"
        )
    lines += [
        f"blocks: block sub-computations (attention, MLP; {result['block_subcalls_per_pass']} per pass) that ran "
        "/ the uncached run's",
        "",
    ]
    header = (
        f"{'method':<{METHOD_WIDTH}} {'N':>2} {'full':>5} {'blocks':>6} {'FLOPs x':>7} {'meas FLOPs x':>12} "
        f"{'speedup':>7} "
        f"{'denoise ms':>10} {'PSNR dB':>7} {'SSIM':>6} {'latent rel L2':>13}"
    )
    lines += [header, "-" * len(header)]
    previous = result["rows"][0]["interval"] if result["rows"] else None
    for row in result["rows"]:
        if row["interval"] != previous:
            lines.append("")
        previous = row["interval"]
        psnr = "inf" if row["psnr"] is None else f"{row['psnr']:.2f}"
        full = f"{row['full_passes']:.1f}" if row["full_passes"] % 1 else f"{int(row['full_passes'])}"
        lines.append(
            f"{row['method']:<{METHOD_WIDTH}} {row['interval'] if row['interval'] is not None else '-':>2} "
            f"{full:>5} {fmt(row['block_compute_fraction'], '.3f'):>6} "
            f"{fmt(row['flops_ratio'], '.2f'):>7} {fmt(row['flops_ratio_measured'], '.2f'):>12} "
            f"{fmt(row['speedup'], '.2f'):>7} {row['denoise_s'] * 1000:>10.1f} {psnr:>7} "
            f"{row['ssim']:>6.4f} {row['latent_rel_l2']:>13.3e}"
        )
    lines.append("")
    lines += winners(result["rows"])
    for entry in result.get("not_run") or []:
        lines.append(f"NOT RUN on {result['model']}: {', '.join(entry['methods'])}: {entry['reason']}")
    calibration = result["calibration"]
    if calibration["maps"]:
        lines.append("")
        lines.append(
            f"hyca solver maps (calibrated on {len(calibration['prompts'])} prompts, none evaluated; "
            f"{calibration['clusters']} k-means clusters):"
        )
        for name, maps in calibration["maps"].items():
            for n, m in maps.items():
                held_out = m["held_out_error"]
                lines.append(
                    f"  {name} {n if n.startswith('K=') else 'N=' + n}: {m['solver_map_id']}, "
                    f"full steps {m['full_steps']}, {m['clustering']} clusters "
                    f"(held-out: "
                    + ", ".join(f"{k} {v:.4g}" for k, v in m["clustering_held_out"].items())
                    + f"); schedule held-out uniform {held_out['uniform_schedule']:.4g}"
                    + (
                        f", calibrated {held_out['calibrated_schedule']:.4g}"
                        if held_out["calibrated_schedule"] is not None
                        else ""
                    )
                )
    return "\n".join(lines)


def winners(rows: list[dict]) -> list[str]:
    """Per N: the lowest latent error overall, and among our modes (which all cost the same FLOPs)."""
    lines = []
    for n in sorted({r["interval"] for r in rows if r["interval"] is not None}):
        at_n = [r for r in rows if r["interval"] == n]
        best = min(at_n, key=lambda r: r["latent_rel_l2"])
        ours = sorted((r for r in at_n if r["family"] == "hyca_batch"), key=lambda r: r["latent_rel_l2"])
        line = f"N={n}: lowest latent rel L2: {best['method']} ({best['latent_rel_l2']:.3e})"
        if ours and ours[0] is not best:
            line += f"; among our modes (same FLOPs): {ours[0]['method']} ({ours[0]['latent_rel_l2']:.3e})"
        hyca = next((i for i, r in enumerate(ours) if r["method"] == "hyca"), None)
        if hyca is not None:
            line += f"; hyca ranks {hyca + 1}/{len(ours)} of our modes"
        lines.append(line)
    return lines

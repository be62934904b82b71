"""``hyca-batch``: the command line, a thin layer over the job, the calibration and the cost report.

Every option that configures something is derived from the config dataclasses (``options``); only a command's
own arguments are declared here.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import typer
from rich.console import Console
from rich.table import Table

from hyca_batch.cli.options import config_options, help_of, with_options
from hyca_batch.config import (
    CacheConfig,
    CalibrationConfig,
    JobConfig,
    ParallelConfig,
    ResourceConfig,
    config_from_options,
)
from hyca_batch.job import JobError, JobSummary, PlanCounts, dry_run, run_job
from hyca_batch.manifest import ManifestError, check_size
from hyca_batch.models import resolve_model
from hyca_batch.report import PriceError, PriceTable, build_report, load_run
from hyca_batch.report.format import fmt
from hyca_batch.runtime import RankFailure, RankSetup, open_backend
from hyca_batch.storage import StorageError
from hyca_batch.types import GenerationDefaults, Request

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    help="Batch text-to-video generation on Ray.",
)
console = Console(stderr=True)


# In the mini model's vocabulary (hyca_batch.training.synthetic); the last one is a held-out
# composition it never saw in training.
DEMO_PROMPTS = [
    ("a red circle moving right on a black background", "moves"),
    ("a green square moving up on a white background", "moves"),
    ("a yellow triangle growing on a gray background", "sizes"),
    ("a purple triangle moving down on a white background", "held-out"),
]


def print_summary(summary: JobSummary) -> None:
    table = Table(title=f"run {summary.run_id}", show_header=True, header_style="bold")
    table.add_column("rows", justify="right")
    table.add_column("done", justify="right", style="green")
    table.add_column("skipped", justify="right")
    table.add_column("failed", justify="right", style="red")
    table.add_column("rejected", justify="right", style="red")
    table.add_column("videos/min", justify="right")
    table.add_column("s/video", justify="right")
    table.add_column("speedup", justify="right")
    cells = [
        str(summary.total_rows),
        str(summary.done),
        str(summary.skipped),
        str(summary.failed + summary.exhausted),
        str(summary.rejected),
        f"{summary.videos_per_minute:.1f}",
        f"{summary.mean_seconds_per_video:.2f}",
        f"{summary.mean_speedup:.2f}x" if summary.speedup_count else "-",
    ]
    if summary.baselines:  # --baseline-every: what the cache measurably bought, and what it cost in fidelity
        table.add_column("measured", justify="right")
        table.add_column("PSNR", justify="right")
        cells += [f"{summary.mean_measured_speedup:.2f}x", f"{summary.mean_psnr:.1f} dB"]
    table.add_row(*cells)
    console.print(table)
    for line in summary.failures[:20]:
        console.print(f"  [red]x[/red] {line}", markup=True, highlight=False)
    more = len(summary.failures) - 20 + summary.failures_more
    if more > 0:
        console.print(f"  ... and {more} more: see {summary.out}/errors/")
    console.print(f"videos:  {summary.out}/videos/\nrecords: {summary.out}/records/\nrun:     {summary.out}/run.json")


def _fail(exc: BaseException) -> typer.Exit:
    console.print(f"[bold red]error:[/bold red] {exc}", highlight=False)
    return typer.Exit(2)


def plan_estimate(counts: PlanCounts, s3_endpoint_url: str | None = None) -> dict[str, Any] | None:
    """Device-hours and cost of the pending videos, at what this output's earlier runs cost per video (the cost
    report's numbers, priced by the default table). None for an output with no video yet: nothing measured."""
    if not counts.pending:
        return None
    try:
        summary = load_run(counts.out, PriceTable.build(), s3_endpoint_url=s3_endpoint_url).summary
    except (FileNotFoundError, PriceError, StorageError, ValueError):
        return None
    if not summary["videos"] or not summary["device_hours"]:
        return None
    per_video_h = summary["device_hours"] / summary["videos"]
    return {
        "basis": f"{summary['videos']} videos already in this output on {summary['device']}",
        "device_unit": summary["device_unit"],
        "device_hours": per_video_h * counts.pending,
        "cost_usd": summary["bill_usd"] / summary["videos"] * counts.pending,
    }


def print_plan(counts: PlanCounts, estimate: dict[str, Any] | None) -> None:
    table = Table(title=f"plan for {counts.out}", show_header=True, header_style="bold")
    for name in ("rows", "merged", "rejected", "committed", "exhausted", "to generate"):
        table.add_column(name, justify="right")
    table.add_row(
        *(str(v) for v in (counts.rows, counts.merged_duplicates, counts.rejected, counts.committed, counts.exhausted)),
        f"{counts.pending}" + (f" ({counts.retrying} retried)" if counts.retrying else ""),
    )
    console.print(table)
    for reason, n in counts.rejected_by_reason.items():
        console.print(f"  [red]{n}[/red] x {reason}, e.g.", markup=True, highlight=False)
        for example in counts.rejected_examples[reason]:
            console.print(f"      {example}", markup=False, highlight=False, soft_wrap=True)  # paths unbroken
    if estimate is not None:
        console.print(
            f"estimate: {estimate['device_hours']:.3g} {estimate['device_unit']}, ${estimate['cost_usd']:,.2f} "
            f"(at the cost per video of the {estimate['basis']}; the default prices)"
        )
    elif counts.pending:
        console.print("estimate: none yet: this output has no video to time; run a few rows first")
    console.print(
        f"model {counts.model}; a video of the default size may take {counts.video_timeout_s:.0f} s (--video-timeout); "
        "nothing was written (--dry-run)"
    )


def _run(config: JobConfig, force: bool, strict: bool) -> JobSummary:
    try:
        summary = run_job(config, force=force)
    except (ManifestError, JobError, StorageError, ValueError, OSError) as exc:
        raise _fail(exc) from exc
    print_summary(summary)
    if strict and not summary.ok:
        raise typer.Exit(1)
    return summary


@app.command()
@with_options(
    config_options(JobConfig, skip=["manifests", "out"]),
    config_options(GenerationDefaults, optional=True, help_suffix=" Default for rows that do not set it."),
    config_options(CacheConfig),
    config_options(CalibrationConfig),
    config_options(ParallelConfig),
    config_options(ResourceConfig),
)
def run(
    manifests: list[str] = typer.Argument(..., help=help_of(JobConfig, "manifests")),
    out: str = typer.Option(..., "--out", "-o", help=help_of(JobConfig, "out")),
    force: bool = typer.Option(False, help="Write into an output made with a different configuration."),
    strict: bool = typer.Option(False, help="Exit 1 when any row failed or was rejected."),
    dry: bool = typer.Option(
        False, "--dry-run", help="Validate and plan as a run would, print the plan, and write nothing to --out."
    ),
    plan_json: Path | None = typer.Option(None, help="With --dry-run: also write the plan to this JSON file."),
    **options: Any,
) -> None:
    """Generate one video per manifest row; a re-run into the same --out resumes."""
    try:
        config = JobConfig.from_options(manifests=manifests, out=out, **options)
    except ValueError as exc:
        raise _fail(exc) from exc
    if plan_json is not None and not dry:
        raise _fail(ValueError("--plan-json needs --dry-run"))
    if dry:
        try:
            counts = dry_run(config, force=force)
        except (ManifestError, JobError, StorageError, ValueError, OSError) as exc:
            raise _fail(exc) from exc
        estimate = plan_estimate(counts, config.s3_endpoint_url)
        print_plan(counts, estimate)
        if plan_json is not None:
            plan_json.write_text(json.dumps({**counts.to_json(), "estimate": estimate}, indent=2) + "\n")
        if strict and counts.rejected + counts.exhausted:
            raise typer.Exit(1)
        return
    _run(config, force, strict)


@app.command()
@with_options(
    config_options(JobConfig, only=["model"]),
    config_options(
        GenerationDefaults,
        only=["height", "width", "num_frames", "num_inference_steps"],
        optional=True,
        help_suffix=" The probe's (default: the model's).",
    ),
    config_options(CacheConfig, only=["interval", "warmup", "granularity"]),
    config_options(CalibrationConfig, flags={"calibration_seed": "seed"}),
    config_options(ResourceConfig, only=["device"]),
    config_options(ParallelConfig, only=["sp", "ulysses", "ring"]),
)
def calibrate(
    out: str = typer.Option(
        ..., "--out", "-o", help="Solver map file to write (.safetensors; a .json goes beside it)."
    ),
    prompt: list[str] = typer.Option(
        ["a red circle moving left on a blue background", "a green square moving up on a gray background"],
        help="Probe prompt (repeatable); each is a fold of the held-out error that picks learned forecasts.",
    ),
    **options: Any,
) -> None:
    """Build a HyCa solver map for a model at a resolution: a probe run, channel clustering, a solver per cluster."""
    try:
        spec = resolve_model(options["model"])
        d = spec.defaults.merged(**{k: options[k] for k in ("height", "width", "num_frames", "num_inference_steps")})
        bad = check_size(d.height, d.width, d.num_frames)
        if bad:
            raise ValueError("; ".join(f"{f} {m}" for f, m in bad))
        seed = options["calibration_seed"]
        requests = [Request.with_defaults(d, id=f"probe{i}", prompt=p, seed=seed + i) for i, p in enumerate(prompt)]
        cache = config_from_options(CacheConfig, options)
        calibration = config_from_options(CalibrationConfig, options)
        setup = RankSetup(model=spec, parallel=config_from_options(ParallelConfig, options), device=options["device"])
        console.print(f"probing {spec.name} at {d.width}x{d.height}x{d.num_frames}, {d.num_inference_steps} steps")
        with open_backend(setup) as backend:
            smap = backend.calibrate(requests, cache, calibration)
    except (ValueError, OSError, RankFailure) as exc:
        raise _fail(exc) from exc
    smap.save(out)
    table = Table(title=f"solver map {smap.id} (interval {cache.interval})")
    for column in ("cluster", "channels", "solver", "calibration error"):
        table.add_column(column, justify="right")
    counts: dict[int, int] = {}
    for clusters_of_module in smap.channel_cluster.values():
        for c in clusters_of_module.tolist():
            counts[c] = counts.get(c, 0) + 1
    chosen = smap.cluster_solver.tolist()
    for c, s_idx in enumerate(chosen):
        table.add_row(str(c), str(counts.get(c, 0)), smap.solvers[s_idx], f"{float(smap.cluster_error[c, s_idx]):.4g}")
    console.print(table)
    mixed = sum(float(smap.cluster_error[c, s_idx]) for c, s_idx in enumerate(chosen))
    per_solver = smap.cluster_error.sum(dim=0)
    best = int(per_solver.argmin())
    console.print(
        f"total calibration error: hyca {mixed:.4g}, best uniform solver {smap.solvers[best]} "
        f"{float(per_solver[best]):.4g}"
    )
    md = smap.metadata
    held_out = md["held_out_error"]
    calibrated = held_out["calibrated_schedule"]
    console.print(
        f"per-step forecasts ({md['forecasts']}, {md['clustering']} clusters): "
        + ", ".join(f"{name} {n}" for name, n in md["step_forecasts"].items())
        + f"; {md['schedule']} schedule, full steps {md['full_steps']}; held-out error "
        f"{held_out['uniform_schedule']:.4g} on the uniform schedule"
        + (f", {calibrated:.4g} on the calibrated one" if calibrated is not None else "")
    )
    console.print(f"wrote {out} and {Path(out).with_suffix('.json')}")


@app.command()
def report(
    runs: list[str] = typer.Argument(
        ..., help="Run outputs (the --out of `hyca-batch run`): directories or s3:// URIs."
    ),
    out: str = typer.Option(..., "--out", "-o", help="Where to write report.html, summary.csv and summary.parquet."),
    gpu_price: list[str] = typer.Option(
        [],
        "--gpu-price",
        help="NAME=USD per device-hour, e.g. H100=2.49 (repeatable; NAME matches any device whose name contains it).",
    ),
    prices: Path | None = typer.Option(None, help='JSON file of prices: {"H100": 2.49, "cpu": 0.04}.'),
    s3_endpoint_url: str | None = typer.Option(None, help=help_of(JobConfig, "s3_endpoint_url")),
) -> None:
    """What the runs cost: the bill, cost per video, where the device-hours went, what the cache saved."""
    try:
        result = build_report(runs, out, PriceTable.build(prices, gpu_price), s3_endpoint_url=s3_endpoint_url)
    except (PriceError, FileNotFoundError, StorageError, ValueError, OSError) as exc:
        raise _fail(exc) from exc
    table = Table(title="cost per video", header_style="bold")
    columns = [
        ("run", "run", "text"),
        ("videos", "videos", "int"),
        ("failed", "failed", "int"),
        ("device_hours", "device-h", "hours"),
        ("bill_usd", "bill", "usd"),
        ("cost_per_video_usd", "per video", "usd"),
        ("mean_speedup_estimate", "speedup", "x"),
        ("mean_measured_speedup", "measured", "x"),
        ("mean_psnr", "PSNR", "db"),
        ("saved_usd", "saved", "usd"),
    ]
    for key, name, _ in columns:
        table.add_column(name, justify="left" if key == "run" else "right", no_wrap=True)
    for r in result.runs:
        table.add_row(*[fmt(r.summary[key], kind) for key, _, kind in columns])
    # Off a terminal (a log, `ray job logs`) Rich assumes 80 columns, which would cut the numbers.
    wide = Console(stderr=True, width=max(console.width, 110))
    wide.print(table)
    wide.print("\n".join(f"wrote {f}" for f in result.files), soft_wrap=True)


@app.command()
def demo(
    out: str = typer.Option("outputs/demo", "--out", "-o", help="Output directory."),
    model: str = typer.Option("mini", help="Model preset or directory (mini: the shipped trained miniature)."),
) -> None:
    """Write a small manifest and run it end to end on a local Ray."""
    Path(out).mkdir(parents=True, exist_ok=True)
    manifest = os.path.join(out, "manifest.parquet")
    pq.write_table(
        pa.table(
            {
                "prompt": [p for p, _ in DEMO_PROMPTS],
                "category": [c for _, c in DEMO_PROMPTS],
                # Fixed seeds (1-4, not picked): the demo shows the same four videos on every machine.
                "seed": pa.array(range(1, len(DEMO_PROMPTS) + 1), type=pa.int64()),
            }
        ),
        manifest,
    )
    console.print(f"manifest: {manifest} ({len(DEMO_PROMPTS)} prompts)")
    # HyCa with every video also generated uncached: the summary and the report show the measured speedup and
    # the PSNR against the uncached video.
    config = JobConfig(manifests=[manifest], out=out, model=model, cache=CacheConfig(mode="hyca"), baseline_every=1)
    summary = _run(config, force=False, strict=True)
    report_dir = os.path.join(out, "report")
    build_report([summary.out], report_dir)
    console.print(f"cost report: {report_dir}/report.html (`hyca-batch report {out} --out {report_dir}` rewrites it)")
    console.print(f"[bold green]demo finished[/bold green]: open {summary.out}/videos/*.mp4 in any player")


def main() -> None:
    logging.basicConfig(level=os.environ.get("HYCA_LOG_LEVEL", "WARNING"), format="%(levelname)s %(name)s: %(message)s")
    app()

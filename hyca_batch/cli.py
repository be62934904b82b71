"""``hyca-batch``: the command line, a thin layer over :func:`hyca_batch.runner.run_job`."""

from __future__ import annotations

import logging
import os

from pathlib import Path
from typing import Optional

import pyarrow as pa
import pyarrow.parquet as pq
import typer
from rich.console import Console
from rich.table import Table

from hyca_batch.config import JobConfig
from hyca_batch.hyca import CACHE_MODES
from hyca_batch.manifest import ManifestError
from hyca_batch.parallel import ParallelConfig, RankFailure, RankGroup, RankSetup
from hyca_batch.runner import JobError, JobSummary, run_job
from hyca_batch.storage import StorageError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    help="Batch text-to-video generation on Ray.",
)
console = Console(stderr=True)


# In the mini model's vocabulary (hyca_batch.models.synthetic); the last one is a held-out
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
    table.add_row(
        str(summary.total_rows),
        str(summary.done),
        str(summary.skipped),
        str(summary.failed + summary.exhausted),
        str(summary.rejected),
        f"{summary.videos_per_minute:.1f}",
        f"{summary.mean_seconds_per_video:.2f}",
        f"{summary.mean_speedup:.2f}x" if summary.speedups else "-",
    )
    console.print(table)
    for line in summary.failures[:20]:
        console.print(f"  [red]x[/red] {line}", markup=True, highlight=False)
    if len(summary.failures) > 20:
        console.print(f"  ... and {len(summary.failures) - 20} more: see {summary.out}/errors/")
    console.print(f"videos:  {summary.out}/videos/\nrecords: {summary.out}/records/\nrun:     {summary.out}/run.json")


def _run(config: JobConfig, force: bool, strict: bool) -> JobSummary:
    try:
        summary = run_job(config, force=force)
    except (ManifestError, JobError, StorageError, ValueError, OSError) as exc:
        console.print(f"[bold red]error:[/bold red] {exc}", highlight=False)
        raise typer.Exit(2)
    print_summary(summary)
    if strict and not summary.ok:
        raise typer.Exit(1)
    return summary


@app.command()
def run(
    manifests: list[str] = typer.Argument(..., help="Parquet manifest files, directories or globs (local or s3://)."),
    out: str = typer.Option(..., "--out", "-o", help="Output directory or s3://bucket/prefix "
                            "(videos/, records/, errors/, run.json, progress.json)."),
    s3_endpoint_url: Optional[str] = typer.Option(None, help="S3-compatible endpoint (MinIO, Ceph, R2, ...); "
                                                  "default: AWS_ENDPOINT_URL_S3, else AWS."),
    model: str = typer.Option("tiny", help="Preset (tiny, mini, hunyuanvideo), hub id, or local diffusers directory."),
    cache: str = typer.Option("none", help=f"Feature cache: {', '.join(CACHE_MODES)}."),
    interval: int = typer.Option(6, min=1, help="Cache: a full transformer pass every N steps."),
    warmup: int = typer.Option(0, min=0, help="Cache: extra full steps at the start."),
    granularity: str = typer.Option("block", help="Cache: block (per-module features) or stack (low memory)."),
    taylorseer_order: int = typer.Option(2, min=1, max=2, help="taylorseer: Taylor order (1 or 2)."),
    solver_map: Optional[str] = typer.Option(None, help="hyca: solver map from `hyca-batch calibrate` "
                                             "(default: calibrate on the first prompt, stored with the outputs)."),
    clusters: int = typer.Option(8, min=1, help="hyca calibration: channel clusters."),
    baseline_every: int = typer.Option(0, min=0, help="Also generate every K-th video uncached and record "
                                       "measured speedup, PSNR and SSIM (0: never)."),
    replicas: int = typer.Option(1, min=1, help="Model replicas (each with --sp GPUs, or one CPU slot)."),
    sp: int = typer.Option(1, "--sp", min=1, help="Sequence parallelism: GPUs per replica, one video spread over them."),
    ulysses: Optional[int] = typer.Option(None, help="SP: Ulysses degree (default: as many as the heads allow)."),
    ring: Optional[int] = typer.Option(None, help="SP: ring degree (ulysses x ring = sp)."),
    sp_attention: str = typer.Option("auto", help="SP attention: auto (xfuser on CUDA when installed), torch, xfuser."),
    sp_timeout: float = typer.Option(600.0, help="SP: seconds any collective may take before the video fails."),
    max_attempts: int = typer.Option(3, min=1, help="Tries per video, counted across re-runs."),
    address: Optional[str] = typer.Option(None, help="Ray cluster address (default: RAY_ADDRESS or a local Ray)."),
    device: Optional[str] = typer.Option(None, help="cuda or cpu (default: cuda when available)."),
    height: Optional[int] = typer.Option(None, help="Default height for rows without one."),
    width: Optional[int] = typer.Option(None, help="Default width for rows without one."),
    num_frames: Optional[int] = typer.Option(None, help="Default frame count (4k+1)."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Default num_inference_steps."),
    guidance_scale: Optional[float] = typer.Option(None, help="Default guidance scale."),
    fps: Optional[int] = typer.Option(None, help="Default frames per second."),
    cpus_per_replica: float = typer.Option(1.0, help="CPUs reserved per replica (torch threads on CPU)."),
    force: bool = typer.Option(False, help="Write into an output made with a different configuration."),
    strict: bool = typer.Option(False, help="Exit 1 when any row failed or was rejected."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
) -> None:
    """Generate one video per manifest row; a re-run into the same --out resumes."""
    if cache not in CACHE_MODES:
        raise typer.BadParameter(f"{cache!r}; choose from {', '.join(CACHE_MODES)}", param_hint="--cache")
    config = JobConfig(
        manifests=manifests,
        out=out,
        s3_endpoint_url=s3_endpoint_url,
        model=model,
        cache=cache,
        interval=interval,
        warmup=warmup,
        granularity=granularity,
        taylorseer_order=taylorseer_order,
        solver_map=solver_map,
        clusters=clusters,
        baseline_every=baseline_every,
        replicas=replicas,
        sp=sp,
        ulysses=ulysses,
        ring=ring,
        sp_attention=sp_attention,
        sp_timeout_s=sp_timeout,
        max_attempts=max_attempts,
        address=address,
        device=device,
        cpus_per_replica=cpus_per_replica,
        height=height,
        width=width,
        num_frames=num_frames,
        num_inference_steps=steps,
        guidance_scale=guidance_scale,
        fps=fps,
        progress=progress,
    )
    _run(config, force, strict)


@app.command()
def calibrate(
    out: str = typer.Option(..., "--out", "-o", help="Solver map file to write (.safetensors; a .json goes beside it)."),
    model: str = typer.Option("tiny", help="Preset, hub id, or local diffusers directory."),
    prompt: list[str] = typer.Option(["a red circle moving left on a blue background"], help="Probe prompt (repeatable)."),
    height: Optional[int] = typer.Option(None, help="Probe height (default: the model's)."),
    width: Optional[int] = typer.Option(None, help="Probe width."),
    num_frames: Optional[int] = typer.Option(None, help="Probe frame count."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Denoising steps (the map is for this many)."),
    interval: int = typer.Option(6, min=1, help="The interval the map will be used at."),
    clusters: int = typer.Option(8, min=1, help="Channel clusters."),
    warmup: int = typer.Option(0, min=0, help="Extra full steps at the start."),
    granularity: str = typer.Option("block", help="block or stack."),
    probe_tokens: int = typer.Option(512, min=1, help="Token positions sampled per feature."),
    seed: int = typer.Option(0, help="Probe noise seed, token sample and k-means seed."),
    device: Optional[str] = typer.Option(None, help="cuda or cpu (default: cuda when available)."),
    sp: int = typer.Option(1, "--sp", min=1, help="Probe on this many ranks (GPUs), for sizes one GPU cannot hold."),
    ulysses: Optional[int] = typer.Option(None, help="SP: Ulysses degree."),
    ring: Optional[int] = typer.Option(None, help="SP: ring degree."),
) -> None:
    """Build a HyCa solver map for a model at a resolution: a probe run, channel clustering, a solver per cluster."""
    from hyca_batch.hyca.probe import CalibrationConfig, calibrate_model
    from hyca_batch.manifest import Request, check_size
    from hyca_batch.models import load_model, resolve_model

    try:
        spec = resolve_model(model)
        d = spec.defaults.merged(height=height, width=width, num_frames=num_frames, num_inference_steps=steps)
        bad = check_size(d.height, d.width, d.num_frames)
        if bad:
            raise ValueError("; ".join(f"{f} {m}" for f, m in bad))
        requests = [
            Request(id=f"probe{i}", prompt=p, seed=seed + i, height=d.height, width=d.width, num_frames=d.num_frames,
                    num_inference_steps=d.num_inference_steps, guidance_scale=d.guidance_scale, fps=d.fps)
            for i, p in enumerate(prompt)
        ]
        config = CalibrationConfig(interval=interval, clusters=clusters, warmup=warmup, granularity=granularity,
                                   probe_tokens=probe_tokens, seed=seed)
        console.print(f"probing {spec.name} at {d.width}x{d.height}x{d.num_frames}, {d.num_inference_steps} steps")
        parallel = ParallelConfig(sp=sp, ulysses=ulysses, ring=ring)
        if sp > 1:
            with RankGroup(RankSetup(model=spec, parallel=parallel, device=device)) as ranks:
                smap = ranks.calibrate(requests, config)
        else:
            smap = calibrate_model(load_model(spec, device=device), requests, config)
    except (ValueError, OSError, RankFailure) as exc:
        console.print(f"[bold red]error:[/bold red] {exc}", highlight=False)
        raise typer.Exit(2)
    smap.save(out)
    table = Table(title=f"solver map {smap.id} (interval {interval})")
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
    console.print(f"total calibration error: hyca {mixed:.4g}, best uniform solver {smap.solvers[best]} "
                  f"{float(per_solver[best]):.4g}")
    console.print(f"wrote {out} and {Path(out).with_suffix('.json')}")


@app.command()
def report(
    runs: list[str] = typer.Argument(..., help="Run outputs (the --out of `hyca-batch run`): directories or s3:// URIs."),
    out: str = typer.Option(..., "--out", "-o", help="Where to write report.html, summary.csv and summary.parquet."),
    gpu_price: list[str] = typer.Option([], "--gpu-price", help="NAME=USD per device-hour, e.g. H100=2.49 "
                                        "(repeatable; NAME matches any device whose name contains it)."),
    prices: Optional[Path] = typer.Option(None, help='JSON file of prices: {"H100": 2.49, "cpu": 0.04}.'),
    s3_endpoint_url: Optional[str] = typer.Option(None, help="S3-compatible endpoint for s3:// runs and --out."),
) -> None:
    """What the runs cost: the bill, cost per video, where the device-hours went, what the cache saved."""
    from hyca_batch.report import PriceError, PriceTable, build_report
    from hyca_batch.report.format import fmt

    try:
        result = build_report(runs, out, PriceTable.build(prices, gpu_price), s3_endpoint_url=s3_endpoint_url)
    except (PriceError, FileNotFoundError, StorageError, ValueError, OSError) as exc:
        console.print(f"[bold red]error:[/bold red] {exc}", highlight=False)
        raise typer.Exit(2)
    table = Table(title="cost per video", header_style="bold")
    columns = [("run", "run", "text"), ("videos", "videos", "int"), ("failed", "failed", "int"),
               ("device_hours", "device-h", "hours"), ("bill_usd", "bill", "usd"),
               ("cost_per_video_usd", "per video", "usd"), ("mean_speedup_estimate", "speedup", "x"),
               ("saved_usd", "saved", "usd")]
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
    summary = _run(JobConfig(manifests=[manifest], out=out, model=model), force=False, strict=True)
    from hyca_batch.report import build_report

    report_dir = os.path.join(out, "report")
    build_report([summary.out], report_dir)
    console.print(f"cost report: {report_dir}/report.html (`hyca-batch report {out} --out {report_dir}` rewrites it)")
    console.print(f"[bold green]demo finished[/bold green]: open {summary.out}/videos/*.mp4 in any player")


def main() -> None:
    logging.basicConfig(level=os.environ.get("HYCA_LOG_LEVEL", "WARNING"), format="%(levelname)s %(name)s: %(message)s")
    app()


if __name__ == "__main__":
    main()

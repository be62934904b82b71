"""Sequence-parallel scaling: transformer time per step with N = 1, 2, ... ranks, measured in one run.

    .venv/bin/python benchmarks/sp_scaling.py [--sp 1 2] [--model mini] [--height 128 --width 128 --frames 17]
        [--ulysses U] [--cache none|hyca|...] [--json out.json]

Each N runs the same request through a real rank group (``hyca_batch.runtime``: one process per rank,
gloo on CPU, NCCL on GPU) with communication tracing on, and reports the mean full transformer pass,
its speedup over N=1, and the share of the pass spent blocked in communication (all-to-all, ring
exchange). On CPU the ranks get ``--threads`` each, so N=2 uses twice the cores of N=1; on a GPU
machine each rank takes one device. With a cache mode it also shows that skipped steps communicate
nothing. The tracer synchronizes around every collective, which the timings include.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
from pathlib import Path

import torch

from hyca_batch.config import CacheConfig, CalibrationConfig, ParallelConfig
from hyca_batch.models import load_model, resolve_model
from hyca_batch.pipeline.calibration import calibrate_model
from hyca_batch.runtime import RankBackend, RankSetup
from hyca_batch.types import Request


def measure(args: argparse.Namespace, sp: int, request: Request, solver_map=None) -> dict:
    parallel = ParallelConfig(sp=sp, ulysses=min(args.ulysses, sp) if args.ulysses else None, attention=args.attention)
    cache = CacheConfig(mode=args.cache, interval=args.interval)
    setup = RankSetup(
        model=resolve_model(args.model),
        parallel=parallel,
        cache=cache,
        solver_map=solver_map,
        device=args.device,
        threads=args.threads,
        trace=True,
    )
    with RankBackend(setup) as backend:
        backend.generate(request)  # warm-up: first-call allocations, kernel selection
        passes_s, comm_s, full = [], [], 0
        for _ in range(args.repeats):
            backend.generate(request)
            traces = backend.traces
            # The slowest rank sets the pace; its communication share is what it waited.
            slowest = max(traces, key=lambda t: t["pass_s_full"])
            full = slowest["full_passes"]
            passes_s.append(slowest["pass_s_full"] / full)
            comm_s.append(slowest["comm_s_full"] / full)
        info = backend.info
    step = min(passes_s)  # the least disturbed repeat
    comm = comm_s[passes_s.index(step)]
    return {
        "sp": sp,
        "ulysses": info["ulysses"],
        "ring": info["ring"],
        "attention": info["attention"],
        "device": info["device"],
        "full_step_s": step,
        "comm_s": comm,
        "comm_share": comm / step if step else 0.0,
        "collectives_per_full_step": traces[0]["calls_per_full_pass"],
        "collectives_in_skipped_steps": sum(t["calls_in_skipped_passes"] for t in traces),
        "skipped_steps": traces[0]["skipped_passes"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sp",
        type=int,
        nargs="+",
        default=None,
        help="rank counts (default: 1 and 2, and every power of 2 up to the GPUs present)",
    )
    parser.add_argument("--model", default="mini")
    parser.add_argument("--height", type=int, default=128)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--frames", type=int, default=17)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--cache", default="none", help="cache mode; with one, skipped steps are traced too")
    parser.add_argument("--interval", type=int, default=3)
    parser.add_argument("--ulysses", type=int, default=None, help="Ulysses degree cap (default: as the heads allow)")
    parser.add_argument("--attention", default="auto", help="auto, torch or xfuser")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per rank (CPU)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    gpus = torch.cuda.device_count() if args.device != "cpu" else 0
    if args.sp is None:
        most = gpus if gpus else max(2, (os.cpu_count() or 2) // args.threads)
        args.sp = [n for n in (1, 2, 4, 8) if n <= max(2, most)]
    spec = resolve_model(args.model)
    size = spec.defaults.merged(
        height=args.height, width=args.width, num_frames=args.frames, num_inference_steps=args.steps
    )
    request = Request.with_defaults(size, id="bench", prompt="a red circle moving left on a blue background", seed=0)
    print(
        f"{spec.name} at {args.width}x{args.height}x{args.frames}, {args.steps} steps, cache {args.cache}, "
        f"{f'{gpus} GPUs' if gpus else f'CPU, {args.threads} thread(s) per rank'}"
    )
    solver_map = None
    cache = CacheConfig(mode=args.cache, interval=args.interval)
    if args.cache == "hyca":  # one map for every N (calibration under SP gives the same one)
        torch.set_num_threads(args.threads)
        solver_map = calibrate_model(load_model(spec, device=args.device), [request], cache, CalibrationConfig())
    rows = []
    for sp in args.sp:
        rows.append(measure(args, sp, request, solver_map))
        r = rows[-1]
        print(f"  sp {sp}: {r['full_step_s'] * 1e3:.1f} ms per full step, {100 * r['comm_share']:.0f}% communicating")
    base = rows[0]["full_step_s"]
    print(
        f"\n{'sp':>3} {'ulysses':>7} {'ring':>4} {'step ms':>9} {'vs sp 1':>8} {'comm %':>7} {'coll/step':>9} "
        f"{'coll in skipped':>15}  attention"
    )
    for r in rows:
        r["speedup_vs_1"] = base / r["full_step_s"]
        print(
            f"{r['sp']:>3} {r['ulysses']:>7} {r['ring']:>4} {r['full_step_s'] * 1e3:>9.1f} "
            f"{r['speedup_vs_1']:>7.2f}x {100 * r['comm_share']:>6.1f}% {r['collectives_per_full_step']:>9.0f} "
            f"{r['collectives_in_skipped_steps']:>15}  {r['attention']}"
        )
    if args.json:
        result = {
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "model": spec.name,
            "size": [args.height, args.width, args.frames],
            "steps": args.steps,
            "cache": args.cache,
            "torch": torch.__version__,
            "device": torch.cuda.get_device_name(0) if gpus else "cpu",
            "threads_per_rank": args.threads,
            "rows": rows,
        }
        args.json.write_text(json.dumps(result, indent=2))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()

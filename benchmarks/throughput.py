"""Throughput of the batch job with 1 and R replicas, measured in one run on one Ray session.

    .venv/bin/python benchmarks/throughput.py --videos 8 --replicas 2 [--model tiny] [--json out.json]

Prints videos per minute for each replica count and the ratio against one replica; on a 2-core CPU machine
the ratio shows how much of a replica's time is overhead that a second replica can overlap, not GPU scaling.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import ray

from hyca_batch.config import JobConfig
from hyca_batch.job import run_job


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=8)
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    ray.init(include_dashboard=False, logging_level=logging.WARNING)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        manifest = Path(tmp) / "bench.parquet"
        pq.write_table(
            pa.table({"prompt": [f"a red circle moving left, take {i}" for i in range(args.videos)]}), manifest
        )
        for replicas in sorted({1, args.replicas}):
            summary = run_job(
                JobConfig.from_options(
                    manifests=[str(manifest)],
                    out=str(Path(tmp) / f"r{replicas}"),
                    model=args.model,
                    replicas=replicas,
                    num_inference_steps=args.steps,
                    progress=False,
                )
            )
            results.append(
                {
                    "replicas": replicas,
                    "videos": summary.done,
                    "elapsed_s": round(summary.elapsed_s, 2),
                    "videos_per_minute": round(summary.videos_per_minute, 2),
                    "mean_s_per_video": round(summary.mean_seconds_per_video, 3),
                }
            )
    base = results[0]["videos_per_minute"]
    print(f"{'replicas':>8} {'videos':>6} {'elapsed s':>9} {'videos/min':>10} {'s/video':>8} {'vs 1':>6}")
    for r in results:
        r["speedup_vs_1"] = round(r["videos_per_minute"] / base, 2) if base else None
        print(
            f"{r['replicas']:>8} {r['videos']:>6} {r['elapsed_s']:>9} {r['videos_per_minute']:>10} "
            f"{r['mean_s_per_video']:>8} {r['speedup_vs_1']:>6}"
        )
    if args.json:
        args.json.write_text(json.dumps({"model": args.model, "results": results}, indent=2))


if __name__ == "__main__":
    main()

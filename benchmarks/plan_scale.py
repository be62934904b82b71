"""How planning scales: the dry run (``hyca-batch run --dry-run``) on 10k, 100k and 1M-row manifests, and a
resume against an output holding 100k committed records, on a local directory and on the local S3 endpoint.

Each manifest is four Parquet files with two carried columns, a few bad rows of every kind (null, empty and
too long prompts, sizes, seeds, ids, steps) and exact duplicates across files. Each plan runs in a fresh
process, so its time and peak memory (VmHWM) are its own; the memory after imports (torch among them) is
printed beside it. Every count is checked against what the manifests were built to hold.

    python benchmarks/plan_scale.py                      # 10k, 100k, 1M; resume on local and S3 (100k records)
    python benchmarks/plan_scale.py --sizes 2000,5000 --committed 500 --json out.json   # a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

FILES = 4
MODEL = "mini"
# One bad row of each kind in every file: (column, value), at rows 1..len(BAD) of the file.
BAD = [
    ("prompt", None),
    ("prompt", "   "),
    ("prompt", "x" * 5000),
    ("height", 60),
    ("num_frames", 8),
    ("seed", -1.0),
    ("seed", 2.5),
    ("id", "bad id/with a slash"),
    ("num_inference_steps", 0),
]
DUPLICATES = 5  # per file after the first: rows that repeat the first file's rows exactly


def write_manifests(directory: Path, rows: int) -> tuple[list[str], dict[str, int]]:
    """Four files of ``rows`` in all; returns their paths and the counts a plan must find."""
    per_file = rows // FILES
    paths = []
    words = np.array("a red green blue circle square triangle moving left right up down on black white".split())
    rng = np.random.default_rng(rows)
    for f in range(FILES):
        n = per_file
        picks = words[rng.integers(0, len(words), size=(n, 8))]
        prompt = pc.binary_join_element_wise(
            *[pa.array(picks[:, k]) for k in range(8)], pa.array(np.arange(n) + f * per_file).cast(pa.string()), " "
        )
        columns: dict[str, pa.Array] = {
            "prompt": prompt,
            "id": pa.nulls(n, pa.string()),
            "seed": pa.nulls(n, pa.float64()),
            "height": pa.nulls(n, pa.int64()),
            "num_frames": pa.nulls(n, pa.int64()),
            "num_inference_steps": pa.nulls(n, pa.int64()),
            "shard": pa.array(np.full(n, f, dtype=np.int32)),
            "score": pa.array(rng.random(n)),
        }
        table = pa.table(columns)
        for row, (name, value) in enumerate(BAD, start=1):
            column = table.column(name).to_pylist() if n < 50_000 else None
            if column is None:  # large files: only the one value changes
                mask = np.zeros(n, dtype=bool)
                mask[row] = True
                replaced = pc.replace_with_mask(
                    table.column(name).combine_chunks(),
                    pa.array(mask),
                    pa.array([value], table.schema.field(name).type),
                )
            else:
                column[row] = value
                replaced = pa.array(column, table.schema.field(name).type)
            table = table.set_column(table.schema.get_field_index(name), name, replaced)
        if f:
            first = pq.read_table(paths[0]).slice(100, DUPLICATES)
            table = pa.concat_tables([table.slice(0, n - DUPLICATES), first.cast(table.schema)])
        path = directory / f"part-{f}.parquet"
        pq.write_table(table, path)
        paths.append(str(path))
    rejected = len(BAD) * FILES
    merged = DUPLICATES * (FILES - 1)
    expect = {"rows": per_file * FILES, "rejected": rejected, "merged_duplicates": merged}
    expect["valid"] = expect["rows"] - rejected - merged
    return paths, expect


def peak_rss_mb() -> float:
    """This process's peak resident memory. VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent
    that forked the process, so a child of a parent holding a big manifest would report the parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # not Linux


def child(paths: list[str], out: str, endpoint: str | None) -> None:
    """One dry-run plan in this process: prints its counts, time and peak memory as JSON."""
    from hyca_batch.config import JobConfig
    from hyca_batch.job import dry_run

    base_mb = peak_rss_mb()
    config = JobConfig.from_options(manifests=paths, out=out, model=MODEL, progress=False, s3_endpoint_url=endpoint)
    t0 = time.perf_counter()
    counts = dry_run(config)
    seconds = time.perf_counter() - t0
    peak_mb = peak_rss_mb()
    print(json.dumps({"seconds": seconds, "peak_mb": peak_mb, "base_mb": base_mb, **counts.to_json()}))


def plan(paths: list[str], out: str, endpoint: str | None = None) -> dict:
    cmd = [sys.executable, __file__, "--child", out, *(["--endpoint", endpoint] if endpoint else []), *paths]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=1800)
    if proc.returncode:
        raise SystemExit(f"the plan failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def check(result: dict, expect: dict, committed: int) -> None:
    got = {k: result[k] for k in ("rows", "rejected", "merged_duplicates", "committed", "pending")}
    want = {
        "rows": expect["rows"],
        "rejected": expect["rejected"],
        "merged_duplicates": expect["merged_duplicates"],
        "committed": committed,
        "pending": expect["valid"] - committed,
    }
    if got != want:
        raise SystemExit(f"wrong counts: {got} != {want}")


def commit_records(storage, requests: pa.Table) -> float:
    """A record per request, put concurrently as the replicas would have, and the snapshot part their run would
    have left (from the rows it was handed, as a run does); returns the seconds it took."""
    from hyca_batch.records import SnapshotWriter, parquet_bytes, record_table, update_snapshot
    from hyca_batch.storage.layout import record_key

    snapshot = SnapshotWriter(storage, "setup")
    t0 = time.perf_counter()
    for start in range(0, requests.num_rows, 10_000):
        items = []
        for row in requests.slice(start, 10_000).to_pylist():
            table = record_table({**row, "status": "done"}, pa.schema([]), {})
            items.append((record_key(row["id"]), parquet_bytes(table)))
            snapshot.add(table)
        storage.put_many(items)
    snapshot.flush()
    update_snapshot(storage, "setup")
    return time.perf_counter() - t0


def local_s3() -> tuple[subprocess.Popen, str]:
    for var, value in (
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_DEFAULT_REGION", "us-east-1"),
    ):
        os.environ.setdefault(var, value)
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "infra" / "local_s3.py"), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    line = proc.stdout.readline()
    if not line.startswith("endpoint "):
        raise SystemExit(f"local S3 did not start: {line!r}")
    return proc, line.split()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000,1000000", help="Manifest rows, comma-separated.")
    parser.add_argument("--committed", type=int, default=100_000, help="Committed records for the resume runs.")
    parser.add_argument("--no-s3", action="store_true", help="Skip the resume on the local S3 endpoint.")
    parser.add_argument("--json", type=Path, help="Also write the results here.")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--endpoint", help=argparse.SUPPRESS)
    parser.add_argument("paths", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.paths, args.child, args.endpoint)
        return

    from hyca_batch.manifest import read_manifest
    from hyca_batch.models import resolve_model
    from hyca_batch.storage import open_storage
    from hyca_batch.storage.layout import RECORDS

    sizes = [int(s) for s in args.sizes.split(",")]
    results: dict = {"plans": [], "resume": []}
    with tempfile.TemporaryDirectory() as tmp:
        manifests = {}
        print(f"{'rows':>9} {'plan s':>8} {'peak MB':>8} {'after imports MB':>17} {'rejected':>9} {'merged':>7}")
        for rows in sizes:
            directory = Path(tmp) / f"m{rows}"
            directory.mkdir()
            paths, expect = write_manifests(directory, rows)
            manifests[rows] = (paths, expect)
            result = plan(paths, str(Path(tmp) / "fresh"))
            check(result, expect, 0)
            results["plans"].append(
                {"rows": expect["rows"], **{k: result[k] for k in ("seconds", "peak_mb", "base_mb")}}
            )
            print(
                f"{expect['rows']:>9} {result['seconds']:>8.2f} {result['peak_mb']:>8.0f} {result['base_mb']:>17.0f} "
                f"{result['rejected']:>9} {result['merged_duplicates']:>7}"
            )
        if len(sizes) > 1:
            big, small = results["plans"][-1], results["plans"][-2]
            ratio = {
                "rows": big["rows"] / small["rows"],
                "seconds": big["seconds"] / small["seconds"],
                "peak_mb_above_imports": (big["peak_mb"] - big["base_mb"])
                / max(1.0, small["peak_mb"] - small["base_mb"]),
            }
            results["ratio"] = ratio
            print(
                f"{big['rows']} / {small['rows']} rows: x{ratio['rows']:.0f} rows, x{ratio['seconds']:.2f} time, "
                f"x{ratio['peak_mb_above_imports']:.2f} memory above imports"
            )

        # Resume: the largest manifest into an output that already holds `committed` of its videos.
        paths, expect = manifests[sizes[-1]]
        defaults = resolve_model(MODEL).defaults
        committed = min(args.committed, expect["valid"])
        committed_rows = read_manifest(paths, defaults).requests.slice(0, committed)
        targets = [("local", str(Path(tmp) / "resume"), None)]
        server = None
        if not args.no_s3:
            server, endpoint = local_s3()
            import boto3

            boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="plan-scale")
            targets.append(("s3", "s3://plan-scale/resume", endpoint))
        try:
            for name, out, endpoint in targets:
                storage = open_storage(out, s3_endpoint_url=endpoint)
                write_s = commit_records(storage, committed_rows)
                t0 = time.perf_counter()
                listed = storage.listing(RECORDS).num_rows  # the one listing a plan needs, timed on its own
                list_s = time.perf_counter() - t0
                result = plan(paths, out, endpoint)
                check(result, expect, committed)
                row = {"storage": name, "rows": expect["rows"], "committed": committed, "seconds": result["seconds"]}
                row.update(peak_mb=result["peak_mb"], listing_s=list_s, listed=listed)
                results["resume"].append(row)
                print(
                    f"resume on {name}: {expect['rows']} rows, {committed} committed ({write_s:.0f} s to write them): "
                    f"plan {result['seconds']:.2f} s (listing records/ alone: {list_s:.2f} s), "
                    f"peak {result['peak_mb']:.0f} MB, {result['pending']} pending"
                )
        finally:
            if server is not None:
                server.terminate()
                server.wait(timeout=30)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()

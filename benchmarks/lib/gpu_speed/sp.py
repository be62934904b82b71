"""The per-pass measurements under sequence parallelism: the package's rank group starts one process per rank, each
loads, groups and shards the model as a replica's rank does (``ShardedModelRank``) and runs ``measure``.

A rank process imports ``SpeedRank`` by this module's name (``hyca_batch.runtime.ranks.object_ref``) with the
parent's ``sys.path``, the repository root included: it loads this module, never the script."""

from __future__ import annotations

from types import SimpleNamespace

from benchmarks.lib.gpu_speed.device import cap_memory
from benchmarks.lib.gpu_speed.measure import measure
from benchmarks.lib.gpu_speed.model import configuration, parameter_bytes, text_inputs
from hyca_batch.cache import SolverMap
from hyca_batch.config import ParallelConfig
from hyca_batch.models import random_weights
from hyca_batch.models.adapters import family_of
from hyca_batch.runtime import RankFailure, RankGroup, RankSetup
from hyca_batch.runtime.workers import ShardedModelRank


class SpeedRank(ShardedModelRank):
    """One sequence-parallel rank of ``measure_sp``: the package's sharded model (loaded, grouped and sharded by
    ``ShardedModelRank``, as in a replica), measured by ``measure`` as a single-process run is."""

    def measure(self, shared: dict, solver_map_path: str | None) -> list[dict]:
        args = SimpleNamespace(**shared)
        args.calib_size = tuple(args.calib_size)
        device, world = self.model.device, self.groups.world
        cap_memory(device, args.cap_bytes)
        pipe = self.model.pipeline
        weights_bytes = parameter_bytes(pipe.transformer)
        solver_map = SolverMap.load(solver_map_path, device=device) if solver_map_path else None
        inputs = text_inputs(
            pipe.transformer.config,
            args.text_tokens,
            args.text_valid,
            device,
            self.model.dtype,
            args.seed,
            family=family_of(pipe.transformer).name,
        )
        args.full_estimate, args.activation_bytes = {}, {}
        rows = []
        for size in args.sizes:
            warm = False
            for mode in args.modes:
                row = measure(
                    pipe, inputs, size, mode, args.granularity, args, solver_map, device, weights_bytes, warm, sp=world
                )
                row.update(ulysses=self.groups.ulysses, ring=self.groups.ring, attention=self.sp.attention_kernel)
                rows.append(row)
                warm = warm or row["status"] == "ok"
        return rows


def measure_sp(args, world: int, solver_map_path: str | None) -> list[dict]:
    """Rows of one sp degree: every rank measures; a pass takes as long as its slowest rank."""
    shared = {
        k: v for k, v in vars(args).items() if k not in ("json", "results_md", "full_estimate", "activation_bytes")
    }
    shared["sizes"] = [list(s) for s in args.sizes]
    parallel = ParallelConfig(sp=world, attention=args.sp_attention, timeout_s=args.sp_timeout)
    device = "cuda" if args.device_type == "cuda" else "cpu"
    setup = RankSetup(
        model=random_weights(configuration(args.family, args.scaled_down)),
        parallel=parallel,
        device=device,
        threads=args.threads or 1,
    )
    try:
        with RankGroup(SpeedRank, setup, world) as group:
            per_rank = group.call_all("measure", shared, solver_map_path)
    except RankFailure as exc:
        return [{"sp": world, "status": "failed", "error": str(exc)}]
    merged = []
    for rank_rows in zip(*per_rank):
        row = dict(rank_rows[0])
        if all(r["status"] == "ok" for r in rank_rows):
            for key in ("full_step_s", "skipped_step_s", "loop_s_derived", "forecast_s"):
                values = [r[key] for r in rank_rows if r.get(key) is not None]
                row[key] = max(values) if values else None
        elif any(r["status"] == "oom" for r in rank_rows):
            row["status"] = "oom"
        row["peak_memory_bytes"] = max((r["peak_memory_bytes"] or 0) for r in rank_rows) or None
        row["attention_calls_in_skipped_passes"] = sum(
            r.get("attention_calls_in_skipped_passes") or 0 for r in rank_rows
        )
        merged.append(row)
    return merged

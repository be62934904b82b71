"""The whole comparison: a HyCa solver map per (variant, N) from one probe recording of the calibration prompts,
the uncached reference of every prompt, every method on every prompt against it, and one summary row (means over
the prompts) per method, with the share of block sub-computations (attention, MLP) it really ran.

Transformer passes per step come from the uncached reference's count (2 under HunyuanVideo 1.5's classifier-free
guidance); every pass count and expected schedule is per step times that. A peer (diffusers' caches, cache-dit) is
first enabled and disabled once on the loaded model: one that cannot be enabled there, or that fails while running,
is listed as not run, with why, on stderr, in the table and in the JSON (``not_run``)."""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import math
import platform
import sys
import time
from collections.abc import Callable
from typing import Any

from benchmarks.lib.cache_quality import peers
from benchmarks.lib.cache_quality.measure import Bench
from benchmarks.lib.cache_quality.methods import (
    DIFFUSERS_TAYLORSEER_WARMUP,
    HYCA_VARIANTS,
    Method,
    budget_name,
    build_methods,
    diffusers_taylorseer_expected_refreshes,
    row_order,
)
from benchmarks.lib.cache_quality.report import log
from benchmarks.lib.tables import mean

CALIBRATION_SEED = 4242
#: Steps when --steps is not given, per model preset; other models use their own default.
DEFAULT_STEPS = {"tiny": 24, "mini": 24, "tiny15": 24}


def _finite_or_none(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _round(value: float | None, digits: int = 6) -> float | None:
    value = _finite_or_none(value)
    return None if value is None else float(f"{value:.{digits}g}")


def our_schedule(steps: int, interval: int) -> list[int]:
    """Our modes' full steps at N (1: full), from the rule our cache runs by: the mask cache-dit is given."""
    from hyca_batch.cache.schedule import schedule_full_steps
    from hyca_batch.config import CacheConfig

    return [int(full) for full in schedule_full_steps(steps, interval, CacheConfig().warmup)]


def peer_name(method: Method) -> str | None:
    """Which outside cache a method runs (None: ours): what is checked once for whether it runs on the model."""
    if method.family == "hyca_batch":
        return None
    if method.family == "cache-dit":
        return "cache-dit DBCache"
    return f"diffusers {method.params['cache']}"


def method_label(method: Method) -> str:
    return f"{method.name} N={method.interval if method.interval is not None else '-'}"


def run_benchmark(args: argparse.Namespace) -> dict:
    """Everything ``args`` (``cli.parse_args``) asks for, progress on stderr; the result is what the JSON holds."""
    import diffusers
    import torch
    from diffusers import FirstBlockCacheConfig, TaylorSeerCacheConfig
    from tqdm import tqdm

    from hyca_batch.config import CacheConfig, CalibrationConfig
    from hyca_batch.models import load_model, resolve_model
    from hyca_batch.pipeline.calibration import calibrate_recording, record_trajectories
    from hyca_batch.pipeline.fidelity import psnr, relative_l2, ssim
    from hyca_batch.types import Request

    started = time.perf_counter()
    spec = resolve_model(args.model)
    steps = args.steps or DEFAULT_STEPS.get(spec.name, spec.defaults.num_inference_steps)
    size = spec.defaults.merged(
        height=args.height, width=args.width, num_frames=args.num_frames, num_inference_steps=steps
    )
    log(f"loading model {spec.name} ...")
    model = load_model(spec, device=args.device)
    device = str(model.device)
    # Several threads on a small CPU that other work shares stall at every parallel region's barrier
    # (single runs 30x slower, seen on 2 cores); one thread measures cached and uncached alike, steadily.
    threads = args.threads if args.threads is not None else (1 if model.device.type == "cpu" else 0)
    if threads:
        torch.set_num_threads(threads)

    def request(i: int, prompt: str, seed: int) -> Request:
        return Request.with_defaults(size, id=f"cache-quality-{i}", prompt=prompt, seed=seed)

    requests = [request(i, p, args.seed + i) for i, p in enumerate(args.prompts)]
    calibration_requests = [request(-1 - i, p, CALIBRATION_SEED + i) for i, p in enumerate(args.calibration_prompts)]
    # cache-dit is optional (the `bench` extra): imported before the references, so that whatever its import
    # registers is in place for every run, and skipped with a warning when it is not installed.
    cache_dit_calibrators = list(args.cache_dit_calibrators) if args.cache_dit else []
    hyca_budgets = sorted({max(1, min(steps, round(f * steps))) for f in args.hyca_fractions})

    def budget_interval(budget: int) -> int:
        """At a budget of full steps, the interval whose uniform schedule comes nearest (clusterings compare on it)."""
        return -(-steps // budget)

    cache_dit_version = peers.cache_dit_version() if cache_dit_calibrators else None
    if cache_dit_calibrators and cache_dit_version is None:
        log("WARNING: cache-dit is not installed (pip install -e '.[bench]'): skipping its methods")
        cache_dit_calibrators = []
    methods = build_methods(
        args.intervals,
        args.fbc_thresholds,
        not args.no_diffusers,
        cache_dit_calibrators,
        args.cache_dit_thresholds,
        hyca_budgets,
    )
    log(
        f"model {spec.name} on {device}: {steps} steps, {size.width}x{size.height}x{size.num_frames}, "
        f"{len(requests)} prompt(s), intervals {args.intervals}, {len(methods)} (method, N) pairs"
    )

    # HyCa: one probe recording of the calibration prompts serves every N and every variant's map.
    t0 = time.perf_counter()
    recording = record_trajectories(model, calibration_requests, CalibrationConfig(clusters=args.clusters))
    record_s = time.perf_counter() - t0
    log(f"recorded the hyca probe of {len(calibration_requests)} calibration prompt(s) ({record_s:.1f} s)")
    solver_maps = {}
    calibration_info: dict[str, dict[str, Any]] = {}
    # Every variant at every N, and the default hyca at every budget of full steps (keyed K=<budget>).
    plans = [(name, parts, n, 0) for name, parts in HYCA_VARIANTS.items() for n in args.intervals]
    plans += [(budget_name(k), HYCA_VARIANTS["hyca"], None, k) for k in hyca_budgets]
    for name, parts, n, budget in plans:
        t0 = time.perf_counter()
        cache = CacheConfig(
            mode="hyca", interval=n or budget_interval(budget), schedule=parts["schedule"], full_steps=budget
        )
        solver_map = calibrate_recording(
            model,
            calibration_requests,
            recording,
            cache,
            CalibrationConfig(clusters=args.clusters, forecasts=parts["forecasts"], clustering=parts["clustering"]),
        )
        if not parts.get("per_step", True):  # only the per-cluster solvers: how hyca ran before per-step forecasts
            solver_map = dataclasses.replace(solver_map, schedule=None, step_coefficients=None, step_choice=None)
        solver_maps[(name, n)] = solver_map
        md = solver_map.metadata
        calibration_info.setdefault(name, {})[str(n) if n else f"K={budget}"] = {
            "solver_map_id": solver_map.id,
            "clusters": int(solver_map.cluster_solver.numel()),
            "cluster_solvers": [solver_map.solvers[int(i)] for i in solver_map.cluster_solver.tolist()],
            "per_step": solver_map.schedule is not None,
            **{
                key: md[key]
                for key in ("clustering", "clustering_held_out", "held_out_error", "step_forecasts", "full_steps")
            },
            "seconds": round(time.perf_counter() - t0, 3),
        }
        log(f"calibrated {name} N={n or '-'}: solver map {solver_map.id}, full steps {md['full_steps']}")

    def activator(method: Method) -> Callable[[], None]:
        if method.family == "hyca_batch":
            budget = method.params.get("full_steps", 0)
            config = CacheConfig(
                mode=method.params["mode"],
                interval=method.interval or budget_interval(budget),
                taylorseer_order=method.params.get("taylorseer_order", 2),
                schedule=method.params.get("schedule", "uniform"),
                full_steps=budget,
            )
            solver_map = solver_maps[(method.name, method.interval)] if config.mode == "hyca" else None

            def activate() -> None:
                bench.disable_peers()
                bench.install_ours(config, solver_map)

        elif method.family == "cache-dit":
            calibrator = method.params["calibrator"]
            mask = our_schedule(steps, method.interval) if method.interval is not None else None
            threshold = method.params.get("residual_diff_threshold")

            def activate() -> None:
                bench.enable_cache_dit(steps, calibrator, mask=mask, threshold=threshold)

        else:

            def activate() -> None:
                if method.params["cache"] == "TaylorSeerCacheConfig":
                    config = TaylorSeerCacheConfig(
                        cache_interval=method.interval,
                        disable_cache_before_step=DIFFUSERS_TAYLORSEER_WARMUP,
                        max_order=method.params["max_order"],
                        taylor_factors_dtype=model.dtype,  # diffusers defaults to bfloat16; ours keeps the model's
                    )
                else:
                    config = FirstBlockCacheConfig(threshold=method.params["threshold"])
                bench.enable_diffusers(config)

        return activate

    bench = Bench(model)
    family = bench.family.name
    bench_subcalls = bench.block_counter.per_pass
    not_run: list[dict[str, Any]] = []  # peers that do not run on this model: which methods, and why
    total = len(requests) * (1 + len(methods) * (1 + args.repeats))
    progress = tqdm(total=total, desc="generating", unit="video", file=sys.stderr, disable=not sys.stderr.isatty())
    tick = lambda: progress.update(1)  # noqa: E731
    rows: list[dict] = []
    try:
        progress.set_postfix_str("uncached reference")
        bench.activate_reference()
        references = []
        for i, r in enumerate(requests):
            ref = bench.once(r, count_flops=i == 0)
            tick()
            # Passes per step as the cache counted them: 1, or 2 under classifier-free guidance (cond, uncond).
            per_step = ref.passes // steps
            if per_step < 1 or ref.passes != per_step * steps or ref.tail_computes != ref.passes:
                raise RuntimeError(
                    f"uncached run of {r.prompt!r} made {ref.passes} transformer passes (the last block ran in "
                    f"{ref.tail_computes}), expected the same whole number in each of {steps} steps"
                )
            if references and per_step != bench.passes_per_step:
                raise RuntimeError(
                    f"uncached run of {r.prompt!r}: {per_step} passes per step, not {bench.passes_per_step}"
                )
            bench.passes_per_step = per_step
            if any(count != ref.passes for count in ref.block_computes.values()):
                raise RuntimeError(f"uncached run of {r.prompt!r}: block sub-computations {ref.block_computes}")
            references.append(ref)
        reference_flops = references[0].transformer_flops
        passes_per_step = bench.passes_per_step
        if passes_per_step > 1:
            log(f"{spec.name} ({family}): {passes_per_step} transformer passes per step (classifier-free guidance)")

        # Each peer once: enabled and disabled again on this model, nothing run. One that cannot be is not run.
        unsupported: dict[str, str] = {}
        checked: set[str] = set()
        for method in methods:
            peer = peer_name(method)
            if peer is None or peer in checked:
                continue
            checked.add(peer)
            reason = bench.trial(activator(method))
            if reason is None:
                continue
            if "not registered" in reason:
                reason += " (its block class is not in diffusers' TransformerBlockRegistry, which this hook needs)"
            unsupported[peer] = f"{peer} cannot be enabled on {type(bench.transformer).__name__}: {reason}"
        not_run = [
            {"peer": peer, "methods": [method_label(m) for m in methods if peer_name(m) == peer], "reason": reason}
            for peer, reason in unsupported.items()
        ]
        for entry in not_run:
            log(f"NOT RUN on {spec.name} ({family}): {', '.join(entry['methods'])}: {entry['reason']}")

        for k, method in enumerate(methods, 1):
            label = method_label(method)
            if peer_name(method) in unsupported:
                continue
            progress.set_postfix_str(label)
            activate = activator(method)
            per_prompt = []
            try:
                for i, (r, ref) in enumerate(zip(requests, references)):
                    # FLOPs follow from the schedule for fixed-N methods (counted on the first prompt); an
                    # adaptive cache skips differently per prompt, so it is counted on every one.
                    count = i == 0 or method.interval is None
                    per_prompt.append((r, ref, bench.measure(r, ref, activate, args.repeats, count, tick)))
            except Exception as error:
                if method.family == "hyca_batch":
                    raise
                reason = f"{peer_name(method)} failed while running: {type(error).__name__}: {error}"
                not_run.append({"peer": peer_name(method), "methods": [label], "reason": reason})
                log(f"NOT RUN on {spec.name} ({family}): {label}: {reason}")
                continue
            finally:
                bench.disable_peers()
            row = summarize(
                method, per_prompt, steps, solver_maps, reference_flops, psnr, ssim, relative_l2, passes_per_step
            )
            rows.append(row)
            tqdm.write(
                f"[{k}/{len(methods)}] {label}: full {row['full_passes']:g}, "
                f"block compute {row['block_compute_fraction']:.3f}, speedup {row['speedup']:.2f}, "
                f"latent rel L2 {row['latent_rel_l2']:.3e} ({time.perf_counter() - started:.0f} s)",
                file=sys.stderr,
            )
    finally:
        progress.close()
        bench.close()
    rows.sort(key=row_order)

    reference_info = []
    for i, r in enumerate(requests):
        times = [t for row in rows for item in row["per_prompt"][i : i + 1] for t in item["reference_s"]]
        reference_info.append(
            {
                "prompt": r.prompt,
                "seed": r.seed,
                "denoise_s": _round(min(times)),
                "slowest_over_best": _round(max(times) / min(times), 4),
                "timed_runs": len(times),
                "transformer_flops": references[i].transformer_flops,
            }
        )

    return {
        "benchmark": "cache_quality",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "model": spec.name,
        "family": family,
        # Transformer passes per denoising step (the uncached reference's count): 2 under classifier-free guidance,
        # whose conditional and unconditional passes every count below includes.
        "passes_per_step": passes_per_step,
        "device": device,
        "device_name": torch.cuda.get_device_name(model.device)
        if model.device.type == "cuda"
        else platform.processor() or platform.machine(),
        "dtype": str(model.dtype).replace("torch.", ""),
        "torch_threads": torch.get_num_threads(),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "diffusers": diffusers.__version__,
            "cache_dit": cache_dit_version,
        },
        "steps": steps,
        "height": size.height,
        "width": size.width,
        "num_frames": size.num_frames,
        "guidance_scale": size.guidance_scale,
        "intervals": args.intervals,
        "repeats": args.repeats,
        "extra_timed_pairs": bench.extra_pairs,
        "prompts": [{"prompt": r.prompt, "seed": r.seed} for r in requests],
        "calibration": {
            "prompts": [{"prompt": r.prompt, "seed": r.seed} for r in calibration_requests],
            "clusters": args.clusters,
            "record_s": round(record_s, 3),
            "maps": calibration_info,
        },
        "diffusers_taylorseer_warmup": DIFFUSERS_TAYLORSEER_WARMUP,
        # Per transformer pass: each block's attention and MLP (measure.BlockComputeCounter).
        "block_subcalls_per_pass": bench_subcalls,
        "cache_dit": {
            **(
                peers.settings("dual-stream", separate_cfg=passes_per_step > 1)
                if family != "hunyuanvideo"
                else peers.settings()
            ),
            "calibrators": cache_dit_calibrators,
            "thresholds": list(args.cache_dit_thresholds) if cache_dit_calibrators else [],
        }
        if cache_dit_calibrators
        else None,
        "reference": reference_info,
        "rows": rows,
        # Methods that did not run on this model, per peer, and why (none on HunyuanVideo 1.0).
        "not_run": not_run,
        "wall_s": round(time.perf_counter() - started, 1),
    }


def summarize(
    method: Method,
    per_prompt,
    steps: int,
    solver_maps,
    reference_flops,
    psnr,
    ssim,
    relative_l2,
    passes_per_step: int = 1,
) -> dict:
    items = []
    for request, ref, run in per_prompt:
        if method.family == "hyca_batch":
            full = run.full
            if run.tail_computes != full:
                raise RuntimeError(
                    f"{method.name} N={method.interval}: the cache counted {full} full passes, "
                    f"the last block ran in {run.tail_computes}"
                )
        elif method.params["cache"] == "TaylorSeerCacheConfig":
            full = run.attn_computes
        else:  # FirstBlockCache, cache-dit: passes where the last block ran
            full = run.tail_computes
        computed, uncached = sum(run.block_computes.values()), sum(ref.block_computes.values())
        items.append(
            {
                "prompt": request.prompt,
                "full_passes": full,
                "transformer_passes": run.passes,
                "block_computes": run.block_computes,
                "block_compute_fraction": _round(computed / uncached, 6),
                "denoise_s": _round(run.denoise_s),
                "reference_denoise_s": _round(min(run.reference_s)),
                "speedup": _round(min(run.reference_s) / run.denoise_s, 4),
                "flops_ratio_measured": _round(reference_flops / run.transformer_flops, 4)
                if run.transformer_flops and reference_flops
                else None,
                "psnr": _round(psnr(ref.frames, run.frames), 5),
                "ssim": _round(ssim(ref.frames, run.frames), 6),
                "latent_rel_l2": _round(relative_l2(ref.latents, run.latents), 5),
                "deterministic": run.deterministic,
                "cached_s": [_round(t, 4) for t in run.cached_s],
                "reference_s": [_round(t, 4) for t in run.reference_s],
            }
        )
    passes = items[0]["transformer_passes"]
    full_mean = mean([i["full_passes"] for i in items])
    measured = [i["flops_ratio_measured"] for i in items if i["flops_ratio_measured"] is not None]
    row: dict[str, Any] = {
        "method": method.name,
        "family": method.family,
        "interval": method.interval,
        "params": method.params,
        "steps": steps,
        "transformer_passes": passes,
        "full_passes": full_mean,
        # The theoretical speedup holds only where a skipped pass runs no block: our modes.
        "flops_ratio": _round(passes / full_mean, 4) if method.family == "hyca_batch" and full_mean else None,
        "flops_ratio_measured": _round(mean(measured), 4) if measured else None,
        # Block sub-computations (attention, MLP) that ran / the uncached run's: the compute axis of the plot.
        "block_compute_fraction": _round(mean([i["block_compute_fraction"] for i in items]), 6),
        "speedup": _round(mean([i["speedup"] for i in items]), 4),
        "denoise_s": _round(mean([i["denoise_s"] for i in items])),
        # PSNR is inf (null) for a video identical to the reference, e.g. a cache that never skipped.
        "psnr": _round(mean([i["psnr"] if i["psnr"] is not None else math.inf for i in items]), 5),
        "ssim": _round(mean([i["ssim"] for i in items]), 6),
        "latent_rel_l2": _round(mean([i["latent_rel_l2"] for i in items]), 5),
        "deterministic": all(i["deterministic"] for i in items),
        "per_prompt": items,
    }
    if method.params.get("mode") == "hyca":
        row["solver_map_id"] = solver_maps[(method.name, method.interval)].id
    if method.params.get("cache") == "TaylorSeerCacheConfig":
        # Its state is per cache context: each pass of a step (cond, uncond) refreshes on its own schedule.
        row["expected_full_passes"] = passes_per_step * diffusers_taylorseer_expected_refreshes(
            steps, method.interval, DIFFUSERS_TAYLORSEER_WARMUP
        )
        if row["full_passes"] != row["expected_full_passes"]:
            log(
                f"WARNING: {method.name} N={method.interval}: attention ran in {row['full_passes']} passes, "
                f"diffusers' schedule says {row['expected_full_passes']}: is the cache engaged?"
            )
    if method.family == "cache-dit" and method.interval is not None:
        row["expected_full_passes"] = passes_per_step * sum(our_schedule(steps, method.interval))
        if row["full_passes"] != row["expected_full_passes"]:
            log(
                f"WARNING: {method.name} N={method.interval}: the last block ran in {row['full_passes']} passes, "
                f"its steps mask computes {row['expected_full_passes']}: is the cache engaged?"
            )
    if not row["deterministic"]:
        log(f"WARNING: {method.name} N={method.interval}: repeated runs of one prompt gave different results")
    return row

"""The whole run, into one result: every size and cache mode (a mode that is oom at block granularity again at
stack granularity), the VAE decode per size, then the sp degrees; within the time budget, the JSON rewritten as it
goes. The family (--family) decides the model, its inputs and its loop (``model``); the rest is the same code."""

from __future__ import annotations

import argparse
import datetime as dt
import time
from typing import Any

import torch

from benchmarks.lib.gpu_speed.calibration import calibrate_map
from benchmarks.lib.gpu_speed.device import cap_memory, free_memory, sync
from benchmarks.lib.gpu_speed.environment import environment, record_attention_kernel
from benchmarks.lib.gpu_speed.measure import add_speedups, decode_vae, label, measure
from benchmarks.lib.gpu_speed.model import (
    FAMILY_NAMES,
    HUNYUANVIDEO,
    block_text_tokens,
    build_pipeline,
    compression,
    configuration,
    meta_transformer,
    parameter_bytes,
    parameter_count,
    text_inputs,
    transformer_config,
    vae_config,
)
from benchmarks.lib.gpu_speed.report import gib_text, params_text, write_json
from benchmarks.lib.gpu_speed.schedule import size_name, video_tokens
from benchmarks.lib.gpu_speed.sp import measure_sp
from benchmarks.lib.tables import fmt
from hyca_batch.cache import SolverMap


def run_benchmark(args: argparse.Namespace) -> dict:
    """Everything ``args`` (``cli.parse_args``) asks for, printing a progress line per configuration; the result is
    what the JSON holds, written to ``args.json`` after every configuration and at the end."""
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.monotonic()
    device = torch.device(args.device_type)
    dtype = getattr(torch, args.dtype)
    cap_memory(device, args.cap_bytes)

    config = transformer_config(args.scaled_down, args.family)
    result: dict[str, Any] = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "family": args.family,
        "scaled_down": args.scaled_down,
        "environment": environment(device),
        "model": {
            "configuration": configuration(args.family, args.scaled_down),
            "transformer_config": config,
            "vae_config": vae_config(args.scaled_down, args.family),
            "parameters": parameter_count(meta_transformer(config, args.family)),
            "weights": "random, N(0, 1/fan_in)",
        },
        "dtype": args.dtype,
        "steps": args.steps,
        "real_loop": args.real_loop,
        "granularity": args.granularity,
        "text_tokens": args.text_tokens,
        "text_valid": args.text_valid,
        "max_memory_gb": args.max_memory_gb,
        "rows": [],
        "vae": [],
        "sp": [],
        "skipped": [],
    }
    if args.family != HUNYUANVIDEO:
        # What every block sees as text, and classifier-free guidance's passes per step (the rows say what ran).
        result["block_text_tokens"] = block_text_tokens(args.family, args.text_tokens)
        result["guidance"] = "classifier-free, 6.0: a conditional and an unconditional pass per step"
    env = result["environment"]
    family = "" if args.family == HUNYUANVIDEO else f"{FAMILY_NAMES[args.family]} ({args.family}), "
    print(
        f"gpu_speed: {family}{env['device']}, torch {env['torch']}, "
        f"{params_text(result['model']['parameters'])} parameters, "
        f"{args.dtype}, sizes {', '.join(size_name(s) for s in args.sizes)}, {args.steps} steps",
        flush=True,
    )

    t0 = time.perf_counter()
    pipe = build_pipeline(args.scaled_down, device, args.family)
    sync(device)
    result["build_s"] = time.perf_counter() - t0
    weights_bytes = parameter_bytes(pipe.transformer)
    result["model"]["transformer_bytes"] = weights_bytes

    maps: dict[str, SolverMap] = {}  # granularity -> map (a stack fallback calibrates its own)
    result["calibration"] = {}

    def solver_map_for(granularity: str) -> SolverMap:
        if granularity not in maps:
            if args.solver_map and granularity == args.granularity:
                smap = SolverMap.load(args.solver_map)
                info = {"how": f"loaded {args.solver_map}", "solver_map_id": smap.id}
            else:
                smap, info = calibrate_map(pipe, args, granularity, device, dtype)
                print(
                    f"  calibrated the HyCa map ({granularity}) in {info['total_s']:.1f} s: {info['cluster_solvers']}",
                    flush=True,
                )
            path = args.json.with_name(f"{args.json.stem}_solver_map_{granularity}.safetensors")
            smap.save(path)
            info["saved_to"] = str(path)
            result["calibration"][granularity] = info
            maps[granularity] = smap.to(device) if device.type == "cuda" else smap
        return maps[granularity]

    inputs = text_inputs(config, args.text_tokens, args.text_valid, device, dtype, args.seed, family=args.family)
    spatial, temporal = compression(pipe.vae.config)
    attention: dict = {}
    result["attention"] = attention
    args.full_estimate = {}  # size -> measured seconds of a full pass, for the time budget
    args.activation_bytes = {}  # size -> an uncached pass's peak memory beyond the weights (CUDA)

    def budget(what: str, estimate_s: float) -> bool:
        """True when ``what`` (about ``estimate_s`` seconds) may still start."""
        if args.time_budget_s is None or time.monotonic() - start + estimate_s <= args.time_budget_s:
            return True
        result["skipped"].append({"what": what, "reason": f"time budget: needs ~{estimate_s:.0f} s more"})
        print(f"  skipped {what}: over the time budget", flush=True)
        return False

    def run(size, mode: str, granularity: str, warm: bool) -> dict:
        smap = solver_map_for(granularity) if mode == "hyca" else None
        # The blocks' joint attention, not the text refiner's: at least the video tokens (and, for HunyuanVideo 1.5,
        # whose refiner sees 1000 Qwen tokens, its text positions too).
        joint = video_tokens(size, config, spatial, temporal)
        if args.family != HUNYUANVIDEO:
            joint += block_text_tokens(args.family, args.text_tokens)
        with record_attention_kernel(attention, min_tokens=joint):
            row = measure(pipe, inputs, size, mode, granularity, args, smap, device, weights_bytes, warm, budget=budget)
        if mode == "hyca":
            row["solver_map_id"] = smap.id
        result["rows"].append(row)
        add_speedups(result["rows"])
        write_json(args.json, result)
        name = label(size, mode, granularity)
        if row["status"] == "ok":
            print(
                f"  {name}: full {row['full_step_s']:.3g} s, skipped {fmt(row['skipped_step_s'])} s, "
                f"passes {row['full_passes']}/{row['skipped_passes']} of {row['measured_steps']} steps, "
                f"peak {gib_text(row['peak_memory_bytes'])} GiB",
                flush=True,
            )
        else:
            print(f"  {name}: {row['status']} ({row.get('error')})", flush=True)
        return row

    for size in args.sizes:
        warm = False
        for mode in args.modes:
            row = run(size, mode, args.granularity, warm)
            if row["status"] == "ok":
                warm = True
                args.full_estimate.setdefault(tuple(size), row["full_step_s"])
                if mode == "none" and row["peak_memory_bytes"] is not None:
                    args.activation_bytes[tuple(size)] = max(0, row["peak_memory_bytes"] - weights_bytes)
            if row["status"] == "oom" and mode != "none" and args.granularity == "block" and args.stack_fallback:
                run(size, mode, "stack", warm)  # one residual per stack: the low-memory granularity
        if not args.no_vae:
            name = f"{size_name(size)} VAE decode"
            if budget(name, 3 * args.full_estimate.get(tuple(size), 0.0)):
                vae_row = decode_vae(pipe.vae, size, device, dtype, args.cap_bytes)
                result["vae"].append(vae_row)
                write_json(args.json, result)
                print(f"  {name}: {vae_row['status']}, {fmt(vae_row.get('decode_s'))} s", flush=True)
    map_path = result["calibration"].get(args.granularity, {}).get("saved_to")

    add_speedups(result["rows"])
    if any(n > 1 for n in args.sp):
        available = torch.cuda.device_count() if device.type == "cuda" else max(args.sp)
        del pipe, inputs
        free_memory(device)
        for world in args.sp:
            if world > available:
                result["sp"].append({"sp": world, "status": "skipped", "error": f"{available} GPU(s) available"})
                continue
            if not budget(f"sp {world}", 0.0):
                continue
            print(f"  sp {world}: starting {world} rank(s)", flush=True)
            result["sp"] += measure_sp(args, world, map_path)
            write_json(args.json, result)
        base = {(tuple(r["size"]), r["mode"]): r for r in result["sp"] if r.get("sp") == 1 and r.get("status") == "ok"}
        for r in result["sp"]:
            b = base.get((tuple(r.get("size", ())), r.get("mode")))
            r["scaling"] = b["full_step_s"] / r["full_step_s"] if b and r.get("status") == "ok" else None

    result["total_s"] = time.monotonic() - start
    write_json(args.json, result)
    return result

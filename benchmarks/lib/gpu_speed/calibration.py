"""HyCa's solver map from the project's own calibration (trajectory probe, then ``calibrate`` with dsigma^2 step
weights) on the transformer under test, at a reduced probe size: a map is per channel, so it applies at every size."""

from __future__ import annotations

import time

import torch

from benchmarks.lib.gpu_speed.device import free_memory
from benchmarks.lib.gpu_speed.model import GUIDANCE, text_inputs
from hyca_batch.cache import SolverMap, TrajectoryProbe, apply_feature_cache
from hyca_batch.cache.calibrate import calibrate
from hyca_batch.config import CacheConfig
from hyca_batch.pipeline.calibration import step_weights


def calibrate_map(pipe, args, granularity: str, device: torch.device, dtype: torch.dtype) -> tuple[SolverMap, dict]:
    """The project's HyCa calibration on this transformer: probe every step fully at ``--calib-size``,
    record each cached feature at ``--probe-tokens`` token positions, cluster and choose solvers."""
    h, w, f = args.calib_size
    interval = args.intervals["hyca"]
    probe = TrajectoryProbe(tokens=args.probe_tokens, seed=0)
    cache = apply_feature_cache(pipe.transformer, CacheConfig(granularity=granularity), probe=probe)
    t0 = time.perf_counter()
    try:
        cache.reset()
        inputs = text_inputs(pipe.transformer.config, args.text_tokens, args.text_valid, device, dtype, seed=1)
        pipe(
            **inputs,
            height=h,
            width=w,
            num_frames=f,
            num_inference_steps=args.calib_steps,
            guidance_scale=GUIDANCE,
            generator=torch.Generator(device="cpu").manual_seed(1),
            output_type="latent",
            return_dict=False,
        )
        trajectories = probe.trajectories()
    finally:
        cache.remove()
    probe_s = time.perf_counter() - t0
    if device.type == "cuda":  # the error replay runs where the trajectories are: on the GPU it takes seconds
        trajectories = {k: v.to(device) for k, v in trajectories.items()}
    weights = step_weights(pipe.scheduler, args.calib_steps)
    solver_map = calibrate(
        trajectories,
        num_steps=args.calib_steps,
        interval=interval,
        clusters=args.clusters,
        step_weights=weights,
        metadata={
            "model": "hunyuanvideo-random" if not args.scaled_down else "tiny-config-random",
            "height": h,
            "width": w,
            "num_frames": f,
            "granularity": granularity,
            "probe_tokens": args.probe_tokens,
            "weighting": "dsigma",
        },
    )
    del trajectories
    free_memory(device)
    info = {
        "how": f"project calibration (trajectory probe + cache.calibrate.calibrate, dsigma^2 weights) at {h}x{w}x{f}, "
        f"{args.calib_steps} steps, N={interval}, {args.probe_tokens} probe tokens, {args.clusters} clusters",
        "granularity": granularity,
        "size": [h, w, f],
        "steps": args.calib_steps,
        "interval": interval,
        "probe_tokens": args.probe_tokens,
        "probe_s": probe_s,
        "total_s": time.perf_counter() - t0,
        "solver_map_id": solver_map.id,
        "cluster_solvers": solver_map.metadata.get("cluster_solvers"),
        "cluster_sizes": solver_map.metadata.get("cluster_sizes"),
    }
    return solver_map, info

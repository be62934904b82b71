"""HyCa's solver map from the project's own calibration (trajectory probe, then ``calibrate`` with dsigma^2 step
weights) on the transformer under test, at a reduced probe size: a map is per channel, so it applies at every size.
Under classifier-free guidance (HunyuanVideo 1.5) it is calibrated on the conditional pass's recording, as the
package's calibration does, and forecasts both passes."""

from __future__ import annotations

import time

import torch

from benchmarks.lib.gpu_speed.device import free_memory
from benchmarks.lib.gpu_speed.model import HUNYUANVIDEO, denoise, text_inputs
from hyca_batch.cache import SolverMap, TrajectoryProbe, apply_feature_cache
from hyca_batch.cache.calibrate import calibrate
from hyca_batch.config import CacheConfig
from hyca_batch.models.adapters import family_of
from hyca_batch.pipeline.calibration import step_weights


def calibrate_map(pipe, args, granularity: str, device: torch.device, dtype: torch.dtype) -> tuple[SolverMap, dict]:
    """The project's HyCa calibration on this transformer: probe every step fully at ``--calib-size``,
    record each cached feature at ``--probe-tokens`` token positions, cluster and choose solvers."""
    h, w, f = args.calib_size
    interval = args.intervals["hyca"]
    family = family_of(pipe.transformer)
    probe = TrajectoryProbe(tokens=args.probe_tokens, seed=0)
    cache = apply_feature_cache(pipe.transformer, CacheConfig(granularity=granularity), probe=probe)
    t0 = time.perf_counter()
    try:
        cache.reset()
        inputs = text_inputs(
            pipe.transformer.config, args.text_tokens, args.text_valid, device, dtype, seed=1, family=family.name
        )
        denoise(pipe, inputs, (h, w, f), args.calib_steps, seed=1)
        trajectories = probe.trajectories(family.cond_context)
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
            "model": _model_name(family.name, args.scaled_down),
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


def _model_name(family: str, scaled_down: bool) -> str:
    """What the map's metadata says it was calibrated on."""
    if family == HUNYUANVIDEO:
        return "hunyuanvideo-random" if not scaled_down else "tiny-config-random"
    return f"{family}-random" if not scaled_down else "tiny15-config-random"

"""HyCa calibration on a loaded model: a probe run records trajectories, then ``cache.calibrate`` builds the map.

The probe (``cache.probe``) computes every step fully and records each cached feature at a fixed sample of
token positions, through the same ``VideoGenerator`` that makes the videos, so the recording is of exactly
the loop the cache will later skip steps of.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from hyca_batch.cache import SolverMap, TrajectoryProbe
from hyca_batch.cache.calibrate import calibrate
from hyca_batch.config import CacheConfig, CalibrationConfig
from hyca_batch.models import LoadedModel
from hyca_batch.parallel import SequenceParallel
from hyca_batch.pipeline.generate import VideoGenerator
from hyca_batch.types import Request


def record_trajectories(
    model: LoadedModel,
    requests: Sequence[Request],
    config: CalibrationConfig,
    granularity: str = CacheConfig.granularity,
    parallel: SequenceParallel | None = None,
) -> dict[str, torch.Tensor]:
    """module name -> (T, K, D): the probe's sampled features of every request, concatenated over tokens.

    Under sequence parallelism each rank gathers the video features before sampling, so every rank
    records what a single process would.
    """
    probe = TrajectoryProbe(tokens=config.probe_tokens, seed=config.seed)
    generator = VideoGenerator(model, cache=CacheConfig(granularity=granularity), parallel=parallel, probe=probe)
    try:
        recorded = []
        for request in requests:
            generator(request)
            # The conditional pass's features (under classifier-free guidance the unconditional pass, in its own
            # cache context, is forecast with the same map).
            recorded.append(probe.trajectories(generator.family.cond_context))
    finally:
        generator.cache.remove()
    return {name: torch.cat([r[name] for r in recorded], dim=1) for name in recorded[0]}


def calibrate_model(
    model: LoadedModel,
    requests: Sequence[Request],
    cache: CacheConfig,
    config: CalibrationConfig = CalibrationConfig(),
    parallel: SequenceParallel | None = None,
) -> SolverMap:
    """Probe ``requests`` (one or a few prompts) and choose a solver per channel cluster for ``cache``'s schedule
    (its interval, warm-up and granularity; the mode does not matter)."""
    if not requests:
        raise ValueError("calibration needs at least one request")
    steps = {r.num_inference_steps for r in requests}
    if len(steps) != 1:
        raise ValueError(f"calibration requests must share num_inference_steps, got {sorted(steps)}")
    trajectories = record_trajectories(model, requests, config, cache.granularity, parallel)
    return calibrate_recording(model, requests, trajectories, cache, config)


def calibrate_recording(
    model: LoadedModel,
    requests: Sequence[Request],
    trajectories: dict[str, torch.Tensor],
    cache: CacheConfig,
    config: CalibrationConfig = CalibrationConfig(),
) -> SolverMap:
    """The map for ``cache``'s schedule from a recording of ``requests`` (``record_trajectories``): one recording
    serves every interval, schedule and calibration option."""
    first = requests[0]
    weights = (
        step_weights(model.pipeline.scheduler, first.num_inference_steps) if config.weighting == "dsigma" else None
    )
    metadata = {
        "model": model.spec.name,
        "height": first.height,
        "width": first.width,
        "num_frames": first.num_frames,
        "num_inference_steps": first.num_inference_steps,
        "granularity": cache.granularity,
        "probe_tokens": config.probe_tokens,
        "weighting": config.weighting,
        "prompts": [r.prompt for r in requests],
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(),
    }
    return calibrate(
        trajectories,
        num_steps=first.num_inference_steps,
        interval=cache.interval,
        clusters=config.clusters,
        warmup=cache.warmup,
        seed=config.seed,
        metadata=metadata,
        step_weights=weights,
        prompts=len(requests),
        forecasts=config.forecasts,
        schedule=cache.schedule,
        clustering=config.clustering,
        full_steps=cache.full_steps,
    )


def step_weights(scheduler: Any, num_steps: int) -> list[float]:
    """dsigma_t^2 for each step of a pipeline's flow-matching ``scheduler``: how much a velocity error at step t
    moves the result."""
    # The sigmas both HunyuanVideo pipelines pass (linear in [1, 0)), shifted by the scheduler as in the real run.
    scheduler.set_timesteps(num_steps, sigmas=np.linspace(1.0, 0.0, num_steps + 1)[:-1], device="cpu")
    sigmas = scheduler.sigmas.double()
    return (sigmas[:-1] - sigmas[1:]).square().tolist()

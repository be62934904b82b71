"""Calibration on a real model: a probe run records trajectories, then ``calibrate`` builds the solver map.

The probe computes every step fully and records each cached feature at a fixed sample of token positions
(all of them at small sizes); sampling keeps the recording small at 720p, where one feature is ~10^8 values
per step, and the channel statistics HyCa clusters on do not need every token.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch

from hyca_batch.hyca.calibrate import calibrate
from hyca_batch.hyca.hooks import FeatureCacheConfig
from hyca_batch.hyca.solver_map import SolverMap
from hyca_batch.manifest import Request
from hyca_batch.models import LoadedModel

if TYPE_CHECKING:
    from hyca_batch.parallel.shard import SequenceParallel


@dataclasses.dataclass(frozen=True)
class CalibrationConfig:
    interval: int = 6
    clusters: int = 8
    warmup: int = 0
    granularity: str = "block"
    probe_tokens: int = 512
    seed: int = 0
    weighting: str = "dsigma"  # dsigma: step errors weighted by the sampler's step size squared; uniform: not


def record_trajectories(
    model: LoadedModel,
    requests: Sequence[Request],
    config: CalibrationConfig,
    parallel: "SequenceParallel | None" = None,
) -> dict[str, torch.Tensor]:
    """module name -> (T, K, D): the probe's sampled features of every request, concatenated over tokens.

    Under sequence parallelism each rank gathers the video features before sampling, so every rank
    records what a single process would.
    """
    from hyca_batch.generate import VideoGenerator  # generate imports this package

    probe = FeatureCacheConfig(
        mode="none", granularity=config.granularity, probe_tokens=config.probe_tokens, probe_seed=config.seed
    )
    generator = VideoGenerator(model, cache=probe, parallel=parallel)
    try:
        recorded = []
        for request in requests:
            generator(request)
            recorded.append(generator.cache.trajectories())
    finally:
        generator.cache.remove()
    return {name: torch.cat([r[name] for r in recorded], dim=1) for name in recorded[0]}


def calibrate_model(
    model: LoadedModel,
    requests: Sequence[Request],
    config: CalibrationConfig,
    parallel: "SequenceParallel | None" = None,
) -> SolverMap:
    """Probe ``requests`` (one or a few prompts) and choose a solver per channel cluster."""
    if not requests:
        raise ValueError("calibration needs at least one request")
    steps = {r.num_inference_steps for r in requests}
    if len(steps) != 1:
        raise ValueError(f"calibration requests must share num_inference_steps, got {sorted(steps)}")
    first = requests[0]
    trajectories = record_trajectories(model, requests, config, parallel)
    weights = step_weights(model, first.num_inference_steps) if config.weighting == "dsigma" else None
    metadata = {
        "model": model.spec.name,
        "height": first.height,
        "width": first.width,
        "num_frames": first.num_frames,
        "num_inference_steps": first.num_inference_steps,
        "granularity": config.granularity,
        "probe_tokens": config.probe_tokens,
        "weighting": config.weighting,
        "prompts": [r.prompt for r in requests],
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(),
    }
    return calibrate(
        trajectories,
        num_steps=first.num_inference_steps,
        interval=config.interval,
        clusters=config.clusters,
        warmup=config.warmup,
        seed=config.seed,
        metadata=metadata,
        step_weights=weights,
    )


def step_weights(model: LoadedModel, num_steps: int) -> list[float]:
    """dsigma_t^2 for each step of the pipeline's sampler: how much a velocity error at step t moves the result."""
    scheduler = model.pipeline.scheduler
    # The sigmas HunyuanVideoPipeline passes (linear in [1, 0)), shifted by the scheduler as in the real run.
    scheduler.set_timesteps(num_steps, sigmas=np.linspace(1.0, 0.0, num_steps + 1)[:-1], device="cpu")
    sigmas = scheduler.sigmas.double()
    return (sigmas[:-1] - sigmas[1:]).square().tolist()

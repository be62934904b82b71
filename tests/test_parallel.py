"""Sequence parallelism on CPU: real rank processes in a gloo group, against the single-process model.

One 2-rank group (Ulysses 2) serves most tests; one 4-rank group (Ulysses 2 x ring 2) on a token count
that does not divide by 4 covers the ring and the padding. Latents must agree to float tolerance; frames
are compared after uint8 rounding, where a last-bit difference can move a pixel by one.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from faults import fault_env

from hyca_batch.config import CacheConfig, CalibrationConfig, ParallelConfig
from hyca_batch.models import load_model, resolve_model
from hyca_batch.pipeline.calibration import calibrate_model
from hyca_batch.pipeline.generate import VideoGenerator
from hyca_batch.runtime import RankBackend, RankFailure, RankSetup
from hyca_batch.types import Request

SPEC = resolve_model("tiny")
CACHE = CacheConfig(mode="hyca", interval=3)
CALIBRATION = CalibrationConfig(clusters=4)
BLOCKS = 4  # the tiny transformer: 2 double-stream + 2 single-stream blocks


def request(height: int = 64, seed: int = 5) -> Request:
    d = SPEC.defaults
    return Request(
        id="sp",
        prompt="a red circle moving left on a blue background",
        seed=seed,
        height=height,
        width=64,
        num_frames=d.num_frames,
        num_inference_steps=d.num_inference_steps,
        guidance_scale=d.guidance_scale,
        fps=d.fps,
    )


def assert_same_video(single, parallel) -> None:
    scale = single.latents.abs().max().item()
    diff = (single.latents - parallel.latents).abs().max().item()
    print(f"latents: max |single - sp| = {diff:.3g} (max |latent| {scale:.3g})")
    assert diff <= 1e-5 * scale
    assert parallel.frames.shape == single.frames.shape
    assert np.abs(single.frames.astype(int) - parallel.frames).max() <= 1


@pytest.fixture(scope="module")
def single():
    torch.set_num_threads(1)
    model = load_model(SPEC)
    smap = calibrate_model(model, [request()], CACHE, CALIBRATION)
    return model, smap


@pytest.fixture(scope="module")
def hyca(single):
    _, smap = single
    return CACHE, smap


@pytest.fixture(scope="module")
def two_ranks(hyca):
    cache, smap = hyca
    setup = RankSetup(model=SPEC, parallel=ParallelConfig(sp=2), cache=cache, solver_map=smap, trace=True)
    with RankBackend(setup) as backend:
        yield backend


def reference(model, cache, smap, req: Request, uncached: bool):
    generator = VideoGenerator(model, cache, smap)
    try:
        if uncached:
            with generator.uncached():
                return generator(req)
        return generator(req)
    finally:
        generator.cache.remove()


@pytest.mark.parametrize("uncached", [True, False], ids=["uncached", "hyca"])
def test_two_ranks_equal_one_process(single, hyca, two_ranks, uncached):
    model, _ = single
    cache, smap = hyca
    assert two_ranks.info["ulysses"] == 2 and two_ranks.info["ring"] == 1
    req = request()
    assert_same_video(reference(model, cache, smap, req, uncached), two_ranks.generate(req, uncached))


def test_a_skipped_step_makes_no_collective(two_ranks):
    two_ranks.generate(request())
    for rank, trace in enumerate(two_ranks.traces):
        print(f"rank {rank}: {trace}")
        assert trace["skipped_passes"] > 0 and trace["full_passes"] > 0
        assert trace["calls_in_skipped_passes"] == 0
        # Four all-to-alls (q, k, v, out) per attention, in every block of a full pass.
        assert trace["calls_per_full_pass"] == 4 * BLOCKS
        assert trace["outside_calls"] == 1  # the latent gather after the loop


def test_calibration_on_two_ranks_gives_the_single_rank_map(single):
    _, smap = single
    with RankBackend(RankSetup(model=SPEC, parallel=ParallelConfig(sp=2))) as backend:
        parallel_map = backend.calibrate([request()], CACHE, CALIBRATION)
    assert parallel_map.cluster_solver.tolist() == smap.cluster_solver.tolist()
    for name, clusters in smap.channel_cluster.items():
        assert torch.equal(parallel_map.channel_cluster[name], clusters), name
    torch.testing.assert_close(parallel_map.cluster_error, smap.cluster_error, rtol=1e-3, atol=1e-6)


def test_usp_with_ring_and_padding_on_four_ranks(single, hyca):
    model, _ = single
    cache, smap = hyca
    req = request(height=48)  # 3 x 3 x 3 = 27 video tokens: 7 per rank, the last one padded
    setup = RankSetup(model=SPEC, parallel=ParallelConfig(sp=4, ulysses=2), cache=cache, solver_map=smap)
    with RankBackend(setup) as backend:
        assert (backend.info["ulysses"], backend.info["ring"]) == (2, 2)
        for uncached in (True, False):
            assert_same_video(reference(model, cache, smap, req, uncached), backend.generate(req, uncached))


def test_a_killed_rank_fails_the_video_and_the_group_restarts(hyca, tmp_path, monkeypatch):
    cache, smap = hyca
    arm = tmp_path / "armed"
    for name, value in fault_env(arm).items():
        monkeypatch.setenv(name, value)
    with RankBackend(
        RankSetup(model=SPEC, parallel=ParallelConfig(sp=2, timeout_s=60), cache=cache, solver_map=smap)
    ) as backend:
        group = backend.group
        first = list(group.procs)
        arm.touch()
        with pytest.raises(RankFailure, match="rank 1"):
            backend.generate(request())
        assert not group.running and all(p.poll() is not None for p in first)  # torn down, nothing left over
        result = backend.generate(request())  # the retry starts a new group
        assert result.frames.shape[0] == SPEC.defaults.num_frames
        assert not arm.exists()


def test_bad_degrees_are_refused_clearly():
    with pytest.raises(ValueError, match="must equal --sp"):
        ParallelConfig(sp=4, ulysses=2, ring=3)
    with pytest.raises(ValueError, match="does not divide the model's 2 attention heads"):
        ParallelConfig(sp=4, ulysses=4).degrees(heads=2)
    assert ParallelConfig(sp=4).degrees(heads=2) == (2, 2)
    assert ParallelConfig(sp=6).degrees(heads=24) == (6, 1)

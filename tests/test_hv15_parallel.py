"""HunyuanVideo 1.5 (the offline ``tiny15``) through the family adapter: caching under real classifier-free
guidance, and sequence parallelism on real gloo rank processes against the single-process model.

The cache, the sharding and calibration read the transformer only through ``models.adapters``; these tests are
the first family's parallel tests (``test_parallel``) again on the second family, plus what only 1.5 has: two
transformer passes per step (conditional and unconditional), each with its own cache state and both forecast.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from test_parallel import assert_same_video

from hyca_batch.cache import cached_modules
from hyca_batch.config import CacheConfig, CalibrationConfig, ParallelConfig
from hyca_batch.models import load_model, resolve_model
from hyca_batch.models.adapters import HUNYUANVIDEO15, family_of
from hyca_batch.pipeline.calibration import calibrate_model
from hyca_batch.pipeline.generate import VideoGenerator
from hyca_batch.runtime import RankBackend, RankSetup
from hyca_batch.types import Request

SPEC = resolve_model("tiny15")
CACHE = CacheConfig(mode="hyca", interval=3)
CALIBRATION = CalibrationConfig(clusters=4)


def request(prompt: str = "a red circle moving left on a blue background", seed: int = 5, **kw) -> Request:
    return Request.with_defaults(SPEC.defaults, id="hv15", prompt=prompt, seed=seed).merged(**kw)


@pytest.fixture(scope="module")
def single():
    torch.set_num_threads(1)
    model = load_model(SPEC)
    smap = calibrate_model(model, [request()], CACHE, CALIBRATION)
    return model, smap


def generate(model, cache, smap, req: Request, uncached: bool = False):
    generator = VideoGenerator(model, cache, smap)
    try:
        if uncached:
            with generator.uncached():
                return generator(req), generator.cache.stats
        return generator(req), generator.cache.stats
    finally:
        generator.cache.remove()


def test_the_adapter_names_every_block_of_the_transformer(single):
    model, smap = single
    transformer = model.pipeline.transformer
    assert family_of(transformer) is HUNYUANVIDEO15
    modules = cached_modules(transformer)
    blocks = len(transformer.transformer_blocks)
    assert len(modules) == 4 * blocks and set(modules) == set(smap.channel_cluster)
    assert all(name.startswith("double.") for name in modules)


def test_guidance_runs_two_forecast_passes_per_step_with_separate_state(single):
    model, smap = single
    steps = SPEC.defaults.num_inference_steps
    full, stats = generate(model, CACHE, smap, request(), uncached=True)
    cached, cached_stats = generate(model, CACHE, smap, request())
    # Conditional and unconditional passes each step: both are counted, both skip on the same schedule.
    assert stats.full == 2 * steps and stats.skipped == 0
    assert cached_stats.full + cached_stats.skipped == 2 * steps
    assert cached_stats.skipped > 0 and cached_stats.full % 2 == 0 and cached_stats.skipped % 2 == 0
    # Forecasts are close to the full computation but not it.
    diff = (cached.latents - full.latents).norm() / full.latents.norm()
    assert 0 < diff < 0.5
    # Without guidance (scale 1) there is one pass per step.
    _, single_pass = generate(model, CACHE, smap, request(guidance_scale=1.0), uncached=True)
    assert single_pass.full == steps


def test_uncond_state_is_its_own(single):
    """A cond history used for the uncond pass would make the uncond forecast equal the cond one: at a skipped step
    the two predictions must still differ, as they do in the full computation."""
    model, smap = single
    generator = VideoGenerator(model, CACHE, smap)
    predictions: dict[str, list[torch.Tensor]] = {}
    transformer = model.pipeline.transformer

    def record(module, args, kwargs, output):
        state = generator.cache.states.get_state()
        if not state.full:
            predictions.setdefault(state.context, []).append(output[0].clone())

    handle = transformer.register_forward_hook(record, with_kwargs=True)
    try:
        generator(request())
    finally:
        handle.remove()
        generator.cache.remove()
    assert set(predictions) == {"pred_cond", "pred_uncond"}
    for cond, uncond in zip(predictions["pred_cond"], predictions["pred_uncond"]):
        assert not torch.allclose(cond, uncond)


@pytest.fixture(scope="module")
def two_ranks(single):
    _, smap = single
    setup = RankSetup(model=SPEC, parallel=ParallelConfig(sp=2), cache=CACHE, solver_map=smap, trace=True)
    with RankBackend(setup) as backend:
        yield backend


@pytest.mark.parametrize("uncached", [True, False], ids=["uncached", "hyca"])
def test_two_ranks_equal_one_process(single, two_ranks, uncached):
    model, smap = single
    assert two_ranks.info["ulysses"] == 2
    req = request()
    reference, _ = generate(model, CACHE, smap, req, uncached)
    assert_same_video(reference, two_ranks.generate(req, uncached))
    if not uncached:  # both passes of a skipped step (cond and uncond) run without any collective
        for trace in two_ranks.traces:
            assert trace["skipped_passes"] > 0 and trace["calls_in_skipped_passes"] == 0
            assert trace["calls_per_full_pass"] == 4 * len(model.pipeline.transformer.transformer_blocks)


def test_an_image_request_runs_the_image_pipeline(single):
    model, smap = single
    from io import BytesIO

    import PIL.Image

    pixels = (np.indices((40, 64)).sum(axis=0) % 256).astype(np.uint8)
    buffer = BytesIO()
    PIL.Image.fromarray(np.stack([pixels] * 3, axis=-1)).save(buffer, format="PNG")
    height, width = SPEC.image_video_size(40, 64)
    req = dataclasses.replace(request(height=height, width=width), image_bytes=buffer.getvalue())
    result, stats = generate(model, CACHE, smap, req)
    assert result.frames.shape[1:3] == (height, width)
    assert stats.skipped > 0
    text_only, _ = generate(model, CACHE, smap, request(height=height, width=width))
    assert not torch.allclose(result.latents, text_only.latents)


def test_ring_with_padding_on_four_ranks(single):
    """Ulysses 2 x Ring 2 (the heads allow no more Ulysses), 27 video tokens: the last rank's chunk is padded."""
    model, smap = single
    req = request(height=48, width=48)  # 3 latent frames x 3 x 3: 7 tokens per rank, the last one padded
    setup = RankSetup(model=SPEC, parallel=ParallelConfig(sp=4), cache=CACHE, solver_map=smap)
    with RankBackend(setup) as backend:
        assert (backend.info["ulysses"], backend.info["ring"]) == (2, 2)
        reference, _ = generate(model, CACHE, smap, req)
        assert_same_video(reference, backend.generate(req))

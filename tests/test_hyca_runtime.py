"""The cache hooks on the tiny HunyuanVideo: exactness at interval 1, no compute at skipped steps, isolation."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from hyca_batch.cache import SolverMap, apply_feature_cache, cached_modules
from hyca_batch.cache.solvers import SOLVERS
from hyca_batch.config import CACHE_MODES, CacheConfig
from hyca_batch.models import load_model
from hyca_batch.pipeline.generate import VideoGenerator
from hyca_batch.types import Request

REQUEST = Request(
    id="c",
    prompt="a red circle moving left on a blue background",
    seed=3,
    height=64,
    width=64,
    num_frames=9,
    num_inference_steps=12,
    guidance_scale=6.0,
    fps=8,
)


@pytest.fixture(scope="module")
def model():
    return load_model("tiny", device="cpu")


def mixed_map(transformer) -> SolverMap:
    """A map that gives neighbouring channels different solvers: every solver in use at once."""
    smap = SolverMap.uniform("reuse", cached_modules(transformer))
    k = len(SOLVERS)
    smap.cluster_solver = torch.arange(k)
    smap.cluster_error = torch.zeros(k, k)
    smap.channel_cluster = {name: torch.arange(len(c)) % k for name, c in smap.channel_cluster.items()}
    return smap


def generate(model, config: CacheConfig | None, request=REQUEST, solver_map=None):
    gen = VideoGenerator(model, cache=config, solver_map=solver_map)
    try:
        return gen(request)
    finally:
        gen.cache.remove()


@pytest.fixture(scope="module")
def uncached(model):
    return generate(model, None)


@pytest.mark.parametrize("mode", CACHE_MODES)
@pytest.mark.parametrize("granularity", ["block", "stack"])
def test_interval_one_is_identical_to_no_cache(model, uncached, mode, granularity):
    smap = mixed_map(model.pipeline.transformer) if mode == "hyca" else None
    if mode == "hyca" and granularity == "stack":
        smap = SolverMap.uniform("taylor2", cached_modules(model.pipeline.transformer, "stack"))
    result = generate(model, CacheConfig(mode=mode, interval=1, granularity=granularity), solver_map=smap)
    assert torch.equal(result.latents, uncached.latents)
    assert result.transformer_passes_skipped == 0 and result.transformer_passes_full == REQUEST.num_inference_steps


@pytest.mark.parametrize("granularity", ["block", "stack"])
def test_a_skipped_step_calls_none_of_the_cached_modules(model, granularity):
    transformer = model.pipeline.transformer
    calls = {"n": 0}

    def count(*_):
        calls["n"] += 1

    watched = []
    for block in transformer.transformer_blocks:
        watched += [block.attn, block.ff, block.ff_context]
    for block in transformer.single_transformer_blocks:
        watched += [block.attn, block.proj_mlp, block.proj_out]
    handles = [m.register_forward_pre_hook(count) for m in watched]
    try:
        result = generate(model, CacheConfig(mode="taylorseer", interval=4, granularity=granularity))
    finally:
        for h in handles:
            h.remove()
    # 12 steps, a full pass at 0, 4, 8: three full passes, nine forecast ones.
    assert (result.transformer_passes_full, result.transformer_passes_skipped) == (3, 9)
    assert calls["n"] == 3 * len(watched)


def test_forecasts_change_the_output_and_the_modes_differ(model, uncached):
    smap = mixed_map(model.pipeline.transformer)
    latents = {}
    for mode in ("fora", "taylorseer", "foca", "hyca"):
        result = generate(model, CacheConfig(mode=mode, interval=3), solver_map=smap if mode == "hyca" else None)
        assert not torch.equal(result.latents, uncached.latents)
        assert torch.isfinite(result.latents).all()
        latents[mode] = result.latents
    assert len({tuple(v.flatten()[:64].tolist()) for v in latents.values()}) == 4


def test_state_resets_between_videos(model):
    gen = VideoGenerator(model, cache=CacheConfig(mode="taylorseer", interval=3))
    try:
        first = gen(REQUEST)
        gen(dataclasses.replace(REQUEST, prompt="a green square moving up", seed=9))
        again = gen(REQUEST)
    finally:
        gen.cache.remove()
    assert torch.equal(first.latents, again.latents)


def test_cond_and_uncond_contexts_keep_separate_histories(model):
    """Interleaved cond/uncond passes give the cond outputs of a cond-only run, pass for pass."""
    pipe = model.pipeline
    transformer = pipe.transformer
    embeds, pooled, mask = pipe.encode_prompt(prompt="a red circle", device="cpu")
    neg_embeds, neg_pooled, neg_mask = pipe.encode_prompt(prompt="a blue square", device="cpu")
    gen = torch.Generator().manual_seed(0)
    latents = torch.randn(1, transformer.config.in_channels, 3, 8, 8, generator=gen)
    guidance = torch.tensor([6000.0])

    def call(context, e, p, m, t):
        with transformer.cache_context(context):
            return transformer(
                hidden_states=latents,
                timestep=torch.tensor([t]),
                encoder_hidden_states=e,
                encoder_attention_mask=m,
                pooled_projections=p,
                guidance=guidance,
                return_dict=False,
            )[0]

    timesteps = [1000.0 - 80.0 * i for i in range(10)]
    config = CacheConfig(mode="taylorseer", interval=3)
    cache = apply_feature_cache(transformer, config)
    try:
        with torch.inference_mode():
            interleaved = []
            for t in timesteps:
                interleaved.append(call("cond", embeds, pooled, mask, t))
                call("uncond", neg_embeds, neg_pooled, neg_mask, t)
            assert (cache.stats.full, cache.stats.skipped) == (8, 12)
            cache.reset()
            alone = [call("cond", embeds, pooled, mask, t) for t in timesteps]
    finally:
        cache.remove()
    assert all(torch.equal(a, b) for a, b in zip(interleaved, alone))


def test_hyca_without_a_map_or_with_a_foreign_map_is_a_clear_error(model):
    with pytest.raises(ValueError, match="solver map"):
        generate(model, CacheConfig(mode="hyca", interval=3))
    foreign = SolverMap.uniform("reuse", {"double.0.attn": 7})
    with pytest.raises(ValueError, match="no entry for module|channels"):
        generate(model, CacheConfig(mode="hyca", interval=3), solver_map=foreign)


def test_cache_removal_restores_the_plain_model(model, uncached):
    generate(model, CacheConfig(mode="fora", interval=4))
    assert getattr(model.pipeline.transformer, "_hyca_cache", None) is None
    plain = model.pipeline(
        prompt="a red circle moving left on a blue background",
        height=64,
        width=64,
        num_frames=9,
        num_inference_steps=12,
        generator=torch.Generator().manual_seed(3),
        output_type="latent",
        return_dict=False,
    )[0]
    assert torch.equal(plain.float(), uncached.latents)

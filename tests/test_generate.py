"""One request to frames: reproducible from id and seed, timed by stage, the same through a saved directory."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from hyca_batch.models import load_model
from hyca_batch.models.tiny import save_tiny_pipeline
from hyca_batch.pipeline.generate import VideoGenerator
from hyca_batch.types import Request

REQUEST = Request(
    id="r1",
    prompt="a red circle moving left",
    seed=11,
    height=64,
    width=80,
    num_frames=5,
    num_inference_steps=3,
    guidance_scale=6.0,
    fps=8,
)


@pytest.fixture(scope="module")
def generator():
    return VideoGenerator(load_model("tiny", device="cpu"))


def test_same_request_gives_the_same_frames(generator):
    first, second = generator(REQUEST), generator(REQUEST)
    assert first.frames.dtype == np.uint8 and first.frames.shape == (5, 64, 80, 3)
    assert np.array_equal(first.frames, second.frames)
    assert first.frames.std() > 0


def test_seed_and_prompt_change_the_frames(generator):
    base = generator(REQUEST).frames
    assert not np.array_equal(base, generator(dataclasses.replace(REQUEST, seed=12)).frames)
    assert not np.array_equal(base, generator(dataclasses.replace(REQUEST, prompt="a blue square")).frames)


def test_timings_and_pass_count(generator):
    result = generator(dataclasses.replace(REQUEST, num_inference_steps=4))
    assert set(result.timings) == {"text_encode_s", "denoise_s", "decode_s"}
    assert all(v > 0 for v in result.timings.values())
    assert result.transformer_passes_full == 4 and result.transformer_passes_skipped == 0


def test_a_saved_directory_generates_what_the_preset_does(generator, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path = save_tiny_pipeline(tmp_path / "tiny")
    from_dir = VideoGenerator(load_model(str(path), device="cpu"))
    assert from_dir.model.spec.kind == "diffusers"
    assert np.array_equal(from_dir(REQUEST).frames, generator(REQUEST).frames)

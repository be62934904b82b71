"""HunyuanVideo 1.5: the image-to-video sizing the driver restates, the real model's configs, and the offline tiny
model (``tiny15``): its Qwen2-style tokenizer's chat-template crop, seeded weights, text and image calls, saving."""

from __future__ import annotations

import hashlib
import inspect
import json
import random

import numpy as np
import pytest
import torch
from PIL import Image

from hyca_batch.models.hunyuanvideo15 import (
    HUNYUANVIDEO15_DEFAULTS,
    HUNYUANVIDEO15_TARGET_SIZE,
    HUNYUANVIDEO15_TRANSFORMER,
    HUNYUANVIDEO15_VAE,
    TINY15_DEFAULTS,
    TINY15_TARGET_SIZE,
    TINY15_TOKENIZER_DIRS,
    build_tiny15_pipeline,
    i2v_video_size,
    load_tiny15_tokenizers,
    save_tiny15_pipeline,
    text_to_video,
)
from hyca_batch.models.metadata import MODEL_METADATA_FILENAME
from hyca_batch.models.tiny import tokenizer_definition
from hyca_batch.training.tokenizers import (
    HUNYUANVIDEO15_CROP_START,
    QWEN_IM_END,
    build_byt5_tokenizer,
    build_qwen_tokenizer,
    chat_prefix_length,
    hunyuanvideo15_system_message,
    qwen_chat_prefix,
)

MODULES = ("text_encoder", "text_encoder_2", "transformer", "vae", "image_encoder")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def pipeline(one_thread):
    pipe = build_tiny15_pipeline(seed=0)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _latents(pipe, prompt: str, seed: int = 0) -> torch.Tensor:
    d = TINY15_DEFAULTS
    return text_to_video(pipe)(
        prompt,
        height=d.height,
        width=d.width,
        num_frames=d.num_frames,
        num_inference_steps=d.num_inference_steps,
        generator=torch.Generator("cpu").manual_seed(seed),
        output_type="latent",
    ).frames


def _fingerprint(pipe) -> str:
    """SHA-256 over every weight (name, dtype, shape, bytes), the tokenizers and the non-module configs."""
    digest = hashlib.sha256()
    for name in MODULES:
        state = getattr(pipe, name).state_dict()
        for key in sorted(state):
            tensor = state[key].detach().contiguous()
            digest.update(f"{name}.{key}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
            digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    digest.update(tokenizer_definition(pipe.tokenizer).encode())
    digest.update(json.dumps(pipe.tokenizer_2.get_vocab(), sort_keys=True).encode())
    for config in (pipe.scheduler.config, pipe.guider.config):
        digest.update(json.dumps({k: v for k, v in config.items() if not k.startswith("_")}, default=str).encode())
    digest.update(pipe.feature_extractor.to_json_string().encode())
    return digest.hexdigest()


# --- sizes and the real model's configs ----------------------------------------------------------------------------


def test_i2v_video_size_is_diffusers_bucketing():
    from diffusers.pipelines.hunyuan_video1_5.image_processor import HunyuanVideo15ImageProcessor

    processor = HunyuanVideo15ImageProcessor(vae_scale_factor=16)
    rng = random.Random(0)
    sizes = [(rng.randint(1, 4000), rng.randint(1, 4000)) for _ in range(300)]
    sizes += [(40, 64), (64, 40), (64, 64), (480, 848), (720, 1280), (1, 4000), (4000, 1), (9, 16), (16, 9)]
    for target in (TINY15_TARGET_SIZE, 640, 960):
        for height, width in sizes:
            expected = tuple(processor.calculate_default_height_width(height, width, target))
            assert i2v_video_size(height, width, target) == expected, (height, width, target)
    # The presets' 16:9 defaults are what the text-to-video pipeline picks at their target sizes.
    for resolution, defaults in HUNYUANVIDEO15_DEFAULTS.items():
        target = HUNYUANVIDEO15_TARGET_SIZE[resolution]
        assert i2v_video_size(9, 16, target) == (defaults.height, defaults.width)


def test_real_configs_match_the_diffusers_classes():
    from diffusers import AutoencoderKLHunyuanVideo15, HunyuanVideo15Transformer3DModel

    for cls, config in (
        (HunyuanVideo15Transformer3DModel, HUNYUANVIDEO15_TRANSFORMER),
        (AutoencoderKLHunyuanVideo15, HUNYUANVIDEO15_VAE),
    ):
        defaults = {k: p.default for k, p in inspect.signature(cls.__init__).parameters.items() if k != "self"}
        assert set(config) == set(defaults), cls.__name__
        differing = {k for k in config if config[k] != defaults[k]}
        # The class defaults to an image-to-video task type; the 480p t2v checkpoint says t2v.
        assert differing == ({"task_type"} if cls is HunyuanVideo15Transformer3DModel else set()), cls.__name__


# --- the Qwen2-style tokenizer ---------------------------------------------------------------------------------------


def test_shipped_tokenizers_are_what_the_builders_make():
    qwen, byt5 = load_tiny15_tokenizers()
    built = build_qwen_tokenizer()
    assert tokenizer_definition(qwen) == tokenizer_definition(built)
    assert qwen.chat_template == built.chat_template
    assert (qwen.eos_token, qwen.pad_token, qwen.bos_token) == ("<|im_end|>", "<|endoftext|>", None)
    assert (qwen.padding_side, qwen.model_max_length) == ("right", built.model_max_length)
    assert byt5.get_vocab() == build_byt5_tokenizer().get_vocab() and len(byt5) == 384
    assert (TINY15_TOKENIZER_DIRS["tokenizer"] / "tokenizer.json").is_file()


def test_chat_template_prefix_is_the_pipelines_crop(pipeline):
    tok = pipeline.tokenizer
    assert pipeline.prompt_template_encode_start_idx == HUNYUANVIDEO15_CROP_START == 108
    assert pipeline.system_message == hunyuanvideo15_system_message()
    prefix_ids = tok(qwen_chat_prefix(), add_special_tokens=False).input_ids
    assert len(prefix_ids) == chat_prefix_length(tok) == 108
    assert tok.unk_token_id is None
    im_end = tok.convert_tokens_to_ids(QWEN_IM_END)
    for prompt in ["A red ball moves left.", " leading space", "circle", "猫 🐱", "3 dots", 'a sign "OPEN"', ""]:
        # As the pipeline calls it: a batch of [system, user] chats, padded to 1000 + 108 (empty prompts become " ").
        chat = [{"role": "system", "content": pipeline.system_message}, {"role": "user", "content": prompt or " "}]
        batch = tok.apply_chat_template(
            [chat],
            add_generation_prompt=True,
            tokenize=True,
            return_dict=True,
            padding="max_length",
            max_length=1000 + 108,
            truncation=True,
            return_tensors="pt",
        )
        ids = batch.input_ids[0].tolist()
        assert len(ids) == 1108
        assert ids[:108] == prefix_ids, prompt
        own = tok(prompt or " ", add_special_tokens=False).input_ids
        assert ids[108 : 108 + len(own) + 1] == own + [im_end], prompt
        assert batch.attention_mask[0, :108].all() and batch.attention_mask[0, -1] == 0  # padded on the right


# --- the tiny pipeline -----------------------------------------------------------------------------------------------


def test_tiny15_is_wired_like_hunyuanvideo15(pipeline):
    p = pipeline
    config = p.transformer.config
    assert config.text_embed_dim == p.text_encoder.config.hidden_size
    assert config.text_embed_2_dim == p.text_encoder_2.config.d_model
    assert config.image_embed_dim == p.image_encoder.config.hidden_size
    assert sum(config.rope_axes_dim) == config.attention_head_dim
    assert config.in_channels == 2 * p.vae.config.latent_channels + 1
    assert config.out_channels == p.vae.config.latent_channels == 4
    assert config.num_attention_heads % 2 == 0  # Ulysses over 2 ranks splits heads
    assert (p.vae_scale_factor_spatial, p.vae_scale_factor_temporal, p.target_size) == (16, 4, TINY15_TARGET_SIZE)
    assert p.text_encoder.config.num_hidden_layers >= 3  # hidden_states[-3] is a layer's output
    assert p.text_encoder.config.vocab_size == len(p.tokenizer)
    assert p.text_encoder_2.config.vocab_size >= len(p.tokenizer_2)
    assert p.scheduler.config.shift == 5.0 and p.guider.guidance_scale == TINY15_DEFAULTS.guidance_scale
    pixels = p.feature_extractor(images=Image.new("RGB", (50, 30)), return_tensors="pt").pixel_values
    assert pixels.shape == (1, 3, 28, 28)
    with torch.no_grad():
        assert p.image_encoder(pixel_values=pixels).last_hidden_state.shape == (1, 4, config.image_embed_dim)
        video = torch.rand(1, 3, 9, 64, 64) * 2 - 1
        latents = p.vae.encode(video).latent_dist.mode()
        assert latents.shape == (1, 4, 3, 4, 4)
        assert p.vae.decode(latents).sample.shape == video.shape


def test_same_seed_gives_identical_weights_and_different_seed_does_not(pipeline):
    again, other = build_tiny15_pipeline(seed=0), build_tiny15_pipeline(seed=1)
    assert _fingerprint(again) == _fingerprint(pipeline) != _fingerprint(other)
    for name in MODULES:  # every module is drawn from the seed, each on its own
        first, second = getattr(pipeline, name).state_dict(), getattr(other, name).state_dict()
        assert any(not torch.equal(first[k], second[k]) for k in first), name


def test_text_to_video_shares_the_components(pipeline):
    from diffusers import HunyuanVideo15Pipeline

    t2v = text_to_video(pipeline)
    assert isinstance(t2v, HunyuanVideo15Pipeline)
    assert text_to_video(t2v) is t2v
    for name, component in t2v.components.items():
        assert component is getattr(pipeline, name), name
    assert t2v._progress_bar_config.get("disable") is True
    with pytest.raises(TypeError):
        text_to_video(object())


def test_text_call_gives_finite_latents_that_follow_the_prompt(pipeline):
    first = _latents(pipeline, "A red ball moves left")
    assert first.shape == (1, 4, 3, 4, 4)
    assert torch.isfinite(first).all()
    assert torch.equal(first, _latents(pipeline, "A red ball moves left"))
    # The second prompt quotes text, which goes through ByT5 too.
    assert not torch.equal(first, _latents(pipeline, 'A sign that says "hello" moves up'))


def test_image_call_makes_the_bucket_size(pipeline):
    image = Image.fromarray((np.random.default_rng(0).random((40, 64, 3)) * 255).astype(np.uint8))  # 64 wide, 40 high
    frames = pipeline(
        image=image,
        prompt="A red ball moves left",
        num_frames=TINY15_DEFAULTS.num_frames,
        num_inference_steps=TINY15_DEFAULTS.num_inference_steps,
        generator=torch.Generator("cpu").manual_seed(0),
        output_type="np",
    ).frames
    height, width = i2v_video_size(40, 64, TINY15_TARGET_SIZE)
    assert (height, width) == (48, 64)
    assert frames.shape == (1, TINY15_DEFAULTS.num_frames, height, width, 3)
    assert np.isfinite(frames).all()


def test_saved_tiny15_loads_and_matches_in_memory(pipeline, tmp_path):
    from diffusers import HunyuanVideo15ImageToVideoPipeline

    directory = save_tiny15_pipeline(tmp_path / "tiny15", seed=0)
    meta = json.loads((directory / MODEL_METADATA_FILENAME).read_text())
    assert meta["defaults"] == {
        "height": 64,
        "width": 64,
        "num_frames": 9,
        "num_inference_steps": 8,
        "guidance_scale": 6.0,
        "fps": 8,
    }
    assert (meta["preset"], meta["seed"]) == ("tiny15", 0)
    loaded = HunyuanVideo15ImageToVideoPipeline.from_pretrained(directory)
    loaded.set_progress_bar_config(disable=True)
    assert _fingerprint(loaded) == _fingerprint(pipeline)
    prompt = "A small yellow star spins clockwise"
    expected = _latents(pipeline, prompt, seed=3)
    # Loaded weights live at unaligned offsets of the safetensors buffer, where CPU kernels may round differently
    # in the last bit; copied into fresh (aligned) memory, the loaded model computes bit for bit the same.
    assert torch.allclose(_latents(loaded, prompt, seed=3), expected, rtol=0, atol=1e-5)
    with torch.no_grad():
        for name in MODULES:
            for tensor in [*getattr(loaded, name).parameters(), *getattr(loaded, name).buffers()]:
                tensor.data = tensor.data.clone()
    assert torch.equal(_latents(loaded, prompt, seed=3), expected)


def test_a_directory_is_resolved_by_its_pipeline_class_without_loading(tmp_path):
    """The driver sizes rows from a directory's JSON files alone: the family from model_index.json's class, the
    480p/720p defaults from the transformer's target_size, image-to-video from the image pipeline class."""
    from hyca_batch.models import PRESETS, resolve_model
    from hyca_batch.models.hunyuanvideo15 import HUNYUANVIDEO15_DEFAULTS, HUNYUANVIDEO15_HUB_IDS

    def directory(name: str, pipeline_class: str, target_size: int):
        path = tmp_path / name
        (path / "transformer").mkdir(parents=True)
        (path / "model_index.json").write_text(json.dumps({"_class_name": pipeline_class}))
        (path / "transformer" / "config.json").write_text(json.dumps({"target_size": target_size}))
        return resolve_model(str(path))

    t2v = directory("t2v-720p", "HunyuanVideo15Pipeline", 960)
    assert t2v.family == "hunyuanvideo15" and t2v.defaults == HUNYUANVIDEO15_DEFAULTS["720p"]
    assert t2v.i2v_target_size is None
    with pytest.raises(ValueError, match="no image-to-video"):
        t2v.image_video_size(480, 640)
    i2v = directory("i2v-480p", "HunyuanVideo15ImageToVideoPipeline", 640)
    assert i2v.defaults == HUNYUANVIDEO15_DEFAULTS["480p"] and i2v.i2v_target_size == 640
    assert i2v.image_video_size(720, 1280) == (480, 848)
    first = directory("v1", "HunyuanVideoPipeline", 0)
    assert first.family == "hunyuanvideo" and first.defaults == PRESETS["hunyuanvideo"].defaults
    # A hub id of a preset resolves to the preset's facts, under the id's name.
    hub = resolve_model(HUNYUANVIDEO15_HUB_IDS["720p", "i2v"])
    assert hub.name == HUNYUANVIDEO15_HUB_IDS["720p", "i2v"] and hub.i2v_target_size == 960

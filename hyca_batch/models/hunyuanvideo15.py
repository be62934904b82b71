"""HunyuanVideo 1.5 through diffusers: its presets, generation defaults, image-to-video sizing, the real model's
configs, and ``tiny15``, an offline tiny model of the real classes.

Kept free of heavy imports (the job driver resolves models and sizes image rows without diffusers): the image
bucketing below is diffusers' ``HunyuanVideo15ImageProcessor.calculate_default_height_width``, restated so the
driver can size an image row before any weights exist (``tests/test_hunyuanvideo15.py`` holds the two equal).

``tiny15`` is to HunyuanVideo 1.5 what ``tiny`` is to HunyuanVideo: every component of the image-to-video pipeline
(Qwen2.5-VL text model, ByT5, SigLIP, the 16x/4x VAE, the transformer, scheduler, guider) at toy sizes, weights
seeded per component, tokenizers shipped in ``weights/tiny15`` (a Qwen2-style one built by
``hyca_batch.training.tokenizers`` so that the pipeline's chat-template crop of 108 tokens lands exactly on the
prompt, and ByT5's, which needs no vocabulary).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from hyca_batch.models.metadata import write_model_metadata
from hyca_batch.types import GenerationDefaults

if TYPE_CHECKING:  # the heavy imports wait until a model is really built (the job driver imports this module)
    from diffusers import HunyuanVideo15ImageToVideoPipeline, HunyuanVideo15Pipeline
    from transformers import ByT5Tokenizer, PreTrainedTokenizerFast, SiglipImageProcessorPil

#: The hub's diffusers checkpoints: (resolution, task) -> repo id.
HUNYUANVIDEO15_HUB_IDS = {
    ("480p", "t2v"): "hunyuanvideo-community/HunyuanVideo-1.5-Diffusers-480p_t2v",
    ("720p", "t2v"): "hunyuanvideo-community/HunyuanVideo-1.5-Diffusers-720p_t2v",
    ("480p", "i2v"): "hunyuanvideo-community/HunyuanVideo-1.5-Diffusers-480p_i2v",
    ("720p", "i2v"): "hunyuanvideo-community/HunyuanVideo-1.5-Diffusers-720p_i2v",
}
#: 121 frames (5 s at 24 fps), 50 steps, classifier-free guidance 6.0: the model card's settings. The sizes are
#: what the pipeline picks for 16:9 at the checkpoints' ``target_size`` (640 and 960).
HUNYUANVIDEO15_DEFAULTS = {
    "480p": GenerationDefaults(
        height=480, width=848, num_frames=121, num_inference_steps=50, guidance_scale=6.0, fps=24
    ),
    "720p": GenerationDefaults(
        height=720, width=1280, num_frames=121, num_inference_steps=50, guidance_scale=6.0, fps=24
    ),
}
HUNYUANVIDEO15_TARGET_SIZE = {"480p": 640, "720p": 960}
#: The VAE's spatial compression (16) times the transformer's patch (1): image buckets are multiples of it.
HUNYUANVIDEO15_SIZE_MULTIPLE = 16


def _crop_sizes(target_size: int, multiple: int, max_ratio: float = 4.0) -> list[tuple[int, int]]:
    """diffusers' ``generate_crop_size_list``: (height, width) buckets of about ``target_size**2`` pixels."""
    patches = round((target_size / multiple) ** 2)
    sizes, wp, hp = [], patches, 1
    while wp > 0:
        if max(wp, hp) / min(wp, hp) <= max_ratio:
            sizes.append((wp * multiple, hp * multiple))
        if (hp + 1) * wp <= patches:
            hp += 1
        else:
            wp -= 1
    return sizes


def i2v_video_size(
    height: int, width: int, target_size: int, multiple: int = HUNYUANVIDEO15_SIZE_MULTIPLE
) -> tuple[int, int]:
    """The (height, width) HunyuanVideo 1.5's image-to-video pipeline makes from an image of this size: the bucket
    whose aspect ratio is closest to the image's, on the image's side of square (the image is resized and
    center-cropped to it)."""
    buckets = _crop_sizes(target_size, multiple)
    aspect = float(height) / float(width)
    ratios = [round(float(h) / float(w), 5) for h, w in buckets]
    side = [(i, r - aspect) for i, r in enumerate(ratios) if (r - aspect <= 0 if aspect >= 1 else r - aspect >= 0)]
    best = min(side, key=lambda pair: abs(pair[1]))[0]
    return buckets[best]


# --- the real model's configs --------------------------------------------------------------------------------------

#: The 8.3B transformer of the hub's 480p text-to-video diffusers checkpoint (its transformer/config.json). These are
#: diffusers' ``HunyuanVideo15Transformer3DModel`` defaults except ``task_type``: the class defaults to "i2v", the
#: t2v checkpoints say "t2v" (nothing in diffusers reads it). The 720p checkpoints differ in ``target_size`` (960).
HUNYUANVIDEO15_TRANSFORMER: dict[str, Any] = dict(
    in_channels=65,  # 32 noisy latent channels + 32 image-condition channels + 1 condition mask
    out_channels=32,
    num_attention_heads=16,
    attention_head_dim=128,
    num_layers=54,
    num_refiner_layers=2,
    mlp_ratio=4.0,
    patch_size=1,
    patch_size_t=1,
    qk_norm="rms_norm",
    text_embed_dim=3584,  # Qwen2.5-VL-7B's hidden size
    text_embed_2_dim=1472,  # ByT5-small's d_model
    image_embed_dim=1152,  # SigLIP so400m's hidden size
    rope_theta=256.0,
    rope_axes_dim=(16, 56, 56),
    target_size=640,
    task_type="t2v",
    use_meanflow=False,
)
#: ``AutoencoderKLHunyuanVideo15``'s defaults, which are the checkpoints' VAE: 16x in space, 4x in time, 32 channels.
HUNYUANVIDEO15_VAE: dict[str, Any] = dict(
    in_channels=3,
    out_channels=3,
    latent_channels=32,
    block_out_channels=(128, 256, 512, 1024, 1024),
    layers_per_block=2,
    spatial_compression_ratio=16,
    temporal_compression_ratio=4,
    downsample_match_channel=True,
    upsample_match_channel=True,
    scaling_factor=1.03682,
)
#: The model card's flow shifts ("Optimal Inference Configurations": 480p 5, 720p 9) for text-to-video; the card
#: gives 720p image-to-video 7 instead, kept apart in ``HUNYUANVIDEO15_I2V_SCHEDULER_SHIFT``.
HUNYUANVIDEO15_SCHEDULER_SHIFT = {"480p": 5.0, "720p": 9.0}
HUNYUANVIDEO15_I2V_SCHEDULER_SHIFT = {"480p": 5.0, "720p": 7.0}


# --- the tiny model ------------------------------------------------------------------------------------------------

# 8 steps like the tiny HunyuanVideo; 9 frames = 3 latent frames, 64x64 = 4x4 latents (16x VAE, patch 1).
TINY15_DEFAULTS = GenerationDefaults(
    height=64, width=64, num_frames=9, num_inference_steps=8, guidance_scale=6.0, fps=8
)
#: The tiny transformer's ``target_size``: image rows are bucketed around 64x64 pixels (16 latent cells).
TINY15_TARGET_SIZE = 64
TINY15_SCHEDULER_SHIFT = 5.0  # the 480p shift
#: The shipped tokenizers (Qwen2-style, ByT5), as the HunyuanVideo 1.5 pipelines name their components.
TINY15_TOKENIZER_DIRS = {
    name: Path(__file__).resolve().parent / "weights" / "tiny15" / name for name in ("tokenizer", "tokenizer_2")
}

_QWEN_HIDDEN, _T5_D_MODEL, _SIGLIP_HIDDEN = 32, 16, 24
_TINY15_LATENT_CHANNELS = 4

#: The tiny transformer: HunyuanVideo 1.5's shapes where they matter (patch 1, a 2C+1-channel input that carries the
#: image condition and its mask, three conditioning streams: Qwen, ByT5, SigLIP), at toy widths. 2 heads of 16 keep
#: 2-way Ulysses possible; the rope axes split the head dimension (4 + 6 + 6 = 16) like (16, 56, 56) splits 128.
TINY15_TRANSFORMER: dict[str, Any] = dict(
    in_channels=2 * _TINY15_LATENT_CHANNELS + 1,
    out_channels=_TINY15_LATENT_CHANNELS,
    num_attention_heads=2,
    attention_head_dim=16,
    num_layers=3,
    num_refiner_layers=1,
    mlp_ratio=2.0,
    patch_size=1,
    patch_size_t=1,
    qk_norm="rms_norm",
    text_embed_dim=_QWEN_HIDDEN,
    text_embed_2_dim=_T5_D_MODEL,
    image_embed_dim=_SIGLIP_HIDDEN,
    rope_theta=256.0,
    rope_axes_dim=(4, 6, 6),
    target_size=TINY15_TARGET_SIZE,
    task_type="i2v",
    use_meanflow=False,
)
#: The smallest VAE of the real class that keeps its 16x/4x compression. 16x needs five blocks (four 2x spatial
#: downsamples, and each downsampling block i reads block_out_channels[i + 1]); a downsample's conv has
#: out_channels // 4 (space only) or // 8 (space and time, blocks 2 and 3) channels, so blocks 1-2 need >= 4 and
#: blocks 3-4 >= 8; the last must be a multiple of 2 * latent_channels (mean and logvar). Block 0 could be 2 (even
#: 1), but its RMS norm over 1-2 channels is degenerate (a sign), so it is 4.
TINY15_VAE: dict[str, Any] = dict(
    in_channels=3,
    out_channels=3,
    latent_channels=_TINY15_LATENT_CHANNELS,
    block_out_channels=(4, 4, 4, 8, 8),
    layers_per_block=1,
    spatial_compression_ratio=16,
    temporal_compression_ratio=4,
    downsample_match_channel=True,
    upsample_match_channel=True,
    scaling_factor=1.03682,
)
#: Qwen2.5-VL's text model at toy size (the vocabulary and special token ids come from the tokenizer). 3 layers: the
#: pipeline uses hidden_states[-3], which is then a layer's output, not the raw embeddings. Head dim 8: the M-RoPE
#: sections must cover head_dim / 2 = 4 rotary frequencies (the real model's (16, 24, 24) covers 64).
TINY15_QWEN: dict[str, Any] = dict(
    hidden_size=_QWEN_HIDDEN,
    intermediate_size=64,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=2048,  # the pipeline feeds 108 + 1000 tokens
    rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [2, 1, 1]},
)
#: ByT5 at toy size: the full 384-id vocabulary (256 bytes + 3 specials + 125 extra ids) of ``ByT5Tokenizer``.
TINY15_T5: dict[str, Any] = dict(
    vocab_size=384,
    d_model=_T5_D_MODEL,
    d_kv=8,
    d_ff=32,
    num_layers=2,
    num_heads=2,
    feed_forward_proj="gated-gelu",  # as ByT5
    pad_token_id=0,
    eos_token_id=1,
    decoder_start_token_id=0,
)
#: SigLIP's vision tower at toy size: 28x28 images in 14x14 patches, so 4 image tokens (the real one: 729).
TINY15_SIGLIP: dict[str, Any] = dict(
    hidden_size=_SIGLIP_HIDDEN,
    intermediate_size=48,
    num_hidden_layers=2,
    num_attention_heads=2,
    num_channels=3,
    image_size=28,
    patch_size=14,
)

ModuleT = TypeVar("ModuleT")


def load_tiny15_tokenizers() -> tuple[PreTrainedTokenizerFast, ByT5Tokenizer]:
    """The shipped tokenizers of the ``tiny15`` preset (Qwen2-style, ByT5)."""
    from transformers import ByT5Tokenizer, PreTrainedTokenizerFast

    from hyca_batch.models.tiny import load_shipped_tokenizers

    classes = {"tokenizer": PreTrainedTokenizerFast, "tokenizer_2": ByT5Tokenizer}
    return load_shipped_tokenizers("tiny15", classes, TINY15_TOKENIZER_DIRS)


def tiny15_feature_extractor() -> SiglipImageProcessorPil:
    """SigLIP's image processor at the tiny encoder's 28x28 (resize, rescale to [0, 1], normalize by 0.5/0.5).

    The PIL backend by name: ``SiglipImageProcessor`` resolves to a torchvision one where torchvision is installed,
    whose resizing differs slightly, and the same seed must give the same video on every machine.
    """
    from transformers import SiglipImageProcessorPil

    size = TINY15_SIGLIP["image_size"]
    return SiglipImageProcessorPil(size={"height": size, "width": size})


def build_tiny15_pipeline(seed: int = 0) -> HunyuanVideo15ImageToVideoPipeline:
    """A HunyuanVideo15ImageToVideoPipeline with toy-sized real components and weights drawn from ``seed``.

    Every component of the real model is there (Qwen2.5-VL text model, ByT5 encoder, SigLIP vision tower, the 16x/4x
    VAE, the transformer, flow-matching scheduler, classifier-free guider), so the same object serves image rows and,
    through ``text_to_video``, text rows. Each module is built under its own seed (``tiny._seeded``): the same seed
    gives bit-identical weights in any process.
    """
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**59:
        raise ValueError(f"seed must be a non-negative integer below 2**59, got {seed!r}")
    from diffusers import (
        AutoencoderKLHunyuanVideo15,
        ClassifierFreeGuidance,
        FlowMatchEulerDiscreteScheduler,
        HunyuanVideo15ImageToVideoPipeline,
        HunyuanVideo15Transformer3DModel,
    )
    from transformers import (
        Qwen2_5_VLTextConfig,
        Qwen2_5_VLTextModel,
        SiglipVisionConfig,
        SiglipVisionModel,
        T5Config,
        T5EncoderModel,
    )

    from hyca_batch.models.tiny import _seeded

    tokenizer, tokenizer_2 = load_tiny15_tokenizers()
    if len(tokenizer_2) > TINY15_T5["vocab_size"]:
        raise RuntimeError(f"ByT5 tokenizer has {len(tokenizer_2)} ids, the tiny T5 only {TINY15_T5['vocab_size']}")
    qwen_config = Qwen2_5_VLTextConfig(
        vocab_size=len(tokenizer),
        # As Qwen2.5-VL: BOS is <|endoftext|>, EOS <|im_end|>, no padding id (its rows are masked out anyway).
        bos_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **copy.deepcopy(TINY15_QWEN),  # the config keeps (and may edit) the rope dict it is given
    )
    t5_config = T5Config(**copy.deepcopy(TINY15_T5))
    siglip_config = SiglipVisionConfig(**copy.deepcopy(TINY15_SIGLIP))
    text_encoder = _seeded(seed, 0, lambda: Qwen2_5_VLTextModel(qwen_config))
    text_encoder_2 = _seeded(seed, 1, lambda: T5EncoderModel(t5_config))
    transformer = _seeded(seed, 2, lambda: HunyuanVideo15Transformer3DModel(**TINY15_TRANSFORMER))
    vae = _seeded(seed, 3, lambda: AutoencoderKLHunyuanVideo15(**TINY15_VAE))
    image_encoder = _seeded(seed, 4, lambda: SiglipVisionModel(siglip_config))
    return HunyuanVideo15ImageToVideoPipeline(
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        transformer=transformer,
        vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=TINY15_SCHEDULER_SHIFT),
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
        guider=ClassifierFreeGuidance(guidance_scale=TINY15_DEFAULTS.guidance_scale),
        image_encoder=image_encoder,
        feature_extractor=tiny15_feature_extractor(),
    )


def text_to_video(
    pipeline: HunyuanVideo15ImageToVideoPipeline | HunyuanVideo15Pipeline,
) -> HunyuanVideo15Pipeline:
    """A text-to-video pipeline over the same component objects as ``pipeline`` (no copy, no cast: the weights,
    their device and dtype are shared); a text-to-video pipeline is returned as is.

    Not diffusers' ``from_pipe``, which casts every shared module to its ``dtype`` argument (float32 by default),
    in place, under the image pipeline too.
    """
    from diffusers import HunyuanVideo15ImageToVideoPipeline, HunyuanVideo15Pipeline

    if isinstance(pipeline, HunyuanVideo15Pipeline):
        return pipeline
    if not isinstance(pipeline, HunyuanVideo15ImageToVideoPipeline):
        raise TypeError(f"expected a HunyuanVideo 1.5 pipeline, got {type(pipeline).__name__}")
    expected, _ = HunyuanVideo15Pipeline._get_signature_keys(HunyuanVideo15Pipeline)
    components = pipeline.components
    t2v = HunyuanVideo15Pipeline(**{name: components[name] for name in expected})
    name_or_path = pipeline.config.get("_name_or_path")
    if name_or_path is not None:
        t2v.register_to_config(_name_or_path=name_or_path)
    progress = getattr(pipeline, "_progress_bar_config", None)
    if progress:
        t2v.set_progress_bar_config(**progress)
    return t2v


def save_tiny15_pipeline(path: str | Path, seed: int = 0) -> Path:
    """Save the tiny image-to-video pipeline for ``seed`` as a diffusers directory (safetensors) plus
    ``hyca_batch.json`` with TINY15_DEFAULTS, so loading it by path runs it at its own sizes."""
    directory = Path(path)
    pipeline = build_tiny15_pipeline(seed)
    pipeline.save_pretrained(directory, safe_serialization=True)
    write_model_metadata(directory, TINY15_DEFAULTS, preset="tiny15", seed=seed)
    return directory

"""A tiny HunyuanVideo that needs no download: the real diffusers/transformers classes at toy sizes.

Tests, CI and the demo run the production code path (HunyuanVideoPipeline, its transformer, VAE, Llama
and CLIP text encoders, the flow-matching scheduler) on a CPU in seconds. Weights are random but
seeded, so the same seed gives bit-identical weights in every process: a job driver and its replicas
agree on the model without shipping it around.

The tokenizers are built locally with byte-level BPE like the real ones, and the Llama one is shaped
so that the pipeline's default prompt template works unchanged (see ``build_llama_tokenizer``). That
keeps a tiny pipeline saved to disk indistinguishable, to the loading code, from the real model.
"""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Callable, TypeVar

from hyca_batch.config import GenerationDefaults
from hyca_batch.models._vocab import BYTE_ALPHABET, ENGLISH_WORDS, learn_bpe_merges, to_byte_symbols
from hyca_batch.models.metadata import write_model_metadata

if TYPE_CHECKING:  # the heavy imports wait until a model is really built (resolve_model stays cheap)
    import torch
    from diffusers import HunyuanVideoPipeline
    from transformers import CLIPTokenizer, PreTrainedTokenizerFast

# 8 steps keep a call well under a second on a CPU while leaving room for a cache schedule (full
# step, forecast steps, full step); 9 frames = 3 latent frames, 64x64 = 8x8 latents = 4x4 patches.
TINY_DEFAULTS = GenerationDefaults(
    height=64, width=64, num_frames=9, num_inference_steps=8, guidance_scale=6.0, fps=8
)

# Llama-3's special tokens. The template uses three of them; BOS is prepended like Llama-3 does.
LLAMA_BOS = "<|begin_of_text|>"
LLAMA_EOS = "<|end_of_text|>"
LLAMA_PAD = "<|finetune_right_pad_id|>"  # Llama-3.1's padding token; Llama-3 itself has none
LLAMA_SPECIAL_TOKENS: tuple[str, ...] = (
    LLAMA_BOS,
    LLAMA_EOS,
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
    LLAMA_PAD,
)
# Llama-3's pre-tokenizer pattern (tiktoken cl100k style). Using the same split as the real
# tokenizer is what makes the template prefix come out at the same 95 tokens: every prefix piece is
# one vocabulary word, exactly as in the 128k Llama-3 vocabulary.
LLAMA3_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# HunyuanVideoPipeline's DEFAULT_PROMPT_TEMPLATE["crop_start"].
DEFAULT_TEMPLATE_CROP_START = 95

CLIP_BOS = "<|startoftext|>"
CLIP_EOS = "<|endoftext|>"
CLIP_MAX_LENGTH = 77  # what HunyuanVideoPipeline asks CLIP for

_PUNCTUATION = tuple(".,!?:;'\"()-") + ("...", "--", ".\n", ",\n", ".\n\n", "\n", "\n\n")

ModuleT = TypeVar("ModuleT")


def default_template_prefix() -> str:
    """The part of diffusers' default HunyuanVideo template that comes before the prompt."""
    from diffusers.pipelines.hunyuan_video.pipeline_hunyuan_video import DEFAULT_PROMPT_TEMPLATE

    return DEFAULT_PROMPT_TEMPLATE["template"].split("{}")[0]


def _llama_pre_tokenizer():
    from tokenizers import Regex, pre_tokenizers

    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(LLAMA3_SPLIT_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
        ]
    )


def _llama_training_words() -> list[str]:
    """Byte-level pieces that must each be one token: English words as they appear mid-sentence
    and sentence-initial, punctuation, and every piece of the default template's text."""
    pre = _llama_pre_tokenizer()
    pieces: set[str] = set()
    texts = list(_PUNCTUATION)
    for word in ENGLISH_WORDS:
        texts += [word, " " + word, word.capitalize(), " " + word.capitalize()]
    special = "(" + "|".join(map(re.escape, LLAMA_SPECIAL_TOKENS)) + ")"
    template_parts = re.split(special, default_template_prefix())
    texts += [t for t in template_parts if t and t not in LLAMA_SPECIAL_TOKENS]
    for text in texts:
        pieces.update(piece for piece, _ in pre.pre_tokenize_str(text))
    return sorted(pieces)


def build_llama_tokenizer() -> "PreTrainedTokenizerFast":
    """A Llama-3-style byte-level BPE tokenizer with a small English vocabulary.

    It splits ``BOS + default template prefix`` into exactly 95 tokens, the pipeline's default
    ``crop_start``, so the default template crops precisely the system prompt. It is a
    ``PreTrainedTokenizerFast`` because transformers 5 rebuilds a saved ``LlamaTokenizer`` its own way
    (and differently); the generic class round-trips tokenizer.json exactly.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, processors
    from tokenizers.models import BPE
    from transformers import PreTrainedTokenizerFast

    words = _llama_training_words()
    merges = learn_bpe_merges(list(w) for w in words)
    vocab: dict[str, int] = {}
    for token in list(BYTE_ALPHABET) + [a + b for a, b in merges]:
        vocab.setdefault(token, len(vocab))
    # ignore_merges: a piece that is a whole vocabulary entry is one token (as in Llama-3).
    backend = Tokenizer(BPE(vocab=vocab, merges=merges, ignore_merges=True, fuse_unk=False))
    backend.pre_tokenizer = _llama_pre_tokenizer()
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(
        [AddedToken(t, special=True, normalized=False) for t in LLAMA_SPECIAL_TOKENS]
    )
    bos_id = backend.token_to_id(LLAMA_BOS)
    backend.post_processor = processors.TemplateProcessing(
        single=f"{LLAMA_BOS}:0 $A:0",
        pair=f"{LLAMA_BOS}:0 $A:0 {LLAMA_BOS}:1 $B:1",
        special_tokens=[(LLAMA_BOS, bos_id)],
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=LLAMA_BOS,
        eos_token=LLAMA_EOS,
        pad_token=LLAMA_PAD,
        model_max_length=131072,
        padding_side="right",
    )
    prefix_length = template_prefix_length(tokenizer)
    if prefix_length != DEFAULT_TEMPLATE_CROP_START:
        raise RuntimeError(
            f"tiny Llama tokenizer splits the default template prefix into {prefix_length} tokens, "
            f"not {DEFAULT_TEMPLATE_CROP_START}: the pipeline's default crop_start would be wrong"
        )
    return tokenizer


def template_prefix_length(tokenizer: "PreTrainedTokenizerFast", prompt: str = "a red ball") -> int:
    """How many leading tokens of a templated prompt are template, or -1 if the template's tokens
    are not a prefix of the templated prompt's tokens (the crop would then cut inside a token)."""
    prefix = default_template_prefix()
    prefix_ids = tokenizer(prefix).input_ids
    full_ids = tokenizer(prefix + prompt).input_ids
    return len(prefix_ids) if full_ids[: len(prefix_ids)] == prefix_ids else -1


def build_clip_tokenizer(model_max_length: int = CLIP_MAX_LENGTH) -> "CLIPTokenizer":
    """A CLIP tokenizer over the same English words, from a vocab.json and merges.txt written here.

    The vocabulary has CLIP's layout: the 256 byte symbols, the same with the end-of-word marker
    ``</w>`` (so any unicode text tokenizes), the merged words, then the two special tokens. Words
    matter more here than for Llama: CLIP sees at most 77 tokens, and a byte-per-token prompt would
    be cut after a few dozen characters.
    """
    from transformers import CLIPTokenizer

    words = sorted({w.lower() for w in ENGLISH_WORDS} | set(".,!?:;'\"()-"))
    symbols = []
    for word in words:
        pieces = to_byte_symbols(word)
        symbols.append(pieces[:-1] + [pieces[-1] + "</w>"])
    merges = learn_bpe_merges(symbols)
    vocab: dict[str, int] = {}
    for token in list(BYTE_ALPHABET) + [b + "</w>" for b in BYTE_ALPHABET] + [a + b for a, b in merges]:
        vocab.setdefault(token, len(vocab))
    for token in (CLIP_BOS, CLIP_EOS):
        vocab.setdefault(token, len(vocab))
    with tempfile.TemporaryDirectory(prefix="hyca-clip-tok-") as tmp:
        (Path(tmp) / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
        lines = ["#version: 0.2"] + [f"{a} {b}" for a, b in merges]
        (Path(tmp) / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
        return CLIPTokenizer.from_pretrained(tmp, model_max_length=model_max_length)


def _seeded(seed: int, component: int, factory: Callable[[], ModuleT]) -> ModuleT:
    """Build one component under its own seed, leaving the caller's RNG state untouched.

    Each component gets a seed of its own (not one stream shared in build order), so adding or
    resizing one component never changes the weights of the others.
    """
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed * 16 + component)
        module = factory()
    module.eval()  # type: ignore[attr-defined]  # as from_pretrained leaves it: no dropout
    return module


def build_tiny_pipeline(seed: int = 0) -> "HunyuanVideoPipeline":
    """A HunyuanVideoPipeline with toy-sized real components and weights drawn from ``seed``.

    Shapes mirror HunyuanVideo where it matters to the code around it: patch size 2 in space and 1 in
    time, an 8x/4x VAE, a guidance-embedding transformer with double- and single-stream blocks, a
    Llama encoder whose third-from-last hidden state is used (so 3 layers: the used state is computed
    by a layer, not the raw embeddings), and CLIP pooled at its end-of-text token.
    """
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**59:
        raise ValueError(f"seed must be a non-negative integer below 2**59, got {seed!r}")
    from diffusers import (
        AutoencoderKLHunyuanVideo,
        FlowMatchEulerDiscreteScheduler,
        HunyuanVideoPipeline,
        HunyuanVideoTransformer3DModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, LlamaConfig, LlamaModel

    tokenizer = build_llama_tokenizer()
    tokenizer_2 = build_clip_tokenizer()
    llama_config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    clip_config = CLIPTextConfig(
        vocab_size=len(tokenizer_2),
        hidden_size=24,
        intermediate_size=48,
        projection_dim=24,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=CLIP_MAX_LENGTH,
        # Pool at the first <|endoftext|>. The legacy default (eos_token_id=2) pools at the largest
        # token id instead, which is a vocabulary accident, not the end of the prompt.
        bos_token_id=tokenizer_2.bos_token_id,
        eos_token_id=tokenizer_2.eos_token_id,
        pad_token_id=tokenizer_2.pad_token_id,
    )
    text_encoder = _seeded(seed, 0, lambda: LlamaModel(llama_config))
    text_encoder_2 = _seeded(seed, 1, lambda: CLIPTextModel(clip_config))
    transformer = _seeded(
        seed,
        2,
        lambda: HunyuanVideoTransformer3DModel(
            in_channels=4,
            out_channels=4,
            num_attention_heads=2,
            attention_head_dim=16,
            num_layers=2,
            num_single_layers=2,
            num_refiner_layers=1,
            mlp_ratio=2.0,
            patch_size=2,
            patch_size_t=1,
            qk_norm="rms_norm",
            guidance_embeds=True,
            text_embed_dim=llama_config.hidden_size,
            pooled_projection_dim=clip_config.hidden_size,
            rope_theta=256.0,
            rope_axes_dim=(4, 6, 6),
        ),
    )
    vae = _seeded(
        seed,
        3,
        lambda: AutoencoderKLHunyuanVideo(
            in_channels=3,
            out_channels=3,
            latent_channels=4,
            block_out_channels=(8, 8, 8, 8),
            layers_per_block=1,
            norm_num_groups=4,
            spatial_compression_ratio=8,
            temporal_compression_ratio=4,
            mid_block_add_attention=True,
        ),
    )
    scheduler = FlowMatchEulerDiscreteScheduler(shift=7.0)  # HunyuanVideo's shift
    return HunyuanVideoPipeline(
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        transformer=transformer,
        vae=vae,
        scheduler=scheduler,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
    )


def save_tiny_pipeline(path: str | Path, seed: int = 0) -> Path:
    """Save the tiny pipeline for ``seed`` as a diffusers directory (safetensors) plus
    ``hyca_batch.json`` with TINY_DEFAULTS, so loading it by path runs it at its own sizes."""
    directory = Path(path)
    pipeline = build_tiny_pipeline(seed)
    pipeline.save_pretrained(directory, safe_serialization=True)
    write_model_metadata(directory, TINY_DEFAULTS, preset="tiny", seed=seed)
    return directory


def tokenizer_definition(tokenizer: "PreTrainedTokenizerFast") -> str:
    """The tokenizer's tokenizer.json without its truncation/padding fields, as canonical JSON.

    Those two fields are per-call state that transformers writes into the backend on every padded
    or truncated call, not part of what the tokenizer is.
    """
    definition = json.loads(tokenizer.backend_tokenizer.to_str())
    definition.pop("truncation", None)
    definition.pop("padding", None)
    return json.dumps(definition, sort_keys=True, ensure_ascii=False)


def pipeline_fingerprint(pipeline: "HunyuanVideoPipeline") -> str:
    """SHA-256 over every weight (name, dtype, shape, bytes), both tokenizers and the scheduler config.

    Two processes that built ``build_tiny_pipeline(seed)`` must agree on this; a record can carry it
    to say exactly which weights made a video.
    """
    import hashlib

    import torch

    digest = hashlib.sha256()
    for name in ("text_encoder", "text_encoder_2", "transformer", "vae"):
        state = getattr(pipeline, name).state_dict()
        for key in sorted(state):
            tensor = state[key].detach().to("cpu").contiguous()
            digest.update(f"{name}.{key}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
            digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    for name in ("tokenizer", "tokenizer_2"):
        digest.update(tokenizer_definition(getattr(pipeline, name)).encode("utf-8"))
    # Private config keys are bookkeeping (e.g. ``_use_default_values`` is in set order, which
    # changes with the hash seed), not behaviour.
    scheduler_config = {k: v for k, v in pipeline.scheduler.config.items() if not k.startswith("_")}
    digest.update(json.dumps(scheduler_config, sort_keys=True, default=str).encode())
    return digest.hexdigest()

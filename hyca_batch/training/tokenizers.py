"""The tiny tokenizers, built from a word list with byte-level BPE like the real ones, and saved where the
``tiny`` preset loads them (``hyca_batch/models/weights/tiny``).

The Llama one is shaped so that HunyuanVideoPipeline's default prompt template works unchanged (see
``build_llama_tokenizer``), which keeps a tiny pipeline saved to disk indistinguishable, to the loading
code, from the real model. Run ``python -m hyca_batch.training.tokenizers`` to rebuild the shipped files.
"""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from hyca_batch.models.tiny import CLIP_MAX_LENGTH, TINY_TOKENIZER_DIRS
from hyca_batch.training.vocab import BYTE_ALPHABET, ENGLISH_WORDS, learn_bpe_merges, to_byte_symbols

if TYPE_CHECKING:
    from transformers import CLIPTokenizer, PreTrainedTokenizerFast

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

_PUNCTUATION = tuple(".,!?:;'\"()-") + ("...", "--", ".\n", ",\n", ".\n\n", "\n", "\n\n")


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


def build_llama_tokenizer() -> PreTrainedTokenizerFast:
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
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in LLAMA_SPECIAL_TOKENS])
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


def template_prefix_length(tokenizer: PreTrainedTokenizerFast, prompt: str = "a red ball") -> int:
    """How many leading tokens of a templated prompt are template, or -1 if the template's tokens
    are not a prefix of the templated prompt's tokens (the crop would then cut inside a token)."""
    prefix = default_template_prefix()
    prefix_ids = tokenizer(prefix).input_ids
    full_ids = tokenizer(prefix + prompt).input_ids
    return len(prefix_ids) if full_ids[: len(prefix_ids)] == prefix_ids else -1


def build_clip_tokenizer(model_max_length: int = CLIP_MAX_LENGTH) -> CLIPTokenizer:
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


def save_tiny_tokenizers() -> None:
    """Write the two tokenizers where the ``tiny`` preset loads them from."""
    build_llama_tokenizer().save_pretrained(TINY_TOKENIZER_DIRS["tokenizer"])
    build_clip_tokenizer().save_pretrained(TINY_TOKENIZER_DIRS["tokenizer_2"])


if __name__ == "__main__":
    save_tiny_tokenizers()
    print(f"wrote {', '.join(str(p) for p in TINY_TOKENIZER_DIRS.values())}")

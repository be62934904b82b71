"""The tiny tokenizers, built from a word list with byte-level BPE like the real ones, and saved where the
``tiny`` and ``tiny15`` presets load them (``hyca_batch/models/weights/tiny`` and ``.../tiny15``).

The Llama one is shaped so that HunyuanVideoPipeline's default prompt template works unchanged (see
``build_llama_tokenizer``), and the Qwen2 one so that HunyuanVideo 1.5's chat template crops where the real
Qwen2.5 tokenizer does (see ``build_qwen_tokenizer``), which keeps a tiny pipeline saved to disk
indistinguishable, to the loading code, from the real model. Run ``python -m hyca_batch.training.tokenizers``
to rebuild the shipped files.
"""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from hyca_batch.models.hunyuanvideo15 import TINY15_TOKENIZER_DIRS
from hyca_batch.models.tiny import CLIP_MAX_LENGTH, TINY_TOKENIZER_DIRS
from hyca_batch.training.vocab import BYTE_ALPHABET, ENGLISH_WORDS, learn_bpe_merges, to_byte_symbols

if TYPE_CHECKING:
    from tokenizers.pre_tokenizers import PreTokenizer
    from transformers import ByT5Tokenizer, CLIPTokenizer, PreTrainedTokenizerFast

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


def _training_words(pre: PreTokenizer, template: str, special_tokens: tuple[str, ...]) -> list[str]:
    """Byte-level pieces that must each be one token: English words as they appear mid-sentence
    and sentence-initial, punctuation, and every piece of ``template``'s text between its special tokens."""
    pieces: set[str] = set()
    texts = list(_PUNCTUATION)
    for word in ENGLISH_WORDS:
        texts += [word, " " + word, word.capitalize(), " " + word.capitalize()]
    special = "(" + "|".join(map(re.escape, special_tokens)) + ")"
    template_parts = re.split(special, template)
    texts += [t for t in template_parts if t and t not in special_tokens]
    for text in texts:
        pieces.update(piece for piece, _ in pre.pre_tokenize_str(text))
    return sorted(pieces)


def _llama_training_words() -> list[str]:
    return _training_words(_llama_pre_tokenizer(), default_template_prefix(), LLAMA_SPECIAL_TOKENS)


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


# --- HunyuanVideo 1.5: a Qwen2-style tokenizer and ByT5 ---------------------------------------------------------

QWEN_ENDOFTEXT = "<|endoftext|>"  # Qwen2's padding token (and the text model's BOS id)
QWEN_IM_START = "<|im_start|>"
QWEN_IM_END = "<|im_end|>"  # Qwen2.5-VL-Instruct's EOS
# Qwen2.5-VL's special added tokens, in its order (ids 151643-151656 there). Qwen's non-special added tokens
# (<tool_call>, the fill-in-the-middle ones) are left out: nothing here writes them.
QWEN_SPECIAL_TOKENS: tuple[str, ...] = (
    QWEN_ENDOFTEXT,
    QWEN_IM_START,
    QWEN_IM_END,
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
# Qwen2's pre-tokenizer pattern: Llama-3's, except that digits split one by one.
QWEN2_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# Qwen2-Instruct's ChatML template (Qwen2.5-VL's adds image and video parts, which a text encoder never sees).
QWEN2_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
    "{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
QWEN_MODEL_MAX_LENGTH = 131072
# HunyuanVideo15Pipeline's ``prompt_template_encode_start_idx``: the chat prefix's length under Qwen2.5-VL's tokenizer.
HUNYUANVIDEO15_CROP_START = 108


def hunyuanvideo15_system_message() -> str:
    """The system message the HunyuanVideo 1.5 pipelines put before every prompt (``pipeline.system_message``,
    read here from the same text's copy in ``_get_mllm_prompt_embeds``'s signature, without building a pipeline)."""
    import inspect

    from diffusers import HunyuanVideo15Pipeline

    return inspect.signature(HunyuanVideo15Pipeline._get_mllm_prompt_embeds).parameters["system_message"].default


def _chat(prompt: str, system_message: str | None = None) -> list[dict[str, str]]:
    """One conversation as the pipelines build it (``format_text_input``: an empty prompt becomes a space)."""
    system = hunyuanvideo15_system_message() if system_message is None else system_message
    return [{"role": "system", "content": system}, {"role": "user", "content": prompt or " "}]


_PROMPT_SENTINEL = "\x00PROMPT\x00"


def _render_chat(prompt: str, system_message: str | None = None) -> str:
    from jinja2 import Environment

    template = Environment(trim_blocks=True, lstrip_blocks=True).from_string(QWEN2_CHAT_TEMPLATE)  # as transformers
    return template.render(messages=_chat(prompt, system_message), add_generation_prompt=True)


def qwen_chat_prefix(system_message: str | None = None) -> str:
    """The rendered chat text before the user's prompt: system turn, then the user turn's header."""
    text = _render_chat(_PROMPT_SENTINEL, system_message)
    return text[: text.index(_PROMPT_SENTINEL)]


def _qwen_pre_tokenizer():
    from tokenizers import Regex, pre_tokenizers

    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_SPLIT_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
        ]
    )


def build_qwen_tokenizer() -> PreTrainedTokenizerFast:
    """A Qwen2-style byte-level BPE tokenizer (NFC, Qwen2's split, no BOS, ChatML template) with a small English
    vocabulary.

    It splits HunyuanVideo 1.5's chat prefix into exactly 108 tokens, the pipeline's crop start, so the crop keeps
    exactly the prompt's tokens (as the real Qwen2.5 tokenizer does). That holds with one token per pre-tokenized
    piece: the prefix is 3 special tokens and 105 pieces ("system", "\\n", the system message's words and
    punctuation, each "  1." as an 8-space run, a single space and a digit, then "\\n", "user", "\\n"), and every
    piece is in the vocabulary. It is a ``PreTrainedTokenizerFast`` (what ``Qwen2Tokenizer`` is under transformers
    5, minus the class's own rebuilding of its pipeline) because the generic class round-trips tokenizer.json
    exactly.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, normalizers, processors
    from tokenizers.models import BPE
    from transformers import PreTrainedTokenizerFast

    # The whole chat without its prompt: the prefix, and the assistant turn's header after the prompt.
    template = _render_chat(_PROMPT_SENTINEL).replace(_PROMPT_SENTINEL, "")
    words = _training_words(_qwen_pre_tokenizer(), template, QWEN_SPECIAL_TOKENS)
    merges = learn_bpe_merges(list(w) for w in words)
    vocab: dict[str, int] = {}
    for token in list(BYTE_ALPHABET) + [a + b for a, b in merges]:
        vocab.setdefault(token, len(vocab))
    # Plain BPE like Qwen2 (ignore_merges off): the learned merges alone make every training word one token.
    backend = Tokenizer(BPE(vocab=vocab, merges=merges, ignore_merges=False, fuse_unk=False))
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = _qwen_pre_tokenizer()
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in QWEN_SPECIAL_TOKENS])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token=QWEN_IM_END,
        pad_token=QWEN_ENDOFTEXT,
        model_max_length=QWEN_MODEL_MAX_LENGTH,
        padding_side="right",  # the pipeline crops the first 108 positions: padding must come after
        clean_up_tokenization_spaces=False,
        chat_template=QWEN2_CHAT_TEMPLATE,
    )
    prefix_length = chat_prefix_length(tokenizer)
    if prefix_length != HUNYUANVIDEO15_CROP_START:
        raise RuntimeError(
            f"tiny Qwen tokenizer splits HunyuanVideo 1.5's chat prefix into {prefix_length} tokens, "
            f"not {HUNYUANVIDEO15_CROP_START}: the pipeline's crop would be wrong"
        )
    return tokenizer


def chat_prefix_length(tokenizer: PreTrainedTokenizerFast, prompt: str = "a red ball") -> int:
    """How many leading tokens of a chat-templated prompt (rendered and tokenized by ``apply_chat_template``, as
    the pipeline does) are template, or -1 if the prefix's tokens are not a prefix of the templated prompt's tokens
    (the crop would then cut inside a token)."""
    prefix_ids = tokenizer(qwen_chat_prefix(), add_special_tokens=False).input_ids
    encoded = tokenizer.apply_chat_template(_chat(prompt), add_generation_prompt=True, tokenize=True, return_dict=True)
    full_ids = list(encoded["input_ids"])
    return len(prefix_ids) if full_ids[: len(prefix_ids)] == prefix_ids else -1


def build_byt5_tokenizer() -> ByT5Tokenizer:
    """ByT5's tokenizer: bytes + 3 + pad/eos/unk and 125 extra ids, 384 in all; it needs no vocabulary files."""
    from transformers import ByT5Tokenizer

    return ByT5Tokenizer()


def save_tiny15_tokenizers() -> None:
    """Write the two tokenizers where the ``tiny15`` preset loads them from."""
    build_qwen_tokenizer().save_pretrained(TINY15_TOKENIZER_DIRS["tokenizer"])
    build_byt5_tokenizer().save_pretrained(TINY15_TOKENIZER_DIRS["tokenizer_2"])


if __name__ == "__main__":
    save_tiny_tokenizers()
    save_tiny15_tokenizers()
    written = [*TINY_TOKENIZER_DIRS.values(), *TINY15_TOKENIZER_DIRS.values()]
    print(f"wrote {', '.join(str(p) for p in written)}")

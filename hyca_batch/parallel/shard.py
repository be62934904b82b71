"""Sequence parallelism for diffusers' video transformers, as hooks in the style of ``diffusers.hooks``.

The transformer's own forward runs unchanged on every rank; hooks change what flows through it, at the modules
its family's adapter names (``models.adapters``):

- the patch embedder (``x_embedder``): the patch tokens are padded to a multiple of the ranks and each rank
  keeps its chunk;
- the rotary table maker (``rope``): the tables are split the same way;
- the first block's input: text padding is dropped (it is never attended to; xDiT does the same), so the
  joint attention needs no mask; text tokens are replicated on every rank. Both HunyuanVideos put the valid
  text tokens first, and the adapter counts them from the transformer's arguments;
- every block's attention processor (``SPAttnProcessor``): USP attention (``attention.py``);
- the output projection (``proj_out``): the rank's output tokens are placed into a full-size zero tensor,
  without communication.

The last point is what lets a HyCa skipped step run with no collective at all: patch embedding works
per patch and the flow-matching scheduler step is elementwise, so each rank's latents stay correct on
its own patches through the whole denoising loop, and one ``gather_latents`` after the loop (an
all-reduce of each rank's owned patches) assembles the video. A full step's only collectives are the
attention's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from diffusers.hooks import HookRegistry, ModelHook

from hyca_batch.config import ParallelConfig
from hyca_batch.models.adapters import Arguments, Family, family_of
from hyca_batch.parallel.attention import make_xfuser_attention, usp_attention_torch
from hyca_batch.parallel.groups import SPGroups

_HOOK = "hyca_sequence_parallel"


@dataclass
class SequenceParallel:
    """One rank's view of the sharded transformer: its groups and the current video's token layout."""

    groups: SPGroups
    patch: tuple[int, int, int]  # (t, h, w) patch size of the transformer
    xfuser: object | None = None  # xfuser's attention op, when that backend is in use
    tokens: int = 0  # video tokens of the current video (set by the x_embedder hook)
    chunk: int = 0  # tokens per rank, padding included
    latent_grid: tuple[int, int, int] = (0, 0, 0)  # (frames, height, width) in patches
    text_tokens: int | None = None  # valid text tokens of the current pass (set by the transformer's hook)

    @property
    def rank(self) -> int:
        return self.groups.rank

    @property
    def world(self) -> int:
        return self.groups.world

    @property
    def padded(self) -> bool:
        return self.chunk * self.world != self.tokens

    @property
    def attention_kernel(self) -> str:
        return f"xfuser ({self.xfuser.kernel})" if self.xfuser is not None else "torch"

    def layout(self, tokens: int) -> None:
        self.tokens = tokens
        self.chunk = -(-tokens // self.world)

    def shard(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        """This rank's chunk of a full-length tensor along ``dim``, zero-padded at the end."""
        pad = self.chunk * self.world - x.shape[dim]
        if pad:
            shape = list(x.shape)
            shape[dim] = pad
            x = torch.cat([x, x.new_zeros(shape)], dim=dim)
        return x.narrow(dim, self.rank * self.chunk, self.chunk)

    def place(self, local: torch.Tensor) -> torch.Tensor:
        """(B, chunk, C) -> (B, tokens, C): this rank's tokens in place, zeros elsewhere. No communication."""
        full = local.new_zeros(local.shape[0], self.chunk * self.world, local.shape[2])
        full[:, self.rank * self.chunk : (self.rank + 1) * self.chunk] = local
        return full[:, : self.tokens]

    def gather_tokens(self, local: torch.Tensor) -> torch.Tensor:
        """(B, chunk, C) on every rank -> (B, tokens, C) on every rank (for calibration probes)."""
        parts = [torch.empty_like(local) for _ in range(self.world)]
        dist.all_gather(parts, local.contiguous())
        return torch.cat(parts, dim=1)[:, : self.tokens]

    def owned(self, latents: torch.Tensor) -> torch.Tensor:
        """1 where this rank's tokens write ``latents`` (B, C, F, H, W), else 0."""
        frames, height, width = self.latent_grid
        token = torch.arange(frames * height * width, device=latents.device)
        mask = (token // self.chunk == self.rank).reshape(frames, height, width).to(latents.dtype)
        pt, ph, pw = self.patch
        mask = mask.repeat_interleave(pt, 0).repeat_interleave(ph, 1).repeat_interleave(pw, 2)
        return mask[None, None]

    def gather_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Every rank's patches into one tensor on every rank: the one collective outside attention.

        Owned patches partition the latents, so the sum adds one value to zeros: exact in any dtype.
        """
        if self.world == 1:
            return latents
        full = latents * self.owned(latents)
        dist.all_reduce(full)
        return full

    def attention(self, q, k, v, text_q, text_k, text_v) -> torch.Tensor:
        if self.xfuser is not None and not self.padded:
            return self.xfuser(q, k, v, text_q, text_k, text_v)
        return usp_attention_torch(self.groups, self.tokens, q, k, v, text_q, text_k, text_v)


def _project(x, heads, to_q, to_k, to_v, norm_q, norm_k) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(B, S, heads x D) -> q, k, v as (B, S, heads, D), q and k normalized: diffusers' steps 1-2."""
    q, k, v = (proj(x).unflatten(2, (heads, -1)) for proj in (to_q, to_k, to_v))
    if norm_q is not None:
        q = norm_q(q)
    if norm_k is not None:
        k = norm_k(k)
    return q, k, v


class SPAttnProcessor:
    """diffusers' ``HunyuanVideoAttnProcessor2_0`` (and ``HunyuanVideo15AttnProcessor2_0``, the same steps) with its
    attention call replaced by USP attention.

    Steps 1-4 and 6 are the diffusers processor's, in the same order, so a rank computes exactly what the
    single-process model computes on its tokens. The attention mask is not used: text padding was
    dropped before the blocks (``SequenceParallel``), and video padding is dropped inside the attention.
    """

    def __init__(self, sp: SequenceParallel):
        self.sp = sp

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None):
        from diffusers.models.embeddings import apply_rotary_emb

        text_len = encoder_hidden_states.shape[1]
        if attn.add_q_proj is None:  # single-stream block: one projection over [video, text]
            hidden_states = torch.cat([hidden_states, encoder_hidden_states], dim=1)

        query, key, value = _project(
            hidden_states, attn.heads, attn.to_q, attn.to_k, attn.to_v, attn.norm_q, attn.norm_k
        )
        if attn.add_q_proj is None:
            (query, text_q), (key, text_k), (value, text_v) = (
                (x[:, :-text_len], x[:, -text_len:]) for x in (query, key, value)
            )
        else:
            text_q, text_k, text_v = _project(
                encoder_hidden_states,
                attn.heads,
                attn.add_q_proj,
                attn.add_k_proj,
                attn.add_v_proj,
                attn.norm_added_q,
                attn.norm_added_k,
            )
        if image_rotary_emb is not None:
            query = apply_rotary_emb(query, image_rotary_emb, sequence_dim=1)
            key = apply_rotary_emb(key, image_rotary_emb, sequence_dim=1)

        out = self.sp.attention(query, key, value, text_q, text_k, text_v)
        out = out.flatten(2, 3).to(query.dtype)
        hidden_states, encoder_hidden_states = out[:, :-text_len], out[:, -text_len:]
        if getattr(attn, "to_out", None) is not None:
            hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        if getattr(attn, "to_add_out", None) is not None:
            encoder_hidden_states = attn.to_add_out(encoder_hidden_states)
        return hidden_states, encoder_hidden_states


class _ShardTokensHook(ModelHook):
    """On ``x_embedder``: (B, S, C) patch tokens -> this rank's (B, chunk, C)."""

    def __init__(self, sp: SequenceParallel):
        super().__init__()
        self.sp = sp

    def new_forward(self, module, hidden_states):
        _, _, frames, height, width = hidden_states.shape
        pt, ph, pw = self.sp.patch
        self.sp.latent_grid = (frames // pt, height // ph, width // pw)
        tokens = self.fn_ref.original_forward(hidden_states)
        self.sp.layout(tokens.shape[1])
        return self.sp.shard(tokens, dim=1)


class _ShardRopeHook(ModelHook):
    """On ``rope``: (S, D) cos and sin tables -> this rank's rows."""

    def __init__(self, sp: SequenceParallel):
        super().__init__()
        self.sp = sp

    def post_forward(self, module, output):
        cos, sin = output
        self.sp.layout(cos.shape[0])
        return self.sp.shard(cos, dim=0), self.sp.shard(sin, dim=0)


class _CountTextHook(ModelHook):
    """On the transformer: how many text tokens this pass attends to, counted from its arguments by the family."""

    def __init__(self, sp: SequenceParallel, family: Family):
        super().__init__()
        self.sp, self.family = sp, family
        self.arg: Arguments | None = None

    def initialize_hook(self, module):
        self.arg = Arguments(module)
        return module

    def pre_forward(self, module, *args, **kwargs):
        self.sp.text_tokens = self.family.valid_text_tokens(lambda name: self.arg(args, kwargs, name))
        return args, kwargs


def _drop_text_padding(sp: SequenceParallel, block: torch.nn.Module):
    """A forward pre-hook on the first block that keeps only the valid text tokens (they come first).

    A torch pre-hook, not a ``ModelHook``: it must run before the block's cache hook, which is registered later and
    so would otherwise see the padded text first."""
    arg = Arguments(block)
    position = arg.position["encoder_hidden_states"]

    def drop(module, args, kwargs):
        text = arg(args, kwargs, "encoder_hidden_states")
        if sp.text_tokens is None or text.shape[1] == sp.text_tokens:
            return args, kwargs
        text = text[:, : sp.text_tokens]
        if "encoder_hidden_states" in kwargs:
            return args, {**kwargs, "encoder_hidden_states": text}
        return (*args[:position], text, *args[position + 1 :]), kwargs

    return block.register_forward_pre_hook(drop, with_kwargs=True)


class _PlaceOutputHook(ModelHook):
    """On ``proj_out``: this rank's tokens into a full-length tensor for the model's unpatchify."""

    def __init__(self, sp: SequenceParallel):
        super().__init__()
        self.sp = sp

    def post_forward(self, module, output):
        return self.sp.place(output)


def apply_sequence_parallel(
    transformer: torch.nn.Module, groups: SPGroups, config: ParallelConfig, device: torch.device
) -> SequenceParallel:
    """Shard ``transformer`` over ``groups``: afterwards every rank must run the same inputs through it."""
    family = family_of(transformer)
    heads = transformer.config.num_attention_heads
    if heads % groups.ulysses:
        raise ValueError(f"Ulysses degree {groups.ulysses} does not divide the {heads} heads")
    sp = SequenceParallel(
        groups=groups,
        patch=family.patch(transformer),
        xfuser=make_xfuser_attention(config.attention, device) if groups.world > 1 else None,
    )
    hooks = {
        transformer: _CountTextHook(sp, family),
        getattr(transformer, family.patch_embedder): _ShardTokensHook(sp),
        getattr(transformer, family.rope): _ShardRopeHook(sp),
        getattr(transformer, family.output_projection): _PlaceOutputHook(sp),
    }
    for module, hook in hooks.items():
        HookRegistry.check_if_exists_or_initialize(module).register_hook(hook, _HOOK)
    _drop_text_padding(sp, family.first_block(transformer))
    for attention in family.attention_modules(transformer):
        attention.set_processor(SPAttnProcessor(sp))
    return sp

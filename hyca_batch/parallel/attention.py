"""USP attention for HunyuanVideo's joint video+text attention: plain functions of the groups and tensors.

Layout follows xfuser's ``xFuserLongContextAttention`` with ``joint_strategy="rear"``: each rank holds
its chunk of video tokens and all text tokens. Queries ``[video chunk, text]`` go through the Ulysses
all-to-all (sequence gathered, heads scattered); text keys/values are replicated, so each rank takes its
heads' slice; the ring passes video KV blocks and the text KV joins the last block; the inverse
all-to-all returns ``[video chunk, text]`` with all heads. Text queries are attended once per Ulysses
rank (duplicated work, no extra communication), as in xfuser.

Two backends do exactly this: ``xfuser`` (CUDA, its flash-attention ring) and ``torch``, built here on
yunchang's communication primitives (the library xfuser is built on) with an attention kernel that
returns the log-sum-exp the ring needs. The torch backend also handles a padded last chunk (token
counts that do not divide by the ranks) by dropping padded keys before the kernel; xfuser cannot mask,
so a padded video falls back to the torch backend.
"""

from __future__ import annotations

import logging

import torch

from hyca_batch.parallel.groups import SPGroups

log = logging.getLogger(__name__)


def attention_with_lse(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax attention over (B, S, H, D) tensors: output (B, S, H, D) and log-sum-exp (B, H, S), float32."""
    if q.is_cuda:
        from yunchang.globals import HAS_FLASH_ATTN

        if HAS_FLASH_ATTN:  # takes (B, S, H, D) as it is
            from yunchang.kernels.attention import flash_attn_forward

            out, lse = flash_attn_forward(q, k, v, softmax_scale=q.shape[-1] ** -0.5, softcap=0.0)
            return out, lse.float()
    qt, kt, vt = (x.transpose(1, 2) for x in (q, k, v))  # SDPA's (B, H, S, D)
    if q.is_cuda:
        out, lse = torch.ops.aten._scaled_dot_product_efficient_attention(qt, kt, vt, None, True)[:2]
        return out.transpose(1, 2), lse[..., : q.shape[1]].float()
    out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(qt, kt, vt)[:2]
    return out.transpose(1, 2), lse.float()


def usp_attention_torch(
    groups: SPGroups,
    tokens: int,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    text_q: torch.Tensor,
    text_k: torch.Tensor,
    text_v: torch.Tensor,
) -> torch.Tensor:
    """(B, c, H, D) video chunk + (B, T, H, D) text -> (B, c + T, H, D), over the replica's ranks.

    ``tokens`` is the video's real token count: keys past it are the last chunk's padding, never attended to.
    """
    from yunchang.comm.all_to_all import SeqAllToAll4D
    from yunchang.ring.utils import RingComm, update_out_and_lse

    heads = q.shape[2] // groups.ulysses
    q = torch.cat([q, text_q], dim=1)
    if groups.ulysses > 1:
        q, k, v = (SeqAllToAll4D.apply(groups.ulysses_group, x.contiguous(), 2, 1) for x in (q, k, v))
    first = groups.ulysses_rank * heads
    text_k, text_v = text_k[:, :, first : first + heads], text_v[:, :, first : first + heads]

    block = k.shape[1]  # video tokens per Ulysses group: one ring block
    comm = RingComm(groups.ring_group) if groups.ring > 1 else None
    out = lse = None
    for step in range(groups.ring):
        last = step == groups.ring - 1
        if not last:
            next_k, next_v = comm.send_recv(k), comm.send_recv(v)
            comm.commit()
        owner = (groups.ring_rank - step) % groups.ring  # whose block this is: its global position
        valid = max(0, min(block, tokens - owner * block))  # padded keys sit at the end of the sequence
        keys, values = k[:, :valid], v[:, :valid]
        if last:
            keys, values = torch.cat([keys, text_k], dim=1), torch.cat([values, text_v], dim=1)
        if keys.shape[1]:
            block_out, block_lse = attention_with_lse(q, keys, values)
            out, lse = update_out_and_lse(out, lse, block_out, block_lse)
        if not last:
            comm.wait()
            k, v = next_k, next_v
    out = out.to(q.dtype)
    if groups.ulysses > 1:
        out = SeqAllToAll4D.apply(groups.ulysses_group, out.contiguous(), 1, 2)
    return out


class _XfuserAttention:
    """xfuser's USP attention with the same groups (yunchang's, set by ``init_groups``)."""

    def __init__(self) -> None:
        from xfuser.core.long_ctx_attention import xFuserLongContextAttention
        from yunchang.globals import HAS_FLASH_ATTN
        from yunchang.kernels import AttnType

        self.kernel = "flash-attn" if HAS_FLASH_ATTN else "torch-efficient"
        self.op = xFuserLongContextAttention(attn_type=AttnType.FA if HAS_FLASH_ATTN else AttnType.TORCH_EFFICIENT)

    def __call__(self, q, k, v, text_q, text_k, text_v) -> torch.Tensor:
        return self.op(
            None,
            q,
            k,
            v,
            joint_tensor_query=text_q,
            joint_tensor_key=text_k,
            joint_tensor_value=text_v,
            joint_strategy="rear",
        )


def make_xfuser_attention(backend: str, device: torch.device) -> _XfuserAttention | None:
    """xfuser's attention where the backend asks for it and it imports; None means the torch backend."""
    if backend == "torch" or device.type != "cuda":
        if backend == "xfuser":
            raise ValueError("the xfuser attention backend needs CUDA devices; use --sp-attention torch or auto")
        return None
    try:
        return _XfuserAttention()
    except ImportError as exc:
        if backend == "xfuser":
            raise ValueError(
                f"--sp-attention xfuser, but xfuser cannot be imported: {exc}. Install the [gpu] extra"
            ) from exc
        log.warning("xfuser is not importable (%s); sequence parallelism uses the torch attention backend", exc)
        return None

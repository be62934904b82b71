"""The torch.distributed groups of one replica: the world of its ranks, split into Ulysses and ring groups.

The split is yunchang's (``set_seq_parallel_pg``, Ulysses groups of consecutive ranks), the one xfuser's
USP attention reads, so both attention backends see the same groups. Rank r holds the r-th chunk of the
video tokens; after the Ulysses all-to-all, Ulysses group g holds chunk g of the ring.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import torch
import torch.distributed as dist

from hyca_batch.config import ParallelConfig


@dataclass
class SPGroups:
    rank: int
    world: int
    ulysses: int
    ring: int
    ulysses_group: dist.ProcessGroup | None
    ring_group: dist.ProcessGroup | None

    @property
    def ulysses_rank(self) -> int:
        return self.rank % self.ulysses

    @property
    def ring_rank(self) -> int:
        return self.rank // self.ulysses


def init_groups(config: ParallelConfig, heads: int, rank: int, init_method: str, device: torch.device) -> SPGroups:
    """Join the replica's process group (NCCL on CUDA, gloo on CPU) with ``config.timeout_s`` on every collective."""
    from yunchang import set_seq_parallel_pg
    from yunchang.globals import PROCESS_GROUP

    ulysses, ring = config.degrees(heads)
    backend = "nccl" if device.type == "cuda" else "gloo"
    kwargs = {"device_id": device} if device.type == "cuda" else {}
    dist.init_process_group(
        backend,
        init_method=init_method,
        rank=rank,
        world_size=config.sp,
        timeout=dt.timedelta(seconds=config.timeout_s),
        **kwargs,
    )
    set_seq_parallel_pg(ulysses, ring, rank, config.sp, use_ulysses_low=True)
    return SPGroups(rank, config.sp, ulysses, ring, PROCESS_GROUP.ULYSSES_PG, PROCESS_GROUP.RING_PG)


def destroy_groups() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()

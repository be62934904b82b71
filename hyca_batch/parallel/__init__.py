"""Sequence parallelism (Ulysses x Ring, USP) for the HunyuanVideo transformer, inside one replica."""

from hyca_batch.parallel.config import ParallelConfig
from hyca_batch.parallel.ranks import RankFailure, RankGroup, RankSetup

__all__ = ["ParallelConfig", "RankFailure", "RankGroup", "RankSetup"]

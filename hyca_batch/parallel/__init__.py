"""Sequence parallelism (Ulysses x Ring, USP) for the video transformers, inside one replica.

Below the pipeline: ``groups`` (the process groups), ``attention`` (USP attention as plain functions),
``shard`` (hooks that spread one transformer over the groups), ``trace`` (counting communication). It knows
models only through their family adapters, and nothing of caches or rank processes; the runtime composes them.
"""

from hyca_batch.parallel.groups import SPGroups, destroy_groups, init_groups
from hyca_batch.parallel.shard import SequenceParallel, apply_sequence_parallel

__all__ = ["SPGroups", "SequenceParallel", "apply_sequence_parallel", "destroy_groups", "init_groups"]

"""What a measurement asks of the device: synchronized timing, peak and held memory, and the memory cap: the
allocator's limit on CUDA, a check of weights + cache history (``SimulatedOOM``) on a CPU."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import torch

GIB = 1024**3


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_bytes(device: torch.device) -> int | None:
    return int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else None


def held_bytes(tensors: Iterator[torch.Tensor]) -> int:
    """Bytes of the distinct storages behind ``tensors`` (a view keeps its whole storage alive)."""
    seen: dict[int, int] = {}
    for t in tensors:
        storage = t.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())


def predicted_cache_bytes(cache, modules: dict[str, int], tokens: int, text: int, element: int) -> int:
    """History the cache keeps at its deepest: slots x tokens x channels per module (video tokens per rank under SP)."""
    total = 0
    for name, dim in modules.items():
        if name.endswith((".ctx_attn", ".ctx_ff")) or name == "stack.txt":
            n = text
        elif name.endswith(".proj_out"):
            n = tokens + text
        else:
            n = tokens
        total += cache.history_points(name) * n * dim * element
    return total


class SimulatedOOM(torch.cuda.OutOfMemoryError):
    """--max-memory-gb on a CPU: weights + the cache's history went over the cap (see ``measure.PassRecorder``)."""


def cap_memory(device: torch.device, cap_bytes: int | None) -> None:
    """--max-memory-gb on CUDA: the allocator's limit for this process (on a CPU ``measure.PassRecorder`` checks it)."""
    if device.type == "cuda" and cap_bytes is not None:
        total = torch.cuda.get_device_properties(device).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, cap_bytes / total), device)


def oom_message(exc: torch.cuda.OutOfMemoryError) -> str:
    """The first line of an out-of-memory error, for the JSON and the table."""
    return str(exc).strip().splitlines()[0][:300] if str(exc).strip() else "out of memory"


def memory_limit(device: torch.device, cap_bytes: int | None) -> int | None:
    """What one configuration may hold: the cap, else the GPU's memory; None on a CPU without a cap."""
    if cap_bytes is not None:
        return cap_bytes
    return torch.cuda.get_device_properties(device).total_memory if device.type == "cuda" else None

"""What the numbers were measured with: versions, the device, flash-attn, and, read with the profiler, which SDPA
kernel the blocks' attention really ran (what is enabled is not necessarily what is dispatched)."""

from __future__ import annotations

import importlib.util
import platform
import socket
from collections.abc import Iterator
from contextlib import contextmanager

import torch

_SDPA_OPS = (  # aten op -> the kernel SDPA dispatched to
    ("_scaled_dot_product_flash_attention_for_cpu", "flash (CPU)"),
    ("_scaled_dot_product_flash_attention", "flash"),
    ("_scaled_dot_product_cudnn_attention", "cuDNN"),
    ("_scaled_dot_product_efficient_attention", "memory-efficient"),
    ("_scaled_dot_product_fused_attention_overrideable", "fused (overrideable)"),
    ("_scaled_dot_product_attention_math", "math"),
)


@contextmanager
def record_attention_kernel(found: dict, min_tokens: int) -> Iterator[None]:
    """Profile the first SDPA call over at least ``min_tokens`` tokens (a block's joint attention, not the
    text refiner's) and note which kernel it ran and with what mask: what the transformer really uses."""
    import torch.nn.functional as F

    original = F.scaled_dot_product_attention

    def probe(query, key, value, *a, **kw):
        if found or query.shape[-2] < min_tokens:
            return original(query, key, value, *a, **kw)
        mask = kw.get("attn_mask", a[0] if a else None)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            out = original(query, key, value, *a, **kw)
        names = {e.key for e in prof.key_averages()}
        kernel = next((label for op, label in _SDPA_OPS if any(n.endswith(op) for n in names)), "unknown")
        found.update(
            sdpa_kernel=kernel,
            mask=None if mask is None else f"{str(mask.dtype)[6:]} {list(mask.shape)}",
            query=f"{str(query.dtype)[6:]} {list(query.shape)}",
            ops=sorted(n for n in names if "dot_product" in n),
        )
        return out

    F.scaled_dot_product_attention = probe
    try:
        yield
    finally:
        F.scaled_dot_product_attention = original


def environment(device: torch.device) -> dict:
    import diffusers

    env = {
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "host": socket.gethostname(),
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"cpu ({platform.processor() or platform.machine()})",
        "device_type": device.type,
        "gpus": torch.cuda.device_count() if torch.cuda.is_available() else 0,
        "flash_attn": None,
    }
    if importlib.util.find_spec("flash_attn") is not None:
        try:
            import flash_attn

            env["flash_attn"] = flash_attn.__version__
        except Exception as exc:  # present but broken (e.g. built for another torch)
            env["flash_attn"] = f"present, fails to import: {exc}"[:200]
    if device.type == "cuda":
        env["total_memory_bytes"] = torch.cuda.get_device_properties(device).total_memory
        env["sdpa_enabled"] = {
            "flash": torch.backends.cuda.flash_sdp_enabled(),
            "memory_efficient": torch.backends.cuda.mem_efficient_sdp_enabled(),
            "cudnn": torch.backends.cuda.cudnn_sdp_enabled(),
            "math": torch.backends.cuda.math_sdp_enabled(),
        }
    return env

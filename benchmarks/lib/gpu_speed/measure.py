"""One configuration measured: a size, cache mode and granularity run through the pipeline's own loop (every step,
or the schedule's prefix and the rest derived), per pass timed and counted by hooks; and the VAE's tiled decode.

A step is one transformer pass (HunyuanVideo's embedded guidance) or several (HunyuanVideo 1.5's classifier-free
guidance: a conditional and an unconditional pass, each in its own cache context with its own history): pass counts,
history depths, cache bytes and the derived loop follow the passes the cache counted, per context."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch

from benchmarks.lib.gpu_speed.device import (
    GIB,
    SimulatedOOM,
    free_memory,
    held_bytes,
    memory_limit,
    oom_message,
    peak_bytes,
    predicted_cache_bytes,
    reset_peak,
    sync,
)
from benchmarks.lib.gpu_speed.model import (
    block_text_tokens,
    compression,
    denoise,
    expected_passes_per_step,
    parameter_bytes,
)
from benchmarks.lib.gpu_speed.schedule import depths, prefix_steps, schedule, size_name, video_tokens
from benchmarks.lib.tables import mean
from hyca_batch.cache import SolverMap, apply_feature_cache, cached_modules
from hyca_batch.config import CacheConfig
from hyca_batch.models.adapters import family_of


class PassRecorder:
    """Per transformer pass: full or skipped, history depth, attention calls, forecast time, cache bytes.

    Depths count the full passes of the pass's own cache context; the cache's bytes are every context's history."""

    def __init__(
        self, transformer, cache, device: torch.device, weights_bytes: int, cap_bytes: int | None, history: int
    ):
        self.transformer, self.cache, self.device, self.history = transformer, cache, device, max(1, history)
        self.weights_bytes, self.cap_bytes = weights_bytes, cap_bytes
        self.passes: list[dict] = []
        self.attention_calls = 0
        self.forecast_events: list = []
        self.forecast_s = 0.0
        self.full_so_far: dict[str, int] = {}  # cache context -> its full passes so far
        self.slots: dict[str, list[torch.Tensor]] = {}  # cache context -> the history it held after its last pass
        self.cache_bytes = 0
        self.handles = [
            transformer.register_forward_pre_hook(self._start),
            transformer.register_forward_hook(self._end),
        ]
        for attention in family_of(transformer).attention_modules(transformer):
            self.handles.append(attention.register_forward_pre_hook(self._count))
        self._forecast = cache.forecast
        cache.forecast = self._timed_forecast  # an instance attribute: the block hooks call self.cache.forecast

    def _count(self, module, args) -> None:
        self.attention_calls += 1

    def _timed_forecast(self, state, name):
        if self.device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            out = self._forecast(state, name)
            end.record()
            self.forecast_events.append((start, end))
            return out
        t0 = time.perf_counter()
        out = self._forecast(state, name)
        self.forecast_s += time.perf_counter() - t0
        return out

    def _start(self, module, args) -> None:
        self.attention_calls, self.forecast_events, self.forecast_s = 0, [], 0.0

    def _end(self, module, args, output) -> None:
        state = self.cache.states.get_state()  # inside the pipeline's cache context: "cond", "pred_cond", ...
        sync(self.device)
        forecast = self.forecast_s + sum(s.elapsed_time(e) for s, e in self.forecast_events) / 1e3
        context = state.context
        self.slots[context] = [t for values in state.history.values() for t in values]
        held = held_bytes(t for slots in self.slots.values() for t in slots)
        self.cache_bytes = max(self.cache_bytes, held)
        full_so_far = self.full_so_far.get(context, 0)
        self.passes.append(
            {
                "full": bool(state.full),
                "depth": 0 if state.full else min(full_so_far, self.history),
                "attention_calls": self.attention_calls,
                "forecast_s": forecast,
                "context": context,
            }
        )
        self.full_so_far[context] = full_so_far + bool(state.full)
        if self.cap_bytes is not None and self.device.type != "cuda":
            live = self.weights_bytes + held
            if live > self.cap_bytes:
                raise SimulatedOOM(
                    f"simulated: weights + cache history {live / GIB:.3g} GiB over the "
                    f"--max-memory-gb cap {self.cap_bytes / GIB:.3g} GiB"
                )

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        del self.cache.forecast  # back to the class's method


def label(size: Sequence[int], mode: str, granularity: str) -> str:
    """A configuration as the progress lines and the skipped list name it."""
    return f"{size_name(size)} {mode}" + (f" ({granularity})" if mode != "none" else "")


def measure(
    pipe,
    inputs: dict,
    size: Sequence[int],
    mode: str,
    granularity: str,
    args,
    solver_map: SolverMap | None,
    device: torch.device,
    weights_bytes: int,
    warm: bool,
    sp: int = 1,
    budget=None,
) -> dict:
    """One size, cache mode and granularity: run the loop (all steps, or the schedule's prefix), return its row.

    ``budget(what, estimate_s)`` (optional) says whether the time budget lets a run of that many seconds start.
    """
    transformer = pipe.transformer
    family = family_of(transformer).name
    interval = args.intervals[mode] if mode != "none" else 1
    config = CacheConfig(mode=mode, interval=interval, taylorseer_order=args.taylorseer_order, granularity=granularity)
    h, w, f = size
    tokens = video_tokens(size, transformer.config, *compression(pipe.vae.config))
    row: dict[str, Any] = {
        "size": [h, w, f],
        "video_tokens": tokens,
        "mode": mode,
        "interval": interval if mode != "none" else None,
        "granularity": granularity if mode != "none" else None,
        "sp": sp,
        "steps": args.steps,
    }
    full = schedule(args.steps, mode, interval)
    steps = len(full)
    # Passes per step (= cache contexts, each with its history): the guider's count until the cache has counted them.
    per_step = expected_passes_per_step(pipe)
    row["passes_per_step"] = per_step
    row["schedule_full_passes"], row["schedule_skipped_passes"] = per_step * sum(full), per_step * (steps - sum(full))

    cache = apply_feature_cache(transformer, config, solver_map if mode == "hyca" else None)
    cache.reset(args.steps)  # a map fitted for this step count keeps its per-step forecasts' history
    modules = cached_modules(transformer, granularity)
    history = max((cache.history_points(n) for n in modules), default=0) if mode != "none" else 0
    element = torch.finfo(transformer.dtype).bits // 8
    row["history_slots"] = history
    text = block_text_tokens(family, args.text_tokens)
    row["predicted_cache_bytes"] = (
        per_step * predicted_cache_bytes(cache, modules, -(-tokens // sp), text, element) if mode != "none" else 0
    )
    run_steps = args.steps if args.real_loop else prefix_steps(args.steps, mode, interval, history)
    row["measured_steps"] = run_steps
    row["loop"] = "measured" if run_steps == args.steps else "derived"
    row["peak_memory_bytes"], row["cache_bytes"] = None, 0
    limit = memory_limit(device, args.cap_bytes)
    # What an uncached pass of this size needed beyond the weights (measured by its row; 0 before that).
    activations = args.activation_bytes.get(tuple(size), 0)
    need = weights_bytes + row["predicted_cache_bytes"] + activations
    if args.predict_oom and mode != "none" and limit is not None and need > limit:
        cache.remove()
        row.update(
            status="oom",
            error=f"predicted, not run: weights + cache history + an uncached pass's activations "
            f"need {need / GIB:.1f} GiB of {limit / GIB:.1f} GiB",
        )
        return row
    if budget is not None and not budget(
        label(size, mode, granularity),
        per_step * sum(full[:run_steps]) * (args.full_estimate.get(tuple(size)) or 0.0),
    ):
        cache.remove()
        row.update(status="skipped", error="time budget")
        return row
    recorder = PassRecorder(transformer, cache, device, weights_bytes, args.cap_bytes, history)

    oom = None
    loop_s = 0.0
    finite = None
    free_memory(device)
    reset_peak(device)
    try:
        cache.reset(args.steps)  # a hyca map fitted for this step count runs its per-step forecasts and schedule
        sync(device)
        t0 = time.perf_counter()
        latents = denoise(pipe, inputs, size, args.steps, seed=0, stop_after=run_steps)
        sync(device)
        loop_s = time.perf_counter() - t0
        finite = bool(torch.isfinite(latents).all())
        del latents
    except torch.cuda.OutOfMemoryError as exc:  # SimulatedOOM too
        oom = oom_message(exc)
    finally:
        stats = cache.stats
        recorder.remove()
        cache.reset()
        cache.remove()
    row["peak_memory_bytes"] = peak_bytes(device)
    row["cache_bytes"] = recorder.cache_bytes
    free_memory(device)
    if oom is not None:
        row.update(status="oom", error=oom, passes_before_oom=len(recorder.passes))
        return row

    # Pass times from the hooks' own timers, in pass order.
    full_times, skipped_times = list(stats.full_s), list(stats.skipped_s)
    passes = recorder.passes
    # The passes per step the cache counted (run_steps steps ran): classifier-free guidance makes it 2.
    counted = stats.full + stats.skipped
    per_step = max(1, round(counted / run_steps))
    steps_run = max(1, counted // per_step)
    row["passes_per_step"] = per_step
    row["schedule_full_passes"], row["schedule_skipped_passes"] = per_step * sum(full), per_step * (steps - sum(full))
    for p in passes:
        p["seconds"] = full_times.pop(0) if p["full"] else skipped_times.pop(0)
    full_passes = [p for p in passes if p["full"]]
    skipped = [p for p in passes if not p["full"]]
    # The first pass at a size pays one-off costs (kernel selection, allocator growth): left out of the mean
    # when there is another full pass to take it from.
    timed_full = full_passes[1:] if (not warm and len(full_passes) > 1) else full_passes
    full_s = mean([p["seconds"] for p in timed_full])
    by_depth = {}
    for d in sorted({p["depth"] for p in skipped}):
        at = [p for p in skipped if p["depth"] == d]
        by_depth[d] = {
            "skipped_step_s": mean([p["seconds"] for p in at]),
            "forecast_s": mean([p["forecast_s"] for p in at]),
            "passes": len(at),
        }
    deepest = max(by_depth) if by_depth else None
    other = (loop_s - sum(p["seconds"] for p in passes)) / steps_run  # per step, beyond its transformer passes

    def pass_time(is_full: bool, depth: int) -> float:
        if is_full:
            return full_s
        known = [d for d in by_depth if d <= depth] or list(by_depth)
        return by_depth[max(known)]["skipped_step_s"]

    # Every context runs the same schedule: each step is per_step passes at that step's kind and depth.
    derived = (
        per_step * sum(pass_time(fl, d) for fl, d in zip(full, depths(full, max(1, history)))) + args.steps * other
    )
    row.update(
        status="ok",
        finite=finite,
        full_passes=len(full_passes),
        skipped_passes=len(skipped),
        full_step_s=full_s,
        full_step_s_all=[p["seconds"] for p in full_passes],
        skipped_step_s=by_depth[deepest]["skipped_step_s"] if by_depth else None,
        forecast_s=by_depth[deepest]["forecast_s"] if by_depth else None,
        forecast_share=(by_depth[deepest]["forecast_s"] / by_depth[deepest]["skipped_step_s"]) if by_depth else None,
        skipped_by_depth={str(d): v for d, v in by_depth.items()},
        attention_calls_per_full_pass=mean([p["attention_calls"] for p in full_passes]),
        attention_calls_in_skipped_passes=sum(p["attention_calls"] for p in skipped),
        other_per_step_s=other,
        loop_s_measured=loop_s if row["loop"] == "measured" else None,
        loop_prefix_s=loop_s,
        loop_s_derived=derived,
    )
    return row


def add_speedups(rows: list[dict]) -> None:
    """Each cached row against the uncached row of the same size (and sp): derived, and measured where both ran
    every step."""
    base = {(tuple(r["size"]), r["sp"]): r for r in rows if r["mode"] == "none" and r["status"] == "ok"}
    for r in rows:
        b = base.get((tuple(r["size"]), r["sp"]))
        if r["status"] != "ok" or b is None:
            r["speedup_derived"] = r["speedup_measured"] = None
            continue
        r["speedup_derived"] = b["loop_s_derived"] / r["loop_s_derived"]
        both = r["loop_s_measured"] and b["loop_s_measured"]
        r["speedup_measured"] = b["loop_s_measured"] / r["loop_s_measured"] if both else None
        r["full_step_speedup"] = b["full_step_s"] / r["skipped_step_s"] if r["skipped_step_s"] else None


def decode_vae(vae, size: Sequence[int], device: torch.device, dtype: torch.dtype, cap_bytes: int | None) -> dict:
    """Tiled decode of a random latent of the size's shape; seconds and peak memory, or oom."""
    h, w, f = size
    c = vae.config.latent_channels
    shape = (
        1,
        c,
        (f - 1) // vae.config.temporal_compression_ratio + 1,
        h // vae.config.spatial_compression_ratio,
        w // vae.config.spatial_compression_ratio,
    )
    row: dict[str, Any] = {"size": [h, w, f], "latent_shape": list(shape), "tiling": bool(vae.use_tiling)}
    free_memory(device)
    reset_peak(device)
    oom = None
    try:
        if cap_bytes is not None and device.type != "cuda":
            out_bytes = 3 * f * h * w * torch.finfo(dtype).bits // 8
            need = parameter_bytes(vae) + out_bytes
            if need > cap_bytes:
                raise SimulatedOOM(f"simulated: VAE weights + decoded video {need / GIB:.3g} GiB over the cap")
        latent = torch.randn(shape, generator=torch.Generator(device="cpu").manual_seed(0)).to(device, dtype)
        with torch.inference_mode():
            vae.decode(torch.zeros(1, c, 2, 8, 8, device=device, dtype=dtype), return_dict=False)  # kernel warm-up
            reset_peak(device)
            sync(device)
            t0 = time.perf_counter()
            video = vae.decode(latent / vae.config.scaling_factor, return_dict=False)[0]
            sync(device)
            row["decode_s"] = time.perf_counter() - t0
        row["output_shape"] = list(video.shape)
        row["finite"] = bool(torch.isfinite(video).all())
        del video, latent
        row["status"] = "ok"
    except torch.cuda.OutOfMemoryError as exc:
        oom = oom_message(exc)
    row["peak_memory_bytes"] = peak_bytes(device)
    if oom is not None:
        row.update(status="oom", error=oom)
    free_memory(device)
    return row

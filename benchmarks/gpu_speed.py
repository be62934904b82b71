"""Real-size speed of HunyuanVideo's transformer with HyCa / TaylorSeer caching, and of the VAE decode, on a GPU.

    python benchmarks/gpu_speed.py [--sizes 544x960x129 720x1280x129] [--modes none taylorseer hyca]
        [--steps 50] [--loop real|prefix] [--sp 1 2 4 8] [--max-memory-gb G] [--time-budget-s S]
        [--json benchmarks/results/gpu_speed.json] [--results-md benchmarks/RESULTS.md]
    python benchmarks/gpu_speed.py --scaled-down      # the same code path on CPU with the tiny config, seconds

What runs: diffusers' HunyuanVideoTransformer3DModel with the real HunyuanVideo configuration (12.8 B
parameters; hunyuanvideo-community/HunyuanVideo's transformer config) built on the meta device and
materialized on the GPU with random bf16 weights (no download, no text encoders: random text embeddings,
256 tokens of which ``--text-valid`` are unmasked, random pooled projections, guidance 6.0), and
AutoencoderKLHunyuanVideo with the real configuration, random weights, tiling on. The denoising loop is
diffusers' own HunyuanVideoPipeline loop (FlowMatchEulerDiscreteScheduler, shift 7) called with the
embeddings, ``output_type="latent"``, and the project's cache hooks (``hyca_batch.cache.apply_feature_cache``)
on the transformer: ``none`` (only the pass counter and timer), ``taylorseer`` (order 2, N=5) and ``hyca``
(N=6, the map from the project's calibration, see below).

Measured, per size and cache mode: seconds per full transformer pass and per forecast (skipped) pass (the
hooks' own synchronized timers), the forecast's share of a skipped pass (CUDA events around every
``FeatureCache.forecast`` call), block attention calls per full and per skipped pass (forward pre-hooks on
every block's attention), peak GPU memory (``torch.cuda.max_memory_allocated``, reset per configuration;
the weights and the cache's stored history included), the bytes the cache holds (distinct storages of its
history), and the VAE's tiled decode of a latent of the size. The SDPA kernel the blocks' attention really
ran is read with the profiler from the first call. A configuration that runs out of memory
(``torch.cuda.OutOfMemoryError``) is recorded as ``oom`` with the peak it reached, and the next one runs. One
whose weights + predicted cache history + the uncached pass's activations (measured at that size) exceed the
memory is recorded as ``oom`` without running (``--no-predict-oom`` runs it anyway): at 720p the per-block
history is 55 GiB per slot, so TaylorSeer's three slots cannot fit on one 141 GB GPU. A mode that is ``oom`` at
block granularity is then measured at ``stack`` granularity (one residual over the block stack, a few GiB;
``--no-stack-fallback`` turns this off). ``--max-memory-gb`` caps the memory (on CUDA the allocator's limit; on a
CPU a simulated check of weights + history after every pass), e.g. to see what fits an 80 GB card.

The 50-step loop: with ``--loop real`` (the default with ``--scaled-down``) all ``--steps`` steps run and the loop
time and speedup are measured. Otherwise (the default on a GPU, where a 720p uncached loop is ~25 min)
only the first steps of the same 50-step schedule run, enough to measure a full pass and a forecast pass at
every history depth the cache reaches (uncached: 2 steps, the first a warm-up; taylorseer N=5: 13; hyca
N=6: 3 to 21, by the history its map keeps), and the 50-step loop time is derived: the schedule's full
passes x the mean full pass, its skipped passes x the mean skipped pass at their history depth, and every
step x the measured per-step remainder (scheduler step, hooks). JSON says which (``loop``: ``measured`` or ``derived``).

HyCa's solver map comes from the project's calibration code (the cache's trajectory probe, then
``hyca_batch.cache.calibrate.calibrate`` with the sampler's dsigma^2 step weights) run on this transformer at a
reduced probe size (``--calib-size``, default 256x256x33, 128 probe tokens) for the full ``--steps`` steps and
N=6; a map is per channel and module, not per token count, so it applies at every size. With random weights
its solver mix says nothing about quality and may differ from a trained model's (the tiny random model's
picks reuse everywhere: one slot); what matters here is the history it keeps (memory) and the forecast's
cost, both in the JSON. ``--solver-map PATH`` uses a saved map instead (e.g. one calibrated on the real
weights with ``hyca-batch calibrate``).

``--sp 1 2 4 8`` (more than one GPU): the same per-pass measurements (no VAE) with the project's sequence
parallelism: the package's rank group (``hyca_batch.runtime.RankGroup``) starts one process per rank, each of
which loads the real-config random-weight model (``hyca_batch.models.random_weights``), joins the replica's
process groups and shards its transformer exactly as a replica's rank does (``ShardedModelRank``), then runs
this script's measurement (``SpeedRank.measure``); the scaling is against the same path at sp 1.

Writes JSON (``--json``) after every configuration (a run cut short keeps what it measured) and appends a
dated markdown table with the device name to ``--results-md``. Numbers are what one run measured; no test
asserts a timing.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import importlib.util
import json
import os
import platform
import socket
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run from a bare checkout (the GPU machine) without installing the package
    sys.path.insert(0, str(ROOT))

from hyca_batch.cache import SolverMap, TrajectoryProbe, apply_feature_cache, cached_modules  # noqa: E402
from hyca_batch.cache.calibrate import calibrate  # noqa: E402
from hyca_batch.cache.schedule import schedule_full_steps  # noqa: E402
from hyca_batch.config import CacheConfig, ParallelConfig  # noqa: E402
from hyca_batch.models import load_model, random_weights  # noqa: E402
from hyca_batch.models.random_weights import FAMILIES  # noqa: E402
from hyca_batch.pipeline.calibration import step_weights  # noqa: E402
from hyca_batch.runtime import RankFailure, RankGroup, RankSetup  # noqa: E402
from hyca_batch.runtime.workers import ShardedModelRank  # noqa: E402

# The configurations come from the package: HunyuanVideo's real one, and the `tiny` preset's for --scaled-down.
REAL_TRANSFORMER = FAMILIES["hunyuanvideo"][0]
GUIDANCE = 6.0  # embedded guidance of the HunyuanVideo reference setting
DEFAULT_INTERVALS = {"fora": 5, "taylorseer": 5, "foca": 5, "hyca": 6}  # the HyCa paper's Table 3 settings
GIB = 1024**3

DEFAULT_JSON = ROOT / "benchmarks" / "results" / "gpu_speed.json"
DEFAULT_MD = ROOT / "benchmarks" / "RESULTS.md"
RESULTS_MD_HEADER = """# GPU benchmark results

What `benchmarks/gpu_speed.py` measured on real hardware: HunyuanVideo's transformer in its real
configuration (12.8 B parameters, random bf16 weights, so speed and memory are real and the videos are not),
per full and per forecast transformer pass for the cache modes `none`, `taylorseer` (N=5) and `hyca` (N=6),
the 50-step denoise loop's speedup over uncached, peak GPU memory, and the VAE's tiled decode, at 544x960 and
720x1280 with 129 frames. Each run appends one dated table, headed with the GPU's name, the torch version and
the attention kernel; the JSON of the last run is `benchmarks/results/gpu_speed.json`. The 50-step loop is
"measured" when every step ran and "derived" when the first steps of the same schedule were timed and the
rest computed from them (see the script's docstring). Produce a table with `bash benchmarks/gpu_speed.sh` on
a GPU machine (outputs under `$OUT`), or `python benchmarks/gpu_speed.py --help`. `--scaled-down` runs print
their table but do not append here unless `--results-md` is given.
"""


# -- model construction -------------------------------------------------------------------------------


def family(scaled_down: bool) -> str:
    return "tiny" if scaled_down else "hunyuanvideo"


def transformer_config(scaled_down: bool) -> dict:
    return dict(FAMILIES[family(scaled_down)][0])


def vae_config(scaled_down: bool) -> dict:
    return dict(FAMILIES[family(scaled_down)][1])


def meta_transformer(config: dict | None = None) -> torch.nn.Module:
    """The transformer on the meta device: its shapes and parameter count, no memory."""
    from diffusers import HunyuanVideoTransformer3DModel

    with torch.device("meta"):
        return HunyuanVideoTransformer3DModel(**(config or REAL_TRANSFORMER))


def parameter_count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _params(n: int) -> str:
    return f"{n / 1e9:.2f} B" if n >= 1e8 else f"{n / 1e6:.2f} M"


def build_pipeline(scaled_down: bool, device: torch.device):
    """HunyuanVideoPipeline over the random-weight transformer and VAE (the package's ``random_weights`` kind), with
    no text encoders or tokenizers: it is only ever called with precomputed embeddings."""
    return load_model(random_weights(family(scaled_down)), device=device).pipeline


def text_inputs(config: dict, tokens: int, valid: int, device: torch.device, dtype: torch.dtype, seed: int = 0) -> dict:
    """What the text encoders would give: (1, tokens, text_dim) embeddings whose first ``valid`` are unmasked."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    mask = torch.zeros(1, tokens, dtype=torch.long)
    mask[:, :valid] = 1
    return {
        "prompt_embeds": torch.randn(1, tokens, config["text_embed_dim"], generator=gen).to(device, dtype),
        "pooled_prompt_embeds": torch.randn(1, config["pooled_projection_dim"], generator=gen).to(device, dtype),
        "prompt_attention_mask": mask.to(device),
    }


# -- sizes and schedule ---------------------------------------------------------------------------------


def parse_size(text: str) -> tuple[int, int, int]:
    try:
        h, w, f = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size {text!r} must be HEIGHTxWIDTHxFRAMES, e.g. 544x960x129") from None
    if h % 16 or w % 16 or h <= 0 or w <= 0 or f < 1 or (f - 1) % 4:
        raise argparse.ArgumentTypeError(f"size {text!r}: height and width multiples of 16, frames 4k+1")
    return h, w, f


def video_tokens(size: Sequence[int], config: dict) -> int:
    h, w, f = size
    p, pt = config["patch_size"], config["patch_size_t"]
    return ((f - 1) // 4 + 1) // pt * (h // 8 // p) * (w // 8 // p)


def schedule(steps: int, mode: str, interval: int) -> list[bool]:
    """Which of ``steps`` steps the cache computes fully (the hooks' own rule: ``hyca_batch.cache.schedule``)."""
    return [True] * steps if mode == "none" else schedule_full_steps(steps, interval)


def depths(full: Sequence[bool], cap: int) -> list[int]:
    """Per step: the history depth a forecast at that step uses (full steps before it, capped); 0 for full steps."""
    seen, out = 0, []
    for is_full in full:
        out.append(0 if is_full else min(seen, cap))
        seen += is_full
    return out


def prefix_steps(steps: int, mode: str, interval: int, history: int) -> int:
    """Steps of the schedule to run so that every history depth the cache reaches is measured once."""
    if mode == "none":
        return min(steps, 2)  # a warm-up pass and a timed one
    full = schedule(steps, mode, interval)
    d = depths(full, max(1, history))
    deepest = max(d) if any(d) else 0
    for k, depth in enumerate(d):
        if depth == deepest and not full[k]:
            # ... and the next step too when it is skipped: two passes at the deepest depth, no extra full pass
            return k + 2 if k + 1 < steps and not full[k + 1] else k + 1
    return steps


# -- measurement ------------------------------------------------------------------------------------


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
    """--max-memory-gb on a CPU: weights + the cache's history went over the cap (see PassRecorder)."""


class PassRecorder:
    """Per transformer pass: full or skipped, history depth, attention calls, forecast time, cache bytes."""

    def __init__(
        self, transformer, cache, device: torch.device, weights_bytes: int, cap_bytes: int | None, history: int
    ):
        self.transformer, self.cache, self.device, self.history = transformer, cache, device, max(1, history)
        self.weights_bytes, self.cap_bytes = weights_bytes, cap_bytes
        self.passes: list[dict] = []
        self.attention_calls = 0
        self.forecast_events: list = []
        self.forecast_s = 0.0
        self.full_so_far = 0
        self.cache_bytes = 0
        self.handles = [
            transformer.register_forward_pre_hook(self._start),
            transformer.register_forward_hook(self._end),
        ]
        for block in [*transformer.transformer_blocks, *transformer.single_transformer_blocks]:
            self.handles.append(block.attn.register_forward_pre_hook(self._count))
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
        state = self.cache.states.get_state()  # inside the pipeline's cache context: the "cond" state
        sync(self.device)
        forecast = self.forecast_s + sum(s.elapsed_time(e) for s, e in self.forecast_events) / 1e3
        slots = [t for values in state.history.values() for t in values]
        self.cache_bytes = max(self.cache_bytes, held_bytes(iter(slots)))
        self.passes.append(
            {
                "full": bool(state.full),
                "depth": 0 if state.full else min(self.full_so_far, self.history),
                "attention_calls": self.attention_calls,
                "forecast_s": forecast,
            }
        )
        self.full_so_far += bool(state.full)
        if self.cap_bytes is not None and self.device.type != "cuda":
            live = self.weights_bytes + held_bytes(iter(slots))
            if live > self.cap_bytes:
                raise SimulatedOOM(
                    f"simulated: weights + cache history {live / GIB:.3g} GiB over the "
                    f"--max-memory-gb cap {self.cap_bytes / GIB:.3g} GiB"
                )

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        del self.cache.forecast  # back to the class's method


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def memory_limit(device: torch.device, cap_bytes: int | None) -> int | None:
    """What one configuration may hold: the cap, else the GPU's memory; None on a CPU without a cap."""
    if cap_bytes is not None:
        return cap_bytes
    return torch.cuda.get_device_properties(device).total_memory if device.type == "cuda" else None


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
    interval = args.intervals[mode] if mode != "none" else 1
    config = CacheConfig(mode=mode, interval=interval, taylorseer_order=args.taylorseer_order, granularity=granularity)
    h, w, f = size
    tokens = video_tokens(size, transformer.config)
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
    row["schedule_full_passes"], row["schedule_skipped_passes"] = sum(full), len(full) - sum(full)

    cache = apply_feature_cache(transformer, config, solver_map if mode == "hyca" else None)
    modules = cached_modules(transformer, granularity)
    history = max((cache.history_points(n) for n in modules), default=0) if mode != "none" else 0
    element = torch.finfo(transformer.dtype).bits // 8
    row["history_slots"] = history
    row["predicted_cache_bytes"] = (
        predicted_cache_bytes(cache, modules, -(-tokens // sp), args.text_tokens, element) if mode != "none" else 0
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
    name = f"{'x'.join(map(str, size))} {mode}" + (f" ({granularity})" if mode != "none" else "")
    if budget is not None and not budget(name, sum(full[:run_steps]) * (args.full_estimate.get(tuple(size)) or 0.0)):
        cache.remove()
        row.update(status="skipped", error="time budget")
        return row
    recorder = PassRecorder(transformer, cache, device, weights_bytes, args.cap_bytes, history)

    def stop(pipeline, i, t, kwargs):
        if i + 1 >= run_steps:
            pipeline._interrupt = True  # the loop's own early exit: the remaining steps are skipped
        return {}

    oom = None
    loop_s = 0.0
    finite = None
    free_memory(device)
    reset_peak(device)
    try:
        cache.reset()
        sync(device)
        t0 = time.perf_counter()
        latents = pipe(
            **inputs,
            height=h,
            width=w,
            num_frames=f,
            num_inference_steps=args.steps,
            guidance_scale=GUIDANCE,
            generator=torch.Generator(device="cpu").manual_seed(0),
            output_type="latent",
            return_dict=False,
            callback_on_step_end=stop,
        )[0]
        sync(device)
        loop_s = time.perf_counter() - t0
        finite = bool(torch.isfinite(latents).all())
        del latents
    except torch.cuda.OutOfMemoryError as exc:  # SimulatedOOM too
        oom = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else "out of memory"
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
    for p in passes:
        p["seconds"] = full_times.pop(0) if p["full"] else skipped_times.pop(0)
    full_passes = [p for p in passes if p["full"]]
    skipped = [p for p in passes if not p["full"]]
    # The first pass at a size pays one-off costs (kernel selection, allocator growth): left out of the mean
    # when there is another full pass to take it from.
    timed_full = full_passes[1:] if (not warm and len(full_passes) > 1) else full_passes
    full_s = _mean([p["seconds"] for p in timed_full])
    by_depth = {}
    for d in sorted({p["depth"] for p in skipped}):
        at = [p for p in skipped if p["depth"] == d]
        by_depth[d] = {
            "skipped_step_s": _mean([p["seconds"] for p in at]),
            "forecast_s": _mean([p["forecast_s"] for p in at]),
            "passes": len(at),
        }
    deepest = max(by_depth) if by_depth else None
    other = (loop_s - sum(p["seconds"] for p in passes)) / max(1, len(passes))

    def pass_time(is_full: bool, depth: int) -> float:
        if is_full:
            return full_s
        known = [d for d in by_depth if d <= depth] or list(by_depth)
        return by_depth[max(known)]["skipped_step_s"]

    derived = sum(pass_time(fl, d) for fl, d in zip(full, depths(full, max(1, history)))) + args.steps * other
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
        attention_calls_per_full_pass=_mean([p["attention_calls"] for p in full_passes]),
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
            need = sum(p.numel() * p.element_size() for p in vae.parameters()) + out_bytes
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
        oom = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else "out of memory"
    row["peak_memory_bytes"] = peak_bytes(device)
    if oom is not None:
        row.update(status="oom", error=oom)
    free_memory(device)
    return row


# -- environment ------------------------------------------------------------------------------------


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


# -- calibration ------------------------------------------------------------------------------------


def calibrate_map(pipe, args, granularity: str, device: torch.device, dtype: torch.dtype) -> tuple[SolverMap, dict]:
    """The project's HyCa calibration on this transformer: probe every step fully at ``--calib-size``,
    record each cached feature at ``--probe-tokens`` token positions, cluster and choose solvers."""
    h, w, f = args.calib_size
    interval = args.intervals["hyca"]
    probe = TrajectoryProbe(tokens=args.probe_tokens, seed=0)
    cache = apply_feature_cache(pipe.transformer, CacheConfig(granularity=granularity), probe=probe)
    t0 = time.perf_counter()
    try:
        cache.reset()
        inputs = text_inputs(pipe.transformer.config, args.text_tokens, args.text_valid, device, dtype, seed=1)
        pipe(
            **inputs,
            height=h,
            width=w,
            num_frames=f,
            num_inference_steps=args.calib_steps,
            guidance_scale=GUIDANCE,
            generator=torch.Generator(device="cpu").manual_seed(1),
            output_type="latent",
            return_dict=False,
        )
        trajectories = probe.trajectories()
    finally:
        cache.remove()
    probe_s = time.perf_counter() - t0
    if device.type == "cuda":  # the error replay runs where the trajectories are: on the GPU it takes seconds
        trajectories = {k: v.to(device) for k, v in trajectories.items()}
    weights = step_weights(pipe.scheduler, args.calib_steps)
    solver_map = calibrate(
        trajectories,
        num_steps=args.calib_steps,
        interval=interval,
        clusters=args.clusters,
        step_weights=weights,
        metadata={
            "model": "hunyuanvideo-random" if not args.scaled_down else "tiny-config-random",
            "height": h,
            "width": w,
            "num_frames": f,
            "granularity": granularity,
            "probe_tokens": args.probe_tokens,
            "weighting": "dsigma",
        },
    )
    del trajectories
    free_memory(device)
    info = {
        "how": f"project calibration (trajectory probe + cache.calibrate.calibrate, dsigma^2 weights) at {h}x{w}x{f}, "
        f"{args.calib_steps} steps, N={interval}, {args.probe_tokens} probe tokens, {args.clusters} clusters",
        "granularity": granularity,
        "size": [h, w, f],
        "steps": args.calib_steps,
        "interval": interval,
        "probe_tokens": args.probe_tokens,
        "probe_s": probe_s,
        "total_s": time.perf_counter() - t0,
        "solver_map_id": solver_map.id,
        "cluster_solvers": solver_map.metadata.get("cluster_solvers"),
        "cluster_sizes": solver_map.metadata.get("cluster_sizes"),
    }
    return solver_map, info


# -- sequence parallelism -----------------------------------------------------------------------------


class SpeedRank(ShardedModelRank):
    """One sequence-parallel rank of ``measure_sp``: the package's sharded model (loaded, grouped and sharded by
    ``ShardedModelRank``, as in a replica), measured by this script."""

    def measure(self, shared: dict, solver_map_path: str | None) -> list[dict]:
        args = SimpleNamespace(**shared)
        args.calib_size = tuple(args.calib_size)
        device, world = self.model.device, self.groups.world
        if device.type == "cuda" and args.cap_bytes is not None:
            total = torch.cuda.get_device_properties(device).total_memory
            torch.cuda.set_per_process_memory_fraction(min(1.0, args.cap_bytes / total), device)
        pipe = self.model.pipeline
        weights_bytes = sum(p.numel() * p.element_size() for p in pipe.transformer.parameters())
        solver_map = SolverMap.load(solver_map_path, device=device) if solver_map_path else None
        inputs = text_inputs(
            pipe.transformer.config, args.text_tokens, args.text_valid, device, self.model.dtype, args.seed
        )
        args.full_estimate, args.activation_bytes = {}, {}
        rows = []
        for size in args.sizes:
            warm = False
            for mode in args.modes:
                row = measure(
                    pipe, inputs, size, mode, args.granularity, args, solver_map, device, weights_bytes, warm, sp=world
                )
                row.update(ulysses=self.groups.ulysses, ring=self.groups.ring, attention=self.sp.attention_kernel)
                rows.append(row)
                warm = warm or row["status"] == "ok"
        return rows


def measure_sp(args, world: int, solver_map_path: str | None) -> list[dict]:
    """Rows of one sp degree: every rank measures; a pass takes as long as its slowest rank."""
    shared = {
        k: v for k, v in vars(args).items() if k not in ("json", "results_md", "full_estimate", "activation_bytes")
    }
    shared["sizes"] = [list(s) for s in args.sizes]
    parallel = ParallelConfig(sp=world, attention=args.sp_attention, timeout_s=args.sp_timeout)
    device = "cuda" if args.device_type == "cuda" else "cpu"
    setup = RankSetup(
        model=random_weights(family(args.scaled_down)), parallel=parallel, device=device, threads=args.threads or 1
    )
    try:
        with RankGroup(SpeedRank, setup, world) as group:
            per_rank = group.call_all("measure", shared, solver_map_path)
    except RankFailure as exc:
        return [{"sp": world, "status": "failed", "error": str(exc)}]
    merged = []
    for rank_rows in zip(*per_rank):
        row = dict(rank_rows[0])
        if all(r["status"] == "ok" for r in rank_rows):
            for key in ("full_step_s", "skipped_step_s", "loop_s_derived", "forecast_s"):
                values = [r[key] for r in rank_rows if r.get(key) is not None]
                row[key] = max(values) if values else None
        elif any(r["status"] == "oom" for r in rank_rows):
            row["status"] = "oom"
        row["peak_memory_bytes"] = max((r["peak_memory_bytes"] or 0) for r in rank_rows) or None
        row["attention_calls_in_skipped_passes"] = sum(
            r.get("attention_calls_in_skipped_passes") or 0 for r in rank_rows
        )
        merged.append(row)
    return merged


# -- output -----------------------------------------------------------------------------------------


def _fmt(value, spec: str = ".3g", none: str = "-") -> str:
    return none if value is None else format(value, spec)


def _gib(value) -> str:
    return "-" if value is None else f"{value / GIB:.1f}"


def _size(value) -> str:
    return "x".join(map(str, value))


def _ratio(value) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _share(value) -> str:
    return "-" if value is None else f"{100 * value:.0f}%"


def markdown(result: dict) -> str:
    env = result["environment"]
    attn = result.get("attention") or {}
    maps = "; ".join(f"{g}: {c['how']}" for g, c in (result.get("calibration") or {}).items()) or "-"
    title = f"## {result['date']} - {env['device']}"
    if result["scaled_down"]:
        title += " (scaled-down smoke run on the tiny config, not a benchmark)"
    steps = result["steps"]
    lines = [
        title,
        "",
        f"torch {env['torch']} (CUDA {env['cuda']}), diffusers {env['diffusers']}, flash-attn "
        f"{env['flash_attn'] or 'not installed'}; attention: SDPA {attn.get('sdpa_kernel', '?')} kernel, mask "
        f"{attn.get('mask')}; transformer {_params(result['model']['parameters'])} parameters, "
        f"{result['dtype']}, random weights; text {result['text_tokens']} tokens ({result['text_valid']} unmasked); "
        f"{steps} steps. "
        f"HyCa map: {maps}.",
        "",
        f"| size | cache | N | granularity | status | full step s | skipped step s | forecast share of skipped "
        f"| full / skipped passes ({steps} steps) | loop s | loop | speedup | peak GiB | cache GiB |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in result["rows"]:
        ok = r["status"] == "ok"
        loop_s = (r["loop_s_measured"] or r["loop_s_derived"]) if ok else None
        speed = (r.get("speedup_measured") or r.get("speedup_derived")) if ok else None
        cache = r["cache_bytes"] if ok else r.get("predicted_cache_bytes")
        cache_text = _gib(cache) + ("" if ok or not cache else " needed")
        lines.append(
            f"| {_size(r['size'])} | {r['mode']} | {r['interval'] or '-'} | {r.get('granularity') or '-'} "
            f"| {r['status']} | {_fmt(r.get('full_step_s'))} | {_fmt(r.get('skipped_step_s'))} "
            f"| {_share(r.get('forecast_share'))} | {r['schedule_full_passes']} / {r['schedule_skipped_passes']} "
            f"| {_fmt(loop_s, '.4g')} | {r['loop'] if ok else '-'} | {_ratio(speed)} "
            f"| {_gib(r['peak_memory_bytes'])} | {cache_text} |"
        )
    if result.get("vae"):
        lines += ["", "| size | VAE tiled decode s | status | peak GiB |", "| --- | --- | --- | --- |"]
        for v in result["vae"]:
            lines.append(
                f"| {_size(v['size'])} | {_fmt(v.get('decode_s'))} | {v['status']} | {_gib(v['peak_memory_bytes'])} |"
            )
    if result.get("sp"):
        lines += [
            "",
            "| sp | ulysses x ring | size | cache | status | full step s | vs sp 1 | skipped step s "
            "| attention calls in skipped passes | peak GiB |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for r in result["sp"]:
            if "size" not in r:
                lines.append(f"| {r['sp']} | - | - | - | {r['status']}: {r.get('error', '')} | - | - | - | - | - |")
                continue
            lines.append(
                f"| {r['sp']} | {r.get('ulysses', '-')} x {r.get('ring', '-')} | {_size(r['size'])} | {r['mode']} "
                f"| {r['status']} | {_fmt(r.get('full_step_s'))} | {_ratio(r.get('scaling'))} "
                f"| {_fmt(r.get('skipped_step_s'))} | {r.get('attention_calls_in_skipped_passes', '-')} "
                f"| {_gib(r.get('peak_memory_bytes'))} |"
            )
    if result.get("skipped"):
        lines += ["", "Not run: " + "; ".join(f"{s['what']} ({s['reason']})" for s in result["skipped"]) + "."]
    return "\n".join(lines) + "\n"


def append_markdown(path: Path, table: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = path.read_text() if path.exists() else RESULTS_MD_HEADER
    path.write_text(text.rstrip("\n") + "\n\n" + table)


def write_json(path: Path, result: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=2, default=str))
    os.replace(tmp, path)


# -- main ---------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--scaled-down",
        action="store_true",
        help="CPU smoke run: the tiny config, small sizes, float32, the whole loop for real",
    )
    parser.add_argument(
        "--sizes",
        type=parse_size,
        nargs="+",
        default=None,
        help="HxWxF (default 544x960x129 720x1280x129; scaled-down 64x64x9 96x96x17)",
    )
    parser.add_argument(
        "--modes",
        nargs="+",
        default=["none", "taylorseer", "hyca"],
        choices=["none", "fora", "taylorseer", "foca", "hyca"],
    )
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument(
        "--loop",
        choices=["real", "prefix"],
        default=None,
        help="real: run all --steps steps, loop time measured; prefix: run the schedule's first steps "
        "and derive the loop (default: prefix on a GPU, real with --scaled-down)",
    )
    parser.add_argument("--interval-taylorseer", type=int, default=DEFAULT_INTERVALS["taylorseer"])
    parser.add_argument("--interval-hyca", type=int, default=DEFAULT_INTERVALS["hyca"])
    parser.add_argument("--taylorseer-order", type=int, default=2, choices=[1, 2])
    parser.add_argument("--granularity", default="block", choices=["block", "stack"])
    parser.add_argument(
        "--no-stack-fallback",
        dest="stack_fallback",
        action="store_false",
        help="do not rerun a mode that is oom at block granularity with --granularity stack",
    )
    parser.add_argument(
        "--no-predict-oom",
        dest="predict_oom",
        action="store_false",
        help="run a configuration even when weights + cache history alone exceed the memory",
    )
    parser.add_argument("--text-tokens", type=int, default=None, help="text sequence (default 256; scaled-down 16)")
    parser.add_argument("--text-valid", type=int, default=None, help="unmasked text tokens (default 64; scaled-down 8)")
    parser.add_argument("--solver-map", type=Path, default=None, help="a saved map for hyca (default: calibrate)")
    parser.add_argument(
        "--calib-size", type=parse_size, default=None, help="probe size (default 256x256x33; scaled-down 64x64x9)"
    )
    parser.add_argument("--calib-steps", type=int, default=None, help="probe steps (default --steps)")
    parser.add_argument(
        "--probe-tokens", type=int, default=None, help="token positions recorded (default 128; scaled-down 32)"
    )
    parser.add_argument("--clusters", type=int, default=8)
    parser.add_argument("--no-vae", action="store_true", help="skip the VAE decode")
    parser.add_argument("--sp", type=int, nargs="+", default=[1], help="sequence-parallel degrees (more than 1 GPU)")
    parser.add_argument("--sp-attention", default="auto", choices=["auto", "torch", "xfuser"])
    parser.add_argument("--sp-timeout", type=float, default=1800.0, help="seconds for one sp degree's ranks")
    parser.add_argument(
        "--max-memory-gb",
        type=float,
        default=None,
        help="cap: on CUDA the allocator's limit (torch.cuda.set_per_process_memory_fraction); on CPU "
        "weights + the cache's history are checked after every pass (simulated OOM)",
    )
    parser.add_argument(
        "--time-budget-s",
        type=float,
        default=None,
        help="skip configurations that would not finish within this many seconds of the start",
    )
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available; scaled-down: cpu)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument(
        "--json",
        type=Path,
        default=None,
        help=f"default {DEFAULT_JSON.relative_to(ROOT)} (scaled-down: benchmarks/results/gpu_speed_scaled_down.json)",
    )
    parser.add_argument(
        "--results-md",
        type=Path,
        default=None,
        help=f"table appended here (default {DEFAULT_MD.relative_to(ROOT)}; scaled-down: none)",
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    small = args.scaled_down
    args.sizes = args.sizes or ([(64, 64, 9), (96, 96, 17)] if small else [(544, 960, 129), (720, 1280, 129)])
    args.text_tokens = args.text_tokens or (16 if small else 256)
    args.text_valid = args.text_valid or (8 if small else 64)
    args.calib_size = args.calib_size or ((64, 64, 9) if small else (256, 256, 33))
    args.calib_steps = args.calib_steps or args.steps
    args.probe_tokens = args.probe_tokens or (32 if small else 128)
    args.real_loop = (args.loop or ("real" if small else "prefix")) == "real"
    args.device_type = args.device or ("cpu" if small or not torch.cuda.is_available() else "cuda")
    args.dtype = "float32" if args.device_type == "cpu" else "bfloat16"
    args.cap_bytes = int(args.max_memory_gb * GIB) if args.max_memory_gb is not None else None
    args.intervals = {
        "none": 1,
        "fora": args.interval_taylorseer,
        "foca": args.interval_taylorseer,
        "taylorseer": args.interval_taylorseer,
        "hyca": args.interval_hyca,
    }
    if args.json is None:
        args.json = DEFAULT_JSON.with_name("gpu_speed_scaled_down.json") if small else DEFAULT_JSON
    if args.results_md is None and not small:
        args.results_md = DEFAULT_MD
    if not 0 < args.text_valid <= args.text_tokens:
        parser.error("--text-valid must be in 1..--text-tokens")
    if "none" not in args.modes:
        args.modes = ["none", *args.modes]  # the baseline every speedup is against
    args.modes = list(dict.fromkeys(args.modes))
    return args


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.monotonic()
    device = torch.device(args.device_type)
    dtype = getattr(torch, args.dtype)
    if device.type == "cuda" and args.cap_bytes is not None:
        total = torch.cuda.get_device_properties(device).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, args.cap_bytes / total), device)

    config = transformer_config(args.scaled_down)
    result: dict[str, Any] = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "scaled_down": args.scaled_down,
        "environment": environment(device),
        "model": {
            "transformer_config": config,
            "vae_config": vae_config(args.scaled_down),
            "parameters": parameter_count(meta_transformer(config)),
            "weights": "random, N(0, 1/fan_in)",
        },
        "dtype": args.dtype,
        "steps": args.steps,
        "real_loop": args.real_loop,
        "granularity": args.granularity,
        "text_tokens": args.text_tokens,
        "text_valid": args.text_valid,
        "max_memory_gb": args.max_memory_gb,
        "rows": [],
        "vae": [],
        "sp": [],
        "skipped": [],
    }
    env = result["environment"]
    print(
        f"gpu_speed: {env['device']}, torch {env['torch']}, {_params(result['model']['parameters'])} parameters, "
        f"{args.dtype}, sizes {', '.join('x'.join(map(str, s)) for s in args.sizes)}, {args.steps} steps",
        flush=True,
    )

    t0 = time.perf_counter()
    pipe = build_pipeline(args.scaled_down, device)
    sync(device)
    result["build_s"] = time.perf_counter() - t0
    weights_bytes = sum(p.numel() * p.element_size() for p in pipe.transformer.parameters())
    result["model"]["transformer_bytes"] = weights_bytes

    maps: dict[str, SolverMap] = {}  # granularity -> map (a stack fallback calibrates its own)
    result["calibration"] = {}

    def solver_map_for(granularity: str) -> SolverMap:
        if granularity not in maps:
            if args.solver_map and granularity == args.granularity:
                smap = SolverMap.load(args.solver_map)
                info = {"how": f"loaded {args.solver_map}", "solver_map_id": smap.id}
            else:
                smap, info = calibrate_map(pipe, args, granularity, device, dtype)
                print(
                    f"  calibrated the HyCa map ({granularity}) in {info['total_s']:.1f} s: {info['cluster_solvers']}",
                    flush=True,
                )
            path = args.json.with_name(f"{args.json.stem}_solver_map_{granularity}.safetensors")
            smap.save(path)
            info["saved_to"] = str(path)
            result["calibration"][granularity] = info
            maps[granularity] = smap.to(device) if device.type == "cuda" else smap
        return maps[granularity]

    inputs = text_inputs(config, args.text_tokens, args.text_valid, device, dtype, args.seed)
    attention: dict = {}
    result["attention"] = attention
    args.full_estimate = {}  # size -> measured seconds of a full pass, for the time budget
    args.activation_bytes = {}  # size -> an uncached pass's peak memory beyond the weights (CUDA)

    def budget(what: str, estimate_s: float) -> bool:
        """True when ``what`` (about ``estimate_s`` seconds) may still start."""
        if args.time_budget_s is None or time.monotonic() - start + estimate_s <= args.time_budget_s:
            return True
        result["skipped"].append({"what": what, "reason": f"time budget: needs ~{estimate_s:.0f} s more"})
        print(f"  skipped {what}: over the time budget", flush=True)
        return False

    def run(size, mode: str, granularity: str, warm: bool) -> dict:
        smap = solver_map_for(granularity) if mode == "hyca" else None
        with record_attention_kernel(attention, min_tokens=video_tokens(size, config)):
            row = measure(pipe, inputs, size, mode, granularity, args, smap, device, weights_bytes, warm, budget=budget)
        if mode == "hyca":
            row["solver_map_id"] = smap.id
        result["rows"].append(row)
        add_speedups(result["rows"])
        write_json(args.json, result)
        label = f"{'x'.join(map(str, size))} {mode}" + (f" ({granularity})" if mode != "none" else "")
        if row["status"] == "ok":
            print(
                f"  {label}: full {row['full_step_s']:.3g} s, skipped {_fmt(row['skipped_step_s'])} s, "
                f"passes {row['full_passes']}/{row['skipped_passes']} of {row['measured_steps']} steps, "
                f"peak {_gib(row['peak_memory_bytes'])} GiB",
                flush=True,
            )
        else:
            print(f"  {label}: {row['status']} ({row.get('error')})", flush=True)
        return row

    for size in args.sizes:
        warm = False
        for mode in args.modes:
            row = run(size, mode, args.granularity, warm)
            if row["status"] == "ok":
                warm = True
                args.full_estimate.setdefault(tuple(size), row["full_step_s"])
                if mode == "none" and row["peak_memory_bytes"] is not None:
                    args.activation_bytes[tuple(size)] = max(0, row["peak_memory_bytes"] - weights_bytes)
            if row["status"] == "oom" and mode != "none" and args.granularity == "block" and args.stack_fallback:
                run(size, mode, "stack", warm)  # one residual per stack: the low-memory granularity
        if not args.no_vae:
            name = f"{'x'.join(map(str, size))} VAE decode"
            if budget(name, 3 * args.full_estimate.get(tuple(size), 0.0)):
                vae_row = decode_vae(pipe.vae, size, device, dtype, args.cap_bytes)
                result["vae"].append(vae_row)
                write_json(args.json, result)
                print(f"  {name}: {vae_row['status']}, {_fmt(vae_row.get('decode_s'))} s", flush=True)
    map_path = result["calibration"].get(args.granularity, {}).get("saved_to")

    add_speedups(result["rows"])
    if any(n > 1 for n in args.sp):
        available = torch.cuda.device_count() if device.type == "cuda" else max(args.sp)
        del pipe, inputs
        free_memory(device)
        for world in args.sp:
            if world > available:
                result["sp"].append({"sp": world, "status": "skipped", "error": f"{available} GPU(s) available"})
                continue
            if not budget(f"sp {world}", 0.0):
                continue
            print(f"  sp {world}: starting {world} rank(s)", flush=True)
            result["sp"] += measure_sp(args, world, map_path)
            write_json(args.json, result)
        base = {(tuple(r["size"]), r["mode"]): r for r in result["sp"] if r.get("sp") == 1 and r.get("status") == "ok"}
        for r in result["sp"]:
            b = base.get((tuple(r.get("size", ())), r.get("mode")))
            r["scaling"] = b["full_step_s"] / r["full_step_s"] if b and r.get("status") == "ok" else None

    result["total_s"] = time.monotonic() - start
    write_json(args.json, result)
    table = markdown(result)
    print("\n" + table)
    if args.results_md:
        append_markdown(args.results_md, table)
        print(f"appended to {args.results_md}")
    print(f"wrote {args.json}")
    return result


if __name__ == "__main__":
    main()

"""Cache quality vs. speed: every cache mode at every interval N against the uncached video, in one run.

    .venv/bin/python benchmarks/cache_quality.py [--model mini] [--intervals 3,4,5,6,7,8] [--quick]

For each prompt the uncached reference (mode ``none``) is generated first; then, for each N and each
method, the same prompts (same seeds) are generated with the cache and compared with the reference:

- ours (hyca_batch's FeatureCache, a full pass every N steps, no warmup): ``fora``, ``taylorseer-o1``,
  ``taylorseer-o2``, ``foca``, ``hyca`` (one solver map per N, calibrated on a separate prompt that is
  not evaluated);
- diffusers' own caches as outside reference points: ``diffusers-taylorseer-o1/o2``
  (``TaylorSeerCacheConfig(cache_interval=N, disable_cache_before_step=1)``: the closest to our schedule
  it allows, one more full pass than ours; it forecasts only the attention modules, the MLPs still run
  every step) and ``diffusers-fbc-<threshold>`` (``FirstBlockCacheConfig``: adaptive, no N, listed once).

Columns: ``full`` is the number of transformer passes that really computed (ours: the cache's count;
diffusers TaylorSeer: passes where the first block's attention ran; FirstBlockCache: passes where the
last block ran), ``FLOPs x`` the theoretical speedup total passes / full passes (our modes only: their
forecast passes run no block), ``meas FLOPs x`` transformer FLOPs uncached / cached as counted by
``torch.utils.flop_counter`` (matmuls, convolutions and attention; embedders and the text refiner run at
every step, so it is below ``FLOPs x``), ``speedup`` uncached / cached denoise-loop time, then PSNR and
SSIM of the decoded frames and the relative L2 of the final latents against the uncached ones. All are
means over the prompts.

Timing: every (method, prompt) gets one untimed run (fidelity, FLOPs), then ``--repeats`` pairs of timed
runs, uncached then cached, and a few more pairs while a side's two best times disagree; each side keeps
its best time. Pairing keeps the ratio honest on a machine whose load changes during the benchmark.

Our FeatureCache and a diffusers cache are never active together: diffusers' caches run with our cache
installed in mode ``none`` (it only counts and times transformer calls) and are disabled before one of
our modes is installed. Repeated cached runs must give identical latents, and every uncached run the
reference's, which checks that no cache state leaks from one video into the next.
Progress goes to stderr; the table to stdout; the JSON to ``--json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from a checkout, package not installed
    sys.path.insert(0, str(ROOT))

DEFAULT_INTERVALS = (3, 4, 5, 6, 7, 8)
QUICK_INTERVALS = (3, 6)
# In the mini model's vocabulary (the default model): two held-out compositions and one training prompt.
DEFAULT_PROMPTS = (
    "a red circle moving left on a black background",
    "a purple triangle moving down on a white background",
    "a yellow square growing on a gray background",
)
CALIBRATION_PROMPT = "a blue circle moving right on a gray background"
CALIBRATION_SEED = 4242
#: Steps when --steps is not given, per model preset; other models use their own default.
DEFAULT_STEPS = {"tiny": 24, "mini": 24}
QUICK_STEPS = 12
DEFAULT_FBC_THRESHOLDS = (0.05, 0.1, 0.2)
#: diffusers' TaylorSeer cannot forecast before its first refresh: 1 is the fewest warmup steps it takes.
DIFFUSERS_TAYLORSEER_WARMUP = 1
#: Timing: at most this many extra (uncached, cached) pairs while a side's two best times differ by > STABLE x.
EXTRA_PAIRS = 3
STABLE = 1.2

OUR_METHODS = ("fora", "taylorseer-o1", "taylorseer-o2", "foca", "hyca")
DIFFUSERS_TAYLORSEER_METHODS = ("diffusers-taylorseer-o1", "diffusers-taylorseer-o2")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- command line ---------------------------------------------------------------------------------------


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"intervals must be integers >= 1, got {text!r}")
    return values


def _float_list(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if any(v < 0 for v in values):
        raise argparse.ArgumentTypeError(f"thresholds must be >= 0, got {text!r}")
    return values


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model",
        default="mini",
        help="preset, local diffusers directory or hub id (default mini, the trained miniature)",
    )
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default on CPU: 1, whose timings stay steady on a shared machine; 0: torch's own)",
    )
    parser.add_argument(
        "--steps", type=int, default=None, help="denoising steps (default 24 for tiny and mini, else the model's)"
    )
    parser.add_argument("--height", type=int, default=None, help="default: the model's")
    parser.add_argument("--width", type=int, default=None, help="default: the model's")
    parser.add_argument("--num-frames", type=int, default=None, help="default: the model's")
    parser.add_argument("--intervals", type=_int_list, default=None, help="comma list of N (default 3,4,5,6,7,8)")
    parser.add_argument("--clusters", type=int, default=8, help="hyca calibration: channel clusters (default 8)")
    parser.add_argument(
        "--prompts",
        action="append",
        default=None,
        help="evaluated prompt(s): repeat the option or give a comma list (default: 3 built-in prompts)",
    )
    parser.add_argument(
        "--calibration-prompt", default=CALIBRATION_PROMPT, help="hyca calibration prompt (not evaluated)"
    )
    parser.add_argument("--seed", type=int, default=0, help="prompt i uses seed SEED+i (default 0)")
    parser.add_argument(
        "--fbc-thresholds",
        type=_float_list,
        default=list(DEFAULT_FBC_THRESHOLDS),
        help="diffusers FirstBlockCache thresholds, comma list; empty to skip (default 0.05,0.1,0.2)",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="timed (uncached, cached) pairs per (method, prompt), best kept (default 2; quick 1)",
    )
    parser.add_argument("--no-diffusers", action="store_true", help="skip diffusers' own caches")
    parser.add_argument(
        "--json", type=Path, default=ROOT / "benchmarks" / "results" / "cache_quality.json", help="output JSON path"
    )
    parser.add_argument(
        "--quick", action="store_true", help="smoke test: intervals 3,6, one prompt, 12 steps, 1 repeat"
    )
    args = parser.parse_args(argv)

    if args.prompts:
        prompts = [p.strip() for item in args.prompts for p in item.split(",") if p.strip()]
        if not prompts:
            parser.error("--prompts gave no non-empty prompt")
    else:
        prompts = list(DEFAULT_PROMPTS)
    if args.quick:
        prompts = prompts[:1]
        args.intervals = args.intervals or list(QUICK_INTERVALS)
        args.steps = args.steps or QUICK_STEPS
        args.repeats = args.repeats or 1
    args.prompts = list(dict.fromkeys(prompts))  # duplicates would only weigh a prompt twice
    args.intervals = sorted(set(args.intervals or DEFAULT_INTERVALS))
    args.repeats = args.repeats if args.repeats is not None else 2
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    if args.clusters < 1:
        parser.error("--clusters must be >= 1")
    if args.threads is not None and args.threads < 0:
        parser.error("--threads must be >= 0")
    if args.steps is not None and args.steps < 2:
        parser.error("--steps must be >= 2")
    args.calibration_prompt = args.calibration_prompt.strip()
    if not args.calibration_prompt:
        parser.error("--calibration-prompt must not be empty")
    if args.calibration_prompt in args.prompts:
        parser.error(f"the calibration prompt {args.calibration_prompt!r} is also an evaluated prompt; choose another")
    return args


# -- methods --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Method:
    name: str
    family: str  # "hyca_batch" (our FeatureCache) or "diffusers"
    interval: int | None  # None: adaptive (FirstBlockCache)
    params: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)


def build_methods(intervals: Sequence[int], fbc_thresholds: Sequence[float], with_diffusers: bool) -> list[Method]:
    methods: list[Method] = []
    for n in intervals:
        methods += [
            Method("fora", "hyca_batch", n, {"mode": "fora"}),
            Method("taylorseer-o1", "hyca_batch", n, {"mode": "taylorseer", "taylorseer_order": 1}),
            Method("taylorseer-o2", "hyca_batch", n, {"mode": "taylorseer", "taylorseer_order": 2}),
            Method("foca", "hyca_batch", n, {"mode": "foca"}),
            Method("hyca", "hyca_batch", n, {"mode": "hyca"}),
        ]
        if with_diffusers:
            for order in (1, 2):
                methods.append(
                    Method(
                        f"diffusers-taylorseer-o{order}",
                        "diffusers",
                        n,
                        {
                            "cache": "TaylorSeerCacheConfig",
                            "cache_interval": n,
                            "max_order": order,
                            "disable_cache_before_step": DIFFUSERS_TAYLORSEER_WARMUP,
                        },
                    )
                )
    if with_diffusers:
        for threshold in fbc_thresholds:
            methods.append(
                Method(
                    f"diffusers-fbc-{threshold:g}",
                    "diffusers",
                    None,
                    {"cache": "FirstBlockCacheConfig", "threshold": threshold},
                )
            )
    return methods


def method_order(name: str) -> tuple[int, float, str]:
    """Our modes, then diffusers' TaylorSeer, then FirstBlockCache by threshold."""
    known = (*OUR_METHODS, *DIFFUSERS_TAYLORSEER_METHODS)
    if name in known:
        return (known.index(name), 0.0, name)
    if name.startswith("diffusers-fbc-"):
        return (len(known), float(name.rsplit("-", 1)[1]), name)
    return (len(known) + 1, 0.0, name)


def row_order(row: dict) -> tuple:
    n = row["interval"]
    return (n is None, n or 0, *method_order(row["method"]))


def diffusers_taylorseer_expected_refreshes(steps: int, interval: int, warmup: int) -> int:
    """Passes where diffusers' TaylorSeer computes (its own schedule, copied from TaylorSeerCacheHook)."""
    return sum(1 for s in range(steps) if s < warmup or (s - warmup - 1) % interval == 0)


# -- measuring ------------------------------------------------------------------------------------------


def _sdpa_flops(query, key, value, *args, **kwargs) -> int:
    from torch.utils.flop_counter import sdpa_flop_count

    return sdpa_flop_count(query.shape, key.shape, value.shape)


_sdpa_flops._get_raw = True  # FlopCounterMode: call with the tensors, not their shapes


def flop_counter():
    """A FlopCounterMode that also counts CPU attention (only the CUDA SDPA kernels are registered)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    mapping = {}
    for name in ("_scaled_dot_product_flash_attention_for_cpu",):
        op = getattr(torch.ops.aten, name, None)
        if op is not None:
            mapping[op] = _sdpa_flops
    return FlopCounterMode(display=False, custom_mapping=mapping)


class CallCounter:
    """Counts forward calls of one submodule: it runs only when its block/attention really computes."""

    def __init__(self, module) -> None:
        self.count = 0
        self.handle = module.register_forward_hook(self._hook)

    def _hook(self, module, inputs, output) -> None:
        self.count += 1

    def remove(self) -> None:
        self.handle.remove()


@dataclass
class Run:
    frames: Any
    latents: Any
    denoise_s: float
    passes: int  # transformer calls (our step hook)
    full: int  # ours: the cache's full count; -1 in mode none
    attn_computes: int  # passes where the first double block's attention ran
    tail_computes: int  # passes where the last single block ran
    transformer_flops: int | None = None
    deterministic: bool = True
    reference_s: list[float] = field(default_factory=list)  # interleaved uncached timings
    cached_s: list[float] = field(default_factory=list)


class Bench:
    """One loaded model, with at most one cache active at any time, and the runs that measure it."""

    def __init__(self, model) -> None:
        from hyca_batch.pipeline.generate import VideoGenerator

        self.model = model
        self.transformer = model.pipeline.transformer
        self.generator: VideoGenerator | None = None
        self.extra_pairs = 0  # timed pairs added because the timings disagreed (a noisy machine)
        self.attn_counter = CallCounter(self.transformer.transformer_blocks[0].attn.to_q)
        self.tail_counter = CallCounter(self.transformer.single_transformer_blocks[-1].proj_out)

    # -- installing and removing caches (never two at once) -----------------------------------------------

    def _diffusers_cache_active(self) -> bool:
        return bool(getattr(self.transformer, "is_cache_enabled", False))

    def install_ours(self, config, solver_map=None) -> None:
        from hyca_batch.pipeline.generate import VideoGenerator

        if self._diffusers_cache_active():
            raise RuntimeError("a diffusers cache is still enabled; disable it before installing our FeatureCache")
        self.remove_ours()
        self.generator = VideoGenerator(self.model, cache=config, solver_map=solver_map)

    def remove_ours(self) -> None:
        if self.generator is not None:
            self.generator.cache.remove()
            self.generator = None

    def enable_diffusers(self, config) -> None:
        from hyca_batch.config import CacheConfig

        self.disable_diffusers()
        # Our cache stays installed only as the pass counter (mode none: no block hooks, nothing forecast).
        if self.generator is None or self.generator.cache.config.mode != "none":
            self.install_ours(CacheConfig(mode="none"))
        self.transformer.enable_cache(config)

    def disable_diffusers(self) -> None:
        if self._diffusers_cache_active():
            self.transformer.disable_cache()

    def activate_reference(self) -> None:
        from hyca_batch.config import CacheConfig

        self.disable_diffusers()
        if self.generator is None or self.generator.cache.config.mode != "none":
            self.install_ours(CacheConfig(mode="none"))

    def close(self) -> None:
        self.disable_diffusers()
        self.remove_ours()
        self.attn_counter.remove()
        self.tail_counter.remove()

    # -- running ----------------------------------------------------------------------------------------

    def once(self, request, count_flops: bool = False) -> Run:
        self.attn_counter.count = self.tail_counter.count = 0
        flops = None
        if count_flops:
            counter = flop_counter()
            with counter:
                result = self.generator(request)
            per_module = counter.get_flop_counts().get(type(self.transformer).__name__, {})
            flops = int(sum(per_module.values()))
        else:
            result = self.generator(request)
        mode = self.generator.cache.config.mode
        return Run(
            frames=result.frames,
            latents=result.latents,
            denoise_s=result.timings["denoise_s"],
            passes=result.transformer_passes_full + result.transformer_passes_skipped,
            full=result.transformer_passes_full if mode != "none" else -1,
            attn_computes=self.attn_counter.count,
            tail_computes=self.tail_counter.count,
            transformer_flops=flops,
        )

    def measure(
        self,
        request,
        reference: Run,
        activate: Callable[[], None],
        repeats: int,
        count_flops: bool,
        tick: Callable[[], None],
    ) -> Run:
        """One untimed run (fidelity, FLOPs), then ``repeats`` timed pairs: uncached, cached.

        Pairing puts each cached timing next to an uncached one, so a machine whose load changes over the
        minutes of a benchmark still gives honest ratios; the best of each side is kept. All cached runs
        must give the same latents, and every uncached one the reference's: no cache state may leak.
        """
        import torch

        activate()
        first = self.once(request, count_flops)
        tick()

        def pair() -> None:
            self.activate_reference()
            ref = self.once(request)
            if not torch.equal(ref.latents, reference.latents):
                raise RuntimeError(f"the uncached video of {request.prompt!r} changed: a cache left state behind")
            first.reference_s.append(ref.denoise_s)
            activate()
            run = self.once(request)
            first.cached_s.append(run.denoise_s)
            if not torch.equal(run.latents, first.latents) or (run.attn_computes, run.tail_computes) != (
                first.attn_computes,
                first.tail_computes,
            ):
                first.deterministic = False

        def unstable(times: list[float]) -> bool:
            best = sorted(times)
            return best[1] > STABLE * best[0]

        for _ in range(repeats):
            pair()
            tick()
        # With 2+ repeats, a few extra pairs while the two best times of a side disagree: a busy machine
        # slows single runs by up to 100x.
        extra = 0
        while repeats >= 2 and extra < EXTRA_PAIRS and (unstable(first.cached_s) or unstable(first.reference_s)):
            pair()
            extra += 1
        self.extra_pairs += extra
        first.denoise_s = min(first.cached_s)
        return first


# -- the benchmark --------------------------------------------------------------------------------------


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def _finite_or_none(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _round(value: float | None, digits: int = 6) -> float | None:
    value = _finite_or_none(value)
    return None if value is None else float(f"{value:.{digits}g}")


def run_benchmark(args: argparse.Namespace) -> dict:
    import diffusers
    import torch
    from diffusers import FirstBlockCacheConfig, TaylorSeerCacheConfig
    from tqdm import tqdm

    from hyca_batch.config import CacheConfig, CalibrationConfig
    from hyca_batch.models import load_model, resolve_model
    from hyca_batch.pipeline.calibration import calibrate_model
    from hyca_batch.pipeline.fidelity import psnr, relative_l2, ssim
    from hyca_batch.types import Request

    started = time.perf_counter()
    spec = resolve_model(args.model)
    steps = args.steps or DEFAULT_STEPS.get(spec.name, spec.defaults.num_inference_steps)
    size = spec.defaults.merged(
        height=args.height, width=args.width, num_frames=args.num_frames, num_inference_steps=steps
    )
    log(f"loading model {spec.name} ...")
    model = load_model(spec, device=args.device)
    device = str(model.device)
    # Several threads on a small CPU that other work shares stall at every parallel region's barrier
    # (single runs 30x slower, seen on 2 cores); one thread measures cached and uncached alike, steadily.
    threads = args.threads if args.threads is not None else (1 if model.device.type == "cpu" else 0)
    if threads:
        torch.set_num_threads(threads)

    def request(i: int, prompt: str, seed: int) -> Request:
        return Request.with_defaults(size, id=f"cache-quality-{i}", prompt=prompt, seed=seed)

    requests = [request(i, p, args.seed + i) for i, p in enumerate(args.prompts)]
    calibration_request = request(-1, args.calibration_prompt, CALIBRATION_SEED)
    methods = build_methods(args.intervals, args.fbc_thresholds, not args.no_diffusers)
    log(
        f"model {spec.name} on {device}: {steps} steps, {size.width}x{size.height}x{size.num_frames}, "
        f"{len(requests)} prompt(s), intervals {args.intervals}, {len(methods)} (method, N) pairs"
    )

    # HyCa: one solver map per N from the calibration prompt (calibrate_model installs its own probe cache).
    solver_maps = {}
    calibration_info = {}
    for n in args.intervals:
        t0 = time.perf_counter()
        solver_map = calibrate_model(
            model,
            [calibration_request],
            CacheConfig(mode="hyca", interval=n),
            CalibrationConfig(clusters=args.clusters),
        )
        solver_maps[n] = solver_map
        calibration_info[str(n)] = {
            "solver_map_id": solver_map.id,
            "clusters": int(solver_map.cluster_solver.numel()),
            "cluster_solvers": [solver_map.solvers[int(i)] for i in solver_map.cluster_solver.tolist()],
            "seconds": round(time.perf_counter() - t0, 3),
        }
        log(f"calibrated hyca N={n}: solver map {solver_map.id} ({time.perf_counter() - t0:.1f} s)")

    def activator(method: Method) -> Callable[[], None]:
        if method.family == "hyca_batch":
            config = CacheConfig(
                mode=method.params["mode"],
                interval=method.interval,
                taylorseer_order=method.params.get("taylorseer_order", 2),
            )
            solver_map = solver_maps[method.interval] if config.mode == "hyca" else None

            def activate() -> None:
                bench.disable_diffusers()
                bench.install_ours(config, solver_map)

        else:

            def activate() -> None:
                if method.params["cache"] == "TaylorSeerCacheConfig":
                    config = TaylorSeerCacheConfig(
                        cache_interval=method.interval,
                        disable_cache_before_step=DIFFUSERS_TAYLORSEER_WARMUP,
                        max_order=method.params["max_order"],
                        taylor_factors_dtype=model.dtype,  # diffusers defaults to bfloat16; ours keeps the model's
                    )
                else:
                    config = FirstBlockCacheConfig(threshold=method.params["threshold"])
                bench.enable_diffusers(config)

        return activate

    bench = Bench(model)
    total = len(requests) * (1 + len(methods) * (1 + args.repeats))
    progress = tqdm(total=total, desc="generating", unit="video", file=sys.stderr, disable=not sys.stderr.isatty())
    tick = lambda: progress.update(1)  # noqa: E731
    rows: list[dict] = []
    try:
        progress.set_postfix_str("uncached reference")
        bench.activate_reference()
        references = []
        for i, r in enumerate(requests):
            ref = bench.once(r, count_flops=i == 0)
            tick()
            if ref.passes != steps or ref.tail_computes != steps:
                raise RuntimeError(
                    f"uncached run of {r.prompt!r} made {ref.passes} transformer passes, expected {steps}"
                )
            references.append(ref)
        reference_flops = references[0].transformer_flops

        for k, method in enumerate(methods, 1):
            label = f"{method.name} N={method.interval if method.interval is not None else '-'}"
            progress.set_postfix_str(label)
            activate = activator(method)
            per_prompt = []
            try:
                for i, (r, ref) in enumerate(zip(requests, references)):
                    # FLOPs follow from the schedule for fixed-N methods (counted on the first prompt); an
                    # adaptive cache skips differently per prompt, so it is counted on every one.
                    count = i == 0 or method.interval is None
                    per_prompt.append((r, ref, bench.measure(r, ref, activate, args.repeats, count, tick)))
            finally:
                bench.disable_diffusers()
            row = summarize(method, per_prompt, steps, solver_maps, reference_flops, psnr, ssim, relative_l2)
            rows.append(row)
            tqdm.write(
                f"[{k}/{len(methods)}] {label}: full {row['full_passes']:g}, speedup {row['speedup']:.2f}, "
                f"latent rel L2 {row['latent_rel_l2']:.3e} ({time.perf_counter() - started:.0f} s)",
                file=sys.stderr,
            )
    finally:
        progress.close()
        bench.close()
    rows.sort(key=row_order)

    reference_info = []
    for i, r in enumerate(requests):
        times = [t for row in rows for item in row["per_prompt"][i : i + 1] for t in item["reference_s"]]
        reference_info.append(
            {
                "prompt": r.prompt,
                "seed": r.seed,
                "denoise_s": _round(min(times)),
                "slowest_over_best": _round(max(times) / min(times), 4),
                "timed_runs": len(times),
                "transformer_flops": references[i].transformer_flops,
            }
        )

    return {
        "benchmark": "cache_quality",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "model": spec.name,
        "device": device,
        "device_name": torch.cuda.get_device_name(model.device)
        if model.device.type == "cuda"
        else platform.processor() or platform.machine(),
        "dtype": str(model.dtype).replace("torch.", ""),
        "torch_threads": torch.get_num_threads(),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "diffusers": diffusers.__version__,
        },
        "steps": steps,
        "height": size.height,
        "width": size.width,
        "num_frames": size.num_frames,
        "guidance_scale": size.guidance_scale,
        "intervals": args.intervals,
        "repeats": args.repeats,
        "extra_timed_pairs": bench.extra_pairs,
        "prompts": [{"prompt": r.prompt, "seed": r.seed} for r in requests],
        "calibration": {
            "prompt": calibration_request.prompt,
            "seed": calibration_request.seed,
            "clusters": args.clusters,
            "maps": calibration_info,
        },
        "diffusers_taylorseer_warmup": DIFFUSERS_TAYLORSEER_WARMUP,
        "reference": reference_info,
        "rows": rows,
        "wall_s": round(time.perf_counter() - started, 1),
    }


def summarize(method: Method, per_prompt, steps: int, solver_maps, reference_flops, psnr, ssim, relative_l2) -> dict:
    items = []
    for request, ref, run in per_prompt:
        if method.family == "hyca_batch":
            full = run.full
            if run.tail_computes != full:
                raise RuntimeError(
                    f"{method.name} N={method.interval}: the cache counted {full} full passes, "
                    f"the last block ran in {run.tail_computes}"
                )
        elif method.params["cache"] == "TaylorSeerCacheConfig":
            full = run.attn_computes
        else:
            full = run.tail_computes
        items.append(
            {
                "prompt": request.prompt,
                "full_passes": full,
                "transformer_passes": run.passes,
                "denoise_s": _round(run.denoise_s),
                "reference_denoise_s": _round(min(run.reference_s)),
                "speedup": _round(min(run.reference_s) / run.denoise_s, 4),
                "flops_ratio_measured": _round(reference_flops / run.transformer_flops, 4)
                if run.transformer_flops and reference_flops
                else None,
                "psnr": _round(psnr(ref.frames, run.frames), 5),
                "ssim": _round(ssim(ref.frames, run.frames), 6),
                "latent_rel_l2": _round(relative_l2(ref.latents, run.latents), 5),
                "deterministic": run.deterministic,
                "cached_s": [_round(t, 4) for t in run.cached_s],
                "reference_s": [_round(t, 4) for t in run.reference_s],
            }
        )
    passes = items[0]["transformer_passes"]
    full_mean = _mean([i["full_passes"] for i in items])
    measured = [i["flops_ratio_measured"] for i in items if i["flops_ratio_measured"] is not None]
    row: dict[str, Any] = {
        "method": method.name,
        "family": method.family,
        "interval": method.interval,
        "params": method.params,
        "steps": steps,
        "transformer_passes": passes,
        "full_passes": full_mean,
        # The theoretical speedup holds only where a skipped pass runs no block: our modes.
        "flops_ratio": _round(passes / full_mean, 4) if method.family == "hyca_batch" and full_mean else None,
        "flops_ratio_measured": _round(_mean(measured), 4) if measured else None,
        "speedup": _round(_mean([i["speedup"] for i in items]), 4),
        "denoise_s": _round(_mean([i["denoise_s"] for i in items])),
        # PSNR is inf (null) for a video identical to the reference, e.g. a cache that never skipped.
        "psnr": _round(_mean([i["psnr"] if i["psnr"] is not None else math.inf for i in items]), 5),
        "ssim": _round(_mean([i["ssim"] for i in items]), 6),
        "latent_rel_l2": _round(_mean([i["latent_rel_l2"] for i in items]), 5),
        "deterministic": all(i["deterministic"] for i in items),
        "per_prompt": items,
    }
    if method.name == "hyca":
        row["solver_map_id"] = solver_maps[method.interval].id
    if method.params.get("cache") == "TaylorSeerCacheConfig":
        row["expected_full_passes"] = diffusers_taylorseer_expected_refreshes(
            steps, method.interval, DIFFUSERS_TAYLORSEER_WARMUP
        )
        if row["full_passes"] != row["expected_full_passes"]:
            log(
                f"WARNING: {method.name} N={method.interval}: attention ran in {row['full_passes']} passes, "
                f"diffusers' schedule says {row['expected_full_passes']}: is the cache engaged?"
            )
    if not row["deterministic"]:
        log(f"WARNING: {method.name} N={method.interval}: repeated runs of one prompt gave different results")
    return row


# -- output ---------------------------------------------------------------------------------------------


def _fmt(value: float | None, spec: str, none: str = "-") -> str:
    return none if value is None else format(value, spec)


def format_report(result: dict) -> str:
    lines = [
        f"cache quality: model {result['model']} on {result['device']} ({result['dtype']}, "
        f"{result['torch_threads']} thread(s)), {result['steps']} steps, "
        f"{result['width']}x{result['height']}x{result['num_frames']}, {len(result['prompts'])} prompt(s), "
        f"best of {result['repeats']}+ timed pair(s); torch {result['versions']['torch']}, "
        f"diffusers {result['versions']['diffusers']}",
        "uncached denoise, best per prompt: "
        + ", ".join(f"{r['denoise_s'] * 1000:.0f} ms" for r in result["reference"])
        + " (slowest/best of its "
        + ", ".join(f"{r['timed_runs']}" for r in result["reference"])
        + " timed runs: "
        + ", ".join(f"{r['slowest_over_best']:.1f}x" for r in result["reference"])
        + ")",
        "",
    ]
    header = (
        f"{'method':<24} {'N':>2} {'full':>5} {'FLOPs x':>7} {'meas FLOPs x':>12} {'speedup':>7} "
        f"{'denoise ms':>10} {'PSNR dB':>7} {'SSIM':>6} {'latent rel L2':>13}"
    )
    lines += [header, "-" * len(header)]
    previous = result["rows"][0]["interval"] if result["rows"] else None
    for row in result["rows"]:
        if row["interval"] != previous:
            lines.append("")
        previous = row["interval"]
        psnr = "inf" if row["psnr"] is None else f"{row['psnr']:.2f}"
        full = f"{row['full_passes']:.1f}" if row["full_passes"] % 1 else f"{int(row['full_passes'])}"
        lines.append(
            f"{row['method']:<24} {row['interval'] if row['interval'] is not None else '-':>2} {full:>5} "
            f"{_fmt(row['flops_ratio'], '.2f'):>7} {_fmt(row['flops_ratio_measured'], '.2f'):>12} "
            f"{_fmt(row['speedup'], '.2f'):>7} {row['denoise_s'] * 1000:>10.1f} {psnr:>7} "
            f"{row['ssim']:>6.4f} {row['latent_rel_l2']:>13.3e}"
        )
    lines.append("")
    lines += winners(result["rows"])
    maps = result["calibration"]["maps"]
    if maps:
        lines.append("")
        lines.append(
            f"hyca solver maps (calibrated on {result['calibration']['prompt']!r}, "
            f"{result['calibration']['clusters']} clusters): "
            + ", ".join(f"N={n}: {m['solver_map_id']}" for n, m in maps.items())
        )
    return "\n".join(lines)


def winners(rows: list[dict]) -> list[str]:
    """Per N: the lowest latent error overall, and among our modes (which all cost the same FLOPs)."""
    lines = []
    for n in sorted({r["interval"] for r in rows if r["interval"] is not None}):
        at_n = [r for r in rows if r["interval"] == n]
        best = min(at_n, key=lambda r: r["latent_rel_l2"])
        ours = sorted((r for r in at_n if r["family"] == "hyca_batch"), key=lambda r: r["latent_rel_l2"])
        line = f"N={n}: lowest latent rel L2: {best['method']} ({best['latent_rel_l2']:.3e})"
        if ours and ours[0] is not best:
            line += f"; among our modes (same FLOPs): {ours[0]['method']} ({ours[0]['latent_rel_l2']:.3e})"
        hyca = next((i for i, r in enumerate(ours) if r["method"] == "hyca"), None)
        if hyca is not None:
            line += f"; hyca ranks {hyca + 1}/{len(ours)} of our modes"
        lines.append(line)
    return lines


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(argv)
    result = run_benchmark(args)
    print(format_report(result))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2, allow_nan=False) + "\n")
    log(f"wrote {args.json} ({result['wall_s']:.0f} s)")
    return result


if __name__ == "__main__":
    main()

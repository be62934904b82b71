"""The command line: flags, and the defaults that differ between a GPU run and a --scaled-down CPU run, and between
the model families (--family)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import torch

from benchmarks.lib import ROOT
from benchmarks.lib.gpu_speed.device import GIB
from benchmarks.lib.gpu_speed.model import CONFIGURATIONS, HUNYUANVIDEO, HUNYUANVIDEO15

DEFAULT_INTERVALS = {"fora": 5, "taylorseer": 5, "foca": 5, "hyca": 6}  # the HyCa paper's Table 3 settings
DEFAULT_JSON = ROOT / "benchmarks" / "results" / "gpu_speed.json"
DEFAULT_MD = ROOT / "benchmarks" / "RESULTS.md"
#: Per family: the real sizes (HunyuanVideo's 544p/720p at 129 frames; HunyuanVideo 1.5's 480p/720p at 121, the
#: model card's) and the Qwen/Llama text length its pipeline pads to; --scaled-down uses the same small ones for both.
DEFAULT_SIZES = {
    HUNYUANVIDEO: [(544, 960, 129), (720, 1280, 129)],
    HUNYUANVIDEO15: [(480, 848, 121), (720, 1280, 121)],
}
DEFAULT_TEXT_TOKENS = {HUNYUANVIDEO: 256, HUNYUANVIDEO15: 1000}


def parse_size(text: str) -> tuple[int, int, int]:
    try:
        h, w, f = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size {text!r} must be HEIGHTxWIDTHxFRAMES, e.g. 544x960x129") from None
    if h % 16 or w % 16 or h <= 0 or w <= 0 or f < 1 or (f - 1) % 4:
        raise argparse.ArgumentTypeError(f"size {text!r}: height and width multiples of 16, frames 4k+1")
    return h, w, f


def parse_args(argv: Sequence[str] | None, description: str) -> argparse.Namespace:
    """The flags, with the defaults filled in; ``description`` is the script's (its docstring's first line)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--family",
        choices=list(CONFIGURATIONS),
        default=HUNYUANVIDEO,
        help="model family: hunyuanvideo (HunyuanVideo, 12.8 B, embedded guidance) or hunyuanvideo15 (HunyuanVideo "
        "1.5, 8.3 B, classifier-free guidance: two transformer passes per step); default hunyuanvideo",
    )
    parser.add_argument(
        "--scaled-down",
        action="store_true",
        help="CPU smoke run: the family's tiny config (tiny, tiny15), small sizes, float32, the whole loop for real",
    )
    parser.add_argument(
        "--sizes",
        type=parse_size,
        nargs="+",
        default=None,
        help="HxWxF (default 544x960x129 720x1280x129; hunyuanvideo15 480x848x121 720x1280x121; scaled-down "
        "64x64x9 96x96x17)",
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
    parser.add_argument(
        "--text-tokens",
        type=int,
        default=None,
        help="text sequence: Llama tokens, or hunyuanvideo15's Qwen tokens (default 256; hunyuanvideo15 1000, plus "
        "its 256 ByT5 and 729 image positions; scaled-down 16)",
    )
    parser.add_argument(
        "--text-valid",
        type=int,
        default=None,
        help="unmasked text (hunyuanvideo15: Qwen) tokens of the prompt (default 64; scaled-down 8)",
    )
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
        help=f"default {DEFAULT_JSON.relative_to(ROOT)} (scaled-down: benchmarks/results/gpu_speed_scaled_down.json; "
        "hunyuanvideo15: gpu_speed_hunyuanvideo15[_scaled_down].json beside it)",
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
    args.sizes = args.sizes or ([(64, 64, 9), (96, 96, 17)] if small else DEFAULT_SIZES[args.family])
    args.text_tokens = args.text_tokens or (16 if small else DEFAULT_TEXT_TOKENS[args.family])
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
        stem = DEFAULT_JSON.stem + ("" if args.family == HUNYUANVIDEO else f"_{args.family}")
        args.json = DEFAULT_JSON.with_name(stem + ("_scaled_down" if small else "") + DEFAULT_JSON.suffix)
    if args.results_md is None and not small:
        args.results_md = DEFAULT_MD
    if not 0 < args.text_valid <= args.text_tokens:
        parser.error("--text-valid must be in 1..--text-tokens")
    if "none" not in args.modes:
        args.modes = ["none", *args.modes]  # the baseline every speedup is against
    args.modes = list(dict.fromkeys(args.modes))
    return args

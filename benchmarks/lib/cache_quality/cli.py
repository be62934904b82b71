"""The command line: the evaluated prompts and the calibration prompts (never among them), the intervals, the
FirstBlockCache thresholds, cache-dit's calibrators and thresholds, the timing repeats, the plot, and --quick's
smoke-test defaults."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from benchmarks.lib import ROOT
from benchmarks.lib.cache_quality.peers import CACHE_DIT_CALIBRATORS, DEFAULT_CACHE_DIT_THRESHOLDS

DEFAULT_INTERVALS = (3, 4, 5, 6, 7, 8)
QUICK_INTERVALS = (3, 6)
# In the mini model's vocabulary (the default model): two held-out compositions and one training prompt.
DEFAULT_PROMPTS = (
    "a red circle moving left on a black background",
    "a purple triangle moving down on a white background",
    "a yellow square growing on a gray background",
)
#: hyca calibrates on these (each a fold of its held-out error); none is ever evaluated.
CALIBRATION_PROMPTS = (
    "a blue circle moving right on a gray background",
    "a green triangle moving up on a black background",
    "a cyan square shrinking on a white background",
)
QUICK_STEPS = 12
DEFAULT_FBC_THRESHOLDS = (0.05, 0.1, 0.2)
DEFAULT_HYCA_FRACTIONS = (0.625, 0.75)


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


def _calibrator_list(text: str) -> list[str]:
    values = [v.strip() for v in text.split(",") if v.strip()]
    unknown = [v for v in values if v not in CACHE_DIT_CALIBRATORS]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown cache-dit calibrator(s) {', '.join(unknown)}; known: {', '.join(CACHE_DIT_CALIBRATORS)}"
        )
    return list(dict.fromkeys(values))


def parse_args(argv: Sequence[str] | None, description: str) -> argparse.Namespace:
    """The flags, with --quick's and the other defaults filled in; ``description`` is the script's (its docstring's
    first line)."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--model",
        default="mini",
        help="preset, local diffusers directory or hub id (default mini, the trained miniature; tiny15: the tiny "
        "HunyuanVideo 1.5, random weights, classifier-free guidance)",
    )
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default on CPU: 1, whose timings stay steady on a shared machine; 0: torch's own)",
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help="denoising steps (default 24 for tiny, tiny15 and mini, else the model's)",
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
        "--calibration-prompts",
        action="append",
        default=None,
        help="hyca calibration prompts, never evaluated: repeat or give a comma list (default: 3 built-in prompts)",
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
        "--no-cache-dit",
        dest="cache_dit",
        action="store_false",
        help="skip cache-dit's DBCache (skipped anyway, with a warning, when cache-dit is not installed)",
    )
    parser.add_argument(
        "--cache-dit-calibrators",
        type=_calibrator_list,
        default=list(CACHE_DIT_CALIBRATORS),
        help=f"cache-dit calibrators, comma list of {','.join(CACHE_DIT_CALIBRATORS)} (default all; empty: none)",
    )
    parser.add_argument(
        "--cache-dit-thresholds",
        type=_float_list,
        default=list(DEFAULT_CACHE_DIT_THRESHOLDS),
        help="cache-dit dynamic residual_diff_threshold values, comma list; empty to skip (default 0.08,0.2)",
    )
    parser.add_argument(
        "--hyca-fractions",
        type=_float_list,
        default=list(DEFAULT_HYCA_FRACTIONS),
        help="hyca also at these fractions of the steps computed fully (--full-steps), to meet the dynamic caches "
        "where they compute most; comma list, empty to skip (default 0.625,0.75)",
    )
    parser.add_argument(
        "--json", type=Path, default=ROOT / "benchmarks" / "results" / "cache_quality.json", help="output JSON path"
    )
    parser.add_argument(
        "--plot",
        type=Path,
        default=None,
        help="output PNG: PSNR and latent error against block-compute fraction (default: the JSON path, .png)",
    )
    parser.add_argument("--no-plot", action="store_true", help="write no plot")
    parser.add_argument(
        "--quick", action="store_true", help="smoke test: intervals 3,6, one prompt, 12 steps, 1 repeat"
    )
    args = parser.parse_args(argv)

    def prompt_list(given: list[str] | None, default: Sequence[str], flag: str) -> list[str]:
        """Repeated options and comma lists, stripped, duplicates dropped (they would only weigh a prompt twice)."""
        prompts = [p.strip() for item in given for p in item.split(",") if p.strip()] if given else list(default)
        if not prompts:
            parser.error(f"{flag} gave no non-empty prompt")
        return list(dict.fromkeys(prompts))

    prompts = prompt_list(args.prompts, DEFAULT_PROMPTS, "--prompts")
    if args.quick:
        prompts = prompts[:1]
        args.intervals = args.intervals or list(QUICK_INTERVALS)
        args.steps = args.steps or QUICK_STEPS
        args.repeats = args.repeats or 1
    if args.plot is None and not args.no_plot:
        args.plot = args.json.with_suffix(".png")
    if args.no_plot:
        args.plot = None
    args.prompts = prompts
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
    args.calibration_prompts = prompt_list(args.calibration_prompts, CALIBRATION_PROMPTS, "--calibration-prompts")
    shared = [p for p in args.calibration_prompts if p in args.prompts]
    if shared:
        parser.error(f"calibration prompt {shared[0]!r} is also an evaluated prompt; choose another")
    return args

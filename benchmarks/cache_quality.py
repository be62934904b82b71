"""Cache quality vs. speed: every cache mode at every interval N against the uncached video, in one run.

    .venv/bin/python benchmarks/cache_quality.py [--model mini] [--intervals 3,4,5,6,7,8] [--quick] [--no-cache-dit]
    .venv/bin/python benchmarks/cache_quality.py --model tiny15 [...]   # HunyuanVideo 1.5 (tiny, random weights)

For each prompt the uncached reference (mode ``none``) is generated first; then, for each N and each
method, the same prompts (same seeds) are generated with the cache and compared with the reference:

- ours (hyca_batch's FeatureCache, a full pass every N steps, no warmup): ``fora``, ``taylorseer-o1``,
  ``taylorseer-o2``, ``foca``, ``hyca`` (one solver map per N, calibrated on a separate prompt that is
  not evaluated);
- diffusers' own caches as outside reference points: ``diffusers-taylorseer-o1/o2``
  (``TaylorSeerCacheConfig(cache_interval=N, disable_cache_before_step=1)``: the closest to our schedule
  it allows, one more full pass than ours; it forecasts only the attention modules, the MLPs still run
  every step) and ``diffusers-fbc-<threshold>`` (``FirstBlockCacheConfig``: adaptive, no N, listed once);
- cache-dit's DBCache (optional: ``pip install -e '.[bench]'``; skipped with a warning when it is not installed,
  or with ``--no-cache-dit``), one context over all blocks, ``Fn=1, Bn=0`` (with 3 blocks: the fewest computed
  blocks it takes, and no back block, which would leave one to cache; ``benchmarks/lib/cache_quality/peers.py``
  says why): ``cache-dit-<calibrator>`` at each N runs our schedule as its static steps mask, and
  ``cache-dit-<calibrator>-r<x>`` decides by ``residual_diff_threshold`` x (no N), with calibrator ``dbcache``
  (none: reuse), ``taylorseer`` (order 1), ``foca`` or ``dmd``.

Columns: ``full`` is the number of transformer passes that really computed (ours: the cache's count;
diffusers TaylorSeer: passes where the first block's attention ran; FirstBlockCache and cache-dit: passes
where the last block ran), ``blocks`` the block-compute fraction: the attention and MLP sub-computations of
every block (forward calls of ``attn.to_q`` and ``ff``, or ``proj_mlp`` in single-stream blocks, which run only
when that part of the block really computes) over the uncached run's (ours: full passes / steps; diffusers'
TaylorSeer runs every MLP; DBCache its first block at every step), ``FLOPs x`` the theoretical speedup
total passes / full passes (our modes only: their forecast passes run no block), ``meas FLOPs x``
transformer FLOPs uncached / cached as counted by ``torch.utils.flop_counter`` (matmuls, convolutions and
attention; embedders and the text refiner run at every step, so it is below ``FLOPs x``), ``speedup``
uncached / cached denoise-loop time, then PSNR and SSIM of the decoded frames and the relative L2 of the
final latents against the uncached ones. All are means over the prompts.

Timing: every (method, prompt) gets one untimed run (fidelity, FLOPs), then ``--repeats`` pairs of timed
runs, uncached then cached, and a few more pairs while a side's two best times disagree; each side keeps
its best time. Pairing keeps the ratio honest on a machine whose load changes during the benchmark.

Model families: which blocks a model has, in which order and of which kind (dual-stream, single-stream), comes
from its family's adapter (``hyca_batch.models.adapters``), for the counters above and for cache-dit's block list.
HunyuanVideo 1.5 (``--model tiny15``, or a 1.5 checkpoint) runs real classifier-free guidance: two transformer
passes per step (conditional, unconditional), each with its own cache history; ``passes_per_step`` (JSON, and a
line above the table) is what the uncached reference's cache counted, and ``full``, ``blocks``, FLOPs and the
expected schedules of diffusers' TaylorSeer and cache-dit count both passes. On 1.5: diffusers' TaylorSeer hooks
``transformer_blocks.*.attn`` as on 1.0 and runs (its state is per cache context, so per pass); diffusers'
FirstBlockCache needs every block's class in diffusers' ``TransformerBlockRegistry``, where diffusers 0.42.1 has no
``HunyuanVideo15TransformerBlock``, so it cannot be enabled; cache-dit runs, one context over the dual-stream
blocks with ``enable_separate_cfg`` (as its own HunyuanVideo 1.5 adapter). Each peer is enabled and disabled once
before the runs: one that cannot be, or that fails while running, is not run and says so (``NOT RUN ...`` on stderr
and under the table, ``not_run`` in the JSON, with the error); nothing is dropped silently. tiny15 has random
weights: its numbers show that the path runs, not how good a cache is.

Our FeatureCache and a diffusers or cache-dit cache are never active together: theirs run with our cache
installed in mode ``none`` (it only counts and times transformer calls) and are disabled before one of
our modes is installed; disabling cache-dit must leave the pipeline and transformer exactly as they were.
Repeated cached runs must give identical latents (and block counts), and every uncached run the
reference's, which checks that no cache state leaks from one video into the next.
Progress goes to stderr; the table to stdout; the JSON to ``--json``; the figure (PSNR and latent error
against the block-compute fraction, one line per method) to ``--plot`` (default: the JSON's path, ``.png``).

The parts live in ``benchmarks/lib/cache_quality/`` (its ``__init__`` lists them); this script is their entry point.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from a checkout, package not installed
    sys.path.insert(0, str(ROOT))

from benchmarks.lib.cache_quality.benchmark import run_benchmark  # noqa: E402
from benchmarks.lib.cache_quality.cli import parse_args  # noqa: E402
from benchmarks.lib.cache_quality.plot import write_plot  # noqa: E402
from benchmarks.lib.cache_quality.report import format_report, log  # noqa: E402


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(argv, description=__doc__.splitlines()[0])
    result = run_benchmark(args)
    print(format_report(result))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2, allow_nan=False) + "\n")
    log(f"wrote {args.json} ({result['wall_s']:.0f} s)")
    if args.plot is not None:
        log(f"wrote {write_plot(result, args.plot)}")
    return result


if __name__ == "__main__":
    main()

"""Real-size speed of HunyuanVideo's transformer with HyCa / TaylorSeer caching, and of the VAE decode, on a GPU.

    python benchmarks/gpu_speed.py [--family hunyuanvideo|hunyuanvideo15] [--sizes 544x960x129 720x1280x129]
        [--modes none taylorseer hyca] [--steps 50] [--loop real|prefix] [--sp 1 2 4 8] [--max-memory-gb G]
        [--time-budget-s S] [--json benchmarks/results/gpu_speed.json] [--results-md benchmarks/RESULTS.md]
    python benchmarks/gpu_speed.py --scaled-down      # the same code path on CPU with the tiny config, seconds
    python benchmarks/gpu_speed.py --family hunyuanvideo15 [--scaled-down]   # HunyuanVideo 1.5 (tiny15 scaled down)

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

``--family hunyuanvideo15``: HunyuanVideo 1.5 instead, the same measurements on diffusers'
HunyuanVideo15Transformer3DModel in its real configuration (8.3 B parameters: 54 dual-stream blocks, the 480p
text-to-video checkpoint's config, ``hyca_batch.models.hunyuanvideo15``) and AutoencoderKLHunyuanVideo15 (16x
spatial, 4x temporal compression), random weights, through the family adapter's denoising loop
(``hyca_batch.models.adapters``: HunyuanVideo15Pipeline, shift 5, classifier-free guidance 6.0); ``--scaled-down``
builds the ``tiny15`` configuration instead (CPU, seconds). Its inputs are what its pipeline would encode: Qwen2.5-VL
embeddings padded to ``--text-tokens`` (default 1000, the pipeline's) of which ``--text-valid`` are unmasked, ByT5
embeddings padded to 256 (zeros, all masked: a prompt without quoted text), and the same for the empty negative
prompt (6 unmasked Qwen tokens); the pipeline adds 729 image positions (zeros, masked: text-to-video), so every block
sees 1985 text positions. Default sizes 480x848x121 and 720x1280x121 (the model card's). Real classifier-free
guidance runs two transformer passes per step (the cache contexts ``pred_cond`` and ``pred_uncond``, each with its
own cache history): pass counts, the predicted and held cache history (one per context), the derived loop and the
time budget use the passes the cache counted per step, and a forecast's history depth counts its own context's full
passes. HyCa is calibrated on the conditional pass. The report says which family (title, JSON ``family``); the
default JSON is ``gpu_speed_hunyuanvideo15[_scaled_down].json``. The pipeline takes no step callback, so a derived
loop's early stop is a transformer pre-hook that raises the pipeline's interrupt during the last wanted step.

The parts live in ``benchmarks/lib/gpu_speed/`` (its ``__init__`` lists them); this script is their entry point.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run from a bare checkout (the GPU machine) without installing the package
    sys.path.insert(0, str(ROOT))

from benchmarks.lib.gpu_speed.benchmark import run_benchmark  # noqa: E402
from benchmarks.lib.gpu_speed.cli import parse_args  # noqa: E402
from benchmarks.lib.gpu_speed.model import (  # noqa: E402
    REAL_TRANSFORMER,
    REAL_TRANSFORMER_15,
    meta_transformer,
    parameter_count,
)
from benchmarks.lib.gpu_speed.report import append_markdown, markdown  # noqa: E402
from benchmarks.lib.gpu_speed.schedule import depths, prefix_steps, schedule, video_tokens  # noqa: E402

# tests/test_gpu_speed.py loads this script by path and uses these of its parts through it.
__all__ = [
    "REAL_TRANSFORMER",
    "REAL_TRANSFORMER_15",
    "depths",
    "main",
    "meta_transformer",
    "parameter_count",
    "prefix_steps",
    "schedule",
    "video_tokens",
]


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(argv, description=__doc__.splitlines()[0])
    result = run_benchmark(args)
    table = markdown(result)
    print("\n" + table)
    if args.results_md:
        append_markdown(args.results_md, table)
        print(f"appended to {args.results_md}")
    print(f"wrote {args.json}")
    return result


if __name__ == "__main__":
    main()

"""The parts of ``benchmarks/cache_quality.py`` (its docstring says what it compares and how).

- ``cli``: the command line and its defaults (prompts, intervals, FirstBlockCache thresholds, --quick).
- ``methods``: the compared methods (our cache modes, diffusers' TaylorSeer and FirstBlockCache, cache-dit's DBCache
  per calibrator) and their order.
- ``peers``: cache-dit (optional), how it is configured (per family: block list, separate CFG), enabled and removed
  without a trace.
- ``measure``: one loaded model with at most one cache active, its runs, paired timings, pass, block-compute and
  FLOP counts.
- ``benchmark``: calibration, the uncached references (and passes per step), which peers run on the model, every
  method on every prompt, the summary rows.
- ``report``: progress on stderr and the text table on stdout.
- ``plot``: the figure, PSNR and latent error against the block-compute fraction.
"""

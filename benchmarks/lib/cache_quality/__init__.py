"""The parts of ``benchmarks/cache_quality.py`` (its docstring says what it compares and how).

- ``cli``: the command line and its defaults (prompts, intervals, FirstBlockCache thresholds, --quick).
- ``methods``: the compared methods (our cache modes, diffusers' TaylorSeer and FirstBlockCache) and their order.
- ``measure``: one loaded model with at most one cache active, its runs, paired timings, pass and FLOP counts.
- ``benchmark``: calibration, the uncached references, every method on every prompt, the summary rows.
- ``report``: progress on stderr and the text table on stdout.
"""

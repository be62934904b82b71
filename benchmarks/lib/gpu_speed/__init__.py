"""The parts of ``benchmarks/gpu_speed.py`` (its docstring says what it measures and how), in the order a run uses them.

- ``cli``: the command line and its defaults (sizes, modes, loop, memory cap, time budget, outputs).
- ``model``: the random-weight transformer and VAE of a family (HunyuanVideo: real or ``tiny``; HunyuanVideo 1.5:
  real or ``tiny15``), its text inputs, and its denoising loop (the 1.5 one through the family adapter).
- ``schedule``: a size's name and video tokens, the cache's full/skipped steps, the prefix a derived loop runs.
- ``device``: synchronization, peak and held memory, the memory cap (real on CUDA, simulated on a CPU).
- ``environment``: versions, the device, flash-attn, and which SDPA kernel the blocks' attention really ran.
- ``calibration``: the HyCa solver map from the project's calibration, at a reduced probe size.
- ``measure``: one (size, mode, granularity) configuration's loop and its per-pass measurements; the VAE decode.
- ``sp``: the same measurement on the package's sequence-parallel rank group (``SpeedRank``).
- ``report``: the markdown table (appended to RESULTS.md) and the JSON.
- ``benchmark``: the run over every size and mode, the stack fallback, the VAE, the sp degrees, into one result.
"""

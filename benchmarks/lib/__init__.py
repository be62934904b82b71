"""What the benchmark scripts in ``benchmarks/`` are made of, one module per job, so that each script reads as
its steps: ``gpu_speed/`` (``benchmarks/gpu_speed.py``: real-size transformer and VAE speed and memory per cache
mode, on a GPU), ``cache_quality/`` (``benchmarks/cache_quality.py``: every cache mode at every N against the
uncached video), and ``tables`` (the mean and the number format both of them fill their rows and tables with).

Not part of the installed package: a script puts the repository root on ``sys.path`` and imports these as
``benchmarks.lib...``, so that it runs from a bare checkout (the GPU machine) without installing anything.
``ROOT`` is that repository root, under which the scripts' default outputs lie.
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

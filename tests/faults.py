"""Fault injection in rank processes, for the fault tests: named by ``HYCA_RANK_HOOK`` (``RANK_HOOK`` below), which
every rank calls once its worker is built (``hyca_batch.runtime.ranks``).

``HYCA_SP_FAULT=RANK:PASS:ARMFILE`` makes rank RANK kill itself (SIGKILL, as the OOM killer would) at its PASS-th
transformer pass of a call (a video), once, if ARMFILE exists: the test arms it by creating the file.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

RANK_HOOK = f"{Path(__file__).resolve()}:kill_rank_mid_video"


def fault_env(arm_file: Path, rank: int = 1, at_pass: int = 3) -> dict[str, str]:
    """The environment that arms ``kill_rank_mid_video`` in the rank processes started under it."""
    return {"HYCA_RANK_HOOK": RANK_HOOK, "HYCA_SP_FAULT": f"{rank}:{at_pass}:{arm_file}"}


def kill_rank_mid_video(worker, rank: int) -> None:
    target, at, arm_file = os.environ["HYCA_SP_FAULT"].split(":", 2)
    if int(target) != rank:
        return
    passes = [0]

    def maybe_die(module, args) -> None:
        passes[0] += 1
        if passes[0] == int(at) and os.path.exists(arm_file):
            os.remove(arm_file)
            os.kill(os.getpid(), signal.SIGKILL)

    worker.model.pipeline.transformer.register_forward_pre_hook(maybe_die)
    for name in ("generate", "calibrate"):  # passes are counted per call
        method = getattr(worker, name)

        def counted(*args, _method=method, **kwargs):
            passes[0] = 0
            return _method(*args, **kwargs)

        setattr(worker, name, counted)

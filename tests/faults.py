"""Fault injection for the fault tests: in rank processes, named by ``HYCA_RANK_HOOK`` (``RANK_HOOK`` below), which
every rank calls once its worker is built (``hyca_batch.runtime.ranks``); in replica processes, named by
``HYCA_REPLICA_HOOK`` (``replica_fault``), which every replica calls before each video.

``HYCA_SP_FAULT=RANK:PASS:ARMFILE`` makes rank RANK kill itself (SIGKILL, as the OOM killer would) at its PASS-th
transformer pass of a call (a video), once, if ARMFILE exists: the test arms it by creating the file.
"""

from __future__ import annotations

import os
import signal
import time
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


REPLICA_HOOK = f"{Path(__file__).resolve()}:replica_fault"


def replica_fault_env(directory: Path) -> dict[str, str]:
    """The environment (set in the driver: the job passes ``HYCA_*`` on to its replicas) that arms
    ``replica_fault`` with its marker files in ``directory``."""
    return {"HYCA_REPLICA_HOOK": REPLICA_HOOK, "HYCA_REPLICA_FAULTS": str(directory)}


def replica_fault(replica, request) -> None:
    """Faults by prompt, called by each replica before each video (``hyca_batch.runtime.replica``):

    - "POISON": the replica process kills itself (SIGKILL, as the OOM killer would);
    - "HANG": the video never finishes (an hour's sleep, outside any collective);
    - "FAIL": an ordinary error, while DIR/fail exists;
    - while DIR/broken-device exists, the first replica process to claim it raises a CUDA error for every video
      it is given; every other process (the others, and the claimant's replacement) is sound.
    """
    directory = Path(os.environ["HYCA_REPLICA_FAULTS"])
    if "POISON" in request.prompt:
        os.kill(os.getpid(), signal.SIGKILL)
    if "HANG" in request.prompt:
        time.sleep(3600)
    if "FAIL" in request.prompt and (directory / "fail").exists():
        raise RuntimeError("injected failure")
    if (directory / "broken-device").exists():
        claim = directory / "broken-pid"
        try:
            fd = os.open(claim, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            os.write(fd, str(os.getpid()).encode())
            os.close(fd)
        except FileExistsError:
            pass
        if claim.read_text() == str(os.getpid()):
            raise RuntimeError("CUDA error: an illegal memory access was encountered")

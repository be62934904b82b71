"""The ranks of one sequence-parallel replica: N child processes that run every request together.

Why processes started by the replica, and not one Ray actor per rank in a placement group: a replica is
one Ray actor that reserves all N devices (``num_gpus=N``; on CPU, N fake GPUs), so Ray schedules it
like any other replica, Ray Data's actor pool and its retries work unchanged, and the N ranks always
sit on one node (USP's all-to-all wants NVLink, never the network). Within it, the ranks are plain
child processes: a failed NCCL communicator or a dead peer can leave a process's CUDA and
torch.distributed state unusable, and killing processes is the one reset that always works. The
replica process itself never joins the group; it sends each request to every rank, takes rank 0's
frames, and writes the outputs.

Failure: a rank that exits, or reports an error, fails the video; the group is killed and started
again on the next request, and the job's retry runs the video again. Collectives have the group's
timeout, so a hung rank ends as an error, not a hang. A child also exits when the replica does.
"""

from __future__ import annotations

import logging
import os
import pickle
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any, Sequence

from hyca_batch.hyca import FeatureCacheConfig, SolverMap
from hyca_batch.manifest import Request
from hyca_batch.models import ModelSpec
from hyca_batch.parallel.config import ParallelConfig

log = logging.getLogger(__name__)


class RankFailure(RuntimeError):
    """A rank died or failed; the group was torn down and the next request starts a new one."""


@dataclass
class RankSetup:
    model: ModelSpec
    parallel: ParallelConfig
    cache: FeatureCacheConfig | None = None  # None: no generator (a calibration-only group)
    solver_map: SolverMap | None = None
    device: str | None = None  # None: cuda:<rank> when CUDA is available, else cpu
    threads: int = 1  # torch threads per rank (CPU)
    trace: bool = False  # count and time communication per transformer pass (trace.py)


class RankGroup:
    """Start with ``start()`` (or use as a context manager); every call runs on all ranks at once."""

    def __init__(self, setup: RankSetup, start_timeout_s: float = 1800.0):
        self.setup = setup
        self.start_timeout_s = start_timeout_s
        self.procs: list[subprocess.Popen] = []
        self.conns: list[Connection] = []
        self.info: dict[str, Any] = {}  # rank 0's report: device, attention kernel, degrees
        self.traces: list[dict] = []  # per rank, of the last call, when setup.trace

    @property
    def running(self) -> bool:
        return bool(self.procs)

    def __enter__(self) -> "RankGroup":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def start(self) -> None:
        if self.running:
            return
        world = self.setup.parallel.sp
        init_method = f"tcp://127.0.0.1:{_free_port()}"
        for rank in range(world):
            parent, child = socket.socketpair()
            proc = subprocess.Popen(
                [sys.executable, "-c", "from hyca_batch.parallel.ranks import main; main()", str(child.fileno())],
                pass_fds=(child.fileno(),),
            )
            child.close()
            conn = Connection(parent.detach())
            _send(conn, (self.setup, rank, init_method))
            self.procs.append(proc)
            self.conns.append(conn)
        self.info = self._collect("start", deadline=time.monotonic() + self.start_timeout_s)[0]
        log.info("sequence parallel group of %d ranks ready: %s", world, self.info)

    def generate(self, request: Request, uncached: bool = False):
        """Rank 0's GenerationResult for ``request``, run on every rank."""
        return self.call("generate", request, uncached)

    def calibrate(self, requests: Sequence[Request], config) -> SolverMap:
        return self.call("calibrate", list(requests), config)

    def call(self, command: str, *args) -> Any:
        self.start()
        try:
            for conn in self.conns:
                _send(conn, (command, args))
        except OSError as exc:
            self.kill()
            raise RankFailure(f"the sequence-parallel group is gone ({exc}); it restarts on the next video") from exc
        return self._collect(command)[0]

    def _collect(self, what: str, deadline: float | None = None) -> list[Any]:
        """Every rank's reply; the first death or error tears the group down and raises RankFailure."""
        replies: dict[int, Any] = {}
        traces: dict[int, dict] = {}
        pending = dict(enumerate(self.conns))
        while pending:
            ready = wait(list(pending.values()), timeout=1.0)
            for rank, conn in list(pending.items()):
                if conn not in ready:
                    continue
                try:
                    status, value, trace = _recv(conn)
                except (EOFError, OSError):
                    status, value, trace = "error", f"rank {rank} exited ({self._exit_code(rank)})", None
                if status != "ok":
                    self.kill()
                    log.error("sequence-parallel rank %d failed during %s:\n%s", rank, what, value)
                    lines = [line for line in str(value).splitlines() if line.strip()]
                    raise RankFailure(f"sequence-parallel rank {rank} failed during {what}: {lines[-1] if lines else value}")
                replies[rank], traces[rank] = value, trace
                del pending[rank]
            for rank in pending:
                code = self.procs[rank].poll()
                if code is not None:
                    self.kill()
                    raise RankFailure(f"sequence-parallel rank {rank} exited with code {code} during {what}")
            if deadline is not None and time.monotonic() > deadline:
                self.kill()
                raise RankFailure(f"sequence-parallel ranks {sorted(pending)} did not finish {what} in time")
        self.traces = [traces[r] for r in sorted(traces)]
        return [replies[r] for r in sorted(replies)]

    def _exit_code(self, rank: int) -> str:
        try:
            code = self.procs[rank].wait(timeout=5)
        except subprocess.TimeoutExpired:
            return "connection lost"
        return f"exit code {code}"

    def kill(self) -> None:
        """Tear down at once: every rank is killed; the next call starts a new group."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
        for proc in self.procs:
            proc.wait()
        for conn in self.conns:
            conn.close()
        self.procs, self.conns = [], []

    def close(self) -> None:
        for conn in self.conns:
            try:
                _send(conn, ("stop", ()))
            except OSError:
                pass
        deadline = time.monotonic() + 30
        for proc in self.procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        self.kill()


# Plain pickle, not multiprocessing's: once torch is imported, that one sends tensors as shared-memory
# handles, which a socket between unrelated processes cannot carry.
def _send(conn: Connection, obj: Any) -> None:
    conn.send_bytes(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))


def _recv(conn: Connection) -> Any:
    return pickle.loads(conn.recv_bytes())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- the rank process --------------------------------------------------------------------------------


def _exit_with_parent() -> None:
    """A rank must not outlive its replica (an orphan would hold its GPU)."""
    parent = os.getppid()

    def watch() -> None:
        while True:
            if os.getppid() != parent:
                os._exit(1)
            time.sleep(1.0)

    threading.Thread(target=watch, daemon=True).start()


class _Rank:
    def __init__(self, setup: RankSetup, rank: int, init_method: str):
        import torch

        from hyca_batch.generate import VideoGenerator
        from hyca_batch.models import load_model
        from hyca_batch.parallel.groups import init_groups
        from hyca_batch.parallel.shard import apply_sequence_parallel

        torch.set_num_threads(max(1, setup.threads))
        self.setup, self.rank = setup, rank
        if setup.device in (None, "cuda") and torch.cuda.is_available():
            device = torch.device("cuda", rank)
            torch.cuda.set_device(device)
        else:
            device = torch.device(setup.device or "cpu")
        self.model = load_model(setup.model, device=device)
        transformer = self.model.pipeline.transformer
        self.groups = init_groups(setup.parallel, transformer.config.num_attention_heads, rank, init_method, device)
        self.sp = apply_sequence_parallel(transformer, self.groups, setup.parallel, device)
        self.generator = None
        self.tracer = None
        if setup.cache is not None:
            self.generator = VideoGenerator(self.model, setup.cache, setup.solver_map, parallel=self.sp)
            if setup.trace:
                from hyca_batch.parallel.trace import trace_communication

                self.tracer = trace_communication(transformer, self.generator.cache)

        self.fault_passes = _arm_fault(transformer, rank)

    def report(self) -> dict[str, Any]:
        return {
            "device": str(self.model.device),
            "device_type": self.model.device.type,
            "device_name": self.model.device_name,
            "model": self.model.spec.name,
            "ulysses": self.groups.ulysses,
            "ring": self.groups.ring,
            "attention": self.sp.attention_kernel,
        }

    def generate(self, request: Request, uncached: bool):
        from contextlib import nullcontext

        from hyca_batch.parallel.trace import CommTrace

        if self.generator is None:
            raise RuntimeError("this group was started without a cache configuration: it only calibrates")
        if self.tracer is not None:
            self.tracer.trace = CommTrace()
        with self.generator.uncached() if uncached else nullcontext():
            result = self.generator(request)
        return result if self.rank == 0 else None

    def calibrate(self, requests: list[Request], config) -> SolverMap | None:
        from hyca_batch.hyca.probe import calibrate_model

        if self.generator is not None:
            raise RuntimeError("calibration runs in a group of its own, started without a cache configuration")
        smap = calibrate_model(self.model, requests, config, parallel=self.sp)
        return smap if self.rank == 0 else None


def _arm_fault(transformer, rank: int) -> list[int] | None:
    """Fault injection for the fault tests: ``HYCA_SP_FAULT=RANK:PASS:ARMFILE`` makes rank RANK kill itself
    (SIGKILL, as the OOM killer would) at its PASS-th transformer pass of a video, once, if ARMFILE exists."""
    spec = os.environ.get("HYCA_SP_FAULT")
    if not spec:
        return None
    target, at, arm_file = spec.split(":", 2)
    if int(target) != rank:
        return None
    passes = [0]  # counted per call (video)

    def maybe_die(module, args) -> None:
        passes[0] += 1
        if passes[0] == int(at) and os.path.exists(arm_file):
            os.remove(arm_file)
            os.kill(os.getpid(), signal.SIGKILL)

    transformer.register_forward_pre_hook(maybe_die)
    return passes


def _serve(conn: Connection) -> None:
    setup, rank, init_method = _recv(conn)
    try:
        worker = _Rank(setup, rank, init_method)
        _send(conn, ("ok", worker.report(), None))
    except Exception:
        _send(conn, ("error", traceback.format_exc(), None))
        return
    while True:
        try:
            command, args = _recv(conn)
        except EOFError:
            return
        if command == "stop":
            return
        try:
            if worker.fault_passes is not None:
                worker.fault_passes[0] = 0
            value = getattr(worker, command)(*args)
            trace = worker.tracer.trace.summary() if worker.tracer is not None else None
            _send(conn, ("ok", value, trace))
        except Exception:
            # The group's collectives may be out of step now: the replica tears the group down.
            _send(conn, ("error", traceback.format_exc(), None))


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format=f"[rank %(process)d] %(levelname)s %(name)s: %(message)s")
    _exit_with_parent()
    _serve(Connection(int(sys.argv[1])))


if __name__ == "__main__":
    main()

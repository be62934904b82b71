"""A group of rank processes that run every call together: the process side of sequence parallelism.

Generic over what each rank builds: ``RankGroup(worker, setup, world)`` starts ``world`` child processes,
each of which builds ``worker(setup, rank, world, init_method)`` (a class, named by its import path) and then
runs the group's calls on it, all ranks with the same arguments. The video ranks (``workers.VideoRank``) and
the real-size benchmark's ranks are two such workers.

Why processes started by the replica, and not one Ray actor per rank in a placement group: a replica is
one Ray actor that reserves all N devices (``num_gpus=N``; on CPU, N stand-in GPUs), so Ray schedules it
like any other replica and the N ranks always sit on one node (USP's all-to-all wants NVLink, never the
network). Within it, the ranks are plain child processes: a failed NCCL communicator or a dead peer can
leave a process's CUDA and torch.distributed state unusable, and killing processes is the one reset that
always works. The parent never joins the group; it sends each call to every rank and takes the replies.

Failure: a rank that exits, or reports an error, fails the call; the group is killed and started again on
the next call. A rank's collectives have the group's timeout, so a hung rank ends as an error, not a hang.
A child also exits when its parent does.

``HYCA_RANK_HOOK=module:function`` (or ``/path/file.py:function``) is called in every rank as
``function(worker, rank)`` once the worker is built: instrumentation from outside the package (the fault
tests kill a rank mid-video with it).
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import pickle
import socket
import subprocess
import sys
import threading
import time
import traceback
from multiprocessing.connection import Connection, wait
from typing import Any

log = logging.getLogger(__name__)

RANK_HOOK_ENV = "HYCA_RANK_HOOK"


class RankFailure(RuntimeError):
    """A rank died or failed; the group was torn down and the next call starts a new one."""


def object_ref(obj: Any) -> str:
    """``module:qualname`` for a class or function, or ``/path/file.py:qualname`` for one whose module cannot be
    imported by its name (a script run as ``__main__``, a file loaded by path)."""
    module = obj.__module__
    if module == "__main__" or importlib.util.find_spec(module) is None:
        module = os.path.abspath(sys.modules[obj.__module__].__file__)
    return f"{module}:{obj.__qualname__}"


def load_object(ref: str) -> Any:
    """The object an ``object_ref`` names; a script is loaded as a module of its own (its main guard stays shut)."""
    module_name, _, qualname = ref.rpartition(":")
    if module_name.endswith(".py"):
        name = "_hyca_rank_" + os.path.splitext(os.path.basename(module_name))[0]
        module = sys.modules.get(name)
        if module is None:
            spec = importlib.util.spec_from_file_location(name, module_name)
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            spec.loader.exec_module(module)
    else:
        module = importlib.import_module(module_name)
    obj = module
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


class RankGroup:
    """``world`` ranks of ``worker``; start with ``start()`` (or use as a context manager)."""

    def __init__(self, worker: type | str, setup: Any, world: int, start_timeout_s: float = 1800.0):
        self.worker = worker if isinstance(worker, str) else object_ref(worker)
        self.setup, self.world = setup, world
        self.start_timeout_s = start_timeout_s
        self.procs: list[subprocess.Popen] = []
        self.conns: list[Connection] = []
        self.info: dict[str, Any] = {}  # rank 0's report() from the last start

    @property
    def running(self) -> bool:
        return bool(self.procs)

    def __enter__(self) -> RankGroup:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        if self.running:
            return
        init_method = f"tcp://127.0.0.1:{free_port()}"
        for rank in range(self.world):
            parent, child = socket.socketpair()
            proc = subprocess.Popen(
                [sys.executable, "-c", "from hyca_batch.runtime.ranks import main; main()", str(child.fileno())],
                pass_fds=(child.fileno(),),
            )
            child.close()
            conn = Connection(parent.detach())
            # The parent's sys.path goes first (as multiprocessing's spawn does): what imports here imports there.
            _send(conn, sys.path)
            _send(conn, (self.worker, self.setup, rank, self.world, init_method))
            self.procs.append(proc)
            self.conns.append(conn)
        self.info = self._collect("start", deadline=time.monotonic() + self.start_timeout_s)[0]
        log.info("group of %d ranks ready: %s", self.world, self.info)

    def call(self, command: str, *args: Any) -> Any:
        """Run ``command`` on every rank; rank 0's reply."""
        return self.call_all(command, *args)[0]

    def call_all(self, command: str, *args: Any) -> list[Any]:
        """Run ``command`` on every rank; every rank's reply, in rank order."""
        self.start()
        try:
            for conn in self.conns:
                _send(conn, (command, args))
        except OSError as exc:
            self.kill()
            raise RankFailure(f"the rank group is gone ({exc}); it restarts on the next call") from exc
        return self._collect(command)

    def _collect(self, what: str, deadline: float | None = None) -> list[Any]:
        """Every rank's reply; the first death or error tears the group down and raises RankFailure."""
        replies: dict[int, Any] = {}
        pending = dict(enumerate(self.conns))
        while pending:
            ready = wait(list(pending.values()), timeout=1.0)
            for rank, conn in list(pending.items()):
                if conn not in ready:
                    continue
                try:
                    status, value = _recv(conn)
                except (EOFError, OSError):
                    status, value = "error", f"rank {rank} exited ({self._exit_code(rank)})"
                if status != "ok":
                    self.kill()
                    log.error("rank %d failed during %s:\n%s", rank, what, value)
                    lines = [line for line in str(value).splitlines() if line.strip()]
                    raise RankFailure(
                        f"sequence-parallel rank {rank} failed during {what}: {lines[-1] if lines else value}"
                    )
                replies[rank] = value
                del pending[rank]
            for rank in pending:
                code = self.procs[rank].poll()
                if code is not None:
                    self.kill()
                    raise RankFailure(f"sequence-parallel rank {rank} exited with code {code} during {what}")
            if deadline is not None and time.monotonic() > deadline:
                self.kill()
                raise RankFailure(f"sequence-parallel ranks {sorted(pending)} did not finish {what} in time")
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


def free_port() -> int:
    """A TCP port free on this host now, for a group's rendezvous."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- the rank process --------------------------------------------------------------------------------


def _exit_with_parent() -> None:
    """A rank must not outlive its parent (an orphan would hold its GPU)."""
    parent = os.getppid()

    def watch() -> None:
        while True:
            if os.getppid() != parent:
                os._exit(1)
            time.sleep(1.0)

    threading.Thread(target=watch, daemon=True).start()


def _serve(conn: Connection) -> None:
    sys.path[:] = list(dict.fromkeys([*_recv(conn), *sys.path]))
    worker_ref, setup, rank, world, init_method = _recv(conn)
    try:
        worker = load_object(worker_ref)(setup, rank, world, init_method)
        hook = os.environ.get(RANK_HOOK_ENV)
        if hook:
            load_object(hook)(worker, rank)
        _send(conn, ("ok", worker.report()))
    except Exception:
        _send(conn, ("error", traceback.format_exc()))
        return
    while True:
        try:
            command, args = _recv(conn)
        except EOFError:
            return
        if command == "stop":
            return
        try:
            _send(conn, ("ok", getattr(worker, command)(*args)))
        except Exception:
            # The group's collectives may be out of step now: the parent tears the group down.
            _send(conn, ("error", traceback.format_exc()))


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="[rank %(process)d] %(levelname)s %(name)s: %(message)s")
    _exit_with_parent()
    _serve(Connection(int(sys.argv[1])))


if __name__ == "__main__":
    main()

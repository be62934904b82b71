"""Counts and times every torch.distributed call a rank makes, per transformer pass.

Two uses: the test that a HyCa skipped step makes no collective at all, and the scaling benchmark's
share of a step spent communicating. It wraps the functions of ``torch.distributed`` itself, so it sees
calls from yunchang and xfuser as well as ours, and none can slip past. Off unless asked for: on CUDA it
synchronizes around each call to time it.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

# Not isend/irecv: P2POp accepts only the genuine functions, and the ring batches them (batch_isend_irecv).
_FUNCTIONS = (
    "all_to_all_single",
    "all_to_all",
    "all_gather",
    "all_gather_into_tensor",
    "all_reduce",
    "reduce_scatter_tensor",
    "broadcast",
    "barrier",
    "send",
    "recv",
    "batch_isend_irecv",
)


@dataclass
class PassComm:
    full: bool
    calls: int = 0
    seconds: float = 0.0  # time blocked in communication (collectives, and waits on point-to-point)
    pass_s: float = 0.0  # the whole transformer pass


@dataclass
class CommTrace:
    passes: list[PassComm] = field(default_factory=list)
    outside_calls: int = 0  # between passes: the latent gather after the loop
    outside_seconds: float = 0.0

    def summary(self) -> dict:
        full = [p for p in self.passes if p.full]
        skipped = [p for p in self.passes if not p.full]
        return {
            "full_passes": len(full),
            "skipped_passes": len(skipped),
            "calls_per_full_pass": sum(p.calls for p in full) / max(1, len(full)),
            "calls_in_skipped_passes": sum(p.calls for p in skipped),
            "comm_s_full": sum(p.seconds for p in full),
            "pass_s_full": sum(p.pass_s for p in full),
            "outside_calls": self.outside_calls,
            "outside_seconds": self.outside_seconds,
        }


class _Tracer:
    def __init__(self, transformer: torch.nn.Module, pass_is_full: Callable[[], bool]) -> None:
        self.transformer, self.pass_is_full = transformer, pass_is_full
        self.trace = CommTrace()
        self.current: PassComm | None = None
        self.depth = 0  # a call made inside a traced call is not counted again
        self.originals: dict[str, object] = {}
        self.handles: list = []
        self.t_pass = 0.0

    def _sync(self) -> None:
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.synchronize()

    def _account(self, seconds: float, calls: int) -> None:
        if self.current is not None:
            self.current.calls += calls
            self.current.seconds += seconds
        else:
            self.trace.outside_calls += calls
            self.trace.outside_seconds += seconds

    def _wrap(self, name: str, fn):
        tracer = self

        @functools.wraps(fn)
        def traced(*args, **kwargs):
            if tracer.depth:
                return fn(*args, **kwargs)
            tracer.depth += 1
            tracer._sync()
            t0 = time.perf_counter()
            try:
                result = fn(*args, **kwargs)
                tracer._sync()
            finally:
                tracer.depth -= 1
            tracer._account(time.perf_counter() - t0, 1)
            if name == "batch_isend_irecv":
                result = [_TimedWork(work, tracer) for work in result]
            return result

        return traced

    def install(self) -> None:
        for name in _FUNCTIONS:
            self.originals[name] = getattr(dist, name)
            setattr(dist, name, self._wrap(name, self.originals[name]))
        self.handles = [
            self.transformer.register_forward_pre_hook(self._start),
            self.transformer.register_forward_hook(self._end),
        ]

    def remove(self) -> None:
        for name, fn in self.originals.items():
            setattr(dist, name, fn)
        for handle in self.handles:
            handle.remove()

    def _start(self, module, args) -> None:
        self.current = PassComm(full=True)
        self._sync()
        self.t_pass = time.perf_counter()

    def _end(self, module, args, output) -> None:
        self._sync()
        self.current.pass_s = time.perf_counter() - self.t_pass
        self.current.full = self.pass_is_full()
        self.trace.passes.append(self.current)
        self.current = None


class _TimedWork:
    """A point-to-point request whose wait counts as communication time."""

    def __init__(self, work, tracer: _Tracer):
        self.work, self.tracer = work, tracer

    def wait(self, *args, **kwargs):
        t0 = time.perf_counter()
        result = self.work.wait(*args, **kwargs)
        self.tracer._sync()
        self.tracer._account(time.perf_counter() - t0, 0)
        return result

    def __getattr__(self, name):
        return getattr(self.work, name)


def trace_communication(transformer: torch.nn.Module, pass_is_full: Callable[[], bool]) -> _Tracer:
    """Start tracing this process's communication; ``.trace`` holds the record, ``.remove()`` stops.

    ``pass_is_full`` says, at the end of a transformer pass, whether it was a full one (the cache knows).
    """
    tracer = _Tracer(transformer, pass_is_full)
    tracer.install()
    return tracer

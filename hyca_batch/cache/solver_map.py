"""The solver map: HyCa's calibration artifact, which solver forecasts each feature channel.

It holds a cluster index per (module, channel) and a solver per cluster, nothing about tokens, so one
map serves every resolution, device and sequence-parallel degree of the model it was calibrated for.
It is stored as a safetensors file (tensors + JSON metadata in the header) with a human-readable
``.json`` twin beside it; ``id`` is a content hash, so runs can record exactly which map they used.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from hyca_batch.cache.fit import CANDIDATES
from hyca_batch.cache.solvers import SOLVERS, get_solver, max_points

FORMAT_VERSION = 2  # 2 added the per-step forecasts and the schedule; version 1 files still load
_READABLE_VERSIONS = (1, 2)
_STEP_TENSORS = ("schedule", "step_coefficients", "step_choice")
_HEADER_KEY = "hyca_solver_map"
_CHANNEL_PREFIX = "channel_cluster/"
# Metadata that says when, not what: left out of the content hash.
_VOLATILE_METADATA = frozenset({"created_at", "id"})


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _json_default(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    return str(value)


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


@dataclass
class SolverMap:
    """Per-channel solver assignment: channel -> cluster (per module) -> solver index into ``solvers``."""

    solvers: tuple[str, ...]
    cluster_solver: torch.Tensor  # (C,) long
    channel_cluster: dict[str, torch.Tensor]  # module name -> (D,) long
    cluster_error: torch.Tensor  # (C, len(solvers)) float: normalized calibration error
    metadata: dict = field(default_factory=dict)
    # The per-step forecasts of a calibrated map, valid for one schedule of T steps (all three or none):
    schedule: torch.Tensor | None = None  # (T,) bool: the full steps
    step_coefficients: torch.Tensor | None = None  # (C, T, HISTORY) float64 over the newest full steps
    step_choice: torch.Tensor | None = None  # (C, T) long into cache.fit.CANDIDATES, -1 at full steps

    def __post_init__(self) -> None:
        self.solvers = tuple(self.solvers)
        for name in self.solvers:
            get_solver(name)
        self.cluster_solver = torch.as_tensor(self.cluster_solver).long()
        self.cluster_error = torch.as_tensor(self.cluster_error)
        self.channel_cluster = {name: torch.as_tensor(c).long() for name, c in self.channel_cluster.items()}
        clusters = self.cluster_solver.numel()
        if self.cluster_solver.dim() != 1 or clusters == 0:
            raise ValueError(f"cluster_solver must be a non-empty 1-d tensor, got {tuple(self.cluster_solver.shape)}")
        if self.cluster_solver.min() < 0 or self.cluster_solver.max() >= len(self.solvers):
            raise ValueError(f"cluster_solver indexes outside the {len(self.solvers)} solvers")
        if tuple(self.cluster_error.shape) != (clusters, len(self.solvers)):
            raise ValueError(
                f"cluster_error must have shape {(clusters, len(self.solvers))}, got {tuple(self.cluster_error.shape)}"
            )
        if not self.channel_cluster:
            raise ValueError("a solver map needs at least one module")
        for name, index in self.channel_cluster.items():
            if index.dim() != 1 or index.numel() == 0:
                raise ValueError(f"channel_cluster[{name!r}] must be a non-empty 1-d tensor")
            if index.min() < 0 or index.max() >= clusters:
                raise ValueError(f"channel_cluster[{name!r}] indexes outside the {clusters} clusters")
        present = [getattr(self, k) is not None for k in _STEP_TENSORS]
        if any(present) and not all(present):
            raise ValueError(f"a solver map has all of {', '.join(_STEP_TENSORS)} or none of them")
        if all(present):
            self.schedule = torch.as_tensor(self.schedule).bool()
            self.step_coefficients = torch.as_tensor(self.step_coefficients).double()
            self.step_choice = torch.as_tensor(self.step_choice).long()
            steps = self.schedule.numel()
            if self.schedule.dim() != 1 or steps == 0 or not bool(self.schedule[0]):
                raise ValueError("schedule must be a non-empty 1-d tensor whose first step is full")
            if self.step_coefficients.dim() != 3 or tuple(self.step_coefficients.shape[:2]) != (clusters, steps):
                raise ValueError(
                    f"step_coefficients must have shape ({clusters}, {steps}, H), "
                    f"got {tuple(self.step_coefficients.shape)}"
                )
            if tuple(self.step_choice.shape) != (clusters, steps):
                raise ValueError(f"step_choice must have shape ({clusters}, {steps})")

    @property
    def steps(self) -> int | None:
        """The step count its per-step forecasts were fitted for (None: a map of per-cluster solvers only)."""
        return None if self.schedule is None else self.schedule.numel()

    def full_steps(self) -> list[bool]:
        """The schedule its per-step forecasts were fitted for."""
        if self.schedule is None:
            raise ValueError(f"solver map {self.id} has no per-step forecasts")
        return self.schedule.tolist()

    def history_points(self, module: str, per_step: bool = True) -> int:
        """History slots ``module`` must keep: the most any of its forecasts reads (at least 1); with ``per_step``
        False (or no per-step forecasts), those of its clusters' solvers."""
        if self.step_coefficients is None or not per_step:
            return max_points(self.solver_names_used(module))
        clusters = self.channel_cluster[module].unique()
        used = (self.step_coefficients[clusters] != 0).any(0).any(0)  # (H,)
        nonzero = torch.nonzero(used).flatten()
        return int(nonzero.max()) + 1 if nonzero.numel() else 1

    # -- queries -----------------------------------------------------------------------------------

    def channel_solver(self, module: str) -> torch.Tensor:
        """(D,) long solver index per channel of ``module``; KeyError for a module the map lacks."""
        try:
            clusters = self.channel_cluster[module]
        except KeyError:
            known = sorted(self.channel_cluster)
            raise KeyError(f"solver map has no module {module!r} ({len(known)} modules, e.g. {known[:3]})") from None
        return self.cluster_solver.to(clusters.device)[clusters]

    def solver_names_used(self, module: str | None = None) -> set[str]:
        """Solvers some channel (of ``module``, or of any module) runs: sets the history it must keep."""
        modules = [module] if module is not None else list(self.channel_cluster)
        used: set[int] = set()
        for name in modules:
            used.update(self.channel_solver(name).unique().tolist())
        return {self.solvers[i] for i in used}

    def to(self, device: torch.device | str) -> SolverMap:
        """The same map with its tensors on ``device``."""
        return SolverMap(
            self.solvers,
            self.cluster_solver.to(device),
            {name: c.to(device) for name, c in self.channel_cluster.items()},
            self.cluster_error.to(device),
            dict(self.metadata),
            *(None if getattr(self, k) is None else getattr(self, k).to(device) for k in _STEP_TENSORS),
        )

    @property
    def id(self) -> str:
        """Stable content hash (16 hex chars) of the tensors and the calibration-relevant metadata."""
        digest = hashlib.sha256()

        def add_tensor(label: str, tensor: torch.Tensor) -> None:
            t = tensor.detach().cpu().contiguous()
            digest.update(f"{label}|{t.dtype}|{tuple(t.shape)}|".encode())
            digest.update(t.numpy().tobytes())

        digest.update(json.dumps(list(self.solvers)).encode())
        add_tensor("cluster_solver", self.cluster_solver)
        add_tensor("cluster_error", self.cluster_error)
        for name in sorted(self.channel_cluster):
            add_tensor(f"{_CHANNEL_PREFIX}{name}", self.channel_cluster[name])
        for key in _STEP_TENSORS:
            if getattr(self, key) is not None:
                add_tensor(key, getattr(self, key))
        relevant = {k: v for k, v in self.metadata.items() if k not in _VOLATILE_METADATA}
        digest.update(json.dumps(relevant, sort_keys=True, default=_json_default).encode())
        return digest.hexdigest()[:16]

    # -- persistence -------------------------------------------------------------------------------

    def summary(self) -> dict:
        """The human-readable view written to the ``.json`` twin: per cluster and per module."""
        counts = torch.zeros(self.cluster_solver.numel(), dtype=torch.long)
        modules = {}
        for name in sorted(self.channel_cluster):
            clusters = self.channel_cluster[name].cpu()
            counts += torch.bincount(clusters, minlength=counts.numel())
            per_solver = torch.bincount(self.cluster_solver.cpu()[clusters], minlength=len(self.solvers))
            modules[name] = {
                "channels": clusters.numel(),
                "solvers": {s: int(n) for s, n in zip(self.solvers, per_solver.tolist()) if n},
            }
        error = self.cluster_error.detach().cpu().double()
        clusters = [
            {
                "cluster": c,
                "solver": self.solvers[int(self.cluster_solver[c])],
                "channels": int(counts[c]),
                "errors": {s: _finite_or_none(float(e)) for s, e in zip(self.solvers, error[c].tolist())},
            }
            for c in range(self.cluster_solver.numel())
        ]
        if self.step_choice is not None:
            for c, row in enumerate(self.step_choice.tolist()):
                clusters[c]["step_forecasts"] = {str(t): CANDIDATES[i] for t, i in enumerate(row) if i >= 0}
        return {
            "id": self.id,
            "solvers": list(self.solvers),
            "metadata": self.metadata,
            "full_steps": None if self.schedule is None else torch.nonzero(self.schedule).flatten().tolist(),
            "clusters": clusters,
            "modules": modules,
        }

    def save(self, path: str | os.PathLike) -> None:
        """Write ``path`` (safetensors, metadata JSON in its header) and ``path`` with suffix ``.json``."""
        path = Path(path)
        sidecar = path.with_suffix(".json")
        if sidecar == path:
            raise ValueError(f"solver map path {path} must not end in .json (that name is its readable twin)")
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {
            "cluster_solver": self.cluster_solver.detach().cpu().clone().contiguous(),
            "cluster_error": self.cluster_error.detach().cpu().clone().contiguous(),
        }
        for name, clusters in self.channel_cluster.items():
            tensors[_CHANNEL_PREFIX + name] = clusters.detach().cpu().clone().contiguous()
        for key in _STEP_TENSORS:
            if getattr(self, key) is not None:
                tensors[key] = getattr(self, key).detach().cpu().clone().contiguous()
        header = {"format": FORMAT_VERSION, "solvers": list(self.solvers), "metadata": self.metadata}
        tmp = path.with_name(path.name + ".tmp")
        save_file(tensors, str(tmp), metadata={_HEADER_KEY: json.dumps(header, default=_json_default)})
        os.replace(tmp, path)
        text = json.dumps(self.summary(), indent=2, default=_json_default)
        tmp = sidecar.with_name(sidecar.name + ".tmp")
        tmp.write_text(text + "\n")
        os.replace(tmp, sidecar)

    @classmethod
    def load(cls, path: str | os.PathLike, device: torch.device | str = "cpu") -> SolverMap:
        """Read a map written by ``save``; a missing or corrupt file is an error naming ``path``."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"solver map {path} does not exist")
        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                header = json.loads((f.metadata() or {})[_HEADER_KEY])
                tensors = {key: f.get_tensor(key) for key in f.keys()}
            if header.get("format") not in _READABLE_VERSIONS:
                raise ValueError(f"unsupported format {header.get('format')!r}")
            channel_cluster = {
                key[len(_CHANNEL_PREFIX) :]: value for key, value in tensors.items() if key.startswith(_CHANNEL_PREFIX)
            }
            solver_map = cls(
                tuple(header["solvers"]),
                tensors["cluster_solver"],
                channel_cluster,
                tensors["cluster_error"],
                dict(header.get("metadata") or {}),
                *(tensors.get(key) for key in _STEP_TENSORS),
            )
        except Exception as exc:  # safetensors, JSON and validation errors all mean the same thing here
            raise ValueError(f"solver map {path} is not a valid solver map file: {exc}") from exc
        return solver_map.to(device) if str(device) != "cpu" else solver_map

    @classmethod
    def uniform(cls, solver: str, module_dims: dict[str, int], metadata: dict | None = None) -> SolverMap:
        """A one-cluster map running ``solver`` on every channel: the FORA / TaylorSeer / FoCa baselines.

        Its error table is NaN: a uniform map is declared, not calibrated.
        """
        index = SOLVERS.index(get_solver(solver).name)
        meta = {"kind": "uniform", "solver": solver, "clusters": 1, "cluster_solvers": [solver], "created_at": _now()}
        meta.update(metadata or {})
        return cls(
            SOLVERS,
            torch.tensor([index], dtype=torch.long),
            {name: torch.zeros(dim, dtype=torch.long) for name, dim in module_dims.items()},
            torch.full((1, len(SOLVERS)), float("nan"), dtype=torch.float64),
            meta,
        )

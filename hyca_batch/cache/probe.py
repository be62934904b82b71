"""The calibration probe: what every cached feature does over a whole denoising loop, at a sample of tokens.

Installed with the cache (``apply_feature_cache(..., probe=TrajectoryProbe(...))``), it makes every step
full and records each feature the block hooks store, at a fixed random sample of token positions (all of
them at small sizes): at 720p one feature is ~10^8 values per step, and the channel statistics HyCa clusters
on do not need every token. The recording is kept here rather than in the per-context cache state, which
the pipeline resets after each call.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

DEFAULT_CONTEXT = "default"  # the cache context when the transformer runs outside a pipeline


@dataclass
class TrajectoryProbe:
    """Records ``tokens`` sampled positions of every stored feature, per cache context (cond / uncond)."""

    tokens: int
    seed: int = 0
    # Under sequence parallelism: (B, chunk, D) video features -> the whole video's, on every rank, so that
    # each rank records (and calibrates on) what a single process would.
    gather_video: Callable[[torch.Tensor], torch.Tensor] | None = None
    recording: dict[str, dict[str, list[torch.Tensor]]] = field(default_factory=dict)
    index: dict[str, torch.Tensor] = field(default_factory=dict)

    def record(self, context: str, name: str, value: torch.Tensor, video: int = 0, padding: int = 0) -> None:
        """One full step's ``value`` of feature ``name``: ``video`` leading video tokens, then text whose last
        ``padding`` positions are skipped (text padding is computed but never attended to, and would swamp small
        models' statistics)."""
        if self.gather_video is not None and video:
            value = torch.cat([self.gather_video(value[:, :video]), value[:, video:]], dim=1)
        usable = value.shape[1] - padding
        index = self.index.get(name)
        if index is None or int(index.max()) >= usable:
            # The first video fixes the sample (and its size, so that videos stack as folds); a later video with
            # fewer usable positions (a shorter prompt's text) gets as many of its own, repeated if it has fewer.
            gen = torch.Generator().manual_seed(self.seed)
            count = min(self.tokens, usable) if index is None else index.numel()
            order = torch.randperm(usable, generator=gen)
            index = order.repeat(-(-count // usable))[:count].sort().values
            self.index.setdefault(name, index)
        per_context = self.recording.setdefault(context, {})
        per_context.setdefault(name, []).append(value[0, index.to(value.device)].float().cpu())

    def reset(self) -> None:
        """Forget the recording (the token sample stays: every video is recorded at the same positions)."""
        self.recording = {}

    def trajectories(self, context: str = "cond") -> dict[str, torch.Tensor]:
        """The recording: module name -> (T, K, D) float32, for calibration."""
        recording = self.recording.get(context) or self.recording.get(DEFAULT_CONTEXT)
        if not recording:
            raise ValueError("nothing was recorded: install the cache with a probe and run the model")
        return {name: torch.stack(values) for name, values in recording.items()}

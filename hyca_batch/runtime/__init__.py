"""Running the model where a replica lives: ``ranks`` (a group of rank processes, generic over what each
builds), ``workers`` (what a video rank builds), ``backend`` (this process or a rank group, one interface)
and ``replica`` (the Ray Data callable that turns requests into committed videos)."""

from hyca_batch.runtime.backend import Backend, LocalBackend, RankBackend, open_backend
from hyca_batch.runtime.ranks import RankFailure, RankGroup
from hyca_batch.runtime.workers import RankSetup

__all__ = ["Backend", "LocalBackend", "RankBackend", "RankFailure", "RankGroup", "RankSetup", "open_backend"]

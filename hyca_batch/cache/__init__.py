"""HyCa feature caching (arXiv 2510.04188) and the uniform-solver baselines, behind one set of hooks.

``solvers`` (linear forecasts of a feature from its history), ``schedule`` (which steps run fully),
``calibrate`` (channel clustering and the solver per cluster), ``solver_map`` (the calibration's artifact),
``probe`` (recording trajectories to calibrate on) and ``hooks`` (the cache installed on a transformer).
"""

from hyca_batch.cache.hooks import FeatureCache, apply_feature_cache, cached_modules
from hyca_batch.cache.probe import TrajectoryProbe
from hyca_batch.cache.solver_map import SolverMap

__all__ = ["FeatureCache", "SolverMap", "TrajectoryProbe", "apply_feature_cache", "cached_modules"]

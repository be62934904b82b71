"""HyCa feature caching (arXiv 2510.04188) and the uniform-solver baselines behind the same hooks."""

from hyca_batch.hyca.hooks import (
    CACHE_MODES,
    FeatureCache,
    FeatureCacheConfig,
    apply_feature_cache,
    cached_modules,
)
from hyca_batch.hyca.solver_map import SolverMap

__all__ = ["CACHE_MODES", "FeatureCache", "FeatureCacheConfig", "SolverMap", "apply_feature_cache", "cached_modules"]

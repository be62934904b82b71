"""cache-dit (https://github.com/vipshop/cache-dit) as an outside reference point: its DBCache, with and without
a calibrator, enabled on the loaded pipeline and removed again without leaving a trace.

Optional: ``pip install -e '.[bench]'`` brings it; without it the benchmark skips these methods with a warning.
It is imported here only, never by ``hyca_batch``.

How it is configured, and why:

- One DBCache context over all the transformer's blocks (the model family's adapter lists them, in run order).
  cache-dit's own adapter for HunyuanVideo 1.0 gives the double-stream and the single-stream block lists a context
  each, and each context computes its own first ``Fn`` blocks at every step; with the mini model's 1 double + 2
  single blocks that would leave one block of three to cache. A ``BlockAdapter`` over one ``ModuleList`` of every
  block, in the transformer's order (the lists after the first patched to empty ones while the transformer runs:
  cache-dit's ``dummy_blocks_names``), makes one decision per step for the whole stack, as our cache and diffusers'
  FirstBlockCache do. Both block kinds take the same positional arguments and return ``(hidden, context)``:
  cache-dit's ``Pattern_0``. HunyuanVideo 1.5 has one list of dual-stream blocks, which is what cache-dit's own
  adapter for it takes too.
- Classifier-free guidance as separate passes (HunyuanVideo 1.5: conditional then unconditional at every step):
  ``enable_separate_cfg=True``, as cache-dit's own HunyuanVideo 1.5 adapter sets it; it then counts a step per two
  transformer calls and keeps the unconditional pass's residuals and calibrator apart. HunyuanVideo 1.0 embeds its
  guidance (one pass per step): False.
- ``Fn_compute_blocks=1``, ``Bn_compute_blocks=0``: DBCache always computes its first ``Fn`` blocks (their
  output residual is what its dynamic mode compares, and what the cached residual of the rest is added to);
  1 is the fewest it takes, so on a cached step it computes 1 block of 3 (the double-stream one), and the
  block-compute fraction of a cached step is 1/3, not 0 as for our modes. ``Bn=0``: with 3 blocks, one more
  computed block would leave a single block to cache.
- Fixed schedules (``cache-dit-<calibrator>`` at N): ``steps_computation_mask`` is our schedule
  (``hyca_batch.cache.schedule``: step 0 and every N-th step full) with ``steps_computation_policy="static"``
  (masked-out steps always use the cache, no threshold check) and ``max_warmup_steps=0``.
- Dynamic (``cache-dit-<calibrator>-r<threshold>``): no mask, ``residual_diff_threshold`` as given,
  ``max_warmup_steps=1`` (step 0 computes; nothing can be cached before it anyway) and no cap on cached steps.
- Calibrators: none (plain DBCache: reuse the cached residual), ``TaylorSeerCalibratorConfig`` (order 1, its
  default), ``FoCaCalibratorConfig``, ``DMDCalibratorConfig`` (dynamic mode decomposition, its defaults: 6
  snapshots, needs 4 full steps before it fits, Taylor before that). Each forecasts the cached residual of the
  blocks after ``Fn`` (and of the text stream).

Removing it: ``cache_dit.disable_cache`` (1.5.3) restores the transformer's ``forward`` with
``original_forward.__get__(transformer)``, which fails when that forward is diffusers' hook wrapper (a
``functools.partial``): our FeatureCache, installed in mode ``none`` as the pass counter, is exactly that. So
the saved forward is put back here and cache-dit is told nothing to restore. Its transformer wrapper swaps the
block lists with ``unittest.mock.patch.object``, which deletes and re-adds a submodule on exit, so the children
of the transformer come back in another order (the block lists last); diffusers' FirstBlockCache takes its head
and tail blocks in that order, so the order is put back too. Afterwards the pipeline class, the pipeline, the
transformer and every submodule must have exactly the attributes, children (in order) and hooks they had
before, or ``disable`` raises.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

#: The calibrators compared, in table order: cache-dit's name for it -> ours in the method names.
CACHE_DIT_CALIBRATORS = {"none": "dbcache", "taylorseer": "taylorseer", "foca": "foca", "dmd": "dmd"}
DEFAULT_CACHE_DIT_THRESHOLDS = (0.08, 0.2)
FN_COMPUTE_BLOCKS = 1
BN_COMPUTE_BLOCKS = 0
DYNAMIC_WARMUP_STEPS = 1
TAYLORSEER_ORDER = 1


def cache_dit_version() -> str | None:
    """The installed cache-dit's version, None when it is not installed (or does not import)."""
    os.environ.setdefault("CACHE_DIT_LOG_LEVEL", "error")  # it logs every context it creates at info
    try:
        import cache_dit
    except Exception:  # noqa: BLE001 -- any import failure means: not usable here
        return None
    return str(getattr(cache_dit, "__version__", "unknown"))


def method_name(calibrator: str, threshold: float | None = None) -> str:
    name = f"cache-dit-{CACHE_DIT_CALIBRATORS[calibrator]}"
    return name if threshold is None else f"{name}-r{threshold:g}"


def settings(blocks: str = "double- then single-stream", separate_cfg: bool = False) -> dict[str, Any]:
    """What every cache-dit method shares, for the JSON: ``blocks`` says what the one context covers."""
    return {
        "adapter": f"one DBCache context over all blocks ({blocks})",
        **({"enable_separate_cfg": True} if separate_cfg else {}),
        "Fn_compute_blocks": FN_COMPUTE_BLOCKS,
        "Bn_compute_blocks": BN_COMPUTE_BLOCKS,
        "fixed_schedule": {"steps_computation_policy": "static", "max_warmup_steps": 0},
        "dynamic": {"max_warmup_steps": DYNAMIC_WARMUP_STEPS, "max_cached_steps": -1},
        "taylorseer_order": TAYLORSEER_ORDER,
    }


def _calibrator_config(name: str):
    import cache_dit

    if name == "none":
        return None
    if name == "taylorseer":
        return cache_dit.TaylorSeerCalibratorConfig(taylorseer_order=TAYLORSEER_ORDER)
    if name == "foca":
        return cache_dit.FoCaCalibratorConfig()
    if name == "dmd":
        return cache_dit.DMDCalibratorConfig()
    raise ValueError(f"unknown cache-dit calibrator {name!r}; known: {', '.join(CACHE_DIT_CALIBRATORS)}")


def _cache_config(steps: int, mask: Sequence[int] | None, threshold: float | None, separate_cfg: bool = False):
    from cache_dit import DBCacheConfig

    common = dict(
        Fn_compute_blocks=FN_COMPUTE_BLOCKS,
        Bn_compute_blocks=BN_COMPUTE_BLOCKS,
        num_inference_steps=steps,
        # HunyuanVideo 1.0: one transformer pass per step (embedded guidance); 1.5: cond and uncond passes
        enable_separate_cfg=separate_cfg,
    )
    if mask is not None:
        return DBCacheConfig(
            **common, steps_computation_mask=list(mask), steps_computation_policy="static", max_warmup_steps=0
        )
    return DBCacheConfig(**common, residual_diff_threshold=threshold, max_warmup_steps=DYNAMIC_WARMUP_STEPS)


def _module_state(module) -> dict[str, tuple]:
    """Per submodule: its identity, attribute names, children in order, and hook counts (what enabling a cache
    could leave behind)."""
    return {
        name: (
            id(m),
            frozenset(vars(m)),
            tuple(m._modules),  # the order of children: diffusers' FirstBlockCache takes head and tail from it
            len(m._forward_hooks),
            len(m._forward_pre_hooks),
            id(vars(m).get("forward")),  # an instance-level forward: diffusers' hooks, cache-dit's wrapper
        )
        for name, m in module.named_modules()
    }


class CacheDit:
    """cache-dit enabled on one pipeline (at most one configuration at a time), and removed without a trace."""

    def __init__(self, pipeline) -> None:
        self.pipeline = pipeline
        self.transformer = pipeline.transformer
        self.adapter = None
        self._saved_forward: Any = None
        self._had_forward = False
        self._before: dict[str, Any] | None = None
        self._children: dict[str, list[str]] = {}

    @property
    def active(self) -> bool:
        return self.adapter is not None or bool(getattr(self.transformer, "_is_cached", False))

    def _snapshot(self) -> dict[str, Any]:
        cls = type(self.pipeline)
        return {
            "pipeline class __call__": cls.__dict__.get("__call__"),
            "pipeline class attributes": frozenset(vars(cls)),
            "pipeline attributes": frozenset(vars(self.pipeline)),
            "transformer modules": _module_state(self.transformer),
        }

    def enable(
        self,
        steps: int,
        calibrator: str,
        mask: Sequence[int] | None = None,
        threshold: float | None = None,
        separate_cfg: bool = False,
    ):
        """DBCache on the whole block stack: a fixed ``mask`` (1: compute) or a dynamic ``threshold``;
        ``separate_cfg`` when every step runs a conditional and an unconditional pass."""
        import cache_dit
        import torch
        from cache_dit import BlockAdapter, ForwardPattern

        from hyca_batch.models.adapters import family_of

        if (mask is None) == (threshold is None):
            raise ValueError("give a steps mask or a residual threshold, not both or neither")
        if self.active:
            raise RuntimeError("cache-dit is already enabled; disable it first")
        if mask is not None and len(mask) != steps:
            raise ValueError(f"the steps mask has {len(mask)} entries for {steps} steps")
        tr = self.transformer
        self._before = self._snapshot()
        self._children = {name: list(m._modules) for name, m in tr.named_modules()}
        self._had_forward = "forward" in vars(tr)
        self._saved_forward = vars(tr).get("forward")
        family = family_of(tr)
        lists = [attribute for attribute, _ in family.blocks]  # the block lists, in run order
        self.adapter = BlockAdapter(
            pipe=self.pipeline,
            transformer=tr,
            blocks=torch.nn.ModuleList([block for _, _, block in family.block_lists(tr)]),
            blocks_name=lists[0],
            dummy_blocks_names=lists[1:],
            forward_pattern=ForwardPattern.Pattern_0,
            check_forward_pattern=True,
            check_num_outputs=False,  # diffusers' return annotations do not count outputs the way it expects
        )
        try:
            cache_dit.enable_cache(
                self.adapter,
                cache_config=_cache_config(steps, mask, threshold, separate_cfg),
                calibrator_config=_calibrator_config(calibrator),
            )
        except BaseException as error:
            try:
                self.disable()
            except Exception as cleanup:
                raise RuntimeError(f"enabling cache-dit failed ({error!r}), and removing it did too") from cleanup
            raise

    def disable(self) -> None:
        """Remove cache-dit; raise if the pipeline or transformer is not exactly as before ``enable``."""
        if self.adapter is None:
            return
        import cache_dit

        tr = self.transformer
        try:
            # cache-dit cannot rebind a functools.partial forward (diffusers' hooks): restore it here instead.
            vars(tr).pop("_original_forward", None)
            cache_dit.disable_cache(self.adapter)
        finally:
            if self._had_forward:
                tr.forward = self._saved_forward
            else:
                vars(tr).pop("forward", None)
            self.adapter = None
            for name, m in tr.named_modules():  # children back in their order (same dict, same keys)
                order = self._children.get(name)
                if order is not None and list(m._modules) != order and set(m._modules) == set(order):
                    for key in order:
                        m._modules[key] = m._modules.pop(key)
        before, self._before = self._before, None
        after = self._snapshot()
        changed = [key for key in before if before[key] != after[key]]
        if changed:
            detail = ""
            if "transformer modules" in changed:
                b, a = before["transformer modules"], after["transformer modules"]
                names = sorted(n or "<transformer>" for n in set(a) | set(b) if a.get(n) != b.get(n))
                detail = "; modules: " + ", ".join(names)
            raise RuntimeError(f"disabling cache-dit left changes behind: {', '.join(changed)}{detail}")

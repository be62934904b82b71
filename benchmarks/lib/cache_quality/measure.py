"""Runs on one loaded model with at most one cache active at a time: what each run computed (transformer passes,
the passes where the first attention or the last block really ran, the block sub-computations that ran, FLOPs),
and timings paired with uncached runs so that a machine whose load changes still gives honest ratios.

Which blocks there are, in which order and of which kind comes from the model family's adapter
(``hyca_batch.models.adapters``). Every count is over every transformer pass: under classifier-free guidance
(HunyuanVideo 1.5) a step's conditional and unconditional pass both count."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hyca_batch.models.adapters import family_of

#: Timing: at most this many extra (uncached, cached) pairs while a side's two best times differ by > STABLE x.
EXTRA_PAIRS = 3
STABLE = 1.2


def _sdpa_flops(query, key, value, *args, **kwargs) -> int:
    from torch.utils.flop_counter import sdpa_flop_count

    return sdpa_flop_count(query.shape, key.shape, value.shape)


_sdpa_flops._get_raw = True  # FlopCounterMode: call with the tensors, not their shapes


def flop_counter():
    """A FlopCounterMode that also counts CPU attention (only the CUDA SDPA kernels are registered)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    mapping = {}
    for name in ("_scaled_dot_product_flash_attention_for_cpu",):
        op = getattr(torch.ops.aten, name, None)
        if op is not None:
            mapping[op] = _sdpa_flops
    return FlopCounterMode(display=False, custom_mapping=mapping)


class CallCounter:
    """Counts forward calls of one submodule: it runs only when its block/attention really computes."""

    def __init__(self, module) -> None:
        self.count = 0
        self.handle = module.register_forward_hook(self._hook)

    def _hook(self, module, inputs, output) -> None:
        self.count += 1

    def remove(self) -> None:
        self.handle.remove()


def tail_module(transformer):
    """A module of the last block that runs only when that block computes: the last output a full step of its kind
    captures (a single-stream block's ``proj_out``, a dual-stream block's ``ff_context``)."""
    kind, _, block = list(family_of(transformer).block_lists(transformer))[-1]
    return list(kind.captured(block).values())[-1]


class BlockComputeCounter:
    """Counts the block sub-computations that really ran: per block, its attention and its MLP.

    Every block of the family's adapter, in run order: ``attn.to_q``, and ``ff`` for dual-stream (double) blocks or
    ``proj_mlp`` for single-stream ones. A cache that skips a block replaces the block's forward (ours, diffusers'
    and cache-dit's hooks alike), so a hook on the block would fire anyway; these inner modules run only when the
    block (or, for diffusers' TaylorSeer, which forecasts only attention, that part of it) really computes.
    """

    def __init__(self, transformer) -> None:
        self.counters: dict[str, CallCounter] = {}
        for kind, i, block in family_of(transformer).block_lists(transformer):
            self.counters[f"{kind.name}.{i}.attn"] = CallCounter(block.attn.to_q)
            self.counters[f"{kind.name}.{i}.mlp"] = CallCounter(getattr(block, kind.mlp))

    @property
    def per_pass(self) -> int:
        """Sub-computations of one full transformer pass."""
        return len(self.counters)

    def reset(self) -> None:
        for counter in self.counters.values():
            counter.count = 0

    def counts(self) -> dict[str, int]:
        return {name: counter.count for name, counter in self.counters.items()}

    def remove(self) -> None:
        for counter in self.counters.values():
            counter.remove()


@dataclass
class Run:
    frames: Any
    latents: Any
    denoise_s: float
    passes: int  # transformer calls (our step hook)
    full: int  # ours: the cache's full count; -1 in mode none
    attn_computes: int  # passes where the first block's attention ran
    tail_computes: int  # passes where the last block ran
    block_computes: dict[str, int] = field(default_factory=dict)  # BlockComputeCounter.counts()
    transformer_flops: int | None = None
    deterministic: bool = True
    reference_s: list[float] = field(default_factory=list)  # interleaved uncached timings
    cached_s: list[float] = field(default_factory=list)


class Bench:
    """One loaded model, with at most one cache active at any time, and the runs that measure it."""

    def __init__(self, model) -> None:
        from hyca_batch.pipeline.generate import VideoGenerator

        self.model = model
        self.transformer = model.pipeline.transformer
        self.generator: VideoGenerator | None = None
        self.extra_pairs = 0  # timed pairs added because the timings disagreed (a noisy machine)
        self.family = family_of(self.transformer)
        self.attn_counter = CallCounter(self.family.first_block(self.transformer).attn.to_q)
        self.tail_counter = CallCounter(tail_module(self.transformer))
        self.block_counter = BlockComputeCounter(self.transformer)
        self.cache_dit = None  # peers.CacheDit, made on first use (cache-dit is optional)
        # Transformer passes per step (2 under classifier-free guidance): set from the uncached reference's count.
        self.passes_per_step = 1

    # -- installing and removing caches (never two at once) -----------------------------------------------

    def _diffusers_cache_active(self) -> bool:
        return bool(getattr(self.transformer, "is_cache_enabled", False))

    def _cache_dit_active(self) -> bool:
        return bool(getattr(self.transformer, "_is_cached", False)) or (
            self.cache_dit is not None and self.cache_dit.active
        )

    def install_ours(self, config, solver_map=None) -> None:
        from hyca_batch.pipeline.generate import VideoGenerator

        if self._diffusers_cache_active():
            raise RuntimeError("a diffusers cache is still enabled; disable it before installing our FeatureCache")
        if self._cache_dit_active():
            raise RuntimeError("cache-dit is still enabled; disable it before installing our FeatureCache")
        self.remove_ours()
        self.generator = VideoGenerator(self.model, cache=config, solver_map=solver_map)

    def _counter_only(self) -> None:
        """Our cache in mode none: no block hooks, nothing forecast; it only counts and times passes."""
        from hyca_batch.config import CacheConfig

        if self.generator is None or self.generator.cache.config.mode != "none":
            self.install_ours(CacheConfig(mode="none"))

    def remove_ours(self) -> None:
        if self.generator is not None:
            self.generator.cache.remove()
            self.generator = None

    def enable_diffusers(self, config) -> None:
        self.disable_peers()
        self._counter_only()  # our cache stays installed only as the pass counter
        self.transformer.enable_cache(config)

    def disable_diffusers(self) -> None:
        if self._diffusers_cache_active():
            self.transformer.disable_cache()

    def enable_cache_dit(self, steps: int, calibrator: str, mask=None, threshold: float | None = None) -> None:
        """cache-dit's DBCache (``peers.CacheDit.enable``), over our cache in mode none (the pass counter):
        enabled after it and disabled before it is removed, so that each restores what the other saw. With more
        than one pass per step (classifier-free guidance) its separate-CFG mode caches the two passes apart."""
        from benchmarks.lib.cache_quality.peers import CacheDit

        self.disable_peers()
        self._counter_only()
        if self.cache_dit is None:
            self.cache_dit = CacheDit(self.model.pipeline)
        self.cache_dit.enable(steps, calibrator, mask=mask, threshold=threshold, separate_cfg=self.passes_per_step > 1)

    def disable_cache_dit(self) -> None:
        if self.cache_dit is not None:
            self.cache_dit.disable()

    def disable_peers(self) -> None:
        """Disable diffusers' and cache-dit's caches, whichever is enabled."""
        self.disable_cache_dit()
        self.disable_diffusers()

    def activate_reference(self) -> None:
        self.disable_peers()
        self._counter_only()

    def trial(self, activate: Callable[[], None]) -> str | None:
        """Enable a peer's cache and disable it again, running nothing: None when that works, else why not (the
        error). Whatever hooks a failed enable left on the transformer's modules are removed again."""
        from diffusers.hooks import HookRegistry

        def hooks() -> dict[str, set[str]]:
            return {
                name: set(m._diffusers_hook.hooks)
                for name, m in self.transformer.named_modules()
                if getattr(m, "_diffusers_hook", None) is not None
            }

        before = hooks()
        try:
            activate()
        except Exception as error:  # noqa: BLE001 -- any failure means: this peer does not run on this model
            reason = f"{type(error).__name__}: {error}"
            try:
                self.disable_peers()
            except Exception as cleanup:  # noqa: BLE001
                reason += f" (and disabling it failed: {cleanup})"
            modules = dict(self.transformer.named_modules())
            for name, names in hooks().items():
                for hook in names - before.get(name, set()):
                    HookRegistry.check_if_exists_or_initialize(modules[name]).remove_hook(hook, recurse=False)
            return reason
        self.disable_peers()
        return None

    def close(self) -> None:
        self.disable_peers()
        self.remove_ours()
        self.attn_counter.remove()
        self.tail_counter.remove()
        self.block_counter.remove()

    # -- running ----------------------------------------------------------------------------------------

    def once(self, request, count_flops: bool = False) -> Run:
        self.attn_counter.count = self.tail_counter.count = 0
        self.block_counter.reset()
        flops = None
        if count_flops:
            # The counter's running total around each transformer call, not its per-module table: cache-dit's
            # cached blocks hold the transformer as a submodule, and that cycle garbles the table's module names.
            counter, inside = flop_counter(), [0, 0]  # [total at the call's start, FLOPs inside calls]

            def started(module, args) -> None:
                inside[0] = counter.get_total_flops()

            def finished(module, args, output) -> None:
                inside[1] += counter.get_total_flops() - inside[0]

            handles = [
                self.transformer.register_forward_pre_hook(started),
                self.transformer.register_forward_hook(finished),
            ]
            try:
                with counter:
                    result = self.generator(request)
            finally:
                for handle in handles:
                    handle.remove()
            flops = int(inside[1])
        else:
            result = self.generator(request)
        mode = self.generator.cache.config.mode
        return Run(
            frames=result.frames,
            latents=result.latents,
            denoise_s=result.timings["denoise_s"],
            passes=result.transformer_passes_full + result.transformer_passes_skipped,
            full=result.transformer_passes_full if mode != "none" else -1,
            attn_computes=self.attn_counter.count,
            tail_computes=self.tail_counter.count,
            block_computes=self.block_counter.counts(),
            transformer_flops=flops,
        )

    def measure(
        self,
        request,
        reference: Run,
        activate: Callable[[], None],
        repeats: int,
        count_flops: bool,
        tick: Callable[[], None],
    ) -> Run:
        """One untimed run (fidelity, FLOPs), then ``repeats`` timed pairs: uncached, cached.

        Pairing puts each cached timing next to an uncached one, so a machine whose load changes over the
        minutes of a benchmark still gives honest ratios; the best of each side is kept. All cached runs
        must give the same latents, and every uncached one the reference's: no cache state may leak.
        """
        import torch

        activate()
        first = self.once(request, count_flops)
        tick()

        def pair() -> None:
            self.activate_reference()
            ref = self.once(request)
            if not torch.equal(ref.latents, reference.latents):
                raise RuntimeError(f"the uncached video of {request.prompt!r} changed: a cache left state behind")
            first.reference_s.append(ref.denoise_s)
            activate()
            run = self.once(request)
            first.cached_s.append(run.denoise_s)
            if not torch.equal(run.latents, first.latents) or (
                run.attn_computes,
                run.tail_computes,
                run.block_computes,
            ) != (first.attn_computes, first.tail_computes, first.block_computes):
                first.deterministic = False

        def unstable(times: list[float]) -> bool:
            best = sorted(times)
            return best[1] > STABLE * best[0]

        for _ in range(repeats):
            pair()
            tick()
        # With 2+ repeats, a few extra pairs while the two best times of a side disagree: a busy machine
        # slows single runs by up to 100x.
        extra = 0
        while repeats >= 2 and extra < EXTRA_PAIRS and (unstable(first.cached_s) or unstable(first.reference_s)):
            pair()
            extra += 1
        self.extra_pairs += extra
        first.denoise_s = min(first.cached_s)
        return first

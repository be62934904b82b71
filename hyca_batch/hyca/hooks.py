"""Feature caching hooks for diffusers' HunyuanVideoTransformer3DModel, in the style of ``diffusers.hooks``.

One mechanism serves every cache mode: at a full step each cached module's residual-branch output (before
its gate) is computed and pushed into a short history; at a skipped step it is forecast as a per-channel
linear combination of that history, and the gates are recomputed from the cheap timestep embedding. The
modes differ only in the per-channel solver table: ``fora`` reuses, ``taylorseer`` extrapolates, ``foca``
predicts and corrects, ``hyca`` gives each channel the solver its calibration chose.

Full steps call the block's own forward (outputs are captured by forward hooks on its submodules), so a
full step is bit-identical to the uncached model. State lives in one object per cache context, so the
pipeline's separate ``cond``/``uncond`` passes never see each other's history; the pipeline resets it after
each call, and ``FeatureCache.reset`` clears it (and the statistics) before each video.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from diffusers.hooks import HookRegistry, ModelHook
from diffusers.hooks.hooks import BaseState, StateManager

from hyca_batch.hyca.solver_map import SolverMap
from hyca_batch.hyca.solvers import SOLVERS, coefficient_table, max_points

CACHE_MODES = ("none", "fora", "taylorseer", "foca", "hyca")
#: The uniform baselines: every channel of every module runs the same solver.
UNIFORM_SOLVERS = {"fora": "reuse", "foca": "pc"}
GRANULARITIES = ("block", "stack")

_STEP_HOOK = "hyca_step"
_BLOCK_HOOK = "hyca_block"
_DEFAULT_CONTEXT = "default"


@dataclass
class FeatureCacheConfig:
    """How to cache. ``interval`` N: a full pass every N steps (N=1 computes every step)."""

    mode: str = "hyca"
    interval: int = 6
    warmup: int = 0  # extra full steps at the start, before the every-N schedule takes over
    granularity: str = "block"  # block: per-module outputs; stack: one residual over all blocks (low memory)
    taylorseer_order: int = 2
    probe_tokens: int = 0  # >0: calibration probe, every step full, this many sampled tokens recorded
    probe_seed: int = 0

    def __post_init__(self) -> None:
        if self.mode not in CACHE_MODES:
            raise ValueError(f"cache mode {self.mode!r}; choose from {', '.join(CACHE_MODES)}")
        if self.granularity not in GRANULARITIES:
            raise ValueError(f"granularity {self.granularity!r}; choose from {', '.join(GRANULARITIES)}")
        if self.interval < 1 or self.warmup < 0:
            raise ValueError(f"interval must be >= 1 and warmup >= 0, got {self.interval} and {self.warmup}")
        if self.taylorseer_order not in (1, 2):
            raise ValueError(f"taylorseer order must be 1 or 2, got {self.taylorseer_order}")

    def is_full(self, step: int) -> bool:
        return self.probe_tokens > 0 or self.mode == "none" or step < self.warmup or step % self.interval == 0


class _CacheState(BaseState):
    """Everything one cache context (cond or uncond) remembers across the steps of one video."""

    def __init__(self) -> None:
        self.context = _DEFAULT_CONTEXT
        self.reset()

    def reset(self) -> None:
        self.step = -1
        self.full = True
        self.times: list[int] = []  # step indices of the stored full steps, newest first
        self.history: dict[str, list[torch.Tensor]] = {}
        self.coefficients: torch.Tensor | None = None  # (len(SOLVERS), H) for the current skipped step
        self.stack_input: tuple[torch.Tensor, torch.Tensor] | None = None
        self.text_tokens: int | None = None  # unmasked text tokens (padding is computed, never attended to)


class _States(StateManager):
    """diffusers' StateManager, with a default context so the transformer also works outside a pipeline."""

    def get_state(self) -> _CacheState:
        name = self._context.name if self._context is not None else _DEFAULT_CONTEXT
        if name not in self._state_cache:
            state = self._state_cls()
            state.context = name
            self._state_cache[name] = state
        return self._state_cache[name]


@dataclass
class PassStats:
    full: int = 0
    skipped: int = 0
    full_s: list[float] = field(default_factory=list)
    skipped_s: list[float] = field(default_factory=list)

    @property
    def mean_full_s(self) -> float:
        return sum(self.full_s) / len(self.full_s) if self.full_s else 0.0


def _sync(tensor: torch.Tensor | None) -> None:
    if tensor is not None and tensor.is_cuda:
        torch.cuda.synchronize(tensor.device)


class FeatureCache:
    """The installed cache of one transformer: its config, solver map, state, and pass statistics."""

    def __init__(self, transformer: torch.nn.Module, config: FeatureCacheConfig, solver_map: SolverMap | None):
        self.transformer = transformer
        self.config = config
        self.solver_map = solver_map
        self.states = _States(_CacheState)
        self.stats = PassStats()
        self.bypassed = False  # True: every step full and nothing stored (the uncached baseline)
        # Under sequence parallelism: (B, chunk, D) video features -> the whole video's, on every rank. Only
        # the calibration probe uses it, so that its recording (and the solver map) equal the single-rank one.
        self.gather_video: Callable[[torch.Tensor], torch.Tensor] | None = None
        # Probe recordings live here, not in the per-context state, which the pipeline resets after each call.
        self.probe: dict[str, dict[str, list[torch.Tensor]]] = {}
        self.probe_index: dict[str, torch.Tensor] = {}
        self._channel_solver: dict[str, torch.Tensor] = {}
        self._points: dict[str, int] = {}
        self._capture_handles: list[torch.utils.hooks.RemovableHandle] = []

    # -- per module solver tables -------------------------------------------------------------------

    def uniform_solver(self) -> str:
        if self.config.mode == "taylorseer":
            return f"taylor{self.config.taylorseer_order}"
        return UNIFORM_SOLVERS[self.config.mode]

    def channel_solver(self, name: str, dim: int, device: torch.device) -> torch.Tensor:
        """(D,) solver index per channel of a module, on the module's device (cached after first use)."""
        table = self._channel_solver.get(name)
        if table is None or table.device != device:
            if self.config.mode == "hyca":
                table = self.solver_map.channel_solver(name)
            else:
                table = torch.full((dim,), SOLVERS.index(self.uniform_solver()), dtype=torch.long)
            table = table.to(device)
            self._channel_solver[name] = table
        return table

    def history_points(self, name: str) -> int:
        """Slots a module keeps: as many as its most demanding solver reads, no more (memory)."""
        if name not in self._points:
            if self.config.mode == "hyca":
                used = self.solver_map.solver_names_used(name)
            else:
                used = {self.uniform_solver()}
            self._points[name] = max_points(used)
        return self._points[name]

    # -- what the block hooks call ------------------------------------------------------------------

    def is_full(self, step: int) -> bool:
        return self.bypassed or self.config.is_full(step)

    def store(self, state: _CacheState, name: str, value: torch.Tensor, video: int = 0, padding: int = 0) -> None:
        """Push a full step's feature: ``video`` leading video tokens, then text whose last ``padding``
        positions the probe skips (text padding is computed but never attended to, and would swamp small
        models' statistics).
        """
        if self.bypassed:
            return
        if self.config.probe_tokens > 0:
            if self.gather_video is not None and video:
                value = torch.cat([self.gather_video(value[:, :video]), value[:, video:]], dim=1)
            self._record_probe(state, name, value, value.shape[1] - padding)
        if self.config.mode == "none":
            return
        slots = state.history.setdefault(name, [])
        slots.insert(0, value.detach())
        del slots[self.history_points(name) :]

    def forecast(self, state: _CacheState, name: str) -> torch.Tensor:
        """One multiply-add per history slot, with per-channel coefficients gathered from the solver table."""
        slots = state.history[name]
        coef = state.coefficients[:, : len(slots)].to(slots[0].device)  # (len(SOLVERS), h)
        per_channel = coef[self.channel_solver(name, slots[0].shape[-1], slots[0].device)]  # (D, h)
        per_channel = per_channel.to(slots[0].dtype).T
        out = slots[0] * per_channel[0]
        for value, c in zip(slots[1:], per_channel[1:]):
            out = out.addcmul(value, c)
        return out

    def _record_probe(self, state: _CacheState, name: str, value: torch.Tensor, usable: int) -> None:
        index = self.probe_index.get(name)
        if index is None:
            gen = torch.Generator().manual_seed(self.config.probe_seed)
            index = torch.randperm(usable, generator=gen)[: self.config.probe_tokens].sort().values
            self.probe_index[name] = index
        recording = self.probe.setdefault(state.context, {})
        recording.setdefault(name, []).append(value[0, index.to(value.device)].float().cpu())

    # -- lifecycle ---------------------------------------------------------------------------------

    def reset(self) -> None:
        """Forget every context's history, the probe's recording and the pass statistics: call before each video."""
        self.states.reset()
        self.stats = PassStats()
        self.probe = {}

    def trajectories(self, context: str = "cond") -> dict[str, torch.Tensor]:
        """The probe's recording: module name -> (T, K, D) float32, for calibration."""
        recording = self.probe.get(context) or self.probe.get(_DEFAULT_CONTEXT)
        if not recording:
            raise ValueError("nothing was recorded: install the cache with probe_tokens > 0 and run the model")
        return {name: torch.stack(values) for name, values in recording.items()}

    def remove(self) -> None:
        for handle in self._capture_handles:
            handle.remove()
        HookRegistry.check_if_exists_or_initialize(self.transformer).remove_hook(_STEP_HOOK, recurse=False)
        for block in _blocks(self.transformer):
            HookRegistry.check_if_exists_or_initialize(block).remove_hook(_BLOCK_HOOK, recurse=False)
        del self.transformer._hyca_cache


def _text_padding(state: _CacheState, text: torch.Tensor) -> int:
    """Trailing text positions no token attends to (none once sequence parallelism has dropped them)."""
    return 0 if state.text_tokens is None else max(0, text.shape[1] - state.text_tokens)


def _arg(args: tuple, kwargs: dict, index: int, name: str):
    return args[index] if len(args) > index else kwargs.get(name)


class _StepHook(ModelHook):
    """On the transformer: counts steps per context, decides full or skipped, times the pass."""

    _is_stateful = True

    def __init__(self, cache: FeatureCache):
        super().__init__()
        self.cache = cache
        self.state = cache.states

    def new_forward(self, module: torch.nn.Module, *args, **kwargs):
        state: _CacheState = self.state.get_state()
        state.step += 1
        state.full = self.cache.is_full(state.step) or not state.times
        if not state.full:
            state.coefficients = coefficient_table(state.times, state.step).float()
        mask = _arg(args, kwargs, 4, "encoder_attention_mask")
        state.text_tokens = int(mask[0].sum()) if isinstance(mask, torch.Tensor) else None
        hidden = _arg(args, kwargs, 0, "hidden_states")
        _sync(hidden)
        t0 = time.perf_counter()
        output = self.fn_ref.original_forward(*args, **kwargs)
        _sync(hidden)
        elapsed = time.perf_counter() - t0
        stats = self.cache.stats
        if state.full:
            stats.full += 1
            stats.full_s.append(elapsed)
            state.times.insert(0, state.step)
            del state.times[max_points(SOLVERS) :]
        else:
            stats.skipped += 1
            stats.skipped_s.append(elapsed)
        return output

    def reset_state(self, module: torch.nn.Module) -> torch.nn.Module:
        self.state.reset()
        return module


class _Capture:
    """Forward hooks that remember submodule outputs during a full step."""

    def __init__(self) -> None:
        self.values: dict[str, torch.Tensor | tuple] = {}

    def hook(self, key: str):
        def capture(module, inputs, output):
            self.values[key] = output

        return capture


class _BlockHook(ModelHook):
    _is_stateful = True

    def __init__(self, cache: FeatureCache, name: str = ""):
        super().__init__()
        self.cache, self.name, self.state = cache, name, cache.states
        self.capture = _Capture()

    def reset_state(self, module: torch.nn.Module) -> torch.nn.Module:
        self.state.reset()
        return module


class _DoubleBlockHook(_BlockHook):
    """Double-stream block: caches image/text attention and MLP outputs, before their gates."""

    def initialize_hook(self, module: torch.nn.Module) -> torch.nn.Module:
        self.cache._capture_handles += [
            module.attn.register_forward_hook(self.capture.hook("attn")),
            module.ff.register_forward_hook(self.capture.hook("ff")),
            module.ff_context.register_forward_hook(self.capture.hook("ctx_ff")),
        ]
        return module

    def new_forward(self, module: torch.nn.Module, *args, **kwargs):
        state: _CacheState = self.state.get_state()
        if state.full:
            output = self.fn_ref.original_forward(*args, **kwargs)
            attn, ctx_attn = self.capture.values.pop("attn")
            padding = _text_padding(state, ctx_attn)
            self.cache.store(state, f"{self.name}.attn", attn, video=attn.shape[1])
            self.cache.store(state, f"{self.name}.ctx_attn", ctx_attn, padding=padding)
            ff = self.capture.values.pop("ff")
            self.cache.store(state, f"{self.name}.ff", ff, video=ff.shape[1])
            self.cache.store(state, f"{self.name}.ctx_ff", self.capture.values.pop("ctx_ff"), padding=padding)
            return output
        hidden, context = _arg(args, kwargs, 0, "hidden_states"), _arg(args, kwargs, 1, "encoder_hidden_states")
        temb = _arg(args, kwargs, 2, "temb")
        # Skipped: only the modulation gates are computed (a linear layer on the timestep embedding).
        _, _, gate_msa, _, _, gate_mlp = module.norm1.linear(module.norm1.silu(temb)).chunk(6, dim=1)
        _, _, c_gate_msa, _, _, c_gate_mlp = module.norm1_context.linear(module.norm1_context.silu(temb)).chunk(6, dim=1)

        def f(key: str) -> torch.Tensor:
            return self.cache.forecast(state, f"{self.name}.{key}")

        hidden = hidden + f("attn") * gate_msa.unsqueeze(1) + gate_mlp.unsqueeze(1) * f("ff")
        context = context + f("ctx_attn") * c_gate_msa.unsqueeze(1) + c_gate_mlp.unsqueeze(1) * f("ctx_ff")
        return hidden, context


class _SingleBlockHook(_BlockHook):
    """Single-stream block: caches the linear2 (proj_out) output, before its gate."""

    def initialize_hook(self, module: torch.nn.Module) -> torch.nn.Module:
        self.cache._capture_handles.append(module.proj_out.register_forward_hook(self.capture.hook("proj_out")))
        return module

    def new_forward(self, module: torch.nn.Module, *args, **kwargs):
        state: _CacheState = self.state.get_state()
        hidden, context = _arg(args, kwargs, 0, "hidden_states"), _arg(args, kwargs, 1, "encoder_hidden_states")
        name = f"{self.name}.proj_out"
        if state.full:
            output = self.fn_ref.original_forward(*args, **kwargs)
            # The joint sequence is image tokens, then text with its valid tokens first.
            value = self.capture.values.pop("proj_out")
            self.cache.store(state, name, value, video=hidden.shape[1], padding=_text_padding(state, context))
            return output
        temb = _arg(args, kwargs, 2, "temb")
        text_len = context.shape[1]
        _, _, gate = module.norm.linear(module.norm.silu(temb)).chunk(3, dim=1)
        joint = torch.cat([hidden, context], dim=1) + gate.unsqueeze(1) * self.cache.forecast(state, name)
        return joint[:, :-text_len], joint[:, -text_len:]


class _StackHook(_BlockHook):
    """Coarse granularity: one cached residual for the whole block stack (two tensors per history slot).

    At a skipped step every block passes its input through; the last one adds the forecast residual.
    """

    def __init__(self, cache: FeatureCache, first: bool, last: bool):
        super().__init__(cache)
        self.first, self.last = first, last

    def new_forward(self, module: torch.nn.Module, *args, **kwargs):
        state: _CacheState = self.state.get_state()
        hidden, context = _arg(args, kwargs, 0, "hidden_states"), _arg(args, kwargs, 1, "encoder_hidden_states")
        if state.full:
            if self.first:
                state.stack_input = (hidden, context)
            output = self.fn_ref.original_forward(*args, **kwargs)
            if self.last:
                self.cache.store(state, "stack.img", output[0] - state.stack_input[0], video=output[0].shape[1])
                txt = output[1] - state.stack_input[1]
                self.cache.store(state, "stack.txt", txt, padding=_text_padding(state, txt))
                state.stack_input = None
            return output
        if not self.last:
            return hidden, context
        return hidden + self.cache.forecast(state, "stack.img"), context + self.cache.forecast(state, "stack.txt")


def _blocks(transformer: torch.nn.Module) -> list[torch.nn.Module]:
    return [*transformer.transformer_blocks, *transformer.single_transformer_blocks]


def cached_modules(transformer: torch.nn.Module, granularity: str = "block") -> dict[str, int]:
    """Names of the cached features and their channel counts: what a solver map must cover."""
    dim = transformer.config.num_attention_heads * transformer.config.attention_head_dim
    if granularity == "stack":
        return {"stack.img": dim, "stack.txt": dim}
    names = {}
    for i, _ in enumerate(transformer.transformer_blocks):
        for key in ("attn", "ctx_attn", "ff", "ctx_ff"):
            names[f"double.{i}.{key}"] = dim
    for i, _ in enumerate(transformer.single_transformer_blocks):
        names[f"single.{i}.proj_out"] = dim
    return names


def _check_solver_map(solver_map: SolverMap | None, modules: dict[str, int]) -> None:
    if solver_map is None:
        raise ValueError("cache mode 'hyca' needs a solver map: run `hyca-batch calibrate` or let the job calibrate")
    model = solver_map.metadata.get("model", "an unknown model")
    for name, dim in modules.items():
        table = solver_map.channel_cluster.get(name)
        if table is None:
            raise ValueError(
                f"solver map {solver_map.id} (calibrated on {model}) has no entry for module {name!r}: "
                "it was made for another model or granularity"
            )
        if table.numel() != dim:
            raise ValueError(f"solver map {solver_map.id} has {table.numel()} channels for {name!r}, the model {dim}")


def apply_feature_cache(
    transformer: torch.nn.Module, config: FeatureCacheConfig, solver_map: SolverMap | None = None
) -> FeatureCache:
    """Install the cache (mode ``none`` installs only the pass counter and timer)."""
    if getattr(transformer, "_hyca_cache", None) is not None:
        raise ValueError("a feature cache is already installed on this transformer; remove() it first")
    if config.mode == "hyca":
        _check_solver_map(solver_map, cached_modules(transformer, config.granularity))
    cache = FeatureCache(transformer, config, solver_map)
    HookRegistry.check_if_exists_or_initialize(transformer).register_hook(_StepHook(cache), _STEP_HOOK)
    if config.mode != "none" or config.probe_tokens > 0:
        blocks = _blocks(transformer)
        doubles = len(transformer.transformer_blocks)
        for i, block in enumerate(blocks):
            if config.granularity == "stack":
                hook: ModelHook = _StackHook(cache, first=i == 0, last=i == len(blocks) - 1)
            elif i < doubles:
                hook = _DoubleBlockHook(cache, f"double.{i}")
            else:
                hook = _SingleBlockHook(cache, f"single.{i - doubles}")
            HookRegistry.check_if_exists_or_initialize(block).register_hook(hook, _BLOCK_HOOK)
    HookRegistry.check_if_exists_or_initialize(transformer).invalidate_child_registries_cache()
    transformer._hyca_cache = cache
    return cache

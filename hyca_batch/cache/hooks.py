"""Feature caching hooks for diffusers' video transformers, in the style of ``diffusers.hooks``.

Which blocks a transformer has, which of their outputs are cached and how a skipped block applies its forecasts
is its family's adapter's to say (``models.adapters``); the hooks here are the same for every family.

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

import torch
from diffusers.hooks import HookRegistry, ModelHook
from diffusers.hooks.hooks import BaseState, CacheContext, StateManager

from hyca_batch.cache.probe import DEFAULT_CONTEXT, TrajectoryProbe
from hyca_batch.cache.schedule import is_full_step, schedule_full_steps
from hyca_batch.cache.solver_map import SolverMap
from hyca_batch.cache.solvers import SOLVERS, coefficient_table, max_points
from hyca_batch.config import CacheConfig
from hyca_batch.models.adapters import TEXT, VIDEO, Arguments, BlockKind, family_of

#: The uniform baselines: every channel of every module runs the same solver (taylorseer: its order's).
UNIFORM_SOLVERS = {"fora": "reuse", "foca": "pc", "taylorseer": "taylor{order}"}

_STEP_HOOK = "hyca_step"
_BLOCK_HOOK = "hyca_block"


class _CacheState(BaseState):
    """Everything one cache context (cond or uncond) remembers across the steps of one video."""

    def __init__(self) -> None:
        self.context = DEFAULT_CONTEXT
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
        try:
            name = self.context.name
        except ValueError:  # no pipeline set a cache context: the transformer was called on its own
            self.set_context(CacheContext(DEFAULT_CONTEXT))
            name = DEFAULT_CONTEXT
        state = super().get_state()
        state.context = name
        return state


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
    """The installed cache of one transformer: its config, solver map, state, and pass statistics.

    Every mode forecasts through a solver map: hyca's calibrated one, or for the uniform baselines a one-cluster
    map that gives every channel the same solver, so there is one forecasting path whatever the mode.
    """

    def __init__(
        self,
        transformer: torch.nn.Module,
        config: CacheConfig,
        solver_map: SolverMap | None,
        probe: TrajectoryProbe | None = None,
    ):
        self.transformer = transformer
        self.family = family_of(transformer)
        self.config = config
        self.solver_map = solver_map
        self.probe = probe  # calibration: every step full, every stored feature recorded
        self.states = _States(_CacheState)
        self.stats = PassStats()
        self.bypassed = False  # True: every step full and nothing stored (the uncached baseline)
        self.per_step = False  # this video runs the map's per-step forecasts and schedule (see ``reset``)
        self.full_steps: list[bool] | None = None  # the map's schedule, when per_step
        self._channel_rows: dict[str, torch.Tensor] = {}
        self._points: dict[str, int] = {}
        self._capture_handles: list[torch.utils.hooks.RemovableHandle] = []

    # -- per module solver tables -------------------------------------------------------------------

    def channel_rows(self, name: str, device: torch.device) -> torch.Tensor:
        """(D,) row of the step's coefficient table per channel of a module, on the module's device: the channel's
        cluster for per-step forecasts, its cluster's solver otherwise (cached after first use)."""
        table = self._channel_rows.get(name)
        if table is None or table.device != device:
            smap = self.solver_map
            table = (smap.channel_cluster[name] if self.per_step else smap.channel_solver(name)).to(device)
            self._channel_rows[name] = table
        return table

    def history_points(self, name: str) -> int:
        """Slots a module keeps: as many as its most demanding forecast reads, no more (memory)."""
        if name not in self._points:
            self._points[name] = self.solver_map.history_points(name, per_step=self.per_step)
        return self._points[name]

    def step_coefficients(self, times: list[int], step: int) -> torch.Tensor:
        """The coefficient table of a skipped step: (clusters, H) per-step forecasts or (solvers, H) fixed ones."""
        if self.per_step:
            return self.solver_map.step_coefficients[:, step, : len(times)].float()
        return coefficient_table(times, step).float()

    def parts(self) -> dict[str, str]:
        """Which parts of HyCa this video ran (for its record): the schedule and the kind of forecasts."""
        if self.config.mode != "hyca":
            return {}
        smap = self.solver_map
        if not self.per_step:
            return {"schedule": "uniform", "forecasts": "per-cluster solvers"}
        return {
            "schedule": smap.metadata.get("schedule", "uniform"),
            "forecasts": f"per-step {smap.metadata.get('forecasts', 'fixed')}",
        }

    # -- what the hooks call ------------------------------------------------------------------------

    def is_full(self, step: int) -> bool:
        if self.bypassed or self.probe is not None or self.config.mode == "none":
            return True
        if self.per_step:
            return step >= len(self.full_steps) or self.full_steps[step]
        return is_full_step(step, self.config.interval, self.config.warmup)

    def pass_is_full(self) -> bool:
        """Whether the transformer pass in progress (or the one just finished) computes every block."""
        return self.states.get_state().full

    def store(self, state: _CacheState, name: str, value: torch.Tensor, video: int = 0, padding: int = 0) -> None:
        """Push a full step's feature (``video`` leading video tokens, then text with ``padding`` unattended
        positions at its end, which only the probe cares about)."""
        if self.bypassed:
            return
        if self.probe is not None:
            self.probe.record(state.context, name, value, video, padding)
        if self.config.mode == "none":
            return
        slots = state.history.setdefault(name, [])
        slots.insert(0, value.detach())
        del slots[self.history_points(name) :]

    def forecast(self, state: _CacheState, name: str) -> torch.Tensor:
        """One multiply-add per history slot, with per-channel coefficients gathered from the solver table."""
        slots = state.history[name]
        coef = state.coefficients[:, : len(slots)].to(slots[0].device)  # (rows, h)
        per_channel = coef[self.channel_rows(name, slots[0].device)]  # (D, h)
        per_channel = per_channel.to(slots[0].dtype).T
        out = slots[0] * per_channel[0]
        for value, c in zip(slots[1:], per_channel[1:]):
            out = out.addcmul(value, c)
        return out

    # -- lifecycle ---------------------------------------------------------------------------------

    def reset(self, num_steps: int | None = None) -> None:
        """Forget every context's history, the probe's recording and the pass statistics: call before each video.

        A hyca map's per-step forecasts (and its schedule) are fitted for one step count and schedule: a video of
        ``num_steps`` steps uses them when both match (``--schedule calibrated`` takes the map's schedule,
        ``uniform`` the interval's); any other video forecasts with each cluster's solver on the uniform schedule.
        """
        self.states.reset()
        self.stats = PassStats()
        if self.probe is not None:
            self.probe.reset()
        per_step = False
        smap = self.solver_map
        if self.config.mode == "hyca" and smap.steps is not None and num_steps == smap.steps:
            uniform = schedule_full_steps(num_steps, self.config.interval, self.config.warmup)
            per_step = self.config.schedule == "calibrated" or smap.full_steps() == uniform
        if per_step != self.per_step:
            self._channel_rows, self._points = {}, {}
        self.per_step = per_step
        self.full_steps = smap.full_steps() if per_step else None

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


class _CacheHook(ModelHook):
    """What every hook of the cache has: the cache, its per-context state, and its module's arguments by name."""

    _is_stateful = True

    def __init__(self, cache: FeatureCache):
        super().__init__()
        self.cache, self.state = cache, cache.states
        self.arg: Arguments | None = None

    def initialize_hook(self, module: torch.nn.Module) -> torch.nn.Module:
        self.arg = Arguments(module)
        return module

    def reset_state(self, module: torch.nn.Module) -> torch.nn.Module:
        self.state.reset()
        return module


class _StepHook(_CacheHook):
    """On the transformer: counts steps per context, decides full or skipped, times the pass."""

    def new_forward(self, module: torch.nn.Module, *args, **kwargs):
        state: _CacheState = self.state.get_state()
        state.step += 1
        state.full = self.cache.is_full(state.step) or not state.times
        if not state.full:
            state.coefficients = self.cache.step_coefficients(state.times, state.step)
        state.text_tokens = self.cache.family.valid_text_tokens(lambda name: self.arg(args, kwargs, name))
        hidden = self.arg(args, kwargs, "hidden_states")
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


class _Capture:
    """Forward hooks that remember submodule outputs during a full step."""

    def __init__(self) -> None:
        self.values: dict[str, torch.Tensor | tuple] = {}

    def hook(self, key: str):
        def capture(module, inputs, output):
            self.values[key] = output

        return capture


class _BlockHook(_CacheHook):
    def __init__(self, cache: FeatureCache, name: str = ""):
        super().__init__(cache)
        self.name = name
        self.capture = _Capture()


class _CachedBlockHook(_BlockHook):
    """One block, of a kind its family's adapter describes: a full step runs it and stores the residual-branch
    outputs the kind names (before their gates); a skipped step recomputes only the gates and applies forecasts."""

    def __init__(self, cache: FeatureCache, kind: BlockKind, name: str):
        super().__init__(cache, name)
        self.kind = kind

    def initialize_hook(self, module: torch.nn.Module) -> torch.nn.Module:
        super().initialize_hook(module)
        for key, submodule in self.kind.captured(module).items():
            self.cache._capture_handles.append(submodule.register_forward_hook(self.capture.hook(key)))
        return module

    def new_forward(self, module: torch.nn.Module, *args, **kwargs):
        state: _CacheState = self.state.get_state()
        hidden, context = self.arg(args, kwargs, "hidden_states"), self.arg(args, kwargs, "encoder_hidden_states")
        if state.full:
            output = self.fn_ref.original_forward(*args, **kwargs)
            values, self.capture.values = self.capture.values, {}
            # Text tokens come after the video's in a joint sequence, with their valid tokens first.
            padding = _text_padding(state, context)
            for key, value, where in self.kind.split(values):
                video = 0 if where == TEXT else hidden.shape[1]
                text_padding = 0 if where == VIDEO else padding
                self.cache.store(state, f"{self.name}.{key}", value, video=video, padding=text_padding)
            return output
        temb = self.arg(args, kwargs, "temb")

        def forecast(key: str) -> torch.Tensor:
            return self.cache.forecast(state, f"{self.name}.{key}")

        return self.kind.skip(module, hidden, context, temb, forecast)


class _StackHook(_BlockHook):
    """Coarse granularity: one cached residual for the whole block stack (two tensors per history slot).

    At a skipped step every block passes its input through; the last one adds the forecast residual.
    """

    def __init__(self, cache: FeatureCache, first: bool, last: bool):
        super().__init__(cache)
        self.first, self.last = first, last

    def new_forward(self, module: torch.nn.Module, *args, **kwargs):
        state: _CacheState = self.state.get_state()
        hidden, context = self.arg(args, kwargs, "hidden_states"), self.arg(args, kwargs, "encoder_hidden_states")
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
    return [block for _, _, block in family_of(transformer).block_lists(transformer)]


def cached_modules(transformer: torch.nn.Module, granularity: str = "block") -> dict[str, int]:
    """Names of the cached features and their channel counts: what a solver map must cover."""
    family = family_of(transformer)
    dim = family.hidden_size(transformer)
    if granularity == "stack":
        return {"stack.img": dim, "stack.txt": dim}
    return {
        f"{kind.name}.{index}.{key}": dim for kind, index, _ in family.block_lists(transformer) for key in kind.features
    }


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


def mode_solver_map(config: CacheConfig, modules: dict[str, int], solver_map: SolverMap | None) -> SolverMap | None:
    """The map a mode forecasts with: hyca's calibrated one (checked against the model's modules), a uniform one
    for the baselines, none when nothing is forecast."""
    if config.mode == "none":
        return None
    if config.mode == "hyca":
        _check_solver_map(solver_map, modules)
        return solver_map
    solver = UNIFORM_SOLVERS[config.mode].format(order=config.taylorseer_order)
    return SolverMap.uniform(solver, modules, {"mode": config.mode})


def apply_feature_cache(
    transformer: torch.nn.Module,
    config: CacheConfig,
    solver_map: SolverMap | None = None,
    probe: TrajectoryProbe | None = None,
) -> FeatureCache:
    """Install the cache (mode ``none`` without a probe installs only the pass counter and timer)."""
    if getattr(transformer, "_hyca_cache", None) is not None:
        raise ValueError("a feature cache is already installed on this transformer; remove() it first")
    modules = cached_modules(transformer, config.granularity)
    cache = FeatureCache(transformer, config, mode_solver_map(config, modules, solver_map), probe)
    HookRegistry.check_if_exists_or_initialize(transformer).register_hook(_StepHook(cache), _STEP_HOOK)
    if config.mode != "none" or probe is not None:
        blocks = list(family_of(transformer).block_lists(transformer))
        for i, (kind, index, block) in enumerate(blocks):
            if config.granularity == "stack":
                hook: ModelHook = _StackHook(cache, first=i == 0, last=i == len(blocks) - 1)
            else:
                hook = _CachedBlockHook(cache, kind, f"{kind.name}.{index}")
            HookRegistry.check_if_exists_or_initialize(block).register_hook(hook, _BLOCK_HOOK)
    HookRegistry.check_if_exists_or_initialize(transformer).invalidate_child_registries_cache()
    transformer._hyca_cache = cache
    return cache

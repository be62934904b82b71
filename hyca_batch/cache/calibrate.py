"""HyCa calibration: cluster feature channels by how their trajectories move, pick a solver per cluster.

Input is a probe run's recording (every step computed fully): module name -> (T, K, D) float32, T
denoising steps, K sampled tokens, D channels. Channels are clustered (k-means on dynamics descriptors or on
forecast-error profiles, or one cluster per module), and each cluster gets, at every skipped step, the
forecast with the lowest held-out error when the caching schedule is replayed on the recording exactly as the
runtime will run it (``cache.fit``). The objective is a sum over clusters and steps, so choosing per cluster
can never be worse than the best single solver. A calibrated schedule moves the full steps to where
forecasting is hardest (``cache.schedule.optimize_schedule``).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

import torch

from hyca_batch.cache.fit import CANDIDATES, cluster_grams, fit_schedule, fold_indices, skip_cost_table
from hyca_batch.cache.schedule import optimize_schedule, schedule_full_steps
from hyca_batch.cache.solver_map import SolverMap
from hyca_batch.cache.solvers import SOLVERS, coefficient_table, get_solver, max_points
from hyca_batch.config import CLUSTERING_CHOICES, FORECASTS, SCHEDULES

DESCRIPTORS: tuple[str, ...] = (
    "log_energy",
    "log_diff1_energy",
    "log_diff2_energy",
    "log_curvature_ratio",
    "log_jerk_ratio",
    "log_spectral_flatness",
)

_EPS = 1e-8  # in units of the module's RMS: keeps constant channels finite (log 0, 0/0)
_CHUNK = 512  # channels per block: bounds the float64 working set on big modules
TIE_TOLERANCE = 1e-6  # relative: solver errors this close count as equal (see the choice below)


def _block_descriptors(x: torch.Tensor) -> torch.Tensor:
    """(T, K, d) normalized float64 -> (d, len(DESCRIPTORS)), per token then averaged over tokens."""

    def rms(v: torch.Tensor) -> torch.Tensor:
        return v.square().mean(0).sqrt()

    d1, d2, d3 = x.diff(n=1, dim=0), x.diff(n=2, dim=0), x.diff(n=3, dim=0)
    power = torch.fft.rfft(d1, dim=0).abs().square()
    eps2 = _EPS * _EPS
    columns = [
        torch.log(x.square().mean(0) + eps2),
        torch.log(d1.square().mean(0) + eps2),
        torch.log(d2.square().mean(0) + eps2),
        torch.log((rms(d2) + _EPS) / (rms(d1) + _EPS)),
        torch.log((rms(d3) + _EPS) / (rms(d2) + _EPS)),
        # log(geometric mean / arithmetic mean) of the power spectrum: 0 for white, very negative for tonal
        torch.log(power + eps2).mean(0) - torch.log(power.mean(0) + eps2),
    ]
    return torch.stack([c.mean(0) for c in columns], dim=1)


def channel_descriptors(traj: torch.Tensor) -> torch.Tensor:
    """(D, len(DESCRIPTORS)) float64 dynamics descriptors of each channel of a (T, K, D) trajectory.

    The trajectory is first divided by the module's RMS, so energies compare across modules and the
    ratios and spectral flatness are scale-free; all are logs, with an eps so constant channels stay finite.
    """
    if traj.dim() != 3:
        raise ValueError(f"trajectory must be (T, K, D), got shape {tuple(traj.shape)}")
    if traj.shape[0] < 4:
        raise ValueError(f"descriptors need at least 4 steps (third differences), got {traj.shape[0]}")
    if traj.shape[1] == 0 or traj.shape[2] == 0:
        raise ValueError(f"trajectory has no tokens or channels: shape {tuple(traj.shape)}")
    scale = traj.double().square().mean().sqrt().clamp_min(1e-30)
    blocks = [_block_descriptors(traj[..., i : i + _CHUNK].double() / scale) for i in range(0, traj.shape[2], _CHUNK)]
    return torch.cat(blocks).cpu()


def kmeans(x: torch.Tensor, k: int, *, seed: int = 0, iters: int = 100) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's k-means with k-means++ seeding: labels (M,) in [0, k) and centers (k, F) in x's units.

    Features are standardized first so no descriptor dominates by its units. Deterministic for a seed:
    a CPU ``torch.Generator`` drives the seeding, ties go to the lowest index. A cluster that empties is
    reseeded at the point farthest from its center; with fewer distinct points than k, the extra
    clusters stay empty (duplicate centers) and never receive a label.
    """
    if x.dim() != 2 or x.shape[0] == 0:
        raise ValueError(f"kmeans needs a non-empty (M, F) matrix, got shape {tuple(x.shape)}")
    if k < 1:
        raise ValueError(f"kmeans needs k >= 1, got {k}")
    dtype = x.dtype if x.is_floating_point() else torch.float64
    x = x.detach().cpu().double()
    mean, std = x.mean(0), x.std(0, unbiased=False)
    std = torch.where(std > 1e-12, std, torch.ones_like(std))
    z = (x - mean) / std
    gen = torch.Generator().manual_seed(seed)

    chosen = [int(torch.randint(z.shape[0], (1,), generator=gen))]
    closest = (z - z[chosen[0]]).square().sum(1)
    while len(chosen) < k:
        if closest.sum() <= 0:  # every point already is a center: duplicate, the cluster stays empty
            chosen.append(chosen[0])
            continue
        chosen.append(int(torch.multinomial(closest, 1, generator=gen)))
        closest = torch.minimum(closest, (z - z[chosen[-1]]).square().sum(1))
    centers = z[chosen].clone()

    labels = torch.full((z.shape[0],), -1, dtype=torch.long)
    for _ in range(iters):
        dist = torch.cdist(z, centers).square()
        new_labels = dist.argmin(1)
        if torch.equal(new_labels, labels):
            break
        labels = new_labels
        counts = torch.bincount(labels, minlength=k)
        sums = torch.zeros_like(centers).index_add_(0, labels, z)
        filled = counts > 0
        centers[filled] = sums[filled] / counts[filled].unsqueeze(1).to(z.dtype)
        own = dist.gather(1, labels.unsqueeze(1)).squeeze(1)
        for c in torch.nonzero(~filled).flatten().tolist():
            far = int(own.argmax())
            if own[far] <= 0:
                break  # no point is away from its center: nothing to split
            centers[c] = z[far]
            own[far] = 0.0
    labels = torch.cdist(z, centers).square().argmin(1)
    return labels, (centers * std + mean).to(dtype)


def forecast_errors(
    traj: torch.Tensor, full: Sequence[bool], history: int = 4, step_weights: Sequence[float] | None = None
) -> torch.Tensor:
    """(len(SOLVERS), D) float64: per channel, each solver's squared forecast error summed over skipped
    steps and tokens, replaying the schedule as the runtime does: the forecast at skipped step t uses
    the newest ``history`` full steps before t (newest first, times = step indices).

    ``step_weights`` scales each step's squared error: with a flow-matching sampler a velocity error at step
    t reaches the final latent multiplied by that step's sigma decrement, so weights dsigma_t^2 make this
    the error that the video actually sees (large early feature changes are damped by tiny early steps).
    """
    if step_weights is not None and len(step_weights) != len(full):
        raise ValueError(f"{len(step_weights)} step weights for a {len(full)}-step schedule")
    if traj.dim() != 3:
        raise ValueError(f"trajectory must be (T, K, D), got shape {tuple(traj.shape)}")
    if len(full) != traj.shape[0]:
        raise ValueError(f"schedule has {len(full)} steps, the trajectory {traj.shape[0]}")
    if history < 1:
        raise ValueError(f"history must be >= 1, got {history}")
    errors = torch.zeros(len(SOLVERS), traj.shape[2], dtype=torch.float64, device=traj.device)
    past: list[int] = []  # full steps so far, newest first
    for t, is_full in enumerate(full):
        if is_full:
            past = [t, *past][:history]
            continue
        if not past:
            raise ValueError(f"step {t} is skipped but no full step precedes it: the first step must be full")
        coef = coefficient_table(past, t).to(traj.device)  # (S, H)
        values = traj[past].double()  # (H, K, D)
        forecast = torch.einsum("sh,hkd->skd", coef, values)
        weight = 1.0 if step_weights is None else float(step_weights[t])
        errors += weight * (forecast - traj[t].double()).square().sum(1)
    return errors


CLUSTERINGS = CLUSTERING_CHOICES[1:]  # what "auto" chooses among


def error_profiles(errors: torch.Tensor, traj: torch.Tensor) -> torch.Tensor:
    """(D, S) clustering features from a module's (S, D) forecast errors: each solver's error relative to the
    channel's energy, as a log, so channels group by which solvers fail them and how badly."""
    energy = traj.double().square().sum((0, 1)).clamp_min(1e-30)
    return torch.log(errors.double().T / energy.unsqueeze(1) + 1e-12)


def _cluster(
    kind: str, descriptors: list[torch.Tensor], profiles: list[torch.Tensor], clusters: int, seed: int
) -> tuple[torch.Tensor, int]:
    """Labels of every (module, channel), modules in sorted order, and how many clusters they index."""
    if kind == "descriptors":
        return kmeans(torch.cat(descriptors), clusters, seed=seed)[0], clusters
    if kind == "errors":
        return kmeans(torch.cat(profiles), clusters, seed=seed)[0], clusters
    if kind == "modules":
        return torch.cat([torch.full((d.shape[0],), i, dtype=torch.long) for i, d in enumerate(descriptors)]), len(
            descriptors
        )
    raise ValueError(f"unknown clustering {kind!r}; choose from auto, {', '.join(CLUSTERINGS)}")


def calibrate(
    trajectories: dict[str, torch.Tensor],
    *,
    num_steps: int,
    interval: int,
    clusters: int,
    warmup: int = 0,
    seed: int = 0,
    candidates: Sequence[str] = SOLVERS,
    metadata: dict | None = None,
    step_weights: Sequence[float] | None = None,
    prompts: int = 1,
    forecasts: str = "fixed",
    schedule: str = "uniform",
    clustering: str = "descriptors",
    full_steps: int = 0,
) -> SolverMap:
    """Cluster all (module, channel) pairs and choose, per cluster and skipped step, the forecast with the lowest
    held-out error; with ``schedule="calibrated"`` also where the full steps go.

    ``trajectories`` hold ``prompts`` prompts concatenated over tokens; they are the folds of the held-out
    error (``cache.fit``). ``forecasts="learned"`` lets a ridge fit over the history compete with the fixed
    solvers. ``clustering`` is ``descriptors`` (k-means on dynamics descriptors), ``errors`` (k-means on the
    channels' forecast-error profiles), ``modules`` (one cluster per module) or ``auto`` (the one of those with
    the lowest held-out error). ``full_steps`` sets the calibrated schedule's budget of full passes (0: as many
    as the uniform schedule at ``interval`` has; then it is kept only where it beats uniform). The per-cluster
    solver over the uniform schedule (``cluster_solver``) is kept too: it is what a video of another step count
    or schedule falls back to. Errors are divided by each module's mean squared feature so large-magnitude
    modules don't dominate.
    """
    if not trajectories:
        raise ValueError("calibration needs at least one recorded module")
    candidates = tuple(dict.fromkeys(candidates))
    if not candidates:
        raise ValueError("calibration needs at least one candidate solver")
    for name in candidates:
        get_solver(name)
    if forecasts not in FORECASTS:
        raise ValueError(f"unknown forecasts {forecasts!r}; choose from {', '.join(FORECASTS)}")
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; choose from {', '.join(SCHEDULES)}")
    kinds = CLUSTERINGS if clustering == "auto" else (clustering,)
    if any(k not in CLUSTERINGS for k in kinds):
        raise ValueError(f"unknown clustering {clustering!r}; choose from auto, {', '.join(CLUSTERINGS)}")
    full = schedule_full_steps(num_steps, interval, warmup)
    budget = full_steps or sum(full)
    if not 1 <= budget <= num_steps or (full_steps and schedule != "calibrated"):
        raise ValueError(f"a budget of {budget} full steps needs the calibrated schedule and 1..{num_steps} steps")
    history = max_points(candidates)

    modules = sorted(trajectories)  # order-independent: the same recording gives the same map
    descriptors, profiles, errors, dims = [], [], [], []
    for name in modules:
        traj = trajectories[name]
        if traj.dim() != 3 or traj.shape[0] != num_steps:
            raise ValueError(f"trajectory of {name!r} must be ({num_steps}, K, D), got {tuple(traj.shape)}")
        descriptors.append(channel_descriptors(traj))
        module_errors = forecast_errors(traj, full, history, step_weights).cpu()
        profiles.append(error_profiles(module_errors, traj))
        scale = traj.double().square().mean().clamp_min(1e-30)
        errors.append(module_errors / scale)
        dims.append(traj.shape[2])
    learned = forecasts == "learned"

    # Every clustering asked for, scored by the held-out error of its forecasts over the uniform schedule.
    scored = {}
    for kind in kinds:
        labels, count = _cluster(kind, descriptors, profiles, clusters, seed)
        grams = cluster_grams(trajectories, dict(zip(modules, labels.split(dims))), count, prompts)
        fit = fit_schedule(grams, full, step_weights, learned=learned, allowed=candidates)
        scored[kind] = (labels, count, grams, fit)
    chosen = min(kinds, key=lambda k: scored[k][3].error)  # ties: the first listed
    labels, clusters, grams, uniform_fit = scored[chosen]
    final = uniform_fit
    calibrated_error = None
    if schedule == "calibrated":
        gap = -(-num_steps // budget)  # the mean gap, rounded up: the search allows twice it
        max_gap = min(num_steps, max(2 * gap, gap + 2))
        cost = skip_cost_table(grams, max_gap, step_weights, learned=learned, allowed=candidates)
        same_budget = budget == sum(full)
        proposal = optimize_schedule(cost, budget, full if same_budget else None)
        if proposal != full:
            calibrated = fit_schedule(grams, proposal, step_weights, learned=learned, allowed=candidates)
            calibrated_error = calibrated.error
            # At the uniform schedule's budget, uniform stands unless the calibrated one is better held out.
            if calibrated.error < uniform_fit.error or not same_budget:
                final = calibrated

    error = torch.cat(errors, dim=1)  # (S, M)
    cluster_error = torch.zeros(clusters, len(SOLVERS), dtype=torch.float64).index_add_(0, labels, error.T)
    allowed = torch.tensor([SOLVERS.index(c) for c in candidates])
    # Ties go to the first (simplest) candidate. Near-ties too: solvers that coincide on a short history
    # (ab3 falls back to ab2's points) score equal up to float noise, and the noise of another summation
    # order (sequence parallelism's) must not flip the choice.
    candidate_error = cluster_error[:, allowed]
    tied = candidate_error <= candidate_error.min(1, keepdim=True).values * (1 + TIE_TOLERANCE)
    cluster_solver = allowed[tied.int().argmax(1)]

    per_solver_total = cluster_error.sum(0)
    mix_total = float(cluster_error.gather(1, cluster_solver.unsqueeze(1)).sum())
    best_uniform = min(candidates, key=lambda s: float(per_solver_total[SOLVERS.index(s)]))
    best_total = float(per_solver_total[SOLVERS.index(best_uniform)])
    if mix_total > best_total * (1 + 1e-9) + 1e-300:
        raise AssertionError(f"per-cluster choice ({mix_total}) worse than uniform {best_uniform} ({best_total})")

    skipped = final.candidate >= 0
    used = final.candidate[skipped]
    sizes = torch.bincount(labels, minlength=clusters)
    meta = {
        "kind": "hyca",
        "num_inference_steps": num_steps,
        "clusters": clusters,
        "interval": interval,
        "warmup": warmup,
        "seed": seed,
        "history": history,
        "candidates": list(candidates),
        "descriptors": list(DESCRIPTORS),
        "modules": len(modules),
        "channels": sum(dims),
        "tokens": int(trajectories[modules[0]].shape[1]),
        "cluster_solvers": [SOLVERS[i] for i in cluster_solver.tolist()],
        "cluster_sizes": sizes.tolist(),
        "cluster_errors": [float(cluster_error[c, s]) for c, s in enumerate(cluster_solver.tolist())],
        "total_error": mix_total,
        "uniform_errors": {s: float(per_solver_total[SOLVERS.index(s)]) for s in candidates},
        "best_uniform_solver": best_uniform,
        # The per-step forecasts (what the runtime uses when a video matches the map's step count):
        "folds": len(fold_indices(trajectories[modules[0]].shape[1], prompts)),
        "forecasts": forecasts,
        "schedule": "calibrated" if final is not uniform_fit else "uniform",
        "schedule_asked": schedule,
        "full_steps_budget": budget,
        "full_steps": [t for t, f in enumerate(final.schedule) if f],
        "clustering": chosen,
        "clustering_held_out": {k: scored[k][3].error for k in kinds},
        "held_out_error": {"uniform_schedule": uniform_fit.error, "calibrated_schedule": calibrated_error},
        "step_forecasts": {name: int((used == i).sum()) for i, name in enumerate(CANDIDATES) if int((used == i).sum())},
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    meta.update(metadata or {})
    channel_cluster = dict(zip(modules, (c.clone() for c in labels.split(dims))))
    return SolverMap(
        SOLVERS,
        cluster_solver,
        channel_cluster,
        cluster_error,
        meta,
        schedule=torch.tensor(final.schedule),
        step_coefficients=final.coefficients,
        step_choice=final.candidate,
    )

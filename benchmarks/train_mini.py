"""Train the ``mini`` HunyuanVideo on synthetic captioned clips: two CPU cores, 43 minutes.

    .venv/bin/python benchmarks/train_mini.py            # writes hyca_batch/models/weights/mini
    # the cache benchmark's second model: deeper, another seed, mini's VAE (22 minutes, one core)
    .venv/bin/python benchmarks/train_mini.py --out benchmarks/models/mini-deep --seed 1 --double-blocks 2 \
        --single-blocks 4 --steps 2500 --eval-every 1250 --widen-at 1000000 --vae-from hyca_batch/models/weights/mini

The mini latent space is fixed (``hyca_batch.training.mini.latent_target``: 4x4-pooled RGB per video
frame), so the two trained components do not depend on each other and train at the same time, each in
its own process with one torch thread (two threads per process on two shared cores made every step
many times slower: OpenMP threads spin-waiting on a busy core). The VAE ends after ~17 minutes; from
step ``--widen-at`` the transformer runs two threads (0.33 instead of 0.5 s a step):

* VAE (AutoencoderKLHunyuanVideo): the decoder learns to reconstruct 5-frame clips (the causal first
  latent frame plus one 4-frame group: the structure of every longer clip) from noisy target latents
  ``z + sigma * eps``; the encoder learns the posterior N(z, sigma^2) itself (mean -> z, log-variance ->
  2 log sigma), so ``decode(encode(x).sample())`` is exactly what the decoder was trained on. It trains
  on 32x32 crops around the object (a crop of a clip is a crop of its latent; a quarter of the cost of
  whole frames), and foreground pixels weigh more: the object is ~5% of a frame.
* Transformer (HunyuanVideoTransformer3DModel): HunyuanVideo's flow matching as
  FlowMatchEulerDiscreteScheduler samples it: x_s = s * noise + (1 - s) * x0, target v = noise - x0,
  timestep = 1000 s, s from the shifted-uniform distribution the inference schedule uses, constant
  embedded guidance 6.0 x 1000, text through the pipeline's own ``encode_prompt`` (default template,
  frozen tiny Llama + CLIP). An EMA of the weights is what gets saved. Held-out prompts' flow loss is
  printed as it trains.

Then the pipeline is assembled, the held-out prompts (never seen in training) are generated through it
and measured (``synthetic.measure_clip``, the measurement of the learned-model test), and it is saved
with ``save_pretrained`` plus ``hyca_batch.json`` recording the arguments, losses and accuracy.
Everything is deterministic given ``--seed`` (and the same torch build).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import multiprocessing as mp
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hyca_batch.models import MINI_DEFAULTS, MINI_DIR  # noqa: E402
from hyca_batch.models.metadata import write_model_metadata  # noqa: E402
from hyca_batch.training import synthetic as S  # noqa: E402
from hyca_batch.training.mini import (  # noqa: E402
    MINI_GUIDANCE,
    MINI_SCHEDULER_SHIFT,
    build_untrained_mini_pipeline,
    latent_preview,
    latent_target,
)


def stage_args(args: argparse.Namespace, stage: str) -> dict:
    """The arguments a stage ran with, for the model's hyca_batch.json (stages may run as separate commands)."""
    root = Path(__file__).resolve().parents[1]

    def plain(v):
        if isinstance(v, Path):
            v = v.resolve()
            return str(v.relative_to(root)) if v.is_relative_to(root) else str(v)
        return v

    return {k: plain(v) for k, v in vars(args).items()} | {"stage": stage}


def log(stage: str, msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {stage:<11} {msg}", flush=True)


def setup_torch(threads: int) -> None:
    torch.set_num_threads(threads)
    # Without this, small weights reach denormal floats after some optimizer steps and every conv
    # runs ~10x slower on CPU (measured: 7 s vs 0.6 s per VAE step).
    torch.set_flush_denormal(True)


def to_video_tensor(clips: np.ndarray) -> torch.Tensor:
    """(B, F, H, W, 3) uint8 -> (B, 3, F, H, W) float in [-1, 1], as the pipeline's VAE sees it."""
    return torch.from_numpy(clips).permute(0, 4, 1, 2, 3).float().div(127.5).sub(1.0)


def clips_for(specs: list[S.ClipSpec], frames: int | None = None) -> np.ndarray:
    out = np.stack([S.make_clip(s) for s in specs])
    return out[:, :frames] if frames else out


def cosine_lr(total: int, warmup: int, floor: float):
    return lambda i: (
        min(1.0, (i + 1) / warmup) * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(i, total) / total)))
    )


def progress(stage: str, step: int, total: int, t0: float, text: str) -> None:
    rate = (time.time() - t0) / step
    log(stage, f"step {step}/{total} {text} ({rate:.2f} s/step, eta {rate * (total - step) / 60:.1f} min)")


# --- VAE -------------------------------------------------------------------------------------------


@torch.no_grad()
def vae_roundtrip(vae, seed: int, n: int = 32) -> tuple[float, int]:
    """Held-out combinations through encode -> decode: (mse, clips whose color and motion read back)."""
    vae.eval()
    held = S.sample_specs(n, seed + 4, "heldout")
    x = to_video_tensor(clips_for(held))
    y = vae.decode(vae.encode(x).latent_dist.mean).sample
    frames = ((y + 1) * 127.5).clamp(0, 255).round().byte().permute(0, 2, 3, 4, 1).numpy()
    measured = [S.measure_clip(f) for f in frames]
    ok = sum(m.color == s.color and m.motion == s.motion for m, s in zip(measured, held))
    return (y - x).pow(2).mean().item(), ok


def crop_around_objects(x: torch.Tensor, specs: list[S.ClipSpec], size: int, gen: torch.Generator) -> torch.Tensor:
    """A ``size`` x ``size`` window of each clip, on the 4-pixel latent grid, near the object's path.

    A crop of the video is exactly a crop of its (fixed) latent, and the VAE is convolutional, so it
    learns from crops what it does on whole frames at a quarter of the cost; a random window would
    mostly hold background (the object is ~5% of a frame).
    """
    step = 4
    h, w = x.shape[-2:]
    out = []
    for clip, spec in zip(x, specs):
        cx, cy = (spec.x0 + spec.x1) / 2, (spec.y0 + spec.y1) / 2
        jx, jy = (torch.rand(2, generator=gen) * 16 - 8).tolist()
        left = int(min(max(round((cx - size / 2 + jx) / step) * step, 0), w - size))
        top = int(min(max(round((cy - size / 2 + jy) / step) * step, 0), h - size))
        out.append(clip[..., top : top + size, left : left + size])
    return torch.stack(out)


def train_vae(args: argparse.Namespace, work: Path, done=None) -> None:
    """``done`` (an Event) is set when this stage ends, however it ends: the transformer waits on it
    before it takes the second core."""
    try:
        _train_vae(args, work)
    finally:
        if done is not None:
            done.set()


def _train_vae(args: argparse.Namespace, work: Path) -> None:
    setup_torch(1)
    pipe = build_untrained_mini_pipeline(args.seed)
    vae = pipe.vae.train()
    stage = "vae"
    log(
        stage,
        f"{sum(p.numel() for p in vae.parameters()) / 1e6:.2f} M params, {args.vae_steps} steps of "
        f"{args.vae_batch} five-frame {args.vae_crop}x{args.vae_crop} crops, latent noise sigma {args.vae_sigma}",
    )
    specs = S.sample_specs(args.vae_steps * args.vae_batch, args.seed + 1, "train")
    opt = torch.optim.AdamW(vae.parameters(), lr=args.vae_lr, betas=(0.9, 0.99), weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, cosine_lr(args.vae_steps, 20, 0.05))
    gen = torch.Generator().manual_seed(args.seed + 2)
    log_var = 2.0 * math.log(args.vae_sigma)
    recs, t0 = [], time.time()
    for step in range(args.vae_steps):
        batch = specs[step * args.vae_batch : (step + 1) * args.vae_batch]
        full = to_video_tensor(clips_for(batch, 5))
        # The corner pixel of a whole frame is always background (objects stay >= 1 px from the edges).
        fg = ((full - full[..., :1, :1]).abs().amax(1, keepdim=True) > 0.1).float()
        x, fg = crop_around_objects(torch.cat([full, fg], 1), batch, args.vae_crop, gen).split([3, 1], 1)
        z = latent_target(x)
        y = vae.decode(z + args.vae_sigma * torch.randn(z.shape, generator=gen)).sample
        w = 1.0 + (args.vae_fg_weight - 1.0) * fg
        w = w / w.mean()
        rec = (w * (y - x).pow(2)).mean() + 0.5 * (w * (y - x).abs()).mean()
        posterior = vae.encode(x).latent_dist
        enc = (posterior.mean - z).pow(2).mean() + 0.01 * (posterior.logvar - log_var).pow(2).mean()
        loss = rec + args.vae_enc_weight * enc
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        sched.step()
        recs.append(rec.item())
        if (step + 1) % 50 == 0 or step + 1 == args.vae_steps:
            progress(
                stage,
                step + 1,
                args.vae_steps,
                t0,
                f"reconstruction {np.mean(recs[-50:]):.4f} encoder {enc.item():.5f}",
            )
        if (step + 1) % 500 == 0 or step + 1 == args.vae_steps:
            mse, ok = vae_roundtrip(vae, args.seed)
            vae.train()
            log(
                stage,
                f"held-out round trip (whole frames): mse {mse:.4f}, color and motion read back for {ok}/32 clips",
            )
            vae.save_pretrained(work / "vae", safe_serialization=True)
    (work / "vae.json").write_text(
        json.dumps(
            {
                "args": stage_args(args, "vae"),
                "final_reconstruction_loss": float(np.mean(recs[-50:])),
                "heldout_roundtrip_mse": mse,
                "heldout_roundtrip_correct": ok,
                "heldout_roundtrip_n": 32,
                "wall_s": round(time.time() - t0),
            }
        )
    )


# --- transformer -----------------------------------------------------------------------------------


@torch.no_grad()
def encode_prompts(pipe, prompts: list[str]):
    """Every prompt through the pipeline's own text path, cut to the longest real prompt (padded tokens
    are masked out of attention, so the cut leaves the transformer's output unchanged)."""
    embeds, pooled, masks = [], [], []
    for p in prompts:
        e, po, m = pipe.encode_prompt(prompt=p, device=torch.device("cpu"))
        embeds.append(e[0])
        pooled.append(po[0])
        masks.append(m[0])
    embeds_t, pooled_t, masks_t = torch.stack(embeds), torch.stack(pooled), torch.stack(masks)
    length = int(masks_t.sum(1).max())
    return embeds_t[:, :length].contiguous(), pooled_t, masks_t[:, :length].contiguous()


@torch.no_grad()
def latents_for(specs: list[S.ClipSpec], scale: float, batch: int = 64) -> torch.Tensor:
    return (
        torch.cat(
            [latent_target(to_video_tensor(clips_for(specs[i : i + batch]))) for i in range(0, len(specs), batch)]
        )
        * scale
    )


def sample_sigmas(n: int, gen: torch.Generator) -> torch.Tensor:
    u = torch.rand(n, generator=gen)
    shift = MINI_SCHEDULER_SHIFT
    return shift * u / (1 + (shift - 1) * u)


def flow_loss(model, x0, text, sigma, noise, guidance) -> torch.Tensor:
    embeds, pooled, masks = text
    s = sigma.view(-1, 1, 1, 1, 1)
    pred = model(
        hidden_states=s * noise + (1 - s) * x0,
        timestep=sigma * 1000.0,
        encoder_hidden_states=embeds,
        encoder_attention_mask=masks,
        pooled_projections=pooled,
        guidance=guidance,
        return_dict=False,
    )[0]
    return (pred - (noise - x0)).pow(2).mean()


def train_transformer(args: argparse.Namespace, work: Path, scale: float, vae_done=None) -> None:
    """One torch thread while the VAE trains on the other core; at step ``--widen-at`` it waits for the
    VAE stage to end (``vae_done``; None when this stage runs alone) and goes on with two. The switch
    is at a fixed step, not whenever the VAE happens to finish, so the run stays deterministic."""
    setup_torch(1)
    stage = "transformer"
    pipe = build_untrained_mini_pipeline(args.seed, double_blocks=args.double_blocks, single_blocks=args.single_blocks)
    pipe.set_progress_bar_config(disable=True)
    specs = S.sample_specs(args.clips, args.seed + 3, "train")
    held = S.sample_specs(64, args.seed + 4, "heldout")
    t0 = time.time()
    latents, held_latents = latents_for(specs, scale), latents_for(held, scale)
    names = sorted({s.prompt for s in specs} | {s.prompt for s in held})
    index = {p: i for i, p in enumerate(names)}
    embeds, pooled, masks = encode_prompts(pipe, names)
    prompt_ids = torch.tensor([index[s.prompt] for s in specs])
    held_ids = torch.tensor([index[s.prompt] for s in held])
    log(
        stage,
        f"{len(specs)} clips -> latents {tuple(latents.shape[1:])}, {len(names)} prompts encoded "
        f"(longest {embeds.shape[1]} tokens) in {time.time() - t0:.0f}s",
    )

    tr = pipe.transformer.train()
    # The frozen tiny Llama's prompt embeddings are raw token embeddings of std ~0.02: at the default
    # init the text entered the transformer ~50x weaker than everything else, and after 1,500 steps
    # samples still ignored their color word. Initialize the two layers that read them as if the
    # embeddings were standardized.
    text_std = embeds[masks.bool()].std().item()
    with torch.no_grad():
        for layer in (tr.context_embedder.proj_in, tr.context_embedder.time_text_embed.text_embedder.linear_1):
            layer.weight.mul_(1.0 / text_std)
    log(stage, f"prompt embedding std {text_std:.4f}: text input layers scaled by {1.0 / text_std:.1f} at init")
    ema = copy.deepcopy(tr).eval().requires_grad_(False)
    log(
        stage, f"{sum(p.numel() for p in tr.parameters()) / 1e6:.2f} M params, {args.steps} steps of batch {args.batch}"
    )
    opt = torch.optim.AdamW(tr.parameters(), lr=args.lr, weight_decay=0.01, betas=(0.9, 0.99))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, cosine_lr(args.steps, 50, 0.05))
    gen = torch.Generator().manual_seed(args.seed + 5)
    guidance = torch.full((args.batch,), MINI_GUIDANCE * 1000.0)
    # Fixed noise and sigmas for the held-out loss, so its values are comparable across steps.
    held_gen = torch.Generator().manual_seed(args.seed + 6)
    held_noise = torch.randn(held_latents.shape, generator=held_gen)
    held_sigma = sample_sigmas(len(held), held_gen)
    held_text = (embeds[held_ids], pooled[held_ids], masks[held_ids])
    losses: list[float] = []
    history: list[dict] = []
    t0 = time.time()
    for step in range(args.steps):
        if step == args.widen_at:
            if vae_done is not None and not vae_done.is_set():
                log(stage, f"step {step}: waiting for the VAE stage to end before taking its core")
                vae_done.wait()
            torch.set_num_threads(2)
            log(stage, f"step {step}: two torch threads from here on")
        idx = torch.randint(len(specs), (args.batch,), generator=gen)
        p = prompt_ids[idx]
        x0 = latents[idx]
        loss = flow_loss(
            tr,
            x0,
            (embeds[p], pooled[p], masks[p]),
            sample_sigmas(args.batch, gen),
            torch.randn(x0.shape, generator=gen),
            guidance,
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(tr.parameters(), 1.0)
        opt.step()
        sched.step()
        with torch.no_grad():
            decay = min(args.ema, (1 + step) / (10 + step))
            for pe, pt in zip(ema.parameters(), tr.parameters()):
                pe.lerp_(pt, 1 - decay)
        losses.append(loss.item())
        if (step + 1) % 100 == 0 or step + 1 == args.steps:
            progress(
                stage, step + 1, args.steps, t0, f"loss {np.mean(losses[-100:]):.4f} lr {sched.get_last_lr()[0]:.1e}"
            )
        if (step + 1) % args.eval_every == 0 or step + 1 == args.steps:
            # Held-out prompts generated with the EMA weights and read straight from the latents
            # (latent_preview), so this stage needs no decoder; the EMA is saved each time.
            pipe.register_modules(transformer=ema)
            with torch.no_grad():
                held_loss = flow_loss(
                    ema,
                    held_latents,
                    held_text,
                    held_sigma,
                    held_noise,
                    torch.full((len(held),), MINI_GUIDANCE * 1000.0),
                ).item()
            acc = evaluate(pipe, preview_scale=scale)
            history.append(
                {
                    "step": step + 1,
                    "train_loss": float(np.mean(losses[-100:])),
                    "heldout_loss": held_loss,
                    "heldout_latent_eval": {k: v for k, v in acc.items() if k != "rows"},
                }
            )
            log(
                stage,
                f"step {step + 1}: held-out flow loss (EMA) {held_loss:.4f}; held-out prompts read from "
                f"the latents: color {acc['color']:.2f}, motion {acc['motion']:.2f}, both {acc['both']:.2f} "
                f"(n={acc['n']})",
            )
            ema.save_pretrained(work / "transformer", safe_serialization=True)
            (work / "transformer.json").write_text(
                json.dumps(
                    {
                        "args": stage_args(args, "transformer"),
                        "history": history,
                        "heldout_latent_eval": acc,
                        "wall_s": round(time.time() - t0),
                    }
                )
            )


# --- assembly and evaluation -----------------------------------------------------------------------


def generate(pipe, prompt: str, seed: int, preview_scale: float | None = None) -> np.ndarray:
    """(F, H, W, 3) uint8 frames: through the VAE decoder, or, with ``preview_scale`` (the latent
    scaling factor), the pooled frames read straight from the latent (no decoder needed)."""
    d = MINI_DEFAULTS
    out = pipe(
        prompt=prompt,
        height=d.height,
        width=d.width,
        num_frames=d.num_frames,
        num_inference_steps=d.num_inference_steps,
        guidance_scale=d.guidance_scale,
        generator=torch.Generator(device="cpu").manual_seed(seed),
        output_type="latent" if preview_scale else "np",
        return_dict=False,
    )[0]
    if preview_scale:
        video = (latent_preview(out / preview_scale)[0].permute(1, 2, 3, 0).numpy() + 1) / 2
    else:
        video = out[0]
    return (np.clip(video, 0, 1) * 255).round().astype(np.uint8)


def evaluate(pipe, seed: int = 1000, preview_scale: float | None = None) -> dict:
    rows = []
    for i, combo in enumerate(S.heldout_test_combinations()):
        m = S.measure_clip(generate(pipe, S.make_prompt(*combo), seed + i, preview_scale))
        rows.append(
            {
                "prompt": S.make_prompt(*combo),
                "color": m.color,
                "motion": m.motion,
                "color_ok": m.color == combo[0],
                "motion_ok": m.motion == combo[2],
            }
        )
    n = len(rows)
    return {
        "n": n,
        "color": sum(r["color_ok"] for r in rows) / n,
        "motion": sum(r["motion_ok"] for r in rows) / n,
        "both": sum(r["color_ok"] and r["motion_ok"] for r in rows) / n,
        "rows": rows,
    }


def latent_scale(seed: int, n: int = 512) -> float:
    """1 / std of the training latents, the VAE's scaling_factor: the transformer sees unit-scale latents."""
    return 1.0 / latents_for(S.sample_specs(n, seed + 3, "train"), 1.0).std().item()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=MINI_DIR)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--vae-steps", type=int, default=2000)
    ap.add_argument("--vae-batch", type=int, default=4)
    ap.add_argument("--vae-crop", type=int, default=32, help="VAE training crop (pixels, a multiple of 4)")
    ap.add_argument("--vae-lr", type=float, default=2e-3)
    ap.add_argument(
        "--vae-sigma", type=float, default=0.05, help="posterior std: latent noise the decoder is trained on"
    )
    ap.add_argument("--vae-fg-weight", type=float, default=3.0, help="loss weight of foreground pixels")
    ap.add_argument("--vae-enc-weight", type=float, default=1.0)
    ap.add_argument("--clips", type=int, default=4000, help="training clips for the transformer")
    ap.add_argument("--steps", type=int, default=6500, help="transformer steps")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--ema", type=float, default=0.998)
    ap.add_argument("--double-blocks", type=int, default=1)
    ap.add_argument("--single-blocks", type=int, default=2)
    ap.add_argument(
        "--widen-at",
        type=int,
        default=1700,
        help="transformer step from which it runs two threads, once the VAE stage has ended",
    )
    ap.add_argument("--eval-every", type=int, default=1500, help="transformer steps between held-out evaluations")
    ap.add_argument(
        "--vae-from",
        type=Path,
        default=None,
        help="reuse this trained model directory's VAE (the latent space is fixed) and train only the transformer",
    )
    ap.add_argument(
        "--stage",
        choices=("all", "vae", "transformer", "assemble"),
        default="all",
        help="run one stage in this process (work files under OUT.work), or all (both in parallel)",
    )
    args = ap.parse_args()

    setup_torch(1)
    torch.manual_seed(args.seed)
    t_start = time.time()
    work = args.out.with_name(args.out.name + ".work")
    work.mkdir(parents=True, exist_ok=True)
    scale = latent_scale(args.seed)
    log("main", f"latent std {1 / scale:.4f} -> scaling_factor {scale:.4f}; work files in {work}")
    if args.stage == "vae":
        train_vae(args, work)
        return
    if args.stage == "transformer":
        train_transformer(args, work, scale)
        return
    if args.stage == "all" and args.vae_from is not None:
        # The latent space is fixed, so another model's VAE fits: only the transformer trains (one process).
        shutil.rmtree(work / "vae", ignore_errors=True)
        shutil.copytree(args.vae_from / "vae", work / "vae")
        (work / "vae.json").write_text(json.dumps({"reused_from": str(args.vae_from)}) + "\n")
        train_transformer(args, work, scale)
    elif args.stage == "all":
        ctx = mp.get_context("spawn")
        vae_done = ctx.Event()
        procs = [
            ctx.Process(target=train_vae, args=(args, work, vae_done), name="vae"),
            ctx.Process(target=train_transformer, args=(args, work, scale, vae_done), name="transformer"),
        ]
        for proc in procs:
            proc.start()
        for proc in procs:
            proc.join()
        failed = [p.name for p in procs if p.exitcode != 0]
        if failed:
            raise SystemExit(f"stage(s) {', '.join(failed)} failed; see their output above")

    from diffusers import AutoencoderKLHunyuanVideo, HunyuanVideoTransformer3DModel

    pipe = build_untrained_mini_pipeline(args.seed)
    pipe.set_progress_bar_config(disable=True)
    vae = AutoencoderKLHunyuanVideo.from_pretrained(work / "vae")
    vae.register_to_config(scaling_factor=scale)
    pipe.register_modules(
        vae=vae.eval(), transformer=HunyuanVideoTransformer3DModel.from_pretrained(work / "transformer").eval()
    )
    t0 = time.time()
    acc = evaluate(pipe)
    log(
        "main",
        f"held-out prompts (n={acc['n']}): color {acc['color']:.2f}, motion {acc['motion']:.2f}, "
        f"both {acc['both']:.2f} ({time.time() - t0:.0f}s)",
    )
    for row in acc["rows"]:
        log("main", f"  {row['prompt']!r}: {row['color']} {row['motion']}")
    info = {
        "seed": args.seed,
        "training": {
            "script": "benchmarks/train_mini.py",
            "args": stage_args(args, args.stage),
            "vae": json.loads((work / "vae.json").read_text()),
            "transformer": json.loads((work / "transformer.json").read_text()),
            "heldout_eval": acc,
            "wall_s": round(time.time() - t_start),
            "torch": torch.__version__,
        },
    }
    tmp = args.out.with_name(args.out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    pipe.save_pretrained(tmp, safe_serialization=True)
    write_model_metadata(tmp, MINI_DEFAULTS, preset="mini", **info)
    shutil.rmtree(args.out, ignore_errors=True)
    tmp.rename(args.out)
    log(
        "main",
        f"saved {args.out} ({sum(f.stat().st_size for f in args.out.rglob('*') if f.is_file()) / 1e6:.1f} MB) "
        f"in {(time.time() - t_start) / 60:.1f} min",
    )


if __name__ == "__main__":
    main()

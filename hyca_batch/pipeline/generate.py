"""One request to frames, timed stage by stage, through the feature cache.

The pipeline call is split into its three stages (text encoding, the denoising loop, VAE decoding) by
calling ``encode_prompt`` and the VAE ourselves around a latent-output pipeline call: the record's time
breakdown then measures exactly the diffusers code a user would run, with no copy of the loop here. The
cache's step hook is always installed (mode ``none`` only counts and times passes), so every record has
the same pass counts and the speedup estimate means the same thing in every mode.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch

from hyca_batch.cache import SolverMap, TrajectoryProbe, apply_feature_cache
from hyca_batch.config import CacheConfig
from hyca_batch.models import LoadedModel
from hyca_batch.parallel import SequenceParallel
from hyca_batch.types import GenerationResult, Request


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class VideoGenerator:
    """Generates videos with one loaded model and one installed cache; one per replica, reused for every request.

    Under sequence parallelism (``parallel``, installed on the transformer by ``apply_sequence_parallel``)
    every rank runs this with the same request; the latents are gathered after the loop, and rank 0 alone
    decodes (tiled). With a ``probe`` every step is full and the cached features are recorded (calibration).
    """

    def __init__(
        self,
        model: LoadedModel,
        cache: CacheConfig | None = None,
        solver_map: SolverMap | None = None,
        parallel: SequenceParallel | None = None,
        probe: TrajectoryProbe | None = None,
    ):
        self.model = model
        self.pipeline = model.pipeline
        self.parallel = parallel
        if probe is not None and parallel is not None and parallel.world > 1:
            probe.gather_video = parallel.gather_tokens
        self.cache = apply_feature_cache(self.pipeline.transformer, cache or CacheConfig(), solver_map, probe)

    @contextmanager
    def uncached(self) -> Iterator[None]:
        """Every step full: the reference a cached video is measured against, with the same model in memory."""
        self.cache.bypassed = True
        try:
            yield
        finally:
            self.cache.bypassed = False

    @torch.inference_mode()
    def __call__(self, request: Request) -> GenerationResult:
        pipe, device = self.pipeline, self.model.device
        # A CPU generator makes the initial noise, and so the video, the same on any device.
        generator = torch.Generator(device="cpu").manual_seed(request.seed)
        self.cache.reset(request.num_inference_steps)  # no state crosses from one video to the next

        t0 = time.perf_counter()
        # Leading/trailing whitespace would shift the prompt template's crop boundary.
        prompt_embeds, pooled_embeds, attention_mask = pipe.encode_prompt(prompt=request.prompt.strip(), device=device)
        _sync(device)
        t1 = time.perf_counter()
        latents = pipe(
            prompt_embeds=prompt_embeds,
            pooled_prompt_embeds=pooled_embeds,
            prompt_attention_mask=attention_mask,
            height=request.height,
            width=request.width,
            num_frames=request.num_frames,
            num_inference_steps=request.num_inference_steps,
            guidance_scale=request.guidance_scale,
            generator=generator,
            output_type="latent",
            return_dict=False,
        )[0]
        if self.parallel is not None:
            latents = self.parallel.gather_latents(latents)
        _sync(device)
        t2 = time.perf_counter()
        if self.parallel is None or self.parallel.rank == 0:
            vae = pipe.vae
            video = vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor, return_dict=False)[0]
            frames = pipe.video_processor.postprocess_video(video, output_type="np")[0]  # (F, H, W, 3) in [0, 1]
            frames = (np.clip(frames, 0.0, 1.0) * 255.0).round().astype(np.uint8)
        else:
            frames = np.zeros((0, 0, 0, 3), dtype=np.uint8)
        _sync(device)
        t3 = time.perf_counter()

        stats = self.cache.stats
        return GenerationResult(
            frames=frames,
            latents=latents.float().cpu(),
            timings={"text_encode_s": t1 - t0, "denoise_s": t2 - t1, "decode_s": t3 - t2},
            transformer_passes_full=stats.full,
            transformer_passes_skipped=stats.skipped,
            mean_full_pass_s=stats.mean_full_s,
            cache_parts=self.cache.parts(),
        )

"""One request to frames, timed stage by stage, through the feature cache.

The pipeline call is split into its three stages (text encoding, the denoising loop, VAE decoding) by
calling ``encode_prompt`` and the VAE ourselves around a latent-output pipeline call: the record's time
breakdown then measures exactly the diffusers code a user would run, with no copy of the loop here. How a
family's pipeline is encoded for and called is its adapter's (``models.adapters``); an image-to-video request
runs the model's image pipeline, which shares the transformer (and so the cache) with the text one. The
cache's step hook is always installed (mode ``none`` only counts and times passes), so every record has
the same pass counts and the speedup estimate means the same thing in every mode.
"""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import PIL.Image
import torch

from hyca_batch.cache import SolverMap, TrajectoryProbe, apply_feature_cache
from hyca_batch.config import CacheConfig
from hyca_batch.models import LoadedModel
from hyca_batch.models.adapters import family_of
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
        self.family = family_of(self.pipeline.transformer)
        self.cache = apply_feature_cache(self.pipeline.transformer, cache or CacheConfig(), solver_map, probe)

    def _image(self, request: Request) -> PIL.Image.Image | None:
        """An image-to-video request's image (its bytes were fetched and checked by the replica), as RGB."""
        data = request.image_bytes
        if data is None:
            return None
        if self.model.image_pipeline is None:
            raise ValueError(f"request {request.id!r} has an image, but {self.model.spec.name} has no image-to-video")
        with PIL.Image.open(io.BytesIO(data)) as image:
            return image.convert("RGB")

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

        image = self._image(request)
        t0 = time.perf_counter()
        # Leading/trailing whitespace would shift the prompt template's crop boundary.
        text = self.family.encode(pipe, request.prompt.strip(), request.guidance_scale, device)
        _sync(device)
        t1 = time.perf_counter()
        denoiser = pipe if image is None else self.model.image_pipeline
        latents = self.family.denoise(denoiser, text, request, generator, image)
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

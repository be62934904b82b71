"""One request to frames, timed stage by stage.

The pipeline call is split into its three stages (text encoding, the denoising loop, VAE decoding) by
calling ``encode_prompt`` and the VAE ourselves around a latent-output pipeline call: the record's time
breakdown then measures exactly the diffusers code a user would run, with no copy of the loop here.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from hyca_batch.manifest import Request
from hyca_batch.models import LoadedModel


@dataclass
class GenerationResult:
    frames: np.ndarray  # (F, H, W, 3) uint8 RGB
    timings: dict[str, float] = field(default_factory=dict)  # text_encode_s, denoise_s, decode_s
    transformer_passes_full: int = 0
    transformer_passes_skipped: int = 0


class PassCounter:
    """Counts transformer forward calls; a hook, so it sees every call the pipeline makes (cond and uncond)."""

    def __init__(self, module: torch.nn.Module):
        self.count = 0
        self._handle = module.register_forward_pre_hook(self._hook)

    def _hook(self, module: torch.nn.Module, args: object) -> None:
        self.count += 1

    def reset(self) -> None:
        self.count = 0

    def remove(self) -> None:
        self._handle.remove()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class VideoGenerator:
    """Generates videos with one loaded model; one per replica, reused for every request."""

    def __init__(self, model: LoadedModel):
        self.model = model
        self.pipeline = model.pipeline
        self.passes = PassCounter(self.pipeline.transformer)

    @torch.inference_mode()
    def __call__(self, request: Request) -> GenerationResult:
        pipe, device = self.pipeline, self.model.device
        # A CPU generator makes the initial noise, and so the video, the same on any device.
        generator = torch.Generator(device="cpu").manual_seed(request.seed)
        self.passes.reset()

        t0 = time.perf_counter()
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
        _sync(device)
        t2 = time.perf_counter()
        vae = pipe.vae
        video = vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor, return_dict=False)[0]
        frames = pipe.video_processor.postprocess_video(video, output_type="np")[0]  # (F, H, W, 3) in [0, 1]
        _sync(device)
        t3 = time.perf_counter()

        frames_u8 = (np.clip(frames, 0.0, 1.0) * 255.0).round().astype(np.uint8)
        return GenerationResult(
            frames=frames_u8,
            timings={"text_encode_s": t1 - t0, "denoise_s": t2 - t1, "decode_s": t3 - t2},
            transformer_passes_full=self.passes.count,
            transformer_passes_skipped=0,
        )

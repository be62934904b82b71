"""The model under test and its inputs, with nothing downloaded: HunyuanVideo's transformer and VAE in the package's
``random_weights`` configurations (the real one, or the ``tiny`` preset's with --scaled-down), and random text
embeddings in place of the text encoders'."""

from __future__ import annotations

import torch

from hyca_batch.models import load_model, random_weights
from hyca_batch.models.random_weights import FAMILIES

# The configurations come from the package: HunyuanVideo's real one, and the `tiny` preset's for --scaled-down.
REAL_TRANSFORMER = FAMILIES["hunyuanvideo"][0]
GUIDANCE = 6.0  # embedded guidance of the HunyuanVideo reference setting


def family(scaled_down: bool) -> str:
    return "tiny" if scaled_down else "hunyuanvideo"


def transformer_config(scaled_down: bool) -> dict:
    return dict(FAMILIES[family(scaled_down)][0])


def vae_config(scaled_down: bool) -> dict:
    return dict(FAMILIES[family(scaled_down)][1])


def meta_transformer(config: dict | None = None) -> torch.nn.Module:
    """The transformer on the meta device: its shapes and parameter count, no memory."""
    from diffusers import HunyuanVideoTransformer3DModel

    with torch.device("meta"):
        return HunyuanVideoTransformer3DModel(**(config or REAL_TRANSFORMER))


def parameter_count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def parameter_bytes(module: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


def build_pipeline(scaled_down: bool, device: torch.device):
    """HunyuanVideoPipeline over the random-weight transformer and VAE (the package's ``random_weights`` kind), with
    no text encoders or tokenizers: it is only ever called with precomputed embeddings."""
    return load_model(random_weights(family(scaled_down)), device=device).pipeline


def text_inputs(config: dict, tokens: int, valid: int, device: torch.device, dtype: torch.dtype, seed: int = 0) -> dict:
    """What the text encoders would give: (1, tokens, text_dim) embeddings whose first ``valid`` are unmasked."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    mask = torch.zeros(1, tokens, dtype=torch.long)
    mask[:, :valid] = 1
    return {
        "prompt_embeds": torch.randn(1, tokens, config["text_embed_dim"], generator=gen).to(device, dtype),
        "pooled_prompt_embeds": torch.randn(1, config["pooled_projection_dim"], generator=gen).to(device, dtype),
        "prompt_attention_mask": mask.to(device),
    }

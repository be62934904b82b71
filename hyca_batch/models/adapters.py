"""Model families as adapters: everything the cache, the sharding, generation and the benchmarks must know about
one family of diffusers video transformers, in one place per family.

A family says which block lists its transformer runs (in order) and of which kind each block is; a block kind
says which residual-branch outputs are cached (before their gates) and how a skipped block recomputes its gates
and applies the forecasts; the family says how many text tokens a pass really attends to (valid ones first, as
both HunyuanVideos order them), which modules embed patches, make the rotary tables and project the output (what
sequence parallelism shards), which attention modules take the parallel processor, which cache context is the
conditional pass, and how a pipeline of the family encodes a prompt and runs its denoising loop.

The cache (``cache.hooks``), the sharding (``parallel.shard``), generation (``pipeline.generate``) and the
benchmarks read a transformer only through ``family_of(transformer)``; adding a family is adding an adapter here.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

#: Where a cached feature's tokens are: video tokens, text tokens, or the joint [video, text] sequence.
VIDEO, TEXT, JOINT = "video", "text", "joint"

Forecast = Callable[[str], "torch.Tensor"]


class DualStreamBlock:
    """An MM-DiT block (HunyuanVideo's double-stream block, every HunyuanVideo 1.5 block): video and text have
    their own weights and meet in one joint attention. Cached: the attention's video and text outputs and both
    MLP outputs, each before its AdaLN-Zero gate."""

    name = "double"
    features = ("attn", "ctx_attn", "ff", "ctx_ff")
    mlp = "ff"  # the video stream's MLP (what counts a block as computed)

    @staticmethod
    def captured(block: torch.nn.Module) -> dict[str, torch.nn.Module]:
        """The submodules whose outputs a full step captures (the attention returns the video and text parts)."""
        return {"attn": block.attn, "ff": block.ff, "ctx_ff": block.ff_context}

    @staticmethod
    def split(values: dict[str, Any]) -> Iterator[tuple[str, torch.Tensor, str]]:
        """(feature, value, where its tokens are) from the captured outputs."""
        attn, ctx_attn = values["attn"]
        yield "attn", attn, VIDEO
        yield "ctx_attn", ctx_attn, TEXT
        yield "ff", values["ff"], VIDEO
        yield "ctx_ff", values["ctx_ff"], TEXT

    @staticmethod
    def skip(block: torch.nn.Module, hidden, context, temb, forecast: Forecast) -> tuple[torch.Tensor, torch.Tensor]:
        """A skipped step: only the gates are computed (a linear layer on the timestep embedding)."""
        _, _, gate_msa, _, _, gate_mlp = block.norm1.linear(block.norm1.silu(temb)).chunk(6, dim=1)
        _, _, c_gate_msa, _, _, c_gate_mlp = block.norm1_context.linear(block.norm1_context.silu(temb)).chunk(6, dim=1)
        hidden = hidden + forecast("attn") * gate_msa.unsqueeze(1) + gate_mlp.unsqueeze(1) * forecast("ff")
        context = (
            context + forecast("ctx_attn") * c_gate_msa.unsqueeze(1) + c_gate_mlp.unsqueeze(1) * forecast("ctx_ff")
        )
        return hidden, context


class SingleStreamBlock:
    """HunyuanVideo's single-stream block: one set of weights over [video, text], attention and MLP in parallel.
    Cached: the output projection (linear2) before its gate."""

    name = "single"
    features = ("proj_out",)
    mlp = "proj_mlp"

    @staticmethod
    def captured(block: torch.nn.Module) -> dict[str, torch.nn.Module]:
        return {"proj_out": block.proj_out}

    @staticmethod
    def split(values: dict[str, Any]) -> Iterator[tuple[str, torch.Tensor, str]]:
        yield "proj_out", values["proj_out"], JOINT

    @staticmethod
    def skip(block: torch.nn.Module, hidden, context, temb, forecast: Forecast) -> tuple[torch.Tensor, torch.Tensor]:
        import torch

        text_len = context.shape[1]
        _, _, gate = block.norm.linear(block.norm.silu(temb)).chunk(3, dim=1)
        joint = torch.cat([hidden, context], dim=1) + gate.unsqueeze(1) * forecast("proj_out")
        return joint[:, :-text_len], joint[:, -text_len:]


class Arguments:
    """A forward's arguments read by name, however they were passed (as diffusers' own cache hooks read them).

    The positions come from the module class's signature once, so a call costs a dict lookup.
    """

    def __init__(self, module: torch.nn.Module):
        parameters = list(inspect.signature(type(module).forward).parameters.values())[1:]  # without self
        self.position = {p.name: i for i, p in enumerate(parameters)}
        self.default = {p.name: None if p.default is inspect.Parameter.empty else p.default for p in parameters}

    def __call__(self, args: tuple, kwargs: dict[str, Any], name: str) -> Any:
        if name in kwargs:
            return kwargs[name]
        position = self.position[name]
        return args[position] if position < len(args) else self.default[name]


BlockKind = type[DualStreamBlock] | type[SingleStreamBlock]
#: How a forward's argument is read by name (``cache.hooks`` reads them as diffusers' own hooks do).
ArgumentReader = Callable[[str], Any]


def _hunyuanvideo_encode(pipe: Any, prompt: str, guidance_scale: float, device: torch.device) -> dict[str, Any]:
    """Llama and CLIP embeddings; the guidance is embedded in the transformer (one pass per step)."""
    embeds, pooled, mask = pipe.encode_prompt(prompt=prompt, device=device)
    return {"prompt_embeds": embeds, "pooled_prompt_embeds": pooled, "prompt_attention_mask": mask}


def _latents(pipe: Any, request: Any, generator: Any, **inputs: Any) -> torch.Tensor:
    """The pipeline's own denoising loop for ``request``, stopped before the VAE (generation decodes itself)."""
    return pipe(
        **inputs,
        num_frames=request.num_frames,
        num_inference_steps=request.num_inference_steps,
        generator=generator,
        output_type="latent",
        return_dict=False,
    )[0]


def _hunyuanvideo_denoise(pipe: Any, text: dict[str, Any], request: Any, generator: Any, image: Any) -> torch.Tensor:
    size = {"height": request.height, "width": request.width}
    return _latents(pipe, request, generator, **text, **size, guidance_scale=request.guidance_scale)


def _hunyuanvideo15_encode(pipe: Any, prompt: str, guidance_scale: float, device: torch.device) -> dict[str, Any]:
    """Qwen2.5-VL and ByT5 embeddings of the prompt, and of the empty negative prompt when classifier-free guidance
    is on (what the pipeline would encode itself; here, so that text encoding is timed on its own)."""
    names = ("prompt_embeds", "prompt_embeds_mask", "prompt_embeds_2", "prompt_embeds_mask_2")
    dtype = pipe.transformer.dtype
    text = dict(zip(names, pipe.encode_prompt(prompt=prompt, device=device, dtype=dtype)))
    if not math.isclose(guidance_scale, 1.0):  # ClassifierFreeGuidance runs no unconditional pass at 1.0
        negative = pipe.encode_prompt(prompt=None, device=device, dtype=dtype)
        text.update({f"negative_{name}": value for name, value in zip(names, negative)})
    return text


def _hunyuanvideo15_denoise(pipe: Any, text: dict[str, Any], request: Any, generator: Any, image: Any) -> torch.Tensor:
    """Real classifier-free guidance (a conditional and an unconditional pass per step, in the cache contexts
    ``pred_cond`` and ``pred_uncond``) at the request's scale; with an image, the image-to-video pipeline, whose
    video size follows the image (the request's size is that bucket, set when the row was validated)."""
    if not math.isclose(pipe.guider.guidance_scale, request.guidance_scale):
        pipe.guider = pipe.guider.new(guidance_scale=request.guidance_scale)
    size = {"image": image} if image is not None else {"height": request.height, "width": request.width}
    return _latents(pipe, request, generator, **text, **size)


Encode = Callable[[Any, str, float, "torch.device"], dict[str, Any]]
Denoise = Callable[[Any, dict[str, Any], Any, Any, Any], "torch.Tensor"]


@dataclass(frozen=True)
class Family:
    """One family of video transformers, as the rest of the package needs to know it."""

    name: str
    transformer_class: str  # the diffusers class this adapter is for
    blocks: tuple[tuple[str, BlockKind], ...]  # (the transformer's ModuleList attribute, its kind), in run order
    cond_context: str  # the cache context name of the conditional pass (what calibration records)
    valid_text_tokens: Callable[[ArgumentReader], int | None]  # from the transformer forward's arguments
    # A pipeline of the family: (pipe, prompt, guidance scale, device) -> the text inputs of its call, and
    # (pipe, those, request, generator, image or None) -> the final latents of its own denoising loop.
    encode: Encode
    denoise: Denoise
    # What sequence parallelism shards: the patch embedder, the rotary table maker, the output projection.
    patch_embedder: str = "x_embedder"
    rope: str = "rope"
    output_projection: str = "proj_out"

    def block_lists(self, transformer: torch.nn.Module) -> Iterator[tuple[BlockKind, int, torch.nn.Module]]:
        """Every block with its kind and its index within its list, in the order the transformer runs them."""
        for attribute, kind in self.blocks:
            for index, block in enumerate(getattr(transformer, attribute)):
                yield kind, index, block

    def first_block(self, transformer: torch.nn.Module) -> torch.nn.Module:
        return getattr(transformer, self.blocks[0][0])[0]

    def attention_modules(self, transformer: torch.nn.Module) -> list[torch.nn.Module]:
        """The joint attentions whose processor sequence parallelism replaces."""
        return [block.attn for _, _, block in self.block_lists(transformer)]

    @staticmethod
    def hidden_size(transformer: torch.nn.Module) -> int:
        return transformer.config.num_attention_heads * transformer.config.attention_head_dim

    @staticmethod
    def patch(transformer: torch.nn.Module) -> tuple[int, int, int]:
        cfg = transformer.config
        return cfg.patch_size_t, cfg.patch_size, cfg.patch_size


def _mask_sum(mask: Any) -> int | None:
    return int(mask[0].sum()) if mask is not None and hasattr(mask, "sum") else None


def _hunyuanvideo_text(arg: ArgumentReader) -> int | None:
    return _mask_sum(arg("encoder_attention_mask"))


def _hunyuanvideo15_text(arg: ArgumentReader) -> int | None:
    """The forward reorders the text as [valid image, valid ByT5, valid Qwen, padding]: the image tokens count only
    for image-to-video (all-zero image embeddings mean text-to-video, whose image tokens are masked)."""
    mllm, byt5, image = _mask_sum(arg("encoder_attention_mask")), arg("encoder_attention_mask_2"), arg("image_embeds")
    if mllm is None:
        return None
    tokens = mllm + (_mask_sum(byt5) or 0)
    if image is not None and bool(image.any()):
        tokens += image.shape[1]
    return tokens


HUNYUANVIDEO = Family(
    name="hunyuanvideo",
    transformer_class="HunyuanVideoTransformer3DModel",
    blocks=(("transformer_blocks", DualStreamBlock), ("single_transformer_blocks", SingleStreamBlock)),
    cond_context="cond",
    valid_text_tokens=_hunyuanvideo_text,
    encode=_hunyuanvideo_encode,
    denoise=_hunyuanvideo_denoise,
)
HUNYUANVIDEO15 = Family(
    name="hunyuanvideo15",
    transformer_class="HunyuanVideo15Transformer3DModel",
    blocks=(("transformer_blocks", DualStreamBlock),),
    cond_context="pred_cond",
    valid_text_tokens=_hunyuanvideo15_text,
    encode=_hunyuanvideo15_encode,
    denoise=_hunyuanvideo15_denoise,
)
FAMILIES = {family.transformer_class: family for family in (HUNYUANVIDEO, HUNYUANVIDEO15)}


def family_of(transformer: torch.nn.Module) -> Family:
    """The adapter for ``transformer``'s class; a clear error for a transformer no adapter covers."""
    name = type(transformer).__name__
    family = FAMILIES.get(name)
    if family is None:
        raise ValueError(f"no model-family adapter for {name}; supported: {', '.join(sorted(FAMILIES))}")
    return family

"""The Perceiver resampler (Flamingo): a fixed number of learned latent queries that
attend to concat(inputs, latents), then an MLP, in every layer. It turns any number of
tokens (image patches, video frames x patches) into ``num_latents`` tokens.

Optional learned time embeddings mark frames: the input's N tokens are ``frames x
frame_tokens`` and frame t gets time embedding t added.
"""

from __future__ import annotations

import torch
from pydantic import Field, model_validator
from torch import Tensor, nn

from mmcore.builder import BuildContext
from mmcore.contract import Fusion, FusionOutput, Tokens
from mmcore.cost import Cost, CostContext, Shape, attention, linear, mlp, norm
from mmcore.kernels import KernelSet
from mmcore.layers import MLP, MultiHeadAttention, make_norm
from mmcore.registry import ComponentConfig
from mmcore_fusions.common import PoolKind, check_names, fusion_cost, ones_mask, pool_each


class ResamplerParams(ComponentConfig):
    """The resampler's own parameters (also nested in ``gated-xattn``'s config)."""

    num_latents: int = Field(gt=0)
    layers: int = Field(gt=0)
    heads: int = Field(gt=0)
    mlp_ratio: float = Field(4.0, gt=0)
    #: per-head width; None: width / heads (Idefics sets it apart, e.g. 96)
    head_dim: int | None = Field(None, gt=0)
    #: the MLP's activation (Idefics: relu)
    act: str = "gelu"
    #: learned time embeddings for up to this many frames; 0: none
    time_embeddings: int = Field(0, ge=0)
    #: tokens per frame (the input's N must be a multiple); needed with time embeddings
    frame_tokens: int | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _frames(self) -> ResamplerParams:
        if self.time_embeddings and self.frame_tokens is None:
            raise ValueError("time_embeddings needs frame_tokens (tokens per frame)")
        return self


class ResamplerLayer(nn.Module):
    """latents + attn(norm(latents), [norm(inputs); norm(latents)]); + mlp(norm(latents)).
    (B, M, D) x (B, N, D) -> (B, M, D). Bias-free projections as in Flamingo."""

    def __init__(self, *, width: int, heads: int, mlp_ratio: float, kernels: KernelSet,
                 head_dim: int | None = None, act: str = "gelu") -> None:
        super().__init__()
        self.input_norm = make_norm("layernorm", width)
        self.latent_norm = make_norm("layernorm", width)
        self.attn = MultiHeadAttention(width=width, heads=heads, kernels=kernels, bias=False,
                                       qk_width=None if head_dim is None else heads * head_dim)
        self.mlp_norm = make_norm("layernorm", width)
        self.mlp = MLP(width=width, hidden=int(width * mlp_ratio), act=act, bias=False)

    def forward(self, latents: Tensor, inputs: Tensor, mask: Tensor) -> Tensor:
        normed = self.latent_norm(latents)
        keys = torch.cat([self.input_norm(inputs), normed], dim=1)  # (B, N + M, D)
        keys_mask = torch.cat([mask, ones_mask(latents)], dim=1)
        latents = latents + self.attn(normed, keys, key_padding_mask=keys_mask)
        return latents + self.mlp(self.mlp_norm(latents))


class PerceiverResampler(nn.Module):
    """Tokens (B, N, D_in) -> latents (B, num_latents, width)."""

    def __init__(self, *, params: ResamplerParams, input_width: int, width: int,
                 kernels: KernelSet) -> None:
        super().__init__()
        self.params = params
        self.projection = nn.Linear(input_width, width) if input_width != width else None
        self.time = (nn.Parameter(torch.randn(params.time_embeddings, width) * 0.02)
                     if params.time_embeddings else None)
        self.latents = nn.Parameter(torch.randn(params.num_latents, width) * 0.02)
        self.layers = nn.ModuleList(
            ResamplerLayer(width=width, heads=params.heads, mlp_ratio=params.mlp_ratio,
                           kernels=kernels, head_dim=params.head_dim, act=params.act)
            for _ in range(params.layers))
        self.final_norm = make_norm("layernorm", width)

    def _add_time(self, x: Tensor) -> Tensor:
        if self.time is None or self.params.frame_tokens is None:
            return x
        b, n, d = x.shape
        frames, rest = divmod(n, self.params.frame_tokens)
        if rest or frames > self.time.shape[0]:
            raise ValueError(f"{n} tokens are not at most {self.time.shape[0]} frames of "
                             f"{self.params.frame_tokens} tokens")
        x = x.view(b, frames, self.params.frame_tokens, d) + self.time[:frames, None].to(x.dtype)
        return x.reshape(b, n, d)

    def forward(self, tokens: Tokens) -> Tensor:
        x = tokens.x if self.projection is None else self.projection(tokens.x)  # (B, N, D)
        x = self._add_time(x)
        latents = self.latents.to(x.dtype).expand(x.shape[0], -1, -1)  # (B, M, D)
        for layer in self.layers:
            latents = layer(latents, x, tokens.valid())
        return self.final_norm(latents)


def inner_attention(nq: int, nk: int, width: int, heads: int, inner: int,
                    kv_width: int | None = None) -> Cost:
    """Bias-free attention whose q/k/v have ``inner`` = heads x head_dim channels (which
    may differ from ``width``): projections, scores and the weighted sum."""
    if inner == width:
        return attention(nq, nk, width, heads, kv_width=kv_width, bias=False)
    kv_width = kv_width or width
    proj = (linear(nq, width, inner, False) + linear(nk, kv_width, inner, False)
            + linear(nk, kv_width, inner, False) + linear(nq, inner, width, False))
    return proj + Cost(flops=4 * nq * nk * inner, activations=heads * nq * nk + 3 * nq * inner,
                       attention_scores=nq * nk)


def resampler_cost(params: ResamplerParams, inputs: Shape, width: int) -> Cost:
    """Projection, time embeddings, latents, layers (M queries over N + M keys), final norm."""
    m, n = params.num_latents, inputs.tokens
    cost = Cost(params=(params.time_embeddings + m) * width)
    if inputs.width != width:
        cost = cost + linear(n, inputs.width, width)
    inner = width if params.head_dim is None else params.heads * params.head_dim
    layer = (norm(n, width) + norm(m, width)
             + inner_attention(m, n + m, width, params.heads, inner)
             + norm(m, width) + mlp(m, width, int(width * params.mlp_ratio), bias=False))
    return cost + layer.times(params.layers) + norm(m, width)


class PerceiverResamplerConfig(ResamplerParams):
    #: the modality to resample (e.g. image patches or video frames)
    modality: str
    #: latent width; None: the modality's width
    width: int | None = Field(None, gt=0)
    #: pooling of the other modalities, passed through unchanged (default mean)
    pooling: dict[str, PoolKind] = Field(default_factory=dict)


class PerceiverResamplerFusion(Fusion):
    """tokens[modality]: (B, N, D_in) -> (B, num_latents, width), embeddings[modality]: mean
    of the latents (B, width); other modalities pass through with pooled embeddings."""

    def __init__(self, cfg: PerceiverResamplerConfig, widths: dict[str, int],
                 ctx: BuildContext) -> None:
        super().__init__()
        check_names("modality", [cfg.modality], widths)
        check_names("pooling", cfg.pooling, widths)
        if cfg.modality in cfg.pooling:
            raise ValueError(f"pooling names {cfg.modality!r}, whose embedding is the mean "
                             "of its latents")
        self.cfg = cfg
        width = cfg.width or widths[cfg.modality]
        self.resampler = PerceiverResampler(params=cfg, input_width=widths[cfg.modality],
                                            width=width, kernels=ctx.kernels)
        self.embedding_widths = {**dict(sorted(widths.items())), cfg.modality: width}

    def forward(self, tokens: dict[str, Tokens]) -> FusionOutput:
        out = dict(tokens)
        if self.cfg.modality in tokens:
            out[self.cfg.modality] = Tokens(self.resampler(tokens[self.cfg.modality]))
        embeddings = pool_each(out, self.cfg.pooling)
        if self.cfg.modality in out:
            embeddings[self.cfg.modality] = out[self.cfg.modality].x.mean(1)  # (B, D)
        return FusionOutput(tokens=out, embeddings=embeddings)


def build_perceiver_resampler(cfg: PerceiverResamplerConfig,
                              ctx: BuildContext) -> PerceiverResamplerFusion:
    return PerceiverResamplerFusion(cfg, ctx.widths, ctx)


def perceiver_resampler_cost(cfg: PerceiverResamplerConfig, ctx: CostContext) -> Cost:
    check_names("modality", [cfg.modality], ctx.shapes)
    inputs = ctx.shapes[cfg.modality]
    width = cfg.width or inputs.width
    widths = {m: s.width for m, s in sorted(ctx.shapes.items())}
    return fusion_cost(resampler_cost(cfg, inputs, width), {**widths, cfg.modality: width})

"""The ``flamingo`` fusion: a LLaMA-family decoder trunk (frozen by default) with gated
cross-attention dense blocks entering it through the trunk's layer ``hook``, a Perceiver
Resampler over each image's tokens, and Flamingo's interleaved masking.

Keys: ``fusion.stack.*`` (the ``decoder-lm`` trunk's, so an ``hf-llama`` LM loads into it
unchanged), ``fusion.resampler.*`` and ``fusion.xattn.<layer>.*`` (the block entered
before LM layer ``<layer>``).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, model_validator
from torch import Tensor, nn

from mmcore.builder import BuildContext
from mmcore.contract import Fusion, FusionOutput, Tokens
from mmcore.cost import Cost, CostContext, Shape, linear, norm
from mmcore.kernels import KernelSet
from mmcore.layers.decoder import DecoderStack, LayerHook
from mmcore.layers.kv_cache import KVCache
from mmcore_flamingo.masking import attend_mask, check_count, media_index, per_row_media
from mmcore_fusions import GatedCrossAttentionBlock, PerceiverResampler
from mmcore_fusions.resampler import ResamplerParams, inner_attention, resampler_cost
from mmcore_fusions.views import join_views, joined_shape
from mmcore_llama import DecoderLMConfig, LMTokens, decoder_lm_cost
from mmcore_llama.components import decoder_shape, last_real


class FlamingoConfig(DecoderLMConfig):
    #: the modality of the visual tokens (one entry per image, K for the batch)
    image: str = "image"
    #: more modalities over the same images (their own towers, e.g. a colour-free view:
    #: see ``ModalitySpec.source``), joined with the image's tokens along the features
    #: before the resampler; each must give as many tokens per image as ``image``
    views: list[str] = Field(default_factory=list)
    #: the id of the ``<image>`` marker in the text
    media_token_id: int = Field(ge=0)
    #: a gated block before LM layers first, first + every, first + 2 every, ...
    every: int = Field(1, gt=0)
    first: int = Field(0, ge=0)
    #: the blocks' attention heads and per-head width (None: the LM's heads, width / heads)
    xattn_heads: int | None = Field(None, gt=0)
    xattn_head_dim: int | None = Field(None, gt=0)
    #: the blocks' dense part: gelu MLP (Flamingo) or swiglu (Idefics); hidden width
    #: ``xattn_ffn`` (None: mlp_ratio x width)
    xattn_ffw: Literal["gelu", "swiglu", "relu"] = "gelu"
    xattn_ffn: int | None = Field(None, gt=0)
    mlp_ratio: float = Field(4.0, gt=0)
    xattn_norm: Literal["layernorm", "rmsnorm"] = "layernorm"
    #: one tanh gate per block part (``float``) or one per channel (``vector``)
    gate: Literal["float", "vector"] = "float"
    #: initial gate alpha; tanh(0) = 0: the model starts as the plain LM
    init_gate: float = 0.0
    #: tokens before a row's first image also go through the blocks' dense part (Idefics,
    #: OpenFlamingo); False: they skip whole blocks and equal the plain LM exactly
    dense_without_media: bool = False
    #: the LM trunk's parameters get requires_grad False (Flamingo trains only the blocks
    #: and the resampler)
    freeze_lm: bool = True
    #: resample each image's tokens to num_latents first (None: attend to them all)
    resampler: ResamplerParams | None = None

    @model_validator(mode="after")
    def _blocks(self) -> FlamingoConfig:
        if self.first >= self.layers:
            raise ValueError(f"first={self.first} is not below layers={self.layers}: no "
                             "layer would get a gated block")
        return self


def block_layers(cfg: FlamingoConfig) -> list[int]:
    """The LM layers a gated block comes before."""
    return list(range(cfg.first, cfg.layers, cfg.every))


class FlamingoFusion(Fusion):
    """``{image: (K, N, Dv) (K images in marker order), text: LMTokens (B, T, D)}`` -> text
    hidden states (B, T, D) (LMTokens) and the last real token's (B, D). Without images it
    is the plain LM; with images the text must be :class:`LMTokens` (its ids locate the
    ``<image>`` markers)."""

    def __init__(self, cfg: FlamingoConfig, width: int, image_widths: dict[str, int],
                 kernels: KernelSet) -> None:
        super().__init__()
        self.cfg = cfg
        #: feature width of the image modality and of each view, in joining order
        self.image_widths = dict(image_widths)
        visual_width = sum(self.image_widths.values())
        self.stack = DecoderStack(decoder_shape(cfg, width), kernels)
        self.stack.requires_grad_(not cfg.freeze_lm)
        self.resampler = (None if cfg.resampler is None else PerceiverResampler(
            params=cfg.resampler, input_width=visual_width, width=visual_width, kernels=kernels))
        self.xattn = nn.ModuleDict({str(i): GatedCrossAttentionBlock(
            width=width, visual_width=visual_width, heads=cfg.xattn_heads or cfg.heads,
            kernels=kernels, mlp_ratio=cfg.mlp_ratio, init_gate=cfg.init_gate,
            norm=cfg.xattn_norm, norm_eps=cfg.norm_eps, ffw=cfg.xattn_ffw, ffn=cfg.xattn_ffn,
            head_dim=cfg.xattn_head_dim, gate=cfg.gate) for i in block_layers(cfg)})
        self.embedding_widths = {cfg.text: width}

    @property
    def layers(self) -> nn.ModuleList:
        return self.stack.layers

    def new_cache(self) -> KVCache:
        return self.stack.new_cache()

    def inspect_lines(self) -> list[str]:
        """What ``mmcore inspect`` adds: parameters per gated block, of all blocks and of
        the resampler (counted on the built modules; meta costs nothing)."""
        def count(module: nn.Module) -> int:
            return sum(p.numel() for p in module.parameters())

        blocks = [count(b) for b in self.xattn.values()]
        resampler = 0 if self.resampler is None else count(self.resampler)
        return [f"flamingo: {len(blocks)} gated blocks before LM layers "
                f"{', '.join(self.xattn)}: {blocks[0]:,} parameters each, "
                f"{sum(blocks):,} in all",
                f"flamingo: resampler {resampler:,} parameters; blocks + resampler "
                f"{sum(blocks) + resampler:,}; LM trunk {count(self.stack):,}"]

    @property
    def image_modalities(self) -> list[str]:
        """The modalities whose tokens make the visual tokens: ``image``, then ``views``."""
        return [self.cfg.image, *self.cfg.views]

    def media(self, image: Tokens) -> Tensor:
        """Each image's visual tokens (its views joined), resampled when configured.
        (K, M, Dv)"""
        return image.x if self.resampler is None else self.resampler(image)

    def encode_media(self, tokens: dict[str, Tokens]) -> Tensor | None:
        """The batch's images (the image modality and its views) -> :meth:`media`; None
        when it has none."""
        joined = join_views(tokens, self.image_modalities, "flamingo")
        return None if joined is None else self.media(joined)

    def hook(self, visual: Tensor, attend: Tensor) -> LayerHook:
        """The trunk hook running block ``i`` (if any) before layer ``i``, each token seeing
        only ``attend (B, T, S)``'s keys of ``visual (B, S, Dv)``."""
        def run(i: int, x: Tensor) -> Tensor:
            if str(i) not in self.xattn:
                return x
            block = self.xattn[str(i)]
            return block(x, visual, attend=attend,
                         dense_without_media=self.cfg.dense_without_media)
        return run

    def visual_context(self, ids: Tensor, features: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(visual (B, S, Dv), owner (B, S), per_row (B,)) of images ``features (K, M, Dv)``
        for the rows ``ids (B, T)``; ValueError when markers and images differ. On the
        meta device (shapes only) each row gets one image."""
        if ids.device.type == "meta":
            b, (_, m, d) = ids.shape[0], features.shape
            ones = torch.ones(b, m, dtype=torch.long, device=ids.device)
            return features.new_zeros(b, m, d), ones, ones[:, 0]
        per_row = check_count(ids, features.shape[0], self.cfg.media_token_id)
        visual, owner = per_row_media(features, per_row)
        return visual, owner, per_row

    def hidden(self, embeds: Tensor, mask: Tensor | None, ids: Tensor | None,
               features: Tensor | None, cache: KVCache | None = None,
               index: Tensor | None = None) -> Tensor:
        """Embeddings (B, T, D) -> hidden states (B, T, D); ``features (K, M, Dv)``
        resampled images (None: the plain LM). ``index`` (B, T): each token's image (see
        :func:`media_index`), by default counted from ``ids``."""
        if features is None:
            return self.stack(embeds, mask, cache)
        if ids is None:
            raise ValueError("flamingo: images were given but the text tokens carry no ids "
                             "to find the <image> markers (use lm-embedding)")
        visual, owner, _ = self.visual_context(ids, features)
        index = media_index(ids, self.cfg.media_token_id) if index is None else index
        return self.stack(embeds, mask, cache, hook=self.hook(visual, attend_mask(index, owner)))

    def forward(self, tokens: dict[str, Tokens]) -> FusionOutput:
        if self.cfg.text not in tokens:
            raise ValueError(f"flamingo reads modality {self.cfg.text!r}; the batch has "
                             f"{sorted(tokens)}")
        text = tokens[self.cfg.text]
        ids = getattr(text, "ids", None)
        features = self.encode_media(tokens)
        if features is None and ids is not None and ids.device.type != "meta":
            check_count(ids, 0, self.cfg.media_token_id)
        x = self.hidden(text.x, text.mask, ids, features)
        out = LMTokens(x, text.mask, ids=ids, embedding=getattr(text, "embedding", None))
        return FusionOutput(tokens={**tokens, self.cfg.text: out},
                            embeddings={self.cfg.text: last_real(x, text.mask)})


def build_flamingo(cfg: FlamingoConfig, ctx: BuildContext) -> FlamingoFusion:
    missing = [m for m in (cfg.text, cfg.image, *cfg.views) if m not in ctx.widths]
    if missing:
        raise ValueError(f"flamingo: the model has no modality {missing[0]!r}; it has "
                         f"{sorted(ctx.widths)}")
    image_widths = {m: ctx.widths[m] for m in (cfg.image, *cfg.views)}
    return FlamingoFusion(cfg, ctx.widths[cfg.text], image_widths, ctx.kernels)


def gated_block_cost(cfg: FlamingoConfig, tokens: int, width: int, visual: Shape) -> Cost:
    """One gated block: two norms, cross-attention to ``visual``, the dense part, gates."""
    heads = cfg.xattn_heads or cfg.heads
    inner = heads * (cfg.xattn_head_dim or width // heads)
    hidden = cfg.xattn_ffn or int(width * cfg.mlp_ratio)
    norm_params = 1 if cfg.xattn_norm == "rmsnorm" else 2
    dense = linear(tokens, width, hidden, False) + linear(tokens, hidden, width, False)
    if cfg.xattn_ffw == "swiglu":
        dense = dense + linear(tokens, width, hidden, False)
    gates = 2 * (width if cfg.gate == "vector" else 1)
    return (norm(tokens, width, norm_params)
            + inner_attention(tokens, visual.tokens, width, heads, inner, visual.width)
            + norm(tokens, width, norm_params) + dense + Cost(params=gates))


def flamingo_cost(cfg: FlamingoConfig, ctx: CostContext) -> Cost:
    """The trunk over the text context, the resampler over one image, and the blocks with
    every text token attending to one image's (resampled) tokens."""
    visual = joined_shape(ctx.shapes, [cfg.image, *cfg.views], "flamingo")
    trunk = decoder_lm_cost(cfg, ctx)
    text = ctx.shapes[cfg.text]
    cost = Cost()
    if cfg.resampler is not None:
        cost = resampler_cost(cfg.resampler, visual, visual.width)
        visual = Shape(cfg.resampler.num_latents, visual.width)
    blocks = gated_block_cost(cfg, text.tokens, text.width, visual).times(len(block_layers(cfg)))
    return cost + blocks + trunk


def example_flamingo(module: FlamingoFusion, batch_size: int,
                     generator: torch.Generator) -> dict[str, Tokens]:
    """One image per row (its marker after a first text token, so the first token sees
    none; 3 tokens per view), right padding after it, for the conformance suite (rows
    slice with images)."""
    cfg, length = module.cfg, 7
    width = module.embedding_widths[cfg.text]
    ids = torch.randint(0, cfg.media_token_id, (batch_size, length), generator=generator)
    ids[:, 1] = cfg.media_token_id
    lengths = torch.randint(3, length + 1, (batch_size,), generator=generator)
    mask = torch.arange(length)[None, :] < lengths[:, None]
    text = LMTokens(torch.randn(batch_size, length, width, generator=generator), mask, ids=ids)
    images = {m: Tokens(torch.randn(batch_size, 3, w, generator=generator))
              for m, w in module.image_widths.items()}
    return {cfg.text: text, **images}

"""The ``llava`` fusion: project the image tokens, splice them into the text embeddings at
the ``<image>`` placeholders, run the LLaMA-family decoder trunk.

Keys: ``fusion.projector.linear_1`` / ``linear_2`` (HF's ``multi_modal_projector``) and
``fusion.stack.*`` (the same trunk and keys as ``decoder-lm``, so an ``hf-llama`` LM's
weights fit it unchanged); with ``views`` and ``join: sum``, each view's own projector
``fusion.view_projectors.<view>.*``.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from mmcore.builder import BuildContext
from mmcore.contract import Fusion, FusionOutput, Tokens
from mmcore.cost import Cost, CostContext, Shape, linear
from mmcore.kernels import KernelSet
from mmcore.layers.decoder import DecoderStack, LayerHook
from mmcore.layers.kv_cache import KVCache
from mmcore_fusions.views import join_views, joined_shape
from mmcore_llama import DecoderLMConfig, LMTokens, decoder_lm_cost
from mmcore_llama.components import decoder_shape, last_real

PROJECTORS = ("linear", "mlp2x_gelu")


class LlavaConfig(DecoderLMConfig):
    #: the modality whose tokens are spliced in (the vision tower's patch tokens)
    image: str = "image"
    #: more modalities over the same images (each its own tower, e.g. a colour-free view
    #: of the image: see ``ModalitySpec.source``), their tokens concatenated with the
    #: image's along the features before the projector, as Eagle joins several vision
    #: encoders; each must give as many tokens per image as ``image``
    views: list[str] = Field(default_factory=list)
    #: how the views meet: ``concat`` (one projector over the joined features) or ``sum``
    #: (each view its own projector, ``fusion.view_projectors.<view>``, outputs added), so
    #: no projector unit mixes two views
    join: Literal["concat", "sum"] = "concat"
    #: the id of the ``<image>`` placeholder in the text (each image fills as many
    #: consecutive placeholders as it has tokens)
    image_token_id: int = Field(ge=0)
    #: ``linear`` (LLaVA v1) or ``mlp2x_gelu`` (LLaVA-1.5: Linear, GELU, Linear)
    projector: Literal["linear", "mlp2x_gelu"] = "mlp2x_gelu"
    projector_bias: bool = True
    #: build the LM trunk frozen, so only the projector of this fusion trains (LLaVA's
    #: stage 1, its ``tune_mm_mlp_adapter``); ``train.freeze`` freezes whole components
    freeze_lm: bool = False


class Projector(nn.Module):
    """Image tokens (K, N, Dv) -> LM embeddings (K, N, D)."""

    def __init__(self, kind: str, image_width: int, width: int, bias: bool) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(image_width, width, bias=bias)
        self.act: nn.Module = nn.Identity()
        self.linear_2: nn.Module = nn.Identity()
        if kind == "mlp2x_gelu":
            self.act, self.linear_2 = nn.GELU(), nn.Linear(width, width, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear_2(self.act(self.linear_1(x)))


def splice(embeds: Tensor, ids: Tensor, features: Tensor | None, image_token_id: int) -> Tensor:
    """Put the image tokens ``features (K, N, D)`` (images in prompt order) into
    ``embeds (B, T, D)`` where ``ids (B, T) == image_token_id``, row after row.

    ValueError naming both counts when placeholders and image tokens differ."""
    where = ids == image_token_id  # (B, T)
    if where.device.type == "meta":  # shapes only (mmcore inspect/validate): nothing to count
        return embeds if features is None else embeds.masked_scatter(where[..., None], features)
    slots = int(where.sum())
    images, per_image = (0, 0) if features is None else features.shape[:2]
    if slots != images * per_image:
        placeholders = f"{slots / per_image:g}" if per_image else "some"
        raise ValueError(f"the prompts hold {slots} <image> token(s) ({placeholders} "
                         f"placeholder(s)) but {images} image(s) were given, "
                         f"{per_image} tokens each ({images * per_image} tokens)")
    if features is None or slots == 0:
        return embeds
    flat = features.reshape(-1, features.shape[-1]).to(embeds.dtype)  # (K * N, D)
    return embeds.masked_scatter(where[..., None], flat)


class LlavaFusion(Fusion):
    """``{image: (K, N, Dv), text: LMTokens (B, T, D)}`` -> text hidden states (B, T, D)
    (LMTokens) and the last real token's (B, D). The text must be :class:`LMTokens`
    (its ``ids`` say where the placeholders are) whenever images are given."""

    def __init__(self, cfg: LlavaConfig, width: int, image_widths: dict[str, int],
                 kernels: KernelSet) -> None:
        super().__init__()
        self.cfg = cfg
        #: feature width of the image modality and of each view, in concatenation order
        self.image_widths = dict(image_widths)
        first = sum(self.image_widths.values()) if cfg.join == "concat" else (
            self.image_widths[cfg.image])
        self.projector = Projector(cfg.projector, first, width, cfg.projector_bias)
        self.view_projectors = nn.ModuleDict({v: Projector(
            cfg.projector, self.image_widths[v], width, cfg.projector_bias)
            for v in cfg.views} if cfg.join == "sum" else {})
        self.stack = DecoderStack(decoder_shape(cfg, width), kernels)
        self.stack.requires_grad_(not cfg.freeze_lm)
        self.embedding_widths = {cfg.text: width}

    @property
    def layers(self) -> nn.ModuleList:
        return self.stack.layers

    def new_cache(self) -> KVCache:
        return self.stack.new_cache()

    def hidden(self, embeds: Tensor, mask: Tensor | None = None, cache: KVCache | None = None,
               positions: Tensor | None = None, hook: LayerHook | None = None) -> Tensor:
        """Input embeddings (B, T, D), images already spliced -> hidden states (B, T, D)."""
        return self.stack(embeds, mask, cache, positions, hook)

    @property
    def image_modalities(self) -> list[str]:
        """The modalities whose tokens make the image tokens: ``image``, then ``views``."""
        return [self.cfg.image, *self.cfg.views]

    def image_features(self, tokens: dict[str, Tokens]) -> Tensor | None:
        """The image and its views' tokens joined along the features (K, N, Dv); None
        when the batch has no images (see :func:`mmcore_fusions.views.join_views`)."""
        joined = join_views(tokens, self.image_modalities, "llava")
        return None if joined is None else joined.x

    def project(self, image: Tensor) -> Tensor:
        """Joined image features (K, N, Dv) -> LM embeddings (K, N, D): one projector, or
        with ``join: sum`` each view's slice through its own projector, added."""
        if self.cfg.join == "concat":
            return self.projector(image)
        parts = image.split(list(self.image_widths.values()), dim=-1)
        out = self.projector(parts[0])
        for view, part in zip(self.cfg.views, parts[1:], strict=True):
            out = out + self.view_projectors[view](part)
        return out

    def spliced(self, text: Tokens, image: Tensor | None) -> Tensor:
        """The text embeddings with the projected image tokens ``image (K, N, Dv)`` (see
        :meth:`image_features`) in place. (B, T, D)"""
        ids = getattr(text, "ids", None)
        features = None if image is None else self.project(image)  # (K, N, D)
        if ids is None:
            if features is not None:
                raise ValueError("llava: images were given but the text tokens carry no ids "
                                 "to find the <image> placeholders (use lm-embedding)")
            return text.x
        return splice(text.x, ids, features, self.cfg.image_token_id)

    def forward(self, tokens: dict[str, Tokens]) -> FusionOutput:
        if self.cfg.text not in tokens:
            raise ValueError(f"llava reads modality {self.cfg.text!r}; the batch has "
                             f"{sorted(tokens)}")
        text = tokens[self.cfg.text]
        x = self.hidden(self.spliced(text, self.image_features(tokens)), text.mask)
        out = LMTokens(x, text.mask, ids=getattr(text, "ids", None),
                       embedding=getattr(text, "embedding", None))
        return FusionOutput(tokens={**tokens, self.cfg.text: out},
                            embeddings={self.cfg.text: last_real(x, text.mask)})


def build_llava(cfg: LlavaConfig, ctx: BuildContext) -> LlavaFusion:
    missing = [m for m in (cfg.text, cfg.image, *cfg.views) if m not in ctx.widths]
    if missing:
        raise ValueError(f"llava: the model has no modality {missing[0]!r}; it has "
                         f"{sorted(ctx.widths)}")
    image_widths = {m: ctx.widths[m] for m in (cfg.image, *cfg.views)}
    return LlavaFusion(cfg, ctx.widths[cfg.text], image_widths, ctx.kernels)


def projector_cost(cfg: LlavaConfig, image: Shape, width: int) -> Cost:
    """The projector over one image's tokens."""
    cost = linear(image.tokens, image.width, width, cfg.projector_bias)
    if cfg.projector == "mlp2x_gelu":
        cost = cost + linear(image.tokens, width, width, cfg.projector_bias)
    return cost


def llava_cost(cfg: LlavaConfig, ctx: CostContext) -> Cost:
    """The projector over one image plus the trunk over the text's full context."""
    names = [cfg.image, *cfg.views]
    joined = joined_shape(ctx.shapes, names, "llava")
    trunk = decoder_lm_cost(cfg, ctx)
    width = ctx.shapes[cfg.text].width
    if cfg.join == "sum":  # one projector per view
        return sum((projector_cost(cfg, joined_shape(ctx.shapes, [m], "llava"), width)
                    for m in names), Cost()) + trunk
    return projector_cost(cfg, joined, width) + trunk


def example_llava(module: LlavaFusion, batch_size: int,
                  generator: torch.Generator) -> dict[str, Tokens]:
    """One image of 3 tokens per row (and per view), its placeholders after a first text
    token, and right padding after them, for the conformance suite."""
    cfg, n, length = module.cfg, 3, 7
    width = module.embedding_widths[cfg.text]
    ids = torch.randint(0, cfg.image_token_id, (batch_size, length), generator=generator)
    ids[:, 1 : 1 + n] = cfg.image_token_id
    lengths = torch.randint(n + 1, length + 1, (batch_size,), generator=generator)
    mask = torch.arange(length)[None, :] < lengths[:, None]
    text = LMTokens(torch.randn(batch_size, length, width, generator=generator), mask, ids=ids)
    images = {m: Tokens(torch.randn(batch_size, n, w, generator=generator))
              for m, w in module.image_widths.items()}
    return {cfg.text: text, **images}

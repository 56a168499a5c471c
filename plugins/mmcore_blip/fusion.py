"""The ``blip`` fusion: BLIP's text transformer in its three modes, sharing one set of layers.

Inputs: image tokens (B, Ni, Dv) from the image encoder and :class:`BlipTextTokens`
(B, L, D) from ``blip-text-embedding``. Outputs (names as in ``modes``):

- ``itc``: ``tokens["text"]`` the unimodal encoding (bidirectional, no image) and the
  projected first tokens ``embeddings["image"]`` / ``embeddings["text"]`` (B, E);
- ``itm``: ``tokens["fused"]``, the image-grounded encoding of the text with its first
  token replaced by ``enc_token_id`` (B, L, D), and its first token ``embeddings["fused"]``
  (B, D). These Tokens can re-encode other (text, image) pairings (``reground``), which
  the ``blip-matching`` objective uses for hard negatives;
- ``lm``: ``tokens["decoder"]``, the causal decoder's states over the text with its first
  token replaced by ``dec_token_id`` (B, L, D).

The encoder and the decoder share embeddings, cross-attention and feed-forward blocks;
each has its own self-attention (see :mod:`mmcore_blip.text`).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal, cast

import torch
from pydantic import Field, model_validator
from torch import Tensor, nn

from mmcore.builder import BuildContext
from mmcore.contract import Fusion, FusionOutput, Tokens
from mmcore.kernels import KernelSet
from mmcore.kernels.attention import real_padding
from mmcore.registry import ComponentConfig
from mmcore_blip.text import BlipTextLayer, BlipTextTokens, LayerShape, Mode
from mmcore_fusions.views import join_views

Task = Literal["itc", "itm", "lm"]
ALL_TASKS: tuple[Task, ...] = ("itc", "itm", "lm")


class BlipFusionConfig(ComponentConfig):
    image: str = "image"
    text: str = "text"
    #: more modalities over the same images (their own towers, e.g. a colour-free view:
    #: see ``ModalitySpec.source``), joined with the image's tokens along the features;
    #: the ITC embedding then reads the joined first tokens
    views: list[str] = Field(default_factory=list)
    layers: int = Field(gt=0)
    heads: int = Field(gt=0)
    #: feed-forward width (BERT's intermediate_size); None: 4 x the text width
    hidden: int | None = Field(None, gt=0)
    act: str = "gelu"
    norm_eps: float = Field(1e-12, gt=0)
    #: width of the ITC projections
    embed_dim: int = Field(256, gt=0)
    #: which of BLIP's three text modes the model has (an import may have fewer)
    modes: list[Task] = Field(default_factory=lambda: list(ALL_TASKS), min_length=1)
    #: first token of the grounded encoder's text ([ENC]) / the decoder's ([DEC]); None:
    #: keep the text's own first token
    enc_token_id: int | None = Field(None, ge=0)
    dec_token_id: int | None = Field(None, ge=0)
    #: keep a momentum (EMA) copy of the text layers and ITC projections with this decay
    #: (BLIP: 0.995); it adds ``embeddings["<image|text>_momentum"]``, the teacher of
    #: contrastive's ``distill_alpha``. None: no momentum model
    momentum: float | None = Field(None, gt=0, lt=1)

    @model_validator(mode="after")
    def _check(self) -> BlipFusionConfig:
        if self.image == self.text:
            raise ValueError("image and text must be different modalities")
        if len(set(self.modes)) != len(self.modes):
            raise ValueError(f"modes {self.modes} repeat a mode")
        return self


@dataclass
class GroundedTokens(Tokens):
    """Image-grounded text states that can re-encode other pairings:
    ``reground(text_rows (K,), image_rows (K,)) -> (K, L, D)`` pairs text ``text_rows[k]``
    with image ``image_rows[k]`` of the same batch."""

    reground: Callable[[Tensor, Tensor], Tensor] | None = field(default=None, repr=False,
                                                                compare=False)


@dataclass
class DecodeCache:
    """Per layer: the decoder's self-attention keys/values (B, H, T, Dh), grown per step,
    and the cross-attention keys/values of the image (B, H, Ni, Dh), computed once."""

    self_kv: list[tuple[Tensor, Tensor] | None]
    cross_kv: list[tuple[Tensor, Tensor]]
    length: int = 0


def _heads(x: Tensor, heads: int) -> Tensor:
    """(B, N, D) -> (B, H, N, Dh)."""
    b, n, _ = x.shape
    return x.view(b, n, heads, -1).transpose(1, 2)


def _merge(x: Tensor) -> Tensor:
    """(B, H, N, Dh) -> (B, N, D)."""
    b, _, n, _ = x.shape
    return x.transpose(1, 2).reshape(b, n, -1)


class BlipFusion(Fusion):
    """BLIP's text transformer over image tokens; see the module docstring."""

    def __init__(self, cfg: BlipFusionConfig, widths: dict[str, int], kernels: KernelSet) -> None:
        super().__init__()
        missing = [m for m in (cfg.image, cfg.text, *cfg.views) if m not in widths]
        if missing:
            raise ValueError(f"blip: no modality {missing}; the model has {sorted(widths)}")
        self.cfg = cfg
        #: feature width of the image modality and of each view, in joining order
        self.image_widths = {m: widths[m] for m in (cfg.image, *cfg.views)}
        width, image_width = widths[cfg.text], sum(self.image_widths.values())
        if width % cfg.heads:
            raise ValueError(f"text width {width} is not divisible by heads {cfg.heads}")
        shape = LayerShape(width=width, heads=cfg.heads, hidden=cfg.hidden or 4 * width,
                           context_width=image_width, act=cfg.act, eps=cfg.norm_eps,
                           encoder="itc" in cfg.modes or "itm" in cfg.modes,
                           decoder="lm" in cfg.modes)
        self.layers = nn.ModuleList(BlipTextLayer(shape, kernels) for _ in range(cfg.layers))
        self.kernels = kernels
        self.vision_proj = self.text_proj = None
        self.embedding_widths: dict[str, int] = {}
        if "itc" in cfg.modes:
            self.vision_proj = nn.Linear(image_width, cfg.embed_dim)
            self.text_proj = nn.Linear(width, cfg.embed_dim)
            self.embedding_widths.update({cfg.image: cfg.embed_dim, cfg.text: cfg.embed_dim})
        if "itm" in cfg.modes:
            self.embedding_widths["fused"] = width
        self.momentum_model: nn.ModuleDict | None = None
        if cfg.momentum is not None and "itc" in cfg.modes:
            self.momentum_model = copy.deepcopy(self._itc_parts())
            self.momentum_model.requires_grad_(False)
            self.embedding_widths.update({f"{cfg.image}_momentum": cfg.embed_dim,
                                          f"{cfg.text}_momentum": cfg.embed_dim})

    def _itc_parts(self) -> nn.ModuleDict:
        """The modules the momentum model copies: text layers and ITC projections."""
        assert self.vision_proj is not None and self.text_proj is not None
        return nn.ModuleDict({"layers": self.layers, "vision_proj": self.vision_proj,
                              "text_proj": self.text_proj})

    def text_layers(self) -> list[BlipTextLayer]:
        return list(self.layers)  # type: ignore[arg-type]

    @property
    def image_modalities(self) -> list[str]:
        """The modalities whose tokens make the image tokens: ``image``, then ``views``."""
        return [self.cfg.image, *self.cfg.views]

    def image_tokens(self, tokens: Mapping[str, Tokens]) -> Tokens | None:
        """The image's tokens, its views joined along the features (B, Ni, Dv); None when
        the batch has no image."""
        return join_views(tokens, self.image_modalities, "blip")

    # -- the three modes -----------------------------------------------------------------

    def run(self, x: Tensor, mask: Tensor | None, mode: Mode,
            image: Tokens | None = None, layers: nn.ModuleList | None = None) -> Tensor:
        """Text embeddings (B, L, D) through every layer (of ``layers``, default the model's
        own); with ``image`` (B, Ni, Dv) the layers cross-attend to it. -> (B, L, D)"""
        mask = real_padding(mask)
        context = None if image is None else image.x
        context_mask = None if image is None else real_padding(image.mask)
        for layer in layers if layers is not None else self.layers:
            x = layer(x, mask, mode, context, context_mask)
        return x

    @torch.no_grad()
    def _momentum(self, image: Tokens | None, text: Tokens | None) -> dict[str, Tensor]:
        """EMA-update the momentum copy (training only), then its ITC embeddings of the
        (detached) image and text tokens. name_momentum: (B, E)"""
        m, cfg = self.momentum_model, self.cfg
        assert m is not None and cfg.momentum is not None
        if self.training:
            for p_m, p in zip(m.parameters(), self._itc_parts().parameters(), strict=True):
                p_m.mul_(cfg.momentum).add_(p.detach(), alpha=1 - cfg.momentum)
        out = {}
        if image is not None:
            out[f"{cfg.image}_momentum"] = m["vision_proj"](image.x[:, 0].detach())
        if text is not None:
            layers = cast(nn.ModuleList, m["layers"])
            states = self.run(text.x.detach(), text.mask, "encoder", layers=layers)
            out[f"{cfg.text}_momentum"] = m["text_proj"](states[:, 0])
        return out

    def _first_token(self, text: Tokens, token_id: int | None) -> Tensor:
        """The text's embeddings with its first token replaced by ``token_id``. (B, L, D)"""
        if token_id is None:
            return text.x
        if not isinstance(text, BlipTextTokens) or text.ids is None or text.embedding is None:
            raise ValueError(f"blip: tokens {self.cfg.text!r} come without ids, so the first "
                             "token cannot be replaced; use the blip-text-embedding tokenizer")
        ids = text.ids.clone()
        ids[:, 0] = token_id
        return text.embedding.embed(ids)

    def forward(self, tokens: dict[str, Tokens]) -> FusionOutput:
        cfg = self.cfg
        out, embeddings = dict(tokens), {}
        image, text = self.image_tokens(tokens), tokens.get(cfg.text)
        if image is not None and self.vision_proj is not None:
            embeddings[cfg.image] = self.vision_proj(image.x[:, 0])  # (B, E)
        if text is not None and "itc" in cfg.modes:
            assert self.text_proj is not None
            states = self.run(text.x, text.mask, "encoder")
            out[cfg.text] = Tokens(states, text.mask)
            embeddings[cfg.text] = self.text_proj(states[:, 0])  # (B, E)
        if self.momentum_model is not None:
            embeddings.update(self._momentum(image, text))
        if image is not None and text is not None:
            if "itm" in cfg.modes:
                out["fused"] = self._grounded(text, image)
                embeddings["fused"] = out["fused"].x[:, 0]  # (B, D)
            if "lm" in cfg.modes:
                x = self._first_token(text, cfg.dec_token_id)
                out["decoder"] = Tokens(self.run(x, text.mask, "decoder", image), text.mask)
        return FusionOutput(tokens=out, embeddings=embeddings)

    def _grounded(self, text: Tokens, image: Tokens) -> GroundedTokens:
        """The image-grounded encoding of each (text i, image i), able to re-pair rows."""
        x = self._first_token(text, self.cfg.enc_token_id)
        mask = text.mask

        def reground(text_rows: Tensor, image_rows: Tensor) -> Tensor:
            pair_image = Tokens(image.x[image_rows],
                                None if image.mask is None else image.mask[image_rows])
            return self.run(x[text_rows], None if mask is None else mask[text_rows], "encoder",
                            pair_image)

        return GroundedTokens(self.run(x, mask, "encoder", image), mask, reground=reground)

    # -- KV-cached decoding (the LM mode, for the one generation loop) -----------------

    def start_cache(self, image: Tokens) -> DecodeCache:
        """Every layer's cross-attention keys and values of ``image`` (B, Ni, Dv)."""
        cross = []
        for layer in self.text_layers():
            attn = layer.cross_attention.attn
            cross.append((_heads(attn.k_proj(image.x), attn.heads),
                          _heads(attn.v_proj(image.x), attn.heads)))
        return DecodeCache([None] * len(self.layers), cross)

    def decode_step(self, x: Tensor, cache: DecodeCache) -> Tensor:
        """Embedded new tokens (B, n, D) after ``cache.length`` tokens -> decoder states
        (B, n, D); their keys and values join the cache."""
        for i, layer in enumerate(self.text_layers()):
            block = layer.self_attention("decoder")
            q, k, v = (_heads(proj(x), block.attn.heads) for proj in
                       (block.attn.q_proj, block.attn.k_proj, block.attn.v_proj))
            past = cache.self_kv[i]
            if past is not None:
                k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
            cache.self_kv[i] = (k, v)
            a = self.kernels.attention(q, k, v, key_padding_mask=None, causal=q.shape[2] > 1)
            x = block.norm(x + block.attn.out_proj(_merge(a)))
            cross = layer.cross_attention
            q = _heads(cross.attn.q_proj(x), cross.attn.heads)
            a = self.kernels.cross_attention(q, *cache.cross_kv[i], key_padding_mask=None,
                                             causal=False)
            x = layer.feed_forward(cross.norm(x + cross.attn.out_proj(_merge(a))))
        cache.length += x.shape[1]
        return x

    def reorder(self, cache: DecodeCache, rows: Tensor) -> DecodeCache:
        """Keep cache row ``rows[i]`` as row ``i`` (beam search). (R,)"""
        cache.self_kv = [None if kv is None else (kv[0][rows], kv[1][rows])
                         for kv in cache.self_kv]
        cache.cross_kv = [(k[rows], v[rows]) for k, v in cache.cross_kv]
        return cache


def build_blip(cfg: BlipFusionConfig, ctx: BuildContext) -> BlipFusion:
    return BlipFusion(cfg, ctx.widths, ctx.kernels)

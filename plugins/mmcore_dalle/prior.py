"""The DALL-E prior's components: the ``vq-codes`` tokenizer (images -> code ids through a
fixed VQ codec), the ``dalle-prior`` fusion (a ``decoder-lm`` trunk over
[text; <begin-image>; image codes]) and the ``dalle-prior`` objective (next-token loss on
the image tokens, optionally a small weight on the text).

One vocabulary for the head and the generation loop (ids ``(B, T)``):
``[0, text_vocab)`` text (``byte-text``: bytes, BOS, EOS, PAD), then
``text_vocab + k`` for image code ``k`` (``k < codebook_size``), then ``BOI = text_vocab +
codebook_size``. The text's embeddings come from its ``lm-embedding`` tokenizer; the
codes and BOI are embedded by the fusion's own table, plus a learned position per grid
cell (DALL-E's separate image embeddings), so text padding never shifts an image token's
meaning.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from mmcore.builder import BuildContext
from mmcore.contract import (
    Batch,
    Fusion,
    FusionOutput,
    ModalityInput,
    ModelOutput,
    Objective,
    Tokenizer,
    Tokens,
)
from mmcore.kernels import KernelSet
from mmcore.layers.kv_cache import KVCache
from mmcore.registry import ComponentConfig
from mmcore_diffusion.codec import LatentTokenizerConfig, build_codec
from mmcore_llama import DecoderLM, LMTokens
from mmcore_llama.components import IGNORE_INDEX, DecoderLMConfig, last_real

# -- tokenizer: images -> code ids -----------------------------------------------------------


@dataclass
class CodeTokens(Tokens):
    """An image as codes: ``x (B, N, C)`` the code vectors (straight-through from the
    encoder), ``codes (B, N)`` their ids (row-major over ``grid``)."""

    codes: Tensor | None = None
    grid: tuple[int, int] = (0, 0)


class VQCodesConfig(LatentTokenizerConfig):
    """The codec as in ``latent`` (``codec: {type: vq-vae, ...}``)."""


class VQCodesTokenizer(Tokenizer):
    """Images ``(B, 3, H, W)`` in [-1, 1] -> :class:`CodeTokens`. The codec is fixed: its
    parameters are frozen when built (DALL-E keeps its dVAE fixed in stage 2) and it never
    updates its codebook here. Its weights sit at ``codec.*``, as in the ``latent``
    tokenizer, so a trained ``vq-vae`` run loads with ``--init
    modalities.image.tokenizer=RUN``."""

    codec: Any  # a discrete codec module (vq-vae)

    def __init__(self, codec: Any) -> None:
        super().__init__()
        for name in ("encode_codes", "decode_codes", "codebook_size"):
            if not hasattr(codec, name):
                raise ValueError(f"vq-codes needs a discrete codec (vq-vae); "
                                 f"{type(codec).__name__} has no {name}")
        self.codec = codec.requires_grad_(False).eval()
        self.out_width = int(codec.latent_channels)
        self.codebook_size = int(codec.codebook_size)

    def train(self, mode: bool = True) -> VQCodesTokenizer:
        """The codec stays in eval mode (no codebook updates, whatever the model's mode)."""
        super().train(mode)
        self.codec.eval()
        return self

    def forward(self, inputs: ModalityInput) -> CodeTokens:
        if not isinstance(inputs, Tensor) or inputs.dim() != 4:
            raise ValueError("the vq-codes tokenizer takes images (B, 3, H, W)")
        quantized = self.codec.encode(inputs)
        b, c, h, w = quantized.z_q.shape
        x = quantized.z_q.permute(0, 2, 3, 1).reshape(b, h * w, c)
        return CodeTokens(x, None, codes=quantized.codes.reshape(b, h * w), grid=(h, w))

    def decode(self, codes: Tensor, grid: tuple[int, int]) -> Tensor:
        """Code ids ``(B, N)`` -> images ``(B, 3, H, W)`` in [-1, 1] (about)."""
        b, n = codes.shape
        if n != grid[0] * grid[1]:
            raise ValueError(f"{n} codes do not fill a {grid[0]}x{grid[1]} grid")
        return self.codec.decode_codes(codes.view(b, *grid))


def build_vq_codes(cfg: VQCodesConfig, ctx: BuildContext) -> VQCodesTokenizer:
    return VQCodesTokenizer(build_codec(cfg.codec, ctx))


def example_code_images(module: VQCodesTokenizer, batch: int,
                        generator: torch.Generator) -> Tensor:
    side = 4 * int(module.codec.downsampling)
    return torch.rand(batch, 3, side, side, generator=generator) * 2 - 1


# -- fusion: the prior's trunk ----------------------------------------------------------------


class DallePriorConfig(DecoderLMConfig):
    #: the modality whose ``vq-codes`` tokens are the image
    image: str = "image"
    #: text ids are below this (byte-text: 259); image code k is ``text_vocab + k``
    text_vocab: int = Field(259, gt=0)
    codebook_size: int = Field(gt=1)
    #: image tokens per image (the codec's grid h * w): one learned position each
    image_tokens: int = Field(gt=0)
    #: grid height (width = image_tokens / height); None: square
    grid_height: int | None = Field(None, gt=0)
    #: sampling defaults of ``mmcore generate`` (its options override them; 0: greedy)
    temperature: float = Field(1.0, ge=0)
    top_k: int | None = Field(None, ge=1)
    top_p: float = Field(1.0, gt=0, le=1)

    def grid(self) -> tuple[int, int]:
        h = self.grid_height or math.isqrt(self.image_tokens)
        if h * (self.image_tokens // h) != self.image_tokens:
            raise ValueError(f"image_tokens {self.image_tokens} is not a square grid; set "
                             "grid_height")
        return h, self.image_tokens // h

    @property
    def boi(self) -> int:
        """The <begin-image> id."""
        return self.text_vocab + self.codebook_size

    @property
    def vocab_size(self) -> int:
        return self.boi + 1


class DallePrior(Fusion):
    """``[text; BOI; codes]`` through a ``decoder-lm`` trunk (composition: ``self.lm``).

    Reads ``tokens[text]`` (LMTokens (B, T, D), right-padded, mask (B, T)) and, when
    present, ``tokens[image]`` (CodeTokens with ``codes (B, N)``). Returns ``tokens[text]``
    as LMTokens over the joint sequence (B, T + 1 + N, D) with the joint ``ids`` and
    ``mask`` (what the ``dalle-prior`` objective scores); ``embeddings[text]``: the last
    real position's hidden state (B, D).
    """

    def __init__(self, cfg: DallePriorConfig, width: int, kernels: KernelSet) -> None:
        super().__init__()
        self.cfg = cfg
        self.grid = cfg.grid()
        self.lm = DecoderLM(cfg, width, kernels)
        self.embedding_widths = {cfg.text: width}
        #: image codes then BOI (codebook_size + 1, D), and one position per grid cell (N, D)
        self.image_embedding = nn.Embedding(cfg.codebook_size + 1, width)
        self.image_positions = nn.Parameter(torch.zeros(cfg.image_tokens, width))
        nn.init.normal_(self.image_embedding.weight, std=0.02)
        nn.init.normal_(self.image_positions, std=0.02)

    def new_cache(self) -> KVCache:
        return self.lm.new_cache()

    def embed_image(self, ids: Tensor, index: Tensor) -> Tensor:
        """Joint-vocabulary image/BOI ids (B, N) at grid cells ``index`` (B, N) (BOI: -1,
        no position) -> (B, N, D)."""
        local = ids - self.cfg.text_vocab
        if local.numel() and (int(local.min()) < 0 or int(local.max()) > self.cfg.codebook_size):
            raise ValueError(f"image ids must lie in [{self.cfg.text_vocab}, "
                             f"{self.cfg.vocab_size}); got [{int(ids.min())}, {int(ids.max())}]")
        x = self.image_embedding(local)
        at = index.clamp(min=0)
        return x + self.image_positions[at] * (index >= 0).unsqueeze(-1).to(x.dtype)

    def hidden(self, embeds: Tensor, mask: Tensor, cache: KVCache | None = None) -> Tensor:
        """(B, T, D) embeddings -> final-norm hidden states (B, T, D)."""
        return self.lm.hidden(embeds, mask, cache)

    def forward(self, tokens: dict[str, Tokens]) -> FusionOutput:
        cfg = self.cfg
        if cfg.text not in tokens:
            raise ValueError(f"dalle-prior reads modality {cfg.text!r}; the batch has "
                             f"{sorted(tokens)}")
        text = tokens[cfg.text]
        b, device = text.x.shape[0], text.x.device
        text_ids: Tensor | None = getattr(text, "ids", None)
        image_ids = torch.full((b, 1), cfg.boi, dtype=torch.long, device=device)
        index = torch.full((b, 1), -1, dtype=torch.long, device=device)
        image = tokens.get(cfg.image)
        codes = getattr(image, "codes", None)
        if codes is not None:
            if codes.shape[1] != cfg.image_tokens:
                raise ValueError(f"dalle-prior expects {cfg.image_tokens} image tokens, got "
                                 f"{codes.shape[1]} (set image_tokens to the codec's grid)")
            image_ids = torch.cat([image_ids, codes.long() + cfg.text_vocab], dim=1)
            index = torch.cat([index, torch.arange(codes.shape[1], device=device)
                               .expand(b, -1)], dim=1)
        embeds = torch.cat([text.x, self.embed_image(image_ids, index)], dim=1)
        mask = torch.cat([text.valid(), torch.ones_like(image_ids, dtype=torch.bool)], dim=1)
        x = self.hidden(embeds, mask)  # (B, T + 1 + N, D)
        joint = None if text_ids is None else torch.cat([text_ids, image_ids], dim=1)
        out = LMTokens(x, mask, ids=joint, embedding=getattr(text, "embedding", None))
        return FusionOutput(tokens={**tokens, cfg.text: out},
                            embeddings={cfg.text: last_real(x, mask)})


def build_dalle_prior(cfg: DallePriorConfig, ctx: BuildContext) -> DallePrior:
    if cfg.text not in ctx.widths:
        raise ValueError(f"text: the model has no modality {cfg.text!r}; it has "
                         f"{sorted(ctx.widths)}")
    cfg.grid()
    return DallePrior(cfg, ctx.widths[cfg.text], ctx.kernels)


def example_prior_inputs(module: DallePrior, batch: int,
                         generator: torch.Generator) -> dict[str, Tokens]:
    """Right-padded text (ids below ``text_vocab``) and a full grid of codes."""
    cfg, length = module.cfg, 5
    width = module.embedding_widths[cfg.text]
    ids = torch.randint(0, cfg.text_vocab, (batch, length), generator=generator)
    lengths = torch.randint(1, length + 1, (batch,), generator=generator)
    mask = torch.arange(length)[None, :] < lengths[:, None]
    text = LMTokens(torch.randn(batch, length, width, generator=generator), mask, ids=ids)
    codes = torch.randint(0, cfg.codebook_size, (batch, cfg.image_tokens), generator=generator)
    image = CodeTokens(torch.randn(batch, cfg.image_tokens, 4, generator=generator),
                       codes=codes, grid=module.grid)
    return {cfg.text: text, cfg.image: image}


# -- objective: next-token loss on the image tokens -------------------------------------------


class DallePriorLossConfig(ComponentConfig):
    #: the head whose logits (B, L, V) over the joint vocabulary are scored
    head: str = "lm"
    #: the fusion output holding the joint ids and mask (the prior's ``text``)
    text: str = "text"
    #: ids at or above this are image codes (and BOI, the last id, never a target)
    text_vocab: int = Field(259, gt=0)
    #: weight of the text tokens' loss (0: image tokens only)
    text_weight: float = Field(0.0, ge=0)


class DallePriorLoss(Objective):
    """Cross-entropy of token t+1 from the logits at t: averaged over image-code targets,
    plus ``text_weight`` times the average over real text targets (padding and BOI are
    never targets)."""

    def __init__(self, cfg: DallePriorLossConfig) -> None:
        super().__init__()
        self.cfg = cfg

    def targets(self, output: ModelOutput, vocab: int) -> tuple[Tensor, Tensor, Tensor]:
        """(next-token targets (B, L), image targets (B, L) bool, text targets (B, L) bool)."""
        tokens = output.tokens.get(self.cfg.text)
        ids = getattr(tokens, "ids", None)
        if tokens is None or ids is None:
            raise ValueError(f"dalle-prior loss reads the joint ids of fusion output "
                             f"{self.cfg.text!r} (the dalle-prior fusion makes them)")
        valid = tokens.valid()
        targets = torch.full_like(ids, IGNORE_INDEX)
        targets[:, :-1] = ids[:, 1:].masked_fill(~valid[:, 1:], IGNORE_INDEX)
        image = (targets >= self.cfg.text_vocab) & (targets < vocab - 1)
        text = (targets >= 0) & (targets < self.cfg.text_vocab)
        return targets, image, text

    def forward(self, output: ModelOutput, batch: Batch) -> dict[str, Tensor]:
        if self.cfg.head not in output.heads:
            raise ValueError(f"dalle-prior loss reads head {self.cfg.head!r}; the model has "
                             f"{sorted(output.heads)}")
        logits = output.heads[self.cfg.head]  # (B, L, V), half precision scored in float32
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
        targets, image, text = self.targets(output, logits.shape[-1])
        nll = F.cross_entropy(logits.flatten(0, 1), targets.clamp(min=0).flatten(),
                              reduction="none").view_as(targets)  # (B, L)
        image_loss = _mean(nll, image)
        text_loss = _mean(nll, text)
        correct = (logits.argmax(-1) == targets) & image
        accuracy = correct.sum() / image.sum().clamp(min=1)
        loss = image_loss + self.cfg.text_weight * text_loss
        return {"loss": loss, "image_loss": image_loss.detach(),
                "text_loss": text_loss.detach(), "image_accuracy": accuracy.detach()}


def _mean(values: Tensor, where: Tensor) -> Tensor:
    """Mean of ``values`` where ``where``; 0 (with a graph) where nothing is selected."""
    return (values * where).sum() / where.sum().clamp(min=1)


def build_dalle_prior_loss(cfg: DallePriorLossConfig, ctx: BuildContext) -> DallePriorLoss:
    return DallePriorLoss(cfg)


def example_prior_loss(module: DallePriorLoss, batch: int,
                       generator: torch.Generator) -> tuple[ModelOutput, dict[str, Any]]:
    """Joint ids: 3 text (last row padded), BOI, 4 codes; vocab text_vocab + 6 + 1."""
    cfg = module.cfg
    vocab = cfg.text_vocab + 7
    text = torch.randint(0, cfg.text_vocab, (batch, 3), generator=generator)
    codes = torch.randint(cfg.text_vocab, vocab - 1, (batch, 4), generator=generator)
    ids = torch.cat([text, torch.full((batch, 1), vocab - 1), codes], dim=1)
    mask = torch.ones_like(ids, dtype=torch.bool)
    mask[-1, 2] = False
    x = torch.randn(batch, ids.shape[1], 4, generator=generator)
    logits = torch.randn(batch, ids.shape[1], vocab, generator=generator)
    output = ModelOutput(tokens={cfg.text: LMTokens(x, mask, ids=ids)}, embeddings={},
                         heads={cfg.head: logits})
    return output, {}

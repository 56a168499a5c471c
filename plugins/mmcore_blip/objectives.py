"""BLIP's ITM and LM objectives over the ``blip`` fusion's outputs (ITC is the ordinary
``contrastive`` objective on ``embeddings["image"]`` / ``embeddings["text"]``).

- ``blip-matching``: binary matched / not-matched classification of the grounded encoder's
  first token, over the B positive pairs and 2B hard negatives mined from the ITC
  similarities (:func:`mmcore_objectives.matching.mine_hard_negatives`; sampled in
  training, the hardest in eval), re-encoded through the fusion's shared layers
  (``GroundedTokens.reground``). The objective owns only the classifier (HF ``itm_head``).
- ``blip-lm``: next-token cross-entropy of the decoder states through BERT's prediction
  head (dense, activation, LayerNorm, vocabulary projection; HF ``cls.predictions``).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from mmcore.builder import BuildContext
from mmcore.contract import Batch, ModelOutput, Objective, Tokens
from mmcore.layers.mlp import activation
from mmcore.registry import ComponentConfig
from mmcore_blip.fusion import GroundedTokens
from mmcore_objectives.common import accuracy, token_width, tokens_of
from mmcore_objectives.matching import mine_hard_negatives


class BlipMatchingConfig(ComponentConfig):
    #: the grounded tokens (the blip fusion's "fused")
    tokens: str = "fused"
    #: the ITC embeddings whose similarity (text rows, image columns) picks negatives
    similarity: tuple[str, str] = ("text", "image")
    #: softmax temperature over similarities when sampling hard negatives
    temperature: float = Field(0.07, gt=0)
    #: width of the grounded tokens; None: the fusion's "fused" embedding width
    width: int | None = Field(None, gt=0)
    #: seed of the objective's own sampling generator; None: the global torch RNG
    seed: int | None = None
    #: batch key of labels: items with equal labels (one class, one image) are never each
    #: other's negatives (shapes captions fit every image of their class); None: off
    label: str | None = "label"


class BlipMatching(Objective):
    """ITM over positives and hard negatives. -> loss, accuracy, positive_accuracy."""

    def __init__(self, cfg: BlipMatchingConfig, *, width: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.head = nn.Linear(width, 2)  # (not matched, matched)
        self._generator: torch.Generator | None = None

    def similarity(self, output: ModelOutput) -> Tensor:
        """Cosine similarity of the ITC embeddings, text rows x image columns. (B, B)"""
        a, b = self.cfg.similarity
        missing = [n for n in (a, b) if n not in output.embeddings]
        if missing:
            raise ValueError(f"blip-matching: no embeddings {missing} to mine negatives "
                             f"with; the output has {sorted(output.embeddings)}")
        ea = F.normalize(output.embeddings[a].detach().float(), dim=-1)
        eb = F.normalize(output.embeddings[b].detach().float(), dim=-1)
        return ea @ eb.t()

    def _negatives(self, output: ModelOutput, batch: Batch) -> tuple[Tensor, Tensor]:
        sim = self.similarity(output)
        if self.cfg.seed is not None and self._generator is None:
            self._generator = torch.Generator(sim.device).manual_seed(self.cfg.seed)
        labels = batch.get(self.cfg.label) if self.cfg.label is not None else None
        if isinstance(labels, Tensor) and labels.shape == sim.shape[:1]:
            labels = labels.to(sim.device)
        else:
            labels = None
        return mine_hard_negatives(sim, temperature=self.cfg.temperature,
                                   hardest=not self.training, generator=self._generator,
                                   labels=labels)

    def forward(self, output: ModelOutput, batch: Batch) -> dict[str, Tensor]:
        fused = tokens_of(output, self.cfg.tokens, "blip-matching")
        if not isinstance(fused, GroundedTokens) or fused.reground is None:
            raise ValueError(f"blip-matching: tokens {self.cfg.tokens!r} cannot re-encode "
                             "pairs; they must come from the blip fusion")
        first = [fused.x[:, 0]]  # (B, D) positives
        b = fused.x.shape[0]
        if b > 1:
            neg_image, neg_text = self._negatives(output, batch)  # (B,), (B,)
            rows = torch.arange(b, device=fused.x.device)
            first += [fused.reground(rows, neg_image)[:, 0], fused.reground(neg_text, rows)[:, 0]]
        logits = self.head(torch.cat(first))  # (B or 3B, 2)
        labels = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
        labels[:b] = 1
        return {"loss": F.cross_entropy(logits.float(), labels),
                "accuracy": accuracy(logits, labels),
                "positive_accuracy": accuracy(logits[:b], labels[:b])}


def build_blip_matching(cfg: BlipMatchingConfig, ctx: BuildContext) -> BlipMatching:
    width = token_width(cfg.width, "fused", ctx.embedding_widths, "width")
    return BlipMatching(cfg, width=width)


def example_blip_matching(module: BlipMatching, batch_size: int, generator: torch.Generator
                          ) -> tuple[ModelOutput, dict[str, object]]:
    """Grounded tokens whose reground mixes the two rows' random states."""
    width = module.head.in_features
    x = torch.randn(batch_size, 4, width, generator=generator)
    images = torch.randn(batch_size, 4, width, generator=generator)

    def reground(text_rows: Tensor, image_rows: Tensor) -> Tensor:
        return torch.tanh(x[text_rows] + images[image_rows])

    fused = GroundedTokens(torch.tanh(x + images), None, reground=reground)
    emb = {n: torch.randn(batch_size, 8, generator=generator) for n in ("text", "image")}
    return ModelOutput(tokens={"fused": fused}, embeddings=emb), {}


class BlipLMConfig(ComponentConfig):
    #: the decoder states (the blip fusion's "decoder")
    tokens: str = "decoder"
    #: the batch key of the caption ids
    text: str = "text"
    vocab_size: int = Field(gt=1)
    #: width of the decoder states; None: the text modality's width
    width: int | None = Field(None, gt=0)
    act: str = "gelu"
    norm_eps: float = Field(1e-12, gt=0)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    #: generation: the id that ends a caption (BERT's [SEP]) and the id after it
    eos_id: int | None = Field(None, ge=0)
    pad_id: int | None = Field(None, ge=0)


class LMHead(nn.Module):
    """BERT's prediction head: (B, L, D) -> logits (B, L, V)."""

    def __init__(self, *, width: int, vocab_size: int, act: str, eps: float) -> None:
        super().__init__()
        self.dense = nn.Linear(width, width)
        self.act = activation(act)
        self.norm = nn.LayerNorm(width, eps=eps)
        self.decoder = nn.Linear(width, vocab_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.decoder(self.norm(self.act(self.dense(x))))


class BlipLM(Objective):
    """Teacher-forced next-token loss of the decoder. -> loss, token_accuracy."""

    def __init__(self, cfg: BlipLMConfig, *, width: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.head = LMHead(width=width, vocab_size=cfg.vocab_size, act=cfg.act,
                           eps=cfg.norm_eps)

    def forward(self, output: ModelOutput, batch: Batch) -> dict[str, Tensor]:
        states = tokens_of(output, self.cfg.tokens, "blip-lm")
        raw = batch.get(self.cfg.text)
        if raw is None:
            raise ValueError(f"blip-lm: the batch has no captions {self.cfg.text!r}")
        ids = (raw["ids"] if isinstance(raw, Mapping) else raw).to(states.x.device)
        mask = states.valid() if not isinstance(raw, Mapping) or raw.get("mask") is None \
            else raw["mask"].to(states.x.device).bool()
        logits = self.head(states.x[:, :-1])  # (B, L-1, V): position t predicts t + 1
        keep = mask[:, 1:]
        pred, target = logits[keep], ids[:, 1:][keep]  # (M, V), (M,)
        loss = F.cross_entropy(pred.float(), target, label_smoothing=self.cfg.label_smoothing)
        return {"loss": loss, "token_accuracy": accuracy(pred, target)}


def build_blip_lm(cfg: BlipLMConfig, ctx: BuildContext) -> BlipLM:
    widths = dict(ctx.widths)
    width = cfg.width or widths.get("text") or ctx.embedding_widths.get("fused")
    if width is None:
        raise ValueError("blip-lm: the decoder width is not known here; set width")
    return BlipLM(cfg, width=width)


def example_blip_lm(module: BlipLM, batch_size: int, generator: torch.Generator
                    ) -> tuple[ModelOutput, dict[str, object]]:
    """Random decoder states and padded captions (at least two real tokens each)."""
    width = module.head.dense.in_features
    length = 6
    ids = torch.randint(0, module.cfg.vocab_size, (batch_size, length), generator=generator)
    lengths = torch.randint(2, length + 1, (batch_size,), generator=generator)
    mask = torch.arange(length)[None, :] < lengths[:, None]
    states = Tokens(torch.randn(batch_size, length, width, generator=generator), mask)
    return (ModelOutput(tokens={module.cfg.tokens: states}, embeddings={}),
            {module.cfg.text: {"ids": ids, "mask": mask}})

"""``whisper-lm``: fine-tuning Whisper, the teacher-forced next-token loss of its decoder on
transcripts behind the task prompt.

Each transcript becomes ``<|startoftranscript|> <|lang|> <|transcribe|> <|notimestamps|>
" " + text <|endoftext|>`` (an English-only model has no language and task tokens). As in
transformers, where ``labels`` are that sequence without its first token and the decoder
input is ``labels`` shifted right behind ``<|startoftranscript|>``, the decoder reads
tokens 0..L-2 and predicts tokens 1..L-1, padding ignored. transformers takes the loss on
every label it is given, the prompt's language, task and ``<|notimestamps|>`` included; here
``prompt_loss: false`` (the default) leaves those three out and trains on the text and
``<|endoftext|>`` only (as transformers does when the prompt labels are -100).

The decoder is the model's ``whisper-decoder`` head (shared, not copied: the objective keeps
a reference, so the weights are saved once, under the head); an objective built alone (the
conformance suite) owns a ``decoder`` of its own. Transcripts are strings tokenized with the
head's tokenizer.json, or already ``{"ids": (B, L), "mask": (B, L)}`` with the prompt.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import model_validator
from torch import Tensor

from mmcore.builder import BuildContext
from mmcore.contract import Batch, ModelOutput, Objective, Tokens
from mmcore.registry import ComponentConfig
from mmcore_whisper.decoder import WhisperDecoder, WhisperDecoderConfig, tiny_tokens

IGNORE = -100


class WhisperLMConfig(ComponentConfig):
    #: the whisper-decoder head to train (None: the model's only one)
    head: str | None = None
    #: a decoder of its own instead of a head (an objective built alone)
    decoder: WhisperDecoderConfig | None = None
    #: the batch key of the transcripts
    text: str = "text"
    #: the language token of the prompt (multilingual models)
    language: str | None = "en"
    task: str = "transcribe"
    #: also learn the prompt's language, task and <|notimestamps|> (as transformers does
    #: when its labels include them)
    prompt_loss: bool = False

    @model_validator(mode="after")
    def _one_decoder(self) -> WhisperLMConfig:
        if self.head is not None and self.decoder is not None:
            raise ValueError("give head (the model's whisper-decoder) or decoder, not both")
        return self


class WhisperLM(Objective):
    """Cross-entropy of each transcript token from the decoder reading the audio tokens."""

    def __init__(self, cfg: WhisperLMConfig, head: WhisperDecoder | None) -> None:
        super().__init__()
        self.cfg = cfg
        self._shared = [head] if head is not None else []  # a list: not a submodule
        self.own = None if head is not None else _own_decoder(cfg)

    @property
    def decoder(self) -> WhisperDecoder:
        return self._shared[0] if self._shared else self.own  # type: ignore[return-value]

    def prompt(self) -> list[int]:
        """<|startoftranscript|> [<|lang|> <|task|>] <|notimestamps|>."""
        tokens = self.decoder.tokens
        language = tokens.language_id(self.cfg.language) if tokens.multilingual and \
            self.cfg.language is not None else None
        return tokens.prompt(language_id=language, task=self.cfg.task, timestamps=False)

    def encode_texts(self, texts: Sequence[str]) -> dict[str, Tensor]:
        """Transcripts -> {"ids": (B, L) right-padded with <|endoftext|>, "mask": (B, L)}."""
        from mmcore_whisper.transcribe import load_tokenizer

        tokens = self.decoder.tokens
        if tokens.tokenizer is None:
            raise ValueError("whisper-lm: the decoder names no tokenizer.json to tokenize "
                             "the transcripts with")
        tokenizer = load_tokenizer(str(tokens.tokenizer))
        prompt = self.prompt()
        rows = [[*prompt, *tokenizer.encode(" " + t.strip(), add_special_tokens=False).ids,
                 tokens.eos] for t in texts]
        return pad_rows(rows, tokens.eos)

    def _sequences(self, batch: Batch, device: torch.device) -> tuple[Tensor, Tensor]:
        raw = batch.get(self.cfg.text)
        if raw is None:
            raise ValueError(f"whisper-lm: the batch has no transcripts {self.cfg.text!r}")
        if not isinstance(raw, Mapping):
            raw = self.encode_texts(list(raw))
        ids = raw["ids"].to(device)
        mask = raw.get("mask")
        mask = torch.ones_like(ids, dtype=torch.bool) if mask is None else mask.to(device).bool()
        limit = self.decoder.cfg.max_positions
        if ids.shape[1] - 1 > limit:
            raise ValueError(f"whisper-lm: a transcript of {ids.shape[1]} tokens (prompt "
                             f"included) exceeds the decoder's {limit + 1}")
        return ids, mask

    def labels(self, ids: Tensor, mask: Tensor) -> Tensor:
        """Targets of positions 0..L-2: ids[1:], IGNORE on padding (and on the prompt
        unless ``prompt_loss``). (B, L-1)"""
        labels = ids[:, 1:].masked_fill(~mask[:, 1:], IGNORE)
        if not self.cfg.prompt_loss:
            labels[:, : len(self.prompt()) - 1] = IGNORE
        return labels

    def forward(self, output: ModelOutput, batch: Batch) -> dict[str, Tensor]:
        decoder = self.decoder
        context = output.tokens.get(decoder.cfg.context)
        if context is None:
            raise ValueError(f"whisper-lm reads tokens {decoder.cfg.context!r}; the model gave "
                             f"{sorted(output.tokens)}")
        ids, mask = self._sequences(batch, context.x.device)
        logits = decoder.decode(ids[:, :-1], context)  # (B, L-1, V)
        labels = self.labels(ids, mask)  # (B, L-1)
        loss = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(),
                               ignore_index=IGNORE)
        valid = labels != IGNORE
        correct = (logits.argmax(-1) == labels) & valid
        accuracy = correct.sum().float() / valid.sum().clamp(min=1).float()
        return {"loss": loss, "token_accuracy": accuracy.detach(), "tokens": valid.sum()}


def pad_rows(rows: list[list[int]], pad: int) -> dict[str, Tensor]:
    """Token lists -> {"ids": (B, L) right-padded with ``pad``, "mask": (B, L) bool}."""
    length = max(len(r) for r in rows)
    ids = torch.full((len(rows), length), pad, dtype=torch.long)
    mask = torch.zeros(len(rows), length, dtype=torch.bool)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = True
    return {"ids": ids, "mask": mask}


def _own_decoder(cfg: WhisperLMConfig) -> WhisperDecoder:
    if cfg.decoder is None:
        raise ValueError("whisper-lm needs the model's whisper-decoder head (heads: ...) or a "
                         "decoder of its own (decoder: {...})")
    from mmcore.kernels import KernelSet

    return WhisperDecoder(cfg.decoder, context_width=cfg.decoder.context_width or
                          cfg.decoder.width, kernels=KernelSet())


def build_whisper_lm(cfg: WhisperLMConfig, ctx: BuildContext) -> WhisperLM:
    if cfg.decoder is not None:
        return WhisperLM(cfg, None)
    decoders = {n: h for n, h in ctx.head_modules.items() if isinstance(h, WhisperDecoder)}
    if cfg.head is not None:
        if cfg.head not in decoders:
            raise ValueError(f"whisper-lm: head {cfg.head!r} is not a whisper-decoder head of "
                             f"this model (its whisper-decoder heads: "
                             f"{', '.join(sorted(decoders)) or 'none'})")
        return WhisperLM(cfg, decoders[cfg.head])
    if len(decoders) != 1:
        raise ValueError(f"whisper-lm: the model has {len(decoders)} whisper-decoder heads "
                         f"({', '.join(sorted(decoders)) or 'none'}); name one with head: ...")
    return WhisperLM(cfg, next(iter(decoders.values())))


TINY_DECODER: dict[str, Any] = {"context": "alpha", "vocab_size": 16, "width": 16,
                                "layers": 1, "heads": 2, "ffn_dim": 32, "max_positions": 8,
                                "tokens": tiny_tokens()}


def example_whisper_lm(module: WhisperLM, batch_size: int,
                       generator: torch.Generator) -> tuple[ModelOutput, dict[str, Any]]:
    """Audio tokens and prompted, right-padded transcripts of the tiny config."""
    width = module.decoder.embed_tokens.weight.shape[1]
    context = Tokens(torch.randn(batch_size, 5, width, generator=generator))
    prompt = module.prompt()
    rows = [[*prompt, *torch.randint(0, 10, (2 + i % 3,), generator=generator).tolist(),
             module.decoder.tokens.eos] for i in range(batch_size)]
    output = ModelOutput(tokens={module.decoder.cfg.context: context}, embeddings={})
    return output, {module.cfg.text: pad_rows(rows, module.decoder.tokens.eos)}

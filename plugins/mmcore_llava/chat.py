"""The chat template and the ``llava-chat`` preprocessor: conversation turns -> ids with each
``<image>`` placeholder expanded to the image's tokens, and labels that keep only the answer.

A text item is either a user message (``str``; generation: the template is applied and the
ids end where the assistant's answer starts) or a training pair
``{"prompt": str, "answer": str}`` (the answer and the end-of-sequence token follow; every
other position, image tokens included, is labelled -100 so the loss ignores it).

Vocabularies: ``bytes`` (UTF-8 bytes 0-255, BOS 256, EOS 257, PAD 258, ``<image>`` 259; needs
no files, what ``llava-tiny`` uses) or a Hugging Face ``tokenizer.json`` (``path``) whose
vocabulary holds the ``<image>`` token (LLaVA-1.5's does).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
from pydantic import Field, model_validator
from torch import Tensor

from mmcore.builder import BuildContext
from mmcore.registry import ComponentConfig

IMAGE = "<image>"
IGNORE_INDEX = -100
#: the ``bytes`` vocabulary's special ids
BYTE_BOS, BYTE_EOS, BYTE_PAD, BYTE_IMAGE = 256, 257, 258, 259
BYTE_VOCAB = 260
#: LLaVA-1.5's (vicuna v1) single-turn template
LLAVA_TEMPLATE = "USER: {prompt} ASSISTANT:"


class LlavaChatConfig(ComponentConfig):
    #: parameters naming files a checkpoint embeds (mmcore.assets)
    asset_fields: ClassVar[tuple[str, ...]] = ("path",)
    #: files beside it that travel with it (chat template, special tokens)
    asset_sidecars: ClassVar[tuple[str, ...]] = ("tokenizer_config.json",
                                                 "special_tokens_map.json")
    #: tokens each image fills (the vision tower's patch tokens, e.g. 576 for 336 px / 14)
    image_tokens: int = Field(gt=0)
    context_length: int = Field(2048, ge=2)
    #: a Hugging Face tokenizer.json; None: the built-in ``bytes`` vocabulary
    path: str | None = None
    #: the conversation around the user's message ``{prompt}``; the answer follows it
    template: str = LLAVA_TEMPLATE
    #: put between the template and the answer in training pairs
    answer_prefix: str = " "
    #: ``path`` only: the tokens it names (``bytes`` has its own)
    image_token: str = IMAGE
    bos_token: str | None = "<s>"
    eos_token: str = "</s>"
    pad_token: str | None = None

    @model_validator(mode="after")
    def _check(self) -> LlavaChatConfig:
        if "{prompt}" not in self.template:
            raise ValueError(f"template {self.template!r} has no {{prompt}}")
        return self


class _Bytes:
    """UTF-8 bytes; ``<image>`` in the text becomes BYTE_IMAGE."""

    bos, eos, pad, image, vocab_size = BYTE_BOS, BYTE_EOS, BYTE_PAD, BYTE_IMAGE, BYTE_VOCAB

    def encode(self, text: str) -> list[int]:
        pieces = text.split(IMAGE)
        out = list(pieces[0].encode("utf-8"))
        for piece in pieces[1:]:
            out += [self.image, *piece.encode("utf-8")]
        return out

    def decode(self, ids: Sequence[int]) -> str:
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")


class _HFTokenizer:
    """A tokenizer.json (no special tokens added by its post-processor; BOS is ours)."""

    def __init__(self, cfg: LlavaChatConfig) -> None:
        from tokenizers import Tokenizer

        path = Path(cfg.path or "")
        if not path.is_file():
            raise ValueError(f"tokenizer file not found: {path}")
        self.tokenizer = Tokenizer.from_file(str(path))
        self.vocab_size = self.tokenizer.get_vocab_size()
        self.image = self._id(cfg.image_token)
        self.eos = self._id(cfg.eos_token)
        self.bos = self._id(cfg.bos_token) if cfg.bos_token else None
        self.pad = self._id(cfg.pad_token) if cfg.pad_token else self.eos

    def _id(self, token: str) -> int:
        idx = self.tokenizer.token_to_id(token)
        if idx is None:
            raise ValueError(f"token {token!r} is not in the tokenizer's vocabulary")
        return int(idx)

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False).ids)

    def decode(self, ids: Sequence[int]) -> str:
        return str(self.tokenizer.decode(list(ids), skip_special_tokens=True))


def count_placeholders(text: str) -> int:
    """How many ``<image>`` placeholders a prompt holds."""
    return text.count(IMAGE)


class LlavaChatPreprocessor:
    """Items (user messages or ``{"prompt", "answer"}`` pairs) -> ``{"ids": (B, T) int64,
    "mask": (B, T) bool, "labels": (B, T) int64}``, right-padded to T = ``context_length``
    (an item's tensors do not depend on its batch); rows longer than that are refused
    (cutting one would cut an image or the answer)."""

    def __init__(self, cfg: LlavaChatConfig) -> None:
        self.cfg = cfg
        self.vocab: _Bytes | _HFTokenizer = _Bytes() if cfg.path is None else _HFTokenizer(cfg)
        self.vocab_size = self.vocab.vocab_size
        self.context_length = cfg.context_length
        self.image_token_id, self.eos_token_id = self.vocab.image, self.vocab.eos
        self.pad_token_id = self.vocab.pad

    @classmethod
    def from_config(cls, cfg: LlavaChatConfig, ctx: BuildContext) -> LlavaChatPreprocessor:
        return cls(cfg)

    def prompt_ids(self, prompt: str) -> list[int]:
        """BOS + the templated user message, each placeholder expanded."""
        ids = self.vocab.encode(self.cfg.template.format(prompt=prompt))
        return ([] if self.vocab.bos is None else [self.vocab.bos]) + self._expanded(ids)

    def conversation_ids(self, turns: Sequence[tuple[str, str]], user: str) -> list[int]:
        """BOS + every past (user message, answer) turn, each answer ended by EOS, then the
        templated ``user`` message: the ids a multi-turn chat's next answer follows."""
        ids = self.prompt_ids(turns[0][0] if turns else user)
        for i, (message, answer) in enumerate(turns):
            if i:
                ids += self._expanded(self.vocab.encode(self.cfg.template.format(
                    prompt=message)))
            ids += [*self.vocab.encode(self.cfg.answer_prefix + answer), self.vocab.eos]
        if turns:
            ids += self._expanded(self.vocab.encode(self.cfg.template.format(prompt=user)))
        return ids

    def _expanded(self, ids: Sequence[int]) -> list[int]:
        """Each ``<image>`` id repeated ``image_tokens`` times."""
        out: list[int] = []
        for i in ids:
            out += [i] * self.cfg.image_tokens if i == self.vocab.image else [i]
        return out

    def row(self, item: Any) -> tuple[list[int], list[int]]:
        """(ids, labels) of one item."""
        if isinstance(item, str):
            ids = self.prompt_ids(item)
            return ids, [IGNORE_INDEX] * len(ids)
        if not isinstance(item, Mapping) or not {"prompt", "answer"} <= set(item):
            raise TypeError("llava-chat items are strings (user messages) or "
                            f"{{'prompt', 'answer'}} pairs; got {type(item).__name__}")
        prompt = self.prompt_ids(str(item["prompt"]))
        answer = [*self.vocab.encode(self.cfg.answer_prefix + str(item["answer"])),
                  self.vocab.eos]
        return prompt + answer, [IGNORE_INDEX] * len(prompt) + answer

    def __call__(self, items: Sequence[Any]) -> dict[str, Tensor]:
        if isinstance(items, (str, Mapping)) or not items:
            raise TypeError("give a non-empty list of text items")
        rows = [self.row(item) for item in items]
        longest = max(len(ids) for ids, _ in rows)
        if longest > self.cfg.context_length:
            raise ValueError(f"a conversation of {longest} tokens exceeds context_length "
                             f"{self.cfg.context_length}")
        ids = torch.full((len(rows), self.cfg.context_length), self.vocab.pad, dtype=torch.long)
        labels = torch.full_like(ids, IGNORE_INDEX)
        mask = torch.zeros_like(ids, dtype=torch.bool)
        for i, (row, label) in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row)
            labels[i, : len(row)] = torch.tensor(label)
            mask[i, : len(row)] = True
        return {"ids": ids, "mask": mask, "labels": labels}

    def decode(self, ids: Sequence[int]) -> str:
        """Generated ids -> text (special tokens and padding left out)."""
        return self.vocab.decode([i for i in ids if i != self.vocab.eos])


def build_llava_chat(cfg: LlavaChatConfig, ctx: BuildContext) -> LlavaChatPreprocessor:
    return LlavaChatPreprocessor(cfg)


def example_conversations(preprocessor: Any, batch_size: int, generator: Any) -> list[Any]:
    """Mixed user messages and training pairs, for the conformance suite."""
    items: list[Any] = [{"prompt": "<image>\nWhat colour is it?", "answer": "red"},
                        "<image> Describe it.", {"prompt": "Hi", "answer": "hello there"}]
    return [items[i % len(items)] for i in range(batch_size)]


def left_padded(ids: Tensor, mask: Tensor, pad: int) -> tuple[Tensor, Tensor]:
    """Right-padded prompts (B, T) -> the rows left-padded to their longest (B, T'), as
    generation wants."""
    lengths = mask.sum(1)
    width = int(lengths.max())
    out = torch.full((ids.shape[0], width), pad, dtype=ids.dtype)
    out_mask = torch.zeros(ids.shape[0], width, dtype=torch.bool)
    for i, n in enumerate(lengths.tolist()):
        out[i, width - n :] = ids[i, :n]
        out_mask[i, width - n :] = True
    return out, out_mask

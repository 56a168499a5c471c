"""Strings -> ``{"ids": (B, L) int64, "mask": (B, L) bool}``, padded to ``context_length``."""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar

import torch
from pydantic import Field
from torch import Tensor

from mmcore.builder import BuildContext
from mmcore.registry import ComponentConfig

BYTE_BOS, BYTE_EOS, BYTE_PAD = 256, 257, 258
BYTE_VOCAB = 259
#: the files beside a tokenizer.json that a checkpoint carries with it (mmcore.assets)
SIDECARS = ("tokenizer_config.json", "special_tokens_map.json")


class ByteTextConfig(ComponentConfig):
    context_length: int = Field(77, ge=2)
    lowercase: bool = True


def _pack(rows: list[list[int]], length: int, pad: int, eos: int | None) -> dict[str, Tensor]:
    """Truncate (keeping ``eos`` last) and pad rows of ids to ``length``."""
    ids = torch.full((len(rows), length), pad, dtype=torch.long)
    mask = torch.zeros(len(rows), length, dtype=torch.bool)
    for i, row in enumerate(rows):
        if len(row) > length:
            row = row[:length]
            if eos is not None:
                row[-1] = eos
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, : len(row)] = True
    return {"ids": ids, "mask": mask}


def _strings(items: Sequence[Any]) -> list[str]:
    if isinstance(items, str):
        raise TypeError("give a list of strings, not one string")
    bad = [type(t).__name__ for t in items if not isinstance(t, str)]
    if bad:
        raise TypeError(f"text items must be strings; got {', '.join(sorted(set(bad)))}")
    return list(items)


class ByteTextPreprocessor:
    """UTF-8 bytes (0-255) framed by BOS=256 and EOS=257, padded with 258. Needs no files."""

    #: emitted ids are < vocab_size; rows are at most context_length long (validation reads both)
    vocab_size = BYTE_VOCAB

    def __init__(self, cfg: ByteTextConfig) -> None:
        self.cfg = cfg
        self.context_length = cfg.context_length

    @classmethod
    def from_config(cls, cfg: ByteTextConfig, ctx: BuildContext) -> ByteTextPreprocessor:
        return cls(cfg)

    def __call__(self, items: Sequence[Any]) -> dict[str, Tensor]:
        texts = _strings(items)
        if self.cfg.lowercase:
            texts = [t.lower() for t in texts]
        rows = [[BYTE_BOS, *t.encode("utf-8"), BYTE_EOS] for t in texts]
        return _pack(rows, self.cfg.context_length, BYTE_PAD, BYTE_EOS)


#: byte-text's special tokens in the equivalent tokenizer.json
BYTE_SPECIAL = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>"}


@lru_cache
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table, as the ByteLevel
    pre-tokenizer (and CLIP's BPE) uses it."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
            *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = list(keep), 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(keep, map(chr, chars), strict=True))


def byte_text_tokenizer_json(lowercase: bool = True) -> bytes:
    """A Hugging Face tokenizer.json that encodes as ``byte-text`` does: ids 0-255 are the
    UTF-8 bytes (byte-level pre-tokenizer, no merges), ``<s>`` 256 and ``</s>`` 257 frame
    each text, ``<pad>`` is 258; ``lowercase`` as the preprocessor's (equal on ASCII; a
    few non-ASCII characters lowercase differently in Python and in ``tokenizers``).
    Exports write it so that transformers' tokenizer gives byte-text's ids."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    vocab = {char: byte for byte, char in bytes_to_unicode().items()}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    if lowercase:
        tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens(list(BYTE_SPECIAL.values()))
    bos, eos = BYTE_SPECIAL["bos_token"], BYTE_SPECIAL["eos_token"]
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}", special_tokens=[(bos, BYTE_BOS), (eos, BYTE_EOS)])
    return tokenizer.to_str().encode("utf-8")


def read_tokenizer(path: str | Path) -> Any:
    """A ``tokenizers`` Tokenizer from a tokenizer.json; ValueError naming the file for one
    that is not a tokenizer (``tokenizers`` raises a bare ``Exception: expected ident``)."""
    from tokenizers import Tokenizer

    try:
        return Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises plain Exception
        raise ValueError(f"cannot read tokenizer {path}: not a Hugging Face tokenizer.json "
                         f"({exc})") from None


class HFTokenizerConfig(ComponentConfig):
    #: parameters naming files a checkpoint embeds (mmcore.assets)
    asset_fields: ClassVar[tuple[str, ...]] = ("path",)
    #: files beside it that travel with it (chat template, special tokens)
    asset_sidecars: ClassVar[tuple[str, ...]] = SIDECARS
    path: str
    context_length: int = Field(77, ge=2)
    pad_token: str | None = None
    eos_token: str | None = None
    lowercase: bool = False


class HFTokenizerPreprocessor:
    """A Hugging Face ``tokenizers`` tokenizer.json; its own post-processor adds BOS/EOS."""

    def __init__(self, cfg: HFTokenizerConfig) -> None:
        path = Path(cfg.path)
        if not path.is_file():
            raise ValueError(f"tokenizer file not found: {path}")
        self.tokenizer = read_tokenizer(path)
        # files saved by transformers may fix padding/truncation; _pack does both here so
        # the mask ends at the last real token (the EOT), where CLIP-style models pool
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()
        self.cfg = cfg
        self.context_length = cfg.context_length  # the longest row emitted
        self.pad_id = self._id(cfg.pad_token) if cfg.pad_token else 0
        self.eos_id = self._id(cfg.eos_token) if cfg.eos_token else None
        self.vocab_size = self.tokenizer.get_vocab_size()

    def _id(self, token: str) -> int:
        idx = self.tokenizer.token_to_id(token)
        if idx is None:
            raise ValueError(f"token {token!r} is not in the tokenizer's vocabulary")
        return int(idx)

    @classmethod
    def from_config(cls, cfg: HFTokenizerConfig, ctx: BuildContext) -> HFTokenizerPreprocessor:
        return cls(cfg)

    def __call__(self, items: Sequence[Any]) -> dict[str, Tensor]:
        texts = _strings(items)
        if self.cfg.lowercase:
            texts = [t.lower() for t in texts]
        rows = [list(enc.ids) for enc in self.tokenizer.encode_batch(texts)]
        return _pack(rows, self.cfg.context_length, self.pad_id, self.eos_id)

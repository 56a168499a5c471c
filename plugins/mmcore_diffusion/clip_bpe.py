"""The CLIP byte-level BPE tokenizer (``tokenizer/vocab.json`` + ``merges.txt``), as the
``clip-bpe`` text preprocessor: strings -> ``{"ids": (B, L), "mask": (B, L)}``.

Each prompt becomes ``<|startoftext|> tokens <|endoftext|>``, truncated to
``context_length`` (77) and padded with ``pad_token``. Stable Diffusion conditions on every
one of the 77 positions, padding included, so the mask is all True unless ``mask_padding``.
Text is lowercased and its whitespace collapsed, as transformers' ``CLIPTokenizer`` does
without ftfy.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from itertools import pairwise
from pathlib import Path
from typing import Any, ClassVar

import torch
from pydantic import Field
from torch import Tensor

from mmcore.builder import BuildContext
from mmcore.registry import ComponentConfig
from mmcore_text.preprocess import bytes_to_unicode

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
_SPECIAL = r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d"
try:  # \p{L} / \p{N} as CLIP writes them; plain ``re`` classes give the same on ASCII
    import regex as _re

    PATTERN = _re.compile(_SPECIAL + r"|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+", _re.IGNORECASE)
except ImportError:  # pragma: no cover - transformers installs regex
    PATTERN = re.compile(_SPECIAL + r"|[^\W\d_]+|\d|(?:[^\s\w]|_)+", re.IGNORECASE)
MAX_MERGES = 49152 - 256 - 2
#: a vocab.json above this size is refused (SD's is 1.6 MB)
MAX_FILE_BYTES = 64 * 2**20


class CLIPBPEConfig(ComponentConfig):
    #: parameters naming files a checkpoint embeds (mmcore.assets)
    asset_fields: ClassVar[tuple[str, ...]] = ("vocab", "merges")
    vocab: str  # path to vocab.json
    merges: str  # path to merges.txt
    context_length: int = Field(77, ge=2)
    pad_token: str = EOS
    #: mark padding invalid in the mask (Stable Diffusion does not: it attends to all 77)
    mask_padding: bool = False


def _read(path: Path, what: str) -> str:
    if not path.is_file():
        raise ValueError(f"clip-bpe: {what} not found: {path}")
    if path.stat().st_size > MAX_FILE_BYTES:
        raise ValueError(f"clip-bpe: {path} is larger than {MAX_FILE_BYTES} bytes")
    return path.read_text(encoding="utf-8")


class CLIPBPEPreprocessor:
    """CLIP's tokenizer, equal to transformers' ``CLIPTokenizer`` (without ftfy)."""

    def __init__(self, cfg: CLIPBPEConfig) -> None:
        self.cfg = cfg
        vocab = json.loads(_read(Path(cfg.vocab), "vocab.json"))
        if not isinstance(vocab, dict):
            raise ValueError(f"clip-bpe: {cfg.vocab} must hold an object token -> id")
        self.encoder: dict[str, int] = {str(k): int(v) for k, v in vocab.items()}
        # as CLIPTokenizer: the first line (the version header) is skipped, at most 48,894
        lines = _read(Path(cfg.merges), "merges.txt").strip().split("\n")[1:MAX_MERGES + 1]
        pairs = [tuple(line.split()) for line in lines if line.strip()]
        self.ranks = {p: i for i, p in enumerate(pairs) if len(p) == 2}
        for token in (BOS, EOS, cfg.pad_token):
            if token not in self.encoder:
                raise ValueError(f"clip-bpe: token {token!r} is not in {cfg.vocab}")
        self.bos, self.eos, self.pad = (self.encoder[t] for t in (BOS, EOS, cfg.pad_token))
        self.context_length = cfg.context_length
        self.vocab_size = max(self.encoder.values()) + 1
        self.byte_table = bytes_to_unicode()
        self._cache: dict[str, list[str]] = {}

    @classmethod
    def from_config(cls, cfg: CLIPBPEConfig, ctx: BuildContext) -> CLIPBPEPreprocessor:
        return cls(cfg)

    def bpe(self, token: str) -> list[str]:
        """One pre-token (byte characters) -> its BPE pieces; the last ends in ``</w>``."""
        if token in self._cache:
            return self._cache[token]
        word = [*token[:-1], token[-1] + "</w>"]
        while len(word) > 1:
            pairs = set(pairwise(word))
            best = min(pairs, key=lambda p: self.ranks.get(p, float("inf")))
            if best not in self.ranks:
                break
            merged, i = [], 0
            while i < len(word):
                if i + 1 < len(word) and (word[i], word[i + 1]) == best:
                    merged.append(word[i] + word[i + 1])
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = merged
        self._cache[token] = word
        return word

    def ids(self, text: str) -> list[int]:
        """One prompt -> token ids, without BOS/EOS."""
        text = " ".join(text.split()).lower()
        out: list[int] = []
        unk = self.encoder.get(EOS, 0)
        for piece in PATTERN.findall(text):
            chars = "".join(self.byte_table[b] for b in piece.encode("utf-8"))
            out.extend(self.encoder.get(p, unk) for p in self.bpe(chars))
        return out

    def __call__(self, items: Sequence[Any]) -> dict[str, Tensor]:
        if isinstance(items, str) or not all(isinstance(t, str) for t in items):
            raise TypeError("clip-bpe takes a list of strings")
        length = self.context_length
        ids = torch.full((len(items), length), self.pad, dtype=torch.long)
        mask = torch.ones(len(items), length, dtype=torch.bool)
        for i, text in enumerate(items):
            row = [self.bos, *self.ids(text)[: length - 2], self.eos]
            ids[i, : len(row)] = torch.tensor(row)
            if self.cfg.mask_padding:
                mask[i, len(row):] = False
        return {"ids": ids, "mask": mask}

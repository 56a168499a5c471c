"""Text in and out of a causal LM: prompts -> left-padded ids with the model's own text
preprocessor, the one generation loop, and generated ids -> text streamed as it comes.

These are the reusable pieces of ``mmcore generate`` / ``mmcore chat`` for every family
whose trunk is a decoder LM (LLaVA calls them with its own :class:`Decoder` and prompt ids):

* :func:`text_codec` -> :class:`TextCodec` (``encode(str) -> ids``, ``decode(ids) -> str``)
  for an ``hf-tokenizer`` (tokenizer.json) or ``byte-text`` preprocessor;
* :func:`left_pad` and :func:`check_room` (a prompt longer than the context is refused,
  naming both lengths);
* :class:`TextStream`: incremental detokenisation that emits only complete UTF-8 text;
* :func:`generate_text`: the loop (streaming when ``on_text`` is given) -> :class:`TextResult`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from mmcore.generation import Decoder, GenerationConfig, generate, stream

#: what a decoder of partial UTF-8 shows for an incomplete character
REPLACEMENT = "\ufffd"


class TextCodec:
    """Strings <-> token ids of one text preprocessor; ``special`` ids are never shown."""

    def __init__(self, encode: Callable[[str, bool], list[int]],
                 decode: Callable[[list[int]], str], special: set[int]) -> None:
        self._encode, self._decode, self.special = encode, decode, special

    def encode(self, text: str, add_special: bool = True) -> list[int]:
        """``text`` -> ids, with the preprocessor's BOS (and the like) when ``add_special``."""
        return self._encode(text, add_special)

    def decode(self, ids: Sequence[int]) -> str:
        """ids -> text, special tokens left out."""
        return self._decode([int(i) for i in ids if int(i) not in self.special])


def _hf_codec(tokenizer: Any) -> TextCodec:
    special = {int(i) for i, t in tokenizer.get_added_tokens_decoder().items() if t.special}
    return TextCodec(lambda text, add: list(tokenizer.encode(text, add_special_tokens=add).ids),
                     lambda ids: tokenizer.decode(ids, skip_special_tokens=True), special)


def _byte_codec(bos: int, vocab: int) -> TextCodec:
    def encode(text: str, add: bool) -> list[int]:
        return ([bos] if add else []) + list(text.encode("utf-8"))

    def decode(ids: list[int]) -> str:
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")

    return TextCodec(encode, decode, set(range(256, vocab)))


def text_codec(model: Any, modality: str = "text") -> TextCodec:
    """The codec of ``model``'s preprocessor for ``modality``; ValueError if it has none
    that can also decode (an ``hf-tokenizer`` or ``byte-text`` preprocessor)."""
    from mmcore_text import ByteTextPreprocessor

    pre = model.preprocessors.get(modality)
    tokenizer = getattr(pre, "tokenizer", None)
    if tokenizer is not None and hasattr(tokenizer, "get_added_tokens_decoder"):
        return _hf_codec(tokenizer)
    if isinstance(pre, ByteTextPreprocessor):
        from mmcore_text.preprocess import BYTE_BOS, BYTE_VOCAB

        return _byte_codec(BYTE_BOS, BYTE_VOCAB)
    kind = "none" if pre is None else type(pre).__name__
    raise ValueError(f"modality {modality!r} needs an hf-tokenizer or byte-text preprocessor "
                     f"to turn text into ids and back; this model's is {kind}")


def check_room(prompt_tokens: int, context: int, new_tokens: int | None) -> int:
    """The number of new tokens to generate: ``new_tokens``, or all the room left when
    None. ValueError naming the lengths when the prompt (and ``new_tokens``) do not fit."""
    if prompt_tokens >= context:
        raise ValueError(f"the prompt is {prompt_tokens} tokens, longer than the model's "
                         f"context of {context} tokens (at least one must be left to generate)")
    room = context - prompt_tokens
    if new_tokens is not None and new_tokens > room:
        raise ValueError(f"the prompt is {prompt_tokens} tokens and {new_tokens} new tokens "
                         f"were asked for: {prompt_tokens + new_tokens} exceed the model's "
                         f"context of {context} tokens (at most {room} new tokens fit)")
    return room if new_tokens is None else new_tokens


def left_pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[Tensor, Tensor]:
    """Rows of ids -> (ids (B, T) long, mask (B, T) bool), left-padded with ``pad_id``."""
    if not rows or not all(rows):
        raise ValueError("every prompt must have at least one token")
    length = max(len(r) for r in rows)
    ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    mask = torch.zeros(len(rows), length, dtype=torch.bool)
    for i, row in enumerate(rows):
        ids[i, length - len(row):] = torch.tensor(list(row), dtype=torch.long)
        mask[i, length - len(row):] = True
    return ids, mask


class TextStream:
    """Generated ids -> text, piece by piece: :meth:`push` returns only text that is
    complete (no trailing partial UTF-8 character, nothing that may begin a stop string);
    :meth:`flush` the rest at the end. The whole sequence is decoded each time, so
    tokenizers that join pieces (SentencePiece spaces, byte fallback) give exactly
    :func:`visible` of ``codec.decode(all ids)`` in the end."""

    def __init__(self, codec: TextCodec, stop_strings: Sequence[str] = ()) -> None:
        self.codec, self.stop_strings = codec, tuple(stop_strings)
        self.ids: list[int] = []
        self.shown = 0

    def push(self, token: int) -> str:
        self.ids.append(int(token))
        text = self.codec.decode(self.ids)
        if text.endswith(REPLACEMENT):
            return ""
        cut = visible(text, self.stop_strings)
        if len(cut) == len(text):  # hold back a tail that may begin a stop string
            cut = text[: len(text) - _stop_prefix(text, self.stop_strings)]
        return self._emit(cut)

    def flush(self) -> str:
        return self._emit(visible(self.codec.decode(self.ids), self.stop_strings))

    def _emit(self, text: str) -> str:
        new, self.shown = text[self.shown:], max(self.shown, len(text))
        return new


def visible(text: str, stop_strings: Sequence[str]) -> str:
    """``text`` up to the first stop string (which is not shown)."""
    hits = [i for i in (text.find(s) for s in stop_strings) if i >= 0]
    return text[: min(hits)] if hits else text


def _stop_prefix(text: str, stop_strings: Sequence[str]) -> int:
    """Length of the longest tail of ``text`` that is a proper prefix of a stop string."""
    return max((n for s in stop_strings for n in range(1, len(s))
                if text.endswith(s[:n])), default=0)


@dataclass
class TextResult:
    """One generated row: its prompt ids, the new ids (up to and without the stop token),
    the text, and wall-clock timing (seconds to the first new token, and in all)."""

    prompt_ids: list[int]
    token_ids: list[int]
    text: str
    finished: bool
    timing: dict[str, float | None] = field(default_factory=dict)


def _trim(tokens: list[int], stops: set[int]) -> tuple[list[int], bool]:
    for i, token in enumerate(tokens):
        if token in stops:
            return tokens[:i], True
    return tokens, False


def generate_text(decoder: Decoder, codec: TextCodec, ids: Tensor, mask: Tensor,
                  config: GenerationConfig, *,
                  on_text: Callable[[int, str], None] | None = None) -> list[TextResult]:
    """Run the loop on left-padded prompts ``ids, mask: (B, T)``; ``on_text(row, text)``
    receives each row's complete new text as soon as it is decoded (greedy and sampling;
    beam search reports at the end). -> one :class:`TextResult` per returned row; its
    timing holds the seconds to the first token (None with beams), in all, and tokens/s."""
    start = time.perf_counter()
    if config.num_beams > 1:  # beams are known only at the end: no first-token time
        out = generate(decoder, ids, attention_mask=mask, config=config,
                       detokenize=codec.decode if config.stop_strings else None)
        first, rows = None, out.new_tokens.tolist()
    else:
        rows, first = _streamed(decoder, codec, ids, mask, config, on_text)
    total = time.perf_counter() - start
    expand = len(rows) // ids.shape[0]
    results = []
    for r, row in enumerate(rows):
        tokens, finished = _trim(row, set(config.eos_ids))
        prompt = ids[r // expand][mask[r // expand]].tolist()
        timing = {"first_token_s": first, "total_s": total,
                  "tokens_per_s": len(tokens) / total if total > 0 else 0.0}
        text = visible(codec.decode(tokens), config.stop_strings)
        finished = finished or len(text) < len(codec.decode(tokens))
        results.append(TextResult(prompt, tokens, text, finished, timing))
    return results


def _streamed(decoder: Decoder, codec: TextCodec, ids: Tensor, mask: Tensor,
              config: GenerationConfig, on_text: Callable[[int, str], None] | None
              ) -> tuple[list[list[int]], float]:
    """Stream the loop, calling ``on_text``; -> (each row's new ids, seconds to the first)."""
    start, first = time.perf_counter(), 0.0
    rows: list[list[int]] = []
    streams: list[TextStream] = []
    send = on_text or _ignore
    stops = set(config.eos_ids)
    detokenize = codec.decode if config.stop_strings else None
    for step in stream(decoder, ids, attention_mask=mask, config=config,
                       detokenize=detokenize):
        if not rows:
            first = time.perf_counter() - start
            rows = [[] for _ in range(step.shape[0])]
            if on_text is not None:
                streams = [TextStream(codec, config.stop_strings) for _ in rows]
        for r, token in enumerate(step.tolist()):
            rows[r].append(token)
            if streams and not stops.intersection(rows[r]):  # stopped rows are padded
                send(r, streams[r].push(token))
    for r, text_stream in enumerate(streams):
        send(r, text_stream.flush())
    return rows, first


def _ignore(row: int, text: str) -> None:
    pass

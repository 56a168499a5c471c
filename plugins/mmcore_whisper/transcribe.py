"""Transcribe audio with an mmcore Whisper model: 30 s windows, segments, text.

Audio of at most 30 s is featurised padded to 30 s (one window, as Whisper's feature
extractor does). Longer audio is featurised whole and decoded window by window
(Hugging Face's sequential long-form algorithm): each window is the next 3000 log-mel
frames from ``seek`` (zero-padded at the end); with timestamps, a window that ends on a
timestamp pair moves ``seek`` to the last timestamp (the unfinished tail is decoded again in
the next window), otherwise by the whole window. Without timestamps every window moves by
30 s. The model is the ordinary mmcore composition: the audio modality's tokenizer and
encoder, the fusion (late fusion passes the audio tokens through), the decoder head.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from mmcore.contract import Tokens
from mmcore_whisper.decoder import WhisperDecoder
from mmcore_whisper.decoding import LogitRules, beam_search, detect_language, greedy
from mmcore_whisper.tokens import FRAME_SECONDS, TIME_PRECISION

#: conv-stem stride: log-mel frames per audio token
INPUT_STRIDE = 2


@dataclass(frozen=True)
class DecodeOptions:
    """How to decode. ``beam_size`` 1 is greedy search."""

    beam_size: int = 1
    language: str | None = None  # None: detected from the first window
    task: str = "transcribe"
    timestamps: bool = False
    #: tokens generated per window; None: the checkpoint's max_length (or the positions left)
    max_new_tokens: int | None = None
    length_penalty: float = 1.0
    use_cache: bool = True

    def __post_init__(self) -> None:
        if self.beam_size < 1:
            raise ValueError(f"beam_size must be at least 1, got {self.beam_size}")
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")


@dataclass
class Segment:
    """A stretch of audio (seconds) and the tokens (and text) decoded for it."""

    start: float
    end: float
    tokens: list[int]
    text: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"start": round(self.start, 3), "end": round(self.end, 3), "text": self.text}


@dataclass
class Transcript:
    """One audio item's result: the language token used, the segments and all text."""

    language: str | None
    segments: list[Segment] = field(default_factory=list)
    text: str = ""

    @property
    def tokens(self) -> list[int]:
        return [t for s in self.segments for t in s.tokens]

    def as_dict(self) -> dict[str, Any]:
        return {"language": self.language, "text": self.text,
                "segments": [s.as_dict() for s in self.segments]}


# -- the model's parts --------------------------------------------------------------------


def whisper_head(model: Any) -> WhisperDecoder:
    """The model's whisper-decoder head; ValueError if it has none."""
    for head in model.heads.values():
        if isinstance(head, WhisperDecoder):
            return head
    raise ValueError("this model has no whisper-decoder head; it cannot transcribe")


def window_frames(model: Any, head: WhisperDecoder) -> int:
    """Log-mel frames per window: the conv stem's ``frames`` (Whisper: 3000 = 30 s)."""
    stem = model.tokenizers[head.cfg.context]
    return int(stem.cfg.frames)


def encode(model: Any, head: WhisperDecoder, features: Tensor) -> Tokens:
    """features (B, n_mels, frames) -> the audio tokens the decoder reads (B, N, D)."""
    modality = head.cfg.context
    fused = model.fusion(model.encode({modality: features}))
    return head.context_of(fused)


# -- features -----------------------------------------------------------------------------


def features_of(model: Any, head: WhisperDecoder, item: Any) -> Tensor:
    """One audio item (path, (waveform, rate), ...) -> log-mel (n_mels, F): padded to one
    window when it is shorter, else the whole audio."""
    modality = head.cfg.context
    try:
        whole = _unpadded(model, modality)([item])["features"][0]  # (n_mels, L // 160)
    except ValueError:  # shorter than one STFT frame: padding makes it one window
        whole = None
    if whole is not None and whole.shape[-1] > window_frames(model, head):
        return whole
    padded = model.preprocess(modality, [item])
    return padded["features"][0] if isinstance(padded, dict) else padded[0]


def _unpadded(model: Any, modality: str) -> Any:
    """The model's audio preprocessor with the same params but no padding."""
    from mmcore.plugins import get_registry

    spec = model.spec.modalities[modality].preprocessor
    params = {**spec.params, "pad_to_seconds": None}
    return _preprocessor(spec.type, tuple(sorted(params.items())), get_registry())


@lru_cache(maxsize=8)
def _preprocessor(kind: str, params: tuple[tuple[str, Any], ...], registry: Any) -> Any:
    from mmcore.builder import BuildContext
    from mmcore.kernels import KernelSet

    entry = registry.get("preprocessor", kind)
    return entry.factory(entry.config.model_validate(dict(params)),
                         BuildContext(kernels=KernelSet()))


# -- decoding windows ---------------------------------------------------------------------


def _max_new_tokens(head: WhisperDecoder, options: DecodeOptions, prompt_length: int) -> int:
    """Hugging Face's budget: at most ``max_length`` new tokens, within the positions."""
    room = head.cfg.max_positions - prompt_length
    wanted = options.max_new_tokens or head.tokens.max_length or room
    if options.max_new_tokens is not None and wanted > room:
        raise ValueError(f"{prompt_length} prompt tokens + max_new_tokens {wanted} exceed the "
                         f"decoder's {head.cfg.max_positions} positions")
    return min(wanted, room)


def decode_window(head: WhisperDecoder, context: Tokens, prompt: list[int],
                  options: DecodeOptions) -> list[int]:
    """One window's generated tokens (the final EOS removed)."""
    rules = LogitRules(head.tokens, head.cfg.vocab_size, len(prompt), options.timestamps)
    budget = _max_new_tokens(head, options, len(prompt))
    if options.beam_size == 1:
        tokens = greedy(head, context, prompt, rules, budget, use_cache=options.use_cache)[0]
    else:
        tokens = beam_search(head, context, prompt, rules, budget, beams=options.beam_size,
                             length_penalty=options.length_penalty)
    return tokens[:-1] if tokens and tokens[-1] == head.tokens.eos else tokens


def split_segments(tokens: list[int], timestamp_begin: int | None, offset: float,
                   window: int) -> tuple[list[Segment], int]:
    """A window's tokens -> segments (times from ``offset`` seconds) and how many frames to
    move ``seek`` (``window``: the frames this window held)."""
    begin = timestamp_begin if timestamp_begin is not None else 1 << 62
    stamps = [t >= begin for t in tokens]
    ends = [i + 1 for i in range(len(stamps) - 1) if stamps[i] and stamps[i + 1]]
    if not ends:
        return [_whole_window(tokens, stamps, begin, offset, window)], window
    single_ending = stamps[-2:] == [False, True]
    if single_ending:
        ends.append(len(tokens))
    else:
        ends[-1] += 1  # the last pair's second timestamp belongs to the last segment
    segments, last = [], 0
    for i, end in enumerate(ends):
        piece = tokens[last:end]
        closing = piece[-1] if i < len(ends) - 1 or single_ending else piece[-2]
        segments.append(Segment(offset + (piece[0] - begin) * TIME_PRECISION,
                                offset + (closing - begin) * TIME_PRECISION, piece))
        last = end
    if single_ending:  # no speech after the last timestamp: take the whole window
        return segments, window
    return segments, (tokens[last - 2] - begin) * INPUT_STRIDE


def _whole_window(tokens: list[int], stamps: list[bool], begin: int, offset: float,
                  window: int) -> Segment:
    """No timestamp pair: the window is one segment, ending at its last timestamp if any,
    else at the window's end in whole timestamp steps, computed as transformers does (in
    float32, where e.g. 30 frames make 14.99999 steps, truncated to 14, not 15)."""
    frames = torch.tensor(window, dtype=torch.long)
    end_steps: float = int(frames * FRAME_SECONDS / TIME_PRECISION)
    marked = [t for t, s in zip(tokens, stamps, strict=True) if s]
    if marked and marked[-1] != begin:
        end_steps = marked[-1] - begin
    return Segment(offset, offset + end_steps * TIME_PRECISION, tokens)


@torch.no_grad()
def transcribe_features(model: Any, features: Tensor, options: DecodeOptions) -> Transcript:
    """Log-mel features (n_mels, F) -> a Transcript (text not yet filled in)."""
    head = whisper_head(model)
    frames, total = window_frames(model, head), features.shape[-1]
    first = encode(model, head, _window(features, 0, frames))  # also read by detection
    language_id, language = _language(head, first, options)
    prompt = head.tokens.prompt(language_id=language_id, task=options.task,
                                timestamps=options.timestamps)
    result, seek = Transcript(language), 0
    while seek < total:
        held = min(total - seek, frames)
        context = first if seek == 0 else encode(model, head, _window(features, seek, frames))
        tokens = decode_window(head, context, prompt, options)
        segments, moved = split_segments(tokens, head.tokens.timestamp_begin,
                                         seek * TIME_PRECISION / INPUT_STRIDE, held)
        result.segments += segments
        seek += moved
    return result


def _window(features: Tensor, seek: int, frames: int) -> Tensor:
    """``frames`` log-mel frames from ``seek``, zero-padded at the end. (1, n_mels, frames)"""
    window = features[:, seek : seek + frames]
    return F.pad(window, (0, frames - window.shape[-1]))[None]


def _language(head: WhisperDecoder, first: Tokens,
              options: DecodeOptions) -> tuple[int | None, str | None]:
    """(language token, code): the one asked for, detected from the first window's audio
    tokens, or none for an English-only model."""
    tokens = head.tokens
    if not tokens.multilingual:
        if options.language is not None:
            tokens.language_id(options.language)  # raises: English-only
        return None, None
    if options.language is not None:
        language_id = tokens.language_id(options.language)
    else:
        language_id = detect_language(head, first)[0]
    code = next(c for c, i in tokens.languages.items() if i == language_id)
    return language_id, code


# -- text ---------------------------------------------------------------------------------


@lru_cache(maxsize=4)
def load_tokenizer(path: str) -> Any:
    """The ``tokenizers`` Tokenizer of a tokenizer.json (cached)."""
    from tokenizers import Tokenizer

    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"no tokenizer.json at {file}: the Whisper model needs it to "
                                "turn tokens into text (give it with --tokenizer)")
    return Tokenizer.from_file(str(file))


def add_text(result: Transcript, tokenizer: Any, eos: int) -> Transcript:
    """Fill in each segment's and the whole text: text tokens only (ids below <|endoftext|>;
    special and timestamp tokens are skipped)."""
    def text(tokens: list[int]) -> str:
        return str(tokenizer.decode([t for t in tokens if t < eos], skip_special_tokens=True))

    for segment in result.segments:
        segment.text = text(segment.tokens)
    result.text = text(result.tokens)
    return result


@torch.no_grad()
def transcribe(model: Any, items: Sequence[Any], options: DecodeOptions | None = None, *,
               tokenizer: str | None = None) -> list[Transcript]:
    """Transcribe each audio item (a WAV path, a (waveform, rate) pair, ...) with ``model``
    (an mmcore Whisper composition). ``tokenizer``: a tokenizer.json path overriding the
    one the checkpoint names."""
    options = options or DecodeOptions()
    head = whisper_head(model)
    path = tokenizer or head.tokens.tokenizer
    if path is None:
        raise ValueError("this Whisper model names no tokenizer.json; give one with --tokenizer")
    text = load_tokenizer(str(path))
    model.eval()
    results = []
    for item in items:
        features = features_of(model, head, item)
        results.append(add_text(transcribe_features(model, features, options), text,
                                head.tokens.eos))
    return results

"""Transcribe audio with an mmcore Whisper model: 30 s windows, segments, text.

Audio of at most 30 s is featurised padded to 30 s (one window, as Whisper's feature
extractor does). Longer audio is featurised whole and decoded window by window
(Hugging Face's sequential long-form algorithm): each window is the next 3000 log-mel
frames from ``seek`` (zero-padded at the end); with timestamps, a window that ends on a
timestamp pair moves ``seek`` to the last timestamp (the unfinished tail is decoded again in
the next window), otherwise by the whole window. Without timestamps every window moves by
30 s. A clip's last window ends where its audio ends (a 3 s clip is one 3 s segment).
The model is the ordinary mmcore composition: the audio modality's tokenizer and
encoder, the fusion (late fusion passes the audio tokens through), the decoder head.

Several items are transcribed together (``batch_size``): each round encodes the current
window of up to ``batch_size`` items at once and decodes them in one call of the generation
loop (prompts left-padded); an item that finishes makes room for the next. Around each
window runs the policy of :mod:`mmcore_whisper.policy` (openai-whisper's, when asked).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from mmcore.contract import Tokens
from mmcore_whisper.alignment import AlignmentInput, add_words
from mmcore_whisper.decoder import WhisperDecoder
from mmcore_whisper.decoding import WindowResult, decode_windows, detect_language
from mmcore_whisper.options import DecodeOptions, Segment, Transcript
from mmcore_whisper.policy import Text, decode_with_fallback, is_silence, previous_prompt
from mmcore_whisper.tokens import FRAME_SECONDS, TIME_PRECISION

__all__ = ["DecodeOptions", "Segment", "Transcript", "decode_window", "encode", "features_of",
           "split_segments", "transcribe", "transcribe_batch", "transcribe_features",
           "whisper_head"]

#: conv-stem stride: log-mel frames per audio token
INPUT_STRIDE = 2


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


def features_of(model: Any, head: WhisperDecoder, item: Any) -> tuple[Tensor, int]:
    """One audio item (path, (waveform, rate), ...) -> (log-mel (n_mels, F), the frames
    its audio fills): padded to one window when it is shorter, else the whole audio."""
    modality = head.cfg.context
    try:
        whole = _unpadded(model, modality)([item])["features"][0]  # (n_mels, L // 160)
    except ValueError:  # shorter than one STFT frame: padding makes it one window
        whole = None
    if whole is not None and whole.shape[-1] > window_frames(model, head):
        return whole, whole.shape[-1]
    padded = model.preprocess(modality, [item])
    features = padded["features"][0] if isinstance(padded, dict) else padded[0]
    return features, features.shape[-1] if whole is None else max(whole.shape[-1], 1)


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


def _budget(head: WhisperDecoder, options: DecodeOptions, task_prompt: int,
            prompt: int) -> int:
    """New tokens for a window whose prompt has ``prompt`` tokens, ``task_prompt`` of them
    the task's (the rest earlier text, which only ever shortens the budget)."""
    return min(_max_new_tokens(head, options, task_prompt), head.cfg.max_positions - prompt)


def decode_window(head: WhisperDecoder, context: Tokens, prompt: list[int],
                  options: DecodeOptions) -> list[int]:
    """One window's generated tokens (the final EOS removed) at the first temperature."""
    budget = _max_new_tokens(head, options, len(prompt))
    return decode_windows(head, context, [prompt], [budget], options.searches()[0])[0].tokens


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


@dataclass
class _Item:
    """One item being transcribed: log-mel (n_mels, F), the frames its audio fills, where
    decoding is (``seek``, frames), its task prompt once the language is known, and the
    tokens that can prompt later windows (``history[reset:]``)."""

    features: Tensor
    frames: int
    result: Transcript = field(default_factory=lambda: Transcript(None))
    prompt: list[int] | None = None
    seek: int = 0
    history: list[int] = field(default_factory=list)
    reset: int = 0


@torch.no_grad()
def transcribe_features(model: Any, features: Tensor, options: DecodeOptions, *,
                        frames: int | None = None, tokenizer: Any = None) -> Transcript:
    """Log-mel features (n_mels, F) -> a Transcript (text not yet filled in). ``frames``:
    how many of them hold audio (default all)."""
    return transcribe_batch(model, [(features, frames)], options, tokenizer=tokenizer)[0]


@torch.no_grad()
def transcribe_batch(model: Any, items: Sequence[tuple[Tensor, int | None]],
                     options: DecodeOptions, *, tokenizer: Any = None,
                     batch_size: int = 1) -> list[Transcript]:
    """(log-mel (n_mels, F), audio frames or None) per item -> their Transcripts (text not
    yet filled in), up to ``batch_size`` items decoded at once. ``tokenizer``: needed for
    the compression-ratio threshold and an initial prompt."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    head = whisper_head(model)
    initial = _initial_prompt(options, tokenizer)
    states = [_Item(f, n if n is not None else f.shape[-1], history=list(initial))
              for f, n in items]
    pending, active = deque(states), list[_Item]()
    while pending or active:
        while pending and len(active) < batch_size:
            active.append(pending.popleft())
        _round(model, head, active, options, tokenizer)
        active = [s for s in active if s.seek < s.frames]
    return [s.result for s in states]


def _initial_prompt(options: DecodeOptions, tokenizer: Any) -> list[int]:
    """openai-whisper's initial prompt tokens: the text with one leading space."""
    if options.initial_prompt is None:
        return []
    if tokenizer is None:
        raise ValueError("an initial prompt needs the model's tokenizer")
    return list(tokenizer.encode(" " + options.initial_prompt.strip(),
                                 add_special_tokens=False).ids)


def _text_of(tokenizer: Any, eos: int) -> Text | None:
    if tokenizer is None:
        return None
    return lambda ids: str(tokenizer.decode([t for t in ids if t < eos],
                                            skip_special_tokens=True))


def _round(model: Any, head: WhisperDecoder, batch: list[_Item], options: DecodeOptions,
           tokenizer: Any) -> None:
    """Decode the current window of every item in ``batch`` and move each one on."""
    text = _text_of(tokenizer, head.tokens.eos)
    frames = window_frames(model, head)
    context = encode(model, head, torch.cat([_window(s.features, s.seek, frames)
                                             for s in batch]))  # (B, N, D)
    _set_languages(head, batch, context, options)
    prompts = [previous_prompt(s.history[s.reset :], head.tokens.previous,
                               head.cfg.max_positions) + (s.prompt or []) for s in batch]
    budgets = [_budget(head, options, len(s.prompt or []), len(p))
               for s, p in zip(batch, prompts, strict=True)]
    results = decode_with_fallback(head, context, prompts, budgets,
                                   searches=options.searches(),
                                   thresholds=options.thresholds, text=text)
    for row, (state, result) in enumerate(zip(batch, results, strict=True)):
        seek, held = state.seek, min(state.frames - state.seek, frames)
        segments = _advance(head, state, result, options, held)
        if options.word_timestamps and segments:
            part = Tokens(context.x[row : row + 1],
                          None if context.mask is None else context.mask[row : row + 1])
            window = AlignmentInput(_alignment_prompt(head, state), [], held,
                                    seek * TIME_PRECISION / INPUT_STRIDE)
            add_words(head, part, window, segments, _decoder_of(tokenizer))


def _advance(head: WhisperDecoder, state: _Item, result: WindowResult,
             options: DecodeOptions, held: int) -> list[Segment]:
    """Add a window's segments (unless it is silence), move ``seek`` past them; -> the
    segments added."""
    if is_silence(result, options.thresholds):
        state.seek += held
        return []
    segments, moved = split_segments(result.tokens, head.tokens.timestamp_begin,
                                     state.seek * TIME_PRECISION / INPUT_STRIDE, held)
    for segment in segments:
        segment.temperature, segment.avg_logprob = result.temperature, result.avg_logprob
        segment.compression_ratio = result.compression_ratio
        segment.no_speech_prob = result.no_speech_prob
    state.result.segments += segments
    eos = head.tokens.eos  # openai-whisper drops instantaneous and textless segments
    state.history += [t for s in segments if s.start != s.end
                      and any(t < eos for t in s.tokens) for t in s.tokens]
    if not options.condition_on_previous_text or result.temperature > 0.5:
        state.reset = len(state.history)
    state.seek += moved if moved > 0 else held  # never decode the same window again
    return segments


def _alignment_prompt(head: WhisperDecoder, state: _Item) -> list[int]:
    """The item's task prompt with <|notimestamps|> (what word alignment decodes after)."""
    tokens, prompt = head.tokens, state.prompt or [head.tokens.start]
    language = prompt[1] if tokens.multilingual and len(prompt) > 1 else None
    task = next((t for t, i in tokens.tasks.items() if i in prompt), "transcribe")
    return tokens.prompt(language_id=language, task=task, timestamps=False)


def _decoder_of(tokenizer: Any) -> Any:
    if tokenizer is None:
        raise ValueError("word timestamps need the model's tokenizer")
    return lambda ids: str(tokenizer.decode(list(ids), skip_special_tokens=False))


def _window(features: Tensor, seek: int, frames: int) -> Tensor:
    """``frames`` log-mel frames from ``seek``, zero-padded at the end. (1, n_mels, frames)"""
    window = features[:, seek : seek + frames]
    return F.pad(window, (0, frames - window.shape[-1]))[None]


def _set_languages(head: WhisperDecoder, batch: list[_Item], context: Tokens,
                   options: DecodeOptions) -> None:
    """Give each new item its task prompt: the language asked for, detected from its first
    window's audio tokens, or none for an English-only model."""
    new = [i for i, s in enumerate(batch) if s.prompt is None]
    if not new:
        return
    tokens = head.tokens
    codes: list[int | None] = [None] * len(new)
    if options.language is not None:
        codes = [tokens.language_id(options.language)] * len(new)  # raises for .en models
    elif tokens.multilingual:
        index = torch.tensor(new, device=context.x.device)
        part = Tokens(context.x[index], None if context.mask is None else context.mask[index])
        codes = list(detect_language(head, part))
    for i, language_id in zip(new, codes, strict=True):
        batch[i].prompt = tokens.prompt(language_id=language_id, task=options.task,
                                        timestamps=options.timestamps)
        batch[i].result.language = next((c for c, t in tokens.languages.items()
                                         if t == language_id), None)


# -- text ---------------------------------------------------------------------------------


@lru_cache(maxsize=4)
def load_tokenizer(path: str) -> Any:
    """The ``tokenizers`` Tokenizer of a tokenizer.json (cached)."""
    from mmcore_text.preprocess import read_tokenizer

    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"no tokenizer.json at {file}: the Whisper model needs it to "
                                "turn tokens into text (give it with --tokenizer)")
    return read_tokenizer(file)


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
               tokenizer: str | None = None, batch_size: int = 1) -> list[Transcript]:
    """Transcribe each audio item (a WAV path, a (waveform, rate) pair, ...) with ``model``
    (an mmcore Whisper composition), ``batch_size`` items at a time. ``tokenizer``: a
    tokenizer.json path overriding the one the checkpoint names."""
    options = options or DecodeOptions()
    head = whisper_head(model)
    path = tokenizer or head.tokens.tokenizer
    if path is None:
        raise ValueError("this Whisper model names no tokenizer.json; give one with --tokenizer")
    text = load_tokenizer(str(path))
    model.eval()
    features = [features_of(model, head, item) for item in items]
    results = transcribe_batch(model, features, options, tokenizer=text, batch_size=batch_size)
    return [add_text(r, text, head.tokens.eos) for r in results]

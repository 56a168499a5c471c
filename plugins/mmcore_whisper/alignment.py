"""Word-level timestamps from cross-attention alignment, as openai-whisper's ``timing.py``.

For one window's text tokens the decoder is run once more, teacher-forced on
``<|startoftranscript|> [lang task] <|notimestamps|> text <|endoftext|>``, and the
cross-attention scores (``q . k / sqrt(Dh)``, before softmax) of the *alignment heads* are
kept: ``alignment_heads`` of the checkpoint's generation_config.json when it has them, else
openai-whisper's default, every head of the last half of the decoder layers. Per head the
scores over the frames that hold audio are softmaxed, normalised per frame over the tokens
(zero mean, unit std), median-filtered over time (width 7) and averaged over the heads;
dynamic time warping of ``-matrix`` (tokens x audio frames, 20 ms each) gives a monotonic
path whose jumps mark when each token starts. Words are the tokens split on spaces and
punctuation (openai-whisper's ``split_to_word_tokens``); a word starts at its first
token's jump and ends at the next word's start; its probability is the mean of its tokens'
probabilities (softmax over the text vocabulary). Leading and trailing punctuation is
merged into the neighbouring word (openai-whisper's ``merge_punctuations``).

Not done here: openai-whisper's later heuristics that shorten words longer than twice the
median word duration at sentence boundaries, and its ``unicode`` splitting for
zh/ja/th/lo/my (words here are always split on spaces).
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from mmcore.contract import Tokens
from mmcore_whisper.decoder import WhisperDecoder

#: audio tokens per second (one per 20 ms)
TOKENS_PER_SECOND = 50
MEDIAN_FILTER_WIDTH = 7
PREPEND_PUNCTUATIONS = "\"'“¿([{-"
#: openai-whisper's (fullwidth forms written as escapes)
APPEND_PUNCTUATIONS = "\"'.\u3002,\uff0c!\uff01?\uff1f:\uff1a\u201d)]}\u3001"


@dataclass
class Word:
    """A word of a segment: its text (with its leading space), tokens, start and end
    (seconds from the start of the audio) and mean token probability."""

    word: str
    tokens: list[int]
    start: float
    end: float
    probability: float

    def as_dict(self) -> dict[str, object]:
        return {"word": self.word, "start": round(self.start, 3), "end": round(self.end, 3),
                "probability": round(self.probability, 4)}


# -- dynamic time warping -------------------------------------------------------------------


def dtw(cost: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Dynamic time warping of a cost matrix (N, M) -> the path's (row, column) indices
    (each (K,), from (0, 0) to (N-1, M-1)). Each cell extends the cheapest of its diagonal,
    upper and left neighbours, ties broken as openai-whisper's ``dtw_cpu``; cells are filled
    one anti-diagonal at a time (vectorised), which gives the same costs as the plain loop."""
    n, m = cost.shape
    total = np.full((n + 1, m + 1), np.inf)
    trace = np.full((n + 1, m + 1), -1, dtype=np.int8)
    total[0, 0] = 0.0
    for d in range(2, n + m + 1):  # cells (i, j) with i + j = d, 1 <= i <= n, 1 <= j <= m
        i = np.arange(max(1, d - m), min(n, d - 1) + 1)
        j = d - i
        c0, c1, c2 = total[i - 1, j - 1], total[i - 1, j], total[i, j - 1]
        choice = np.where((c0 < c1) & (c0 < c2), 0, np.where((c1 < c0) & (c1 < c2), 1, 2))
        best = np.choose(choice, [c0, c1, c2])
        total[i, j] = cost[i - 1, j - 1] + best
        trace[i, j] = choice
    return backtrace(trace)


def backtrace(trace: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The path through ``trace`` (N+1, M+1) (0: diagonal, 1: up, 2: left) from the end."""
    trace = trace.copy()
    trace[0, :], trace[:, 0] = 2, 1
    i, j = trace.shape[0] - 1, trace.shape[1] - 1
    path = []
    while i > 0 or j > 0:
        path.append((i - 1, j - 1))
        step = trace[i, j]
        if step == 0:
            i, j = i - 1, j - 1
        elif step == 1:
            i -= 1
        elif step == 2:
            j -= 1
        else:
            raise ValueError(f"dtw: unexpected trace value {step} at ({i}, {j})")
    rows, cols = np.array(path[::-1]).T
    return rows, cols


def median_filter(x: Tensor, width: int) -> Tensor:
    """Median over a sliding window of ``width`` along the last axis, reflect-padded.
    (..., T) -> (..., T)"""
    pad = width // 2
    if x.shape[-1] <= pad:
        return x
    shape = x.shape
    flat = x.reshape(-1, 1, shape[-1])
    flat = F.pad(flat, (pad, pad), mode="reflect")
    return flat.unfold(-1, width, 1).sort(dim=-1).values[..., pad].reshape(shape)


# -- attention of the alignment heads -----------------------------------------------------


def alignment_heads(head: WhisperDecoder) -> list[tuple[int, int]]:
    """(layer, head) pairs: the checkpoint's, else every head of the last half of layers."""
    given = head.tokens.alignment_heads
    if given:
        return [(int(layer), int(h)) for layer, h in given]
    layers, heads = head.cfg.layers, head.cfg.heads
    return [(layer, h) for layer in range(layers // 2, layers) for h in range(heads)]


@torch.no_grad()
def cross_attention_scores(head: WhisperDecoder, ids: Tensor, context: Tokens,
                           layers: set[int]) -> tuple[Tensor, dict[int, Tensor]]:
    """Teacher-forced decode of ids (1, L) reading context (1, Nc, Dc) -> logits (1, L, V)
    and, for each layer in ``layers``, the cross-attention scores q.k/sqrt(Dh) before
    softmax (1, H, L, Nc). The same computation as :meth:`WhisperDecoder.decode`."""
    head._check_length(ids.shape[1])
    x = head.embed_tokens(ids) + head.embed_positions.weight[: ids.shape[1]]  # (1, L, D)
    scores: dict[int, Tensor] = {}
    for i, layer in enumerate(head._layers()):
        x = x + head._self_attention(layer, x)
        attn = layer.encoder_attn
        q = attn.split(attn.q_proj(layer.encoder_attn_layer_norm(x)))  # (1, H, L, Dh)
        k, v = attn.keys_values(context.x)  # (1, H, Nc, Dh)
        qk = (q @ k.transpose(-1, -2)) * attn.head_dim ** -0.5  # (1, H, L, Nc)
        if context.mask is not None:
            qk = qk.masked_fill(~context.mask[:, None, None, :], float("-inf"))
        if i in layers:
            scores[i] = qk.float()
        x = x + attn.merge(qk.softmax(dim=-1).to(v.dtype) @ v)
        x = x + layer.mlp(x)
    return head.logits(x), scores


def _alignment_matrix(scores: dict[int, Tensor], pairs: Sequence[tuple[int, int]],
                      audio_tokens: int) -> Tensor:
    """Scores of the alignment heads -> the averaged normalised attention (L, audio_tokens)."""
    weights = torch.stack([scores[layer][0, h] for layer, h in pairs])  # (A, L, Nc)
    weights = weights[:, :, :audio_tokens].softmax(dim=-1)
    std, mean = torch.std_mean(weights, dim=-2, keepdim=True, unbiased=False)
    weights = (weights - mean) / std
    return median_filter(weights, MEDIAN_FILTER_WIDTH).mean(dim=0)


# -- words --------------------------------------------------------------------------------


def split_to_word_tokens(tokens: list[int], decode: object,
                         eos: int) -> tuple[list[str], list[list[int]]]:
    """openai-whisper's ``split_tokens_on_spaces``: tokens -> words and their tokens. A
    token group that decodes to an incomplete UTF-8 character joins the next one; a word
    starts at a leading space, a punctuation mark or a special token (>= ``eos``)."""
    assert callable(decode)
    subwords, groups = _split_on_unicode(tokens, decode)
    words: list[str] = []
    word_tokens: list[list[int]] = []
    for subword, group in zip(subwords, groups, strict=True):
        special = group[0] >= eos
        if special or subword.startswith(" ") or subword.strip() in string.punctuation \
                or not words:
            words.append(subword)
            word_tokens.append(list(group))
        else:
            words[-1] += subword
            word_tokens[-1].extend(group)
    return words, word_tokens


def _split_on_unicode(tokens: list[int], decode: object) -> tuple[list[str], list[list[int]]]:
    assert callable(decode)
    full = decode(tokens)
    replacement = "\ufffd"
    words: list[str] = []
    groups: list[list[int]] = []
    current: list[int] = []
    offset = 0
    for token in tokens:
        current.append(token)
        text = decode(current)
        if replacement not in text or full[offset + text.index(replacement)] == replacement:
            words.append(text)
            groups.append(current)
            current = []
            offset += len(text)
    return words, groups


def merge_punctuations(words: list[Word]) -> None:
    """Attach leading quotes/brackets to the next word and trailing punctuation to the
    previous one, in place; a merged word is left empty (no text, no tokens)."""
    i = len(words) - 2
    j = len(words) - 1
    while i >= 0:  # prepended punctuation
        previous, following = words[i], words[j]
        if previous.word.startswith(" ") and previous.word.strip() in PREPEND_PUNCTUATIONS:
            following.word = previous.word + following.word
            following.tokens = previous.tokens + following.tokens
            previous.word, previous.tokens = "", []
        else:
            j = i
        i -= 1
    i, j = 0, 1
    while j < len(words):  # appended punctuation
        previous, following = words[i], words[j]
        if not previous.word.endswith(" ") and following.word in APPEND_PUNCTUATIONS:
            previous.word = previous.word + following.word
            previous.tokens = previous.tokens + following.tokens
            following.word, following.tokens = "", []
        else:
            i = j
        j += 1


@dataclass(frozen=True)
class AlignmentInput:
    """One window to align: its task prompt (start [lang task] <|notimestamps|>), the text
    tokens of its segments (timestamps removed), how many log-mel frames hold audio, and
    its offset in seconds."""

    sot: list[int]
    text_tokens: list[int]
    frames: int
    offset: float


def find_alignment(head: WhisperDecoder, context: Tokens, window: AlignmentInput,
                   decode: object) -> list[Word]:
    """The words of one window's text tokens with their times (seconds from the start of
    the audio) and probabilities. ``context``: the window's audio tokens (1, Nc, D);
    ``decode``: token ids -> text (special tokens kept)."""
    eos, text = head.tokens.eos, window.text_tokens
    if not text:
        return []
    ids = torch.tensor([[*window.sot, *text, eos]], device=context.x.device)
    pairs = alignment_heads(head)
    logits, scores = cross_attention_scores(head, ids, context, {layer for layer, _ in pairs})
    start = len(window.sot) - 1  # the <|notimestamps|> position predicts the first token
    probs = logits[0, start : start + len(text), :eos].float().softmax(dim=-1)
    token_probs = probs[torch.arange(len(text)), torch.tensor(text)].cpu().numpy()
    audio_tokens = max(1, min(window.frames // 2, context.x.shape[1]))
    matrix = _alignment_matrix(scores, pairs, audio_tokens)[start:-1]  # (T + 1, frames)
    rows, cols = dtw(-matrix.double().cpu().numpy())
    words, groups = split_to_word_tokens([*text, eos], decode, eos)
    if len(groups) <= 1:
        return []
    bounds = np.pad(np.cumsum([len(g) for g in groups[:-1]]), (1, 0))
    jumps = np.pad(np.diff(rows), (1, 0), constant_values=1).astype(bool)
    jump_times = cols[jumps] / TOKENS_PER_SECOND
    out = [Word(w, g, window.offset + float(jump_times[a]), window.offset + float(jump_times[b]),
                float(np.mean(token_probs[a:b])))
           for w, g, a, b in zip(words, groups, bounds[:-1], bounds[1:], strict=False)]
    merge_punctuations(out)
    return out


def add_words(head: WhisperDecoder, context: Tokens, window: AlignmentInput,
              segments: Sequence[Any], decode: Any) -> None:
    """Align one window's segments (``start``, ``end``, ``tokens``) at once and give each
    its ``words``: the alignment's words in order, as many tokens as the segment's text
    holds, each clamped into the segment's [start, end] (so words stay monotonic and
    inside their segment)."""
    eos = head.tokens.eos
    per_segment = [[t for t in s.tokens if t < eos] for s in segments]
    full = replace(window, text_tokens=[t for text in per_segment for t in text])
    words = find_alignment(head, context, full, decode)
    index = 0
    for segment, text in zip(segments, per_segment, strict=True):
        kept, used = [], 0
        while index < len(words) and used < len(text):
            word = words[index]
            if word.word:
                word.start = min(max(word.start, segment.start), segment.end)
                word.end = min(max(word.end, word.start), segment.end)
                kept.append(word)
            used += len(word.tokens)
            index += 1
        segment.words = kept

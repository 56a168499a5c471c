"""What ``transcribe`` is asked (:class:`DecodeOptions`) and what it gives back
(:class:`Transcript` of :class:`Segment` s).

The defaults decode as transformers' Whisper ``generate`` does (one temperature, no
thresholds, no conditioning): the token-exactness tests hold mmcore to it.
:meth:`DecodeOptions.openai_whisper` gives openai-whisper's ``transcribe`` policy
(temperature fallback 0, 0.2, ..., 1.0 driven by the compression-ratio, log-probability
and no-speech thresholds 2.4, -1.0, 0.6; conditioning on the previous text).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from mmcore_whisper.alignment import Word
from mmcore_whisper.decoding import Search
from mmcore_whisper.policy import OPENAI_DEFAULTS, Thresholds


@dataclass(frozen=True)
class DecodeOptions:
    """How to decode. ``beam_size`` 1 is greedy search (at temperature 0)."""

    beam_size: int = 1
    language: str | None = None  # None: detected from the first window
    task: str = "transcribe"
    timestamps: bool = False
    #: tokens generated per window; None: the checkpoint's max_length (or the positions left)
    max_new_tokens: int | None = None
    length_penalty: float = 1.0
    use_cache: bool = True
    #: tried in order until a window passes the thresholds (openai-whisper: 0, 0.2, ... 1.0)
    temperatures: tuple[float, ...] = (0.0,)
    #: samples per window at a temperature above 0; the most likely is kept
    best_of: int = 5
    compression_ratio_threshold: float | None = None
    logprob_threshold: float | None = None
    no_speech_threshold: float | None = None
    #: prompt each window with the text decoded so far (<|startofprev|> ...)
    condition_on_previous_text: bool = False
    #: text prompting the first window (and every window, with conditioning)
    initial_prompt: str | None = None
    #: seeds sampling (each decode at a temperature above 0 starts from this seed)
    seed: int | None = 0
    #: word-level timestamps from cross-attention alignment (:mod:`mmcore_whisper.alignment`)
    word_timestamps: bool = False

    def __post_init__(self) -> None:
        if self.beam_size < 1:
            raise ValueError(f"beam_size must be at least 1, got {self.beam_size}")
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if not self.temperatures or any(t < 0 for t in self.temperatures):
            raise ValueError(f"temperatures must be one or more values >= 0, got "
                             f"{self.temperatures}")
        if self.best_of < 1:
            raise ValueError(f"best_of must be at least 1, got {self.best_of}")

    @classmethod
    def openai_whisper(cls, **overrides: Any) -> DecodeOptions:
        """openai-whisper's ``transcribe`` defaults, with ``overrides``."""
        return cls(**{**OPENAI_DEFAULTS, **overrides})

    def with_(self, **changes: Any) -> DecodeOptions:
        return replace(self, **changes)

    @property
    def thresholds(self) -> Thresholds:
        return Thresholds(self.compression_ratio_threshold, self.logprob_threshold,
                          self.no_speech_threshold)

    @property
    def uses_policy(self) -> bool:
        """Whether anything beyond a plain decode is asked (fallback, thresholds, prompts)."""
        return (len(self.temperatures) > 1 or self.temperatures[0] > 0
                or self.thresholds != Thresholds() or self.condition_on_previous_text
                or self.initial_prompt is not None)

    def searches(self) -> list[Search]:
        """One search per temperature: greedy or beam search at 0, sampling above."""
        return [Search(temperature=t, best_of=self.best_of, timestamps=self.timestamps,
                       use_cache=self.use_cache, seed=self.seed) if t > 0 else
                Search(beam_size=self.beam_size, length_penalty=self.length_penalty,
                       timestamps=self.timestamps, use_cache=self.use_cache)
                for t in self.temperatures]


@dataclass
class Segment:
    """A stretch of audio (seconds) and the tokens (and text) decoded for it, with how its
    window was decoded (temperature, average log-probability, compression ratio of the
    window's text, no-speech probability)."""

    start: float
    end: float
    tokens: list[int]
    text: str = ""
    temperature: float = 0.0
    avg_logprob: float | None = None
    compression_ratio: float | None = None
    no_speech_prob: float | None = None
    #: word timings (None: not asked for)
    words: list[Word] | None = None

    def as_dict(self, details: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {"start": round(self.start, 3), "end": round(self.end, 3),
                               "text": self.text}
        if details:
            out.update(temperature=self.temperature, avg_logprob=self.avg_logprob,
                       compression_ratio=self.compression_ratio,
                       no_speech_prob=self.no_speech_prob)
        if self.words is not None:
            out["words"] = [w.as_dict() for w in self.words]
        return out


@dataclass
class Transcript:
    """One audio item's result: the language token used, the segments and all text."""

    language: str | None
    segments: list[Segment] = field(default_factory=list)
    text: str = ""

    @property
    def tokens(self) -> list[int]:
        return [t for s in self.segments for t in s.tokens]

    def as_dict(self, details: bool = False) -> dict[str, Any]:
        return {"language": self.language, "text": self.text,
                "segments": [s.as_dict(details) for s in self.segments]}

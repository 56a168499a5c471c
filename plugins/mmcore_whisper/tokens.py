"""Whisper's special tokens and generation rules, as one checkpoint defines them.

Whisper prompts its decoder with ``<|startoftranscript|>``, then (multilingual models only)
a language token and a task token (``<|transcribe|>`` / ``<|translate|>``), then
``<|notimestamps|>`` unless timestamps are wanted. Timestamp tokens follow
``<|notimestamps|>`` in the vocabulary: ``<|0.00|>``, ``<|0.02|>``, ... ``<|30.00|>``.
English-only (``.en``) models have no language or task tokens in their prompt.
"""

from __future__ import annotations

from pydantic import Field

from mmcore.registry import ComponentConfig

#: seconds per timestamp token, and per log-mel frame
TIME_PRECISION = 0.02
FRAME_SECONDS = 0.01


class WhisperTokens(ComponentConfig):
    """Special token ids and generation rules (from generation_config.json, config.json
    and tokenizer.json of a Hugging Face checkpoint)."""

    #: <|endoftext|>: ends a transcript (also the padding id)
    eos: int = Field(ge=0)
    #: <|startoftranscript|>: the decoder's first token
    start: int = Field(ge=0)
    #: <|notimestamps|>; timestamp tokens start at ``no_timestamps + 1``. None: no timestamps
    no_timestamps: int | None = Field(None, ge=0)
    #: language code ("en") -> its token; empty for English-only models
    languages: dict[str, int] = Field(default_factory=dict)
    #: "transcribe" / "translate" -> its token; empty for English-only models
    tasks: dict[str, int] = Field(default_factory=dict)
    #: never generated
    suppress: list[int] = Field(default_factory=list)
    #: not generated as the first token
    begin_suppress: list[int] = Field(default_factory=list)
    #: the first timestamp may be at most this many steps (0.02 s each) in; None: any
    max_initial_timestamp_index: int | None = Field(None, ge=0)
    #: generated tokens per window when none are asked for (HF ``max_length``)
    max_length: int | None = Field(None, gt=0)
    #: <|nospeech|> (<|nocaptions|> in older vocabularies): its probability right after
    #: <|startoftranscript|> is the no-speech probability. None: no detection
    no_speech: int | None = Field(None, ge=0)
    #: <|startofprev|>: opens a prompt of earlier text before <|startoftranscript|>
    previous: int | None = Field(None, ge=0)
    #: path of the checkpoint's tokenizer.json, to turn ids into text
    tokenizer: str | None = None
    #: (layer, head) pairs of the decoder's cross-attention that align text with audio
    #: (generation_config.json ``alignment_heads``); None: the last half of the layers
    alignment_heads: list[tuple[int, int]] | None = None

    @property
    def multilingual(self) -> bool:
        return bool(self.languages)

    @property
    def timestamp_begin(self) -> int | None:
        """The id of ``<|0.00|>``, or None when the model has no timestamp tokens."""
        return None if self.no_timestamps is None else self.no_timestamps + 1

    def ids(self) -> list[int]:
        """Every single id this config names (for range checks)."""
        single = [self.eos, self.start, self.no_timestamps, self.no_speech, self.previous]
        return [i for i in single if i is not None] + [*self.languages.values(),
                                                       *self.tasks.values()]

    def language_id(self, language: str) -> int:
        """``"en"``, ``"<|en|>"`` -> the language token; ValueError naming the choices."""
        code = language.strip().lower().removeprefix("<|").removesuffix("|>")
        if not self.languages:
            raise ValueError("this is an English-only Whisper model: it takes no language")
        if code not in self.languages:
            known = ", ".join(sorted(self.languages))
            raise ValueError(f"unknown language {language!r}; this model knows: {known}")
        return self.languages[code]

    def task_id(self, task: str) -> int | None:
        """The task token (None for English-only models, which only transcribe)."""
        if task not in ("transcribe", "translate"):
            raise ValueError(f"task must be 'transcribe' or 'translate', got {task!r}")
        if not self.tasks:
            if task == "translate":
                raise ValueError("this is an English-only Whisper model: it cannot translate")
            return None
        if task not in self.tasks:
            raise ValueError(f"this model has no {task!r} token")
        return self.tasks[task]

    def prompt(self, *, language_id: int | None, task: str, timestamps: bool) -> list[int]:
        """The decoder prompt: start [, language, task] [, <|notimestamps|>]."""
        out = [self.start]
        if self.multilingual:
            if language_id is None:
                raise ValueError("a multilingual model needs a language token in its prompt")
            task_token = self.task_id(task)
            out += [language_id] + ([task_token] if task_token is not None else [])
        else:
            self.task_id(task)  # checks that an English-only model is not asked to translate
        if not timestamps and self.no_timestamps is not None:
            out.append(self.no_timestamps)
        return out

"""The options of one generation call, validated up front."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

#: the largest ``num_beams`` accepted unless ``max_beams`` is raised explicitly
MAX_BEAMS = 64
#: the largest ``max_new_tokens`` accepted unless ``max_tokens_limit`` is raised explicitly
MAX_NEW_TOKENS = 32768


class GenerationConfig(BaseModel):
    """How to generate. Defaults give greedy search of up to 32 new tokens.

    Unlike transformers' ``GenerationConfig`` there are no hidden model defaults: top-k is
    off unless ``top_k`` is set (transformers defaults it to 50 when sampling).
    """

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    max_new_tokens: int = Field(32, ge=1)
    #: stop tokens are forbidden until this many tokens are generated
    min_new_tokens: int = Field(0, ge=0)
    #: sample from the processed distribution instead of taking the best token
    do_sample: bool = False
    temperature: float = Field(1.0, gt=0)
    #: keep only the k best tokens (sampling); None: off
    top_k: int | None = Field(None, ge=1)
    #: keep the smallest set of best tokens whose probability reaches top_p (sampling)
    top_p: float = Field(1.0, gt=0, le=1)
    #: transformers' repetition penalty: seen tokens' logits divided (>0) or multiplied (<0)
    repetition_penalty: float = Field(1.0, gt=0)
    num_beams: int = Field(1, ge=1)
    #: a finished hypothesis scores sum(logprobs) / generated_length ** length_penalty
    length_penalty: float = 1.0
    #: transformers' beam stopping rule: False (heuristic), True (stop when num_beams
    #: hypotheses are finished) or "never" (the canonical rule)
    early_stopping: bool | Literal["never"] = False
    num_return_sequences: int = Field(1, ge=1)
    #: one stop token, several, or none
    eos_token_id: int | list[int] | None = None
    #: fills rows that stopped early; None: the first stop token (as transformers)
    pad_token_id: int | None = None
    #: stop a row once its generated text contains one of these (needs ``detokenize``)
    stop_strings: list[str] = Field(default_factory=list)
    #: tokens never generated
    suppress_tokens: list[int] = Field(default_factory=list)
    #: tokens not generated as the first new token
    begin_suppress_tokens: list[int] = Field(default_factory=list)
    #: {index among the new tokens: the token forced there}
    forced_tokens: dict[int, int] = Field(default_factory=dict)
    #: keep each step's raw logits in the output (greedy and sampling)
    output_logits: bool = False
    #: keep each chosen token's log-probability (greedy and sampling): log-softmax of the
    #: scores after the constraints and the caller's processors, before the sampling
    #: warpers (temperature, top-k, top-p); 0 once a row has stopped
    output_token_logprobs: bool = False
    #: seeds a ``torch.Generator`` for sampling when none is passed to ``generate``
    seed: int | None = None
    max_beams: int = Field(MAX_BEAMS, ge=1)
    max_tokens_limit: int = Field(MAX_NEW_TOKENS, ge=1)

    @model_validator(mode="after")
    def _check(self) -> GenerationConfig:
        if self.num_beams > self.max_beams:
            raise ValueError(f"num_beams {self.num_beams} is over the limit of {self.max_beams}; "
                             "raise max_beams explicitly to allow it")
        if self.max_new_tokens > self.max_tokens_limit:
            raise ValueError(f"max_new_tokens {self.max_new_tokens} is over the limit of "
                             f"{self.max_tokens_limit}; raise max_tokens_limit explicitly")
        if self.num_beams > 1 and self.num_return_sequences > self.num_beams:
            raise ValueError(f"num_return_sequences {self.num_return_sequences} exceeds "
                             f"num_beams {self.num_beams}")
        if self.num_beams == 1 and not self.do_sample and self.num_return_sequences > 1:
            raise ValueError("num_return_sequences > 1 needs beam search or do_sample")
        if any(not s for s in self.stop_strings):
            raise ValueError("stop_strings may not contain an empty string")
        if self.min_new_tokens > self.max_new_tokens:
            raise ValueError(f"min_new_tokens {self.min_new_tokens} exceeds max_new_tokens "
                             f"{self.max_new_tokens}")
        bad = [i for i in self.forced_tokens if i < 0]
        if bad:
            raise ValueError(f"forced_tokens positions must be >= 0, got {bad}")
        return self

    @property
    def eos_ids(self) -> list[int]:
        """The stop tokens as a list (empty when none)."""
        if self.eos_token_id is None:
            return []
        if isinstance(self.eos_token_id, int):
            return [self.eos_token_id]
        return list(self.eos_token_id)

    @property
    def pad_id(self) -> int | None:
        """``pad_token_id``, else the first stop token, else None."""
        if self.pad_token_id is not None:
            return self.pad_token_id
        return self.eos_ids[0] if self.eos_ids else None

"""When a row stops: a stop token, or a stop string in its generated text.

Stop strings are matched on text: ``detokenize(ids) -> str`` decodes a row's generated ids
(the prompt excluded) after every step, and the row stops at the first step whose text
contains a stop string. Like transformers, the tokens that complete the string are kept
and nothing is trimmed; unlike transformers (which matches token strings and also catches
a stop string that starts inside the prompt), the prompt's text is not searched.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

Detokenize = Callable[[list[int]], str]


class StopCriteria:
    """``(input_ids (R, T), prompt_length) -> (R,) bool``: which rows just stopped."""

    def __init__(self, eos_ids: Sequence[int], stop_strings: Sequence[str] = (),
                 detokenize: Detokenize | None = None) -> None:
        if stop_strings and detokenize is None:
            raise ValueError("stop_strings need a detokenize callable (ids -> text)")
        self.eos_ids = list(eos_ids)
        self.stop_strings = list(stop_strings)
        self.detokenize = detokenize
        self._eos: Tensor | None = None

    @property
    def active(self) -> bool:
        """Whether anything can stop a row before ``max_new_tokens``."""
        return bool(self.eos_ids or self.stop_strings)

    def __call__(self, input_ids: Tensor, prompt_length: int,
                 rows: Tensor | None = None) -> Tensor:
        """Which rows end in a stop token or contain a stop string; ``rows (R,)`` bool
        restricts the (slow, text) stop-string check to those rows."""
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        if self.eos_ids:
            if self._eos is None or self._eos.device != input_ids.device:
                self._eos = torch.tensor(self.eos_ids, device=input_ids.device)
            done |= torch.isin(input_ids[:, -1], self._eos)
        if self.stop_strings:
            done |= self._strings(input_ids[:, prompt_length:], rows)
        return done

    def _strings(self, generated: Tensor, rows: Tensor | None) -> Tensor:
        assert self.detokenize is not None
        check = range(generated.shape[0]) if rows is None else rows.nonzero()[:, 0].tolist()
        hits = torch.zeros(generated.shape[0], dtype=torch.bool, device=generated.device)
        for row in check:
            text = self.detokenize(generated[row].tolist())
            hits[row] = any(s in text for s in self.stop_strings)
        return hits

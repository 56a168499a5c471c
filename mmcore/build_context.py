"""What a component factory may know about its neighbours when it is built."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mmcore.kernels import KernelSet


@dataclass
class BuildContext:
    """What a factory may know about its neighbours when it is built.

    ``in_width``: width of the Tokens this component receives (encoders, tokenizer None).
    ``widths``: per-modality encoder output widths (fusions; objectives that read
    ``ModelOutput.tokens`` fall back to them).
    ``embedding_widths``: the fusion's pooled-embedding widths by name (heads, objectives).
    """

    kernels: KernelSet
    modality: str | None = None
    in_width: int | None = None
    widths: dict[str, int] = field(default_factory=dict)
    embedding_widths: dict[str, int] = field(default_factory=dict)
    heads: dict[str, int] = field(default_factory=dict)  # head name -> output size
    #: objectives only: the built heads by name, for an objective that teacher-forces a
    #: head (Whisper's decoder); it may keep a reference, never register it as a submodule
    head_modules: dict[str, Any] = field(default_factory=dict)

    def encoder_width(self, requested: int | None) -> int:
        """An encoder's width: its own ``requested`` width or its input's; they must agree."""
        if self.in_width is None:
            raise ValueError("an encoder needs the width of its input tokens")
        if requested is not None and requested != self.in_width:
            raise ValueError(f"width {requested} does not match the tokenizer's width "
                             f"{self.in_width}")
        return self.in_width

"""``interleaved-lm``: Flamingo's LM loss, next-token cross-entropy on the text of an
interleaved sequence; the labels come from ``flamingo-text`` (``batch[text]["labels"]``:
-100 on ``<image>`` markers and padding, so a marker is never predicted)."""

from __future__ import annotations

import torch
from torch import Tensor

from mmcore.builder import BuildContext
from mmcore.contract import Batch, ModelOutput
from mmcore_llama import CausalLM
from mmcore_llama.components import IGNORE_INDEX, CausalLMConfig, preprocessed_labels


class InterleavedLMConfig(CausalLMConfig):
    pass


class InterleavedLM(CausalLM):
    """Cross-entropy of text token t + 1 from the logits at t; ``accuracy`` per token."""

    def labels(self, batch: Batch) -> Tensor:
        return preprocessed_labels(batch, self.cfg.text, "interleaved-lm",
                                   "the flamingo-text preprocessor")


def build_interleaved_lm(cfg: InterleavedLMConfig, ctx: BuildContext) -> InterleavedLM:
    return InterleavedLM(cfg)


def example_interleaved_lm(module: InterleavedLM, batch_size: int,
                           generator: torch.Generator) -> tuple[ModelOutput, dict[str, object]]:
    """Logits over 11 tokens; position 1 of each row is a marker (label -100)."""
    vocab, length = 11, 6
    logits = torch.randn(batch_size, length, vocab, generator=generator)
    ids = torch.randint(0, vocab, (batch_size, length), generator=generator)
    labels = ids.clone()
    labels[:, 1] = IGNORE_INDEX
    output = ModelOutput(tokens={}, embeddings={}, heads={module.cfg.head: logits})
    mask = torch.ones_like(ids, dtype=torch.bool)
    return output, {module.cfg.text: {"ids": ids, "mask": mask, "labels": labels}}

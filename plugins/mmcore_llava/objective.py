"""``instruction-lm``: the instruction-tuning loss, next-token cross-entropy on the answer
tokens only. The labels come from the ``llava-chat`` preprocessor (``batch[text]["labels"]``:
-100 on the prompt, the image tokens and padding), so a prompt is never learned."""

from __future__ import annotations

import torch
from torch import Tensor

from mmcore.builder import BuildContext
from mmcore.contract import Batch, ModelOutput
from mmcore_llama import CausalLM
from mmcore_llama.components import IGNORE_INDEX, CausalLMConfig, preprocessed_labels


class InstructionLMConfig(CausalLMConfig):
    pass


class InstructionLM(CausalLM):
    """Cross-entropy of answer token t + 1 from the logits at t; metrics ``accuracy``
    (per answer token) and ``tokens`` (answer tokens in the batch)."""

    def labels(self, batch: Batch) -> Tensor:
        return preprocessed_labels(batch, self.cfg.text, "instruction-lm",
                                   "the llava-chat preprocessor, from prompt/answer pairs,")


def build_instruction_lm(cfg: InstructionLMConfig, ctx: BuildContext) -> InstructionLM:
    return InstructionLM(cfg)


def example_instruction_lm(module: InstructionLM, batch_size: int,
                           generator: torch.Generator) -> tuple[ModelOutput, dict[str, object]]:
    """Logits over 11 tokens; the last three positions of each row are the answer."""
    vocab, length = 11, 6
    logits = torch.randn(batch_size, length, vocab, generator=generator)
    ids = torch.randint(0, vocab, (batch_size, length), generator=generator)
    labels = torch.full_like(ids, IGNORE_INDEX)
    labels[:, -3:] = ids[:, -3:]
    output = ModelOutput(tokens={}, embeddings={}, heads={module.cfg.head: logits})
    mask = torch.ones_like(ids, dtype=torch.bool)
    return output, {module.cfg.text: {"ids": ids, "mask": mask, "labels": labels}}

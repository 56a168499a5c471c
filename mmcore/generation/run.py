"""The state of one generation call and its set-up (inputs checked, prompts repeated,
processors and stop criteria built), shared by greedy/sampling and beam search."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from mmcore.generation.config import GenerationConfig
from mmcore.generation.processors import Processor, build_constraints, build_warpers
from mmcore.generation.stopping import Detokenize, StopCriteria


@dataclass
class Run:
    """The state of one call: sequences so far (R, T + n), their mask (R, T + n) bool, and
    which rows are still going (R,). ``processors[:warpers_from]`` are the constraints and
    the caller's processors, the rest the sampling warpers."""

    ids: Tensor
    mask: Tensor
    prompt_length: int
    processors: list[Processor]
    stop: StopCriteria
    generator: torch.Generator | None
    warpers_from: int
    unfinished: Tensor = field(init=False)
    logits: list[Tensor] = field(default_factory=list)
    token_logprobs: list[Tensor] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.unfinished = torch.ones(self.ids.shape[0], dtype=torch.bool, device=self.ids.device)


def check_inputs(input_ids: Tensor, attention_mask: Tensor | None) -> Tensor:
    """Validate the prompt; -> the mask (B, T) bool (all True when none is given)."""
    if input_ids.dim() != 2 or input_ids.shape[1] == 0:
        raise ValueError(f"input_ids must be (B, T) with T >= 1, got {tuple(input_ids.shape)}")
    if input_ids.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"input_ids must be integer ids, got {input_ids.dtype}")
    if attention_mask is None:
        return torch.ones_like(input_ids, dtype=torch.bool)
    if attention_mask.shape != input_ids.shape:
        raise ValueError(f"attention_mask {tuple(attention_mask.shape)} does not match "
                         f"input_ids {tuple(input_ids.shape)}")
    mask = attention_mask.bool()
    if not bool(mask[:, -1].all()):
        raise ValueError("attention_mask: prompts must be left-padded (the last column is "
                         "padding in some row)")
    return mask


def start(input_ids: Tensor, attention_mask: Tensor | None, config: GenerationConfig, *,
          expand: int, processors: Sequence[Processor], detokenize: Detokenize | None,
          generator: torch.Generator | None) -> Run:
    """Check the inputs, repeat each prompt ``expand`` times, build processors and stops."""
    mask = check_inputs(input_ids, attention_mask)
    if config.stop_strings and config.pad_id is None:
        raise ValueError("stop_strings without eos_token_id need a pad_token_id")
    ids = input_ids.long().repeat_interleave(expand, dim=0)  # (B * expand, T)
    mask = mask.repeat_interleave(expand, dim=0)
    t = ids.shape[1]
    built = [*build_constraints(config, prompt_length=t, prompt_mask=mask), *processors]
    warpers_from = len(built)
    built += build_warpers(config)
    stop = StopCriteria(config.eos_ids, config.stop_strings, detokenize)
    if config.do_sample and generator is None and config.seed is not None:
        generator = torch.Generator(device=ids.device).manual_seed(config.seed)
    return Run(ids, mask, t, built, stop, generator, warpers_from)

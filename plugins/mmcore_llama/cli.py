"""``mmcore generate`` for text-only causal LMs (a :class:`TextGenerator` registered through
``register_generators``) and ``mmcore chat`` (registered through ``register_commands``).

:func:`generation_config` and :func:`print_results` are public so that other families
whose trunk is a decoder LM (LLaVA) print and time exactly the same way.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from mmcore.commands import EXIT_OK, UsageError, print_json
from mmcore.generation import GenerationConfig
from mmcore.generation.command import IMAGE_OPTIONS, reject_unused
from mmcore_llama.components import DecoderLM, LMEmbedding
from mmcore_llama.export import lm_parts
from mmcore_llama.generation import CausalLMRunner
from mmcore_llama.text import TextResult, check_room, generate_text, left_pad, text_codec


def is_text_lm(model: Any) -> bool:
    """A text-only causal LM: a ``decoder-lm`` fusion whose text modality is the model's
    only one, with an ``lm-embedding`` and one ``lm-head`` (models with images are LLaVA's)."""
    fusion = getattr(model, "fusion", None)
    if not isinstance(fusion, DecoderLM) or list(model.tokenizers) != [fusion.cfg.text]:
        return False
    try:
        lm_parts(model)
    except Exception:
        return False
    return True


def generation_config(args: argparse.Namespace, embedding: LMEmbedding,
                      max_new_tokens: int) -> GenerationConfig:
    """The loop's options from the shared ``mmcore generate`` flags: sampling when
    ``--temperature`` > 0, ``--top-p`` or ``--top-k`` is given, else greedy (or beams)."""
    temperature = args.temperature
    sample = bool(temperature) or args.top_p is not None or args.top_k is not None
    eos = embedding.cfg.eos_token_id
    pad = embedding.cfg.pad_token_id
    options: dict[str, Any] = {"max_new_tokens": max_new_tokens, "do_sample": sample,
                               "eos_token_id": eos, "pad_token_id": pad, "seed": args.seed,
                               "num_beams": args.num_beams or 1}
    if sample:
        options.update(temperature=temperature or 1.0, top_k=args.top_k,
                       top_p=1.0 if args.top_p is None else args.top_p)
    if args.repetition_penalty is not None:
        options["repetition_penalty"] = args.repetition_penalty
    try:
        return GenerationConfig(**options)
    except ValueError as exc:  # pydantic: keep the first message, on one line
        raise UsageError(str(exc).splitlines()[-1 if "\n" in str(exc) else 0]) from None


def pad_id(embedding: LMEmbedding) -> int:
    """The id that left-pads a batch: pad, else the (first) stop token, else 0."""
    eos = embedding.cfg.eos_token_id
    first_eos = eos[0] if isinstance(eos, list) and eos else eos
    for candidate in (embedding.cfg.pad_token_id, first_eos):
        if isinstance(candidate, int):
            return candidate
    return 0


def print_results(prompts: Sequence[str], results: Sequence[TextResult], *, as_json: bool,
                  streamed: bool) -> None:
    """JSON (prompt, text, ids, timing per row) or the texts not already streamed."""
    per_prompt = len(results) // len(prompts)
    if as_json:
        print_json([{"prompt": prompts[i // per_prompt], "text": r.text,
                     "prompt_ids": r.prompt_ids, "token_ids": r.token_ids,
                     "finished": r.finished, "timing": r.timing}
                    for i, r in enumerate(results)])
        return
    if streamed:
        print()
        return
    for i, r in enumerate(results):
        if len(results) > 1:
            print(f"[{i}] {prompts[i // per_prompt]}")
        print(r.text)


class TextGenerator:
    """``mmcore generate`` for text-only causal LMs: streams tokens as they come."""

    def accepts(self, model: Any) -> bool:
        return is_text_lm(model)

    def run(self, model: Any, args: argparse.Namespace) -> int:
        reject_unused(args, {**IMAGE_OPTIONS, "image": []}, "text language models")
        embedding, trunk, _ = lm_parts(model)
        codec = text_codec(model, trunk.cfg.text)
        rows = [codec.encode(p) for p in args.prompt]
        new = min(check_room(len(r), embedding.context_length, args.max_new_tokens)
                  for r in rows)
        config = generation_config(args, embedding, min(new, 32) if args.max_new_tokens
                                   is None else new)
        ids, mask = left_pad(rows, pad_id(embedding))
        streamed = not (args.json or args.no_stream or config.num_beams > 1
                        or ids.shape[0] > 1)
        results = generate_text(CausalLMRunner.from_model(model.eval()), codec, ids, mask,
                                config, on_text=_write if streamed else None)
        print_results(args.prompt, results, as_json=args.json, streamed=streamed)
        return EXIT_OK


def _write(row: int, text: str) -> None:
    if not text:
        return
    sys.stdout.write(text)
    sys.stdout.flush()


def make_text_generator() -> TextGenerator:
    return TextGenerator()

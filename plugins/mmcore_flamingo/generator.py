"""``mmcore generate`` for Flamingo models: interleaved prompts (``<image>`` markers,
``<|endofchunk|>`` between examples) continued about the ``--image`` files, streamed token
by token (or printed whole, or as JSON)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from mmcore.commands import UsageError, print_json
from mmcore.generation import GenerationConfig
from mmcore.generation.command import IMAGE_OPTIONS, reject_unused
from mmcore_flamingo.fusion import FlamingoFusion
from mmcore_flamingo.runner import check_images, complete, default_config, stream_completion
from mmcore_flamingo.text import check_chunks


def generation_config(model: Any, args: argparse.Namespace) -> GenerationConfig:
    """The command's sampling options over the Flamingo defaults (stop at end of chunk)."""
    base = default_config(model, args.max_new_tokens or 32)
    sample = bool(args.temperature) or args.top_p is not None or args.top_k is not None
    fields: dict[str, Any] = {"do_sample": sample, "seed": args.seed}
    optional = {"temperature": args.temperature or None, "top_k": args.top_k,
                "top_p": args.top_p, "num_beams": args.num_beams,
                "repetition_penalty": args.repetition_penalty}
    fields.update({k: v for k, v in optional.items() if v is not None})
    return base.model_copy(update=fields)


class FlamingoGenerator:
    """Drives models whose fusion is ``flamingo``."""

    def accepts(self, model: Any) -> bool:
        return isinstance(getattr(model, "fusion", None), FlamingoFusion)

    def run(self, model: Any, args: argparse.Namespace) -> int:
        reject_unused(args, IMAGE_OPTIONS, "Flamingo models")
        try:
            check_images(args.prompt, args.image)
            for prompt in args.prompt:
                check_chunks(prompt, prompt=True)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        model.eval()
        config = generation_config(model, args)
        if not (args.no_stream or args.json or len(args.prompt) > 1 or config.num_beams > 1):
            for piece in stream_completion(model, args.prompt[0], args.image, config):
                sys.stdout.write(piece)
                sys.stdout.flush()
            sys.stdout.write("\n")
            return 0
        answers = complete(model, args.prompt, args.image, config)
        if args.json:
            print_json([{"prompt": p, "completion": a}
                        for p, a in zip(args.prompt, answers, strict=True)])
        else:
            print("\n".join(answers))
        return 0

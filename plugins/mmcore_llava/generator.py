"""``mmcore generate`` for LLaVA models: prompts with ``<image>`` placeholders answered about
the ``--image`` files, streamed token by token (or printed whole, or as JSON)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
from typing import Any, TextIO

from mmcore.commands import UsageError, print_json
from mmcore.generation import GenerationConfig
from mmcore.generation.command import IMAGE_OPTIONS, reject_unused
from mmcore_llava.fusion import LlavaFusion
from mmcore_llava.runner import chat_preprocessor, check_images, generate_answers, stream_answer


def generation_config(model: Any, args: argparse.Namespace) -> GenerationConfig:
    """The command's sampling options over the chat vocabulary's eos/pad."""
    chat = chat_preprocessor(model)
    sample = bool(args.temperature) or args.top_p is not None or args.top_k is not None
    fields: dict[str, Any] = {"eos_token_id": chat.eos_token_id,
                              "pad_token_id": chat.pad_token_id,
                              "max_new_tokens": args.max_new_tokens or 64,
                              "do_sample": sample, "seed": args.seed}
    optional = {"temperature": args.temperature or None, "top_k": args.top_k,
                "top_p": args.top_p, "num_beams": args.num_beams,
                "repetition_penalty": args.repetition_penalty}
    fields.update({k: v for k, v in optional.items() if v is not None})
    return GenerationConfig(**fields)


class LlavaGenerator:
    """Drives models whose fusion is ``llava``: ``mmcore generate`` and ``mmcore chat``."""

    def accepts(self, model: Any) -> bool:
        return isinstance(getattr(model, "fusion", None), LlavaFusion)

    def chat(self, model: Any, args: argparse.Namespace, lines: Iterable[str], out: TextIO,
             warn: TextIO) -> int:
        """A conversation about ``args.image`` (see :mod:`mmcore_llava.session`)."""
        from mmcore_llava.session import LlavaChatSession

        return LlavaChatSession(model, args, generation_config(model, args), warn).loop(
            lines, out)

    def run(self, model: Any, args: argparse.Namespace) -> int:
        reject_unused(args, IMAGE_OPTIONS, "LLaVA models")
        try:
            check_images(args.prompt, args.image)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        model.eval()
        config = generation_config(model, args)
        streaming = not (args.no_stream or args.json or len(args.prompt) > 1
                         or config.num_beams > 1)
        if streaming:
            for piece in stream_answer(model, args.prompt[0], args.image, config):
                sys.stdout.write(piece)
                sys.stdout.flush()
            sys.stdout.write("\n")
            return 0
        answers = generate_answers(model, args.prompt, args.image, config)
        if args.json:
            print_json([{"prompt": p, "answer": a} for p, a in zip(args.prompt, answers,
                                                                    strict=True)])
        else:
            print("\n".join(answers))
        return 0

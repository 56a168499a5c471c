"""``mmcore generate``: one verb for every generative model family.

Text LMs (LLaMA, LLaVA, Flamingo), image generators (DALL-E, latent diffusion) and any
third-party family generate through the same command. The core knows no family: a plugin
registers a :class:`Generator` through ``register_generators``, and the verb hands the
loaded model to the first generator that accepts it::

    @mmcore.hookimpl
    def register_generators(register):
        register("text", TextGenerator, summary="causal LMs: stream tokens")

The options are one shared set (``--prompt``, ``--image``, sampling controls, image
options); a generator rejects the ones it does not use with a clear error
(:func:`reject_unused`).
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Protocol, TextIO

from mmcore.commands import UsageError, add_json_flag, load_any_model, positive_int

#: Options that only image generators use, and their defaults (to tell "given" from "not").
IMAGE_OPTIONS = {"n": None, "steps": None, "guidance": None, "out": None, "rerank": None,
                 "sampler": None}
#: Options that only text generators use.
TEXT_OPTIONS = {"max_new_tokens": None, "num_beams": None, "repetition_penalty": None,
                "no_stream": False}


class Generator(Protocol):
    """How one model family generates from the command line."""

    def accepts(self, model: Any) -> bool:
        """Whether this generator can drive ``model`` (a loaded :class:`MultimodalModel`)."""
        ...

    def run(self, model: Any, args: argparse.Namespace) -> int:
        """Generate as ``args`` asks, print or write the results; returns the exit code."""
        ...


class ChatDriver(Protocol):
    """A generator that can also hold a conversation (``mmcore chat``): an optional
    ``chat`` method beside ``accepts`` and ``run``."""

    def accepts(self, model: Any) -> bool: ...

    def chat(self, model: Any, args: argparse.Namespace, lines: Iterable[str], out: TextIO,
             warn: TextIO) -> int:
        """Answer each line of ``lines`` (a user turn; ``/exit`` ends) on ``out``, notes on
        ``warn``; returns the exit code."""
        ...


def user_turns(lines: Iterable[str]) -> Iterator[str]:
    """The user's messages among input ``lines``: blank lines skipped, ``/exit`` ends."""
    for line in lines:
        text = line.rstrip("\n")
        if text.strip() == "/exit":
            return
        if text.strip():
            yield text


def chat_driver(model: Any) -> ChatDriver | None:
    """The first registered generator that accepts ``model`` and can chat, else None."""
    from mmcore.plugins import get_registry

    for entry in get_registry().list("generator"):
        generator = entry.factory()
        if callable(getattr(generator, "chat", None)) and generator.accepts(model):
            return generator
    return None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The shared options of ``mmcore generate``."""
    parser.add_argument("model", metavar="MODEL", help="an mmcore checkpoint, run folder, or "
                        "a folder a converter imports (e.g. a Hugging Face LLaMA folder)")
    parser.add_argument("--prompt", action="append", required=True, metavar="TEXT",
                        help="the prompt; repeat for a batch of prompts")
    parser.add_argument("--image", action="append", default=[], metavar="PATH",
                        help="an image for models that read images (repeatable, in the order "
                             "of the prompt's <image> placeholders)")
    parser.add_argument("--seed", type=int, default=None, help="random seed (reproducible)")
    parser.add_argument("--temperature", type=float, default=None,
                        help="sampling temperature (text: 0 or unset = greedy)")
    parser.add_argument("--top-k", type=positive_int, default=None, metavar="K")
    parser.add_argument("--top-p", type=float, default=None, metavar="P")
    text = parser.add_argument_group("text models")
    text.add_argument("--max-new-tokens", type=positive_int, default=None, metavar="N",
                      help="tokens to generate at most (default: the model's own)")
    text.add_argument("--num-beams", type=positive_int, default=None, metavar="N",
                      help="beam search with N beams (no streaming)")
    text.add_argument("--repetition-penalty", type=float, default=None, metavar="R")
    text.add_argument("--no-stream", action="store_true",
                      help="print each answer when it is complete instead of token by token")
    image = parser.add_argument_group("image models")
    image.add_argument("--n", type=positive_int, default=None, metavar="N",
                       help="images per prompt (default 1)")
    image.add_argument("--steps", type=positive_int, default=None, metavar="N",
                       help="denoising steps (default: the model's sampler default)")
    image.add_argument("--guidance", type=float, default=None, metavar="SCALE",
                       help="classifier-free guidance scale")
    image.add_argument("--sampler", default=None, choices=["ddpm", "ddim", "euler", "dpm++"],
                       help="the sampler of diffusion models (default: the one their "
                            "scheduler config names)")
    image.add_argument("--out", default=None, metavar="DIR",
                       help="folder for the PNG files and the grid")
    image.add_argument("--rerank", default=None, metavar="CLIP",
                       help="order each prompt's images by a CLIP run's image-text score, "
                            "best first (DALL-E)")
    add_json_flag(parser)


def reject_unused(args: argparse.Namespace, unused: dict[str, Any], family: str) -> None:
    """UsageError naming every option in ``unused`` that was given a non-default value."""
    given = [name for name, default in unused.items() if getattr(args, name, default) != default]
    if given:
        flags = ", ".join("--" + name.replace("_", "-") for name in given)
        raise UsageError(f"{flags}: not used by {family}")


def choose(model: Any, generators: Sequence[tuple[str, Generator]]) -> Generator:
    """The first generator that accepts ``model``; UsageError listing them if none does."""
    for _, generator in generators:
        if generator.accepts(model):
            return generator
    names = ", ".join(name for name, _ in generators) or "none is installed"
    raise UsageError(f"no registered generator can drive this model (generators: {names}; "
                     "mmcore list generator)")


def run(args: argparse.Namespace) -> int:
    """Generate from a model: text streamed token by token, or images written to --out.

    examples:
      mmcore generate runs/llama --prompt "Once upon a time" --max-new-tokens 64
      mmcore generate runs/llava --prompt "<image> What colour is the shape?" --image star.png
      mmcore generate runs/ldm --prompt "a red star" --n 16 --steps 50 --guidance 4 --out out/
    """
    from mmcore.plugins import get_registry

    generators = [(e.name, e.factory()) for e in get_registry().list("generator")]
    model = load_any_model(args.model)
    return choose(model, generators).run(model, args)

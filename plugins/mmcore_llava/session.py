"""``mmcore chat`` for LLaVA models: a conversation about the ``--image`` files.

The first message is about the images: it gets one ``<image>`` placeholder per image in
front (unless it places them itself), as LLaVA's own CLI does. Each later turn follows the
earlier ones in the ``llava-chat`` template, answers ended by EOS. When a new turn does not
fit the context (with room for the answer), the oldest exchanges are dropped, with a note;
the images then go with the oldest message kept, so the model always sees them.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from typing import Any, TextIO

import torch

from mmcore.commands import EXIT_OK, UsageError
from mmcore.generation import GenerationConfig, stream
from mmcore.generation.command import user_turns
from mmcore_llava.chat import IMAGE, count_placeholders
from mmcore_llava.runner import LlavaRunner, chat_preprocessor, image_pixels


class LlavaChatSession:
    """The images, the turns so far and one streamed answer per user line."""

    def __init__(self, model: Any, args: argparse.Namespace, config: GenerationConfig,
                 warn: TextIO) -> None:
        if args.system or args.template != "auto":
            raise UsageError("--system, --template: a LLaVA model chats with its spec's "
                             "llava-chat template")
        self.model = model.eval()
        self.chat = chat_preprocessor(model)
        self.images = list(args.image)
        self.config = config
        self.warn = warn
        self.turns: list[tuple[str, str]] = []
        self.runner = LlavaRunner(model, image_pixels(model, self.images))

    def first_message(self, text: str) -> str:
        """``text`` with the images' placeholders in front unless it holds them all;
        ValueError when it holds some other number of them."""
        held = count_placeholders(text)
        if held == len(self.images):
            return text
        if held:
            raise ValueError(f"the message holds {held} <image> placeholder(s) but "
                             f"{len(self.images)} image(s) were given")
        return f"{IMAGE}\n" * len(self.images) + text

    def _ids(self, user: str) -> list[int]:
        """The conversation so far + ``user``; the first message carries the images."""
        messages = [text for text, _ in self.turns] + [user]
        messages[0] = self.first_message(messages[0])
        answers = [answer for _, answer in self.turns]
        return self.chat.conversation_ids(list(zip(messages, answers, strict=False)),
                                          messages[-1])

    def _fit(self, user: str) -> list[int]:
        """The ids of the conversation so far + ``user``, dropping the oldest exchanges
        (the images move to the new first message) to leave room for an answer;
        ValueError when the message alone does not fit."""
        context = self.chat.context_length
        room = min(self.config.max_new_tokens, max(1, context // 8))
        while True:
            ids = self._ids(user)
            if len(ids) + room <= context:
                return ids
            if not self.turns:
                raise ValueError(f"the message ({len(ids)} tokens with the images) leaves no "
                                 f"room for an answer in the context of {context} tokens")
            self.turns.pop(0)
            print(f"note: dropped the oldest exchange to stay within the context of "
                  f"{context} tokens", file=self.warn)

    def answer(self, text: str, out: TextIO) -> None:
        """Stream the answer to one user line to ``out`` and keep the turn."""
        try:
            if self.turns and count_placeholders(text):
                raise ValueError("images go with the first message only (--image)")
            ids = self._fit(text)
        except ValueError as exc:
            print(f"error: {exc}", file=self.warn)
            return
        left = self.chat.context_length - len(ids)
        config = self.config.model_copy(update={
            "max_new_tokens": min(self.config.max_new_tokens, left)})
        prompt = torch.tensor([ids], device=next(self.model.parameters()).device)
        pieces: list[int] = []
        started = False  # the answer's leading spaces (answer_prefix) are not printed
        for token in stream(self.runner, prompt, attention_mask=torch.ones_like(prompt),
                            config=config):
            if int(token[0]) == self.chat.eos_token_id:
                break
            pieces.append(int(token[0]))
            piece = self.chat.decode([pieces[-1]])
            out.write(piece if started else piece.lstrip())
            started = started or bool(piece.strip())
            out.flush()
        out.write("\n")
        out.flush()
        self.turns.append((text, self.chat.decode(pieces).strip()))

    def loop(self, lines: Iterable[str], out: TextIO) -> int:
        for text in user_turns(lines):
            self.answer(text, out)
        return EXIT_OK

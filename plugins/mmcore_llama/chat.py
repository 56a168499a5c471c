"""``mmcore chat``: a small interactive loop over a text LM with a chat template.

Templates are never executed. The tokenizer's ``chat_template`` (``tokenizer_config.json``
beside the model's ``tokenizer.json``) is only *recognised*, by its markers, as one of the
styles implemented here in plain Python:

* ``chatml``: ``<|im_start|>role\\ncontent<|im_end|>\\n`` (Qwen, many fine-tunes);
* ``llama2``: ``<s>[INST] <<SYS>>\\nsystem\\n<</SYS>>\\n\\nuser [/INST] answer </s>``;
* ``llama3``: ``<|start_header_id|>role<|end_header_id|>\\n\\ncontent<|eot_id|>``;
* ``plain`` (built in, for models with no or an unrecognised template, e.g. byte-level
  ones): ``System: ...\\nUser: ...\\nAssistant: ...``, an answer ending at a new ``User:``.

History is kept within the context: when a new turn does not fit (with room for the
answer), the oldest exchanges are dropped, with a note on stderr; the system text stays.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from mmcore.commands import EXIT_OK, UsageError, load_any_model, positive_int

SUMMARY = "chat with a language model (chat template, streamed answers; --image for LLaVA)"
STYLES = ("chatml", "llama2", "llama3", "plain")
Message = tuple[str, str]  # (role, content): role is system, user or assistant


@dataclass(frozen=True)
class ChatTemplate:
    """A chat style: ``render(messages, bos, eos) -> text`` ending with the assistant's
    generation prompt; ``stop_strings`` end an answer (besides the model's stop tokens);
    ``add_special``: whether the tokenizer's own BOS is added (the template lacks one)."""

    name: str
    render: Callable[[list[Message], str, str], str]
    stop_strings: tuple[str, ...]
    add_special: bool


def _chatml(messages: list[Message], bos: str, eos: str) -> str:
    body = "".join(f"<|im_start|>{role}\n{text}<|im_end|>\n" for role, text in messages)
    return body + "<|im_start|>assistant\n"


def _llama3(messages: list[Message], bos: str, eos: str) -> str:
    body = "".join(f"<|start_header_id|>{role}<|end_header_id|>\n\n{text.strip()}<|eot_id|>"
                   for role, text in messages)
    return f"{bos}{body}<|start_header_id|>assistant<|end_header_id|>\n\n"


def _llama2(messages: list[Message], bos: str, eos: str) -> str:
    system = messages[0][1] if messages and messages[0][0] == "system" else None
    turns = messages[1:] if system is not None else messages
    out = ""
    for i, (role, text) in enumerate(turns):
        if role == "user":
            if i == 0 and system:
                text = f"<<SYS>>\n{system}\n<</SYS>>\n\n{text}"
            out += f"{bos}[INST] {text.strip()} [/INST]"
        else:
            out += f" {text.strip()} {eos}"
    return out


def _plain(messages: list[Message], bos: str, eos: str) -> str:
    names = {"system": "System", "user": "User", "assistant": "Assistant"}
    return "".join(f"{names[role]}: {text}\n" for role, text in messages) + "Assistant:"


TEMPLATES = {
    "chatml": ChatTemplate("chatml", _chatml, ("<|im_end|>",), False),
    "llama2": ChatTemplate("llama2", _llama2, (), False),
    "llama3": ChatTemplate("llama3", _llama3, ("<|eot_id|>",), False),
    "plain": ChatTemplate("plain", _plain, ("\nUser:",), True),
}


def recognise(chat_template: str | None) -> str | None:
    """The style a Jinja ``chat_template`` writes, by its markers (None: unrecognised)."""
    if not chat_template:
        return None
    for marker, style in (("<|im_start|>", "chatml"), ("<|start_header_id|>", "llama3"),
                          ("[INST]", "llama2")):
        if marker in chat_template:
            return style
    return None


def _token_text(value: Any) -> str:
    """A tokenizer_config special token: a string or ``{"content": ...}``."""
    if isinstance(value, dict):
        return str(value.get("content", ""))
    return value if isinstance(value, str) else ""


def tokenizer_config(model: Any, modality: str) -> dict[str, Any]:
    """``tokenizer_config.json`` beside the model's tokenizer.json, or {} when none."""
    path = getattr(getattr(model.preprocessors.get(modality), "cfg", None), "path", None)
    file = Path(path).with_name("tokenizer_config.json") if path else None
    if file is None or not file.is_file():
        return {}
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"{file}: cannot read it: {exc}") from None
    return data if isinstance(data, dict) else {}


def choose_template(model: Any, modality: str, wanted: str, warn: TextIO
                    ) -> tuple[ChatTemplate, str, str]:
    """(the template, BOS text, EOS text) for ``--template`` ``wanted`` (``auto``: the
    tokenizer's recognised chat_template, else ``plain`` with a note)."""
    config = tokenizer_config(model, modality)
    bos, eos = _token_text(config.get("bos_token")), _token_text(config.get("eos_token"))
    if wanted != "auto":
        return TEMPLATES[wanted], bos, eos
    found = config.get("chat_template")
    style = recognise(found if isinstance(found, str) else None)
    if style is None:
        if found:
            print("note: the tokenizer's chat_template is not one of the styles mmcore "
                  f"renders ({', '.join(STYLES[:3])}); using the built-in plain template",
                  file=warn)
        style = "plain"
    return TEMPLATES[style], bos, eos


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``mmcore chat``."""
    parser.epilog = ("Type a message and press Enter; /exit or end of input (Ctrl-D) ends "
                     "the chat.\nexample: mmcore chat ./Qwen2-0.5B-Instruct --system "
                     "\"Answer briefly.\"")
    parser.add_argument("model", metavar="MODEL", help="an mmcore checkpoint or a Hugging "
                        "Face LLaMA/Mistral/Qwen2 folder")
    parser.add_argument("--system", default=None, metavar="TEXT", help="the system message")
    parser.add_argument("--template", choices=("auto", *STYLES), default="auto",
                        help="chat style (default: recognised from the tokenizer's "
                             "chat_template, else plain)")
    parser.add_argument("--max-new-tokens", type=positive_int, default=256, metavar="N",
                        help="longest answer in tokens (default 256)")
    parser.add_argument("--temperature", type=float, default=None)
    parser.add_argument("--top-k", type=positive_int, default=None, metavar="K")
    parser.add_argument("--top-p", type=float, default=None, metavar="P")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--image", action="append", default=[], metavar="PATH",
                        help="an image the first message is about, for models that read "
                             "images (LLaVA; repeatable)")
    parser.set_defaults(num_beams=None, repetition_penalty=None)


def run(args: argparse.Namespace) -> int:
    """Chat with a language model: each line of input is a user turn; answers stream as
    they are generated. Text LMs chat here; other families (LLaVA, with ``--image``)
    through their registered generator's ``chat``."""
    from mmcore.generation.command import chat_driver
    from mmcore_llama.cli import is_text_lm

    model = load_any_model(args.model)
    if not is_text_lm(model):
        driver = chat_driver(model)
        if driver is None:
            raise UsageError(f"{args.model} is neither a text-only causal LM nor a model "
                             "whose generator can chat (mmcore list generator)")
        return driver.chat(model, args, sys.stdin, sys.stdout, sys.stderr)
    if args.image:
        raise UsageError(f"--image: {args.model} is a text-only LM and reads no images")
    session = ChatSession(model, args, sys.stderr)
    session.loop(sys.stdin, sys.stdout)
    return EXIT_OK


class ChatSession:
    """The history, the template and one answer per user line."""

    def __init__(self, model: Any, args: argparse.Namespace, warn: TextIO) -> None:
        from mmcore_llama.export import lm_parts
        from mmcore_llama.generation import CausalLMRunner
        from mmcore_llama.text import text_codec

        self.embedding, trunk, _ = lm_parts(model)
        self.codec = text_codec(model, trunk.cfg.text)
        self.template, self.bos, self.eos = choose_template(model, trunk.cfg.text,
                                                            args.template, warn)
        self.runner = CausalLMRunner.from_model(model.eval())
        self.args, self.warn = args, warn
        self.system: list[Message] = [("system", args.system)] if args.system else []
        self.turns: list[Message] = []

    def loop(self, lines: Iterable[str], out: TextIO) -> None:
        from mmcore.generation.command import user_turns

        for text in user_turns(lines):
            self.answer(text, out)

    def _fit(self, user: str) -> list[int]:
        """The prompt ids of history + ``user``, dropping the oldest exchanges to leave
        room for an answer; ValueError when the new message alone does not fit."""
        context = self.embedding.context_length
        room = min(self.args.max_new_tokens, context // 2)
        while True:
            messages = [*self.system, *self.turns, ("user", user)]
            text = self.template.render(messages, self.bos, self.eos)
            ids = self.codec.encode(text, self.template.add_special)
            if len(ids) + room <= context or not self.turns:
                break
            self.turns = self.turns[2:]
            print(f"note: dropped the oldest exchange to stay within the context of "
                  f"{context} tokens", file=self.warn)
        return ids

    def _stops(self, eos: list[int]) -> dict[str, Any]:
        """The template's stop markers: a marker that is one token joins the stop tokens
        (special tokens are not decoded, so a stop string would never be seen)."""
        tokens, strings = list(eos), []
        for marker in self.template.stop_strings:
            ids = self.codec.encode(marker, False)
            if len(ids) == 1 and ids[0] in self.codec.special:
                tokens.append(ids[0])
            else:
                strings.append(marker)
        return {"eos_token_id": tokens or None, "stop_strings": strings}

    def answer(self, user: str, out: TextIO) -> None:
        """Stream the assistant's answer to ``user`` to ``out`` and keep both turns."""
        from mmcore_llama.cli import generation_config, pad_id
        from mmcore_llama.text import check_room, generate_text, left_pad

        try:
            ids = self._fit(user)
            new = check_room(len(ids), self.embedding.context_length, None)
        except ValueError as exc:
            print(f"error: {exc}", file=self.warn)
            return
        config = generation_config(self.args, self.embedding,
                                   min(new, self.args.max_new_tokens))
        config = config.model_copy(update=self._stops(config.eos_ids))
        tensor, mask = left_pad([ids], pad_id(self.embedding))

        def write(row: int, piece: str) -> None:
            if not piece:
                return
            out.write(piece)
            out.flush()

        result = generate_text(self.runner, self.codec, tensor, mask, config, on_text=write)
        out.write("\n")
        out.flush()
        self.turns += [("user", user), ("assistant", result[0].text.strip())]

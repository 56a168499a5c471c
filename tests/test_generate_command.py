"""``mmcore generate``: one verb, the model's family chosen by registered generators."""

from __future__ import annotations

import argparse
from typing import Any

import pytest

from mmcore.commands import UsageError
from mmcore.generation import command


class _Fake:
    def __init__(self, wanted: str) -> None:
        self.wanted = wanted

    def accepts(self, model: Any) -> bool:
        return model == self.wanted

    def run(self, model: Any, args: argparse.Namespace) -> int:
        return 0


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    return parser.parse_args(["MODEL", "--prompt", "hi", *argv])


def test_the_first_generator_that_accepts_the_model_runs() -> None:
    text, image = _Fake("lm"), _Fake("ldm")
    assert command.choose("ldm", [("text", text), ("image", image)]) is image
    assert command.choose("lm", [("text", text), ("image", image)]) is text
    with pytest.raises(UsageError, match=r"no registered generator.*generators: text, image"):
        command.choose("vae", [("text", text), ("image", image)])


def test_options_a_family_does_not_use_are_rejected_by_name() -> None:
    command.reject_unused(_args("--max-new-tokens", "5"), command.IMAGE_OPTIONS, "x")
    with pytest.raises(UsageError, match=r"--steps, --out: not used by text models"):
        command.reject_unused(_args("--steps", "3", "--out", "d"), command.IMAGE_OPTIONS,
                              "text models")
    with pytest.raises(UsageError, match=r"--no-stream: not used"):
        command.reject_unused(_args("--no-stream"), command.TEXT_OPTIONS, "image models")


def test_generate_is_a_core_verb_with_the_shared_options(capsys: pytest.CaptureFixture[str]
                                                         ) -> None:
    from mmcore.cli import main

    assert main(["generate", "--help"]) == 0
    out = capsys.readouterr().out
    for flag in ("--prompt", "--image", "--max-new-tokens", "--guidance", "--out", "--seed"):
        assert flag in out

"""LLaVA from the command line and in evaluation: ``mmcore generate`` with ``--image``, the
placeholder/image count errors, the shapes-vqa data and the vqa metric."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import mmcore
from mmcore.cli import main
from mmcore_llava import vqa_accuracy
from mmcore_llava.data import KINDS, ShapesVQAConfig, ShapesVQADataset
from mmcore_shapes.dataset import held_out
from mmcore_shapes.render import render


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(a saved random llava-tiny, a star image)."""
    folder = tmp_path_factory.mktemp("llava")
    torch.manual_seed(0)
    path = mmcore.save(mmcore.build("llava-tiny"), folder / "model.safetensors")
    image = folder / "star.png"
    render("red", "star", 24, np.random.default_rng(0)).save(image)
    return path, image


def test_generate_answers_about_an_image(run: tuple[Path, Path],
                                         capsys: pytest.CaptureFixture[str]) -> None:
    model, image = run
    argv = ["generate", str(model), "--prompt", "<image> What colour is the shape?",
            "--image", str(image), "--max-new-tokens", "5"]
    assert main(argv) == 0
    streamed = capsys.readouterr().out
    assert main([*argv, "--json"]) == 0
    answers = __import__("json").loads(capsys.readouterr().out)
    assert answers[0]["prompt"] == "<image> What colour is the shape?"
    assert streamed.strip() == answers[0]["answer"]  # streaming and whole answers agree


@pytest.mark.parametrize(("prompt", "images", "counts"), [
    ("<image> <image> Which is red?", 1, "hold 2 <image> placeholder(s) but 1 image(s)"),
    ("What colour is the shape?", 1, "hold 0 <image> placeholder(s) but 1 image(s)"),
])
def test_placeholder_and_image_counts_must_agree(run: tuple[Path, Path], prompt: str,
                                                 images: int, counts: str,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    model, image = run
    code = main(["generate", str(model), "--prompt", prompt, *["--image", str(image)] * images])
    assert code != 0
    assert counts in capsys.readouterr().err


def test_shapes_vqa_holds_out_combinations_and_asks_every_kind() -> None:
    data = ShapesVQADataset(ShapesVQAConfig(train_size=200, eval_size=60))
    unseen = set(held_out())
    train = [data[i] for i in range(200)]
    evaluation = [data.split("eval")[i] for i in range(60)]
    assert not {it["label"] for it in train} & unseen
    assert {it["label"] for it in evaluation} <= unseen
    assert {it["kind"] for it in train} == set(KINDS)
    names = data.class_names
    for item in train:
        colour, shape = names[item["label"]].split(" ")
        answer, question = item["text"]["answer"], item["text"]["prompt"]
        assert question.startswith("<image>\n")
        if item["kind"] == "describe":
            assert answer == f"{colour} {shape}"
        if item["kind"] == "check":
            assert (answer == "yes") == (f" {colour} {shape}?" in question)


def test_vqa_accuracy_on_hand_made_answers() -> None:
    result = vqa_accuracy(["Red", "star.", "no", "blue circle", " yes "],
                          ["red", "star", "yes", "blue square", "yes"],
                          ["colour", "shape", "check", "describe", "check"])
    assert result["accuracy"] == pytest.approx(3 / 5)
    assert (result["correct"], result["questions"]) == (3, 5)
    assert result["accuracy/check"] == pytest.approx(0.5)
    assert result["accuracy/describe"] == 0.0 and result["accuracy/colour"] == 1.0
    with pytest.raises(ValueError, match="2 predictions for 1 answers"):
        vqa_accuracy(["a", "b"], ["a"])


def _chat(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], lines: str,
          *argv: str) -> tuple[int, str, str]:
    import io

    monkeypatch.setattr("sys.stdin", io.StringIO(lines))
    capsys.readouterr()
    code = main(["chat", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_chat_answers_about_the_image_as_generate_does(
        run: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    model, image = run
    code, out, _ = _chat(monkeypatch, capsys, "What colour is the shape?\nAnd?\n/exit\nnot read\n",
                         str(model), "--image", str(image), "--max-new-tokens", "5")
    assert code == 0 and len(out.splitlines()) == 2
    assert main(["generate", str(model), "--prompt", "<image>\nWhat colour is the shape?",
                 "--image", str(image), "--max-new-tokens", "5", "--json"]) == 0
    answer = __import__("json").loads(capsys.readouterr().out)[0]["answer"]
    assert out.splitlines()[0] == answer.strip()


def test_chat_options_a_family_does_not_use_are_refused(
        run: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    model, image = run
    code, _, err = _chat(monkeypatch, capsys, "hi\n", str(model), "--image", str(image),
                         "--system", "be brief")
    assert code != 0 and "--system, --template: a LLaVA model chats with its spec's" in err


def test_conversation_ids_follow_the_template_turn_after_turn() -> None:
    from mmcore_llava.chat import BYTE_BOS, BYTE_EOS, BYTE_IMAGE, LlavaChatConfig
    from mmcore_llava.chat import LlavaChatPreprocessor as Chat

    chat = Chat(LlavaChatConfig(image_tokens=2, template="Q: {prompt} A:"))
    ids = chat.conversation_ids([("<image>\nhue?", "red")], "shape?")
    want = ([BYTE_BOS, *b"Q: ", BYTE_IMAGE, BYTE_IMAGE, *b"\nhue? A:", *b" red", BYTE_EOS,
             *b"Q: shape? A:"])
    assert ids == want
    assert chat.conversation_ids([], "<image>\nhue?") == chat.prompt_ids("<image>\nhue?")

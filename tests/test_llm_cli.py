"""``mmcore generate`` and ``mmcore chat`` on text LMs, and the LM's bad-input errors: a
tiny random HF LLaMA with a tiny byte-level BPE tokenizer, imported with ``mmcore import``."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
import torch

from mmcore.cli import main
from mmcore.convert import import_model
from mmcore.errors import CheckpointError
from mmcore.generation import GenerationConfig, generate
from mmcore_llama import CausalLMRunner, TextStream, text_codec

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

SPECIAL = ["<unk>", "<s>", "</s>", "<pad>", "<|im_start|>", "<|im_end|>"]
CORPUS = ["once upon a time there was a tiny model", "the cat sat on the mat",
          "héllo wörld, naïve café"] * 20


def write_tokenizer(folder: Path, chat_template: str | None = None) -> Any:
    """A byte-level BPE tokenizer.json (+ tokenizer_config.json) whose post-processor adds
    <s> as LLaMA's does; ids: <unk>=0, <s>=1, </s>=2, <pad>=3."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=SPECIAL,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[
        ("<s>", 1)])
    tok.save(str(folder / "tokenizer.json"))
    config: dict[str, Any] = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>"}
    if chat_template is not None:
        config["chat_template"] = chat_template
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return tok


def write_llama(folder: Path, vocab: int, **overrides: Any) -> Any:
    config = transformers.LlamaConfig(
        vocab_size=vocab, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=96,
        bos_token_id=1, eos_token_id=2, pad_token_id=3, **overrides)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(1 + 0.1 * torch.randn_like(p)) if "norm" in name else p.normal_(0, 0.3)
    model.save_pretrained(folder, safe_serialization=True)
    return model


@pytest.fixture(scope="module")
def lm(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(the HF folder, the mmcore checkpoint ``mmcore import`` wrote)."""
    folder = tmp_path_factory.mktemp("hf-llama")
    tok = write_tokenizer(folder, chat_template="{% for m in messages %}<|im_start|>...")
    write_llama(folder, tok.get_vocab_size())
    out = folder.parent / "llama.safetensors"
    assert main(["import", str(folder), "--out", str(out)]) == 0
    return folder, out


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> list[dict[str, Any]]:
    capsys.readouterr()
    assert main(["generate", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def python_generate(folder: Path, prompt: str, **config: Any) -> tuple[list[int], str]:
    model = import_model(folder).eval()
    codec = text_codec(model)
    ids = torch.tensor([codec.encode(prompt)])
    out = generate(CausalLMRunner.from_model(model), ids,
                   config=GenerationConfig(eos_token_id=2, pad_token_id=3, **config))
    tokens = out.new_tokens[0].tolist()
    tokens = tokens[: tokens.index(2)] if 2 in tokens else tokens
    return tokens, codec.decode(tokens)


def test_generate_json_equals_python_generate(lm: tuple[Path, Path],
                                              capsys: pytest.CaptureFixture[str]) -> None:
    folder, checkpoint = lm
    [row] = run_json(capsys, str(checkpoint), "--prompt", "the cat", "--max-new-tokens", "12")
    tokens, text = python_generate(folder, "the cat", max_new_tokens=12)
    assert row["prompt"] == "the cat" and row["token_ids"] == tokens and row["text"] == text
    assert row["prompt_ids"][0] == 1  # the tokenizer's <s>
    assert set(row["timing"]) == {"first_token_s", "total_s", "tokens_per_s"}


def test_generate_streams_the_same_text(lm: tuple[Path, Path],
                                        capsys: pytest.CaptureFixture[str]) -> None:
    folder, checkpoint = lm
    capsys.readouterr()
    assert main(["generate", str(checkpoint), "--prompt", "once", "--max-new-tokens", "10"]) == 0
    assert capsys.readouterr().out == python_generate(folder, "once", max_new_tokens=10)[1] + "\n"


def test_sampling_is_reproducible_from_the_seed(lm: tuple[Path, Path],
                                                capsys: pytest.CaptureFixture[str]) -> None:
    folder, checkpoint = lm
    args = [str(checkpoint), "--prompt", "the", "--max-new-tokens", "10", "--temperature",
            "1.5", "--top-k", "40", "--top-p", "0.95"]
    first = run_json(capsys, *args, "--seed", "7")
    assert _no_timing(run_json(capsys, *args, "--seed", "7")) == _no_timing(first)
    tokens, _ = python_generate(folder, "the", max_new_tokens=10, do_sample=True,
                                temperature=1.5, top_k=40, top_p=0.95, seed=7)
    assert first[0]["token_ids"] == tokens


def _no_timing(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{**r, "timing": None} for r in rows]


def test_beams_and_batches(lm: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    folder, checkpoint = lm
    rows = run_json(capsys, str(checkpoint), "--prompt", "the cat sat", "--prompt", "a",
                    "--max-new-tokens", "6")
    assert [r["prompt"] for r in rows] == ["the cat sat", "a"]
    assert rows[1]["token_ids"] == python_generate(folder, "a", max_new_tokens=6)[0]
    beams = run_json(capsys, str(checkpoint), "--prompt", "the", "--num-beams", "3",
                     "--max-new-tokens", "5")
    assert len(beams) == 1 and len(beams[0]["token_ids"]) <= 5


def test_generate_refuses_image_options(lm: tuple[Path, Path],
                                        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["generate", str(lm[1]), "--prompt", "x", "--steps", "4"]) == 2
    assert "--steps: not used by text language models" in capsys.readouterr().err


def test_prompt_longer_than_the_context_is_refused(lm: tuple[Path, Path],
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert main(["generate", str(lm[1]), "--prompt", "the cat sat on the mat " * 30]) == 1
    err = capsys.readouterr().err
    assert "longer than the model's context of 96 tokens" in err and "the prompt is" in err
    assert main(["generate", str(lm[1]), "--prompt", "the", "--max-new-tokens", "200"]) == 1
    assert "exceed the model's context of 96 tokens" in capsys.readouterr().err


def test_text_stream_prints_only_complete_utf8(lm: tuple[Path, Path]) -> None:
    codec = text_codec(import_model(lm[0]))
    ids = codec.encode("naïve café wörld", add_special=False)
    stream = TextStream(codec)
    pieces = [stream.push(i) for i in ids] + [stream.flush()]
    assert "".join(pieces) == "naïve café wörld"
    assert all("\ufffd" not in p for p in pieces)
    held = TextStream(codec, stop_strings=["\nUser:"])
    out = "".join(held.push(i) for i in codec.encode("ok\nUse", add_special=False))
    assert out == "ok"  # "\nUse" may begin the stop string: held back


def test_special_tokens_that_differ_from_config_are_refused(tmp_path: Path) -> None:
    tok = write_tokenizer(tmp_path)
    write_llama(tmp_path, tok.get_vocab_size())
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "eos_token_id": 5}))
    with pytest.raises(CheckpointError, match=r"eos_token '</s>' is id 2 in tokenizer.json "
                                              r"but config.json has eos_token_id 5"):
        import_model(tmp_path)


# -- chat ----------------------------------------------------------------------------------


def chat(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], lines: str,
         *argv: str) -> tuple[str, str]:
    monkeypatch.setattr("sys.stdin", io.StringIO(lines))
    capsys.readouterr()
    assert main(["chat", *argv]) == 0
    captured = capsys.readouterr()
    return captured.out, captured.err


def test_chat_answers_each_line_with_the_recognised_template(
        lm: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    from mmcore_llama.chat import TEMPLATES

    out, _ = chat(monkeypatch, capsys, "hello\nthe cat\n/exit\nnever read\n", str(lm[1]),
                  "--system", "be brief", "--max-new-tokens", "4")
    assert len(out.splitlines()) == 2
    text = TEMPLATES["chatml"].render([("system", "be brief"), ("user", "hello")], "<s>", "</s>")
    folder = lm[0]
    model = import_model(folder).eval()
    codec = text_codec(model)
    ids = torch.tensor([codec.encode(text, add_special=False)])
    first = generate(CausalLMRunner.from_model(model), ids,
                     config=GenerationConfig(max_new_tokens=4, eos_token_id=[2, 5])).new_tokens[0]
    tokens = first.tolist()
    for stop in (2, 5):  # </s> and the template's <|im_end|>
        tokens = tokens[: tokens.index(stop)] if stop in tokens else tokens
    assert out.splitlines()[0] == codec.decode(tokens)


def test_chat_drops_the_oldest_turns_to_fit_the_context(
        lm: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    lines = "".join(f"the cat sat {i}\n" for i in range(8))  # EOF ends the chat
    out, err = chat(monkeypatch, capsys, lines, str(lm[1]), "--max-new-tokens", "8",
                    "--template", "llama2")
    assert len(out.splitlines()) == 8
    assert "dropped the oldest exchange to stay within the context of 96 tokens" in err


def test_chat_templates_render_without_executing_anything() -> None:
    from mmcore_llama.chat import TEMPLATES, recognise

    messages = [("system", "S"), ("user", "hi"), ("assistant", "yo"), ("user", "q")]
    assert TEMPLATES["llama2"].render(messages, "<s>", "</s>") == (
        "<s>[INST] <<SYS>>\nS\n<</SYS>>\n\nhi [/INST] yo </s><s>[INST] q [/INST]")
    assert TEMPLATES["chatml"].render(messages[:2], "", "") == (
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n"
        "<|im_start|>assistant\n")
    assert TEMPLATES["plain"].render(messages[1:2], "", "") == "User: hi\nAssistant:"
    assert recognise("{{ '[INST] ' + m['content'] }}") == "llama2"
    assert recognise("{{ __import__('os').system('x') }}") is None


def test_chat_with_an_image_needs_a_model_that_reads_images(
        lm: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("hello\n"))
    assert main(["chat", str(lm[1]), "--image", "star.png"]) != 0
    assert "--image: " in capsys.readouterr().err

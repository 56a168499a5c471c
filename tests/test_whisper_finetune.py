"""Fine-tuning Whisper: the ``whisper-lm`` loss equals transformers'
``WhisperForConditionalGeneration(labels=...)`` loss, the ``audio-text-folder`` dataset, and
``mmcore train`` from an imported tiny random checkpoint on a synthetic WAV + TXT folder."""

from __future__ import annotations

import wave
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import mmcore
from mmcore.cli import main
from mmcore.convert import import_model
from mmcore.data import Collator
from mmcore_whisper.datasets import AudioTextFolderConfig, AudioTextFolderDataset, in_eval
from mmcore_whisper.finetune import finetune_spec
from mmcore_whisper.objective import IGNORE

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()

EOS = 256
WORDS = {"low": 220.0, "high": 880.0, "mid": 440.0, "beep beep": 1320.0}


def _wav(path: Path, hz: float, seconds: float = 1.0) -> None:
    rate = 16_000
    t = np.arange(round(rate * seconds)) / rate
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(np.round(0.4 * np.sin(2 * np.pi * hz * t) * 32767).astype("<i2")
                        .tobytes())


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 one-second tones; each transcript names its pitch (a speech-like toy task)."""
    root = tmp_path_factory.mktemp("clips")
    for i in range(12):
        word, hz = list(WORDS.items())[i % len(WORDS)]
        _wav(root / f"clip{i:02d}.wav", hz * (1 + 0.01 * i))
        (root / f"clip{i:02d}.txt").write_text(word + "\n")
    return root


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mmcore_whisper.testing import write_random_whisper

    path = tmp_path_factory.mktemp("whisper") / "tiny"
    write_random_whisper(path)
    return path


def _model(folder: Path, clips: Path, **objective: Any) -> Any:
    spec = finetune_spec(folder, clips, steps=8, batch_size=4, lr=1e-3)
    spec["objectives"]["lm"].update(objective)
    model = mmcore.build(spec)
    missing, unexpected = model.load_state_dict(import_model(folder).state_dict(), strict=True)
    assert not missing and not unexpected
    return model.eval()


def _batch(model: Any, clips: Path) -> dict[str, Any]:
    data = AudioTextFolderDataset(AudioTextFolderConfig(root=str(clips), eval_fraction=0.0))
    return Collator.for_model(model)([data[i] for i in range(4)])


@pytest.mark.parametrize("prompt_loss", [False, True])
def test_loss_equals_transformers(folder: Path, clips: Path, prompt_loss: bool) -> None:
    model = _model(folder, clips, prompt_loss=prompt_loss)
    batch = _batch(model, clips)
    objective = model.objectives["lm"]
    ids = objective.encode_texts(batch["text"])
    assert ids["ids"][0, :4].tolist() == [257, 258, 262, 266]  # SOT en transcribe notimestamps
    # transformers: labels = the sequence without <|startoftranscript|>, -100 on padding
    # (and on the prompt when it is not learned); it shifts them right behind SOT itself
    # (and on the prompt when it is not learned); it builds the decoder input by shifting
    # the labels right behind SOT, -100 turned into padding, so with a masked prompt the
    # decoder input must be given (else it would read padding where the prompt was)
    labels = ids["ids"][:, 1:].masked_fill(~ids["mask"][:, 1:], IGNORE)
    given: dict[str, Any] = {}
    if not prompt_loss:
        labels[:, :3] = IGNORE
        given["decoder_input_ids"] = ids["ids"][:, :-1]
    hf = transformers.WhisperForConditionalGeneration.from_pretrained(folder).eval()
    with torch.no_grad():
        theirs = hf(input_features=batch["audio"], labels=labels, **given).loss
        ours = model.loss(batch)["lm/loss"]
    assert abs(float(ours) - float(theirs)) < 1e-5


def test_the_head_is_shared_not_copied(folder: Path, clips: Path) -> None:
    model = _model(folder, clips)
    assert model.objectives["lm"].decoder is model.heads["decoder"]
    assert not any(k.startswith("objectives.") for k in model.state_dict())


def test_audio_text_folder_splits_by_hash(clips: Path, tmp_path: Path) -> None:
    train = AudioTextFolderDataset(AudioTextFolderConfig(root=str(clips), eval_fraction=0.3))
    held = train.split("eval")
    names = sorted(Path(x["audio"]).name for x in [*train, *held])
    assert names == [f"clip{i:02d}.wav" for i in range(12)] and len(held) > 0
    assert all(in_eval(Path(x["audio"]).name, 0, 0.3) for x in held)
    assert train[0] == {"audio": str(clips / "clip00.wav"), "text": "low"} or \
        in_eval("clip00.wav", 0, 0.3)
    (tmp_path / "a.wav").write_bytes((clips / "clip00.wav").read_bytes())
    with pytest.raises(ValueError, match=r"a\.wav has no transcript a\.txt beside it"):
        AudioTextFolderDataset(AudioTextFolderConfig(root=str(tmp_path)))


def test_train_fine_tunes_an_imported_whisper(folder: Path, clips: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["whisper-spec", str(folder), "--data", str(clips), "--steps", "8",
                 "--batch-size", "4", "--lr", "1e-3"]) == 0
    spec = tmp_path / "finetune.yaml"
    spec.write_text(capsys.readouterr().out)
    before = _model(folder, clips)
    batch = _batch(before, clips)
    with torch.no_grad():
        start = float(before.loss(batch)["loss"])
    out = tmp_path / "run"
    assert main(["train", str(spec), "--init", str(folder), "--out", str(out),
                 "--no-progress", "data.eval_fraction=0.0"]) == 0
    tuned = mmcore.load(out / "model.safetensors").eval()
    with torch.no_grad():
        end = float(tuned.loss(batch)["loss"])
    assert end < start - 1.0, (start, end)  # measured: 7.78 -> 6.34 after 8 steps
    assert main(["transcribe", str(out / "model.safetensors"), str(clips / "clip00.wav"),
                 "--language", "en"]) == 0

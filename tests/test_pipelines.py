"""mmcore.pipeline: raw inputs in, plain Python results out, for each task on tiny models."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

import mmcore
from mmcore.errors import MMCoreError
from mmcore.pipelines import TASKS, pipeline

RED = Image.new("RGB", (32, 32), "red")


@pytest.fixture(scope="module")
def clip() -> Any:
    torch.manual_seed(0)
    return mmcore.build("clip-tiny")


def test_import_mmcore_stays_light() -> None:
    code = ("import sys, mmcore\n"
            "assert 'torch' not in sys.modules, 'import mmcore imported torch'\n"
            "assert 'pipeline' in mmcore.__all__\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60,
                            check=False)
    assert result.returncode == 0, result.stderr


def test_zero_shot_image_classification(clip: Any, tmp_path: Path) -> None:
    pipe = pipeline("zero-shot-image-classification", clip)
    labels = ["red circle", "blue square", "green star"]
    RED.save(tmp_path / "red.png")
    from_path = pipe(str(tmp_path / "red.png"), candidate_labels=labels)
    from_pil = pipe(RED, candidate_labels=labels)
    from_array = pipe(np.asarray(RED), candidate_labels=labels)
    assert [r["label"] for r in from_pil] == [r["label"] for r in from_path]
    assert sorted(r["label"] for r in from_pil) == sorted(labels)
    assert sum(r["score"] for r in from_pil) == pytest.approx(1.0, abs=1e-5)
    assert from_pil[0]["score"] >= from_pil[1]["score"] >= from_pil[2]["score"]
    assert from_array[0]["score"] == pytest.approx(from_pil[0]["score"], abs=1e-5)
    two = pipe([RED, RED], candidate_labels=labels)
    assert len(two) == 2 and two[0][0]["score"] == pytest.approx(from_pil[0]["score"], abs=1e-5)
    with pytest.raises(MMCoreError, match="candidate_labels is empty"):
        pipe(RED, candidate_labels=[])


def test_zero_shot_audio_classification() -> None:
    pipe = pipeline("zero-shot-audio-classification", "audioclip-tiny")
    wave = np.sin(np.linspace(0, 400, 16000)).astype(np.float32)
    result = pipe((wave, 16000), candidate_labels=["a beep", "silence"])
    assert {r["label"] for r in result} == {"a beep", "silence"}
    assert sum(r["score"] for r in result) == pytest.approx(1.0, abs=1e-5)


def test_image_text_retrieval(clip: Any) -> None:
    blue = Image.new("RGB", (32, 32), "blue")
    result = pipeline("image-text-retrieval", clip)(images=[RED, blue],
                                                    texts=["a", "b", "c"], top_k=2)
    assert len(result["image_to_text"]) == 2 and len(result["text_to_image"]) == 3
    first = result["image_to_text"][0]
    assert len(first) == 2 and first[0]["score"] >= first[1]["score"]
    assert first[0]["text"] == ["a", "b", "c"][first[0]["index"]]


def test_text_generation_is_deterministic() -> None:
    pipe = pipeline("text-generation", "llama-tiny")
    torch.manual_seed(0)
    model = mmcore.build("llama-tiny")
    one = pipeline("text-generation", model)("Once", max_new_tokens=4)
    again = pipeline("text-generation", model)("Once", max_new_tokens=4)
    assert isinstance(one["generated_text"], str) and one == again
    assert len(pipe(["a", "b"], max_new_tokens=2)) == 2


def test_visual_question_answering() -> None:
    answer = pipeline("visual-question-answering", "llava-tiny")(RED, "What colour?",
                                                                  max_new_tokens=3)
    assert set(answer) == {"answer"} and isinstance(answer["answer"], str)


def test_image_captioning() -> None:
    result = pipeline("image-to-text", "blip-tiny")(RED, max_new_tokens=3)
    assert isinstance(result["generated_text"], str)


def test_text_to_image() -> None:
    image = pipeline("text-to-image", "ldm-tiny")("a red star", steps=2, seed=0)
    assert isinstance(image, Image.Image) and image.size == (32, 32)


def test_automatic_speech_recognition(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    from mmcore_whisper.testing import write_random_whisper

    write_random_whisper(tmp_path / "whisper")
    wave = (0.1 * np.sin(np.linspace(0, 2000, 16000))).astype(np.float32)
    pipe = pipeline("automatic-speech-recognition", str(tmp_path / "whisper"))
    result = pipe(wave)  # a bare waveform is 16 kHz
    assert isinstance(result["text"], str) and "language" in result
    assert pipe((wave, 16000)) == result


def test_unknown_task_and_missing_plugin(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(MMCoreError, match="unknown pipeline task 'zero-shot-image-clasification'"
                                          r".*Did you mean"):
        pipeline("zero-shot-image-clasification", "clip-tiny")
    from mmcore import plugins

    monkeypatch.setenv("MMCORE_PLUGINS_BLOCK", "mmcore_whisper")
    plugins.reload()
    try:
        with pytest.raises(MMCoreError, match="needs the 'transcribe' verb of mmcore_whisper"):
            pipeline("automatic-speech-recognition", "whatever")
    finally:
        monkeypatch.delenv("MMCORE_PLUGINS_BLOCK")
        plugins.reload()


def test_every_task_is_listed() -> None:
    assert set(TASKS) == {
        "zero-shot-image-classification", "zero-shot-audio-classification",
        "image-text-retrieval", "automatic-speech-recognition", "image-captioning",
        "visual-question-answering", "text-generation", "text-to-image"}


def test_build_and_load_give_eval_mode(tmp_path: Path, clip: Any) -> None:
    assert not clip.training
    path = mmcore.save(clip.train(), tmp_path / "m.safetensors")
    assert not mmcore.load(path).training

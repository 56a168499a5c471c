"""BLIP's commands (caption, capfilt), the captioning eval task and the noisy shapes data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import mmcore
from mmcore.cli import main
from mmcore.generation import GenerationConfig
from mmcore.spec import load_spec
from mmcore_blip.capfilt import CapFiltOptions, capfilt
from mmcore_blip.data import NoisyShapesConfig, NoisyShapesDataset
from mmcore_blip.runner import caption, generate_captions
from mmcore_blip.task import caption_accuracy
from mmcore_clip.image_captions import ImageCaptionsConfig, ImageCaptionsDataset
from mmcore_shapes.dataset import ShapesConfig, ShapesDataset, class_names


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = mmcore.build(load_spec("blip-tiny"))
    return mmcore.save(model, tmp_path_factory.mktemp("blip") / "blip.safetensors")


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("images")
    data = ShapesDataset(ShapesConfig(image_size=24, train_size=3))
    paths = [folder / f"{i}.png" for i in range(3)]
    for i, path in enumerate(paths):
        data[i]["image"].save(path)
    return paths


def test_caption_command_json(model_file: Path, images: list[Path],
                              capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["caption", str(model_file), *map(str, images), "--json",
                 "--max-new-tokens", "5"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["image"] for r in rows] == [str(p) for p in images]
    assert all(isinstance(r["caption"], str) for r in rows)


def test_caption_command_names_an_unreadable_image(model_file: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "broken.png"
    bad.write_text("not an image")
    assert main(["caption", str(model_file), str(bad)]) == 1
    assert str(bad) in capsys.readouterr().err


def test_cached_and_beam_captions_run_through_the_loop(model_file: Path,
                                                       images: list[Path]) -> None:
    model = mmcore.load(model_file).eval()
    greedy = generate_captions(model, images, config=GenerationConfig(max_new_tokens=6))
    assert greedy.sequences.shape[0] == 3 and bool((greedy.sequences[:, 0] == 260).all())
    beams = caption(model, images, config=GenerationConfig(max_new_tokens=6, num_beams=2))
    assert len(beams) == 3


def test_capfilt_writes_an_image_captions_folder(model_file: Path, tmp_path: Path) -> None:
    model = mmcore.load(model_file).eval()
    data = NoisyShapesDataset(NoisyShapesConfig(image_size=24, train_size=12))
    report = capfilt(model, data, tmp_path / "out",
                     CapFiltOptions(threshold=0.0, batch_size=6, max_new_tokens=6))
    assert report.images == 12 and report.web_kept == 12  # threshold 0 keeps every web one
    metrics = report.metrics()
    assert metrics["removal_recall"] == 0.0 and metrics["wrong_captions"] == report.wrong
    read = ImageCaptionsDataset(ImageCaptionsConfig(path=str(tmp_path / "out"),
                                                    captions="captions.jsonl"))
    assert len(read) == report.web_kept + report.synthetic_kept
    assert {read[0]["text"]} <= {data[0]["text"], *[read[i]["text"] for i in range(len(read))]}


def test_capfilt_threshold_one_keeps_nothing_and_counts_removals(model_file: Path,
                                                                 tmp_path: Path) -> None:
    model = mmcore.load(model_file).eval()
    data = NoisyShapesDataset(NoisyShapesConfig(image_size=24, train_size=10))
    report = capfilt(model, data, tmp_path, CapFiltOptions(threshold=1.01, max_new_tokens=4))
    wrong = sum(not data[i]["caption_ok"] for i in range(10))
    assert report.web_kept == 0 and report.wrong == wrong
    assert report.metrics()["removal_recall"] == 1.0
    assert report.metrics()["removal_precision"] == wrong / 10


def test_noisy_shapes_wrong_captions() -> None:
    data = NoisyShapesDataset(NoisyShapesConfig(image_size=16, train_size=400))
    clean = ShapesDataset(ShapesConfig(image_size=16, train_size=400))
    items = [data[i] for i in range(400)]
    wrong = [i for i, it in enumerate(items) if not it["caption_ok"]]
    assert 0.25 < len(wrong) / 400 < 0.35
    for i, it in enumerate(items):
        same = it["text"] == clean[i]["text"]
        assert same == it["caption_ok"]
        if not it["caption_ok"]:  # a wrong caption names another combination
            assert caption_accuracy([it["text"]], [class_names()[it["label"]]])["accuracy"] == 0


def test_caption_accuracy_needs_exact_words() -> None:
    got = caption_accuracy(["a red circle", "a red square", "blue circle red"],
                           ["red circle", "red circle", "red circle"])
    assert got == {"accuracy": 1 / 3, "colour_accuracy": 2 / 3, "shape_accuracy": 2 / 3,
                   "images": 3}


def test_eval_task_captioning(model_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", str(model_file), "--task", "captioning", "--limit", "6",
                 "--max-new-tokens", "4", "--json"]) == 0
    text = capsys.readouterr().out
    result = json.loads(text[text.index("{"):])
    metrics = result.get("metrics", result)
    assert metrics["images"] == 6 and 0 <= metrics["accuracy"] <= 1
    assert set(metrics["retrieval_recall@1"]) == {"image_to_text", "text_to_image"}

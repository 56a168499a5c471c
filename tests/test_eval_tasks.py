"""``mmcore eval --task classification`` and ``--task linear-probe``: the probe on synthetic
features (separable -> 1.0, random labels -> chance) and both tasks on tiny trained runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from tiny_specs import DATA, IMAGE, TEXT

import mmcore
from mmcore.cli import main
from mmcore.evaluate import classification, classifier_head, evaluate
from mmcore.probe import DEFAULT_GRID, fit_linear_probe, score_probe

TRAIN = {"steps": 2, "batch_size": 8, "warmup_steps": 1, "log_every": 1, "checkpoint_every": 2}


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def blobs(n: int, dim: int, classes: int, seed: int, spread: float) -> tuple[torch.Tensor, ...]:
    """Gaussian blobs around random centres: features (n, dim), labels (n,)."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, dim, generator=g) * 4
    labels = torch.randint(0, classes, (n,), generator=g)
    return centres[labels] + torch.randn(n, dim, generator=g) * spread, labels


def test_probe_separates_separable_features() -> None:
    x, y = blobs(240, 12, 4, seed=0, spread=0.3)
    probe = fit_linear_probe(x[:160], y[:160])
    assert probe.validation_accuracy == 1.0 and probe.l2 in DEFAULT_GRID
    assert score_probe(probe, x[160:], y[160:])["top1"] == 1.0


def test_probe_on_random_labels_is_near_chance() -> None:
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(600, 12, generator=g), torch.randint(0, 4, (600,), generator=g)
    probe = fit_linear_probe(x[:400], y[:400])
    scores = score_probe(probe, x[400:], y[400:])
    assert scores["chance_top1"] == 0.25
    assert abs(scores["top1"] - 0.25) < 0.1


def test_probe_keeps_original_labels_and_counts_unseen_ones() -> None:
    x, y = blobs(120, 6, 3, seed=2, spread=0.2)
    probe = fit_linear_probe(x, y * 10 + 5)  # labels 5, 15, 25
    assert probe.classes.tolist() == [5, 15, 25]
    scores = score_probe(probe, x[:10], torch.full((10,), 99))
    assert (scores["top1"], scores["unseen_classes"], scores["unseen_samples"]) == (0.0, 1, 10)


def clip_spec() -> dict[str, Any]:
    return {"name": "probe-clip", "modalities": {"image": IMAGE, "text": TEXT},
            "fusion": {"type": "late", "embed_dim": 8, "pooling": {"image": "cls", "text": "eot"}},
            "objectives": {"contrastive": {"type": "contrastive", "pairs": [["image", "text"]]}},
            "data": DATA, "train": TRAIN}


def classifier_spec() -> dict[str, Any]:
    return {"name": "probe-cls", "modalities": {"image": IMAGE},
            "fusion": {"type": "late", "embed_dim": 8, "pooling": {"image": "cls"}},
            "heads": {"cls": {"type": "classifier", "num_classes": 36, "input": "image"}},
            "objectives": {"ce": {"type": "classification", "head": "cls"}},
            "data": DATA, "train": TRAIN}


def trained(capsys: pytest.CaptureFixture[str], tmp_path: Path, spec: dict[str, Any]) -> Path:
    path = tmp_path / f"{spec['name']}.yaml"
    path.write_text(json.dumps(spec), encoding="utf-8")
    out = tmp_path / spec["name"]
    assert run(capsys, "train", str(path), "--out", str(out), "--no-progress")[0] == 0
    return out


def test_cli_linear_probe_on_a_trained_run(capsys: pytest.CaptureFixture[str],
                                           tmp_path: Path) -> None:
    out = trained(capsys, tmp_path, clip_spec())
    code, text, err = run(capsys, "eval", str(out), "--task", "linear-probe", "--split",
                          "eval-seen", "--train-limit", "60", "--limit", "24", "--json",
                          "--no-progress")
    assert code == 0, err
    report = json.loads(text)
    assert (report["task"], report["modality"], report["train_samples"], report["samples"]) == (
        "linear-probe", "image", 60, 24)
    assert report["feature_dim"] == 8 and report["unseen_classes"] == 0
    assert 0.0 <= report["top1"] <= 1.0 and report["chance_top1"] == 1 / report["num_classes"]
    code, text, err = run(capsys, "eval", str(out), "--task", "linear-probe", "--modality",
                          "text", "--train-limit", "30", "--limit", "12", "--no-progress")
    assert code == 0, err
    assert "unseen_classes" in text  # the eval split's classes never occur in train
    code, _, err = run(capsys, "eval", str(out), "--task", "linear-probe", "--modality", "audio",
                       "--no-progress")
    assert code == 1 and "'audio' is not one of this model's modalities" in err
    code, _, err = run(capsys, "eval", str(out), "--task", "zero-shot", "--modality", "text")
    assert code == 2 and "--modality apply to --task linear-probe only" in err


def test_cli_classification_on_a_trained_run(capsys: pytest.CaptureFixture[str],
                                             tmp_path: Path) -> None:
    out = trained(capsys, tmp_path, classifier_spec())
    code, text, err = run(capsys, "eval", str(out), "--task", "classification", "--split",
                          "eval-seen", "--json", "--no-progress")
    assert code == 0, err
    report = json.loads(text)
    assert (report["head"], report["samples"], report["num_classes"]) == ("cls", 24, 36)
    assert 0.0 <= report["top1"] <= report["top5"] <= 1.0
    clip = trained(capsys, tmp_path, clip_spec())
    code, text, err = run(capsys, "eval", str(clip), "--task", "classification",
                          "--no-progress", "--json")
    assert code == 0, err  # no head: zero-shot by class names, and the report says so
    assert json.loads(text)["method"].startswith("zero-shot")


def test_classification_function_counts_correct_predictions() -> None:
    model = mmcore.build(classifier_spec())
    assert classifier_head(model) == ("cls", "label")
    data = [{"image": item["image"], "label": 0} for item in
            (mmcore.data.spec_dataset(model.spec, "train")[i] for i in range(5))]
    with torch.no_grad():
        model.heads["cls"].net[2].bias.fill_(0.0)
        model.heads["cls"].net[2].bias[0] = 1e4  # always class 0
    report = classification(model.eval(), data, batch_size=2, progress=False)  # type: ignore
    assert (report["top1"], report["samples"], report["chance_top1"]) == (1.0, 5, 1 / 36)
    assert evaluate(model, "classification", dataset=data, progress=False)["top1"] == 1.0  # type: ignore


def test_classification_of_a_contrastive_model_without_a_head_is_zero_shot() -> None:
    from mmcore.evaluate import evaluate

    model = mmcore.build("clip-tiny")
    result = evaluate(model, "classification", progress=False, limit=12, split="eval-seen")
    assert result["task"] == "classification" and result["method"].startswith("zero-shot")
    assert result["samples"] == 12 and 0 <= result["top1"] <= result["top5"] <= 1

"""Evaluation during training: eval/ metrics in the metrics files, the best checkpoint
(keep_best) and early stopping, and both surviving a resume bitwise."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from test_optim import TRAIN, clip_spec
from tiny_specs import DATA, IMAGE, TEXT

import mmcore
from mmcore.checkpoint import read_tensors
from mmcore.errors import SpecError
from mmcore.spec import ModelSpec
from mmcore.training import read_metrics, train
from mmcore.training.evaluation import improved, metric_mode


def classifier_spec(**train: Any) -> ModelSpec:
    return mmcore.load_spec({
        "name": "cls-test", "modalities": {"image": IMAGE, "text": TEXT},
        "fusion": {"type": "perceiver", "width": 16, "num_latents": 4, "layers": 1, "heads": 2},
        "heads": {"cls": {"type": "classifier", "num_classes": 36}},
        "objectives": {"ce": {"type": "classification", "head": "cls"}},
        "data": DATA, "train": {**TRAIN, **train}})


def _state(run: Path, step: int) -> dict[str, Any]:
    return json.loads((run / f"checkpoints/step-{step:06d}/state.json").read_text())


def test_a_classifier_reports_accuracy_in_the_metrics_files(tmp_path: Path) -> None:
    train(classifier_spec(steps=4, eval_every=2), tmp_path / "r", progress=False)
    rows = [r for r in read_metrics(tmp_path / "r") if "eval/loss" in r]
    assert [r["step"] for r in rows] == [2, 4]
    assert all(0.0 <= r["eval/accuracy"] <= 1.0 for r in rows)
    assert rows[0]["eval/accuracy"] == rows[0]["eval/ce/accuracy"]
    header = (tmp_path / "r/metrics.csv").read_text().splitlines()[0]
    assert "eval/accuracy" in header.split(",")


def test_a_contrastive_model_reports_zero_shot_and_retrieval(tmp_path: Path) -> None:
    train(clip_spec(steps=2, eval_every=2, eval_limit=12), tmp_path / "r", progress=False)
    row = next(r for r in read_metrics(tmp_path / "r") if "eval/loss" in r)
    for key in ("eval/zero_shot/top1", "eval/zero_shot/top5",
                "eval/retrieval/image_to_text/recall@1", "eval/retrieval/text_to_image/recall@5"):
        assert 0.0 <= row[key] <= 1.0, key


def test_keep_best_copies_the_best_checkpoint_and_survives_a_resume(tmp_path: Path) -> None:
    spec = classifier_spec(steps=8, eval_every=2, checkpoint_every=2, keep_best="eval/loss")
    straight = train(spec, tmp_path / "a", progress=False)
    train(spec, tmp_path / "b", progress=False, stop_after=4)
    resumed = train(spec, tmp_path / "b", progress=False, resume=True)
    a, b = read_tensors(straight), read_tensors(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)  # evaluation changes nothing it must not
    for run in (tmp_path / "a", tmp_path / "b"):
        best = json.loads((run / "best/state.json").read_text())["eval"]["best"]
        evals = {r["step"]: r["eval/loss"] for r in read_metrics(run) if "eval/loss" in r}
        assert best["step"] == min(evals, key=lambda s: evals[s])
        assert best["value"] == evals[best["step"]] and best["mode"] == "min"
        copy = read_tensors(run / "best/model.safetensors")
        saved = read_tensors(run / f"checkpoints/step-{best['step']:06d}/model.safetensors")
        assert all(torch.equal(copy[k], saved[k]) for k in saved)
    assert _state(tmp_path / "a", 8)["eval"] == _state(tmp_path / "b", 8)["eval"]


def test_early_stopping_stops_and_its_patience_survives_a_resume(tmp_path: Path) -> None:
    # min_delta 100: only the first evaluation counts as an improvement
    spec = classifier_spec(steps=12, eval_every=2, checkpoint_every=2, early_stopping={
        "metric": "eval/accuracy", "patience": 2, "min_delta": 100.0})
    straight = train(spec, tmp_path / "a", progress=False)
    assert straight == tmp_path / "a/model.safetensors"
    state = _state(tmp_path / "a", 6)
    assert state["eval"]["early"]["bad"] == 2 and "early stopping" in state["stopped"]
    assert not (tmp_path / "a/checkpoints/step-000008").exists()
    train(spec, tmp_path / "b", progress=False, stop_after=4)
    assert _state(tmp_path / "b", 4)["eval"]["early"]["bad"] == 1
    resumed = train(spec, tmp_path / "b", progress=False, resume=True)
    assert _state(tmp_path / "b", 6)["stopped"] == state["stopped"]
    a, b = read_tensors(straight), read_tensors(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_best_and_early_stopping_need_eval_every_and_an_eval_metric() -> None:
    with pytest.raises(SpecError) as err:
        mmcore.validation.check(classifier_spec(keep_best="accuracy", early_stopping={
            "metric": "eval/loss"}))
    text = str(err.value)
    assert "train.keep_best: needs train.eval_every" in text
    assert "'accuracy' is not an evaluation metric" in text
    assert "train.early_stopping.metric: needs train.eval_every" in text


def test_modes() -> None:
    assert metric_mode("eval/loss") == "min" and metric_mode("eval/ce/loss") == "min"
    assert metric_mode("eval/accuracy") == "max" and metric_mode("eval/loss", "max") == "max"
    assert improved(1.0, None, "max") and not improved(float("nan"), None, "max")
    assert improved(0.5, 0.6, "min") and not improved(0.55, 0.6, "min", min_delta=0.1)

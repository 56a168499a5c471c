"""Evaluation: zero-shot prompt ensembles, retrieval recall, chance levels, loading."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from tiny_specs import IMAGE, TEXT

import mmcore
from mmcore.evaluate import (
    _chance_hit,
    _recall,
    _topk,
    class_embeddings,
    contrastive_pair,
    evaluate,
)
from mmcore.training import train


def tiny_clip(**train_params: Any) -> Any:
    return mmcore.load_spec({
        "name": "clip-eval-test", "modalities": {"image": IMAGE, "text": TEXT},
        "fusion": {"type": "late", "embed_dim": 16, "pooling": {"image": "cls", "text": "eot"}},
        "objectives": {"contrastive": {"type": "contrastive", "pairs": [["image", "text"]]}},
        "data": {"type": "shapes", "image_size": 16, "train_size": 64, "eval_size": 24},
        "train": {"steps": 2, "batch_size": 8, "log_every": 1, **train_params}})


def test_topk_and_chance() -> None:
    scores = torch.tensor([[0.9, 0.1, 0.0], [0.2, 0.3, 0.5], [0.6, 0.3, 0.1]])
    out = _topk(scores, torch.tensor([0, 1, 2]), 3)
    assert out["top1"] == pytest.approx(1 / 3)
    assert out["top5"] == 1.0  # k is capped at the number of classes
    assert out["chance_top1"] == pytest.approx(1 / 3) and out["chance_top5"] == 1.0


def test_recall_perfect_and_reversed() -> None:
    emb = F.normalize(torch.randn(6, 4, generator=torch.Generator().manual_seed(0)), dim=-1)
    relevant = torch.eye(6, dtype=torch.bool)
    perfect = _recall(emb @ emb.t(), relevant, (1, 5))
    assert perfect["recall@1"] == 1.0 and perfect["recall@5"] == 1.0
    worst = _recall(-(emb @ emb.t()), relevant, (1, 5))
    assert worst["recall@1"] == 0.0 and worst["recall@5"] == 0.0  # its pair ranks last
    assert perfect["chance@1"] == pytest.approx(1 / 6)
    assert perfect["chance@5"] == pytest.approx(5 / 6)


def test_chance_with_several_positives() -> None:
    # 2 relevant among 10, pick 3: 1 - C(8,3)/C(10,3) = 1 - 56/120
    assert float(_chance_hit(torch.tensor([2]), 10, 3)) == pytest.approx(1 - 56 / 120)
    assert float(_chance_hit(torch.tensor([1]), 10, 1)) == pytest.approx(0.1)


def test_contrastive_pair_names_image_and_text() -> None:
    assert contrastive_pair(mmcore.build(tiny_clip())) == ("image", "text")
    perceiver = mmcore.build("perceiver-tiny", device="meta")
    with pytest.raises(ValueError, match="contrastive objective"):
        contrastive_pair(perceiver)


def test_class_embeddings_are_normalised_prompt_ensembles() -> None:
    model = mmcore.build(tiny_clip()).eval()
    templates = ["a {}.", "a photo of a {}."]
    with torch.no_grad():
        classes = class_embeddings(model, "text", ["red circle", "blue star"], templates)
        one = F.normalize(model.embed("text", model.preprocess(
            "text", ["a blue star.", "a photo of a blue star."])), dim=-1)
    assert classes.shape == (2, 16)
    assert torch.allclose(classes.norm(dim=-1), torch.ones(2), atol=1e-5)
    assert torch.allclose(classes[1], F.normalize(one.mean(0), dim=0), atol=1e-5)


def test_untrained_model_results_have_every_field() -> None:
    model = mmcore.build(tiny_clip())
    zs = evaluate(model, "zero-shot", progress=False, limit=12)
    assert zs["samples"] == 12 and zs["num_classes"] == 36 and zs["templates"] >= 4
    assert zs["chance_top1"] == pytest.approx(1 / 36) and zs["chance_top5"] == pytest.approx(5 / 36)
    assert 0 <= zs["top1"] <= zs["top5"] <= 1
    assert zs["present_classes"]["num_classes"] == 6  # the held-out combinations
    rt = evaluate(model, "retrieval", progress=False, limit=12)
    assert rt["match"] == "label" and rt["samples"] == 12
    for direction in ("image_to_text", "text_to_image"):
        r = rt[direction]
        assert r["recall@1"] <= r["recall@5"] <= r["recall@10"] <= 1.0
        assert r["chance@1"] == pytest.approx(2 / 12)  # 2 items of each of 6 classes
    with pytest.raises(ValueError, match="unknown task"):
        evaluate(model, "no-such-task", progress=False)  # type: ignore[arg-type]


def test_loads_run_folders_and_unfinished_runs(tmp_path: Path) -> None:
    spec = tiny_clip(steps=4, checkpoint_every=2)
    train(spec, tmp_path / "done", progress=False)
    train(spec, tmp_path / "half", progress=False, stop_after=2)
    done = evaluate(tmp_path / "done", "zero-shot", progress=False, limit=6)
    same = evaluate(mmcore.load(tmp_path / "done"), "zero-shot", progress=False, limit=6)
    assert done == same
    half = evaluate(tmp_path / "half", "retrieval", progress=False, limit=6)
    assert half["samples"] == 6


@pytest.mark.slow
def test_zero_shot_on_unseen_combinations_beats_chance(tmp_path: Path) -> None:
    """A small CLIP trained for 400 steps (about 15 s on one core) names colour-shape pairs
    it never saw, choosing among all 36 class names."""
    image = {"preprocessor": {"type": "image", "size": 16, "mean": [0.5] * 3, "std": [0.25] * 3},
             "tokenizer": {"type": "patch-embedding", "image_size": 16, "patch_size": 4,
                           "width": 32},
             "encoder": {"type": "vit", "layers": 1, "heads": 2}}
    text = {"preprocessor": {"type": "byte-text", "context_length": 34},
            "tokenizer": {"type": "token-embedding", "vocab_size": 259, "width": 32,
                          "context_length": 34},
            "encoder": {"type": "text-transformer", "layers": 1, "heads": 2}}
    spec = mmcore.load_spec({
        "name": "clip-zero-shot-test", "modalities": {"image": image, "text": text},
        "fusion": {"type": "late", "embed_dim": 32, "pooling": {"image": "cls", "text": "eot"}},
        "objectives": {"contrastive": {"type": "contrastive", "pairs": [["image", "text"]]}},
        "data": {"type": "shapes", "image_size": 16, "eval_size": 300, "radius": [0.28, 0.42]},
        "train": {"steps": 400, "batch_size": 64, "lr": 3e-3, "warmup_steps": 20,
                  "weight_decay": 0.05, "log_every": 50, "checkpoint_every": 400}})
    model = train(spec, tmp_path / "run", progress=False)
    result = evaluate(model, "zero-shot", progress=False)
    assert result["samples"] == 300 and result["num_classes"] == 36
    # measured 0.11-0.21 over training seeds; chance is 1/36 = 0.028
    assert result["top1"] > 3 * result["chance_top1"], result
    assert result["top5"] > 3 * result["chance_top5"], result
    # among the six unseen classes alone (chance 1/6)
    assert result["present_classes"]["top1"] > 3 * result["present_classes"]["chance_top1"]
    retrieval = evaluate(model, "retrieval", progress=False)
    assert retrieval["text_to_image"]["recall@1"] > 2 * retrieval["text_to_image"]["chance@1"]

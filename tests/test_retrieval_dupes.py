"""Retrieval counts duplicate captions once, so recall is not capped below chance."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
import torch
from torch import Tensor

from mmcore.evaluate import retrieval, unique_texts

CAPTIONS = ["a red circle", "a blue square", "a green star"]


class LookupModel:
    """Embeds images as one-hot label vectors plus a small offset, texts by caption."""

    def preprocess(self, modality: str, items: Sequence[Any]) -> list[Any]:
        return list(items)

    def embed(self, modality: str, items: list[Any]) -> Tensor:
        if modality == "image":
            return torch.stack([torch.eye(3)[label] + 0.1 for label in items])
        return torch.stack([torch.eye(3)[CAPTIONS.index(text)] for text in items])


def _dataset(labels: list[int], image_labels: list[int] | None = None) -> list[dict[str, Any]]:
    """Label-matched items: each label's caption repeated, as shapes captions are."""
    seen = image_labels or labels
    return [{"image": seen[i], "text": CAPTIONS[label], "label": label}
            for i, label in enumerate(labels)]


def test_unique_texts_groups_equal_strings() -> None:
    keep, groups = unique_texts(["a", "b", "a", "c", "b"])
    assert keep.tolist() == [0, 1, 3]
    assert groups.int().tolist() == [[1, 0, 1, 0, 0], [0, 1, 0, 0, 1], [0, 0, 0, 1, 0]]
    keep, groups = unique_texts([1, 1])  # not strings: all distinct
    assert keep.tolist() == [0, 1] and groups.shape == (2, 2)


def test_a_perfect_model_has_recall_one_with_duplicate_captions() -> None:
    data = _dataset([0] * 6 + [1] * 6 + [2] * 6)  # 18 items, 3 distinct captions
    result = retrieval(LookupModel(), data, "image", "text", progress=False)  # type: ignore[arg-type]
    assert result["unique_text"] == 3
    for direction in ("image_to_text", "text_to_image"):
        assert result[direction]["recall@1"] == 1.0
        assert result[direction]["chance@1"] == pytest.approx(1 / 3)
    assert result["image_to_text"]["chance@5"] == 1.0  # 5 >= 3 distinct captions
    assert result["text_to_image"]["chance@5"] < 1.0  # 3 queries, 6 of 18 images right


def test_recall_rises_with_k_when_the_top_caption_is_wrong() -> None:
    """Images whose embedding points at the wrong caption: counted once, the right caption
    is the second distinct candidate, so recall@1 = 0 and recall@5 = 1 (before, five copies
    of the wrong caption filled the top five and recall@1 = @5 = @10 = 0)."""
    labels = [0] * 6 + [1] * 6 + [2] * 6
    wrong = [(label + 1) % 3 for label in labels]
    result = retrieval(LookupModel(), _dataset(labels, wrong), "image", "text",  # type: ignore[arg-type]
                       progress=False)
    forward = result["image_to_text"]
    assert forward["recall@1"] == 0.0 and forward["recall@5"] == 1.0
    assert forward["recall@5"] >= forward["chance@5"]


def test_distinct_captions_behave_as_before() -> None:
    data = [{"image": i, "text": CAPTIONS[i], "label": i} for i in range(3)]
    result = retrieval(LookupModel(), data, "image", "text", progress=False)  # type: ignore[arg-type]
    assert result["unique_text"] == 3
    assert result["image_to_text"]["recall@1"] == 1.0
    assert result["text_to_image"]["chance@1"] == pytest.approx(1 / 3)

"""The built-in shapes dataset: determinism, the held-out split, captions, presets."""

from __future__ import annotations

import numpy as np
import pytest

from mmcore.data import open_dataset
from mmcore.spec import ComponentRef
from mmcore_shapes.dataset import (
    TEMPLATES,
    ShapesConfig,
    ShapesDataset,
    class_names,
    held_out,
)
from mmcore_shapes.render import COLOURS, SHAPES


def _dataset(split: str = "train", **params: object) -> ShapesDataset:
    return ShapesDataset(ShapesConfig.model_validate({"split": split, "image_size": 24,
                                                      "train_size": 500, "eval_size": 60,
                                                      **params}))


def _pixels(item: dict) -> np.ndarray:
    return np.asarray(item["image"], dtype=np.int16)


def test_item_is_a_pure_function_of_seed_split_and_index() -> None:
    a, b = _dataset(), _dataset()
    for i in (0, 7, 499):
        x, y = a[i], b[i]
        assert np.array_equal(_pixels(x), _pixels(y))
        assert (x["text"], x["label"]) == (y["text"], y["label"])
    later = [a[i] for i in (7, 3, 7)]  # access order does not matter
    assert np.array_equal(_pixels(later[0]), _pixels(later[2]))
    assert not np.array_equal(_pixels(a[7]), _pixels(a[8]))


def test_seed_changes_the_images() -> None:
    a, b = _dataset(seed=0), _dataset(seed=1)
    assert a[3]["label"] == b[3]["label"]
    assert not np.array_equal(_pixels(a[3]), _pixels(b[3]))


def test_item_layout() -> None:
    item = _dataset()[0]
    assert set(item) == {"image", "text", "label"}
    assert item["image"].mode == "RGB" and item["image"].size == (24, 24)
    assert isinstance(item["text"], str) and isinstance(item["label"], int)


def test_held_out_is_a_latin_diagonal() -> None:
    unseen = held_out(1)
    names = class_names()
    assert len(names) == len(COLOURS) * len(SHAPES) == 36
    assert [names[i] for i in unseen] == ["red circle", "green square", "blue triangle",
                                          "yellow diamond", "purple cross", "orange star"]
    assert len(held_out(2)) == 12 and set(unseen) < set(held_out(2))


def test_train_never_shows_unseen_and_eval_only_shows_unseen() -> None:
    unseen = set(held_out(1))
    train_labels = {_dataset("train")[i]["label"] for i in range(300)}
    eval_labels = [_dataset("eval")[i]["label"] for i in range(60)]
    assert train_labels.isdisjoint(unseen)
    assert len(train_labels) == 30  # every seen combination appears
    assert set(eval_labels) == unseen
    assert all(eval_labels.count(c) == 10 for c in unseen)  # balanced
    # every colour and every shape is still trained on, with other partners
    seen_names = [class_names()[c] for c in train_labels]
    assert {n.split()[0] for n in seen_names} == set(COLOURS)
    assert {n.split()[1] for n in seen_names} == set(SHAPES)


def test_eval_seen_split_uses_seen_classes_with_fresh_images() -> None:
    train, seen = _dataset("train"), _dataset("eval-seen")
    assert {seen[i]["label"] for i in range(60)}.isdisjoint(held_out(1))
    assert train[0]["label"] == seen[0]["label"]
    assert not np.array_equal(_pixels(train[0]), _pixels(seen[0]))


def test_captions_name_the_colour_and_shape() -> None:
    ds = _dataset()
    texts = set()
    for i in range(120):
        item = ds[i]
        colour, shape = class_names()[item["label"]].split()
        assert colour in item["text"] and shape in item["text"]
        texts.add(item["text"].replace(colour, "C").replace(shape, "S"))
    assert len(texts) >= 5  # several phrasings
    orange = [ds[i]["text"] for i in range(500) if ds[i]["label"] >= 30]  # colour 5: orange
    assert any("an orange" in t for t in orange)
    assert not any("a orange" in t for t in orange)


def test_the_shape_is_drawn_in_its_colour() -> None:
    ds = _dataset(noise=0.0)
    for i in range(36):
        item = ds[i]
        rgb = np.array(COLOURS[class_names()[item["label"]].split()[0]])
        distance = np.abs(_pixels(item) - rgb).sum(-1)  # (H, W)
        assert (distance < 60).mean() > 0.03, item["text"]


def test_templates_and_class_names_for_zero_shot() -> None:
    ds = _dataset("eval")
    assert ds.class_names == class_names()
    assert len(ds.templates) >= 4 and all("{}" in t for t in TEMPLATES)


def test_unknown_split_is_an_error() -> None:
    with pytest.raises(ValueError, match="splits are"):
        _dataset().split("test")
    with pytest.raises(ValueError, match="unknown split"):
        ShapesConfig(split="nope")


def test_index_out_of_range() -> None:
    with pytest.raises(IndexError):
        _dataset()[500]


def test_registered_and_opened_by_split() -> None:
    ref = ComponentRef.model_validate({"type": "shapes", "image_size": 16, "eval_size": 12})
    evaluation = open_dataset(ref, "eval")
    assert len(evaluation) == 12
    assert {evaluation[i]["label"] for i in range(12)} == set(held_out(1))
    assert len(open_dataset(ref, "train")) == 50_000


@pytest.mark.parametrize("preset", ["clip-tiny", "perceiver-tiny"])
def test_presets_validate(preset: str) -> None:
    import mmcore
    from mmcore.builder import validate

    spec = mmcore.load_spec(preset)
    assert spec.data is not None and spec.data.type == "shapes"
    validate(spec)


def test_dataset_pickles_for_worker_processes() -> None:
    import pickle

    ds = _dataset("eval")
    copy = pickle.loads(pickle.dumps(ds))
    assert len(copy) == len(ds) and copy.cfg == ds.cfg
    assert np.array_equal(_pixels(copy[5]), _pixels(ds[5])) and copy[5]["text"] == ds[5]["text"]


def test_tiny_registered_config_is_valid() -> None:
    import mmcore

    entry = mmcore.get_registry().get("dataset", "shapes")
    assert entry.tiny is not None
    dataset = entry.factory(entry.config.model_validate(entry.tiny), None)
    assert len(dataset) == entry.tiny["train_size"]
    assert dataset[0]["image"].size == (16, 16)

"""Shapes segmentation: the per-pixel masks, the metrics on hand-made masks, the
``perceiver-seg-tiny`` preset (validates, trains with decreasing loss) and the
``segmentation`` task of ``mmcore eval``. The real training run is documented in
docs/perceiver-io.md, not run here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import mmcore
from mmcore.cli import main
from mmcore.data import Collator
from mmcore_perceiver.segmentation import confusion, evaluate_segmentation, metrics
from mmcore_shapes.dataset import SEGMENTATION_CLASSES, ShapesConfig, ShapesDataset
from mmcore_shapes.render import COLOURS


def shapes(**params: object) -> ShapesDataset:
    return ShapesDataset(ShapesConfig.model_validate({"image_size": 16, "train_size": 40,
                                                      "eval_size": 8, **params}))


# -- metrics on hand-made masks -----------------------------------------------------------


def test_metrics_on_hand_made_masks() -> None:
    truth = torch.tensor([[0, 0, 1, 1],
                          [0, 0, 1, 1],
                          [2, 2, 2, -100]])
    guess = torch.tensor([[0, 1, 1, 1],
                          [0, 0, 0, 1],
                          [2, 2, 0, 2]])
    matrix = confusion(guess, truth, num_classes=4)
    assert matrix.tolist() == [[3, 1, 0, 0], [1, 3, 0, 0], [1, 0, 2, 0], [0, 0, 0, 0]]
    result = metrics(matrix, ["bg", "a", "b", "unused"])
    assert result["pixels"] == 11
    assert result["pixel_accuracy"] == pytest.approx(8 / 11)
    # IoU = hits / (true + predicted - hits): bg 3/(4+5-3), a 3/(4+4-3), b 2/(3+2-2)
    assert result["iou"] == pytest.approx({"bg": 3 / 6, "a": 3 / 5, "b": 2 / 3})
    assert result["mean_iou"] == pytest.approx((3 / 6 + 3 / 5 + 2 / 3) / 3)  # unused left out
    assert result["majority_accuracy"] == pytest.approx(4 / 11)


def test_perfect_and_all_background_predictions() -> None:
    truth = torch.tensor([[0, 3, 3], [0, 0, 3]])
    perfect = metrics(confusion(truth, truth, 4))
    assert perfect["pixel_accuracy"] == 1.0 and perfect["mean_iou"] == 1.0
    background = metrics(confusion(torch.zeros_like(truth), truth, 4))
    assert background["pixel_accuracy"] == pytest.approx(0.5)
    assert background["mean_iou"] == pytest.approx((3 / 6 + 0.0) / 2)


# -- the masks of the shapes data ---------------------------------------------------------


def test_masks_leave_every_other_output_unchanged() -> None:
    plain, masked = shapes(), shapes(masks=True)
    for i in (0, 5, 39):
        a, b = plain[i], masked[i]
        assert set(b) == set(a) | {"mask"}
        assert np.array_equal(np.asarray(a["image"]), np.asarray(b["image"]))
        assert (a["text"], a["label"]) == (b["text"], b["label"])


def test_mask_marks_the_shape_with_its_colour_class() -> None:
    data = shapes(masks=True, noise=0.0, image_size=32)
    for i in range(6):
        item = data[i]
        mask = item["mask"]
        assert mask.shape == (32, 32) and mask.dtype == torch.int64
        colour = data.class_names[item["label"]].split(" ")[0]
        cls = 1 + list(COLOURS).index(colour)
        assert set(mask.unique().tolist()) == {0, cls}
        assert SEGMENTATION_CLASSES[cls] == colour
        pixels = np.asarray(item["image"], dtype=np.float32)  # (32, 32, 3)
        inside = pixels[mask.numpy() == cls].mean(0)
        outside = pixels[mask.numpy() == 0].mean(0)
        # the shape's pixels carry its colour (fill jitter is +-18), the rest do not
        assert np.abs(inside - np.array(COLOURS[colour])).max() < 45
        assert np.abs(outside - np.array(COLOURS[colour])).max() > 45
        assert 40 < int((mask == cls).sum()) < 900


# -- the preset ---------------------------------------------------------------------------


def test_preset_validates_and_trains_with_decreasing_loss() -> None:
    spec = mmcore.load_spec("perceiver-seg-tiny")
    torch.manual_seed(0)
    model = mmcore.build(spec)
    data = ShapesDataset(ShapesConfig.model_validate({"image_size": 32, "masks": True,
                                                      "train_size": 16}))
    batch = Collator.for_model(model)([data[i] for i in range(8)])
    assert batch["mask"].shape == (8, 32, 32)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(12):
        loss = model.loss(batch)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.6 * losses[0], losses
    assert all(np.isfinite(losses))


def test_mmcore_eval_task_segmentation(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    torch.manual_seed(0)
    spec = mmcore.load_spec("perceiver-seg-tiny")
    model = mmcore.build(spec).eval()
    path = mmcore.save(model, tmp_path / "seg.safetensors")
    data = ShapesDataset(ShapesConfig.model_validate({"image_size": 32, "masks": True,
                                                      "split": "eval", "eval_size": 5}))
    direct = evaluate_segmentation(model, data, batch_size=2)
    batch = Collator.for_model(model)([data[i] for i in range(5)])
    with torch.no_grad():
        guess = model(batch).heads["segmentation"].argmax(-1)  # (5, 1024)
    hits = (guess == batch["mask"].reshape(5, -1)).float().mean()
    assert direct["pixel_accuracy"] == pytest.approx(float(hits))
    assert direct["pixels"] == 5 * 1024 and direct["items"] == 5
    code = main(["eval", str(path), "--task", "segmentation", "--limit", "3", "--json"])
    out = capsys.readouterr().out
    assert code == 0 and '"mean_iou"' in out and '"items": 3' in out

"""Audio captioning on shapes-sounds: the dataset's captions, the caption metrics by hand,
and the audiocap-tiny preset training a few steps and evaluating through
``mmcore eval --task audio-captioning`` (the real run is documented in docs/whisper.md)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import mmcore
from mmcore.cli import main
from mmcore_clap.captions import (
    BOS,
    EOS,
    PAD,
    ShapesSoundsCaptionsConfig,
    ShapesSoundsCaptionsDataset,
    bleu1,
    caption_metrics,
    decode_bytes,
    word_f1,
)


def test_items_carry_the_caption_as_byte_ids() -> None:
    data = ShapesSoundsCaptionsDataset(ShapesSoundsCaptionsConfig(
        image_size=16, train_size=8, eval_size=8, seconds=0.1))
    item = data[0]
    assert "image" not in item and set(item) >= {"audio", "caption", "label"}
    ids = item["caption"].tolist()
    assert len(ids) == 24 and ids[0] == BOS and ids[-1] == PAD
    assert decode_bytes(ids) == "a " + data.class_names[item["label"]]
    assert data.split("eval")[0]["caption"].shape == (24,)


def test_metrics_by_hand() -> None:
    assert word_f1("a red circle", "a red circle") == 1.0
    assert word_f1("a red square", "a red circle") == pytest.approx(2 / 3)
    assert word_f1("", "a red circle") == 0.0
    # 5 of 6 unigrams match; 6 predicted vs 6 reference words: no brevity penalty
    assert bleu1(["a red circle", "a blue cross"], ["a red circle", "a blue square"]) == \
        pytest.approx(5 / 6)
    metrics = caption_metrics(["a red circle", "a blue square", "green"],
                              ["red circle", "blue cross", "green cross"])
    assert metrics["keywords"] == pytest.approx(1 / 3)
    assert metrics["colour"] == 1.0 and metrics["shape"] == pytest.approx(1 / 3)
    assert metrics["exact"] == pytest.approx(1 / 3)
    assert decode_bytes([BOS, 97, 32, 98, EOS, PAD]) == "a b"


def test_the_preset_trains_and_evaluates(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    assert main(["train", "audiocap-tiny", "--out", str(out), "--steps", "3", "--no-progress",
                 "train.batch_size=8", "train.num_workers=0", "data.train_size=64",
                 "data.eval_size=16", "train.checkpoint_every=3"]) == 0
    model = mmcore.load(out / "model.safetensors")
    assert "caption" in model.objectives
    capsys.readouterr()
    assert main(["eval", str(out), "--task", "audio-captioning", "--json", "--show", "2",
                 "--no-progress"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    found = metrics.get("metrics", metrics)
    assert found["items"] == 16.0 and len(found["captions"]) == 2
    assert 0.0 <= found["keywords"] <= found["colour"] <= 1.0

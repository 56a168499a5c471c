"""AudioCLIP (mmcore_clap): the shapes-sounds dataset, the audioclip-tiny preset training on
it, and zero-shot audio classification of the trained run through ``mmcore eval``."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import mmcore
from mmcore.cli import main
from mmcore.data import open_dataset, spec_dataset
from mmcore.evaluate import evaluate
from mmcore.spec import ComponentRef
from mmcore.training import read_metrics, train
from mmcore_clap.sounds import pitch, rhythm

RATE = 8000
BATCH = 24


def sounds(split: str = "train", **params: Any) -> Any:
    ref = ComponentRef(type="shapes-sounds", image_size=16, train_size=64, eval_size=24,
                       sample_rate=RATE, seconds=0.5, **params)
    return open_dataset(ref, split)


def dominant_hz(wave: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(wave))
    return float(np.fft.rfftfreq(wave.shape[0], 1 / RATE)[spectrum.argmax()])


def beats(wave: np.ndarray) -> int:
    """Bursts of sound: runs of 10 ms frames whose RMS is loud."""
    frames = wave[: len(wave) // 80 * 80].reshape(-1, 80)
    loud = np.sqrt((frames**2).mean(1)) > 0.05
    return int(np.sum(loud[1:] & ~loud[:-1]) + loud[0])


# -- the dataset --------------------------------------------------------------------------


def test_each_item_sounds_its_colour_and_shape() -> None:
    data = sounds(noise=0.0)
    assert data.class_names[:2] == ["red circle", "red square"]
    assert data.templates and data.splits[:2] == ("train", "eval")
    seen = set()
    for i in range(12):
        item = data[i]
        assert set(item) == {"image", "text", "label", "audio"}
        wave, rate = item["audio"]
        assert rate == RATE and wave.shape == (RATE // 2,) and wave.dtype == np.float32
        colour, shape = data.class_names[item["label"]].split(" ")
        c, s = data.colours.index(colour), data.shape_names.index(shape)
        assert colour in item["text"] and shape in item["text"]
        assert dominant_hz(wave) == pytest.approx(pitch(c), rel=0.03)
        assert beats(wave) == s + 1
        seen.add((c, s))
    assert len(seen) > 5


def test_items_are_pure_functions_of_seed_split_and_index() -> None:
    first, again = sounds()[5]["audio"][0], sounds()[5]["audio"][0]
    assert np.array_equal(first, again)
    assert not np.array_equal(first, sounds(seed=1)[5]["audio"][0])
    held_out = sounds("eval")
    assert len(held_out) == 24
    train_labels = {sounds()[i]["label"] for i in range(64)}
    assert not train_labels & {held_out[i]["label"] for i in range(24)}
    with pytest.raises(ValueError, match="no split 'test'"):
        sounds().split("test")
    with pytest.raises(IndexError):
        sounds()[64]


def test_rhythm_spreads_beats_evenly() -> None:
    envelope = rhythm(3, 3000, 0, 3000, RATE)
    onsets = np.flatnonzero(np.diff((envelope > 0).astype(int)) == 1) + 1
    assert list(onsets) == [1000, 2000] and envelope[0] > 0  # beat 0 starts at sample 0
    assert envelope.max() == 1.0 and envelope[-1] == 0.0


# -- the preset trains, and zero-shot classifies its sounds -------------------------------


def tiny_run_spec() -> Any:
    data = mmcore.load_spec("audioclip-tiny").to_dict()
    data["data"].update(train_size=512, eval_size=48)
    data["train"].update(steps=24, batch_size=BATCH, warmup_steps=2, log_every=4,
                         checkpoint_every=24, num_workers=0, lr=3e-3)
    return mmcore.load_spec(data)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("audioclip") / "run"
    train(tiny_run_spec(), out, progress=False)
    return out


def test_preset_has_three_towers_and_three_pairs() -> None:
    spec = mmcore.load_spec("audioclip-tiny")
    assert sorted(spec.modalities) == ["audio", "image", "text"]
    pairs = spec.objectives["contrastive"].params["pairs"]
    assert pairs == [["audio", "text"], ["image", "text"], ["audio", "image"]]
    model = mmcore.build(spec, device="meta")
    assert set(model.encoders) == {"audio", "image", "text"}
    assert model.fusion.embedding_widths == {"audio": 64, "image": 64, "text": 64}


def test_audioclip_tiny_loss_decreases(trained_run: Path) -> None:
    rows = read_metrics(trained_run)
    losses = [row["loss"] for row in rows]
    assert [row["step"] for row in rows] == [4, 8, 12, 16, 20, 24]
    assert losses[-1] < losses[0] - 0.2
    assert losses[-1] < math.log(BATCH) - 0.2  # below the chance-level InfoNCE loss
    for pair in ("audio_text", "image_text", "audio_image"):
        assert f"contrastive/{pair}_accuracy" in rows[-1]


def test_zero_shot_classifies_the_sounds(trained_run: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert main(["eval", str(trained_run), "--task", "zero-shot", "--no-progress",
                 "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["modalities"] == ["audio", "text"]  # the first pair decides
    assert metrics["samples"] == 48 and metrics["num_classes"] == 36
    assert 0.0 <= metrics["top1"] <= metrics["top5"] <= 1.0
    images = evaluate(trained_run, "zero-shot", progress=False, pair=("image", "text"),
                      limit=12)
    assert images["modalities"] == ["image", "text"] and images["samples"] == 12
    with pytest.raises(ValueError, match=r"unknown modalities \['video'\]"):
        evaluate(trained_run, "zero-shot", progress=False, pair=("video", "text"))
    assert main(["eval", str(trained_run), "--task", "zero-shot", "--pair", "audio"]) == 2
    assert "two modality names" in capsys.readouterr().err


def test_collated_batch_feeds_every_tower() -> None:
    spec = tiny_run_spec()
    model = mmcore.build(spec)
    from mmcore.data import Collator

    items = [spec_dataset(spec)[i] for i in range(4)]
    batch = Collator.for_model(model)(items)
    assert batch["audio"].shape == (4, 40, 50) and batch["image"].shape == (4, 3, 24, 24)
    with torch.no_grad():
        output = model(batch)
    assert {n: e.shape for n, e in output.embeddings.items()} == {
        n: (4, 64) for n in ("audio", "image", "text")}

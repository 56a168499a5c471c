"""Hostile training input: a batch larger than the data, an unknown kernel variable."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from tiny_specs import DATA, IMAGE, TEXT

import mmcore
from mmcore.cli import main
from mmcore.errors import SpecError
from mmcore.training import train


def _spec(batch_size: int, train_size: int) -> dict[str, Any]:
    return {"name": "tiny", "modalities": {"image": IMAGE, "text": TEXT},
            "fusion": {"type": "late", "embed_dim": 16, "pooling": {"image": "cls",
                                                                    "text": "eot"}},
            "objectives": {"clip": {"type": "contrastive", "pairs": [["image", "text"]]}},
            "data": {**DATA, "train_size": train_size},
            "train": {"steps": 2, "batch_size": batch_size, "warmup_steps": 0}}


def test_a_batch_larger_than_the_dataset_is_an_error_not_repeated_samples(
        tmp_path: Path) -> None:
    spec = mmcore.load_spec(_spec(batch_size=64, train_size=10))
    with pytest.raises(SpecError, match=r"train\.batch_size: 64 is more than the 10 training "
                                        r"samples"):
        train(spec, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()  # refused before the run folder was made


def test_validate_reports_the_batch_size(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    import yaml

    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(_spec(batch_size=32, train_size=8)))
    assert main(["validate", str(path)]) == 2
    assert "train.batch_size" in capsys.readouterr().err


def test_an_unknown_kernel_variable_is_an_error(monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("MMCORE_KERNEL_ATTENTON", "reference")
    assert main(["kernels"]) == 1
    err = capsys.readouterr().err
    assert "MMCORE_KERNEL_ATTENTON names no kernel op" in err and "ATTENTION" in err
    with pytest.raises(SpecError, match=r"MMCORE_KERNEL_ATTENTON"):
        mmcore.build("clip-tiny", device="meta")

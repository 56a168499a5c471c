"""``mmcore validate`` catches what training would: train options, neighbouring components,
the data's keys and parameters no objective reaches, every round reported in one run."""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import pytest
import yaml
from tiny_specs import DATA, IMAGE, TEXT

from mmcore.cli import main
from mmcore.errors import SpecError
from mmcore.spec import load_spec
from mmcore.validation import check, validate_source


def _spec(**changes: Any) -> dict[str, Any]:
    """A tiny CLIP-style spec (image + text, late fusion, contrastive) with ``changes``."""
    spec: dict[str, Any] = {
        "name": "tiny",
        "modalities": {"image": copy.deepcopy(IMAGE), "text": copy.deepcopy(TEXT)},
        "fusion": {"type": "late", "embed_dim": 8, "pooling": {"image": "cls", "text": "eot"}},
        "objectives": {"contrastive": {"type": "contrastive", "pairs": [["image", "text"]]}},
        "data": dict(DATA),
        "train": {"steps": 4, "batch_size": 4, "warmup_steps": 1},
    }
    spec.update(changes)
    return spec


def _paths(spec: dict[str, Any], **kwargs: Any) -> list[str]:
    return [issue.path for issue in validate_source(spec, **kwargs).errors]


def _cli(capsys: pytest.CaptureFixture[str], tmp_path: Path, spec: dict[str, Any],
         *flags: str) -> tuple[int, str, str]:
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    code = main(["validate", str(path), *flags])
    out, err = capsys.readouterr()
    return code, out, err


def test_the_tiny_spec_is_clean() -> None:
    report = validate_source(_spec())
    assert (report.errors, report.warnings, report.notes) == ([], [], [])
    assert report.parameters is not None and report.parameters > 0


# ----------------------------------------------------------------------------- the six cases


def test_misspelt_freeze_path(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    spec = _spec(train={"steps": 4, "batch_size": 4, "warmup_steps": 1,
                        "freeze": ["modalities.text.encodr"]})
    code, out, err = _cli(capsys, tmp_path, spec)
    assert code == 2 and out == ""
    assert "train.freeze.0" in err and "'modalities.text.encoder'" in err


def test_tokenizer_context_shorter_than_the_preprocessors() -> None:
    spec = _spec()
    spec["modalities"]["text"]["tokenizer"]["context_length"] = 20
    [issue] = validate_source(spec).errors
    assert issue.path == "modalities.text.tokenizer.context_length"
    assert "20" in issue.message and "40" in issue.message and "'byte-text'" in issue.message


def test_vocab_smaller_than_the_preprocessors_ids(capsys: pytest.CaptureFixture[str],
                                                  tmp_path: Path) -> None:
    spec = _spec()
    spec["modalities"]["text"]["tokenizer"]["vocab_size"] = 100
    code, _, err = _cli(capsys, tmp_path, spec)
    assert code == 2
    assert "modalities.text.tokenizer.vocab_size" in err
    assert "vocab_size 100" in err and "up to 258" in err and ">= 259" in err


def test_image_size_mismatch_is_caught_too() -> None:
    spec = _spec()
    spec["modalities"]["image"]["preprocessor"]["size"] = 32
    assert _paths(spec) == ["modalities.image.tokenizer.image_size"]


def test_modality_renamed_away_from_the_datasets_key(capsys: pytest.CaptureFixture[str],
                                                     tmp_path: Path) -> None:
    spec = _spec(modalities={"img": copy.deepcopy(IMAGE), "text": copy.deepcopy(TEXT)},
                 fusion={"type": "late", "embed_dim": 8, "pooling": {"img": "cls", "text": "eot"}},
                 objectives={"contrastive": {"type": "contrastive", "pairs": [["img", "text"]]}})
    code, _, err = _cli(capsys, tmp_path, spec)
    assert code == 2
    line = next(line for line in err.splitlines() if line.startswith("  - data"))
    assert "'image'" in line and "'text'" in line and "['img', 'text']" in line
    assert "rename modality 'img' to 'image'?" in line
    # --no-data skips reading it
    code, out, _ = _cli(capsys, tmp_path, spec, "--no-data")
    assert code == 0 and out.startswith("ok: tiny (")


def test_a_dataset_that_cannot_be_built_is_an_issue_at_data() -> None:
    spec = _spec(data={"type": "image-folder", "path": "/no/such/folder"})
    assert _paths(spec) == ["data"]
    assert _paths(spec, data=False) == []


def test_warmup_longer_than_the_run() -> None:
    spec = _spec(train={"steps": 4, "batch_size": 4, "warmup_steps": 10})
    [issue] = validate_source(spec).errors
    assert issue.path == "train.warmup_steps" and "10" in issue.message and "4" in issue.message
    with pytest.raises(SpecError, match=r"train\.warmup_steps"):
        check(load_spec(spec))


def _masked_only() -> dict[str, Any]:
    """Masked modelling of text reads the encoder's tokens: the late fusion's pooling
    projections are never reached."""
    return _spec(modalities={"text": copy.deepcopy(TEXT)},
                 fusion={"type": "late", "embed_dim": 8, "pooling": {"text": "eot"}},
                 objectives={"masked": {"type": "masked-modelling", "modality": "text",
                                        "target": "ids", "vocab_size": 259,
                                        "decoder_heads": 2}})


def test_fusion_no_objective_reaches_is_a_warning(capsys: pytest.CaptureFixture[str],
                                                   tmp_path: Path) -> None:
    report = validate_source(_masked_only())
    assert report.errors == [] and report.notes == []
    assert [w.path for w in report.warnings] == ["fusion"]
    assert "parameters no objective reaches" in report.warnings[0].message
    code, out, err = _cli(capsys, tmp_path, _masked_only())
    assert code == 0 and out.startswith("ok: tiny (")
    assert "warning: fusion (line " in err
    code, out, err = _cli(capsys, tmp_path, _masked_only(), "--strict")
    assert code == 2 and "  - fusion (line " in err and out == ""


def test_frozen_components_are_expected_to_be_unreached() -> None:
    spec = _masked_only()
    spec["train"]["freeze"] = ["fusion"]
    report = validate_source(spec)
    assert (report.errors, report.warnings) == ([], [])


# ----------------------------------------------------------------------------- train options


@pytest.mark.parametrize(("key", "value"), [("lr", math.nan), ("lr", math.inf),
                                            ("betas", [0.9, 1.0]), ("betas", [-0.1, 0.9]),
                                            ("seed", -1), ("grad_clip", math.nan)])
def test_absurd_train_options(key: str, value: Any) -> None:
    spec = _spec(train={"steps": 4, "batch_size": 4, "warmup_steps": 1, key: value})
    paths = _paths(spec)
    assert paths and all(p.startswith(f"train.{key}") for p in paths)


@pytest.mark.parametrize("weight", [math.nan, math.inf, -1.0])
def test_objective_weight_must_be_finite_and_not_negative(weight: float) -> None:
    spec = _spec()
    spec["objectives"]["contrastive"]["weight"] = weight
    assert _paths(spec) == ["objectives.contrastive.weight"]


# ----------------------------------------------------------------------------- rounds


def test_one_run_reports_every_round(capsys: pytest.CaptureFixture[str],
                                     tmp_path: Path) -> None:
    spec = _spec(train={"steps": 4, "batch_size": 4, "warmup_steps": 9,
                        "freeze": ["fusoin"]})
    spec["modalities"]["image"]["encoder"]["layers"] = -1  # bad params
    spec["modalities"]["text"]["tokenizer"]["vocab_size"] = 100  # cross-component
    code, _, err = _cli(capsys, tmp_path, spec)
    problems = [line for line in err.splitlines() if line.startswith("  - ")]
    assert code == 2
    for path in ("modalities.image.encoder.layers", "modalities.text.tokenizer.vocab_size",
                 "train.warmup_steps", "train.freeze.0"):
        assert any(p.startswith(f"  - {path}") for p in problems), (path, problems)


def test_a_structural_train_problem_still_lets_components_be_cross_checked() -> None:
    spec = _spec(train={"steps": 4, "batch_size": 4, "lr": -1})
    spec["modalities"]["text"]["tokenizer"]["vocab_size"] = 100
    assert sorted(_paths(spec)) == ["modalities.text.tokenizer.vocab_size", "train.lr"]


# ----------------------------------------------------------------------------- other neighbours


def test_pooling_naming_an_unknown_modality() -> None:
    spec = _spec(fusion={"type": "late", "embed_dim": 8,
                         "pooling": {"imgx": "cls", "text": "eot"}})
    [issue] = validate_source(spec).errors
    assert issue.path == "fusion" and "['imgx']" in issue.message


def test_train_reports_the_same_data_error_before_building() -> None:
    spec = _spec(modalities={"img": copy.deepcopy(IMAGE), "text": copy.deepcopy(TEXT)},
                 fusion={"type": "late", "embed_dim": 8, "pooling": {"img": "cls", "text": "eot"}},
                 objectives={"contrastive": {"type": "contrastive", "pairs": [["img", "text"]]}})
    [expected] = validate_source(spec).errors
    with pytest.raises(SpecError) as info:
        check(load_spec(spec), data=True)
    assert info.value.issues == [expected]

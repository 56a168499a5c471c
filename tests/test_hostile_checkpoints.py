"""Hostile checkpoints and the CLI boundary: wrong dtypes, lying metadata, bad metadata
JSON, zip-bomb .pt archives, a state.json without its keys, and unexpected exceptions."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

import mmcore
from mmcore.checkpoint import load, load_state
from mmcore.cli import main
from mmcore.convert.hf import load_torch_weights
from mmcore.errors import CheckpointError


def _saved(tmp_path: Path) -> tuple[Any, Path]:
    model = mmcore.build("clip-tiny")
    return model, mmcore.save(model, tmp_path / "m.safetensors")


def _rewrite(path: Path, tensors: dict[str, torch.Tensor], **meta: str) -> Path:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        metadata = {**(fh.metadata() or {}), **meta}
    save_file(tensors, str(path), metadata=metadata)
    return path


@pytest.mark.parametrize("dtype", [torch.int64, torch.bool, torch.int32])
def test_a_tensor_of_the_wrong_kind_is_refused_and_the_model_untouched(
        tmp_path: Path, dtype: torch.dtype) -> None:
    model, path = _saved(tmp_path)
    tensors = {k: v.clone() for k, v in model.state_dict().items()}
    name = "fusion.projections.image.weight"
    name = name if name in tensors else next(k for k, v in tensors.items()
                                             if v.is_floating_point() and v.dim() == 2)
    tensors[name] = tensors[name].to(dtype)
    _rewrite(path, tensors)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError, match=rf"dtype mismatch: {name}: checkpoint "
                                              rf"{dtype!s}"):
        load_state(model, path)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_float_precision_differences_still_load(tmp_path: Path) -> None:
    model, path = _saved(tmp_path)
    _rewrite(path, {k: v.to(torch.bfloat16) if v.is_floating_point() else v
                    for k, v in model.state_dict().items()})
    load_state(model, path)  # bf16 weights cast into the fp32 model, as imports need


def test_metadata_that_lies_about_the_size_is_refused_before_building(tmp_path: Path) -> None:
    model, path = _saved(tmp_path)
    spec = model.spec.to_dict()
    spec["modalities"]["text"]["tokenizer"]["vocab_size"] = 50_000_000
    _rewrite(path, dict(model.state_dict()), spec=json.dumps(spec))
    with pytest.raises(CheckpointError, match=r"describes [\d,]+ parameters but the file "
                                              r"holds [\d,]+ values"):
        load(path)


@pytest.mark.parametrize(("value", "message"), [
    ("[1, 2]", r"metadata 'spec' must be a JSON object"),
    ("{oops", r"metadata 'spec' is not valid JSON"),
])
def test_bad_spec_metadata_names_the_file_and_key(tmp_path: Path, value: str,
                                                  message: str) -> None:
    model, path = _saved(tmp_path)
    _rewrite(path, dict(model.state_dict()), spec=value)
    with pytest.raises(CheckpointError, match=r"m\.safetensors: " + message):
        load(path)


def test_a_zip_bomb_pt_is_refused_unread(tmp_path: Path) -> None:
    path = tmp_path / "bomb.pt"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("archive/data/0", b"\0" * 5_000_000)
    assert path.stat().st_size < 100_000
    with pytest.raises(CheckpointError, match=r"bomb\.pt has compressed members .*zip bomb"):
        load_torch_weights(path)
    good = tmp_path / "good.pt"
    torch.save({"w": torch.ones(3)}, good)
    assert torch.equal(load_torch_weights(good)["w"], torch.ones(3))


def test_a_state_json_without_its_keys_is_named(tmp_path: Path) -> None:
    from mmcore.training.checkpoints import STATE_FORMAT, read_state

    (tmp_path / "state.json").write_text(json.dumps({"format": STATE_FORMAT, "step": 3}))
    with pytest.raises(CheckpointError, match=r"state\.json lacks total_steps, optimizer, rng"):
        read_state(tmp_path)


def test_an_unexpected_exception_is_one_line_with_the_debug_hint(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import mmcore.listing as listing

    def broken(args: object) -> int:
        raise ZeroDivisionError("division by zero somewhere deep")

    monkeypatch.setattr(listing, "cmd_plugins", broken)
    assert main(["plugins"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "unexpected ZeroDivisionError in" in err and "MMCORE_DEBUG=1" in err
    monkeypatch.setenv("MMCORE_DEBUG", "1")
    with pytest.raises(ZeroDivisionError):
        main(["plugins"])

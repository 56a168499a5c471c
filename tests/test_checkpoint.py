"""Checkpoints: exact round trips, metadata, refusing bad files without touching the model,
and atomic writes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor

import mmcore
from mmcore import checkpoint
from mmcore.checkpoint import load_state, read_metadata, save_tensors
from mmcore.errors import CheckpointError
from mmcore.model import MultimodalModel


def _spec(width: int = 16, **extra: Any) -> dict[str, Any]:
    return {
        "name": f"tiny-{width}",
        "modalities": {
            "image": {
                "tokenizer": {"type": "patch-embedding", "image_size": 16, "patch_size": 8,
                              "width": width},
                "encoder": {"type": "vit", "layers": 1, "heads": 2},
            },
            "text": {
                "tokenizer": {"type": "token-embedding", "vocab_size": 300, "width": width,
                              "context_length": 8},
                "encoder": {"type": "text-transformer", "layers": 1, "heads": 2},
            },
        },
        "fusion": {"type": "late", "embed_dim": 8},
        "objectives": {"clip": {"type": "contrastive", "pairs": [["image", "text"]]}},
        **extra,
    }


def _model(seed: int = 0, width: int = 16, **extra: Any) -> MultimodalModel:
    torch.manual_seed(seed)
    return mmcore.build(_spec(width, **extra)).eval()


def _batch() -> dict[str, Any]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 300, (2, 8), generator=g)
    mask = torch.tensor([[True] * 8, [True] * 5 + [False] * 3])
    return {"image": torch.randn(2, 3, 16, 16, generator=g), "text": {"ids": ids, "mask": mask}}


def _embeddings(model: MultimodalModel) -> dict[str, Tensor]:
    with torch.no_grad():
        return model(_batch()).embeddings


def _snapshot(model: MultimodalModel) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_unchanged(model: MultimodalModel, before: dict[str, Tensor]) -> None:
    after = model.state_dict()
    assert set(after) == set(before)
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed == []


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> tuple[MultimodalModel, Path]:
    model = _model(seed=0)
    path = mmcore.save(model, tmp_path_factory.mktemp("ckpt") / "model.safetensors")
    return model, path


def test_round_trip_is_exact(saved: tuple[MultimodalModel, Path]) -> None:
    model, path = saved
    loaded = mmcore.load(path).eval()
    assert loaded is not model
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key
    expected, got = _embeddings(model), _embeddings(loaded)
    assert set(expected) == {"image", "text"}
    for name in expected:
        assert torch.equal(expected[name], got[name])
    assert loaded.spec == model.spec


def test_load_from_a_run_folder(saved: tuple[MultimodalModel, Path]) -> None:
    model, path = saved
    loaded = mmcore.load(path.parent)  # the file is called model.safetensors
    assert torch.equal(loaded.state_dict()["fusion.projections.image.weight"],
                       model.state_dict()["fusion.projections.image.weight"])


def test_load_state_into_a_fresh_model(saved: tuple[MultimodalModel, Path]) -> None:
    model, path = saved
    other = _model(seed=5)
    assert not torch.equal(_embeddings(other)["image"], _embeddings(model)["image"])
    load_state(other, path)
    assert torch.equal(_embeddings(other)["image"], _embeddings(model)["image"])


def test_metadata_holds_spec_plugins_and_kernels(saved: tuple[MultimodalModel, Path]) -> None:
    model, path = saved
    meta = read_metadata(path)
    assert meta["format"] == checkpoint.FORMAT
    assert meta["mmcore_version"] == mmcore.__version__
    assert json.loads(meta["spec"]) == model.spec.to_dict()
    assert json.loads(meta["spec"])["modalities"]["image"]["tokenizer"]["width"] == 16
    plugins = json.loads(meta["plugins"])
    assert plugins["mmcore_image"] == plugins["mmcore_objectives"] == "0.1.0"
    kernels = json.loads(meta["kernels"])
    assert kernels == model.kernel_choices
    assert {"attention", "cross_attention"} <= set(kernels)


# -- bad files: a clear CheckpointError, and the model is left as it was ------------------


def _truncated(path: Path, tmp_path: Path) -> Path:
    data = path.read_bytes()
    out = tmp_path / "truncated.safetensors"
    out.write_bytes(data[: len(data) // 2])
    return out


def _garbage(path: Path, tmp_path: Path) -> Path:
    out = tmp_path / "garbage.safetensors"
    g = torch.Generator().manual_seed(0)
    out.write_bytes(b"\x13" + bytes(torch.randint(0, 256, (4095,), generator=g).tolist()))
    return out


def _zip_pickle(path: Path, tmp_path: Path) -> Path:
    out = tmp_path / "model.pt"
    torch.save(_model().state_dict(), out)
    return out


def _legacy_pickle(path: Path, tmp_path: Path) -> Path:
    out = tmp_path / "model.bin"
    torch.save(_model().state_dict(), out, _use_new_zipfile_serialization=False)
    return out


def _other_architecture(path: Path, tmp_path: Path) -> Path:
    return mmcore.save(_model(width=32), tmp_path / "wide.safetensors")


def _extra_head(path: Path, tmp_path: Path) -> Path:
    model = _model(heads={"cls": {"type": "classifier", "num_classes": 3, "input": "image"}})
    return mmcore.save(model, tmp_path / "head.safetensors")


def _non_finite(path: Path, tmp_path: Path) -> Path:
    state = _model().state_dict()
    state["fusion.projections.text.weight"][0, 0] = float("nan")
    return save_tensors(state, tmp_path / "nan.safetensors")


@pytest.mark.parametrize(("make", "expected"), [
    (_truncated, "corrupt or truncated"),
    (_garbage, "corrupt or truncated"),
    (_zip_pickle, "looks like a pickle/torch.save file"),
    (_legacy_pickle, "looks like a pickle/torch.save file"),
    (_other_architecture, "does not fit this model: shape mismatch: encoders.image"),
    (_extra_head, "4 unexpected tensor(s), e.g. heads.cls.net"),
    (_non_finite, "non-finite values in fusion.projections.text.weight"),
])
def test_bad_file_is_refused_and_model_untouched(
        saved: tuple[MultimodalModel, Path], tmp_path: Path,
        make: Any, expected: str) -> None:
    _, good = saved
    bad = make(good, tmp_path)
    target = _model(seed=7)
    before = _snapshot(target)
    with pytest.raises(CheckpointError) as info:
        load_state(target, bad)
    message = str(info.value)
    assert str(bad) in message
    assert expected in message
    _assert_unchanged(target, before)


@pytest.mark.parametrize("make", [_truncated, _garbage, _zip_pickle])
def test_bad_file_is_refused_by_load(saved: tuple[MultimodalModel, Path], tmp_path: Path,
                                     make: Any) -> None:
    with pytest.raises(CheckpointError, match=r"corrupt or truncated|pickle"):
        mmcore.load(make(saved[1], tmp_path))


def test_missing_tensors_are_listed(saved: tuple[MultimodalModel, Path], tmp_path: Path) -> None:
    state = _model().state_dict()
    del state["fusion.projections.image.weight"]
    path = save_tensors(state, tmp_path / "partial.safetensors")
    target = _model(seed=3)
    before = _snapshot(target)
    with pytest.raises(CheckpointError, match=r"missing 1 tensor\(s\), e\.g\. fusion\.proj"):
        load_state(target, path)
    _assert_unchanged(target, before)


def test_tensors_without_a_spec(tmp_path: Path) -> None:
    path = save_tensors(_model().state_dict(), tmp_path / "bare.safetensors")
    with pytest.raises(CheckpointError, match="is not an mmcore checkpoint"):
        mmcore.load(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        mmcore.load(tmp_path / "absent.safetensors")


# -- run folders ---------------------------------------------------------------------------


def _run_spec() -> Any:
    from tiny_specs import DATA, IMAGE, TEXT

    return mmcore.load_spec({
        "name": "run-folder", "modalities": {"image": IMAGE, "text": TEXT},
        "fusion": {"type": "late", "embed_dim": 8, "pooling": {"image": "cls", "text": "eot"}},
        "objectives": {"clip": {"type": "contrastive", "pairs": [["image", "text"]]}},
        "data": DATA, "train": {"steps": 4, "batch_size": 8, "warmup_steps": 1,
                                "log_every": 1, "checkpoint_every": 1}})


def _assert_weights(model: MultimodalModel, path: Path) -> None:
    expected = checkpoint.read_tensors(path)
    got = model.state_dict()
    assert got.keys() == expected.keys()
    assert all(torch.equal(got[k], expected[k]) for k in expected)


def test_load_takes_the_newest_complete_checkpoint_of_an_unfinished_run(tmp_path: Path) -> None:
    from mmcore.training import train

    run = tmp_path / "run"
    returned = train(_run_spec(), run, progress=False, stop_after=3)
    newest = checkpoint.checkpoint_dir(run, 3)
    assert returned == newest / "model.safetensors"
    assert not (run / "model.safetensors").exists()
    (run / "checkpoints" / "step-000004").mkdir()  # half-written: no COMPLETE marker
    assert checkpoint.resolve_model_file(run) == returned
    _assert_weights(mmcore.load(run), returned)
    _assert_weights(checkpoint.load(run), returned)
    first = checkpoint.checkpoint_dir(run, 1)
    assert not torch.equal(checkpoint.read_tensors(first)["fusion.projections.image.weight"],
                           checkpoint.read_tensors(returned)["fusion.projections.image.weight"])
    final = train(_run_spec(), run, progress=False, resume=True)  # finished: the final model
    assert final == run / "model.safetensors"
    assert checkpoint.resolve_model_file(run) == final
    _assert_weights(mmcore.load(run), final)


def test_load_from_an_empty_folder_names_what_it_looked_for(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    (empty / "checkpoints" / "step-000002").mkdir(parents=True)  # never completed
    with pytest.raises(CheckpointError, match=r"holds no model: looked for model\.safetensors "
                       r"and for a complete checkpoint checkpoints/step-N/") as err:
        mmcore.load(empty)
    assert str(empty) in str(err.value)
    assert len(str(err.value).splitlines()) == 1


# -- atomic writes ------------------------------------------------------------------------


def _fail_midway(error: BaseException) -> Any:
    def save_file(data: Any, filename: str, metadata: Any = None) -> None:
        with open(filename, "wb") as fh:
            fh.write(b"\x40\x00\x00\x00\x00\x00\x00\x00{half a hea")
        raise error

    return save_file


@pytest.mark.parametrize("error", [OSError("No space left on device"), KeyboardInterrupt()])
def test_failed_write_leaves_no_partial_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                             error: BaseException) -> None:
    monkeypatch.setattr(checkpoint, "save_file", _fail_midway(error))
    dest = tmp_path / "out" / "model.safetensors"
    with pytest.raises(type(error)):
        mmcore.save(_model(), dest)
    assert not dest.exists()
    assert list(dest.parent.iterdir()) == []  # no temporary file left behind either


def test_failed_write_keeps_the_old_checkpoint(monkeypatch: pytest.MonkeyPatch,
                                               saved: tuple[MultimodalModel, Path],
                                               tmp_path: Path) -> None:
    dest = tmp_path / "model.safetensors"
    dest.write_bytes(saved[1].read_bytes())
    monkeypatch.setattr(checkpoint, "save_file", _fail_midway(OSError("disk full")))
    with pytest.raises(OSError, match="disk full"):
        mmcore.save(_model(seed=9), dest)
    assert dest.read_bytes() == saved[1].read_bytes()
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]


def test_save_tensors_with_nothing_to_save(tmp_path: Path) -> None:
    """An empty state (a parameter-free component) still writes a readable file."""
    path = save_tensors({}, tmp_path / "empty.safetensors")
    assert checkpoint.read_tensors(path) == {}

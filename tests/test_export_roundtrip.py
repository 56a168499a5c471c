"""Self-contained checkpoints and export round trips.

* An imported checkpoint carries its tokenizer files (mmcore.assets): import a tiny
  folder, save, delete the folder, load: same ids as transformers' tokenizer and the same
  outputs as the transformers model. Hostile ``assets`` metadata is refused.
* Export round trips: tiny random transformers models are saved, imported, exported with
  ``mmcore export --format hf-X``, reloaded in transformers (same outputs, same tokenizer
  ids) and imported again (the same state dict).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from test_clip_import import (
    CONTEXT,
    TEXTS,
    build_tokenizer,
    hf_model,
    hf_outputs,
    hf_tokenizer,
    mm_outputs,
    pixels,
    tiny_config,
    vocab_size,
)

import mmcore
from mmcore.assets import ASSETS_KEY, model_assets
from mmcore.cli import main
from mmcore.errors import CheckpointError

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def hf_clip(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path]:
    """(tiny random transformers CLIPModel, its save_pretrained folder with a tokenizer)."""
    folder = tmp_path_factory.mktemp("hf-clip") / "clip"
    folder.mkdir()
    build_tokenizer(folder / "tokenizer.json")
    model = hf_model(transformers, tiny_config(vocab_size(folder / "tokenizer.json")), seed=3)
    model.save_pretrained(folder)
    hf_tokenizer(transformers, folder / "tokenizer.json").save_pretrained(folder)
    return model, folder


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Loaded checkpoints write their files under this test's folder."""
    monkeypatch.setenv("MMCORE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def cli(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> str:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert code == 0, err
    return out


def clip_checkpoint(capsys: pytest.CaptureFixture[str], folder: Path, tmp_path: Path) -> Path:
    """``mmcore import`` of a copy of ``folder``; the copy is deleted afterwards."""
    copy = tmp_path / "source"
    shutil.copytree(folder, copy)
    out = tmp_path / "clip.safetensors"
    cli(capsys, "import", copy, "--out", out)
    shutil.rmtree(copy)
    return out


# -- (a) imported checkpoints carry their tokenizer files ---------------------------------


def test_imported_checkpoint_works_without_its_source_folder(
        capsys: pytest.CaptureFixture[str],
        hf_clip: tuple[Any, Path], tmp_path: Path, _cache: Path) -> None:
    hf, folder = hf_clip
    path = clip_checkpoint(capsys, folder, tmp_path)
    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata()
    spec = json.loads(meta["spec"])
    assert spec["modalities"]["text"]["preprocessor"]["path"] == "asset:tokenizer.json"
    assert str(tmp_path) not in json.dumps(spec["modalities"])  # no path of this machine

    model = mmcore.load(path).eval()
    stored = model.spec.modalities["text"].preprocessor.params["path"]
    assert Path(stored).parent.parent == _cache / "assets"
    assert Path(stored).read_bytes() == (folder / "tokenizer.json").read_bytes()
    assert model_assets(model) == {
        "modalities.text.preprocessor.path": (folder / "tokenizer.json").read_bytes()}

    encoded = transformers.CLIPTokenizerFast.from_pretrained(folder)(
        TEXTS, padding="max_length", max_length=CONTEXT, truncation=True, return_tensors="pt")
    batch = model.preprocess("text", TEXTS)
    assert torch.equal(batch["ids"], encoded["input_ids"])
    images = pixels()
    ours, theirs = mm_outputs(model, images, TEXTS), hf_outputs(
        hf, images, encoded["input_ids"], encoded["attention_mask"])
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)

    # saved again from the loaded model (its files now in the cache): the same files
    again = mmcore.save(model, tmp_path / "again.safetensors")
    with safe_open(str(again), framework="pt") as fh:
        assert json.loads(fh.metadata()[ASSETS_KEY]) == json.loads(meta[ASSETS_KEY])


def _rewrite_assets(path: Path, edit: Any) -> Path:
    with safe_open(str(path), framework="pt") as fh:
        meta = dict(fh.metadata())
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 - not a dict
    meta = edit(meta)
    save_file(tensors, str(path), metadata=meta)
    return path


def _record(meta: dict[str, str], **changes: Any) -> dict[str, str]:
    records = json.loads(meta[ASSETS_KEY])
    records["modalities.text.preprocessor.path"].update(changes)
    return {**meta, ASSETS_KEY: json.dumps(records)}


def _moved(meta: dict[str, str]) -> dict[str, str]:
    records = json.loads(meta[ASSETS_KEY])
    return {**meta, ASSETS_KEY: json.dumps({"name": records.popitem()[1]})}


@pytest.mark.parametrize(("edit", "message"), [
    (lambda m: _record(m, name="../../evil.json"), r"is not a plain file name"),
    (lambda m: _record(m, data="tampered"), r"does not match its sha256"),
    (lambda m: _record(m, encoding="base64", data="!!"), r"not valid base64"),
    (lambda m: _record(m, sha256="x" * 64), r"is not a sha256"),
    (_moved, r"belongs to no asset: parameter"),
    (lambda m: {**m, ASSETS_KEY: "{oops"}, r"metadata 'assets' is not valid JSON"),
    (lambda m: {**m, ASSETS_KEY: "[1]"}, r"metadata 'assets' must be a JSON object"),
], ids=["escaping-name", "tampered", "bad-base64", "bad-sha", "no-parameter", "bad-json",
        "not-object"])
def test_hostile_embedded_files_are_refused(
        capsys: pytest.CaptureFixture[str], hf_clip: tuple[Any, Path], tmp_path: Path,
        _cache: Path, edit: Any, message: str) -> None:
    path = _rewrite_assets(clip_checkpoint(capsys, hf_clip[1], tmp_path), edit)
    with pytest.raises(CheckpointError, match=message):
        mmcore.load(path)
    assert not (tmp_path / "evil.json").exists()
    assert not any(_cache.rglob("*.json")) if _cache.exists() else True


def test_embedded_files_over_the_limit_are_refused(
        capsys: pytest.CaptureFixture[str], hf_clip: tuple[Any, Path], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    path = clip_checkpoint(capsys, hf_clip[1], tmp_path)
    monkeypatch.setenv("MMCORE_LIMIT_ASSET_BYTES", "1000")
    with pytest.raises(CheckpointError, match=r"exceed.*MMCORE_LIMIT_ASSET_BYTES"):
        mmcore.load(path)


def test_a_model_without_files_embeds_nothing(tmp_path: Path) -> None:
    model = mmcore.build("clip-tiny")
    path = mmcore.save(model, tmp_path / "m.safetensors")
    with safe_open(str(path), framework="pt") as fh:
        assert ASSETS_KEY not in fh.metadata()
    assert model_assets(mmcore.load(path)) == {}

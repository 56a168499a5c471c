"""Starting a training run from weights (``--init``, ``train(init=..., model=...)``): by
component path, with provenance in the checkpoints, and refusing bad sources before the
run folder is touched."""

from __future__ import annotations

import json
import pickle
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from test_clip_import import hf_folder, mm_model, tokenizer_json  # noqa: F401 (fixtures)
from tiny_specs import DATA, IMAGE

import mmcore
from mmcore.checkpoint import read_metadata, read_tensors
from mmcore.cli import main
from mmcore.errors import CheckpointError, SpecError
from mmcore.training import read_metrics, train
from mmcore.training.init import apply_init, read_source, sha256, with_init

TRAIN = {"steps": 25, "batch_size": 16, "lr": 1e-2, "warmup_steps": 2, "log_every": 1,
         "checkpoint_every": 100}


def classifier(num_classes: int = 36, heads: dict[str, Any] | None = None,
               **train_options: Any) -> dict[str, Any]:
    """A tiny image classifier on 16 shapes images (it memorises them in 25 steps)."""
    return {
        "name": "init-test", "modalities": {"image": IMAGE},
        "fusion": {"type": "late", "embed_dim": 16, "pooling": {"image": "cls"}},
        "heads": heads or {"cls": {"type": "classifier", "num_classes": num_classes,
                                   "input": "image"}},
        "objectives": {"ce": {"type": "classification", "head": "cls"}},
        "data": {**DATA, "train_size": 16}, "train": {**TRAIN, **train_options}}


def spec(**kwargs: Any) -> Any:
    return mmcore.load_spec(classifier(**kwargs))


def losses(run: Path) -> list[float]:
    return [row["loss"] for row in read_metrics(run)]


@pytest.fixture(scope="module")
def run_a(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``mmcore train SPEC --out A``: a finished run whose loss has fallen well."""
    folder = tmp_path_factory.mktemp("init")
    path = folder / "spec.yaml"
    path.write_text(json.dumps(classifier()), encoding="utf-8")  # JSON is YAML
    assert main(["train", str(path), "--out", str(folder / "A"), "--no-progress"]) == 0
    return folder / "A"


def test_init_run_starts_at_the_source_loss(run_a: Path, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    """The Done-when check, small: B (--init A) starts at A's loss, far below a fresh
    model's; overrides go after the options."""
    spec_file = run_a.parent / "spec.yaml"
    common = ["--steps", "2", "--no-progress", "train.lr=1e-4", "train.log_every=1"]
    assert main(["train", str(spec_file), "--init", str(run_a), "--out", str(tmp_path / "B"),
                 *common]) == 0
    assert main(["train", str(spec_file), "--out", str(tmp_path / "C"), *common]) == 0
    a, b, fresh = losses(run_a), losses(tmp_path / "B"), losses(tmp_path / "C")
    assert fresh[0] - a[-1] > 1.0  # A learnt something worth keeping
    assert abs(b[0] - a[-1]) < 0.15
    assert fresh[0] - b[0] > 1.0
    capsys.readouterr()


def test_checkpoints_record_the_source(run_a: Path, tmp_path: Path) -> None:
    """Every checkpoint of an --init run, resumed or not, names the source and its hash."""
    out = tmp_path / "B"
    train(spec(steps=2), out, progress=False, init=str(run_a), stop_after=1)
    train(spec(steps=2), out, progress=False, resume=True)
    for file in (out / "checkpoints" / "step-000001" / "model.safetensors",
                 out / "model.safetensors"):
        [record] = json.loads(read_metadata(file)["init"])
        assert record["source"] == str(run_a) and record["format"] == "mmcore"
        assert record["sha256"] == {str(run_a / "model.safetensors"):
                                    sha256(run_a / "model.safetensors")}
        assert "modalities.image.encoder" in record["components"]


def test_one_component_from_a_run(run_a: Path, tmp_path: Path) -> None:
    """--init PATH=SOURCE takes just that component; the rest stays fresh."""
    out = tmp_path / "B"
    assert main(["train", str(run_a.parent / "spec.yaml"), "--out", str(out), "--steps", "1",
                 "--no-progress", "train.lr=1e-12", "train.warmup_steps=0",
                 "--init", f"modalities.image.encoder={run_a}"]) == 0
    source, trained = read_tensors(run_a / "model.safetensors"), read_tensors(
        out / "model.safetensors")
    encoder = [k for k in trained if k.startswith("encoders.image.")]
    assert encoder and all(torch.allclose(trained[k], source[k], atol=1e-9) for k in encoder)
    head = "heads.cls.net.2.weight"
    assert not torch.allclose(trained[head], source[head], atol=1e-3)
    [record] = json.loads(read_metadata(out / "model.safetensors")["init"])
    assert record["components"] == ["modalities.image.encoder"]


def test_uncovered_components_are_named_in_one_warning(run_a: Path) -> None:
    two_heads = {"cls": {"type": "classifier", "num_classes": 36, "input": "image"},
                 "extra": {"type": "classifier", "num_classes": 5, "input": "image"}}
    target = spec(heads=two_heads)
    model = mmcore.build(target)
    with pytest.warns(UserWarning) as caught:
        records = apply_init(model, target, {"*": read_source(run_a)})
    assert len(caught) == 1
    assert str(caught[0].message) == f"init: freshly initialised (not in {run_a}): heads.extra"
    assert "heads.extra" not in records[0]["components"]


def test_a_shape_mismatch_names_the_tensor_and_both_shapes(run_a: Path, tmp_path: Path) -> None:
    out = tmp_path / "B"
    with pytest.raises(CheckpointError, match=r"heads\.cls\.net\.2\.weight: source \(36, 16\) "
                                              r"vs model \(10, 16\)"):
        train(spec(num_classes=10), out, progress=False, init=str(run_a))
    assert not out.exists()


def test_another_architecture_is_refused(run_a: Path, tmp_path: Path) -> None:
    text_only = mmcore.load_spec({
        "name": "text", "modalities": {"text": {
            "preprocessor": {"type": "byte-text", "context_length": 8},
            "tokenizer": {"type": "token-embedding", "vocab_size": 259, "width": 8,
                          "context_length": 8}}},
        "fusion": {"type": "late", "pooling": {"text": "mean"}}, "data": DATA,
        "objectives": {}, "train": {"steps": 1, "batch_size": 8, "warmup_steps": 0}})
    with pytest.raises(CheckpointError, match="shares no component with this model"):
        train(text_only, tmp_path / "B", progress=False, init=str(run_a))
    assert not (tmp_path / "B").exists()


@pytest.mark.parametrize("kind", ["corrupt", "pickle", "missing"])
def test_bad_sources_leave_the_run_folder_untouched(kind: str, run_a: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / {"corrupt": "bad.safetensors", "pickle": "weights.bin",
                         "missing": "nothing.safetensors"}[kind]
    if kind == "corrupt":
        source.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    elif kind == "pickle":
        source.write_bytes(pickle.dumps({"w": [1.0, 2.0]}))
    out = tmp_path / "B"
    train(spec(steps=1, warmup_steps=0), out, progress=False)  # what --overwrite would clear
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    code = main(["train", str(run_a.parent / "spec.yaml"), "--out", str(out), "--overwrite",
                 "--no-progress", "--init", str(source)])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1
    assert {"corrupt": "corrupt or truncated", "pickle": "is a pickle",
            "missing": "does not exist"}[kind] in err
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before


def test_unknown_init_path_suggests(run_a: Path) -> None:
    with pytest.raises(SpecError, match=r"init\.modalities\.imag.*mean 'modalities\.image'"):
        with_init(spec(), [f"modalities.imag={run_a}"])
    with pytest.raises(SpecError, match="not both"):
        with_init(spec(), [str(run_a), f"fusion={run_a}"])


def test_train_a_given_model(tmp_path: Path) -> None:
    """train(model=...) trains that model, not a fresh build of the spec."""
    target = spec(steps=1, warmup_steps=0, freeze=["heads.cls"])
    model = mmcore.build(target)
    with torch.no_grad():
        model.heads["cls"].net[2].weight.fill_(0.5)
    final = train(target, tmp_path / "run", progress=False, model=model)
    assert torch.all(read_tensors(final)["heads.cls.net.2.weight"] == 0.5)


def test_init_from_a_hugging_face_folder(hf_folder: Path, mm_model: Any) -> None:  # noqa: F811
    """A source 'mmcore import' reads is converted in memory and loads by component."""
    source = read_source(hf_folder)
    assert source.fmt == "hf-clip"
    assert str(hf_folder / "model.safetensors") in source.files
    torch.manual_seed(1)
    fresh = mmcore.build(mm_model.spec)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every component is covered: no warning
        apply_init(fresh, mm_model.spec, {"*": source})
    for key, value in mm_model.state_dict().items():
        assert torch.allclose(fresh.state_dict()[key], value, atol=1e-6), key


def test_python_entry_point(run_a: Path, tmp_path: Path) -> None:
    final = mmcore.train(spec(steps=1, warmup_steps=0), tmp_path / "B",
                         init={"modalities.image": str(run_a)}, progress=False)
    [record] = json.loads(read_metadata(final)["init"])
    assert record["components"] == ["modalities.image"]

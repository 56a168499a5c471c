"""Dotted overrides (``train.lr=1e-4``) validated like the YAML, ``--print-spec``, the
``--device`` checks and the run-folder message of the command line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

import mmcore
from mmcore.cli import main
from mmcore.errors import SpecError
from mmcore.kernels.dispatch import DeviceError, check_device
from mmcore.overrides import apply_overrides, load_spec, parse_override


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(("text", "value"), [
    ("train.lr=1e-4", 1e-4), ("fusion.layers=4", 4), ("objectives.clip.weight=0.5", 0.5),
    ("train.freeze=[fusion, heads.cls]", ["fusion", "heads.cls"]),
    ("heads.cls={type: classifier, num_classes: 3}", {"type": "classifier", "num_classes": 3}),
    ("train.grad_clip=null", None), ("name=my model", "my model"), ("train.tensorboard=true", True),
])
def test_values_are_yaml_read_by_the_spec_loader(text: str, value: object) -> None:
    override = parse_override(text)
    assert override.key == text.split("=")[0] and override.value == value
    assert type(override.value) is type(value)


@pytest.mark.parametrize(("text", "message"), [
    ("lr", "is not KEY=VALUE"), ("train.lr=", "has no value"),
    ("train.lr=[1", "is not valid YAML"), ("x=!!python/object:os.system 1", "not valid YAML"),
])
def test_malformed_overrides(text: str, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        parse_override(text)


def test_apply_sets_nested_keys_list_items_and_new_mappings() -> None:
    data = {"train": {"lr": 1.0}, "objectives": {"c": {"pairs": [["a", "b"]]}}}
    overrides = [parse_override(t) for t in (
        "train.lr=2", "objectives.c.pairs.0=[x, y]", "heads.h.type=classifier",
        "train.lr.deep=1", "objectives.c.pairs.5=1")]
    out, applied, issues = apply_overrides(data, overrides)
    assert out["train"]["lr"] == 2 and out["objectives"]["c"]["pairs"] == [["x", "y"]]
    assert out["heads"] == {"h": {"type": "classifier"}}
    assert data["train"]["lr"] == 1.0  # the input is not changed
    assert applied[2].created == "heads"
    assert [i.path for i in issues] == ["train.lr.deep", "objectives.c.pairs.5"]
    assert "train.lr is int, not a mapping" in issues[0].message


def test_overrides_validate_like_the_yaml() -> None:
    spec = load_spec("clip-tiny", ["train.lr=1e-4", "modalities.image.encoder.layers=1",
                                   "objectives.contrastive.weight=0.5"])
    assert spec.train.lr == 1e-4 and spec.objectives["contrastive"].weight == 0.5
    assert spec.component("modalities.image.encoder").params["layers"] == 1  # type: ignore
    assert mmcore.load_spec("clip-tiny", ["train.steps=3"]).train.steps == 3
    with pytest.raises(SpecError) as caught:
        load_spec("clip-tiny", ["train.lr=-1", "train.steps=many"])
    issues = {i.path: i for i in caught.value.issues}
    assert set(issues) == {"train.lr", "train.steps"}
    assert "greater than 0" in issues["train.lr"].message
    assert "(from override 'train.lr=-1')" in issues["train.lr"].message
    assert issues["train.lr"].line is None  # it came from the command line, not the YAML


@pytest.mark.parametrize(("override", "path", "nearest"), [
    ("trian.lr=1", "trian", "'train.lr'"),
    ("fusion.embed_dm=32", "fusion.embed_dm", "'fusion.embed_dim'"),
    ("objectives.clip.weight=0.5", "objectives.clip.type", "'objectives.contrastive.weight'"),
    ("modalities.image.encoder.layer=4", "modalities.image.encoder.layer",
     "'modalities.image.encoder.layers'"),
])
def test_an_unknown_key_suggests_the_nearest(override: str, path: str, nearest: str) -> None:
    with pytest.raises(SpecError) as caught:
        load_spec("clip-tiny", [override])
    [issue] = caught.value.issues
    assert issue.path == path
    assert f"Did you mean {nearest}" in issue.message


def test_validate_and_inspect_take_overrides(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "validate", "clip-tiny", "modalities.image.encoder.layers=1")
    assert code == 0 and out.startswith("ok: clip-tiny")
    fewer = int(out.split("(")[1].split()[0].replace(",", ""))
    code, out, _ = run(capsys, "validate", "clip-tiny")
    assert fewer < int(out.split("(")[1].split()[0].replace(",", ""))
    code, _, err = run(capsys, "validate", "clip-tiny", "train.lr=0")
    assert code == 2 and "train.lr: Input should be greater than 0" in err
    code, out, _ = run(capsys, "inspect", "clip-tiny", "--json")
    full = json.loads(out)["parameters"]
    code, out, _ = run(capsys, "inspect", "clip-tiny", "--json", "fusion.embed_dim=32")
    assert code == 0
    assert json.loads(out)["parameters"] == full - 2 * 64 * 32  # two 64 x 64 -> 64 x 32


def test_print_spec_shows_the_resolved_spec(capsys: pytest.CaptureFixture[str],
                                            tmp_path: Path) -> None:
    code, out, err = run(capsys, "train", "clip-tiny", "--print-spec", "train.lr=2e-4",
                         "--init", str(tmp_path), "train.steps=200")
    assert code == 0, err
    data = yaml.safe_load(out)
    assert (data["train"]["lr"], data["train"]["steps"], data["init"]) == (
        2e-4, 200, str(tmp_path))
    assert mmcore.load_spec(data).name == "clip-tiny"


def test_override_after_options_and_unknown_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "train", "clip-tiny", "--print-spec", "--bogus")
    assert code == 2 and "unrecognized arguments: --bogus" in err
    code, _, err = run(capsys, "train", "clip-tiny", "--print-spec", "trian.steps=3")
    assert code == 2 and "Did you mean 'train.steps'" in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("argv", [
    ["train", "clip-tiny", "--out", "{tmp}/run", "--device", "cuda"],
    ["eval", "{tmp}", "--task", "zero-shot", "--device", "cuda"],
    ["kernels", "--device", "cuda"],
])
def test_cuda_absent_is_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                 argv: list[str]) -> None:
    code, out, err = run(capsys, *[a.format(tmp=tmp_path) for a in argv])
    assert code == 1 and out == ""
    assert err.startswith("error: --device cuda: CUDA is absent") and err.count("\n") == 1
    assert not (tmp_path / "run").exists()


def test_bad_device_names_the_valid_forms(capsys: pytest.CaptureFixture[str],
                                          tmp_path: Path) -> None:
    code, _, err = run(capsys, "train", "clip-tiny", "--out", str(tmp_path / "r"),
                       "--device", "banana")
    assert code == 1
    assert err == "error: --device 'banana' is not a device; use cpu, cuda, cuda:N or mps\n"
    assert check_device("cpu") == "cpu"
    with pytest.raises(DeviceError, match="not a device"):
        check_device("cuda:x")

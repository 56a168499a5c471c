"""The third-party example plugin (examples/mmcore-example-plugin), installed with pip.

The test set-up installs it (``pip install ./examples/mmcore-example-plugin``); it reaches
mmcore only through the ``mmcore.plugins`` entry point, like any third-party package.
"""

from __future__ import annotations

import importlib.metadata as metadata
import importlib.util
import json
from pathlib import Path

import pytest
import torch

import mmcore
from mmcore.cli import main
from mmcore.contract import Tokens
from mmcore.testing import check_component, conformance_params

DIST = "mmcore-example-plugin"
PRESET = "tabular-classifier-tiny"
COMPONENTS = [("preprocessor", "tabular"), ("tokenizer", "feature-tokens"),
              ("encoder", "tabular-transformer"), ("dataset", "synthetic-tabular")]

if importlib.util.find_spec("mmcore_example") is None:
    pytest.fail(f"the example plugin is not installed: pip install ./examples/{DIST}",
                pytrace=False)


def _cli_json(capsys: pytest.CaptureFixture[str], *argv: str) -> object:
    assert main([*argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_listed_as_an_entry_point_plugin(capsys: pytest.CaptureFixture[str]) -> None:
    plugins = _cli_json(capsys, "plugins")
    assert isinstance(plugins, list)
    info = next(p for p in plugins if p["name"] == "example")
    assert info["source"] == "entry-point"
    assert info["version"] == metadata.version(DIST)
    assert (info["status"], info["error"]) == ("loaded", "")
    registered = {(r["kind"], r["name"]) for r in info["registers"]}
    assert registered == {*COMPONENTS, ("preset", PRESET)}


def test_components_are_owned_by_the_plugin(capsys: pytest.CaptureFixture[str]) -> None:
    entries = _cli_json(capsys, "list", "tokenizer")
    assert isinstance(entries, list)
    feature = next(e for e in entries if e["name"] == "feature-tokens")
    assert (feature["plugin"], feature["version"]) == ("example", metadata.version(DIST))
    assert "mmcore_example" in feature["location"]


def test_preset_validates_from_the_cli(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", PRESET]) == 0
    assert capsys.readouterr().out.startswith(f"ok: {PRESET} (")


def test_inspect_counts_tokens(capsys: pytest.CaptureFixture[str]) -> None:
    summary = _cli_json(capsys, "inspect", PRESET)
    assert isinstance(summary, dict)
    assert summary["tokens"] == {"tabular": 9}  # CLS + 8 features
    assert summary["parameters"] == sum(c["parameters"] for c in summary["components"])


def test_forward_loss_and_backward() -> None:
    torch.manual_seed(0)
    model = mmcore.build(PRESET)
    rows = [[0.5 * i - j for j in range(8)] for i in range(4)]
    batch = {"tabular": model.preprocess("tabular", rows), "label": torch.tensor([0, 1, 2, 0])}
    output = model(batch)
    assert output.heads["label"].shape == (4, 3)
    assert output.tokens["tabular"].x.shape == (4, 9, 32)
    losses = model.loss(batch, output)
    assert torch.isfinite(losses["loss"])
    losses["loss"].backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_missing_values_are_masked() -> None:
    spec = mmcore.load_spec(PRESET).to_dict()
    spec["modalities"]["tabular"]["preprocessor"]["allow_missing"] = True
    model = mmcore.build(spec).eval()
    row = [1.0, None, 0.5, float("nan"), 2.0, -1.0, 0.0, 3.0]
    features = model.preprocess("tabular", [row])
    tokens = model.tokenizers["tabular"](features)
    assert tokens.mask is not None
    assert tokens.mask[0].tolist() == [True, True, False, True, False, True, True, True, True]
    noisy = Tokens(torch.where(tokens.mask[..., None], tokens.x, torch.randn_like(tokens.x)),
                   tokens.mask)  # masked tokens' contents must not matter
    encoder = model.encoders["tabular"]
    with torch.no_grad():
        a, b = encoder(tokens).x[tokens.mask], encoder(noisy).x[tokens.mask]
        embedding = model({"tabular": features}).embeddings["tabular"]
    assert torch.allclose(a, b, atol=1e-5)
    assert torch.isfinite(embedding).all()


def test_preprocessor_rejects_bad_rows() -> None:
    model = mmcore.build(PRESET)
    with pytest.raises(ValueError, match="8 features"):
        model.preprocess("tabular", [[1.0, 2.0]])
    with pytest.raises(ValueError, match="allow_missing"):
        model.preprocess("tabular", [[None] * 8])
    with pytest.raises(ValueError, match="rows of numbers"):
        model.preprocess("tabular", [["a"] * 8])


def test_spec_errors_point_at_the_plugin_config() -> None:
    spec = mmcore.load_spec(PRESET).to_dict()
    spec["modalities"]["tabular"]["tokenizer"]["num_feature"] = 8
    with pytest.raises(mmcore.SpecError, match=r"modalities\.tabular\.tokenizer\.num_feature"):
        mmcore.load_spec(spec)


def test_synthetic_dataset_follows_the_data_protocol() -> None:
    from mmcore.data import Collator, spec_dataset

    spec = mmcore.load_spec(PRESET)
    train, evaluation = spec_dataset(spec, "train"), spec_dataset(spec, "eval")
    assert train[3] == train[3]
    assert train[3] != evaluation[3]
    model = mmcore.build(spec)
    batch = Collator.for_model(model)([train[i] for i in range(6)])
    assert batch["tabular"].shape == (6, 8)
    assert batch["label"].tolist() == [0, 1, 2, 0, 1, 2]


@pytest.mark.parametrize(("kind", "name"), conformance_params(plugin="example"))
def test_conformance(kind: str, name: str) -> None:
    check_component(mmcore.get_registry(), kind, name)


def test_conformance_covers_every_module_component() -> None:
    cases = {(p.values[0], p.values[1]) for p in conformance_params(plugin="example")}
    assert cases == set(COMPONENTS[:3])


def test_trains_from_the_cli_and_reloads(capsys: pytest.CaptureFixture[str],
                                         tmp_path: Path) -> None:
    from mmcore.checkpoint import read_metadata
    from mmcore.data import Collator, spec_dataset

    out_dir = tmp_path / "run"
    code = main(["train", PRESET, "--out", str(out_dir), "--steps", "12", "--no-progress"])
    out, err = capsys.readouterr()
    assert code == 0, err
    checkpoint = out_dir / "model.safetensors"
    assert out.splitlines() == [f"checkpoint: {checkpoint}"]  # no eval hint: not contrastive
    assert json.loads(read_metadata(checkpoint)["plugins"])["example"] == metadata.version(DIST)
    model = mmcore.load(checkpoint).eval()
    data = spec_dataset(model.spec, "eval")
    batch = Collator.for_model(model)([data[i] for i in range(96)])
    with torch.no_grad():
        accuracy = model.loss(batch)["classification/accuracy"]
    assert accuracy > 0.6  # 3 well-separated clusters (chance: 1/3); 12 steps reach ~0.95

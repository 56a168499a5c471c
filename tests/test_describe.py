"""``mmcore describe``: every parameter of a registered type, from its plugin's config."""

from __future__ import annotations

import json

import pytest

from mmcore import plugins
from mmcore.cli import main
from mmcore.describe import describe, find_entry
from mmcore.errors import RegistryError
from mmcore.registry import Entry, NoConfig, Registry

ENTRIES = [(e.kind, e.name) for e in plugins.get_registry().list()]


def _json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict:
    assert main(["describe", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize(("kind", "name"), ENTRIES, ids=[f"{k}-{n}" for k, n in ENTRIES])
def test_describe_every_registered_type(capsys: pytest.CaptureFixture[str], kind: str,
                                        name: str) -> None:
    entry = plugins.get_registry().get(kind, name)
    info = _json(capsys, kind, name)
    assert (info["kind"], info["name"], info["plugin"]) == (kind, name, entry.plugin)
    assert info["location"] == entry.location and info["summary"] == entry.summary
    fields = entry.config.model_fields
    assert [p["name"] for p in info["parameters"]] == list(fields)
    for param in info["parameters"]:
        assert param["required"] == fields[param["name"]].is_required()
        assert param["type"] and param["type"] != "None"
    assert main(["describe", kind, name]) == 0
    text = capsys.readouterr().out
    assert text.startswith(f"{kind} {name}: ") and f"plugin: {entry.plugin}" in text


def test_describe_cross_attention_values(capsys: pytest.CaptureFixture[str]) -> None:
    info = _json(capsys, "cross-attention")  # the kind is found from the name alone
    params = {p["name"]: p for p in info["parameters"]}
    assert info["kind"] == "fusion" and info["plugin"] == "mmcore_fusions"
    assert info["config"] == "CrossAttentionFusionConfig"
    assert info["location"].split(":")[0].endswith("cross_attention.py")
    assert params["query"] == {"name": "query", "type": "str", "required": True,
                               "default": None, "constraint": "",
                               "comment": "the modality that attends (its stream is fused), "
                                          "e.g. text"}
    assert params["layers"]["constraint"] == "> 0" and params["layers"]["required"]
    assert (params["every"]["default"], params["every"]["type"]) == (1, "int")
    assert params["mlp_ratio"] == {"name": "mlp_ratio", "type": "float", "required": False,
                                   "default": 4.0, "constraint": "> 0", "comment": ""}
    assert params["pooling"]["type"] == "dict[str, Literal['cls', 'eot', 'mean']]"
    assert params["pooling"]["constraint"] == "one of 'cls', 'eot', 'mean'"
    assert params["pooling"]["default"] == {}


def test_describe_literal_and_optional(capsys: pytest.CaptureFixture[str]) -> None:
    params = {p["name"]: p for p in _json(capsys, "preprocessor", "clap-audio")["parameters"]}
    assert params["padding"]["type"] == "Literal['repeatpad', 'repeat', 'pad']"
    assert params["padding"]["constraint"] == "one of 'repeatpad', 'repeat', 'pad'"
    assert params["padding"]["default"] == "repeatpad"
    webdataset = {p["name"]: p for p in _json(capsys, "webdataset")["parameters"]}
    assert webdataset["eval_shards"]["type"] == "str | list[str] | None"
    assert webdataset["seed"]["constraint"] == ">= 0"
    assert webdataset["modalities"]["default"] == {"image": ["jpg", "jpeg", "png", "webp"],
                                                   "text": ["txt"]}
    assert webdataset["shards"]["comment"].startswith("shards: a folder (its index.json)")


def test_describe_text_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["describe", "fusion", "cross-attention"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("fusion cross-attention: a query modality's stack")
    row = next(line for line in lines if line.startswith("layers "))
    assert row.split()[:4] == ["layers", "int", "(required)", ">"]


def test_describe_unknown_name_suggests(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["describe", "cross-atention"]) == 1
    assert "nothing is registered as 'cross-atention'. Did you mean 'cross-attention'" in \
        capsys.readouterr().err
    assert main(["describe", "fusion", "cross-atention"]) == 1
    assert "unknown fusion 'cross-atention'. Did you mean 'cross-attention'" in \
        capsys.readouterr().err
    assert main(["describe", "fusions", "late"]) == 0  # plural kinds work too
    capsys.readouterr()


def test_a_name_in_two_kinds_asks_for_the_kind() -> None:
    registry = Registry()
    for kind in ("encoder", "head"):
        registry.add(Entry(kind, "twin", lambda: None, NoConfig, "p", "1", "here:1"))
    with pytest.raises(RegistryError, match="'twin' names several kinds; say which: "
                                            "'encoder twin', 'head twin'"):
        find_entry(registry, ["twin"])
    assert find_entry(registry, ["head", "twin"]).kind == "head"
    assert describe(find_entry(registry, ["encoder", "twin"]))["parameters"] == []

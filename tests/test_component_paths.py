"""One resolver for component key paths, on the spec and on the built model."""

from __future__ import annotations

import pytest

import mmcore
from mmcore.spec import component_slots, value_at


def test_spec_components_follow_the_stage_order() -> None:
    spec = mmcore.load_spec("clip-tiny")
    paths = [path for path, _, _ in spec.components()]
    assert paths == ["modalities.image.preprocessor", "modalities.image.tokenizer",
                     "modalities.image.encoder", "modalities.text.preprocessor",
                     "modalities.text.tokenizer", "modalities.text.encoder", "fusion",
                     "objectives.contrastive", "data"]
    assert spec.component("modalities.image.encoder").type == "vit"
    assert spec.component("modalities.image.nope") is None
    assert spec.component("fusion").type == "late"


def test_slots_and_value_at_read_raw_mappings_too() -> None:
    raw = {"modalities": {"a": {"tokenizer": {"type": "t"}}}, "fusion": {"type": "f"},
           "heads": {"h": {"type": "x"}}}
    slots = list(component_slots(["a"], ["h"], []))
    assert slots[:3] == [("modalities.a.preprocessor", "preprocessor"),
                         ("modalities.a.tokenizer", "tokenizer"),
                         ("modalities.a.encoder", "encoder")]
    assert ("heads.h", "head") in slots and slots[-1] == ("data", "dataset")
    assert value_at(raw, "modalities.a.tokenizer") == {"type": "t"}
    assert value_at(raw, "modalities.a.encoder") is None
    assert value_at(raw, "fusion.type.deeper") is None


def test_model_modules_at_matches_spec_module_paths() -> None:
    model = mmcore.build("clip-tiny", device="meta")
    spec = model.spec
    for path in spec.module_paths():
        modules = model.modules_at(path)
        assert modules, path
    assert model.modules_at("modalities.image") == [model.tokenizers["image"],
                                                    model.encoders["image"]]
    assert model.modules_at("modalities.text.encoder") == [model.encoders["text"]]
    assert model.modules_at("fusion") == [model.fusion]
    assert model.modules_at("objectives.contrastive") == [model.objectives["contrastive"]]
    assert model.modules_at("modalities.image.preprocessor") == []
    for bad in ("modalities.img", "modalities.image.encoder.x", "heads.cls", "nope"):
        with pytest.raises(KeyError):
            model.modules_at(bad)

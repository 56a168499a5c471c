"""mmcore.convert.hf: config.json, single and sharded safetensors, refused pickles, the
activation table and the strict key map."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from mmcore.convert import hf
from mmcore.errors import CheckpointError


def tensors(*names: str) -> dict[str, torch.Tensor]:
    """Distinct values per name, so a mix-up between names shows."""
    return {n: torch.arange(3, dtype=torch.float32) + 10 * i for i, n in enumerate(names)}


# -- config.json ------------------------------------------------------------------------


def test_config_is_read_and_checked(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "clap", "a": 1}))
    assert hf.read_config(tmp_path) == {"model_type": "clap", "a": 1}
    assert hf.read_config(tmp_path, "clap")["a"] == 1
    assert hf.config_model_type(tmp_path) == "clap"
    with pytest.raises(CheckpointError, match=r"config\.json: model_type is 'clap', not 'clip'"):
        hf.read_config(tmp_path, "clip")


def test_bad_configs_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"has no config\.json"):
        hf.read_config(tmp_path)
    assert hf.config_model_type(tmp_path) is None
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"cannot read .*config\.json: not valid JSON"):
        hf.read_config(tmp_path)
    assert hf.config_model_type(tmp_path) is None
    (tmp_path / "config.json").write_text("[1, 2]")
    with pytest.raises(CheckpointError, match=r"config\.json holds a JSON list, not an object"):
        hf.read_config(tmp_path)


def test_with_defaults_treats_none_as_default() -> None:
    out = hf.with_defaults({"a": None, "b": 5, "c": 7}, {"a": 1, "b": 2})
    assert out == {"a": 1, "b": 5, "c": 7}


# -- weights ----------------------------------------------------------------------------


def test_single_file(tmp_path: Path) -> None:
    state = tensors("x.weight", "y.bias")
    save_file(state, str(tmp_path / "model.safetensors"))
    got = hf.read_weights(tmp_path)
    assert sorted(got) == ["x.weight", "y.bias"]
    assert torch.equal(got["y.bias"], state["y.bias"])


def write_sharded(folder: Path, weight_map: dict[str, str]) -> dict[str, torch.Tensor]:
    state = tensors(*weight_map)
    for shard in set(weight_map.values()):
        save_file({k: v for k, v in state.items() if weight_map[k] == shard},
                  str(folder / shard))
    (folder / hf.SAFETENSORS_INDEX).write_text(json.dumps(
        {"metadata": {"total_size": 0}, "weight_map": weight_map}))
    return state


def test_sharded_index(tmp_path: Path) -> None:
    state = write_sharded(tmp_path, {"a": "model-00001-of-00002.safetensors",
                                     "b": "model-00002-of-00002.safetensors",
                                     "c": "model-00002-of-00002.safetensors"})
    got = hf.read_weights(tmp_path)
    assert sorted(got) == ["a", "b", "c"]
    for key in "abc":
        assert torch.equal(got[key], state[key]), key


def index(folder: Path, weight_map: object) -> None:
    (folder / hf.SAFETENSORS_INDEX).write_text(json.dumps({"weight_map": weight_map}))


def test_bad_indexes_name_the_file_and_key(tmp_path: Path) -> None:
    save_file(tensors("a"), str(tmp_path / "one.safetensors"))
    cases: list[tuple[object, str]] = [
        ([1], r"index\.json: weight_map must be a non-empty object"),
        ({}, r"weight_map must be a non-empty object"),
        ({"a": 3}, r"weight_map\.a must be a shard file name, got 3"),
        ({"a": "../one.safetensors"}, r"shard '\.\./one\.safetensors' lies outside"),
        ({"a": "/etc/passwd.safetensors"}, r"lies outside"),
        ({"a": "pytorch_model-00001.bin"}, r"'pytorch_model-00001\.bin' is not a \.safetensors"),
        ({"a": "two.safetensors"}, r"shard 'two\.safetensors' is missing"),
        ({"a": "one.safetensors", "b": "one.safetensors"}, r"one\.safetensors lacks .*'b'"),
    ]
    for weight_map, message in cases:
        index(tmp_path, weight_map)
        with pytest.raises(CheckpointError, match=message):
            hf.read_weights(tmp_path)
    save_file(tensors("a", "extra"), str(tmp_path / "one.safetensors"))
    index(tmp_path, {"a": "one.safetensors"})
    with pytest.raises(CheckpointError, match=r"does not list tensor\(s\) 'extra' of shard one"):
        hf.read_weights(tmp_path)


def test_pickles_are_refused(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"has no model\.safetensors \(nor model"):
        hf.read_weights(tmp_path)
    torch.save(tensors("a"), tmp_path / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match=r"only pytorch_model\.bin \(a pickle\).*convert"):
        hf.read_weights(tmp_path)
    got = hf.read_weights(tmp_path, allow_pickle=True)  # weights_only, on request
    assert torch.equal(got["a"], tensors("a")["a"])
    torch.save(tensors("a"), tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"is a pickle .* not safetensors"):
        hf.read_weights(tmp_path)


def test_corrupt_safetensors(tmp_path: Path) -> None:
    save_file(tensors("a"), str(tmp_path / "model.safetensors"))
    data = (tmp_path / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[:-4])
    with pytest.raises(CheckpointError, match=r"not a readable safetensors file"):
        hf.read_weights(tmp_path)


# -- activations ------------------------------------------------------------------------


def test_activation_table() -> None:
    assert hf.activation("gelu_new") == "gelu_tanh"
    assert hf.activation("quick_gelu") == "quick_gelu"
    assert hf.hf_activation("gelu_tanh") == "gelu_pytorch_tanh"
    for name in hf.HF_ACTIVATIONS:  # every exportable activation imports back as itself
        assert hf.activation(hf.hf_activation(name)) == name
    with pytest.raises(CheckpointError, match=r"text_config\.hidden_act: activation 'mish'"):
        hf.activation("mish", "text_config.hidden_act")
    with pytest.raises(CheckpointError, match="'swiglu' has no Hugging Face equivalent"):
        hf.hf_activation("swiglu")


# -- key mapping ------------------------------------------------------------------------

RULES = [("embed.weight", "tok.embed.weight"),
         ("layers.{}.attn.*", "blocks.{}.attention.*"),
         ("layers.{}.mlp.fc{}.*", "blocks.{}.ff.{}.*"),
         ("norm.*", "final_norm.*")]


def test_key_map_renames_in_order_and_inverts() -> None:
    keys = ["embed.weight", "layers.0.attn.q.weight", "layers.12.mlp.fc2.bias",
                   "norm.weight", "layers.3.position_ids"]
    state = tensors(*keys)
    mapping = hf.KeyMap(RULES, ignore=["*.position_ids"])
    out = mapping.apply(state)
    assert sorted(out) == ["blocks.0.attention.q.weight", "blocks.12.ff.2.bias",
                           "final_norm.weight", "tok.embed.weight"]
    assert out["blocks.12.ff.2.bias"] is state["layers.12.mlp.fc2.bias"]
    back = mapping.inverse().apply(out)
    assert sorted(back) == sorted(keys[:4])
    assert mapping.target("layers.3.position_ids") is None


def test_key_map_is_strict() -> None:
    mapping = hf.KeyMap(RULES)
    with pytest.raises(hf.KeyMappingError) as info:
        mapping.apply(tensors("embed.weight", "head.weight", "layers.x.attn.q"),
                      source="ckpt")
    assert str(info.value) == ("ckpt: no mmcore equivalent for 2 key(s): 'head.weight', "
                               "'layers.x.attn.q'")
    assert isinstance(info.value, KeyError) and isinstance(info.value, CheckpointError)
    with pytest.raises(hf.KeyMappingError, match=r"missing 1 key\(s\): 'final_norm\.weight'; "
                                                 r"1 unexpected key\(s\): 'tok\.embed\.weight'"):
        mapping.apply(tensors("embed.weight"), expected=["final_norm.weight"])
    clash = hf.KeyMap([("a.*", "x.*"), ("b.*", "x.*")])
    with pytest.raises(hf.KeyMappingError, match=r"several keys map onto 'x\.w'"):
        clash.apply(tensors("a.w", "b.w"))
    with pytest.raises(ValueError, match="same order"):
        hf.KeyMap([("layers.{}.*", "blocks.*")])

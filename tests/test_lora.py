"""LoRA: adapters start equal to the base, only they train, checkpoints hold just the
adapters plus a reference to the base, and merging equals the adapted model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from test_optim import clip_spec

import mmcore
from mmcore import lora
from mmcore.checkpoint import read_metadata, read_tensors
from mmcore.convert import export_model
from mmcore.data import Collator, spec_dataset
from mmcore.errors import CheckpointError, SpecError
from mmcore.training import train

LORA = {"targets": [{"path": "modalities.text.encoder", "modules": "*attn*"},
                    {"path": "fusion"}], "rank": 4, "alpha": 8.0}


def _batch(model: Any) -> dict[str, Any]:
    data = spec_dataset(model.spec, "eval")
    return Collator.for_model(model)([data[i] for i in range(6)])


def _embeddings(model: Any, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
    model.eval()
    with torch.no_grad():
        out = model(batch)
    return {k: v.clone() for k, v in out.embeddings.items()}


def test_adapted_model_equals_its_base_at_initialisation() -> None:
    spec = clip_spec(lora=LORA)
    torch.manual_seed(0)
    model = mmcore.build(spec)
    batch = _batch(model)
    before = _embeddings(model, batch)
    adapted = lora.apply(model, spec.train.lora)
    assert "encoders.text.stack.blocks.0.attn.q_proj" in adapted
    assert all(not n.startswith("encoders.image") for n in adapted)
    after = _embeddings(model, batch)
    for key in before:
        assert torch.equal(before[key], after[key]), key
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(lora.is_adapter(n) for n in trainable)


def test_a_target_matching_nothing_is_an_error() -> None:
    model = mmcore.build(clip_spec())
    cfg = clip_spec(lora={"targets": [{"path": "fusion", "modules": "nothing*"}]}).train.lora
    assert cfg is not None
    with pytest.raises(ValueError, match=r"train.lora.targets.0: no nn.Linear under 'fusion'"):
        lora.apply(model, cfg)


def test_unknown_target_path_is_a_validation_error() -> None:
    with pytest.raises(SpecError, match=r"targets\.0\.path: unknown component 'fusio'"):
        mmcore.validation.check(clip_spec(lora={"targets": [{"path": "fusio"}]}))


def test_only_adapters_train_and_checkpoints_hold_only_adapters(tmp_path: Path) -> None:
    out = tmp_path / "run"
    final = train(clip_spec(lora=LORA, steps=4, lr=1e-2), out, progress=False)
    saved = read_tensors(final)
    assert saved and all(lora.is_adapter(k) for k in saved)
    ref = json.loads(read_metadata(final)["base"])
    assert ref["path"] == "base.safetensors" and len(ref["sha256"]) == 64
    step = read_tensors(out / "checkpoints/step-000004/model.safetensors")
    assert set(step) == set(saved)
    base = read_tensors(out / "base.safetensors")
    model = mmcore.load(out)  # base + adapters rebuilt from the spec and the reference
    state = model.state_dict()
    for name, value in base.items():
        assert torch.equal(state[name], value), name  # the base never moved
    assert any(not torch.equal(v, torch.zeros_like(v)) for k, v in saved.items()
               if k.endswith("lora_b"))  # the adapters did


def test_merged_model_equals_the_adapted_model(tmp_path: Path) -> None:
    out = tmp_path / "run"
    train(clip_spec(lora=LORA, steps=4, lr=1e-2), out, progress=False)
    adapted = mmcore.load(out)
    batch = _batch(adapted)
    expected = _embeddings(adapted, batch)
    path = export_model(adapted, tmp_path / "merged", "mmcore", merge_lora=True)
    assert any(isinstance(m, lora.LoraLinear) for m in adapted.modules())  # left adapted
    merged = mmcore.load(path)
    assert merged.spec.train.lora is None
    assert not any(lora.is_adapter(k) for k in merged.state_dict())
    got = _embeddings(merged, batch)
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], atol=1e-6, rtol=0)


def test_resume_of_a_lora_run_is_bitwise(tmp_path: Path) -> None:
    spec = clip_spec(lora=LORA, steps=8)
    straight = train(spec, tmp_path / "a", progress=False)
    train(spec, tmp_path / "b", progress=False, stop_after=4)
    resumed = train(spec, tmp_path / "b", progress=False, resume=True)
    a, b = read_tensors(straight), read_tensors(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_changed_base_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "run"
    train(clip_spec(lora=LORA, steps=2), out, progress=False)
    base = read_tensors(out / "base.safetensors")
    from mmcore.checkpoint import save_tensors

    save_tensors({k: v + 1 for k, v in base.items()}, out / "base.safetensors")
    with pytest.raises(CheckpointError, match="sha256 no longer matches"):
        mmcore.load(out)
    (out / "base.safetensors").unlink()
    with pytest.raises(CheckpointError, match="base that is gone"):
        mmcore.load(out)


def test_merge_without_adapters_is_an_error() -> None:
    with pytest.raises(CheckpointError, match="no LoRA adapters"):
        export_model(mmcore.build(clip_spec()), "unused", "mmcore", merge_lora=True)

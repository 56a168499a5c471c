"""Optimizers (AdamW, SGD, Adafactor), schedules (cosine, linear, constant, wsd) and
learning rates per component path."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from tiny_specs import DATA, IMAGE, TEXT

import mmcore
from mmcore.checkpoint import read_tensors
from mmcore.errors import SpecError
from mmcore.spec import ModelSpec
from mmcore.training import lr_factor, make_optimizer, param_groups, train
from mmcore.training.optim import load_optimizer_state, optimizer_state

TRAIN = {"steps": 8, "batch_size": 8, "lr": 3e-3, "warmup_steps": 2, "log_every": 2,
         "checkpoint_every": 4}


def clip_spec(**train: Any) -> ModelSpec:
    return mmcore.load_spec({
        "name": "clip-test", "modalities": {"image": IMAGE, "text": TEXT},
        "fusion": {"type": "late", "embed_dim": 16, "pooling": {"image": "cls", "text": "eot"}},
        "objectives": {"contrastive": {"type": "contrastive", "pairs": [["image", "text"]]}},
        "data": DATA, "train": {**TRAIN, **train}})


@pytest.mark.parametrize(("kind", "expected"), [
    # total 10, warmup 2, min_ratio 0: factors at steps 0, 1, 2, 6, 9, 10
    ("cosine", [0.5, 1.0, 1.0, 0.5, 0.0381, 0.0]),
    ("linear", [0.5, 1.0, 1.0, 0.5, 0.125, 0.0]),
    ("constant", [0.5, 1.0, 1.0, 1.0, 1.0, 1.0]),
    # wsd, decay over the last 20%: flat through step 8, then 1 -> 0 over steps 8..10
    ("wsd", [0.5, 1.0, 1.0, 1.0, 0.5, 0.0]),
])
def test_schedule_shapes(kind: str, expected: list[float]) -> None:
    got = [lr_factor(s, total=10, warmup=2, kind=kind, decay_fraction=0.2)
           for s in (0, 1, 2, 6, 9, 10)]
    assert got == pytest.approx(expected, abs=1e-4)


def test_wsd_is_flat_then_decays_to_min_ratio() -> None:
    f = [lr_factor(s, total=100, warmup=10, kind="wsd", decay_fraction=0.1, min_ratio=0.1)
         for s in range(101)]
    assert f[9] == 1.0 and all(v == 1.0 for v in f[10:91])
    assert f[95] == pytest.approx(0.55) and f[100] == pytest.approx(0.1)
    assert all(a >= b for a, b in itertools.pairwise(f[90:]))


def test_unknown_schedule_is_an_error() -> None:
    with pytest.raises(ValueError, match="schedules are cosine"):
        lr_factor(5, total=10, warmup=0, kind="exp")


@pytest.mark.parametrize(("name", "cls", "slot"), [
    ("adamw", torch.optim.AdamW, "exp_avg"), ("sgd", torch.optim.SGD, "momentum_buffer"),
    ("adafactor", torch.optim.Adafactor, "step")])
def test_each_optimizer_and_its_state_round_trip(name: str, cls: type, slot: str) -> None:
    spec = clip_spec(optimizer=name)
    model = mmcore.build(spec)
    optimizer = make_optimizer(model, spec.train)
    assert type(optimizer) is cls
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    optimizer.step()
    tensors, meta = optimizer_state(optimizer)
    assert any(k.endswith(f".{slot}") for k in tensors)
    other = make_optimizer(model, spec.train)
    load_optimizer_state(other, tensors, json.loads(json.dumps(meta)))
    a, b = optimizer.state_dict(), other.state_dict()
    assert a["param_groups"] == b["param_groups"]
    for index, slots in a["state"].items():
        for key, value in slots.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(b["state"][index][key]))


def test_sgd_resume_is_bitwise_identical(tmp_path: Path) -> None:
    spec = clip_spec(optimizer="sgd", momentum=0.9, schedule="wsd", lr=0.05)
    straight = train(spec, tmp_path / "a", progress=False)
    train(spec, tmp_path / "b", progress=False, stop_after=4)
    resumed = train(spec, tmp_path / "b", progress=False, resume=True)
    a, b = read_tensors(straight), read_tensors(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    state = json.loads((tmp_path / "b/checkpoints/step-000008/state.json").read_text())
    assert state["scheduler"]["kind"] == "warmup-wsd"


def test_lr_by_component_gives_groups_their_own_lr() -> None:
    spec = clip_spec(lr=1e-3, lr_by_component={"modalities.image": 1e-4,
                                               "modalities.image.encoder": 1e-5})
    model = mmcore.build(spec)
    names = {id(p): n for n, p in model.named_parameters()}
    groups = param_groups(model, 0.1, lr=1e-3, lr_by_component=spec.train.lr_by_component)
    by_component: dict[str | None, set[str]] = {}
    for g in groups:
        by_component.setdefault(g.get("component"), set()).update(names[id(p)]
                                                                  for p in g["params"])
    assert all(n.startswith("encoders.image.") for n in by_component["modalities.image.encoder"])
    assert all(n.startswith("tokenizers.image.") for n in by_component["modalities.image"])
    assert not any("image" in n and n.startswith(("encoders", "tokenizers"))
                   for n in by_component[None])
    assert sum(len(s) for s in by_component.values()) == len(names)
    # the step sets each group's lr from the schedule times its scale
    optimizer = make_optimizer(model, spec.train)
    from mmcore.training.optim import set_lr

    set_lr(optimizer, 5e-4)
    lrs = {g.get("component"): g["lr"] for g in optimizer.param_groups}
    assert lrs[None] == 5e-4
    assert lrs["modalities.image"] == pytest.approx(5e-5)
    assert lrs["modalities.image.encoder"] == pytest.approx(5e-6)


def test_default_groups_are_unchanged_by_the_new_options() -> None:
    model = mmcore.build(clip_spec())
    groups = param_groups(model, 0.1)
    assert [set(g) for g in groups] == [{"params", "weight_decay"}] * 2


def test_option_problems_name_the_key() -> None:
    with pytest.raises(SpecError) as err:
        mmcore.validation.check(clip_spec(lr_by_component={"modalities.imag": 1e-4}))
    assert "train.lr_by_component.modalities.imag" in str(err.value)
    assert "modalities.image" in str(err.value)
    with pytest.raises(SpecError, match=r"train\.warmup_steps: 20 exceeds train\.steps 8"):
        mmcore.validation.check(clip_spec(warmup_steps=20))
    with pytest.raises(SpecError, match="optimizer"):
        clip_spec(optimizer="lion")

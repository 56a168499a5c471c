"""Training: bitwise resume, checkpoint markers, NaN handling, schedule, optimizer groups."""

from __future__ import annotations

import io
import itertools
import json
import pickle
from pathlib import Path
from typing import Any

import pytest
import torch
from tiny_specs import DATA, IMAGE, TEXT

import mmcore
from mmcore.checkpoint import read_tensors
from mmcore.data import Collator, ResumableSampler, spec_dataset
from mmcore.model import MultimodalModel
from mmcore.plot import nice_ticks, plot_loss
from mmcore.progress import Progress, format_duration
from mmcore.spec import ModelSpec
from mmcore.training import (
    COMPLETE,
    TrainingError,
    latest_checkpoint,
    list_checkpoints,
    load_optimizer_state,
    lr_factor,
    make_optimizer,
    metrics_csv,
    optimizer_state,
    param_groups,
    read_metrics,
    train,
)

TRAIN = {"steps": 8, "batch_size": 8, "lr": 3e-3, "warmup_steps": 2, "log_every": 2,
         "checkpoint_every": 4}


def clip_spec(**train: Any) -> ModelSpec:
    return mmcore.load_spec({
        "name": "clip-test", "modalities": {"image": IMAGE, "text": TEXT},
        "fusion": {"type": "late", "embed_dim": 16, "pooling": {"image": "cls", "text": "eot"}},
        "objectives": {"contrastive": {"type": "contrastive", "pairs": [["image", "text"]]}},
        "data": DATA, "train": {**TRAIN, **train}})


def perceiver_spec() -> ModelSpec:
    """Has dropout, so a resume must also restore the torch RNG."""
    return mmcore.load_spec({
        "name": "perceiver-test", "modalities": {"image": IMAGE, "text": TEXT},
        "fusion": {"type": "perceiver", "width": 16, "num_latents": 4, "layers": 1, "heads": 2},
        "heads": {"cls": {"type": "classifier", "num_classes": 36, "dropout": 0.3}},
        "objectives": {"ce": {"type": "classification", "head": "cls"}},
        "data": DATA, "train": TRAIN})


def _count_steps(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    import mmcore.training.loop as train_module

    calls: list[int] = []
    original = train_module.train_step

    def counted(run: Any, batch: Any) -> dict[str, float]:
        calls.append(run.step)
        return original(run, batch)

    monkeypatch.setattr(train_module, "train_step", counted)
    return calls


def clip_spec_with_worker() -> ModelSpec:
    """Data preprocessed in a DataLoader worker process."""
    return clip_spec(num_workers=1)


@pytest.mark.parametrize("make_spec", [clip_spec, perceiver_spec, clip_spec_with_worker])
def test_resume_is_bitwise_identical(make_spec: Any, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    spec = make_spec()
    straight = train(spec, tmp_path / "a", progress=False)
    half = train(spec, tmp_path / "b", progress=False, stop_after=4)
    assert half == tmp_path / "b/checkpoints/step-000004/model.safetensors"
    assert not (tmp_path / "b/model.safetensors").exists()
    calls = _count_steps(monkeypatch)
    resumed = train(spec, tmp_path / "b", progress=False, resume=True)
    assert calls == [4, 5, 6, 7]  # really continued from step 4
    a, b = read_tensors(straight), read_tensors(resumed)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    fresh = read_tensors(tmp_path / "b/checkpoints/step-000004/model.safetensors")
    assert any(not torch.equal(fresh[k], a[k]) for k in a)  # training moved the weights
    # metrics were continued, not duplicated
    assert [r["step"] for r in read_metrics(tmp_path / "b")] == [2, 4, 6, 8]


def test_run_folder_layout(tmp_path: Path) -> None:
    out = tmp_path / "run"
    final = train(clip_spec(), out, progress=False)
    assert final == out / "model.safetensors"
    assert [p.name for p in list_checkpoints(out)] == ["step-000004", "step-000008"]
    ckpt = out / "checkpoints/step-000008"
    assert sorted(p.name for p in ckpt.iterdir()) == [
        COMPLETE, "model.safetensors", "optimizer.safetensors", "state.json"]
    state = json.loads((ckpt / "state.json").read_text())
    assert state["step"] == 8 and state["total_steps"] == 8
    assert state["sampler"] == {"seed": 0, "consumed": 64, "length": 200}
    assert set(state["rng"]) >= {"python", "numpy", "torch"}
    assert set(read_tensors(ckpt / "optimizer.safetensors")) >= {"state.0.exp_avg",
                                                                 "state.0.exp_avg_sq"}
    rows = read_metrics(out)
    assert [r["step"] for r in rows] == [2, 4, 6, 8]
    assert all(r["loss"] > 0 and r["samples_per_s"] > 0 for r in rows)
    assert (out / "metrics.csv").read_text().splitlines()[0].startswith("step,loss,")
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert mmcore.load_spec(out / "spec.yaml").train.steps == 8
    model = mmcore.load(out)
    assert torch.equal(model.state_dict()["fusion.projections.image.weight"],
                       read_tensors(final)["fusion.projections.image.weight"])


def test_half_written_checkpoints_are_ignored(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "run"
    train(clip_spec(), out, progress=False, stop_after=4)
    broken = out / "checkpoints/step-000006"  # crashed before COMPLETE was written
    broken.mkdir()
    (broken / "model.safetensors").write_bytes(b"garbage")
    (out / "checkpoints/.tmp-step-000007-123").mkdir()
    assert latest_checkpoint(out) == out / "checkpoints/step-000004"
    calls = _count_steps(monkeypatch)
    train(clip_spec(), out, progress=False, resume=True)
    assert calls == [4, 5, 6, 7]
    assert latest_checkpoint(out) == out / "checkpoints/step-000008"


def test_resume_without_checkpoint_starts_fresh(tmp_path: Path) -> None:
    final = train(clip_spec(steps=2), tmp_path / "r", progress=False, resume=True)
    assert final.is_file()
    again = train(clip_spec(steps=2), tmp_path / "r", progress=False, resume=True)  # no-op
    assert torch.equal(read_tensors(final)["fusion.projections.text.weight"],
                       read_tensors(again)["fusion.projections.text.weight"])


def test_existing_run_needs_resume_or_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "run"
    train(clip_spec(steps=2), out, progress=False)
    with pytest.raises(TrainingError, match="already holds a run"):
        train(clip_spec(steps=2), out, progress=False)
    train(clip_spec(steps=2), out, progress=False, overwrite=True)
    assert [r["step"] for r in read_metrics(out)] == [2]


def test_nan_loss_stops_naming_the_step(tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    original = MultimodalModel.loss
    calls = itertools.count(1)

    def poisoned(self: MultimodalModel, batch: Any, output: Any = None) -> dict[str, Any]:
        terms = original(self, batch, output)
        if next(calls) == 6:
            terms["loss"] = terms["loss"] * float("nan")
        return terms

    monkeypatch.setattr(MultimodalModel, "loss", poisoned)
    with pytest.raises(TrainingError, match=r"loss is nan at step 6 of 8") as err:
        train(clip_spec(), tmp_path / "run", progress=False)
    assert "step-000004" in str(err.value)  # points at the last good checkpoint
    assert latest_checkpoint(tmp_path / "run") == tmp_path / "run/checkpoints/step-000004"


def test_inf_gradient_stops(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def exploding(self: MultimodalModel, batch: Any, output: Any = None) -> dict[str, Any]:
        scale = next(iter(self.objectives.values())).logit_scale
        return {"loss": torch.sqrt(scale - scale.detach())}  # value 0, gradient inf

    monkeypatch.setattr(MultimodalModel, "loss", exploding)
    with pytest.raises(TrainingError, match="gradient norm is inf at step 1 of 8"):
        train(clip_spec(), tmp_path / "run", progress=False)


def test_lr_schedule() -> None:
    f = [lr_factor(s, total=10, warmup=2, min_ratio=0.1) for s in range(10)]
    assert f[0] == pytest.approx(0.5) and f[1] == pytest.approx(1.0)
    assert f[2] == pytest.approx(1.0)  # cosine starts at the top
    assert all(a >= b for a, b in itertools.pairwise(f[1:]))
    assert lr_factor(10, total=10, warmup=2, min_ratio=0.1) == pytest.approx(0.1)
    assert lr_factor(6, total=10, warmup=2) == pytest.approx(0.5)  # half way down
    assert lr_factor(0, total=5, warmup=0) == pytest.approx(1.0)


def test_no_weight_decay_on_biases_norms_embeddings_and_scale() -> None:
    model = mmcore.build(clip_spec())
    groups = param_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in groups[0]["params"]}
    plain = {names[id(p)] for p in groups[1]["params"]}
    assert groups[0]["weight_decay"] == 0.1 and groups[1]["weight_decay"] == 0.0
    assert "fusion.projections.image.weight" in decayed
    assert "tokenizers.image.proj.weight" in decayed  # conv patch embedding
    for name in ("objectives.contrastive.logit_scale", "tokenizers.text.embed.weight",
                 "tokenizers.text.positions.weight", "tokenizers.image.cls"):
        assert name in plain
    assert all(not n.endswith(".bias") for n in decayed)
    assert all("norm" not in n for n in decayed)
    assert len(decayed) + len(plain) == len(names)


def test_optimizer_state_round_trip_without_pickle(tmp_path: Path) -> None:
    model = mmcore.build(clip_spec())
    optimizer = make_optimizer(model, clip_spec().train)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    optimizer.step()
    tensors, meta = optimizer_state(optimizer)
    json.dumps(meta)  # JSON-able
    other = make_optimizer(model, clip_spec().train)
    load_optimizer_state(other, tensors, json.loads(json.dumps(meta)))
    a, b = optimizer.state_dict(), other.state_dict()
    assert a["param_groups"] == b["param_groups"]
    for index, slots in a["state"].items():
        for key, value in slots.items():
            assert torch.equal(value, b["state"][index][key])


def test_sampler_restarts_where_it_stopped() -> None:
    stream = list(itertools.islice(ResumableSampler(7, seed=3), 30))
    assert sorted(stream[:7]) == list(range(7)) and sorted(stream[7:14]) == list(range(7))
    assert stream[:7] != stream[7:14]  # a fresh order each epoch
    assert list(itertools.islice(ResumableSampler(7, seed=3, start=11), 19)) == stream[11:]
    assert list(itertools.islice(ResumableSampler(7, seed=4), 7)) != stream[:7]
    state = ResumableSampler(7, seed=3).state_dict(consumed=11)
    restored = ResumableSampler.from_state(state, 7)
    assert list(itertools.islice(restored, 5)) == stream[11:16]
    with pytest.raises(ValueError, match="same data"):
        ResumableSampler.from_state(state, 8)


def test_collator_is_picklable_and_runs_in_workers() -> None:
    spec = clip_spec()
    model = mmcore.build(spec)
    collate = pickle.loads(pickle.dumps(Collator.for_model(model)))
    dataset = spec_dataset(spec)
    batch = collate([dataset[i] for i in range(4)])
    assert batch["image"].shape == (4, 3, 16, 16)
    assert batch["text"]["ids"].shape == (4, 40) and batch["text"]["mask"].dtype == torch.bool
    assert batch["label"].dtype == torch.long and batch["label"].shape == (4,)
    loader = torch.utils.data.DataLoader(dataset, batch_size=4, num_workers=1,  # type: ignore[arg-type]
                                         collate_fn=Collator.for_model(model))
    from_worker = next(iter(loader))
    assert torch.equal(from_worker["image"], batch["image"])
    assert torch.equal(from_worker["label"], batch["label"])


def test_progress_bar_output() -> None:
    stream = io.StringIO()
    with Progress(4, samples_per_unit=8, stream=stream, log_interval_s=0.0) as bar:
        for _ in range(4):
            bar.update(1, loss=1.25)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 4 and "step 4/4" in lines[-1] and "loss 1.25" in lines[-1]
    assert "samples/s" in lines[-1] and "ETA 0:00" in lines[-1]
    assert format_duration(3725) == "1:02:05" and format_duration(75.2) == "1:15"


def test_metrics_csv_and_plot(tmp_path: Path) -> None:
    rows = [{"step": 1, "loss": 2.0}, {"step": 2, "loss": float("nan"), "acc": 0.5},
            {"step": 3, "loss": 1.0}]
    assert metrics_csv(rows).splitlines() == ["step,loss,acc", "1,2.0,", "2,nan,0.5", "3,1.0,"]
    path = plot_loss(rows, tmp_path / "loss.png")
    from PIL import Image

    with Image.open(path) as image:
        assert image.size == (720, 420)
    assert nice_ticks(0.0, 1.0) == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0])
    assert nice_ticks(3.2, 4.9) == pytest.approx([3.5, 4.0, 4.5])


def test_a_corrupt_newest_checkpoint_is_set_aside_and_the_one_before_resumes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The resume policy changed (hostile-input issue): warn, rename the corrupt checkpoint
    (never delete it) and resume from the newest good one; the result is still bitwise
    the uninterrupted run."""
    spec = clip_spec(checkpoint_every=2)
    straight = read_tensors(train(spec, tmp_path / "a", progress=False))
    out = tmp_path / "run"
    train(spec, out, progress=False, stop_after=4)
    (out / "checkpoints/step-000004/state.json").write_text("{not json")
    calls = _count_steps(monkeypatch)
    with pytest.warns(UserWarning, match=r"step-000004 is corrupt .*state\.json is unreadable"):
        resumed = read_tensors(train(spec, out, progress=False, resume=True))
    assert calls[0] == 2  # continued after step 2
    assert (out / "checkpoints/step-000004.corrupt-1/state.json").read_text() == "{not json"
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)


def test_when_every_checkpoint_is_corrupt_resume_says_so(tmp_path: Path) -> None:
    out = tmp_path / "run"
    train(clip_spec(), out, progress=False, stop_after=4)
    (out / "checkpoints/step-000004/model.safetensors").write_bytes(b"\x00" * 16)
    with pytest.warns(UserWarning, match="corrupt"), \
            pytest.raises(TrainingError, match=r"no checkpoint .* reads back whole"):
        train(clip_spec(), out, progress=False, resume=True)
    assert (out / "checkpoints/step-000004.corrupt-1").is_dir()


def test_stale_temporary_saves_are_removed_at_the_next_start(tmp_path: Path) -> None:
    out = tmp_path / "run"
    train(clip_spec(), out, progress=False, stop_after=4)
    stale = out / "checkpoints/.tmp-step-000006-12345"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"half")
    train(clip_spec(), out, progress=False, resume=True)
    assert not stale.exists()


@pytest.mark.parametrize("artefact", ["model.safetensors", "metrics.jsonl", "spec.yaml"])
def test_a_finished_runs_files_are_never_overwritten_without_overwrite(
        tmp_path: Path, artefact: str) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / artefact).write_text("precious")
    with pytest.raises(TrainingError, match=rf"earlier run's files \({artefact}\).*--overwrite"):
        train(clip_spec(), out, progress=False)
    assert (out / artefact).read_text() == "precious"
    if artefact == "model.safetensors":
        with pytest.raises(TrainingError, match="--overwrite"):
            train(clip_spec(), out, progress=False, resume=True)
    train(clip_spec(), out, progress=False, overwrite=True)
    assert (out / "model.safetensors").read_bytes()[:8] != b"precious"

"""Training beyond one process: torchrun DDP/FSDP2 on CPU (gloo), a killed rank restarted
by torchrun, absent modalities under DDP; and in one process gradient accumulation,
fp16 with a scaler, activation checkpointing, frozen parts, the non-finite policy,
streaming (webdataset) data and bitwise resume with all of them.

The multi-process tests start ``python -m torch.distributed.run`` on loopback only: one
``-m mmcore train`` run with a crash, and one script running several trainings in one
launch (each launch costs seconds of imports on a busy machine).
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from tiny_specs import DATA, IMAGE, TEXT

import mmcore
from mmcore.checkpoint import read_tensors
from mmcore.data import Collator, ResumableSampler, StepBatches, spec_dataset
from mmcore.errors import SpecError
from mmcore.model import MultimodalModel
from mmcore.spec import ModelSpec
from mmcore.training import (
    TrainingError,
    checkpoint_encoders,
    latest_checkpoint,
    make_run,
    read_metrics,
    seed_everything,
    train,
    train_step,
)

TRAIN = {"steps": 6, "batch_size": 8, "lr": 3e-3, "warmup_steps": 2, "log_every": 1,
         "checkpoint_every": 2}


def clip_data(**train: Any) -> dict[str, Any]:
    return {"name": "clip-ddp", "modalities": {"image": IMAGE, "text": TEXT},
            "fusion": {"type": "late", "embed_dim": 16,
                       "pooling": {"image": "cls", "text": "eot"}},
            "objectives": {"contrastive": {"type": "contrastive", "pairs": [["image", "text"]]}},
            "data": DATA, "train": {**TRAIN, **train}}


def classifier_data(dropout: float = 0.0, **train: Any) -> dict[str, Any]:
    """A per-sample objective: a batch's loss is the mean of its samples' losses."""
    return {"name": "perceiver-ddp", "modalities": {"image": IMAGE, "text": TEXT},
            "fusion": {"type": "perceiver", "width": 16, "num_latents": 4, "layers": 1,
                       "heads": 2},
            "heads": {"cls": {"type": "classifier", "num_classes": 36, "dropout": dropout}},
            "objectives": {"ce": {"type": "classification", "head": "cls"}},
            "data": DATA, "train": {**TRAIN, **train}}


def spec_of(data: dict[str, Any]) -> ModelSpec:
    return mmcore.load_spec(data)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _torchrun(args: list[str], *, cwd: Path, env: dict[str, str] | None = None,
              restarts: int = 0) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
               "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
               "--max-restarts", str(restarts), "--monitor-interval", "0.1", *args]
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    with subprocess.Popen(command, cwd=cwd, env=full_env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, start_new_session=True) as proc:
        try:
            out, err = proc.communicate(timeout=240)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # torchrun and the workers it started
            out, err = proc.communicate()
    assert proc.returncode == 0, out[-3000:] + err[-6000:]
    return subprocess.CompletedProcess(command, proc.returncode, out, err)


def _losses(run: Path) -> list[float]:
    return [r["loss"] for r in read_metrics(run)]


def _same(a: Path, b: Path) -> bool:
    ta, tb = read_tensors(a), read_tensors(b)
    return ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)


# --- torchrun: the CLI with a killed rank -------------------------------------------------


@pytest.fixture(scope="module")
def restarted_cli_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``torchrun --max-restarts 1 -m mmcore train``; rank 1 dies before step 5, after the
    checkpoint of step 4 (and with one at step 2 before it)."""
    root = tmp_path_factory.mktemp("ddp-cli")
    (root / "clip.yaml").write_text(yaml.safe_dump(clip_data()))
    _torchrun(["-m", "mmcore", "train", "clip.yaml", "--out", "run", "--no-progress"],
              cwd=root, env={"MMCORE_TEST_CRASH_AT": "1:5"}, restarts=1)
    return root / "run"


SCRIPT = textwrap.dedent('''
    """Several trainings in one torchrun launch; rank 0 writes results.json."""
    import json, sys, warnings
    from pathlib import Path

    import torch
    import torch.distributed as dist
    import yaml

    import mmcore
    import mmcore.training.data as training_data
    import mmcore.training.loop as train_module
    from mmcore.data import Collator, spec_dataset
    from mmcore.model import MultimodalModel
    from mmcore.parallel import ParallelError

    out = Path(sys.argv[1])
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    warnings.simplefilter("ignore")
    results = {}
    load = lambda name: mmcore.load_spec(yaml.safe_load((out / name).read_text()))

    # DDP without a crash: the restarted CLI run must match it bitwise
    train_module.train(load("clip.yaml"), out / "ddp", progress=False)
    # a per-sample objective, 2 micro-batches per rank: as in one process
    train_module.train(load("classifier.yaml"), out / "ddp-classifier", progress=False)

    # FSDP2: straight, and 3 steps + resume + 3 (bitwise); a checkpoint loads in one process
    fsdp = load("clip-fsdp.yaml")
    train_module.train(fsdp, out / "fsdp", progress=False)
    train_module.train(fsdp, out / "fsdp-resumed", progress=False, stop_after=4)
    train_module.train(fsdp, out / "fsdp-resumed", progress=False, resume=True)

    # three modalities; "sketch" is absent from some ranks' batches
    presence = []

    class SometimesNoSketch(Collator):
        def __call__(self, items):
            batch = super().__call__(items)
            if int(batch["label"][0]) % 2:
                del batch["sketch"]
            presence.append("sketch" in batch)
            return batch

    class WithSketch:
        def __init__(self, base):
            self.base = base

        def __len__(self):
            return len(self.base)

        def __getitem__(self, i):
            item = dict(self.base[i])
            item["sketch"] = item["image"].transpose(0)  # mirrored
            return item

    # a nan loss on rank 1 only: both ranks skip that update and stay identical
    original_loss = MultimodalModel.loss
    calls = [0]

    def poisoned(self, batch, output=None):
        terms = original_loss(self, batch, output)
        calls[0] += 1
        if rank == 1 and calls[0] == 3:
            terms["loss"] = terms["loss"] * float("nan")
        return terms

    original_save = train_module.save_checkpoint
    sums = []

    def save_and_sum(run):  # each rank's own weights, not the file rank 0 writes
        sums.append(float(sum(p.double().sum() for p in run.model.parameters())))
        return original_save(run)

    MultimodalModel.loss, train_module.save_checkpoint = poisoned, save_and_sum
    train_module.train(load("clip-skip.yaml"), out / "skip", progress=False)
    MultimodalModel.loss, train_module.save_checkpoint = original_loss, original_save
    everyone = [None, None]
    dist.all_gather_object(everyone, sums)
    results["skip_sums"] = everyone

    # streaming data over uneven shards: 18 samples for rank 0, 12 for rank 1
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train_module.train(load("stream.yaml"), out / "stream", progress=False)
    rereads = [None, None]
    dist.all_gather_object(rereads, [str(w.message) for w in caught
                                     if "reading it again" in str(w.message)])
    results["stream_rereads"] = rereads

    three = load("three.yaml")
    data = WithSketch(spec_dataset(three))
    training_data.Collator = SometimesNoSketch
    train_module.train(three, out / "three", progress=False, dataset=data)
    everyone = [None, None]
    dist.all_gather_object(everyone, presence)
    steps = list(zip(*everyone))
    results["sketch_on_one_rank_only"] = sum(a != b for a, b in steps)
    results["sketch_on_no_rank"] = sum(not a and not b for a, b in steps)
    fsdp_three = three.model_copy(update={"train": three.train.model_copy(
        update={"strategy": "fsdp"})})
    try:
        train_module.train(fsdp_three, out / "three-fsdp", progress=False, dataset=data)
    except ParallelError as exc:
        results["fsdp_absent_modality"] = str(exc)
    training_data.Collator = Collator
    if rank == 0:
        (out / "results.json").write_text(json.dumps(results))
    dist.barrier()
    dist.destroy_process_group()
''')


def three_data() -> dict[str, Any]:
    """Three modalities, with bf16 autocast and checkpointed encoders."""
    sketch = {**IMAGE}
    data = clip_data(steps=6, checkpoint_every=6, precision="bf16",
                     activation_checkpointing=True)
    data["name"] = "three-modalities"
    data["modalities"] = {"image": IMAGE, "text": TEXT, "sketch": sketch}
    data["fusion"] = {"type": "late", "embed_dim": 16,
                      "pooling": {"image": "cls", "text": "eot", "sketch": "cls"}}
    data["objectives"] = {"contrastive": {"type": "contrastive",
                                          "pairs": [["image", "text"], ["sketch", "text"]]}}
    return data


@pytest.fixture(scope="module")
def script_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ddp-script")
    (root / "run.py").write_text(SCRIPT)
    specs = {"clip.yaml": clip_data(), "classifier.yaml": classifier_data(grad_accum_steps=2),
             "clip-fsdp.yaml": clip_data(strategy="fsdp"), "three.yaml": three_data(),
             "clip-skip.yaml": clip_data(nonfinite="skip", steps=4),
             "stream.yaml": stream_data(_write_shapes_shards(root, 30), steps=9)}
    for name, data in specs.items():
        (root / name).write_text(yaml.safe_dump(data))
    _torchrun(["run.py", str(root)], cwd=root)
    return root


def test_killed_rank_restarts_and_resumes_bitwise(restarted_cli_run: Path,
                                                  script_runs: Path) -> None:
    run = restarted_cli_run
    assert (run / ".crashed-rank1").read_text() == "4\n"  # rank 1 really died before step 5
    assert latest_checkpoint(run) == run / "checkpoints/step-000006"
    assert [r["step"] for r in read_metrics(run)] == [1, 2, 3, 4, 5, 6]
    state = json.loads((run / "checkpoints/step-000006/state.json").read_text())
    assert state["step"] == 6 and state["world_size"] == 2 and state["strategy"] == "ddp"
    assert len(state["rng_ranks"]) == 2 and state["rng_ranks"][0] != state["rng_ranks"][1]
    # resumed from the step-4 checkpoint: exactly the parameters of the uncrashed DDP run
    assert _same(run / "model.safetensors", script_runs / "ddp/model.safetensors")
    model = mmcore.load(run)  # evaluable: rebuilds from its own spec
    assert isinstance(model, MultimodalModel)


def test_ddp_loss_decreases_like_one_process(restarted_cli_run: Path, script_runs: Path,
                                             tmp_path: Path) -> None:
    ddp = _losses(restarted_cli_run)
    single = _losses(train(spec_of(clip_data()), tmp_path / "one", progress=False).parent)
    # local negatives: 4 per rank against 8 in one process, so compare the relative drop
    assert ddp[-1] < 0.95 * ddp[0] and single[-1] < 0.95 * single[0]
    assert ddp[-1] / ddp[0] == pytest.approx(single[-1] / single[0], abs=0.05)
    # a per-sample loss: two ranks x two micro-batches of 2 follow one process of 8
    one = _losses(train(spec_of(classifier_data()), tmp_path / "cls", progress=False).parent)
    assert len(one) == 6
    assert _losses(script_runs / "ddp-classifier") == pytest.approx(one, abs=2e-4)


def test_fsdp_trains_like_ddp_and_resumes_bitwise(script_runs: Path) -> None:
    fsdp, ddp = _losses(script_runs / "fsdp"), _losses(script_runs / "ddp")
    assert fsdp == pytest.approx(ddp, abs=2e-4)
    assert _same(script_runs / "fsdp/model.safetensors",
                 script_runs / "fsdp-resumed/model.safetensors")
    state = json.loads((script_runs / "fsdp/checkpoints/step-000006/state.json").read_text())
    assert state["strategy"] == "fsdp"
    assert "state.0.exp_avg" in read_tensors(
        script_runs / "fsdp/checkpoints/step-000006/optimizer.safetensors")
    assert isinstance(mmcore.load(script_runs / "fsdp"), MultimodalModel)


def test_a_nan_on_one_rank_skips_the_step_on_every_rank(script_runs: Path) -> None:
    results = json.loads((script_runs / "results.json").read_text())
    assert [r["skipped_steps"] for r in read_metrics(script_runs / "skip")] == [0, 0, 1, 1]
    first, second = results["skip_sums"]  # at the checkpoints of steps 2 and 4, per rank
    assert len(first) == 2 and first == second  # the ranks stayed identical


def test_streaming_ranks_make_equal_steps_over_uneven_shards(script_runs: Path) -> None:
    results = json.loads((script_runs / "results.json").read_text())
    # 30 samples // batch 4 = 7 steps per epoch: rank 1's 12 samples give 6 micro-batches
    # of 2 where 7 are needed, so it reads its shards again instead of stopping early
    assert results["stream_rereads"][0] == []
    assert results["stream_rereads"][1] == [
        "rank 1: its share of epoch 0 ended after 6 micro-batches, before steps_per_epoch; "
        "reading it again so every rank makes the same number of steps"]
    assert [r["step"] for r in read_metrics(script_runs / "stream")] == [3, 6, 9]
    state = json.loads((script_runs / "stream/checkpoints/step-000009/state.json").read_text())
    assert state["data"] == {"kind": "stream", "epoch": 1, "epoch_step": 2,
                             "steps_per_epoch": 7}


def test_absent_modality_trains_under_ddp_but_not_fsdp(script_runs: Path) -> None:
    results = json.loads((script_runs / "results.json").read_text())
    assert results["sketch_on_one_rank_only"] >= 1  # the case that hangs a naive DDP
    assert results["sketch_on_no_rank"] >= 1
    assert [r["step"] for r in read_metrics(script_runs / "three")] == [1, 2, 3, 4, 5, 6]
    assert "absent on some ranks only" in results["fsdp_absent_modality"]
    seed_everything(0)
    fresh = mmcore.build(spec_of(three_data())).state_dict()
    trained = read_tensors(script_runs / "three/model.safetensors")
    moved = [k for k in fresh if k.startswith("encoders.sketch")
             and not torch.equal(fresh[k], trained[k])]
    assert moved  # the sketch tower trained in the steps that had it


# --- one process --------------------------------------------------------------------------


def _double(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return x.double() if x.is_floating_point() else x
    if isinstance(x, dict):
        return {k: _double(v) for k, v in x.items()}
    return x


def _gradients(spec: ModelSpec, micro: list[dict[str, Any]], tmp: Path) -> dict[str, Any]:
    seed_everything(0)
    model = mmcore.build(spec).double()
    run = make_run(spec, tmp, model, spec_dataset(spec), total=4, device="cpu")
    train_step(run, micro)
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_grad_accumulation_equals_the_bigger_batch(tmp_path: Path) -> None:
    spec = spec_of(classifier_data(grad_clip=None))
    collate = Collator.for_model(mmcore.build(spec))
    data = spec_dataset(spec)
    whole = _double(collate([data[i] for i in range(8)]))
    halves = [_double(collate([data[i] for i in range(j, j + 4)])) for j in (0, 4)]
    big = _gradients(spec, [whole], tmp_path)
    accumulated = _gradients(spec_of(classifier_data(grad_clip=None, grad_accum_steps=2)),
                             halves, tmp_path)
    assert big.keys() == accumulated.keys() and len(big) > 10
    for name in big:  # float64: equal up to rounding
        torch.testing.assert_close(accumulated[name], big[name], rtol=1e-9, atol=1e-12)


def test_step_batches_split_one_global_stream() -> None:
    def shares(rank: int, world: int, micro: int) -> list[list[int]]:
        batches = StepBatches(ResumableSampler(50, seed=1), batch_size=8, rank=rank,
                              world_size=world, micro_batches=micro)
        return list(itertools.islice(batches, 2 * micro))

    one = shares(0, 1, 1)
    # two ranks x two micro-batches cover exactly the one-process step batches
    parts = [shares(r, 2, 2) for r in (0, 1)]
    for step in range(2):
        together = [i for r in (0, 1) for m in (0, 1) for i in parts[r][2 * step + m]]
        assert together == one[step]
    with pytest.raises(ValueError, match="does not divide"):
        StepBatches(ResumableSampler(50), batch_size=8, world_size=3)


def test_activation_checkpointing_gives_the_same_gradients() -> None:
    spec = spec_of(clip_data())
    batch = Collator.for_model(mmcore.build(spec))(
        [spec_dataset(spec)[i] for i in range(6)])
    grads, calls = [], []
    for checkpointed in (False, True):
        seed_everything(0)
        model = mmcore.build(spec)
        if checkpointed:
            assert checkpoint_encoders(model, ["image"]) == ["encoders.image"]
        mlp = model.encoders["image"].stack.blocks[0].mlp
        counter: list[int] = []
        mlp.register_forward_pre_hook(lambda *_, seen=counter: seen.append(1))
        model.loss(batch)["loss"].backward()
        calls.append(len(counter))
        grads.append({n: p.grad for n, p in model.named_parameters()})
    assert calls == [1, 2]  # recomputed in backward
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, rtol=0, atol=1e-7)


def test_frozen_parts_stay_bitwise_unchanged(tmp_path: Path) -> None:
    spec = spec_of(clip_data(steps=4, freeze=["modalities.text", "objectives.contrastive"]))
    trained = read_tensors(train(spec, tmp_path / "run", progress=False))
    seed_everything(0)
    fresh = mmcore.build(spec).state_dict()
    frozen = [k for k in fresh if k.startswith(("tokenizers.text", "encoders.text",
                                                "objectives."))]
    assert len(frozen) > 5
    assert all(torch.equal(fresh[k], trained[k]) for k in frozen)
    assert not torch.equal(fresh["encoders.image.stack.blocks.0.mlp.fc1.weight"],
                           trained["encoders.image.stack.blocks.0.mlp.fc1.weight"])
    assert "modalities.image.encoder" in spec.module_paths()
    with pytest.raises(SpecError, match=r"unknown component 'modalities\.txt'"):
        train(spec_of(clip_data(freeze=["modalities.txt"])), tmp_path / "bad")


def _poison_calls(monkeypatch: pytest.MonkeyPatch, bad: set[int]) -> None:
    original = MultimodalModel.loss
    calls = itertools.count(1)

    def poisoned(self: MultimodalModel, batch: Any, output: Any = None) -> dict[str, Any]:
        terms = original(self, batch, output)
        if next(calls) in bad:
            terms["loss"] = terms["loss"] * float("nan")
        return terms

    monkeypatch.setattr(MultimodalModel, "loss", poisoned)


def test_nonfinite_skip_counts_and_goes_on(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    _poison_calls(monkeypatch, {3})
    spec = spec_of(clip_data(steps=4, nonfinite="skip", checkpoint_every=4))
    with pytest.warns(UserWarning, match="loss is nan at step 3; skipped this update"):
        final = train(spec, tmp_path / "run", progress=False)
    rows = read_metrics(tmp_path / "run")
    assert [r["skipped_steps"] for r in rows] == [0, 0, 1, 1]
    assert np.isnan(rows[2].get("loss", float("nan")))  # no loss logged for the skipped step
    assert all(np.isfinite(r["loss"]) for i, r in enumerate(rows) if i != 2)
    assert all(torch.isfinite(t).all() for t in read_tensors(final).values())
    state = json.loads((tmp_path / "run/checkpoints/step-000004/state.json").read_text())
    assert state["skipped_steps"] == 1


def test_nonfinite_skip_stops_past_the_limit(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    _poison_calls(monkeypatch, {2, 3})
    spec = spec_of(clip_data(steps=4, nonfinite="skip", max_skipped_steps=1))
    with pytest.warns(UserWarning), pytest.raises(
            TrainingError, match=r"2 updates skipped .* more than max_skipped_steps 1"):
        train(spec, tmp_path / "run", progress=False)


def test_bitwise_resume_with_accumulation_fp16_checkpointing_and_freeze(
        tmp_path: Path) -> None:
    """20 steps in one go == 10, resume, 10: with dropout, 2 micro-batches, fp16 autocast
    and its gradient scaler, a checkpointed encoder and a frozen one."""
    spec = spec_of(classifier_data(dropout=0.3, steps=20, checkpoint_every=10, log_every=5,
                                   batch_size=4, grad_accum_steps=2, precision="fp16",
                                   activation_checkpointing=["image"],
                                   freeze=["modalities.text.encoder"]))
    straight = train(spec, tmp_path / "a", progress=False)
    train(spec, tmp_path / "b", progress=False, stop_after=10)
    resumed = train(spec, tmp_path / "b", progress=False, resume=True)
    assert _same(straight, resumed)
    state = json.loads((tmp_path / "b/checkpoints/step-000010/state.json").read_text())
    assert state["scaler"]["scale"] > 0 and "_growth_tracker" in state["scaler"]
    rows = read_metrics(tmp_path / "a")
    assert [r["step"] for r in rows] == [5, 10, 15, 20]
    assert all(r["loss_scale"] >= 2.0**15 and np.isfinite(r["loss"]) for r in rows)


def _write_shapes_shards(root: Path, n: int) -> Path:
    from mmcore_webdataset.writing import write_shards

    src = root / "src"
    src.mkdir()
    data = spec_dataset(spec_of(clip_data()))
    for i in range(n):
        item = data[i]
        item["image"].save(src / f"{i:04d}.png")
        (src / f"{i:04d}.txt").write_text(item["text"])
    write_shards(src, root / "shards", shard_size=6)
    return root / "shards"


def stream_data(shards: Path, **train: Any) -> dict[str, Any]:
    data = clip_data(**{"batch_size": 4, "log_every": 3, "checkpoint_every": 3, **train})
    data["data"] = {"type": "webdataset", "shards": str(shards),
                    "modalities": {"image": ["png"], "text": ["txt"]}, "shuffle_buffer": 4}
    return data


def test_streaming_data_epochs_and_resume_at_epoch_boundary(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mmcore_webdataset.reading import ShardDataset

    spec = spec_of(stream_data(_write_shapes_shards(tmp_path, 24), steps=8, checkpoint_every=6,
                               log_every=2))
    epochs: list[int] = []
    original = ShardDataset.set_epoch
    monkeypatch.setattr(ShardDataset, "set_epoch",
                        lambda self, e: (epochs.append(e), original(self, e))[1])
    straight = train(spec, tmp_path / "a", progress=False)
    assert epochs == [0, 1]  # 24 samples / batch 4 = 6 steps per epoch
    assert [r["epoch"] for r in read_metrics(tmp_path / "a")] == pytest.approx(
        [2 / 6, 4 / 6, 1.0, 1 + 2 / 6])
    state = json.loads((tmp_path / "a/checkpoints/step-000006/state.json").read_text())
    assert state["data"] == {"kind": "stream", "epoch": 1, "epoch_step": 0,
                             "steps_per_epoch": 6} and "sampler" not in state
    train(spec, tmp_path / "b", progress=False, stop_after=6)  # an epoch boundary
    assert _same(straight, train(spec, tmp_path / "b", progress=False, resume=True))
    # mid-epoch: resumes with the next epoch, and says so
    train(spec, tmp_path / "c", progress=False, stop_after=2)
    epochs.clear()
    with pytest.warns(UserWarning, match="resumes at an epoch boundary"):
        train(spec, tmp_path / "c", progress=False, resume=True)
    assert epochs == [1]  # steps 3-8 are all of epoch 1; the rest of epoch 0 is skipped
    state = json.loads((tmp_path / "c/checkpoints/step-000008/state.json").read_text())
    assert (state["data"]["epoch"], state["data"]["epoch_step"]) == (2, 0)


def test_tensorboard_writer_or_a_clear_message(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    import types

    spec = spec_of(clip_data(steps=2, log_every=1, tensorboard=True))
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # not installed
    with pytest.warns(UserWarning, match="pip install tensorboard"):
        train(spec, tmp_path / "plain", progress=False)
    assert len(read_metrics(tmp_path / "plain")) == 2
    scalars: list[tuple[str, float, int]] = []

    class Writer:
        def __init__(self, log_dir: str) -> None:
            self.log_dir = log_dir

        def add_scalar(self, tag: str, value: float, step: int) -> None:
            scalars.append((tag, value, step))

        def flush(self) -> None: ...

        def close(self) -> None:
            scalars.append(("closed", 0.0, 0))

    fake = types.ModuleType("torch.utils.tensorboard")
    fake.SummaryWriter = Writer  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", fake)
    train(spec, tmp_path / "tb", progress=False)
    losses = [(v, s) for t, v, s in scalars if t == "train/loss"]
    assert losses == [(r["loss"], r["step"]) for r in read_metrics(tmp_path / "tb")]
    assert scalars[-1][0] == "closed"


def test_cli_train_options_reach_the_spec(tmp_path: Path) -> None:
    from mmcore.cli import main

    (tmp_path / "clip.yaml").write_text(yaml.safe_dump(clip_data(steps=2)))
    code = main(["train", str(tmp_path / "clip.yaml"), "--out", str(tmp_path / "run"),
                 "--no-progress", "--grad-accum", "2", "--precision", "bf16",
                 "--strategy", "fsdp"])
    assert code == 0
    saved = mmcore.load_spec(tmp_path / "run/spec.yaml").train
    assert (saved.grad_accum_steps, saved.precision, saved.strategy) == (2, "bf16", "fsdp")
    assert code != main(["train", str(tmp_path / "clip.yaml"), "--out", str(tmp_path / "x"),
                         "--grad-accum", "3"])  # 8 does not split into 3 micro-batches

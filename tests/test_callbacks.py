"""Callbacks (hook order, read access, stopping), loggers as callbacks, the logger
registry and the message for a logger whose package is missing."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import torch
from test_optim import clip_spec

from mmcore.errors import RegistryError, SpecError
from mmcore.plugins import _Collector
from mmcore.registry import Registry
from mmcore.training import read_metrics, train
from mmcore.training.callbacks import Callback
from mmcore.training.loggers import make_loggers
from mmcore.training.state import Run
from mmcore.validation import check


class Recorder(Callback):
    def __init__(self, stop_at: int | None = None) -> None:
        self.calls: list[tuple[str, int]] = []
        self.stop_at = stop_at
        self.seen: dict[str, Any] = {}

    def on_train_start(self, run: Run) -> None:
        self.calls.append(("train_start", run.step))
        self.seen.update(spec=run.spec.name, out=run.out_dir,
                         model=isinstance(run.model, torch.nn.Module))

    def on_step_end(self, run: Run, terms: Mapping[str, float]) -> None:
        self.calls.append(("step_end", run.step))
        assert "loss" in terms and "lr" in terms
        if run.step == self.stop_at:
            run.stop("enough")

    def on_log(self, run: Run, row: Mapping[str, Any]) -> None:
        self.calls.append(("log", row["step"]))

    def on_eval_end(self, run: Run, metrics: Mapping[str, float]) -> None:
        self.calls.append(("eval_end", run.step))
        assert "eval/loss" in metrics

    def on_checkpoint(self, run: Run, path: Path) -> None:
        self.calls.append(("checkpoint", run.step))
        assert (path / "COMPLETE").is_file()

    def on_train_end(self, run: Run) -> None:
        self.calls.append(("train_end", run.step))


def test_hooks_fire_in_order(tmp_path: Path) -> None:
    rec = Recorder()
    spec = clip_spec(steps=4, log_every=2, checkpoint_every=2, eval_every=2, eval_limit=8)
    train(spec, tmp_path / "run", progress=False, callbacks=[rec])
    assert rec.calls == [
        ("train_start", 0), ("step_end", 1), ("step_end", 2), ("log", 2), ("log", 2),
        ("eval_end", 2), ("checkpoint", 2), ("step_end", 3), ("step_end", 4), ("log", 4),
        ("log", 4), ("eval_end", 4), ("checkpoint", 4), ("train_end", 4)]
    assert rec.seen == {"spec": "clip-test", "out": tmp_path / "run", "model": True}


def test_a_callback_stops_the_run(tmp_path: Path) -> None:
    rec = Recorder(stop_at=3)
    out = train(clip_spec(steps=8, log_every=2), tmp_path / "run", progress=False,
                callbacks=[rec])
    assert out == tmp_path / "run/model.safetensors"  # finished, final model written
    assert [r["step"] for r in read_metrics(tmp_path / "run")] == [2, 3]
    assert rec.calls[-2:] == [("checkpoint", 3), ("train_end", 3)]
    state = json.loads((tmp_path / "run/checkpoints/step-000003/state.json").read_text())
    assert state["stopped"] == "enough"
    # a resume of a stopped run does not train on
    calls = Recorder()
    train(clip_spec(steps=8, log_every=2), tmp_path / "run", progress=False, resume=True,
          callbacks=[calls])
    assert calls.calls == [("train_start", 3), ("train_end", 3)]


def test_loggers_write_todays_files(tmp_path: Path) -> None:
    train(clip_spec(steps=2, log_every=1, loggers=["jsonl", "csv"]), tmp_path / "r",
          progress=False)
    assert (tmp_path / "r/metrics.jsonl").is_file() and (tmp_path / "r/metrics.csv").is_file()
    assert not (tmp_path / "r/loss.png").exists()  # png not asked for


def _registry_with(requires: str | None) -> Registry:
    registry = Registry()
    collector = _Collector("fake-plugin", "1.0")
    collector.for_kind("logger")("fake", Recorder, requires=requires, summary="a fake")
    for entry in collector.entries:
        registry.add(entry)
    registry.unavailable.update(collector.unavailable)
    return registry


def test_a_registered_logger_is_made_by_name() -> None:
    registry = _registry_with(None)
    loggers = make_loggers(clip_spec(loggers=["jsonl", "fake"]).train, registry)
    assert [type(x).__name__ for x in loggers] == ["JsonlLogger", "Recorder"]


def test_a_logger_without_its_package_is_absent_and_named_when_asked_for() -> None:
    registry = _registry_with("mmcore_no_such_package_xyz")
    assert registry.names("logger") == []
    with pytest.raises(RegistryError, match="needs the 'mmcore_no_such_package_xyz' package, "
                                            "which is not installed"):
        make_loggers(clip_spec(loggers=["fake"]).train, registry)
    with pytest.raises(SpecError) as err:
        check(clip_spec(loggers=["fake"]), registry)
    assert "train.loggers.0" in str(err.value) and "pip install" in str(err.value)


def test_wandb_and_mlflow_are_named_when_not_installed() -> None:
    import importlib.util

    missing = [n for n in ("wandb", "mlflow") if importlib.util.find_spec(n) is None]
    for name in missing:
        with pytest.raises(SpecError, match=f"needs the '{name}' package"):
            check(clip_spec(loggers=[name]))
    with pytest.raises(SpecError, match="unknown logger 'wnadb'"):
        check(clip_spec(loggers=["wnadb"]))

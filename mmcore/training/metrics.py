"""Metric rows: the running window between log rows, reading and rewriting ``metrics.jsonl``
and rows as CSV. Writing them is the loggers' job (:mod:`mmcore.training.loggers`)."""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mmcore.checkpoint import write_text
from mmcore.training.state import Run

METRICS = "metrics.jsonl"


class Window:
    """Running means of the step terms between two log rows."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}
        self.samples = 0
        self.latest: dict[str, float] = {}
        self.started = time.perf_counter()

    def add(self, terms: Mapping[str, float], samples: int) -> None:
        """Add one step's scalar terms, made from ``samples`` samples."""
        for key, value in terms.items():
            self.sums[key] = self.sums.get(key, 0.0) + value
            self.counts[key] = self.counts.get(key, 0) + 1
        self.latest = dict(terms)
        self.samples += samples

    def last(self, key: str) -> float:
        """The latest step's value of ``key`` (nan when it had none)."""
        return self.latest.get(key, float("nan"))

    def row(self, run: Run) -> dict[str, Any]:
        """The log row of this window; adds its time to ``run.elapsed``."""
        seconds = time.perf_counter() - self.started
        run.elapsed += seconds
        means = {k: v / self.counts[k] for k, v in self.sums.items()}
        means["lr"] = self.latest.get("lr", float("nan"))
        row = {"step": run.step, **means,
               "samples_per_s": self.samples / seconds if seconds > 0 else 0.0,
               "epoch": run.epoch_progress(), "elapsed_s": run.elapsed}
        if run.cfg.nonfinite == "skip" or run.skipped:
            row["skipped_steps"] = run.skipped
        return row


def read_metrics(out_dir: str | Path) -> list[dict[str, Any]]:
    """The rows of ``metrics.jsonl`` (an unreadable trailing line is skipped)."""
    path = Path(out_dir) / METRICS
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def log_row(run: Run, row: dict[str, Any]) -> None:
    """Keep ``row`` and hand it to the loggers and callbacks (``on_log``)."""
    run.metrics.append(row)
    if run.callbacks is not None:
        run.callbacks.fire("on_log", run, row)


def rewrite_metrics(run: Run) -> None:
    """Replace ``metrics.jsonl`` with ``run.metrics`` (a resume drops later rows)."""
    write_text(run.out_dir / METRICS, "".join(json.dumps(r) + "\n" for r in run.metrics))


def metrics_csv(rows: Sequence[Mapping[str, Any]]) -> str:
    """Rows as CSV; the columns are every key, in order of first appearance."""
    columns: dict[str, None] = {}
    for row in rows:
        columns.update(dict.fromkeys(row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def write_spec(run: Run) -> None:
    """``spec.yaml``: the run's spec, with the schedule length it trains for."""
    import yaml

    data = run.spec.to_dict()
    data["train"]["steps"] = run.total
    run.out_dir.mkdir(parents=True, exist_ok=True)
    write_text(run.out_dir / "spec.yaml", yaml.safe_dump(data, sort_keys=False))

"""The GPU suite's code paths, on CPU at tiny sizes (``bench/gpu_suite.py --dry-run``)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SUITE = Path(__file__).resolve().parents[1] / "bench" / "gpu_suite.py"


def test_gpu_suite_dry_run_runs_every_step(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, str(SUITE), "--dry-run", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads((tmp_path / "gpu_suite.json").read_text())
    assert results["dry_run"] is True
    steps = ("correctness", "attention", "contrastive", "clip", "whisper")
    assert {s: results[s]["status"] for s in steps} == dict.fromkeys(steps, "ok")
    assert not results["correctness"]["failed"]
    checked = {(r["op"], r["candidate"]) for r in results["correctness"]["rows"]}
    assert ("contrastive_loss", "chunked") in checked and ("odd cross", "reference") in checked
    assert {r["model"] for r in results["whisper"]["rows"]} == {"mmcore", "transformers"}
    table = (tmp_path / "gpu_suite.md").read_text()
    assert "DRY RUN" in table and "### clip: ok" in table

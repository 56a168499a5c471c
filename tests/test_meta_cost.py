"""A component without a cost function is measured on the meta device, not left n/a."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import yaml
from test_cost import TINY_SPEC

import mmcore
from mmcore.analysis import analyse
from mmcore.meta_cost import NOTE
from mmcore.plugins import get_registry
from mmcore.registry import Registry


def _without_cost(kind: str, name: str) -> Registry:
    registry = Registry()
    for entry in get_registry().list():
        drop = entry.kind == kind and entry.name == name
        registry.add(dataclasses.replace(entry, cost=None) if drop else entry)
    return registry


@pytest.mark.parametrize(("kind", "name", "path"), [
    ("encoder", "vit", "modalities.image.encoder"),
    ("tokenizer", "patch-embedding", "modalities.image.tokenizer"),  # from its example
    ("fusion", "late", "fusion"),
])
def test_measured_cost_equals_the_analytic_one(kind: str, name: str, path: str) -> None:
    spec = mmcore.load_spec(yaml.safe_load(TINY_SPEC))
    full = analyse(spec)
    measured = analyse(spec, _without_cost(kind, name))
    row = {r.path: r for r in measured.components}[path]
    reference = {r.path: r for r in full.components}[path]
    assert row.note == NOTE
    assert row.parameters == reference.parameters and row.flops == reference.flops
    assert not measured.partial  # the totals stay whole
    assert measured.parameters == full.parameters and measured.flops == full.flops


def test_inspect_shows_the_note(capsys: pytest.CaptureFixture[str],
                                monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    from mmcore import plugins
    from mmcore.cli import main

    registry = _without_cost("encoder", "vit")
    monkeypatch.setattr(plugins, "get_registry", lambda: registry)
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY_SPEC, encoding="utf-8")
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    total = next(line for line in out.splitlines() if line.startswith("total"))
    assert "(partial)" not in total
    encoder = next(line for line in out.splitlines()
                   if line.startswith("modalities.image.encoder"))
    assert "n/a" not in encoder
    assert f"modalities.image.encoder: {NOTE}" in out

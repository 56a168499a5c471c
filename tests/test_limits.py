"""Every input limit can be raised for one run by its MMCORE_LIMIT_* variable, a bad value
is a clear error, and docs/reliability.md lists every limit the code declares."""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
import pytest

import mmcore
from mmcore.errors import MMCoreError, SpecError
from mmcore.imaging import to_pil
from mmcore.limits import Limit

MODULES = ["mmcore.spec_yaml", "mmcore.builder", "mmcore.imaging", "mmcore_audio.wav",
           "mmcore_webdataset.reading"]
DOC = Path(__file__).resolve().parent.parent / "docs" / "reliability.md"


def _limits() -> list[Limit]:
    found = []
    for name in MODULES:
        module = importlib.import_module(name)
        found += [v for v in vars(module).values() if isinstance(v, Limit)]
    return found


def test_the_reliability_page_lists_every_limit() -> None:
    text = DOC.read_text(encoding="utf-8")
    limits = _limits()
    assert len(limits) >= 9
    missing = [limit.env for limit in limits if limit.env not in text]
    assert missing == []


def test_a_limit_is_raised_for_one_run_by_its_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    strip = np.zeros((1, 150, 3), np.uint8)
    with pytest.raises(ValueError, match=r"aspect ratio over 100:1 \(raise it with "
                                         r"MMCORE_LIMIT_IMAGE_ASPECT\)"):
        to_pil(strip, 10_000)
    monkeypatch.setenv("MMCORE_LIMIT_IMAGE_ASPECT", "200")
    assert to_pil(strip, 10_000).size == (150, 1)


def test_a_lowered_parameter_ceiling_refuses_a_small_model(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MMCORE_LIMIT_PARAMETERS", "1000")
    with pytest.raises(SpecError, match=r"over the ceiling of 1e\+03 \(raise it with "
                                        r"MMCORE_LIMIT_PARAMETERS\)"):
        mmcore.build("clip-tiny", device="meta")


@pytest.mark.parametrize("value", ["lots", "-5", "0", "nan"])
def test_a_bad_limit_value_is_a_clear_error(monkeypatch: pytest.MonkeyPatch,
                                            value: str) -> None:
    monkeypatch.setenv("MMCORE_LIMIT_SPEC_NODES", value)
    with pytest.raises(MMCoreError, match=rf"MMCORE_LIMIT_SPEC_NODES='{value}' must be a "
                                          r"positive number"):
        mmcore.load_spec("clip-tiny")

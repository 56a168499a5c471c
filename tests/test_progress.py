"""The progress bar: tqdm on a terminal, one plain line per update elsewhere."""

from __future__ import annotations

import io

from mmcore.progress import Progress


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_non_terminal_output_is_one_line_per_update() -> None:
    stream = io.StringIO()  # not a tty: a log file or a pipe
    with Progress(3, desc="train", stream=stream, log_interval_s=0.0) as bar:
        for step in range(3):
            bar.update(1, loss=1.0 / (step + 1))
    lines = stream.getvalue().splitlines()
    assert len(lines) == 3
    assert lines[0].startswith("train step 1/3") and "loss 1" in lines[0]
    assert lines[-1].startswith("train step 3/3") and "loss 0.3333" in lines[-1]
    assert "\r" not in stream.getvalue()  # no carriage returns in a log


def test_non_terminal_output_is_throttled() -> None:
    stream = io.StringIO()
    with Progress(100, stream=stream, log_interval_s=3600.0) as bar:
        for _ in range(100):
            bar.update(1)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2 and "step 100/100" in lines[-1]  # first draw, then the final one


def test_terminal_output_is_a_tqdm_bar() -> None:
    stream = FakeTerminal()
    with Progress(4, desc="eval", unit="item", samples_per_unit=8, stream=stream) as bar:
        assert bar.bar is not None and type(bar.bar).__module__.startswith("tqdm")
        for _ in range(4):
            bar.update(1, loss=0.5)
    text = stream.getvalue()
    assert "\r" in text and "eval" in text and "4/4" in text and "loss=0.5" in text
    assert "samples/s=" in text


def test_disabled_bar_writes_nothing() -> None:
    for stream in (io.StringIO(), FakeTerminal()):
        with Progress(2, stream=stream, enabled=False) as bar:
            bar.update(2)
        assert stream.getvalue() == ""

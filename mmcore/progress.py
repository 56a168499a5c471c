"""A progress bar for stderr: done/total, rate, ETA and a few named values.

On a terminal it is a ``tqdm`` bar (redrawn in place); elsewhere (logs, CI, a pipe) it
prints a plain line now and then, which a log keeps readable where tqdm's carriage
returns would not.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO


def format_duration(seconds: float) -> str:
    """``75.2`` -> ``"1:15"``; ``3725`` -> ``"1:02:05"``."""
    if seconds != seconds or seconds == float("inf"):
        return "?"
    s = round(seconds)
    hours, rest = divmod(s, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _value(v: float | int | str) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


class Progress:
    """``Progress(total, unit="step")``; ``update(n, loss=...)`` after each unit of work.

    ``samples_per_unit`` turns the rate into samples/s (e.g. the batch size).
    """

    def __init__(self, total: int, *, initial: int = 0, desc: str = "", unit: str = "step",
                 samples_per_unit: int = 1, enabled: bool = True,
                 stream: TextIO | None = None, width: int = 24,
                 log_interval_s: float = 10.0) -> None:
        self.total, self.done, self.start_done = max(total, 1), initial, initial
        self.desc, self.unit, self.samples_per_unit = desc, unit, samples_per_unit
        self.enabled, self.width = enabled, width
        self.stream = stream if stream is not None else sys.stderr
        self.interactive = bool(getattr(self.stream, "isatty", lambda: False)())
        self.min_interval = 0.1 if self.interactive else log_interval_s
        self.started = time.perf_counter()
        self.last_draw = -float("inf")
        self.drawn = -1  # ``done`` when last drawn
        self.values: dict[str, float | int | str] = {}
        self.bar: Any = self._tqdm() if enabled and self.interactive else None

    def _tqdm(self) -> Any:
        """The terminal bar: tqdm, counting ``unit`` (samples/s in the postfix)."""
        from tqdm import tqdm

        return tqdm(total=self.total, initial=self.done, desc=self.desc or None,
                    unit=self.unit, file=self.stream, mininterval=self.min_interval,
                    dynamic_ncols=True, leave=True)

    def rate(self) -> float:
        """Units per second since this bar started."""
        elapsed = time.perf_counter() - self.started
        return (self.done - self.start_done) / elapsed if elapsed > 0 else 0.0

    def line(self) -> str:
        frac = min(self.done / self.total, 1.0)
        filled = round(frac * self.width)
        bar = "#" * filled + "-" * (self.width - filled)
        rate = self.rate()
        eta = (self.total - self.done) / rate if rate > 0 else float("inf")
        parts = [f"{self.desc} " if self.desc else "",
                 f"{self.unit} {self.done}/{self.total} [{bar}] {frac * 100:3.0f}%"]
        parts += [f" {k} {_value(v)}" for k, v in self.values.items()]
        if self.samples_per_unit > 1:
            parts.append(f" | {rate * self.samples_per_unit:.0f} samples/s")
        else:
            parts.append(f" | {rate:.2f} {self.unit}/s")
        parts.append(f" | ETA {format_duration(eta)}")
        return "".join(parts)

    def update(self, n: int = 1, **values: float | int | str) -> None:
        self.done += n
        self.values.update(values)
        if self.bar is not None:
            self._update_tqdm(n)
            return
        now = time.perf_counter()
        if now - self.last_draw >= self.min_interval or self.done >= self.total:
            self._draw(now)

    def _update_tqdm(self, n: int) -> None:
        postfix = {k: _value(v) for k, v in self.values.items()}
        if self.samples_per_unit > 1:
            postfix["samples/s"] = f"{self.rate() * self.samples_per_unit:.0f}"
        if postfix:
            self.bar.set_postfix(postfix, refresh=False)
        self.bar.update(n)

    def _draw(self, now: float) -> None:
        """One plain line (non-terminal output)."""
        if not self.enabled:
            return
        self.last_draw, self.drawn = now, self.done
        self.stream.write(self.line() + "\n")
        self.stream.flush()

    def close(self) -> None:
        """Draw the final state (and end the terminal bar)."""
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.close()
            self.bar = None
            return
        if self.drawn != self.done:
            self._draw(time.perf_counter())

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

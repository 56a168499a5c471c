"""Line plots as PNG, drawn with Pillow (no matplotlib): the training loss curve."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

Series = tuple[Sequence[float], Sequence[float]]  # (xs, ys)
PALETTE = ((160, 190, 230), (25, 80, 170), (210, 90, 40), (60, 150, 60))
_MARGIN = (72, 36, 24, 48)  # left, top, right, bottom


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """About ``count`` round tick values (1, 2, 2.5, 5 x 10^k steps) covering [lo, hi]."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return []
    if hi <= lo:
        hi = lo + (abs(lo) or 1.0)
    raw = (hi - lo) / max(count - 1, 1)
    power = 10.0 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    return [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]


def smooth(values: Sequence[float], window: int) -> list[float]:
    """Centred moving average over ``2 * window + 1`` points (shorter at the ends); no lag."""
    out = []
    for i in range(len(values)):
        part = values[max(0, i - window): i + window + 1]
        out.append(sum(part) / len(part))
    return out


def _label(v: float) -> str:
    """A tick label: ``1500`` rather than ``1.5e+03``; 3 significant digits otherwise."""
    if v == int(v) and abs(v) < 1e7:
        return str(int(v))
    return f"{v:.3g}" if 1e-3 <= abs(v) < 1e7 else f"{v:.2e}"


class _Frame:
    """Maps data coordinates to pixels inside the plot margins."""

    def __init__(self, size: tuple[int, int], xr: tuple[float, float],
                 yr: tuple[float, float]) -> None:
        self.left, self.top = _MARGIN[0], _MARGIN[1]
        self.right, self.bottom = size[0] - _MARGIN[2], size[1] - _MARGIN[3]
        self.xr = xr if xr[1] > xr[0] else (xr[0], xr[0] + 1)
        self.yr = yr if yr[1] > yr[0] else (yr[0] - 0.5, yr[0] + 0.5)

    def point(self, x: float, y: float) -> tuple[float, float]:
        fx = (x - self.xr[0]) / (self.xr[1] - self.xr[0])
        fy = (y - self.yr[0]) / (self.yr[1] - self.yr[0])
        return (self.left + fx * (self.right - self.left),
                self.bottom - fy * (self.bottom - self.top))


def _ranges(series: Mapping[str, Series]) -> tuple[tuple[float, float], tuple[float, float]]:
    xs = [x for s in series.values() for x in s[0]]
    ys = [y for s in series.values() for y in s[1] if math.isfinite(y)]
    if not xs or not ys:
        return (0.0, 1.0), (0.0, 1.0)
    return (min(xs), max(xs)), (min(ys), max(ys))


def _axes(draw: ImageDraw.ImageDraw, frame: _Frame, font: Any, xlabel: str) -> None:
    grid, ink = (225, 225, 225), (60, 60, 60)
    for y in nice_ticks(*frame.yr):
        _, py = frame.point(frame.xr[0], y)
        draw.line((frame.left, py, frame.right, py), fill=grid)
        draw.text((frame.left - 6, py), _label(y), fill=ink, font=font, anchor="rm")
    for x in nice_ticks(*frame.xr):
        px, _ = frame.point(x, frame.yr[0])
        draw.line((px, frame.top, px, frame.bottom), fill=grid)
        draw.text((px, frame.bottom + 6), _label(x), fill=ink, font=font, anchor="mt")
    draw.rectangle((frame.left, frame.top, frame.right, frame.bottom), outline=ink)
    draw.text(((frame.left + frame.right) / 2, frame.bottom + 26), xlabel, fill=ink,
              font=font, anchor="mt")


def plot_lines(series: Mapping[str, Series], path: str | Path, *, title: str = "",
               xlabel: str = "step", size: tuple[int, int] = (720, 420)) -> Path:
    """Draw each named (xs, ys) series as a line and write a PNG to ``path`` atomically.

    Non-finite y values are skipped (they break the line)."""
    from mmcore.checkpoint import atomic_write

    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    frame = _Frame(size, *_ranges(series))
    _axes(draw, frame, font, xlabel)
    for i, (name, (xs, ys)) in enumerate(series.items()):
        colour = PALETTE[i % len(PALETTE)]
        _polyline(draw, frame, xs, ys, colour)
        draw.text((frame.right - 8, frame.top + 8 + 14 * i), name, fill=colour, font=font,
                  anchor="ra")
    draw.text((size[0] / 2, 10), title, fill=(20, 20, 20), font=font, anchor="mt")
    path = Path(path)
    atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))
    return path


def _polyline(draw: ImageDraw.ImageDraw, frame: _Frame, xs: Sequence[float],
              ys: Sequence[float], colour: tuple[int, int, int]) -> None:
    run: list[tuple[float, float]] = []
    for x, y in zip(xs, ys, strict=True):
        if math.isfinite(y):
            run.append(frame.point(x, y))
            continue
        _segment(draw, run, colour)
        run = []
    _segment(draw, run, colour)


def _segment(draw: ImageDraw.ImageDraw, points: list[tuple[float, float]],
             colour: tuple[int, int, int]) -> None:
    if len(points) == 1:
        x, y = points[0]
        draw.ellipse((x - 2, y - 2, x + 2, y + 2), fill=colour)
    elif points:
        draw.line(points, fill=colour, width=2)


def plot_loss(rows: Sequence[Mapping[str, Any]], path: str | Path, *, key: str = "loss",
              title: str = "training loss") -> Path:
    """The ``key`` column of metric rows (each with ``step``) and its smoothed curve."""
    points = [(float(r["step"]), float(r[key])) for r in rows if key in r and "step" in r]
    series: dict[str, Series] = {key: ([p[0] for p in points], [p[1] for p in points])}
    finite = [p for p in points if math.isfinite(p[1])]
    if len(finite) > 4:
        window = max(1, len(finite) // 50)
        series["smoothed"] = ([p[0] for p in finite], smooth([p[1] for p in finite], window))
    return plot_lines(series, path, title=title)

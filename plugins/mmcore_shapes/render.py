"""Draw one coloured shape on a noisy background. Pure function of its arguments and RNG."""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

#: colour name -> RGB (0-255); order fixes the class indices
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 35),
    "green": (30, 165, 45),
    "blue": (35, 70, 225),
    "yellow": (240, 220, 30),
    "purple": (145, 45, 185),
    "orange": (250, 135, 20),
}
#: shape names; order fixes the class indices
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "cross", "star")

_SUPERSAMPLE = 2


def _polygon(corners: list[tuple[float, float]], cx: float, cy: float, r: float,
             turn: float) -> list[tuple[float, float]]:
    """Unit-circle polar corners (angle in degrees, radius) -> image points."""
    out = []
    for angle, radius in corners:
        a = math.radians(angle + turn)
        out.append((cx + r * radius * math.cos(a), cy + r * radius * math.sin(a)))
    return out


def _outline(shape: str) -> list[tuple[float, float]]:
    """Polar corners ``(degrees, radius)`` of a polygonal shape, radius 1 = the shape's size."""
    if shape == "square":
        return [(45 + 90 * k, 1.0) for k in range(4)]
    if shape == "triangle":
        return [(-90 + 120 * k, 1.1) for k in range(3)]
    if shape == "diamond":
        return [(0, 0.7), (90, 1.1), (180, 0.7), (270, 1.1)]
    if shape == "star":
        return [(-90 + 36 * k, 1.15 if k % 2 == 0 else 0.45) for k in range(10)]
    if shape == "cross":
        arm, half = 1.0, 0.32
        pts = [(half, arm), (half, half), (arm, half), (arm, -half), (half, -half),
               (half, -arm), (-half, -arm), (-half, -half), (-arm, -half), (-arm, half),
               (-half, half), (-half, arm)]
        return [(math.degrees(math.atan2(y, x)), math.hypot(x, y)) for x, y in pts]
    raise ValueError(f"unknown shape {shape!r}; shapes are {', '.join(SHAPES)}")


def _draw(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float,
          turn: float, fill: tuple[int, int, int] | int) -> None:
    if shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    else:
        draw.polygon(_polygon(_outline(shape), cx, cy, r, turn), fill=fill)


def _clamp(v: float) -> int:
    return max(0, min(255, int(v)))


def render(colour: str, shape: str, size: int, rng: np.random.Generator,
           noise: float = 0.06, radius: tuple[float, float] = (0.2, 0.36)) -> Image.Image:
    """An RGB ``size x size`` image: a ``colour`` ``shape`` at a random place, size and small
    rotation on a random grey background, plus Gaussian pixel noise (std ``noise`` of 255).

    ``radius``: the shape's radius range as fractions of the image side."""
    return render_with_mask(colour, shape, size, rng, noise, radius, mask=False)[0]


def render_with_mask(colour: str, shape: str, size: int, rng: np.random.Generator,
                     noise: float = 0.06, radius: tuple[float, float] = (0.2, 0.36),
                     mask: bool = True) -> tuple[Image.Image, np.ndarray | None]:
    """:func:`render`'s image (the same pixels for the same RNG state) and, with ``mask``,
    which pixels the shape covers: a ``(size, size)`` bool array, True where at least half
    of the pixel's supersampled area is the shape."""
    big = size * _SUPERSAMPLE
    u = rng.random(11)  # every random choice but the noise, in one draw
    grey = 40 + 176 * u[0]
    background = tuple(_clamp(grey + 24 * (t - 0.5)) for t in u[1:4])
    image = Image.new("RGB", (big, big), background)
    r = big * (radius[0] + (radius[1] - radius[0]) * u[4])
    cx, cy = r + (big - 2 * r) * u[5], r + (big - 2 * r) * u[6]
    fill = tuple(_clamp(c + 36 * (j - 0.5)) for c, j in zip(COLOURS[colour], u[7:10],
                                                           strict=True))
    turn = 24 * (u[10] - 0.5)
    _draw(ImageDraw.Draw(image), shape, cx, cy, r, turn, fill)
    covered = _coverage(shape, cx, cy, r, turn, big, size) if mask else None
    small = image.resize((size, size), Image.Resampling.BOX)
    if noise <= 0:
        return small, covered
    pixels = np.asarray(small, dtype=np.float32)  # (S, S, 3)
    pixels = pixels + rng.standard_normal(pixels.shape, dtype=np.float32) * (noise * 255.0)
    return Image.fromarray((np.clip(pixels, 0, 255) + 0.5).astype(np.uint8), "RGB"), covered


def _coverage(shape: str, cx: float, cy: float, r: float, turn: float, big: int,
              size: int) -> np.ndarray:
    """(size, size) bool: pixels at least half covered by the shape drawn at ``big``."""
    canvas = Image.new("L", (big, big), 0)
    _draw(ImageDraw.Draw(canvas), shape, cx, cy, r, turn, 255)
    area = np.asarray(canvas.resize((size, size), Image.Resampling.BOX), dtype=np.uint8)
    return area >= 128

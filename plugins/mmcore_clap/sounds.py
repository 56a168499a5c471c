"""Synthetic sounds for coloured shapes: a colour is a pitch, a shape is a rhythm.

Colour ``c`` (in class-name order) plays a tone at ``BASE_HZ * 2**(5c / 12)`` (a fourth
apart: 330, 440, 587, 784, 1047, 1397 Hz for six colours) with a little second harmonic;
shape ``s`` plays it as ``s + 1`` evenly spaced beats. Each item varies the pitch (+-2 %),
loudness, harmonic mix, start time and tempo, and adds white noise, all drawn from the
item's own generator — so a sound is a pure function of its seed, like its image.
"""

from __future__ import annotations

import numpy as np

BASE_HZ = 330.0
SEMITONES_PER_COLOUR = 5
#: attack / release ramp of each beat, seconds
RAMP_S = 0.005
#: fraction of each beat's slot that sounds
DUTY = 0.6


def pitch(colour: int) -> float:
    """The nominal frequency (Hz) of colour index ``colour``."""
    return BASE_HZ * 2.0 ** (SEMITONES_PER_COLOUR * colour / 12.0)


def rhythm(beats: int, length: int, start: int, span: int, rate: int) -> np.ndarray:
    """(length,) envelope: ``beats`` notes evenly spread over ``[start, start + span)``,
    each sounding for ``DUTY`` of its slot with short linear ramps."""
    envelope = np.zeros(length)
    slot = span / beats
    ramp = max(1, round(RAMP_S * rate))
    for k in range(beats):
        on = start + round(k * slot)
        off = min(length, on + max(2 * ramp, round(DUTY * slot)))
        t = np.arange(off - on)
        envelope[on:off] = np.minimum(1.0, np.minimum(t + 1, off - on - t) / ramp)
    return envelope


def render_sound(colour: int, shape: int, rng: np.random.Generator, *, rate: int,
                 seconds: float, noise: float) -> np.ndarray:
    """A mono float32 waveform of ``round(rate * seconds)`` samples in [-1, 1]."""
    length = round(rate * seconds)
    u = rng.random(6)  # every random choice but the noise, in one draw
    freq = pitch(colour) * (1.0 + 0.04 * (u[0] - 0.5))
    t = np.arange(length) / rate
    phase = 2 * np.pi * u[1]
    tone = np.sin(2 * np.pi * freq * t + phase) + 0.3 * u[2] * np.sin(4 * np.pi * freq * t)
    start = round(0.08 * length * u[3])
    span = round((length - start) * (0.85 + 0.15 * u[4]))
    wave = (0.3 + 0.5 * u[5]) * rhythm(shape + 1, length, start, span, rate) * tone / 1.3
    wave = wave + noise * rng.standard_normal(length)
    return np.clip(wave, -1.0, 1.0).astype(np.float32)

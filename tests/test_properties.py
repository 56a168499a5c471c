"""Property-based tests (hypothesis) of the readers of hostile input (issue 17): the spec
loader, the WAV reader and the image reader, on random bytes and on random mutations of
valid files. Only the project's own errors may come out; whatever reads succeeds is
within the limits.

Derandomised (a fixed seed) so CI is reproducible; examples are few so the file runs in
seconds. ``HYPOTHESIS_PROFILE=deep`` runs many more on demand.
"""

from __future__ import annotations

import copy
import os
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from mmcore.errors import SpecError
from mmcore.imaging import IMAGE_ASPECT, IMAGE_SIDE, to_pil
from mmcore.spec import load_spec, parse_yaml
from mmcore_audio import decode_wav
from mmcore_audio.wav import MAX_ABS_SAMPLE, MAX_SAMPLE_RATE, MIN_SAMPLE_RATE

_COMMON = {"deadline": None, "derandomize": True, "database": None,
           "suppress_health_check": [HealthCheck.too_slow, HealthCheck.function_scoped_fixture]}
settings.register_profile("ci", max_examples=60, **_COMMON)
settings.register_profile("deep", max_examples=5000, **_COMMON)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
#: for the slower tests that validate whole specs: fewer examples in CI
FEW = settings(max_examples=max(settings().max_examples * 2 // 3, 10))

PRESET = (Path(__file__).parents[1] / "plugins" / "mmcore_shapes" / "specs" /
          "clip-tiny.yaml").read_text(encoding="utf-8")


@st.composite
def mutated(draw: st.DrawFn, blob: bytes) -> bytes:
    """``blob`` with a few random byte flips, insertions, deletions or a truncation."""
    data = bytearray(blob)
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["flip", "insert", "delete", "truncate", "int"]))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[at] = draw(st.integers(0, 255))
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del data[at : at + draw(st.integers(1, 8))]
        elif op == "truncate":
            del data[at:]
        elif op == "int" and at + 4 <= len(data):  # a header field set to an extreme
            value = draw(st.sampled_from([0, 1, 0x7FFFFFFF, 0xFFFFFFFF, 44100, 3]))
            data[at : at + 4] = struct.pack("<I", value)
    return bytes(data)


# -- specs ---------------------------------------------------------------------------------

YAML_PIECES = st.sampled_from(
    ["a", ":", " ", "\n", "  ", "- ", "[", "]", "{", "}", ",", "&x ", "*x", "!!", "'", '"',
     "1e309", "-1", ".nan", "~", "#", "|", ">", "? ", "\t", "\x00", "\x07", "\ufeff", "é",
     "<<: *x", "!!python/object:os.system", "modalities:", "type: vit", "layers: "])


@given(st.one_of(st.text(max_size=300), st.lists(YAML_PIECES, max_size=60).map("".join)))
def test_parse_yaml_only_raises_spec_errors(text: str) -> None:
    try:
        parse_yaml(text, "random.yaml")
    except SpecError as exc:
        assert exc.source == "random.yaml"


@FEW
@given(mutated(PRESET.encode()))
def test_load_spec_of_a_mutated_preset_only_raises_spec_errors(
        tmp_path_factory: pytest.TempPathFactory, blob: bytes) -> None:
    path = tmp_path_factory.mktemp("spec") / "mutated.yaml"
    path.write_bytes(blob)
    try:
        spec = load_spec(path)
    except SpecError as exc:
        assert "mutated.yaml" in str(exc)
    else:
        assert spec.modalities


def _paths(node: object, prefix: tuple[str | int, ...] = ()) -> list[tuple[str | int, ...]]:
    """Every key path of a nested mapping/list."""
    out: list[tuple[str | int, ...]] = [prefix] if prefix else []
    items = node.items() if isinstance(node, dict) else enumerate(node) \
        if isinstance(node, list) else []
    for key, value in items:
        out += _paths(value, (*prefix, key))
    return out


PRESET_DATA = yaml.safe_load(PRESET)
PRESET_PATHS = _paths(PRESET_DATA)
ODD_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70),
              st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
              st.sampled_from(["vit", "late", "contrastive", "shapes", "image", "text"])),
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(st.text(max_size=8), inner, max_size=3)),
    max_leaves=6)


def _set(data: object, path: tuple[str | int, ...], value: object) -> None:
    """``data[path] = value`` where the path still exists (an earlier change may have
    replaced a container with a scalar)."""
    node = data
    for key in path[:-1]:
        node = node[key] if isinstance(node, (dict, list)) and _has(node, key) else None
    if isinstance(node, (dict, list)) and _has(node, path[-1]):
        node[path[-1]] = value  # type: ignore[index]


def _has(node: dict[object, object] | list[object], key: str | int) -> bool:
    if isinstance(node, dict):
        return key in node
    return isinstance(key, int) and key < len(node)


@FEW
@given(st.lists(st.tuples(st.sampled_from(PRESET_PATHS), ODD_VALUES), min_size=1, max_size=3))
def test_load_spec_of_a_preset_with_odd_values_only_raises_spec_errors(
        changes: list[tuple[tuple[str | int, ...], object]]) -> None:
    data = copy.deepcopy(PRESET_DATA)
    for path, value in changes:
        _set(data, path, value)
    try:
        spec = load_spec(data)
    except SpecError as exc:
        assert exc.issues and all(issue.message for issue in exc.issues)
    else:
        assert spec.modalities and spec.train.lr > 0


# -- audio ---------------------------------------------------------------------------------

def _wav(tag: int, bits: int, channels: int, rate: int, payload: bytes) -> bytes:
    fmt = struct.pack("<HHIIHH", tag, channels, rate, rate * channels * bits // 8,
                      channels * bits // 8, bits)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + \
        struct.pack("<I", len(payload)) + payload
    return b"RIFF" + struct.pack("<I", len(body)) + body


TONE = (0.3 * np.sin(np.arange(400) / 5.0)).astype(np.float32)
VALID_WAVS = [
    _wav(1, 16, 1, 16000, (TONE * 30000).astype("<i2").tobytes()),
    _wav(1, 8, 2, 8000, ((TONE * 100) + 128).astype(np.uint8).tobytes()),
    _wav(3, 32, 1, 16000, TONE.astype("<f4").tobytes()),
    _wav(3, 64, 2, 44100, TONE.astype("<f8").tobytes()),
    _wav(1, 24, 1, 22050, b"".join(int(v * 8e6).to_bytes(3, "little", signed=True)
                                   for v in TONE)),
]


def _check_wav(blob: bytes) -> None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # an overflow warning on the way is a bug too
            samples, rate = decode_wav(blob, "fuzz.wav")
    except ValueError as exc:
        assert "fuzz.wav" in str(exc)
        return
    assert samples.dtype == np.float32 and samples.ndim == 1 and samples.size > 0
    assert np.isfinite(samples).all()
    assert float(np.abs(samples).max()) <= MAX_ABS_SAMPLE.value()
    assert MIN_SAMPLE_RATE.value() <= rate <= MAX_SAMPLE_RATE.value()
    assert isinstance(rate, int)


@given(st.binary(max_size=200))
def test_decode_wav_of_random_bytes(blob: bytes) -> None:
    _check_wav(blob)


@given(st.sampled_from(VALID_WAVS).flatmap(mutated))
def test_decode_wav_of_mutated_wavs(blob: bytes) -> None:
    _check_wav(blob)


@given(st.sampled_from([1, 3, 0xFFFE, 2, 0]), st.sampled_from([0, 8, 16, 24, 32, 64, 7, 48]),
       st.integers(0, 9), st.sampled_from([0, 1, 999, 16000, 768_001, 0xFFFFFFFF]),
       st.binary(max_size=64))
def test_decode_wav_of_odd_headers(tag: int, bits: int, channels: int, rate: int,
                                   payload: bytes) -> None:
    fmt = struct.pack("<HHIIHH", tag, channels, rate, 0, (channels * bits // 8) & 0xFFFF, bits)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + \
        struct.pack("<I", len(payload)) + payload
    _check_wav(b"RIFF" + struct.pack("<I", len(body)) + body)


def test_a_valid_wav_still_reads() -> None:
    samples, rate = decode_wav(VALID_WAVS[2], "tone.wav")
    assert rate == 16000 and np.allclose(samples, TONE, atol=1e-6)


# -- images --------------------------------------------------------------------------------

def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + \
        struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _png(width: int, height: int, colour_type: int = 2) -> bytes:
    channels = {0: 1, 2: 3, 4: 2, 6: 4}[colour_type]
    row = b"\x00" + bytes(range(width * channels))[: width * channels].ljust(width * channels,
                                                                            b"\x07")
    return (b"\x89PNG\r\n\x1a\n"
            + _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0))
            + _chunk(b"IDAT", zlib.compress(row * height)) + _chunk(b"IEND", b""))


VALID_IMAGES = [_png(8, 6), _png(5, 5, 0), _png(4, 9, 6), _png(3, 3, 4)]
MAX_PIXELS = 1_000_000


def _check_image(blob: bytes, folder: Path, suffix: str = ".png") -> None:
    path = folder / f"fuzz{suffix}"
    path.write_bytes(blob)
    try:
        image = to_pil(path, MAX_PIXELS)
    except (ValueError, FileNotFoundError) as exc:
        assert "fuzz" in str(exc)
        return
    w, h = image.size
    assert image.mode == "RGB" and 0 < w * h <= MAX_PIXELS
    assert max(w, h) <= IMAGE_SIDE.value() and max(w, h) / min(w, h) <= IMAGE_ASPECT.value()


@given(st.binary(max_size=300), st.sampled_from([".png", ".jpg", ".gif", ".bmp", ""]))
def test_to_pil_of_random_bytes(tmp_path_factory: pytest.TempPathFactory, blob: bytes,
                                suffix: str) -> None:
    _check_image(blob, tmp_path_factory.mktemp("img"), suffix)


@given(st.sampled_from(VALID_IMAGES).flatmap(mutated))
def test_to_pil_of_mutated_pngs(tmp_path_factory: pytest.TempPathFactory, blob: bytes) -> None:
    _check_image(blob, tmp_path_factory.mktemp("img"))


@given(st.integers(0, 2**31 - 1), st.integers(0, 2**31 - 1))
def test_to_pil_of_any_declared_size(tmp_path_factory: pytest.TempPathFactory, width: int,
                                     height: int) -> None:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    blob = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IEND", b"")
    _check_image(blob, tmp_path_factory.mktemp("img"))


def test_valid_images_still_read(tmp_path: Path) -> None:
    for i, blob in enumerate(VALID_IMAGES):
        (tmp_path / f"{i}.png").write_bytes(blob)
        image = to_pil(tmp_path / f"{i}.png", MAX_PIXELS)
        assert image.mode == "RGB" and image.size == Image.open(tmp_path / f"{i}.png").size

"""Writers of hostile files: specs, WAVs, PNG headers, shard folders, HF folders, plugins.

Nothing large is committed: every file is made here, at test time, in a temporary folder.
"""

from __future__ import annotations

import copy
import json
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import yaml

#: a small valid spec (the shapes of tests/tiny_specs.py), mutated by the spec cases
IMAGE: dict[str, Any] = {
    "preprocessor": {"type": "image", "size": 16},
    "tokenizer": {"type": "patch-embedding", "image_size": 16, "patch_size": 8, "width": 16},
    "encoder": {"type": "vit", "layers": 1, "heads": 2}}
TEXT: dict[str, Any] = {
    "preprocessor": {"type": "byte-text", "context_length": 40},
    "tokenizer": {"type": "token-embedding", "vocab_size": 259, "width": 16,
                  "context_length": 40},
    "encoder": {"type": "text-transformer", "layers": 1, "heads": 2}}
SPEC: dict[str, Any] = {
    "name": "tiny", "modalities": {"image": IMAGE, "text": TEXT},
    "fusion": {"type": "late", "embed_dim": 16, "pooling": {"image": "cls", "text": "eot"}},
    "objectives": {"clip": {"type": "contrastive", "pairs": [["image", "text"]]}},
    "data": {"type": "shapes", "image_size": 16, "train_size": 16, "eval_size": 8},
    "train": {"steps": 1, "batch_size": 4, "warmup_steps": 0, "log_every": 1}}

LAUGHS = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]\n" for i in range(8))


def spec(**changes: Any) -> dict[str, Any]:
    """The tiny spec with dotted-path ``changes`` (``a__b=1`` sets ``a.b``)."""
    data = copy.deepcopy(SPEC)
    for path, value in changes.items():
        node = data
        *parents, last = path.split("__")
        for part in parents:
            node = node[part]
        node[last] = value
    return data


def write_spec(path: Path, data: Any) -> None:
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")


def float_wav(samples: np.ndarray, rate: int = 16000, *, declared: int | None = None) -> bytes:
    """A 32-bit float mono WAV; ``declared`` overrides the data chunk's byte count."""
    data = samples.astype("<f4").tobytes()
    fmt = struct.pack("<HHIIHH", 3, 1, rate, rate * 4, 4, 32)
    size = len(data) if declared is None else declared
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + \
        struct.pack("<I", size) + data
    return b"RIFF" + struct.pack("<I", len(body)) + body


def pcm_wav(samples: np.ndarray, rate: int = 16000) -> bytes:
    """A 16-bit PCM mono WAV."""
    data = samples.astype("<i2").tobytes()
    fmt = struct.pack("<HHIIHH", 1, 1, rate, rate * 2, 2, 16)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + \
        struct.pack("<I", len(data)) + data
    return b"RIFF" + struct.pack("<I", len(body)) + body


def tone(seconds: float = 0.5, rate: int = 16000) -> np.ndarray:
    t = np.arange(int(seconds * rate), dtype=np.float32) / rate
    return (0.3 * np.sin(2 * np.pi * 440.0 * t)).astype(np.float32)


def _chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares ``width`` x ``height`` RGB pixels and holds almost none."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr)
            + _chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + _chunk(b"IEND", b""))


def png(width: int, height: int, colour: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    """A small valid RGB PNG."""
    row = b"\x00" + bytes(colour) * width
    return (b"\x89PNG\r\n\x1a\n"
            + _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + _chunk(b"IDAT", zlib.compress(row * height)) + _chunk(b"IEND", b""))


def image_folder(root: Path, odd: bytes) -> None:
    """``root/<class>/<image>``: one class holds the odd image, the other a good one."""
    (root / "circle").mkdir(parents=True)
    (root / "square").mkdir()
    (root / "circle" / "odd.png").write_bytes(odd)
    (root / "square" / "good.png").write_bytes(png(16, 16))


def hf_clip_folder(root: Path, **config: Any) -> None:
    """An HF CLIP folder whose config.json carries ``config``; no usable weights."""
    root.mkdir(parents=True)
    (root / "config.json").write_text(json.dumps({"model_type": "clip", **config}))
    (root / "model.safetensors").write_bytes(struct.pack("<Q", 2) + b"{}")
    (root / "tokenizer.json").write_text("{}")


def exiting_plugin(site: Path, raise_: str) -> None:
    """An installed-looking distribution whose mmcore plugin raises ``raise_`` on import."""
    site.mkdir(parents=True)
    (site / "hostile_plugin.py").write_text(f"raise {raise_}\n")
    info = site / "hostile_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: hostile-plugin\n"
                                   "Version: 0.1\n")
    (info / "entry_points.txt").write_text("[mmcore.plugins]\nhostile = hostile_plugin\n")


def lying_checkpoint(good: Path, path: Path, *, dtype: str = "", spec_json: str = "",
                     spec_change: tuple[str, Any] | None = None) -> None:
    """A copy of the checkpoint ``good`` whose tensors take ``dtype`` ("int64", "bool" or
    "i32-over-f32": the same bytes declared as int32), or whose spec metadata is replaced
    by ``spec_json`` or changed at one dotted key (``spec_change``)."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(good), "pt") as handle:
        meta = dict(handle.metadata() or {})
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118
    convert = {"int64": lambda t: t.to(torch.int64), "bool": lambda t: t.to(torch.bool),
               "i32-over-f32": lambda t: t.view(torch.int32)}.get(dtype)
    if convert is not None:
        tensors = {k: convert(t) if t.is_floating_point() else t for k, t in tensors.items()}
    if spec_json:
        meta["spec"] = spec_json
    if spec_change is not None:
        data = json.loads(meta["spec"])
        node = data
        *parents, last = spec_change[0].split(".")
        for part in parents:
            node = node[part]
        node[last] = spec_change[1]
        meta["spec"] = json.dumps(data)
    save_file(tensors, str(path), meta)

"""Reading paired data from tar shards, the webdataset layout img2dataset writes
(:mod:`mmcore_webdataset.writing` writes them from a folder of files).

A shard is a plain tar file. A sample is a run of consecutive members sharing a key (the
member's path up to the first dot of its basename): ``000000001.jpg``, ``000000001.txt``,
``000000001.json``. A per-extension decoder table turns member bytes into values
(extensions without a decoder stay raw ``bytes``) and a modality map says which extension
fills which modality, e.g. ``{"image": ["jpg", "png"], "text": ["txt"]}``; the first
extension present wins.

:class:`ShardDataset` streams each tar sequentially (``tarfile`` mode ``r|*``, nothing
extracted to disk), splits shards deterministically across (rank, worker), permutes the
shard order per ``(seed, epoch)`` and optionally shuffles samples in a buffer seeded per
``(seed, epoch, rank, worker)``. A corrupt sample is skipped and counted in
:attr:`ShardDataset.stats`; a corrupt or truncated shard ends with a warning and reading
goes on with the next. :func:`shard_info` counts what a folder holds.
"""

from __future__ import annotations

import glob
import io
import json
import logging
import os
import posixpath
import re
import tarfile
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from mmcore.limits import Limit
from mmcore_webdataset.index import read_index

log = logging.getLogger(__name__)

Decoder = Callable[[bytes], Any]
ShardSource = str | Path | Sequence[str | Path]

#: errors that end a shard: not a tar, truncated, bad compression, unreadable file
SHARD_ERRORS = (tarfile.TarError, EOFError, OSError, zlib.error)
#: A member larger than this is refused, not read into memory (docs/reliability.md).
MEMBER_BYTES = Limit("shard_member_bytes", 1 << 30, "the size of one shard member in bytes")
#: how many skipped samples per pass are logged as warnings (the rest only counted)
WARN_SKIPS = 3


# ----------------------------------------------------------------------------- decoders


def decode_image(data: bytes) -> Any:
    """Image bytes (jpg, png, webp, ...) -> an RGB ``PIL.Image`` (fully decoded)."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        return image.convert("RGB")


def decode_text(data: bytes) -> str:
    """UTF-8 bytes -> str, surrounding whitespace removed."""
    return data.decode("utf-8").strip()


def decode_json(data: bytes) -> Any:
    return json.loads(data)


def decode_int(data: bytes) -> int:
    """A class index written as text (``.cls``) -> int."""
    return int(data.decode("ascii").strip())


def decode_npy(data: bytes) -> np.ndarray:
    """A ``.npy`` array (pickled objects refused)."""
    return np.load(io.BytesIO(data), allow_pickle=False)


def default_decoders() -> dict[str, Decoder]:
    """Extension -> decoder for the formats the core reads; others stay raw bytes."""
    images = dict.fromkeys(("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff"),
                           decode_image)
    return {**images, "txt": decode_text, "text": decode_text, "json": decode_json,
            "cls": decode_int, "npy": decode_npy}


# ----------------------------------------------------------------------------- shard lists

_BRACE = re.compile(r"\{([^{}]*)\}")
_RANGE = re.compile(r"^(-?\d+)\.\.(-?\d+)$")


def expand_braces(pattern: str) -> list[str]:
    """Brace notation as the shell expands it: ``data-{000..002}.tar`` -> three names
    (zero padding kept), ``{a,b}`` -> alternatives; several groups multiply."""
    match = _BRACE.search(pattern)
    if match is None:
        return [pattern]
    head, tail = pattern[: match.start()], pattern[match.end():]
    return [name for choice in _brace_choices(match.group(1), pattern)
            for name in expand_braces(head + choice + tail)]


def _brace_choices(body: str, pattern: str) -> list[str]:
    numeric = _RANGE.match(body)
    if numeric is None:
        if "," not in body:
            raise ValueError(f"cannot expand {{{body}}} in {pattern!r}: use {{A..B}} with "
                             "integers or {x,y,...}")
        return body.split(",")
    low, high = numeric.groups()
    if int(high) < int(low):
        raise ValueError(f"empty range {{{body}}} in {pattern!r}: the end is below the start")
    padded = any(len(x.lstrip("-")) > 1 and x.lstrip("-")[0] == "0" for x in (low, high))
    width = max(len(low), len(high)) if padded else 0
    return [str(i).zfill(width) for i in range(int(low), int(high) + 1)]


def shard_list(source: ShardSource) -> list[str]:
    """Shard paths from a list, a glob, brace notation or a folder (its ``index.json``, else
    its ``*.tar`` files), in a fixed order."""
    items = [source] if isinstance(source, str | Path) else list(source)
    shards = [shard for item in items for shard in _expand_one(str(item))]
    if not shards:
        raise ValueError(f"no shards found for {source!r}")
    return shards


def _expand_one(item: str) -> list[str]:
    if os.path.isdir(item):
        index = read_index(item)
        if index is not None:
            return [os.path.join(item, s["name"]) for s in index["shards"]]
        return sorted(glob.glob(os.path.join(glob.escape(item), "*.tar*")))
    out: list[str] = []
    for name in expand_braces(item):
        out += sorted(glob.glob(name)) if glob.has_magic(name) else [name]
    return out


def plan_shards(shards: Sequence[str], *, rank: int, world_size: int, worker: int,
                num_workers: int) -> tuple[list[str], int, int]:
    """What the reader at (rank, worker) reads: ``(shards, stride, offset)``, keeping
    samples ``i % stride == offset`` of their stream.

    With at least one shard per reader the shards are split; with fewer shards than readers
    but enough for the ranks, ranks split shards and workers split samples; else every
    reader reads every shard and keeps its share of the samples. Either way each sample is
    read by exactly one (rank, worker)."""
    if not (0 <= rank < world_size and 0 <= worker < num_workers):
        raise ValueError(f"rank {rank} of {world_size} / worker {worker} of {num_workers} "
                         "is out of range")
    readers, reader = world_size * num_workers, rank * num_workers + worker
    if len(shards) >= readers:
        return list(shards[reader::readers]), 1, 0
    if len(shards) >= world_size:
        return list(shards[rank::world_size]), num_workers, worker
    return list(shards), readers, reader


def distributed_rank() -> tuple[int, int]:
    """(rank, world size) of torch.distributed when initialised, else (0, 1)."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def worker_slot() -> tuple[int, int]:
    """(worker id, number of workers) inside a DataLoader worker, else (0, 1)."""
    info = get_worker_info()
    return (info.id, info.num_workers) if info is not None else (0, 1)


# ----------------------------------------------------------------------------- tar reading


def split_name(name: str) -> tuple[str, str]:
    """A member name -> (key, extension): ``a/000001.seg.png`` -> ``("a/000001", "seg.png")``."""
    folder, base = posixpath.split(name)
    stem, dot, ext = base.partition(".")
    return posixpath.join(folder, stem) if folder else stem, ext.lower() if dot else ""


def iter_members(path: str) -> Iterator[tuple[str, bytes]]:
    """``(name, bytes)`` of each regular file in a (possibly compressed) tar, read as a
    stream. Raises tarfile/OS errors on a corrupt or truncated shard."""
    limit = MEMBER_BYTES.value()
    with open(path, "rb") as stream, tarfile.open(fileobj=stream, mode="r|*") as tar:
        for member in tar:
            if not member.isfile():
                continue
            if member.size > limit:
                raise tarfile.ReadError(
                    f"member {member.name} is {member.size:,} bytes, over the limit of "
                    f"{limit:,} {MEMBER_BYTES.hint()}")
            reader = tar.extractfile(member)
            if reader is None:
                continue
            data = reader.read()
            if len(data) != member.size:
                raise tarfile.ReadError(f"member {member.name} is truncated")
            yield member.name, data


@dataclass
class RawSample:
    """One key's members, undecoded. ``truncated``: the shard broke inside it."""

    key: str
    files: dict[str, bytes]
    shard: str
    truncated: bool = False


def iter_raw_samples(path: str, on_error: Callable[[str, BaseException], None]
                     ) -> Iterator[RawSample]:
    """The samples of one shard, grouping consecutive members by key. A shard error calls
    ``on_error(path, exc)``, yields the sample it broke (``truncated``) and ends the shard."""
    current: RawSample | None = None
    try:
        for name, data in iter_members(path):
            key, ext = split_name(name)
            if not ext or posixpath.basename(name).startswith((".", "__")):
                continue  # no extension, hidden (e.g. macOS ._ files) or webdataset metadata
            if current is not None and current.key != key:
                yield current
                current = None
            current = current or RawSample(key, {}, path)
            current.files[ext] = data
    except SHARD_ERRORS as exc:
        on_error(path, exc)
        if current is not None:
            current.truncated = True
            yield current
        return
    if current is not None:
        yield current


def count_samples(path: str) -> tuple[int, Counter[str], str | None]:
    """Read one shard through: (samples, members per extension, error or None)."""
    errors: list[str] = []
    extensions: Counter[str] = Counter()
    samples = 0
    for sample in iter_raw_samples(path, lambda _, exc: errors.append(f"{exc}")):
        if not sample.truncated:
            samples += 1
            extensions.update(sample.files.keys())
    return samples, extensions, errors[0] if errors else None


# ----------------------------------------------------------------------------- the dataset


class SkippedSample(Exception):
    """A sample that cannot be used; ``reason`` is ``corrupt``, ``missing`` or ``truncated``."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


@dataclass
class ShardStats:
    """Counters of one pass (epoch) of one reader (rank, worker)."""

    rank: int = 0
    worker: int = 0
    epoch: int = 0
    samples: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    shards: int = 0
    failed_shards: list[str] = field(default_factory=list)

    @property
    def total_skipped(self) -> int:
        return sum(self.skipped.values())

    def summary(self) -> str:
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(self.skipped.items())) or "none"
        return (f"shards epoch {self.epoch} rank {self.rank} worker {self.worker}: "
                f"{self.samples} samples from {self.shards} shards; skipped {reasons}; "
                f"{len(self.failed_shards)} shard(s) failed")


class ShardDataset(IterableDataset[dict[str, Any]]):
    """Samples from tar shards as dicts of raw items keyed by modality, e.g. ``{"image":
    PIL.Image, "text": str}``, ready for :class:`mmcore.data.Collator`.

    ``modalities``: modality -> extensions, first present wins. ``required``: modalities a
    sample must have (default all); a sample missing one is skipped. ``decoders`` override
    or extend :func:`default_decoders`; ``raw`` lists extensions to keep as bytes.
    ``rank``/``world_size`` default to torch.distributed's. Call :meth:`set_epoch` before
    each epoch (as with ``DistributedSampler``) to reshuffle; DataLoader workers see it
    unless ``persistent_workers=True``. :attr:`stats` counts the latest pass in this
    process (in a worker, the worker's; each pass ends with a log line of its counts).
    Ranks can receive unequal sample counts when shards do not divide evenly.
    """

    def __init__(self, shards: ShardSource, *, modalities: Mapping[str, Sequence[str]],
                 required: Sequence[str] | None = None,
                 decoders: Mapping[str, Decoder] | None = None, raw: Sequence[str] = (),
                 seed: int = 0, shuffle_shards: bool = True, shuffle_buffer: int = 0,
                 rank: int | None = None, world_size: int | None = None,
                 with_key: bool = False) -> None:
        super().__init__()
        self.shards = shard_list(shards)
        self.modalities = {m: [e.lower().lstrip(".") for e in exts]
                           for m, exts in modalities.items()}
        self.required = list(self.modalities if required is None else required)
        _check_modalities(self.modalities, self.required)
        self.decoders = {**default_decoders(), **(decoders or {})}
        for ext in raw:
            self.decoders.pop(ext.lower().lstrip("."), None)
        if seed < 0 or shuffle_buffer < 0:
            raise ValueError("seed and shuffle_buffer must be >= 0")
        self.seed, self.shuffle_shards, self.shuffle_buffer = seed, shuffle_shards, shuffle_buffer
        self.rank, self.world_size, self.with_key = rank, world_size, with_key
        self.epoch = 0
        self.stats = ShardStats()

    def set_epoch(self, epoch: int) -> None:
        """The epoch whose shard order and shuffle the next iteration uses."""
        self.epoch = epoch

    @property
    def num_samples(self) -> int | None:
        """Samples in all shards together when every shard's folder has an index, else None."""
        counts: dict[str, int] = {}
        for folder in {os.path.dirname(os.path.abspath(s)) for s in self.shards}:
            for entry in (read_index(folder) or {"shards": []})["shards"]:
                counts[os.path.join(folder, entry["name"])] = int(entry["samples"])
        known = [counts.get(os.path.abspath(s)) for s in self.shards]
        return sum(c for c in known if c is not None) if None not in known else None

    def shard_order(self, epoch: int) -> list[str]:
        """Every shard in epoch ``epoch``'s order: the same on every rank and worker."""
        if not self.shuffle_shards:
            return list(self.shards)
        order = np.random.default_rng((self.seed, epoch)).permutation(len(self.shards))
        return [self.shards[i] for i in order]

    def reader(self) -> tuple[int, int, int, int]:
        """(rank, world size, worker, workers) of the process iterating now."""
        rank, world = distributed_rank()
        rank = rank if self.rank is None else self.rank
        world = world if self.world_size is None else self.world_size
        return (rank, world, *worker_slot())

    def __iter__(self) -> Iterator[dict[str, Any]]:
        rank, world, worker, workers = self.reader()
        epoch = self.epoch
        self.stats = ShardStats(rank=rank, worker=worker, epoch=epoch)
        shards, stride, offset = plan_shards(self.shard_order(epoch), rank=rank,
                                             world_size=world, worker=worker,
                                             num_workers=workers)
        samples = self._decoded(shards, stride, offset)
        if self.shuffle_buffer > 1:
            rng = np.random.default_rng((self.seed, epoch, rank, worker))
            samples = shuffle_buffered(samples, self.shuffle_buffer, rng)
        yield from samples
        clean = not self.stats.skipped and not self.stats.failed_shards
        log.log(logging.INFO if clean else logging.WARNING, "%s", self.stats.summary())

    def _decoded(self, shards: Sequence[str], stride: int, offset: int
                 ) -> Iterator[dict[str, Any]]:
        """This reader's share of the samples of ``shards``, decoded; bad ones counted."""
        index = 0
        for shard in shards:
            for raw in iter_raw_samples(shard, self._shard_failed):
                index, mine = index + 1, index % stride == offset
                if not mine:
                    continue
                try:
                    item = self.decode(raw)
                except SkippedSample as skip:
                    self._skip(raw, skip)
                    continue
                self.stats.samples += 1
                yield item
            self.stats.shards += 1

    def decode(self, raw: RawSample) -> dict[str, Any]:
        """One raw sample -> ``{modality: value}``; raises :class:`SkippedSample`."""
        if raw.truncated:
            raise SkippedSample("truncated", "the shard ends inside this sample")
        item: dict[str, Any] = {}
        for modality, extensions in self.modalities.items():
            ext = next((e for e in extensions if e in raw.files), None)
            if ext is None:
                if modality in self.required:
                    raise SkippedSample("missing", f"no {modality} ({', '.join(extensions)})")
                continue
            item[modality] = self._decode_one(ext, raw.files[ext])
        if self.with_key:
            item["__key__"] = raw.key
        return item

    def _decode_one(self, ext: str, data: bytes) -> Any:
        decoder = self.decoders.get(ext)
        if decoder is None:
            return data
        try:
            return decoder(data)
        except Exception as exc:  # any decoder failure is a corrupt sample, never fatal
            raise SkippedSample("corrupt", f".{ext}: {type(exc).__name__}: {exc}") from exc

    def _skip(self, raw: RawSample, skip: SkippedSample) -> None:
        self.stats.skipped[skip.reason] += 1
        level = logging.WARNING if self.stats.total_skipped <= WARN_SKIPS else logging.DEBUG
        log.log(level, "skipped sample %s in %s (%s): %s", raw.key, raw.shard, skip.reason, skip)

    def _shard_failed(self, path: str, exc: BaseException) -> None:
        self.stats.failed_shards.append(path)
        log.warning("shard %s is corrupt or truncated (%s: %s); going on with the next",
                    path, type(exc).__name__, exc)


def _check_modalities(modalities: Mapping[str, Sequence[str]], required: Sequence[str]) -> None:
    if not modalities or any(not exts for exts in modalities.values()):
        raise ValueError("modalities must map each modality to at least one extension, e.g. "
                         "{'image': ['jpg', 'png'], 'text': ['txt']}")
    unknown = sorted(set(required) - set(modalities))
    if unknown:
        raise ValueError(f"required modalities {unknown} are not in modalities "
                         f"{sorted(modalities)}")


def shuffle_buffered(items: Iterable[Any], size: int, rng: np.random.Generator
                     ) -> Iterator[Any]:
    """Shuffle a stream through a buffer of ``size`` items: each new item replaces a random
    buffered one, which is yielded; the remainder comes out shuffled at the end."""
    buffer: list[Any] = []
    for item in items:
        if len(buffer) < size:
            buffer.append(item)
            continue
        slot = int(rng.integers(size))
        buffer[slot], item = item, buffer[slot]
        yield item
    for slot in rng.permutation(len(buffer)):
        yield buffer[slot]


def shard_info(directory: str | Path, *, scan: bool = False) -> dict[str, Any]:
    """Counts of a shard folder: from ``index.json``, or (``scan``, or no index) by reading
    every shard through, which also finds corrupt ones."""
    directory = Path(directory)
    index = read_index(directory)
    if index is not None and not scan:
        return {"source": "index", **index}
    shards: list[dict[str, Any]] = []
    total, extensions = 0, Counter[str]()
    listed = {s["name"]: s["samples"] for s in (index or {}).get("shards", [])}
    for path in shard_list(directory):
        samples, exts, error = count_samples(path)
        name = os.path.basename(path)
        size = os.path.getsize(path) if os.path.isfile(path) else None
        indexed = listed.get(name)
        if error is None and indexed is not None and indexed != samples:
            error = f"index.json lists {indexed} samples"
        shards.append({"name": name, "samples": samples, "bytes": size, "problem": error})
        total += samples
        extensions.update(exts)
    return {"source": "scan", "samples": total, "extensions": dict(sorted(extensions.items())),
            "shards": shards}

"""Tar shards (mmcore_webdataset, the ``webdataset`` dataset, ``mmcore shards``): written from a
folder, read back exactly once across ranks and workers, shuffled per epoch, corrupt data
skipped and counted."""

from __future__ import annotations

import csv
import io
import json
import logging
import shutil
import tarfile
import wave
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from mmcore.builder import BuildContext
from mmcore.cli import main
from mmcore.data import Collator
from mmcore.kernels import KernelSet
from mmcore.plugins import get_registry
from mmcore_webdataset.reading import (
    ShardDataset,
    expand_braces,
    plan_shards,
    shard_list,
    shuffle_buffered,
)
from mmcore_webdataset.writing import write_shards

N_SAMPLES, SHARD_SIZE = 24, 3
MODALITIES = {"image": ["jpg", "png"], "text": ["txt"]}


def _colour(i: int) -> tuple[int, int, int]:
    return (10 * i, 255 - 10 * i, 128)


def _make_folder(root: Path, n: int, *, corrupt: tuple[int, ...] = (),
                 uncaptioned: tuple[int, ...] = ()) -> Path:
    """``n`` flat-colour 8x8 images (png, every third jpg) and a captions CSV beside them."""
    src = root / "src"
    src.mkdir(parents=True)
    rows = []
    for i in range(n):
        ext = "jpg" if i % 3 == 0 else "png"
        path = src / f"photo_{i:03d}.{ext}"
        if i in corrupt:
            path.write_bytes(b"this is not an image")
        else:
            Image.new("RGB", (8, 8), _colour(i)).save(path)
        if i not in uncaptioned:
            rows.append({"file": path.name, "caption": f"caption {i}"})
    with open(root / "captions.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, ["file", "caption"])
        writer.writeheader()
        writer.writerows(rows)
    return src


def _write(src: Path, out: Path, *extra: str, shard_size: int = SHARD_SIZE) -> int:
    return main(["shards", "write", str(src), "--out", str(out), "--shard-size",
                 str(shard_size), *extra])


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """24 samples in 8 shards of 3, written through the CLI."""
    root = tmp_path_factory.mktemp("shards")
    src = _make_folder(root, N_SAMPLES)
    assert _write(src, root / "out", "--captions", str(root / "captions.csv")) == 0
    return root / "out"


def _dataset(source: Any, **kwargs: Any) -> ShardDataset:
    return ShardDataset(source, modalities=kwargs.pop("modalities", MODALITIES),
                        with_key=True, **kwargs)


def _keys(items: Any) -> list[str]:
    return [item["__key__"] for item in items]


ALL_KEYS = [f"{i:09d}" for i in range(N_SAMPLES)]


# -- writing ------------------------------------------------------------------------------


def test_write_makes_shards_and_an_index(shards: Path, capsys: pytest.CaptureFixture) -> None:
    index = json.loads((shards / "index.json").read_text())
    assert [s["name"] for s in index["shards"]] == [f"data-{i:06d}.tar" for i in range(8)]
    assert [s["samples"] for s in index["shards"]] == [3] * 8
    assert index["samples"] == N_SAMPLES and index["uncaptioned"] == 0
    assert index["extensions"] == {"jpg": 8, "json": 24, "png": 16, "txt": 24}
    assert index["pattern"] == "data-{000000..000007}.tar"
    with tarfile.open(shards / "data-000001.tar") as tar:
        names = tar.getnames()
        assert names == ["000000003.jpg", "000000003.json", "000000003.txt",
                         "000000004.json", "000000004.png", "000000004.txt",
                         "000000005.json", "000000005.png", "000000005.txt"]
        meta = json.loads(tar.extractfile("000000004.json").read())  # type: ignore[union-attr]
        assert meta == {"key": "000000004", "source": "photo_004"}
    assert not list(shards.glob(".*"))  # no temporary files left behind
    assert main(["shards", "info", str(shards)]) == 0
    out = capsys.readouterr().out
    assert "24 samples in 8 shards (from the index)" in out and "data-000007.tar" in out


def test_read_back_pairs_every_image_with_its_caption(shards: Path) -> None:
    items = list(_dataset(shards, shuffle_shards=False))
    assert _keys(items) == ALL_KEYS  # written order, keys zero-padded
    for i, item in enumerate(items):
        assert item["text"] == f"caption {i}"
        assert item["image"].mode == "RGB" and item["image"].size == (8, 8)
        pixel = np.asarray(item["image"])[4, 4].astype(int)
        assert np.abs(pixel - _colour(i)).max() <= 8  # jpg is lossy, png exact
    assert _dataset(shards).num_samples == N_SAMPLES


def test_write_is_deterministic_and_atomic_per_folder(shards: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture) -> None:
    src, captions = shards.parent / "src", shards.parent / "captions.csv"
    assert _write(src, tmp_path / "again", "--captions", str(captions)) == 0
    for name in ("data-000000.tar", "data-000007.tar", "index.json"):
        assert (tmp_path / "again" / name).read_bytes() == (shards / name).read_bytes()
    assert _write(src, tmp_path / "again", "--captions", str(captions)) == 1
    assert "already holds shards" in capsys.readouterr().err
    assert _write(src, tmp_path / "again", "--overwrite", shard_size=10) == 0
    index = json.loads((tmp_path / "again" / "index.json").read_text())
    assert [s["samples"] for s in index["shards"]] == [10, 10, 4]
    assert index["uncaptioned"] == N_SAMPLES  # no captions file, no sidecars
    assert sorted(p.name for p in (tmp_path / "again").iterdir()) == [
        "data-000000.tar", "data-000001.tar", "data-000002.tar", "index.json"]


def test_sidecar_txt_and_jsonl_captions(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    for name in ("b", "a", "sub/c"):
        Image.new("RGB", (4, 4)).save(src / f"{name}.png")
    (src / "a.txt").write_text("sidecar a\n")
    lines = [{"file": "b.png", "caption": "from jsonl"}, {"path": "sub/c.png", "text": "c!"}]
    (tmp_path / "caps.jsonl").write_text("\n".join(json.dumps(x) for x in lines))
    index = write_shards(src, tmp_path / "out", captions=tmp_path / "caps.jsonl")
    assert index["samples"] == 3 and index["uncaptioned"] == 0
    items = list(_dataset(tmp_path / "out", shuffle_shards=False))
    assert [(i["__key__"], i["text"]) for i in items] == [
        ("000000000", "sidecar a"), ("000000001", "from jsonl"), ("000000002", "c!")]
    (tmp_path / "bad.csv").write_text("name,words\nx.png,hello\n")
    with pytest.raises(ValueError, match="needs a file column"):
        write_shards(src, tmp_path / "out2", captions=tmp_path / "bad.csv")


# -- sharding across ranks and workers ------------------------------------------------------


def test_every_sample_once_across_two_ranks_and_two_workers(shards: Path) -> None:
    seen: list[str] = []
    for rank in range(2):
        dataset = _dataset(shards, rank=rank, world_size=2, seed=3, shuffle_buffer=4)
        dataset.set_epoch(1)
        loader = DataLoader(dataset, batch_size=None, num_workers=2)
        keys = _keys(loader)
        assert len(keys) == N_SAMPLES // 2  # 8 shards: 2 whole shards per (rank, worker)
        assert keys == _keys(DataLoader(dataset, batch_size=None, num_workers=2))  # seeded
        seen += keys
    assert sorted(seen) == ALL_KEYS


@pytest.mark.parametrize("world_size", [3, 5, 16])
def test_every_sample_once_with_uneven_or_too_few_shards(shards: Path, world_size: int) -> None:
    seen = [k for rank in range(world_size)
            for k in _keys(_dataset(shards, rank=rank, world_size=world_size))]
    assert sorted(seen) == ALL_KEYS


@pytest.mark.parametrize(("n_shards", "world_size", "workers"),
                         [(8, 2, 2), (7, 2, 3), (3, 2, 2), (2, 3, 2), (1, 2, 4), (5, 5, 1)])
def test_plan_gives_each_sample_to_one_reader(n_shards: int, world_size: int,
                                              workers: int) -> None:
    """Shard s holds samples (s, 0..4); every reader applies its plan to the same order."""
    order = [f"s{i}" for i in range(n_shards)]
    seen: Counter[tuple[str, int]] = Counter()
    for rank in range(world_size):
        for worker in range(workers):
            mine, stride, offset = plan_shards(order, rank=rank, world_size=world_size,
                                               worker=worker, num_workers=workers)
            stream = [(shard, j) for shard in mine for j in range(5)]
            seen.update(stream[offset::stride])
            if n_shards >= world_size * workers:
                assert stride == 1  # enough shards: whole shards per reader
    assert seen == Counter({(s, j): 1 for s in order for j in range(5)})
    with pytest.raises(ValueError, match="out of range"):
        plan_shards(order, rank=world_size, world_size=world_size, worker=0, num_workers=1)


# -- shuffling ------------------------------------------------------------------------------


def test_shuffle_is_per_epoch_and_reproducible(shards: Path) -> None:
    def order(seed: int, epoch: int, buffer: int = 0) -> list[str]:
        dataset = _dataset(shards, seed=seed, shuffle_buffer=buffer)
        dataset.set_epoch(epoch)
        return _keys(dataset)

    first = order(0, 0)
    assert sorted(first) == ALL_KEYS and first != ALL_KEYS
    assert order(0, 0) == first  # same seed and epoch: same order
    assert order(0, 1) != first  # a new epoch reshuffles
    assert order(1, 0) != first
    buffered = order(0, 0, buffer=6)
    assert sorted(buffered) == ALL_KEYS and buffered != first
    assert buffered == order(0, 0, buffer=6)


def test_shuffle_buffer_is_a_seeded_permutation() -> None:
    rng = lambda: np.random.default_rng(7)  # noqa: E731
    out = list(shuffle_buffered(range(50), 8, rng()))
    assert sorted(out) == list(range(50)) and out != list(range(50))
    assert out == list(shuffle_buffered(range(50), 8, rng()))
    assert max(i - pos for pos, i in enumerate(out)) <= 8  # items move back at most a buffer


# -- corrupt data ---------------------------------------------------------------------------


def test_corrupt_and_incomplete_samples_are_skipped_and_counted(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    src = _make_folder(tmp_path, 8, corrupt=(2,), uncaptioned=(5,))
    (src / "photo_006.json").write_text("{not json")
    write_shards(src, tmp_path / "out", shard_size=4, captions=tmp_path / "captions.csv")
    dataset = _dataset(tmp_path / "out", modalities={**MODALITIES, "meta": ["json"]},
                       required=["image", "text"], shuffle_shards=False)
    with caplog.at_level(logging.INFO, logger="mmcore_webdataset.reading"):
        keys = _keys(dataset)
    assert keys == [f"{i:09d}" for i in (0, 1, 3, 4, 7)]
    assert dataset.stats.skipped == Counter({"corrupt": 2, "missing": 1})
    assert dataset.stats.samples == 5 and dataset.stats.failed_shards == []
    assert "skipped sample 000000002" in caplog.text and "UnidentifiedImageError" in caplog.text
    assert "5 samples from 2 shards; skipped corrupt 2, missing 1" in caplog.text
    lenient = _dataset(tmp_path / "out", required=["image"], shuffle_shards=False)
    assert "text" not in next(i for i in lenient if i["__key__"] == "000000005")


def test_truncated_and_broken_shards_end_with_a_warning(shards: Path, tmp_path: Path,
                                                        caplog: pytest.LogCaptureFixture,
                                                        capsys: pytest.CaptureFixture) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(shards, broken)
    with tarfile.open(broken / "data-000002.tar") as tar:  # samples 6, 7, 8
        cut = next(m for m in tar.getmembers() if m.name == "000000007.png").offset_data + 20
    data = (broken / "data-000002.tar").read_bytes()
    (broken / "data-000002.tar").write_bytes(data[:cut])
    (broken / "data-000005.tar").write_bytes(b"garbage, not a tar file" * 10)
    dataset = _dataset(broken, shuffle_shards=False)
    with caplog.at_level(logging.WARNING, logger="mmcore_webdataset.reading"):
        keys = _keys(dataset)
    lost = {"000000007", "000000008", "000000015", "000000016", "000000017"}
    assert keys == [k for k in ALL_KEYS if k not in lost]  # 6 kept, 7 cut, 8 never read
    assert dataset.stats.skipped == Counter({"truncated": 1})
    assert [Path(p).name for p in dataset.stats.failed_shards] == ["data-000002.tar",
                                                                  "data-000005.tar"]
    assert caplog.text.count("is corrupt or truncated") == 2
    assert main(["shards", "info", str(broken), "--scan"]) == 1
    captured = capsys.readouterr()
    assert "19 samples in 8 shards (from the scan)" in captured.out
    assert "data-000005.tar" in captured.err and "data-000002.tar" in captured.err


# -- shard lists and decoding ---------------------------------------------------------------


def test_brace_expansion_globs_and_lists(shards: Path) -> None:
    assert expand_braces("data-{000000..000002}.tar") == [
        "data-000000.tar", "data-000001.tar", "data-000002.tar"]
    assert expand_braces("{8..11}") == ["8", "9", "10", "11"]
    assert expand_braces("{a,b}-{0..1}") == ["a-0", "a-1", "b-0", "b-1"]
    assert expand_braces("plain.tar") == ["plain.tar"]
    with pytest.raises(ValueError, match="empty range"):
        expand_braces("{5..2}")
    with pytest.raises(ValueError, match="cannot expand"):
        expand_braces("{oops}")
    braced = shard_list(f"{shards}/data-{{000001..000003}}.tar")
    assert [Path(p).name for p in braced] == ["data-000001.tar", "data-000002.tar",
                                             "data-000003.tar"]
    assert shard_list(f"{shards}/*.tar") == shard_list(shards)
    assert len(shard_list([braced[0], f"{shards}/data-00000[67].tar"])) == 3
    assert sorted(_keys(_dataset(braced))) == ALL_KEYS[3:12]
    with pytest.raises(ValueError, match="no shards"):
        shard_list(f"{shards}/nothing-*.tar")


def _wav_bytes(samples: np.ndarray, rate: int) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as wav:
        wav.setnchannels(2)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(np.repeat(samples, 2).astype("<i2").tobytes())  # stereo, equal
    return buffer.getvalue()


def _tar(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_decoder_table(tmp_path: Path) -> None:
    array = io.BytesIO()
    np.save(array, np.arange(6, dtype=np.int16).reshape(2, 3))
    shard = _tar(tmp_path / "x.tar", {
        "k/._0.txt": b"AppleDouble junk", "__meta__.json": b"{}",
        "k/0.cls": b" 7\n", "k/0.seg": b"olleh", "k/0.bin": b"\x00\x01",
        "k/0.npy": array.getvalue(), "k/0.json": b'{"a": [1, 2]}', "k/0.TXT": b" hi \n"})
    dataset = ShardDataset(shard, modalities={
        "label": ["cls"], "seg": ["seg"], "blob": ["bin"], "array": ["npy"], "meta": ["json"],
        "raw_meta": ["json"], "text": ["txt"]}, decoders={"seg": lambda b: b.decode()[::-1]})
    (item,) = list(dataset)  # hidden and __ members are not samples
    assert not dataset.stats.skipped
    assert item["label"] == 7 and item["seg"] == "hello" and item["text"] == "hi"
    assert item["blob"] == b"\x00\x01"  # no decoder: raw bytes
    assert item["meta"] == {"a": [1, 2]}
    np.testing.assert_array_equal(item["array"], np.arange(6).reshape(2, 3))
    (raw,) = list(ShardDataset(shard, modalities={"meta": ["json"]}, raw=["json"]))
    assert raw["meta"] == b'{"a": [1, 2]}'
    with pytest.raises(ValueError, match="not in modalities"):
        ShardDataset(shard, modalities={"text": ["txt"]}, required=["image"])


def _registered(params: dict[str, Any]) -> Any:
    entry = get_registry().get("dataset", "webdataset")
    return entry.factory(entry.config.model_validate(params), None)


def test_registered_webdataset_decodes_wav_and_has_splits(tmp_path: Path) -> None:
    tone = (8000 * np.sin(np.arange(1600) / 5)).astype(np.int16)
    _tar(tmp_path / "a-0.tar", {"0.wav": _wav_bytes(tone, 8000), "0.txt": b"a tone",
                                "1.wav": b"RIFF broken", "1.txt": b"bad audio"})
    _tar(tmp_path / "b-0.tar", {"9.wav": _wav_bytes(tone[:800], 16000), "9.txt": b"eval"})
    dataset = _registered({"shards": str(tmp_path / "a-*.tar"),
                           "eval_shards": [str(tmp_path / "b-{0..0}.tar")],
                           "modalities": {"audio": ["wav", "flac"], "text": ["txt"]}})
    (item,) = list(dataset)
    waveform, rate = item["audio"]
    assert rate == 8000 and waveform.dtype == np.float32 and waveform.shape == (1600,)
    np.testing.assert_allclose(waveform, tone / 32768, atol=1e-6)
    assert dataset.stats.skipped == Counter({"corrupt": 1})
    (held_out,) = list(dataset.split("eval"))
    assert held_out["text"] == "eval" and held_out["audio"][1] == 16000
    with pytest.raises(ValueError, match="eval split needs eval_shards"):
        _registered({"shards": "x.tar"}).split("eval")
    with pytest.raises(ValueError, match="not among modalities"):
        _registered({"shards": "x.tar", "required": ["video"]})


def test_batches_collate_through_the_image_preprocessor(shards: Path) -> None:
    entry = get_registry().get("preprocessor", "image")
    ctx = BuildContext(kernels=KernelSet())
    image = entry.factory(entry.config.model_validate(entry.tiny), ctx)
    dataset = ShardDataset(shards, modalities=MODALITIES)
    loader = DataLoader(dataset, batch_size=5, collate_fn=Collator({"image": image}))
    batches = list(loader)
    assert [len(b["text"]) for b in batches] == [5, 5, 5, 5, 4]
    pixels = batches[0]["image"]
    assert pixels.shape == (5, 3, 16, 16) and pixels.dtype == torch.float32

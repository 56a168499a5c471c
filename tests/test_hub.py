"""Models by hub name through the standard Hugging Face cache, without a network: the
tests lay out the cache (models--ORG--NAME/snapshots/<rev>/..., refs/main) themselves."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import mmcore
from mmcore.cli import main
from mmcore.convert import export_model
from mmcore.errors import CheckpointError
from mmcore.hub import cache_dir, parse, pretrained_sources, resolve

REVISION = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def llama() -> mmcore.MultimodalModel:  # type: ignore[name-defined]
    torch.manual_seed(0)
    return mmcore.build("llama-tiny")


def lay_out_cache(home: Path, repo: str, files_from: Path, revision: str = REVISION,
                  ref: str = "main") -> Path:
    """The hub cache layout huggingface_hub reads: blobs are plain files here."""
    root = home / "hub" / f"models--{repo.replace('/', '--')}"
    snapshot = root / "snapshots" / revision
    snapshot.mkdir(parents=True)
    for file in files_from.iterdir():
        (snapshot / file.name).write_bytes(file.read_bytes())
    (root / "refs").mkdir()
    (root / "refs" / ref).write_text(revision)
    return snapshot


@pytest.fixture()
def offline_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "hf-home"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return home


def test_hub_names_parse() -> None:
    assert parse("hf://openai/clip-vit-base-patch32") == ("openai/clip-vit-base-patch32", None)
    assert parse("hf://org/name@v1.0") == ("org/name", "v1.0")
    for bad in ("hf://noslash", "hf://org/name@", "hf://a/b/c"):
        with pytest.raises(CheckpointError, match="not a hub name"):
            parse(bad)


def test_cache_dir_follows_the_environment(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "elsewhere"))
    assert cache_dir() == tmp_path / "elsewhere"


def test_offline_the_cache_serves_import_and_load(
        llama: object, offline_home: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    export_model(llama, tmp_path / "hf", "hf-llama")  # type: ignore[arg-type]
    snapshot = lay_out_cache(offline_home, "tiny-org/tiny-llama", tmp_path / "hf")
    assert resolve("hf://tiny-org/tiny-llama") == snapshot
    assert resolve(f"hf://tiny-org/tiny-llama@{REVISION}") == snapshot
    loaded = mmcore.load("hf://tiny-org/tiny-llama")
    assert not loaded.training  # load returns eval mode
    for ours, theirs in zip(loaded.state_dict().values(), llama.state_dict().values(),  # type: ignore[attr-defined]
                            strict=True):
        assert torch.equal(ours, theirs)
    out = tmp_path / "imported.safetensors"
    assert main(["import", "hf://tiny-org/tiny-llama", "--out", str(out)]) == 0
    assert "imported hf://tiny-org/tiny-llama as hf-llama" in capsys.readouterr().out
    assert out.is_file()


def test_an_mmcore_checkpoint_on_the_hub_loads(llama: object, offline_home: Path,
                                               tmp_path: Path) -> None:
    mmcore.save(llama, tmp_path / "mm" / "model.safetensors")  # type: ignore[arg-type]
    lay_out_cache(offline_home, "tiny-org/mm-llama", tmp_path / "mm")
    model = mmcore.load("hf://tiny-org/mm-llama")
    assert model.spec is not None and model.spec.name == llama.spec.name  # type: ignore[attr-defined]


def test_a_missing_model_offline_is_one_clear_line(offline_home: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(CheckpointError, match=r"not in the Hugging Face cache .* HF_HUB_OFFLINE"):
        mmcore.load("hf://nobody/nothing")
    assert main(["import", "hf://nobody/nothing", "--out", "x.safetensors"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "hf://nobody/nothing is not in the Hugging Face cache" in err


def test_online_downloads_go_through_snapshot_download(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def fake_download(repo_id: str, **options: object) -> str:
        calls.append((repo_id, options))
        return str(tmp_path)

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_download)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    assert resolve("hf://org/name@v2") == tmp_path
    repo, options = calls[0]
    assert repo == "org/name" and options["revision"] == "v2"
    assert options["cache_dir"] == tmp_path / "home" / "hub"
    assert options["local_files_only"] is False
    assert "*.safetensors" in options["allow_patterns"]  # type: ignore[operator]


def test_list_pretrained(capsys: pytest.CaptureFixture[str]) -> None:
    rows = {r["preset"]: r for r in pretrained_sources()}
    assert rows["clip-vit-b-32"]["source"] == "hf://openai/clip-vit-base-patch32"
    assert rows["clip-vit-b-32"]["converter"] == "hf-clip"
    assert main(["list", "pretrained", "--pattern", "clip"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["preset", "source", "converter", "plugin"]
    assert out[1].split()[:3] == ["clip-vit-b-32", "hf://openai/clip-vit-base-patch32",
                                  "hf-clip"]
    converters = set(mmcore.get_registry().names("converter"))
    assert {r["converter"] for r in rows.values()} <= converters


def test_build_returns_eval_mode() -> None:
    assert not mmcore.build("llama-tiny").training

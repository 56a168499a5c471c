"""The ``mmcore`` command line, run in-process through ``mmcore.cli.main``."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import mmcore
from mmcore import plugins
from mmcore.cli import format_table, main
from mmcore.plugins import reload

COMMANDS = ["plugins", "list", "validate", "inspect", "kernels", "train", "eval"]

TINY_SPEC = """\
name: cli-tiny
modalities:
  image:
    preprocessor: {type: image, size: 16}
    tokenizer: {type: patch-embedding, image_size: 16, patch_size: 8, width: 16}
    encoder: {type: vit, layers: 1, heads: 2}
  text:
    preprocessor: {type: byte-text, context_length: 16}
    tokenizer: {type: token-embedding, vocab_size: 259, width: 16, context_length: 16}
    encoder: {type: text-transformer, layers: 1, heads: 2}
fusion: {type: late, embed_dim: 8, pooling: {image: cls, text: eot}}
objectives:
  contrastive: {type: contrastive, pairs: [[image, text]]}
data: {type: shapes, image_size: 16, train_size: 64, eval_size: 24}
train: {steps: 2, batch_size: 8, warmup_steps: 1, log_every: 1, checkpoint_every: 2}
"""


TINY_SPEC_DICT = yaml.safe_load(TINY_SPEC)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of ``mmcore ARGV``."""
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def tiny_spec(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY_SPEC, encoding="utf-8")
    return path


# ----------------------------------------------------------------------------- entry


def test_python_dash_m_prints_version() -> None:
    result = subprocess.run([sys.executable, "-m", "mmcore", "--version"], capture_output=True,
                            text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"mmcore {mmcore.__version__}"


def test_version_in_process(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--version")
    assert (code, out.strip()) == (0, f"mmcore {mmcore.__version__}")


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(capsys: pytest.CaptureFixture[str], command: str) -> None:
    code, out, _ = run(capsys, command, "--help")
    assert code == 0
    assert f"usage: mmcore {command}" in out
    assert len(out.splitlines()) > 3


def test_no_command_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys)
    assert code == 2
    assert all(command in out for command in COMMANDS)


def test_bad_option_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "train", "clip-tiny", "--out", "x", "--steps", "0")
    assert code == 2
    assert "positive" in err


def test_format_table_aligns_columns() -> None:
    table = format_table(["name", "n"], [["a", "1"], ["long", "1,000"]], right=[1])
    assert table.splitlines() == ["name      n", "a         1", "long  1,000"]


# ----------------------------------------------------------------------------- plugins


def test_plugins_lists_builtin_plugins(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "plugins")
    assert code == 0
    assert f"mmcore_image {mmcore.__version__} (builtin) loaded" in out
    assert "encoder: vit" in out


def test_plugins_json(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "plugins", "--json")
    assert code == 0
    plugins = {p["name"]: p for p in json.loads(out)}
    image = plugins["mmcore_image"]
    assert (image["source"], image["status"], image["error"]) == ("builtin", "loaded", "")
    assert {"kind": "encoder", "name": "vit"} in image["registers"]


def test_plugins_shows_blocked(capsys: pytest.CaptureFixture[str],
                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MMCORE_PLUGINS_BLOCK", "mmcore_fusions")
    reload()
    try:
        code, out, _ = run(capsys, "plugins", "--json")
    finally:
        monkeypatch.delenv("MMCORE_PLUGINS_BLOCK")
        reload()
    fusions = next(p for p in json.loads(out) if p["name"] == "mmcore_fusions")
    assert (code, fusions["status"], fusions["registers"]) == (0, "blocked", [])


def test_plugins_shows_failed(capsys: pytest.CaptureFixture[str],
                              monkeypatch: pytest.MonkeyPatch) -> None:
    manifest = plugins.read_manifest()
    manifest["plugins"].append("mmcore_no_such_plugin")
    monkeypatch.setattr(plugins, "read_manifest", lambda: manifest)
    try:
        with pytest.warns(plugins.PluginWarning, match="mmcore_no_such_plugin"):
            reload()
        code, out, _ = run(capsys, "plugins")
    finally:
        monkeypatch.undo()
        reload()
    assert code == 0
    assert (f"mmcore_no_such_plugin {mmcore.__version__} (builtin) failed: "
            "ModuleNotFoundError") in out
    assert f"mmcore_image {mmcore.__version__} (builtin) loaded" in out


# ----------------------------------------------------------------------------- list


def test_list_all_kinds(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "list")
    assert code == 0
    assert out.splitlines()[0].split() == ["kind", "name", "plugin", "summary"]
    for kind, name in [("encoder", "vit"), ("fusion", "late"), ("preset", "clip-vit-b-32")]:
        assert any(line.split()[:2] == [kind, name] for line in out.splitlines())


@pytest.mark.parametrize("kind", ["tokenizer", "tokenizers"])
def test_list_one_kind(capsys: pytest.CaptureFixture[str], kind: str) -> None:
    code, out, _ = run(capsys, "list", kind)
    rows = [line.split()[:3] for line in out.splitlines()[1:]]
    assert code == 0
    assert ["tokenizer", "patch-embedding", "mmcore_image"] in rows
    assert {row[0] for row in rows} == {"tokenizer"}


def test_list_pattern_and_json(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "list", "encoder", "--pattern", "vi?", "--json")
    entries = json.loads(out)
    assert code == 0
    assert [e["name"] for e in entries] == ["vit"]
    assert entries[0]["plugin"] == "mmcore_image"
    assert re.search(r"mmcore_image[/\\]encoder\.py:\d+$", entries[0]["location"])


def test_list_pattern_without_wildcards_is_a_substring(
        capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "list", "--pattern", "embedding", "--json")
    assert code == 0
    names = {e["name"] for e in json.loads(out)}
    assert {"patch-embedding", "token-embedding", "tubelet-embedding"} <= names
    assert all("embedding" in n for n in names)
    expected = {e.name for e in mmcore.get_registry().list() if "embedding" in e.name}
    assert names == expected


def test_list_unknown_kind_suggests(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "list", "tokenzer")
    assert code == 2
    assert out == ""
    assert err.startswith("error: unknown kind 'tokenzer'")
    assert "'tokenizer'" in err
    assert "Traceback" not in err


# ----------------------------------------------------------------------------- validate


def test_validate_preset(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "validate", "clip-vit-b-32")
    assert code == 0
    assert out.strip() == "ok: clip-vit-b-32 (151,277,313 parameters)"


def test_validate_file(capsys: pytest.CaptureFixture[str], tiny_spec: Path) -> None:
    code, out, _ = run(capsys, "validate", str(tiny_spec))
    assert code == 0
    assert out.startswith("ok: cli-tiny (")


def test_validate_misspelt_component(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(TINY_SPEC.replace("{type: vit,", "{type: vti,"), encoding="utf-8")
    code, out, err = run(capsys, "validate", str(bad))
    assert code == 2
    assert out == ""
    assert "modalities.image.encoder.type (line 6)" in err
    assert "'vit'" in err
    assert "Traceback" not in err


def test_validate_reports_every_problem(capsys: pytest.CaptureFixture[str],
                                       tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    text = TINY_SPEC.replace("{type: vit,", "{type: vti,").replace("embed_dim: 8", "embed_dim: -1")
    bad.write_text(text, encoding="utf-8")
    code, _, err = run(capsys, "validate", str(bad))
    problems = [line for line in err.splitlines() if line.startswith("  - ")]
    assert code == 2
    assert len(problems) == 2
    assert any(p.startswith("  - fusion.embed_dim") for p in problems)


def test_validate_several_specs(capsys: pytest.CaptureFixture[str], tiny_spec: Path) -> None:
    code, out, err = run(capsys, "validate", str(tiny_spec), "no-such-preset")
    assert code == 2
    assert out.startswith("ok: cli-tiny")
    assert "'no-such-preset' is neither a spec file nor a preset" in err


def test_validate_missing_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run(capsys, "validate", str(tmp_path / "missing.yaml"))
    assert code == 2
    assert "no such spec file" in err


def test_debug_shows_the_exception(tmp_path: Path) -> None:
    with pytest.raises(mmcore.SpecError):
        main(["--debug", "inspect", str(tmp_path / "missing.yaml")])


# ----------------------------------------------------------------------------- inspect


def test_inspect_clip_json(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "inspect", "clip-vit-b-32", "--json")
    summary = json.loads(out)
    assert code == 0
    assert summary["parameters"] == 151_277_313
    assert summary["trainable"] == 151_277_313
    assert sum(c["parameters"] for c in summary["components"]) == 151_277_313
    paths = [c["path"] for c in summary["components"]]
    assert paths[:4] == ["modalities.image.tokenizer", "modalities.image.encoder",
                         "modalities.text.tokenizer", "modalities.text.encoder"]
    assert "fusion" in paths
    assert summary["tokens"] == {"image": 50, "text": 77}


def test_inspect_clip_text(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "inspect", "clip-vit-b-32")
    total = next(line for line in out.splitlines() if line.startswith("total"))
    assert code == 0
    assert "151,277,313" in total
    assert "modalities.image.encoder" in out
    assert "image 50, text 77" in out


def test_inspect_counts_frozen_parameters(capsys: pytest.CaptureFixture[str],
                                          tmp_path: Path) -> None:
    spec = tmp_path / "frozen.yaml"
    spec.write_text(TINY_SPEC.replace("pairs: [[image, text]]",
                                      "pairs: [[image, text]], learnable_temperature: false"),
                    encoding="utf-8")
    code, out, _ = run(capsys, "inspect", str(spec), "--json")
    summary = json.loads(out)
    assert code == 0
    assert summary["trainable"] == summary["parameters"] - 1


def test_inspect_invalid_spec_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "inspect", "clip-vit-b-23")
    assert (code, out) == (2, "")
    assert "'clip-vit-b-32'" in err


# ----------------------------------------------------------------------------- kernels


def test_kernels_table(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "kernels", "--device", "cpu")
    assert code == 0
    assert out.startswith("hardware: cpu")
    assert "attention" in out
    assert "sdpa" in out
    assert "reference" in out


def test_kernels_json(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "kernels", "--json", "--device", "cpu")
    report = json.loads(out)
    chosen = {r["op"]: r["candidate"] for r in report["kernels"] if r["status"] == "chosen"}
    assert code == 0
    assert report["device"] == "cpu"
    assert set(chosen) >= {"attention"}
    assert all(set(r) == {"op", "candidate", "status", "reason"} for r in report["kernels"])


def test_kernels_forced_unknown_fails_cleanly(capsys: pytest.CaptureFixture[str],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MMCORE_KERNEL_ATTENTION", "warp-drive")
    code, out, err = run(capsys, "kernels")
    assert (code, out) == (1, "")
    assert err.startswith("error: unknown kernel 'warp-drive'")
    assert len(err.strip().splitlines()) == 1


# ----------------------------------------------------------------------------- train, eval


def test_eval_missing_checkpoint(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run(capsys, "eval", str(tmp_path / "nothing"), "--task", "zero-shot")
    assert code == 1
    assert err.startswith("error: no checkpoint or run folder at")


def test_eval_rejects_unknown_task(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run(capsys, "eval", str(tmp_path), "--task", "vibes")
    assert code == 2
    assert "invalid choice" in err


def test_train_then_eval(capsys: pytest.CaptureFixture[str], tiny_spec: Path,
                         tmp_path: Path) -> None:
    out_dir = tmp_path / "run"
    code, out, err = run(capsys, "train", str(tiny_spec), "--out", str(out_dir), "--steps", "2",
                         "--no-progress")
    assert code == 0, err
    assert (out_dir / "model.safetensors").is_file()
    assert out.splitlines() == [f"checkpoint: {out_dir / 'model.safetensors'}",
                                f"evaluate: mmcore eval {out_dir} --task zero-shot  "
                                "(or --task retrieval)"]
    code, out, err = run(capsys, "eval", str(out_dir), "--task", "zero-shot", "--json",
                         "--batch-size", "8", "--limit", "12", "--no-progress")
    assert code == 0, err
    report = json.loads(out)
    assert (report["task"], report["checkpoint"], report["samples"]) == (
        "zero-shot", str(out_dir), 12)
    assert 0.0 <= report["top1"] <= report["top5"] <= 1.0
    code, out, err = run(capsys, "eval", str(out_dir / "model.safetensors"), "--task",
                         "retrieval", "--limit", "12", "--no-progress")
    assert code == 0, err
    rows = dict(line.split(maxsplit=1) for line in out.splitlines()[2:])
    assert set(rows) >= {"samples", "image_to_text.recall@1", "text_to_image.recall@5"}


def test_train_refuses_an_existing_run_then_resumes(capsys: pytest.CaptureFixture[str],
                                                    tiny_spec: Path, tmp_path: Path) -> None:
    out_dir = str(tmp_path / "run")
    common = [str(tiny_spec), "--out", out_dir, "--steps", "2", "--no-progress"]
    code, out, _ = run(capsys, "train", *common, "--stop-after", "1")
    assert code == 0
    assert out.splitlines()[-1] == f"continue: mmcore train {tiny_spec} --out {out_dir} --resume"
    code, _, err = run(capsys, "train", *common)
    assert code == 1
    assert err.startswith("error: ") and "already holds a run" in err
    code, out, err = run(capsys, "train", *common, "--resume")
    assert code == 0, err
    assert out.startswith(f"checkpoint: {Path(out_dir) / 'model.safetensors'}")


def test_eval_needs_a_contrastive_model(capsys: pytest.CaptureFixture[str],
                                        tmp_path: Path) -> None:
    spec = mmcore.load_spec(TINY_SPEC_DICT | {"objectives": {}})
    path = mmcore.save(mmcore.build(spec), tmp_path / "model.safetensors")
    code, _, err = run(capsys, "eval", str(path), "--task", "zero-shot", "--no-progress")
    assert code == 1
    assert "contrastive objective" in err


def test_existing_run_message_names_the_flags(capsys: pytest.CaptureFixture[str],
                                              tiny_spec: Path, tmp_path: Path) -> None:
    out_dir = str(tmp_path / "run")
    common = [str(tiny_spec), "--out", out_dir, "--steps", "1", "--no-progress",
              "train.warmup_steps=0"]
    assert run(capsys, "train", *common)[0] == 0
    code, _, err = run(capsys, "train", *common)
    assert code == 1 and err.count("\n") == 1
    assert "--resume" in err and "--overwrite" in err and "--out" in err


def test_train_needs_out_unless_printing(capsys: pytest.CaptureFixture[str],
                                         tiny_spec: Path) -> None:
    code, _, err = run(capsys, "train", str(tiny_spec))
    assert code == 2 and "train needs --out DIR" in err
    code, out, _ = run(capsys, "train", str(tiny_spec), "--print-spec", "--init", "runs/a")
    assert code == 0 and yaml.safe_load(out)["init"] == "runs/a"


def test_continue_line_repeats_the_overrides(capsys: pytest.CaptureFixture[str],
                                             tiny_spec: Path, tmp_path: Path) -> None:
    out_dir = str(tmp_path / "run")
    code, out, _ = run(capsys, "train", str(tiny_spec), "--out", out_dir, "--no-progress",
                       "--stop-after", "1", "train.lr=2e-4", "name=my run")
    assert code == 0
    assert out.splitlines()[-1] == (f"continue: mmcore train {tiny_spec} train.lr=2e-4 "
                                    f"'name=my run' --out {out_dir} --resume")

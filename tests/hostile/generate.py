"""The hostile-input corpus of issue 17: each :class:`Case` writes its files into a fresh
folder at test time and names the ``mmcore`` command line to run there.

``{assets}`` in a command stands for the shared, read-only assets (:func:`write_assets`):
a tiny random Whisper folder and a tiny CLIP checkpoint.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hostile import files
from hostile.files import LAUGHS, spec, write_spec

Writer = Callable[[Path], None]
#: cases the checkpoint/CLI work (another change) fixes; they turn green when it lands
CHECKPOINT_WORK = "fixed by the checkpoint/CLI work"


@dataclass(frozen=True)
class Case:
    """One hostile input: the files, the command, what the error must name."""

    id: str
    argv: tuple[str, ...]
    message: str  # a regex stderr must match (naming the file or key)
    write: Writer = lambda root: None
    env: dict[str, str] = field(default_factory=dict)
    codes: tuple[int, ...] = (1, 2)
    #: paths (relative to the case folder) the command may create or change
    writable: tuple[str, ...] = ("out",)
    xfail: str = ""
    fresh: bool = False  # a real ``python -m mmcore`` (plugin discovery differs per case)
    #: write ``bad.safetensors``: the asset checkpoint with these lies (lying_checkpoint)
    lie: tuple[tuple[str, object], ...] = ()
    #: copy the asset run folder to ``run/`` and break it with ``break_run(root / "run")``
    break_run: Writer | None = None
    #: more checks of the case folder after the command
    after: Writer = lambda root: None


def _text(name: str, text: str | bytes) -> Writer:
    def write(root: Path) -> None:
        path = root / name
        if isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(text, encoding="utf-8")
    return write


def _all(*writers: Writer) -> Writer:
    def write(root: Path) -> None:
        for writer in writers:
            writer(root)
    return write


def _spec_file(**changes: object) -> Writer:
    return lambda root: write_spec(root / "spec.yaml", spec(**changes))


def _validate(id_: str, message: str, write: Writer, name: str = "spec.yaml") -> Case:
    return Case(id_, ("validate", name), message, write)


YAML_CASES = [
    _validate("yaml-billion-laughs", r"bomb\.yaml.*expands to more than 100,000 values",
              _text("bomb.yaml", LAUGHS), "bomb.yaml"),
    _validate("yaml-laughs-under-metadata", r"expands to more than .*MMCORE_LIMIT_SPEC_NODES",
              _text("spec.yaml", "name: x\nmetadata:\n" + "".join(
                  "  " + line + "\n" for line in LAUGHS.splitlines()))),
    _validate("yaml-over-size", r"spec\.yaml.*over the limit.*MMCORE_LIMIT_SPEC_BYTES",
              _text("spec.yaml", "# padding\n" * 120_000)),
    _validate("yaml-deep-brackets", r"spec\.yaml.*nest", _text("spec.yaml", "[" * 5000)),
    _validate("yaml-deep-mappings", r"spec\.yaml.*nests deeper than 64",
              _text("spec.yaml", "".join(f"{' ' * i}k{i}:\n" for i in range(99)) + " " * 99
                    + "x: 1")),
    _validate("yaml-recursive-alias", r"spec\.yaml.*recursive alias",
              _text("spec.yaml", "a: &a [1, *a]\n")),
    _validate("yaml-nul-byte", r"spec\.yaml.*(control|special) characters?",
              _text("spec.yaml", "name: a\x00b\n")),
    _validate("yaml-bel-byte", r"spec\.yaml.*(control|special) characters?",
              _text("spec.yaml", "name: a\x07b\n")),
    _validate("yaml-not-utf8", r"spec\.yaml.*not UTF-8", _text("spec.yaml", b"name: \xff\xfe\n")),
    _validate("yaml-python-tag", r"spec\.yaml.*(python|tag)",
              _text("spec.yaml", "name: !!python/object/apply:os.system ['echo hi']\n")),
    _validate("yaml-duplicate-key", r"spec\.yaml.*duplicate key",
              _text("spec.yaml", "name: a\nname: b\n")),
    _validate("yaml-top-level-list", r"spec\.yaml", _text("spec.yaml", "- 1\n- 2\n")),
    _validate("yaml-empty", r"spec\.yaml.*empty", _text("spec.yaml", "")),
]

HUGE = 99999999999999999999
SPEC_CASES = [
    _validate("spec-layers-huge", r"modalities\.image\.encoder.*parameters",
              _spec_file(modalities__image__encoder__layers=HUGE)),
    Case("inspect-layers-huge", ("inspect", "spec.yaml"), r"parameters",
         _spec_file(modalities__image__encoder__layers=HUGE)),
    _validate("spec-width-1e9", r"parameters", _spec_file(
        modalities__image__tokenizer__width=10**9)),
    _validate("spec-weight-nan", r"objectives\.clip\.weight",
              _spec_file(objectives__clip__weight=math.nan)),
    _validate("spec-lr-inf", r"train\.lr", _spec_file(train__lr=math.inf)),
    _validate("spec-betas-out-of-range", r"train\.betas",
              _spec_file(train__betas=[0.9, 1.5])),
    _validate("spec-std-zero", r"modalities\.image\.preprocessor\.std",
              _spec_file(modalities__image__preprocessor__std=[0.0, 0.0, 0.0])),
    _validate("spec-seed-negative", r"train\.seed", _spec_file(train__seed=-1)),
    _validate("spec-layers-bool", r"modalities\.image\.encoder\.layers",
              _spec_file(modalities__image__encoder__layers=True)),
    _validate("spec-heads-float", r"modalities\.text\.encoder\.heads",
              _spec_file(modalities__text__encoder__heads=4.0)),
    _validate("spec-batch-over-data", r"train\.batch_size", _spec_file(train__batch_size=64)),
    _validate("spec-unknown-component", r"fusion.*nope", _spec_file(fusion={"type": "nope"})),
    Case("spec-missing-file", ("validate", "gone.yaml"), r"gone\.yaml"),
]

DEVICE_CASES = [
    Case("train-device-banana", ("train", "spec.yaml", "--out", "out", "--device", "banana"),
         r"banana", _spec_file(), writable=()),
    Case("eval-device-banana", ("eval", "{assets}/clip.safetensors", "--task", "zero-shot",
                                "--device", "banana"), r"banana"),
    Case("kernels-device-banana", ("kernels", "--device", "banana"), r"banana"),
    Case("kernel-variable-unknown-op", ("kernels",), r"MMCORE_KERNEL_FOO",
         env={"MMCORE_KERNEL_FOO": "reference"}),
    Case("limit-variable-not-a-number", ("validate", "spec.yaml"),
         r"MMCORE_LIMIT_SPEC_BYTES", _spec_file(), env={"MMCORE_LIMIT_SPEC_BYTES": "lots"}),
]


def _audio(id_: str, message: str, blob: bytes, *extra: str,
           also: Writer = lambda root: None) -> Case:
    return Case(id_, ("transcribe", "{assets}/whisper", "clip.wav", *extra), message,
                _all(_text("clip.wav", blob), also))


def _with(samples: np.ndarray, index: int, value: float) -> np.ndarray:
    out = samples.copy()
    out[index] = value
    return out


AUDIO_CASES = [
    _audio("wav-nan", r"clip\.wav.*NaN", files.float_wav(_with(files.tone(), 9, math.nan))),
    _audio("wav-inf", r"clip\.wav.*infinite", files.float_wav(_with(files.tone(), 9, math.inf))),
    _audio("wav-1e30", r"clip\.wav.*magnitude.*MMCORE_LIMIT_AUDIO_AMPLITUDE",
           files.float_wav(_with(files.tone(), 9, 1e30))),
    _audio("wav-header-longer-than-data", r"clip\.wav.*declares",
           files.float_wav(files.tone(), declared=1 << 20)),
    _audio("wav-1-hz", r"clip\.wav.*sample rate", files.pcm_wav(np.zeros(4), rate=1)),
    _audio("wav-200-mhz", r"clip\.wav.*sample rate",
           files.pcm_wav(np.zeros(4), rate=200_000_000)),
    _audio("wav-not-a-wav", r"clip\.wav", b"RIFF\x00\x00\x00\x00WAVEjunk"),
    _audio("wav-empty", r"clip\.wav", b""),
    _audio("transcribe-beam-size-100000", r"beam", files.pcm_wav(files.tone() * 1000),
           "--beam-size", "100000"),
    _audio("tokenizer-not-json", r"bad\.json", files.pcm_wav(files.tone() * 1000),
           "--tokenizer", "bad.json", also=_text("bad.json", "this is not json {")),
]


def _images(id_: str, message: str, odd: bytes) -> Case:
    return Case(id_, ("eval", "{assets}/clip.safetensors", "--task", "zero-shot",
                      "--data", "image-folder:images"), message,
                lambda root: files.image_folder(root / "images", odd))


IMAGE_CASES = [
    _images("png-1x20000000", r"odd\.png.*(side|aspect)", files.png_header(1, 20_000_000)),
    _images("png-80000000x1", r"odd\.png.*(side|aspect)", files.png_header(80_000_000, 1)),
    _images("png-truncated", r"odd\.png", files.png(16, 16)[:40]),
    _images("png-not-an-image", r"odd\.png", b"hello, I am text"),
]


def _loop(root: Path) -> None:
    src = root / "src"
    src.mkdir()
    (src / "a.txt").write_text("a red star")
    os.symlink(src / "loop2", src / "loop1")
    os.symlink(src / "loop1", src / "loop2")


def _src(root: Path) -> None:
    (root / "src").mkdir()
    (root / "src" / "a.png").write_bytes(files.png(4, 4))
    (root / "src" / "a.txt").write_text("a red star")


def _index(text: str) -> Writer:
    def write(root: Path) -> None:
        (root / "shards").mkdir()
        (root / "shards" / "index.json").write_text(text)
    return write


SHARD_CASES = [
    Case("shards-prefix-escape", ("shards", "write", "src", "--out", "out", "--prefix",
                                  "../../X"), r"--prefix.*plain file-name prefix", _src,
         writable=()),
    Case("shards-symlink-loop", ("shards", "write", "src", "--out", "out"),
         r"loop1.*symbolic link loop", _loop),
    Case("shards-index-shards-oops", ("shards", "info", "shards"),
         r"index\.json.*'shards' must be a list", _index('{"shards": "oops"}')),
    Case("shards-index-not-json", ("shards", "info", "shards"), r"index\.json.*not valid JSON",
         _index("{nope")),
    Case("shards-captions-row-list", ("shards", "write", "src", "--out", "out", "--captions",
                                      "c.jsonl"), r"c\.jsonl line 1.*JSON object",
         _all(_src, _text("c.jsonl", '["a.png", "x"]\n'))),
]

IMPORT_CASES = [
    Case("hf-clip-vision-config-list", ("import", "hf", "--out", "out"),
         r"config\.json.*vision_config", lambda root: files.hf_clip_folder(
             root / "hf", vision_config=[1, 2])),
    Case("hf-clip-projection-dim-string", ("import", "hf", "--out", "out"),
         r"config\.json projection_dim", lambda root: files.hf_clip_folder(
             root / "hf", projection_dim="512")),
    Case("hf-config-not-object", ("import", "hf", "--out", "out"), r"\bhf\b",
         _all(lambda root: (root / "hf").mkdir(), _text("hf/config.json", "[1, 2]"))),
    Case("hf-clip-layers-string", ("import", "hf", "--out", "out"),
         r"config\.json.*num_hidden_layers", lambda root: files.hf_clip_folder(
             root / "hf", text_config={"num_hidden_layers": "12"})),
]

PLUGIN_CASES = [
    Case(f"plugin-raises-{name}", ("validate", "spec.yaml"), r"hostile",
         _all(lambda root, r=raise_: files.exiting_plugin(root / "site", r), _spec_file()),
         env={"PYTHONPATH": "site"}, codes=(0,), fresh=fresh)
    # one real ``python -m mmcore`` keeps the fresh path (MMCORE_HOSTILE_FRESH=1) tested
    for name, raise_, fresh in (("system-exit", "SystemExit(3)", True),
                                ("keyboard-interrupt", "KeyboardInterrupt", False))
]


def _run_folder(root: Path) -> None:
    """A finished run whose checkpoints/ were deleted: spec, weights, metrics only."""
    write_spec(root / "spec.yaml", spec())
    run = root / "run"
    run.mkdir()
    write_spec(run / "spec.yaml", spec())
    (run / "model.safetensors").write_bytes(b"precious weights")
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 1.0}\n')


def _checkpoint(id_: str, message: str, xfail: str = "", **lie: object) -> Case:
    """``mmcore eval`` of a copy of the asset checkpoint that lies (files.lying_checkpoint);
    the case writes ``bad.safetensors`` from ``{assets}`` at run time."""
    return Case(id_, ("eval", "bad.safetensors", "--task", "zero-shot"), message,
                lambda root: None, xfail=xfail, lie=tuple(lie.items()))


CHECKPOINT_CASES = [
    _checkpoint("ckpt-int64-tensors", r"bad\.safetensors.*dtype", dtype="int64"),
    _checkpoint("ckpt-bool-tensors", r"bad\.safetensors.*dtype", dtype="bool"),
    _checkpoint("ckpt-i32-over-f32", r"bad\.safetensors.*dtype", dtype="i32-over-f32"),
    _checkpoint("ckpt-spec-json-list", r"bad\.safetensors.*spec", spec_json="[1, 2]"),
    _checkpoint("ckpt-spec-not-json", r"bad\.safetensors.*spec", spec_json="{nope"),
    _checkpoint("ckpt-vocab-50-million", r"bad\.safetensors.*spec describes .* parameters",
                spec_change=("modalities.text.tokenizer.vocab_size", 50_000_000)),
    Case("train-over-a-run-without-checkpoints", ("train", "spec.yaml", "--out", "run"),
         r"run.*--overwrite", _run_folder, writable=()),
]

def _resume(id_: str, message: str, break_run: Writer, after: Writer = lambda root: None,
            codes: tuple[int, ...] = (0, 1)) -> Case:
    """``mmcore train --resume`` of a broken copy of the asset run (2 steps, a checkpoint
    after each); the run folder may change, nothing else."""
    return Case(id_, ("train", "run/spec.yaml", "--out", "run", "--resume"), message,
                codes=codes, writable=("run",), break_run=break_run, after=after)


def _newest(run: Path) -> Path:
    return run / "checkpoints" / "step-000002"


def _set_aside(root: Path) -> None:
    names = [p.name for p in (root / "run" / "checkpoints").iterdir()]
    assert any("step-000002" in n and n != "step-000002" for n in names) or \
        "step-000002" in names, f"the corrupt checkpoint was deleted: {names}"


def _no_tmp(root: Path) -> None:
    left = [p.name for p in (root / "run" / "checkpoints").iterdir() if ".tmp" in p.name]
    assert not left, f"stale folders left: {left}"


RESUME_CASES = [
    _resume("resume-state-json-lacks-keys", r"state\.json",
            lambda run: (_newest(run) / "state.json").write_text('{"format": "mmcore-train/1"}')),
    _resume("resume-state-json-not-json", r"state\.json",
            lambda run: (_newest(run) / "state.json").write_text("{nope")),
    _resume("resume-newest-checkpoint-corrupt", r"step-000002", lambda run: (
        _newest(run) / "model.safetensors").write_bytes(b"\x00" * 64), after=_set_aside,
            codes=(0,)),
    _resume("resume-stale-tmp-step-folder", r"", lambda run: (
        run / "checkpoints" / ".tmp-step-000003").mkdir(), after=_no_tmp, codes=(0,)),
]

CASES: list[Case] = [*YAML_CASES, *SPEC_CASES, *DEVICE_CASES, *AUDIO_CASES, *IMAGE_CASES,
                     *SHARD_CASES, *IMPORT_CASES, *PLUGIN_CASES, *CHECKPOINT_CASES,
                     *RESUME_CASES]


def write_assets(root: Path) -> None:
    """The shared assets: ``whisper/`` (tiny random HF Whisper), ``clip.safetensors`` and
    ``run/`` (a finished 2-step run with a checkpoint after each step)."""
    import mmcore
    from mmcore import checkpoint
    from mmcore.training import train
    from mmcore_whisper.testing import write_random_whisper

    write_random_whisper(root / "whisper")
    model = mmcore.build(spec(), device="cpu")
    checkpoint.save(model, root / "clip.safetensors")
    run = spec(train__steps=2, train__checkpoint_every=1)
    train(mmcore.load_spec(run), root / "run", progress=False)
    write_spec(root / "run" / "spec.yaml", run)

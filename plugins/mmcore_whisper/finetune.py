"""``mmcore whisper-spec``: the spec that fine-tunes an imported Whisper on an
``audio-text-folder``: the converter's own spec (so ``--init`` the same folder covers every
component) plus the ``whisper-lm`` objective, the data and the training settings."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from mmcore.commands import EXIT_OK, UsageError, positive_int

SUMMARY = "print the spec that fine-tunes a Whisper folder on WAV + TXT pairs"
EPILOG = """\
example:
  mmcore whisper-spec ./whisper-tiny --data ./clips > finetune.yaml
  mmcore train finetune.yaml --init ./whisper-tiny --out runs/ft
  mmcore transcribe runs/ft/model.safetensors clip.wav"""


def finetune_spec(source: str | Path, data: str | Path, *, steps: int = 1000,
                  batch_size: int = 8, lr: float = 1e-5, language: str | None = "en",
                  eval_fraction: float = 0.1) -> dict[str, Any]:
    """The spec (a mapping) that fine-tunes the Hugging Face Whisper folder ``source`` on
    the ``audio-text-folder`` at ``data``."""
    from mmcore_whisper.convert import (
        HFWhisperConverter,
        check_folder,
        read_json,
        spec_from_folder,
    )
    from mmcore_whisper.keys import HEAD

    folder = Path(source)
    if not HFWhisperConverter().detect(folder):
        raise ValueError(f"{folder} is not a Hugging Face Whisper folder (config.json with "
                         "model_type whisper)")
    check_folder(folder)
    spec = spec_from_folder(folder, read_json(folder / "config.json"))
    multilingual = bool(spec["heads"][HEAD]["tokens"]["languages"])
    spec["name"] = f"{spec['name']}-finetune"
    spec["objectives"] = {"lm": {"type": "whisper-lm", "head": HEAD,
                                 "language": language if multilingual else None}}
    spec["data"] = {"type": "audio-text-folder", "root": str(Path(data).resolve()),
                    "eval_fraction": eval_fraction}
    spec["train"] = {"steps": steps, "batch_size": batch_size, "lr": lr,
                     "warmup_steps": max(1, steps // 20), "weight_decay": 0.0,
                     "grad_clip": 1.0, "log_every": max(1, steps // 50),
                     "checkpoint_every": max(1, steps // 4), "seed": 0}
    return spec


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EPILOG
    parser.add_argument("source", metavar="WHISPER", help="a Hugging Face Whisper folder")
    parser.add_argument("--data", required=True, metavar="FOLDER",
                        help="clips with a .txt transcript beside each (audio-text-folder)")
    parser.add_argument("--steps", type=positive_int, default=1000, metavar="N")
    parser.add_argument("--batch-size", type=positive_int, default=8, metavar="N")
    parser.add_argument("--lr", type=float, default=1e-5)
    parser.add_argument("--language", default="en", metavar="CODE",
                        help="the prompt's language token (multilingual models)")


def run(args: argparse.Namespace) -> int:
    """Print the fine-tuning spec as YAML."""
    import yaml

    try:
        spec = finetune_spec(args.source, args.data, steps=args.steps,
                             batch_size=args.batch_size, lr=args.lr, language=args.language)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    print(yaml.safe_dump(spec, sort_keys=False, width=100), end="")
    return EXIT_OK

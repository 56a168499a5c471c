"""``mmcore train``: its arguments and body, and the command-line helpers the spec verbs
share (KEY=VALUE overrides, the ``--device`` check). Kept apart from :mod:`mmcore.cli` so
each module stays short."""

from __future__ import annotations

import argparse
import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mmcore.commands import EXIT_OK, UsageError, positive_int
from mmcore.errors import SpecError

if TYPE_CHECKING:
    from mmcore.spec import ModelSpec

TRAIN_EXAMPLES = (
    "examples:\n  mmcore train clip-tiny --out runs/clip-tiny --steps 200\n"
    "  mmcore train clip-tiny --init runs/clip-tiny --out runs/ft train.lr=2e-4\n"
    "  mmcore train clip-tiny-classifier --init modalities.image=runs/clip-tiny "
    "--out runs/cls\n"
    "  mmcore train clip-tiny train.steps=500 --print-spec\n"
    "several processes: torchrun --nproc_per_node 2 -m mmcore train clip-tiny "
    "--out runs/clip-tiny")


def load_spec_args(source: str, overrides: Sequence[str] = ()) -> ModelSpec:
    """A spec from a YAML path or a preset name with ``KEY=VALUE`` overrides applied
    (SpecError lists every problem)."""
    from mmcore.overrides import load_spec

    return load_spec(source, overrides)


def checked_device(device: str | None) -> str | None:
    """``--device`` checked: a one-line error for a malformed or absent device."""
    if device is None:
        return None
    from mmcore.kernels.dispatch import check_device

    return check_device(device)


def split_specs(values: Sequence[str]) -> tuple[list[str], list[str]]:
    """Positional arguments -> (spec sources, KEY=VALUE overrides)."""
    from mmcore.overrides import is_override

    overrides = [v for v in values if is_override(v) and not Path(v).exists()]
    return [v for v in values if v not in overrides], overrides


def add_overrides(p: argparse.ArgumentParser) -> None:
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="override a spec key (dotted path; the value is YAML), e.g. "
                        "train.lr=1e-4 fusion.layers=4 'objectives.clip.weight=0.5'")


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of ``mmcore train``."""
    p.add_argument("spec", metavar="SPEC", help="a YAML file or a preset name")
    add_overrides(p)
    p.add_argument("--out", metavar="DIR", help="run folder for checkpoints (required)")
    p.add_argument("--init", action="append", metavar="[PATH=]SOURCE",
                   help="start from these weights: an mmcore checkpoint or run folder, or what "
                        "'mmcore import' reads (HF CLIP/Whisper/CLAP folder, OpenAI CLIP); "
                        "PATH=SOURCE loads one component (repeatable)")
    p.add_argument("--print-spec", action="store_true",
                   help="print the resolved spec (presets, overrides, --init) as YAML and exit")
    p.add_argument("--resume", action="store_true",
                   help="continue from DIR's newest complete checkpoint (fresh if none)")
    p.add_argument("--overwrite", action="store_true",
                   help="delete an earlier run in DIR and start again")
    p.add_argument("--steps", type=positive_int, metavar="N",
                   help="train N steps in all (default: the spec's train.steps)")
    p.add_argument("--stop-after", type=positive_int, metavar="N",
                   help="stop at step N with a checkpoint; --resume continues later")
    p.add_argument("--no-progress", action="store_true", help="do not show a progress bar")
    p.add_argument("--device", default=None,
                   help="torch device: cpu, cuda, cuda:N or mps (default cpu)")
    p.add_argument("--strategy", choices=["auto", "ddp", "fsdp"],
                   help="under torchrun: ddp or fsdp (FSDP2); auto = ddp (default: the spec's "
                        "train.strategy)")
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16"],
                   help="autocast precision; fp16 adds a gradient scaler (default: the spec's)")
    p.add_argument("--grad-accum", type=positive_int, metavar="N",
                   help="micro-batches per optimizer step (default: the spec's)")
    p.add_argument("--tensorboard", action="store_true",
                   help="also write TensorBoard events to DIR/tensorboard")


def cmd_train(args: argparse.Namespace) -> int:
    """Train a spec's model on its data. DIR receives checkpoints, metrics (metrics.jsonl,
    metrics.csv, loss.png), the spec and the final model.safetensors.

    KEY=VALUE arguments override the spec's keys (train.lr=1e-4 fusion.layers=4), checked
    like the YAML. --init starts from other weights: an mmcore checkpoint or run folder, or
    anything 'mmcore import' reads; PATH=SOURCE takes one component (modalities.image=RUN).
    """
    from mmcore.training.init import with_init

    spec = with_init(_train_overrides(load_spec_args(args.spec, args.overrides), args), args.init)
    if args.print_spec:
        _print_yaml(spec.to_dict())
        return EXIT_OK
    if args.out is None:
        raise UsageError("train needs --out DIR (the run folder)")
    device = checked_device(args.device) or "cpu"
    from mmcore.parallel import launch_rank
    from mmcore.training import train

    checkpoint = train(spec, Path(args.out), resume=args.resume, steps=args.steps,
                       progress=not args.no_progress, device=device,
                       stop_after=args.stop_after, overwrite=args.overwrite)
    if launch_rank() != 0:  # under torchrun rank 0 alone reports
        return EXIT_OK
    print(f"checkpoint: {checkpoint}")
    if checkpoint != Path(args.out) / "model.safetensors":
        again = " ".join(shlex.quote(o) for o in args.overrides)  # the same spec again
        print(f"continue: mmcore train {args.spec} {again + ' ' if again else ''}"
              f"--out {args.out} --resume")
    elif _is_contrastive(spec):
        print(f"evaluate: mmcore eval {args.out} --task zero-shot  (or --task retrieval)")
    return EXIT_OK


def _train_overrides(spec: ModelSpec, args: argparse.Namespace) -> ModelSpec:
    """The spec with ``train:`` settings replaced by the train command's options."""
    from mmcore.errors import SpecIssue
    from mmcore.spec import TrainSpec

    given = {"strategy": args.strategy, "precision": args.precision,
             "grad_accum_steps": args.grad_accum, "tensorboard": args.tensorboard or None}
    changes = {k: v for k, v in given.items() if v is not None}
    if not changes:
        return spec
    try:
        train = TrainSpec.model_validate({**spec.train.model_dump(), **changes})
    except ValueError as exc:
        raise SpecError([SpecIssue("train", str(exc))], args.spec) from None
    return spec.model_copy(update={"train": train})


def _print_yaml(data: Mapping[str, Any]) -> None:
    import yaml

    print(yaml.safe_dump(dict(data), sort_keys=False, allow_unicode=True), end="")


def _is_contrastive(spec: ModelSpec) -> bool:
    """Whether ``mmcore eval`` applies: an objective that pairs modalities."""
    return any("pairs" in ref.params for ref in spec.objectives.values())

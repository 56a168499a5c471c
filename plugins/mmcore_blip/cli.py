"""``mmcore caption`` and ``mmcore capfilt``: this plugin's CLI verbs, registered through
``register_commands``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from mmcore.commands import (
    EXIT_OK,
    UsageError,
    add_json_flag,
    load_any_model,
    positive_int,
    print_json,
)

CAPTION_SUMMARY = "caption images with a BLIP model"
CAPFILT_SUMMARY = "BLIP CapFilt: caption and filter a dataset into an image-captions folder"


def caption_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``mmcore caption``."""
    parser.epilog = ("examples:\n  mmcore caption runs/blip-tiny photo.png\n"
                     "  mmcore caption ./blip-image-captioning-base a.jpg b.jpg --json")
    parser.add_argument("model", metavar="MODEL", help="an mmcore BLIP checkpoint or run, "
                        "or a Hugging Face BLIP folder")
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    parser.add_argument("--max-new-tokens", type=positive_int, default=30, metavar="N")
    parser.add_argument("--beams", type=positive_int, default=1, metavar="N",
                        help="beam search with N beams (default 1: greedy)")
    add_json_flag(parser)


def _load(source: str) -> Any:
    from mmcore_blip.runner import blip_parts

    model = load_any_model(source).eval()
    try:
        blip_parts(model)
    except ValueError as exc:
        raise UsageError(f"{source}: {exc}") from None
    return model


def caption_run(args: argparse.Namespace) -> int:
    """Print one caption per image (greedy, or beam search with --beams)."""
    from mmcore.generation import GenerationConfig
    from mmcore_blip.runner import caption, preprocess_images

    model = _load(args.model)
    pixels = preprocess_images(model, [Path(p) for p in args.images])
    config = GenerationConfig(max_new_tokens=args.max_new_tokens, num_beams=args.beams)
    captions = caption(model, pixels, config=config)
    if args.json:
        print_json([{"image": p, "caption": c}
                    for p, c in zip(args.images, captions, strict=True)])
    else:
        for path, text in zip(args.images, captions, strict=True):
            print(f"{path}\t{text}")
    return EXIT_OK


def capfilt_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``mmcore capfilt``."""
    parser.epilog = ("examples:\n  mmcore capfilt runs/blip-tiny --data shapes-noisy "
                     "--limit 2000 --out data/filtered\n"
                     "  mmcore capfilt runs/blip-tiny --data image-captions:web/ --out clean/\n"
                     "then: mmcore train blip-tiny data.type=image-captions "
                     "data.path=data/filtered --out runs/filtered")
    parser.add_argument("model", metavar="MODEL", help="a BLIP model with ITM and LM")
    parser.add_argument("--data", required=True, metavar="SOURCE",
                        help="a dataset: TYPE, TYPE:PATH or a YAML mapping with a type")
    parser.add_argument("--out", required=True, metavar="DIR", help="the image-captions "
                        "folder to write (images/ and captions.jsonl)")
    parser.add_argument("--split", default="train", help="the dataset split (default train)")
    parser.add_argument("--limit", type=positive_int, default=None, metavar="N",
                        help="read only the first N items")
    parser.add_argument("--top-p", type=float, default=0.9, help="nucleus sampling (0.9)")
    parser.add_argument("--threshold", type=float, default=0.5,
                        help="keep a caption when ITM P(matched) >= this (0.5)")
    parser.add_argument("--batch-size", type=positive_int, default=64, metavar="N")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true",
                        help="write into --out even if it holds captions already")
    add_json_flag(parser)


def _dataset(text: str, split: str) -> Any:
    """TYPE, TYPE:PATH (fills ``path`` or ``root``) or a YAML mapping -> the dataset split."""
    from mmcore.data import open_dataset
    from mmcore.plugins import get_registry
    from mmcore.spec import ComponentRef, parse_yaml

    if text.lstrip().startswith("{"):
        data, _ = parse_yaml(text, "--data")
    else:
        kind, _, path = text.partition(":")
        data = {"type": kind}
        if path:
            fields = get_registry().get("dataset", kind).config.model_fields
            key = next((k for k in ("path", "root") if k in fields), None)
            if key is None:
                raise UsageError(f"--data: dataset {kind!r} takes no path or root")
            data[key] = path
    if not isinstance(data, dict) or not isinstance(data.get("type"), str):
        raise UsageError("--data takes TYPE, TYPE:PATH or a YAML mapping with a type")
    return open_dataset(ComponentRef.model_validate(data), split)


def capfilt_run(args: argparse.Namespace) -> int:
    """Caption (nucleus sampling) and filter (ITM) a dataset; print what was kept."""
    from mmcore_blip.capfilt import CapFiltOptions, capfilt

    if not 0 < args.top_p <= 1 or not 0 <= args.threshold <= 1:
        raise UsageError("--top-p must be in (0, 1] and --threshold in [0, 1]")
    out = Path(args.out)
    if (out / "captions.jsonl").exists() and not args.overwrite:
        raise UsageError(f"{out} already holds captions.jsonl; pass --overwrite or another "
                         "--out")
    model = _load(args.model)
    data = _dataset(args.data, args.split)
    options = CapFiltOptions(top_p=args.top_p, threshold=args.threshold,
                             batch_size=args.batch_size, limit=args.limit, seed=args.seed)
    report = capfilt(model, data, out, options)
    metrics = {"out": str(out), **report.metrics()}
    if args.json:
        print_json({**metrics, "examples": report.examples})
    else:
        for key, value in metrics.items():
            print(f"{key:<20} {value:.4f}" if isinstance(value, float) else f"{key:<20} {value}")
    return EXIT_OK

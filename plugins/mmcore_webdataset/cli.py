"""``mmcore shards``: this plugin's CLI verb (write and inspect tar shards), registered
through ``register_commands``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mmcore.commands import EXIT_FAILURE, EXIT_OK, add_json_flag, positive_int, print_json
from mmcore.report import binary_bytes, count, format_table

SUMMARY = "write and inspect tar shards (webdataset layout)"
EPILOG = """\
examples:
  mmcore shards write photos/ --out shards/ --captions captions.csv
  mmcore shards info shards/ --scan"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``write`` and ``info`` actions of ``mmcore shards`` and their options."""
    parser.epilog = EPILOG
    actions = parser.add_subparsers(dest="shards_command", metavar="ACTION", required=True)
    w = actions.add_parser("write", help="pack a folder of files (+ captions) into shards",
                           description="Files sharing a name up to the last suffix form one "
                           "sample; keys are zero-padded in sorted order. Each shard is "
                           "written atomically; index.json lists shards and sample counts.")
    w.add_argument("src", metavar="SRC", help="folder of files (e.g. cat.jpg + cat.txt)")
    w.add_argument("--out", required=True, metavar="DIR", help="folder for the shards")
    w.add_argument("--shard-size", type=positive_int, default=1000, metavar="N",
                   help="samples per shard (default 1000)")
    w.add_argument("--captions", metavar="FILE", help="CSV (file,caption columns) or JSONL "
                   "mapping file names to captions; default: a sidecar .txt per file")
    w.add_argument("--prefix", default="data", help="shard file prefix (default 'data')")
    w.add_argument("--overwrite", action="store_true", help="replace shards already in DIR")
    i = actions.add_parser("info", help="shard names and sample counts of a folder")
    i.add_argument("dir", metavar="DIR", help="a folder of shards")
    i.add_argument("--scan", action="store_true",
                   help="read every shard instead of trusting index.json; exit 1 on problems")
    add_json_flag(i)


def run(args: argparse.Namespace) -> int:
    """Tar shards in the webdataset layout (img2dataset's): 'write' packs a folder of files
    (000000000.jpg, 000000000.txt, ...) with its captions; 'info' counts what a folder holds
    (--scan reads every shard through and reports corrupt ones)."""
    if args.shards_command == "write":
        return _write(args)
    return _info(args)


def _write(args: argparse.Namespace) -> int:
    from mmcore_webdataset.writing import write_shards

    index = write_shards(args.src, args.out, shard_size=args.shard_size,
                         captions=args.captions, prefix=args.prefix, overwrite=args.overwrite)
    print(f"wrote {index['samples']:,} samples in {len(index['shards'])} shards -> "
          f"{Path(args.out) / index['pattern']} ({index['uncaptioned']:,} without a caption)")
    return EXIT_OK


def _info(args: argparse.Namespace) -> int:
    from mmcore_webdataset.reading import shard_info

    info = shard_info(args.dir, scan=args.scan)
    bad = [s for s in info["shards"] if s.get("problem")]
    if args.json:
        print_json(info)
        return EXIT_FAILURE if bad else EXIT_OK
    rows = [[s["name"], count(s["samples"]), binary_bytes(s["bytes"]), s.get("problem") or ""]
            for s in info["shards"]]
    print(format_table(["shard", "samples", "size", "problem"], rows, right=(1, 2)))
    exts = ", ".join(f"{ext} {n:,}" for ext, n in info["extensions"].items())
    print(f"{info['samples']:,} samples in {len(rows)} shards (from the {info['source']}); "
          f"members: {exts or 'none'}")
    for shard in bad:
        print(f"problem: {shard['name']}: {shard['problem']}", file=sys.stderr)
    return EXIT_FAILURE if bad else EXIT_OK

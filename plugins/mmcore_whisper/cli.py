"""``mmcore transcribe``: this plugin's CLI verb, registered through ``register_commands``."""

from __future__ import annotations

import argparse

from mmcore.commands import (
    EXIT_OK,
    UsageError,
    add_json_flag,
    load_any_model,
    positive_int,
    print_json,
)

SUMMARY = "transcribe audio with a speech model"
EPILOG = """\
examples:
  mmcore transcribe ./whisper-tiny talk.wav
  mmcore transcribe whisper.safetensors a.wav b.wav --timestamps --json
Audio longer than 30 s is decoded in 30 s windows."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``mmcore transcribe``."""
    parser.epilog = EPILOG
    parser.add_argument("model", metavar="MODEL", help="an mmcore checkpoint, or a foreign "
                        "folder (e.g. Hugging Face Whisper)")
    parser.add_argument("audio", nargs="+", metavar="AUDIO", help="WAV files")
    parser.add_argument("--beam-size", type=positive_int, default=1, metavar="N",
                        help="beam search with N beams (default 1: greedy)")
    parser.add_argument("--language", default=None, metavar="CODE",
                        help="spoken language code, e.g. en (default: detect; none for .en "
                             "models)")
    parser.add_argument("--task", choices=["transcribe", "translate"], default="transcribe",
                        help="translate: into English (multilingual models)")
    parser.add_argument("--timestamps", action="store_true",
                        help="predict timestamps; print segments with their times")
    parser.add_argument("--tokenizer", default=None, metavar="FILE",
                        help="tokenizer.json to use instead of the one the checkpoint names")
    add_json_flag(parser)


def run(args: argparse.Namespace) -> int:
    """Transcribe audio files (WAV) with a speech-to-text model: an mmcore checkpoint (from
    mmcore import) or a foreign checkpoint folder a converter recognises, such as a Hugging
    Face Whisper folder (imported in memory). Prints each file's text; --timestamps prints
    segments; --json prints {"audio", "language", "text", "segments": [{"start", "end",
    "text"}]} per file."""
    from mmcore_whisper.decoder import WhisperDecoder
    from mmcore_whisper.transcribe import DecodeOptions, transcribe

    model = load_any_model(args.model)
    if not any(isinstance(h, WhisperDecoder) for h in model.heads.values()):
        raise UsageError(f"{args.model} has no head that transcribes audio (heads: "
                         f"{', '.join(sorted(model.heads)) or 'none'})")
    options = DecodeOptions(beam_size=args.beam_size, language=args.language, task=args.task,
                            timestamps=args.timestamps)
    results = [r.as_dict() for r in transcribe(model, args.audio, options,
                                               tokenizer=args.tokenizer)]
    if args.json:
        print_json([{"audio": a, **r} for a, r in zip(args.audio, results, strict=True)])
        return EXIT_OK
    for audio, result in zip(args.audio, results, strict=True):
        prefix = f"{audio}: " if len(args.audio) > 1 else ""
        if not args.timestamps:
            print(prefix + result["text"].strip())
            continue
        for seg in result["segments"]:
            print(f"{prefix}[{seg['start']:7.2f} --> {seg['end']:7.2f}] {seg['text'].strip()}")
    return EXIT_OK

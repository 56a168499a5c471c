"""``mmcore transcribe``: this plugin's CLI verb, registered through ``register_commands``."""

from __future__ import annotations

import argparse
import sys
from typing import Any

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
  mmcore transcribe ./whisper-tiny *.wav --policy openai-whisper --batch-size 8
  mmcore transcribe ./whisper-tiny talk.wav --word-timestamps --format srt --output-dir subs
Audio longer than 30 s is decoded in 30 s windows. The default policy decodes as
transformers' generate does (one temperature, no thresholds); --policy openai-whisper
uses openai-whisper's transcribe defaults (temperatures 0,0.2,0.4,0.6,0.8,1.0,
compression-ratio threshold 2.4, log-probability threshold -1.0, no-speech threshold 0.6,
conditioning on previous text, best of 5). Options given explicitly override either."""


#: the default of the thresholds: not given (the policy's value applies), unlike None (off)
_UNSET: Any = object()


def _optional_float(text: str) -> float | None:
    """A number, or 'none' to turn a threshold off."""
    if text.strip().lower() in ("none", "off"):
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'none', got {text!r}") from None


def _temperatures(text: str) -> tuple[float, ...]:
    """'0' or '0,0.2,0.4' -> the temperatures to try in order."""
    try:
        values = tuple(float(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas, got "
                                         f"{text!r}") from None
    if not values or any(t < 0 for t in values):
        raise argparse.ArgumentTypeError(f"temperatures must be >= 0, got {text!r}")
    return values


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``mmcore transcribe``."""
    parser.epilog = EPILOG
    parser.add_argument("model", metavar="MODEL", help="an mmcore checkpoint, or a foreign "
                        "folder (e.g. Hugging Face Whisper)")
    parser.add_argument("audio", nargs="+", metavar="AUDIO",
                        help="audio files: WAV; FLAC, OGG, MP3 with the soundfile package")
    parser.add_argument("--beam-size", type=positive_int, default=None, metavar="N",
                        help="beam search with N beams at temperature 0 (default 1: greedy)")
    parser.add_argument("--language", default=None, metavar="CODE",
                        help="spoken language code, e.g. en (default: detect; none for .en "
                             "models)")
    parser.add_argument("--task", choices=["transcribe", "translate"], default="transcribe",
                        help="translate: into English (multilingual models)")
    parser.add_argument("--timestamps", action="store_true",
                        help="predict timestamps; print segments with their times")
    parser.add_argument("--tokenizer", default=None, metavar="FILE",
                        help="tokenizer.json to use instead of the one the checkpoint names")
    parser.add_argument("--batch-size", type=positive_int, default=1, metavar="N",
                        help="transcribe N files at once (encoder and decoder batched)")
    parser.add_argument("--quantize", choices=["none", "int8"], default="none",
                        help="int8: dynamically quantised Linear layers and output projection "
                             "for CPU inference (faster, slightly different output)")
    _add_output_arguments(parser)
    _add_policy_arguments(parser)
    add_json_flag(parser)


def _add_output_arguments(parser: argparse.ArgumentParser) -> None:
    from mmcore_whisper.formats import FORMATS

    out = parser.add_argument_group("output")
    out.add_argument("--word-timestamps", action="store_true",
                     help="word times from cross-attention alignment (openai-whisper's), in "
                          "--json and --format")
    out.add_argument("--format", choices=FORMATS, default=None,
                     help="txt, srt, vtt or json (srt and vtt need --timestamps or "
                          "--word-timestamps; default: plain text, or segments with "
                          "--timestamps)")
    out.add_argument("--output-dir", default=None, metavar="DIR",
                     help="write one file per audio file (AUDIO stem + .FORMAT; default "
                          "format txt) instead of printing")


def _add_policy_arguments(parser: argparse.ArgumentParser) -> None:
    policy = parser.add_argument_group("decoding policy (openai-whisper's)")
    policy.add_argument("--policy", choices=["transformers", "openai-whisper"],
                        default="transformers",
                        help="defaults of the options below: transformers' generate (one "
                             "temperature, no thresholds) or openai-whisper's transcribe")
    policy.add_argument("--temperature", type=_temperatures, default=None, metavar="T[,T...]",
                        help="temperatures tried in order until a window passes the "
                             "thresholds (openai-whisper: 0,0.2,0.4,0.6,0.8,1.0; default 0)")
    policy.add_argument("--best-of", type=positive_int, default=None, metavar="N",
                        help="samples per window at a temperature above 0 (default 5)")
    policy.add_argument("--compression-ratio-threshold", type=_optional_float, default=_UNSET,
                        metavar="X", help="retry when the text's zlib compression ratio is "
                        "above X (openai-whisper: 2.4; 'none': off)")
    policy.add_argument("--logprob-threshold", type=_optional_float, default=_UNSET,
                        metavar="X", help="retry when the average log-probability is below X "
                        "(openai-whisper: -1.0; 'none': off)")
    policy.add_argument("--no-speech-threshold", type=_optional_float, default=_UNSET,
                        metavar="X", help="skip a window as silence when P(<|nospeech|>) is "
                        "above X and the log-probability is below its threshold "
                        "(openai-whisper: 0.6; 'none': off)")
    policy.add_argument("--condition-on-previous-text", action=argparse.BooleanOptionalAction,
                        default=None, help="prompt each window with the text before it "
                        "(openai-whisper: on)")
    policy.add_argument("--initial-prompt", default=None, metavar="TEXT",
                        help="text prompting the first window (e.g. spellings, style)")


def decode_options(args: argparse.Namespace) -> Any:
    """The :class:`DecodeOptions` the arguments ask for."""
    from mmcore_whisper.options import DecodeOptions

    base = DecodeOptions.openai_whisper() if args.policy == "openai-whisper" else \
        DecodeOptions()
    given = {"beam_size": args.beam_size, "temperatures": args.temperature,
             "best_of": args.best_of,
             "condition_on_previous_text": args.condition_on_previous_text}
    changes: dict[str, Any] = {k: v for k, v in given.items() if v is not None}
    for name in ("compression_ratio_threshold", "logprob_threshold", "no_speech_threshold"):
        if getattr(args, name) is not _UNSET:
            changes[name] = getattr(args, name)
    return base.with_(language=args.language, task=args.task, timestamps=args.timestamps,
                      initial_prompt=args.initial_prompt,
                      word_timestamps=args.word_timestamps, **changes)


def _check_output(args: argparse.Namespace) -> str | None:
    """The file format asked for (None: today's printing); UsageError for srt/vtt without
    any times."""
    from mmcore_whisper.formats import TIMED

    fmt = args.format or ("txt" if args.output_dir else None)
    if fmt in TIMED and not (args.timestamps or args.word_timestamps):
        raise UsageError(f"--format {fmt} needs times: add --timestamps (segment times) or "
                         "--word-timestamps (word times)")
    if args.json and fmt is not None:
        raise UsageError("give --json or --format/--output-dir, not both (--format json "
                         "writes the same JSON per file)")
    return fmt


def _write_files(audio: list[str], results: list[dict[str, Any]], fmt: str,
                 output_dir: str | None) -> None:
    """Each transcript in ``fmt``: to ``output_dir`` (one file per input) or stdout."""
    from pathlib import Path

    from mmcore_whisper.formats import render

    if output_dir is None:
        for name, result in zip(audio, results, strict=True):
            sys.stdout.write(render({"audio": name, **result}, fmt))
        return
    names = [Path(a).stem + "." + fmt for a in audio]
    clash = sorted({n for n in names if names.count(n) > 1})
    if clash:
        raise UsageError(f"--output-dir: several audio files would write {clash[0]}; "
                         "give files with different names")
    folder = Path(output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    for name, result, file in zip(audio, results, names, strict=True):
        (folder / file).write_text(render({"audio": name, **result}, fmt), encoding="utf-8")
        print(folder / file)


def run(args: argparse.Namespace) -> int:
    """Transcribe audio files (WAV) with a speech-to-text model: an mmcore checkpoint (from
    mmcore import) or a foreign checkpoint folder a converter recognises, such as a Hugging
    Face Whisper folder (imported in memory). Prints each file's text; --timestamps prints
    segments; --json prints {"audio", "language", "text", "segments": [{"start", "end",
    "text"}]} per file (segments also give "temperature", "avg_logprob",
    "compression_ratio" and "no_speech_prob" when a decoding policy is in use)."""
    from mmcore_whisper.decoder import WhisperDecoder
    from mmcore_whisper.transcribe import transcribe

    model = load_any_model(args.model)
    if not any(isinstance(h, WhisperDecoder) for h in model.heads.values()):
        raise UsageError(f"{args.model} has no head that transcribes audio (heads: "
                         f"{', '.join(sorted(model.heads)) or 'none'})")
    if args.quantize != "none":
        from mmcore_whisper.quantize import quantize_model

        model = quantize_model(model, args.quantize)
    fmt = _check_output(args)
    options = decode_options(args)
    results = [r.as_dict(details=options.uses_policy) for r in transcribe(
        model, args.audio, options, tokenizer=args.tokenizer, batch_size=args.batch_size)]
    if fmt is not None:
        _write_files(args.audio, results, fmt, args.output_dir)
        return EXIT_OK
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

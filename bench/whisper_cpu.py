"""Whisper decoding on CPU: mmcore against Hugging Face transformers' ``generate``.

A random checkpoint of whisper-tiny's shape (d_model 384, 4 + 4 layers, 6 heads, 51865
tokens, 80 mel bins) is written locally as a Hugging Face folder, imported into mmcore with
the ``hf-whisper`` converter, and both transcribe the same audio features (one 30 s
window: encoder + KV-cached decoding of ``--tokens`` tokens). Prints both times (median of
``--iters`` alternating runs after a warm-up), ratio = mmcore / transformers (target
<= 0.7) and whether the tokens are identical; then the same for decoding alone (one
window, both from the same encoder output), since the encoder is the same computation in
both and bounds the end-to-end ratio of short windows. On a shared machine use
``--threads 1``: with more threads, other load stalls the many tiny decoding ops.
Finally the throughput of many files (``--files``, one 30 s window each): mmcore at
``--batch-size`` 1 and at the given batch size, and transformers' batched ``generate``,
in files per second, with whether the tokens agree.

Optional sections: ``--profile`` prints the top ops (self CPU time) of each side for the
encoder and for decoding; ``--peers`` adds faster-whisper's engine (CTranslate2, the same
weights converted by its own converter, fp32 and int8) as a second peer; ``--quantize``
times mmcore with ``--quantize int8`` (:mod:`mmcore_whisper.quantize`) and gives the WER
between its transcripts and fp32's on ``--files`` clips. Short utterances are ``--tokens
20`` (the encoder still reads one padded 30 s window); a spoken 30 s window is ``--tokens
128``. On a shared machine use ``--threads 1 --clock cpu``.

    python bench/whisper_cpu.py [--tokens 64] [--iters 3] [--beam-size 1] [--timestamps]
    python bench/whisper_cpu.py --quick          # a small model, a few seconds
    python bench/whisper_cpu.py --files 8 --batch-size 8
    python bench/whisper_cpu.py --threads 1 --clock cpu --tokens 20 --profile --peers
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from mmcore.convert import import_model
from mmcore_whisper.testing import LANGUAGES, audio_features, write_random_whisper
from mmcore_whisper.transcribe import (
    DecodeOptions,
    decode_window,
    encode,
    transcribe_batch,
    transcribe_features,
    whisper_head,
)

TARGET = 0.7
#: the timer of every measurement (``--clock``)
CLOCK: Callable[[], float] = time.perf_counter


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tokens", type=int, default=64, help="new tokens per window")
    p.add_argument("--iters", type=int, default=3, help="timed runs of each (median)")
    p.add_argument("--beam-size", type=int, default=1)
    p.add_argument("--timestamps", action="store_true")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--quick", action="store_true", help="d_model 64, 2 + 2 layers")
    p.add_argument("--clock", default="wall", choices=["wall", "cpu"],
                   help="wall: perf_counter; cpu: this process's CPU time (process_time, all "
                        "threads), robust to other load when used with --threads 1")
    p.add_argument("--profile", action="store_true",
                   help="top ops of each side: the encoder, then decoding")
    p.add_argument("--peers", action="store_true",
                   help="faster-whisper's engine (ctranslate2, fp32 and int8) as a second peer")
    p.add_argument("--quantize", action="store_true",
                   help="time mmcore with int8 dynamic quantisation; WER against fp32")
    p.add_argument("--files", type=int, default=8, help="files in the throughput run (0: skip)")
    p.add_argument("--batch-size", type=int, default=8, help="batch of the throughput run")
    return p.parse_args(argv)


def build(folder: Path, quick: bool) -> tuple[Any, Any]:
    """(transformers model, mmcore model) holding the same random weights."""
    if quick:
        hf = write_random_whisper(folder, max_target_positions=448, max_length=448)
    else:
        hf = write_random_whisper(folder, d_model=384, layers=4, heads=6, text_tokens=50257,
                                  languages=tuple(LANGUAGES), max_target_positions=448,
                                  max_length=448)
    assert hf.config.vocab_size == (1768 if quick else 51865)
    return hf, import_model(folder, "hf-whisper").eval()


def timed(run: Callable[[], Any]) -> tuple[float, Any]:
    start = CLOCK()
    tokens = run()
    return CLOCK() - start, tokens


def runners(hf: Any, ours: Any, features: torch.Tensor,
            args: argparse.Namespace) -> tuple[Callable[[], list[int]], Callable[[], list[int]]]:
    """Each runner transcribes the window and returns its generated tokens."""
    options = DecodeOptions(language="en", timestamps=args.timestamps,
                            max_new_tokens=args.tokens, beam_size=args.beam_size)

    @torch.no_grad()
    def run_hf() -> list[int]:
        out = hf.generate(features, language="en", task="transcribe",
                          max_new_tokens=args.tokens, return_timestamps=args.timestamps,
                          num_beams=args.beam_size, return_segments=True)
        return [t for s in out["segments"][0] for t in s["tokens"].tolist()]

    def run_ours() -> list[int]:
        return transcribe_features(ours, features[0], options).tokens

    return run_hf, run_ours


def decoding_runners(hf: Any, ours: Any, features: torch.Tensor, args: argparse.Namespace
                     ) -> tuple[Callable[[], list[int]], Callable[[], list[int]]]:
    """Runners that decode one window from a precomputed encoder output."""
    from transformers.modeling_outputs import BaseModelOutput

    head = whisper_head(ours)
    with torch.no_grad():
        hidden = BaseModelOutput(last_hidden_state=hf.model.encoder(features).last_hidden_state)
        audio = encode(ours, head, features)
    prompt = head.tokens.prompt(language_id=head.tokens.language_id("en"), task="transcribe",
                                timestamps=args.timestamps)
    options = DecodeOptions(timestamps=args.timestamps, max_new_tokens=args.tokens,
                            beam_size=args.beam_size)

    @torch.no_grad()
    def run_hf() -> list[int]:
        out = hf.generate(encoder_outputs=hidden, language="en", task="transcribe",
                          max_new_tokens=args.tokens, return_timestamps=args.timestamps,
                          num_beams=args.beam_size, force_unique_generate_call=True)
        tokens: list[int] = out[0, len(prompt):].tolist()
        return tokens[:-1] if tokens and tokens[-1] == head.tokens.eos else tokens

    @torch.no_grad()
    def run_ours() -> list[int]:
        return decode_window(head, audio, prompt, options)

    return run_hf, run_ours


def compare(run_hf: Callable[[], list[int]], run_ours: Callable[[], list[int]],
            iters: int) -> tuple[list[float], list[float], bool, int]:
    """(transformers times, mmcore times, tokens identical, tokens) over alternating runs."""
    run_hf(), run_ours()  # warm-up
    hf_times, our_times, same, count = [], [], True, 0
    for _ in range(iters):
        t_hf, hf_tokens = timed(run_hf)
        t_ours, our_tokens = timed(run_ours)
        hf_times.append(t_hf)
        our_times.append(t_ours)
        same, count = same and hf_tokens == our_tokens, len(our_tokens)
    return hf_times, our_times, same, count


def main(argv: list[str] | None = None) -> int:
    global CLOCK
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "whisper"
        hf, ours = build(folder, args.quick)
        ok = sections(hf, ours, folder, args)
    return 0 if ok else 1


def sections(hf: Any, ours: Any, folder: Path, args: argparse.Namespace) -> bool:
    """Every section the arguments ask for; -> whether all tokens that should agree do."""
    features = audio_features(1, seed=1)
    run_hf, run_ours = runners(hf, ours, features, args)
    hf_times, our_times, same, count = compare(run_hf, run_ours, args.iters)
    shape = "d_model 64, 2+2 layers" if args.quick else "whisper-tiny shape (384, 4+4, 51865)"
    print(f"model: random {shape}; beam {args.beam_size}; timestamps {args.timestamps}; "
          f"threads {args.threads}; clock {args.clock}")
    report("end to end (encoder + decoding)", hf_times, our_times, same, count)
    dec_runners = decoding_runners(hf, ours, features, args)
    dec_hf, dec_ours, dec_same, dec_count = compare(*dec_runners, args.iters)
    report("decoding alone (same encoder output, one window)", dec_hf, dec_ours, dec_same,
           dec_count)
    if args.profile:
        profile_sides("encoder", *encoder_runners(hf, ours, features))
        profile_sides("decoding alone", *dec_runners)
    if args.peers:
        from whisper_peers import ct2_section

        ct2_section(folder, ours, features, run_ours, our_times, args, CLOCK)
    if args.quantize:
        quantize_section(ours, run_hf, hf_times, our_times, args)
    batch_same = throughput(hf, ours, args) if args.files > 0 else True
    return same and dec_same and batch_same


def encoder_runners(hf: Any, ours: Any, features: torch.Tensor
                    ) -> tuple[Callable[[], Any], Callable[[], Any]]:
    """The two encoders alone: log-mel (1, n_mels, 3000) -> audio tokens (1, 1500, D)."""
    head = whisper_head(ours)

    @torch.inference_mode()
    def run_hf() -> Any:
        return hf.model.encoder(features).last_hidden_state

    @torch.inference_mode()
    def run_ours() -> Any:
        return encode(ours, head, features).x

    return run_hf, run_ours


def quantize_section(ours: Any, run_hf: Callable[[], list[int]], hf_times: list[float],
                     our_times: list[float], args: argparse.Namespace) -> None:
    """mmcore int8 (``--quantize int8``) against transformers and mmcore fp32, end to end on
    the first window; then the WER of int8 against fp32 over ``--files`` clips."""
    from mmcore_whisper.quantize import quantize_model

    int8 = quantize_model(copy.deepcopy(ours), "int8")
    options = DecodeOptions(language="en", timestamps=args.timestamps,
                            max_new_tokens=args.tokens, beam_size=args.beam_size)
    features = audio_features(1, seed=1)[0]

    def run_int8() -> list[int]:
        return transcribe_features(int8, features, options).tokens

    run_int8()  # warm-up
    int8_times = [timed(run_int8)[0] for _ in range(args.iters)]
    q = statistics.median(int8_times)
    print(f"mmcore int8 (--quantize int8), end to end: {q * 1000:9.1f} ms; "
          f"int8 / transformers {q / statistics.median(hf_times):.2f}, "
          f"int8 / mmcore fp32 {q / statistics.median(our_times):.2f}")
    clips = audio_features(max(args.files, 1), seed=11)
    refs = [transcribe_features(ours, c, options).tokens for c in clips]
    hyps = [transcribe_features(int8, c, options).tokens for c in clips]
    print(f"  WER int8 against fp32 over {len(clips)} clips (words = text tokens): "
          f"{corpus_wer(refs, hyps):.3f}; identical transcripts "
          f"{sum(r == h for r, h in zip(refs, hyps, strict=True))}/{len(clips)}")


def word_errors(reference: Sequence[Any], hypothesis: Sequence[Any]) -> int:
    """Word-level edit distance: substitutions + deletions + insertions."""
    row = list(range(len(hypothesis) + 1))
    for i, ref in enumerate(reference, 1):
        prev, row[0] = row[0], i
        for j, hyp in enumerate(hypothesis, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (ref != hyp))
    return row[-1]


def corpus_wer(references: Sequence[Sequence[Any]],
               hypotheses: Sequence[Sequence[Any]]) -> float:
    """Word error rate over a corpus: total edit distance / total reference words. Words
    are any comparable items (text split on spaces, or token ids)."""
    errors = sum(word_errors(r, h) for r, h in zip(references, hypotheses, strict=True))
    return errors / max(sum(len(r) for r in references), 1)


def throughput(hf: Any, ours: Any, args: argparse.Namespace) -> bool:
    """Files per second over ``args.files`` one-window clips: mmcore batch 1, mmcore batch
    ``args.batch_size``, transformers' batched generate; -> whether all tokens agree."""
    features = audio_features(args.files, seed=11)  # (N, n_mels, 3000)
    options = DecodeOptions(language="en", timestamps=args.timestamps,
                            max_new_tokens=args.tokens, beam_size=args.beam_size)
    items = [(f, None) for f in features]

    def ours_at(batch: int) -> Callable[[], list[list[int]]]:
        return lambda: [r.tokens for r in transcribe_batch(ours, items, options,
                                                            batch_size=batch)]

    @torch.no_grad()
    def run_hf() -> list[list[int]]:
        out = []
        for start in range(0, args.files, args.batch_size):
            part = features[start : start + args.batch_size]
            result = hf.generate(part, language="en", task="transcribe",
                                 max_new_tokens=args.tokens, return_timestamps=args.timestamps,
                                 num_beams=args.beam_size, return_segments=True)
            out += [[t for s in segs for t in s["tokens"].tolist()]
                    for segs in result["segments"]]
        return out

    runs = {"mmcore batch 1": ours_at(1), f"mmcore batch {args.batch_size}":
            ours_at(args.batch_size), f"transformers batch {args.batch_size}": run_hf}
    tokens, rates = {}, {}
    for name, run in runs.items():
        run()  # warm-up
        times = []
        for _ in range(args.iters):
            seconds, tokens[name] = timed(run)
            times.append(seconds)
        rates[name] = args.files / statistics.median(times)
    same = len({str(t) for t in tokens.values()}) == 1
    print(f"throughput: {args.files} files of one 30 s window, {args.tokens} tokens at most")
    for name, rate in rates.items():
        print(f"  {name:24s} {rate:7.2f} files/s")
    names = list(rates)
    print(f"  batch {args.batch_size} / batch 1: {rates[names[1]] / rates[names[0]]:.2f}x; "
          f"mmcore / transformers (same batch): {rates[names[1]] / rates[names[2]]:.2f}x")
    print(f"  tokens identical across the three: {same}")
    return same


def report(title: str, hf_times: list[float], our_times: list[float], same: bool,
           count: int) -> None:
    hf_s, ours_s = statistics.median(hf_times), statistics.median(our_times)
    ratio = ours_s / hf_s
    print(f"{title}: {count} tokens")
    print(f"  transformers generate: {hf_s * 1000:9.1f} ms (median of {len(hf_times)})")
    print(f"  mmcore:                {ours_s * 1000:9.1f} ms")
    print(f"  ratio mmcore / transformers: {ratio:.2f} (target <= {TARGET}; fastest runs "
          f"{min(our_times) / min(hf_times):.2f}) {'ok' if ratio <= TARGET else 'SLOWER'}")
    print(f"  tokens identical: {same}")


def profile_sides(title: str, run_hf: Callable[[], Any], run_ours: Callable[[], Any],
                  rows: int = 12) -> None:
    """The ops with the most self CPU time in one run of each side."""
    for name, run in (("transformers", run_hf), ("mmcore", run_ours)):
        run()  # warm
        with torch.profiler.profile() as prof:
            run()
        print(f"profile, {title}, {name}:")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows))


if __name__ == "__main__":
    raise SystemExit(main())

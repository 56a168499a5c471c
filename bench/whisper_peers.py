"""faster-whisper's engine as a second peer of ``bench/whisper_cpu.py --peers``.

faster-whisper runs Whisper through CTranslate2 (``ctranslate2.models.Whisper``); its own
``transcribe`` adds a NumPy feature extractor and a Python loop around that engine. To time
the same work on the same inputs, this section converts the bench's Hugging Face folder
with CTranslate2's own converter (``TransformersConverter``, as ``ct2-transformers-converter``
does), once at ``float32`` and once at ``int8``, and calls the engine's ``generate`` on the
same log-mel window with the same prompt, greedy or beam search, ``--tokens`` new tokens at
most. Install with ``pip install -e '.[bench]'`` (ctranslate2, faster-whisper).
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from mmcore_whisper.transcribe import whisper_head


def ct2_runner(model: Any, features: torch.Tensor, prompt: list[int], eos: int,
               args: argparse.Namespace) -> Callable[[], list[int]]:
    """A runner: one window through CTranslate2's Whisper -> the generated tokens."""
    import ctranslate2

    def run() -> list[int]:
        window = ctranslate2.StorageView.from_array(features.contiguous().numpy())
        out = model.generate(window, [prompt], beam_size=args.beam_size,
                             max_length=len(prompt) + args.tokens,
                             return_no_speech_prob=False)
        tokens: list[int] = list(out[0].sequences_ids[0])
        return tokens[:-1] if tokens and tokens[-1] == eos else tokens

    return run


def ct2_models(folder: Path, threads: int) -> dict[str, Any]:
    """compute type -> a CTranslate2 Whisper converted from the Hugging Face ``folder``."""
    import ctranslate2
    from ctranslate2.converters import TransformersConverter

    models = {}
    for compute in ("float32", "int8"):
        out = folder.parent / f"ct2-{compute}"
        TransformersConverter(str(folder)).convert(str(out), quantization=compute, force=True)
        models[compute] = ctranslate2.models.Whisper(
            str(out), device="cpu", compute_type=compute, intra_threads=threads,
            inter_threads=1)
    return models


def ct2_section(folder: Path, ours: Any, features: torch.Tensor,
                run_ours: Callable[[], list[int]], our_times: list[float],
                args: argparse.Namespace, clock: Callable[[], float]) -> None:
    """mmcore (fp32) against CTranslate2 fp32 and int8, end to end on one window; ``clock``
    is the bench's timer."""
    try:
        models = ct2_models(folder, args.threads)
    except ImportError as exc:
        print(f"faster-whisper peer skipped: {exc} (pip install ctranslate2 faster-whisper)")
        return
    head = whisper_head(ours)
    prompt = head.tokens.prompt(language_id=head.tokens.language_id("en"), task="transcribe",
                                timestamps=args.timestamps)
    ours_s, ours_tokens = statistics.median(our_times), run_ours()
    print(f"faster-whisper's engine (ctranslate2), end to end, same window and prompt; "
          f"mmcore fp32 {ours_s * 1000:.1f} ms")
    for compute, model in models.items():
        run = ct2_runner(model, features[0:1], prompt, head.tokens.eos, args)
        run()  # warm-up
        times: list[float] = []
        for _ in range(args.iters):
            start = clock()
            tokens = run()
            times.append(clock() - start)
        peer = statistics.median(times)
        agree = sum(a == b for a, b in zip(tokens, ours_tokens, strict=False))
        print(f"  ctranslate2 {compute:8s} {peer * 1000:9.1f} ms; mmcore fp32 / ctranslate2 "
              f"{ours_s / peer:.2f}; tokens identical: {tokens == ours_tokens} "
              f"({agree} of {len(ours_tokens)} agree position by position)")

"""LLaMA generation on CPU: mmcore against Hugging Face transformers, same weights.

A random ``LlamaForCausalLM`` of about 110M parameters (hidden 768, 12 layers, 12 heads,
intermediate 2048, vocab 32000) is saved as a Hugging Face folder and imported with the
``hf-llama`` converter, so both sides hold the same fp32 weights. For each thread count
(``--threads 1 2``) and batch size (``--batch-sizes 1 8``) it times, in one run:

* greedy generation of ``--new-tokens`` (128) tokens from a ``--prompt-tokens`` (64) token
  prompt, no stop token: ``mmcore.generation.generate`` against ``model.generate``;
* prefill: the prompt's forward pass filling the KV cache (last-position logits only, as
  both ``generate`` calls do), reported as prompt tokens per second.

The clock is ``time.process_time`` (this process's CPU time, all threads), far less
disturbed than wall time on a machine others use; ratios are best-of-``--repeats``
(alternating runs). ratio = mmcore / transformers; the target is <= 0.8. Whether the
generated tokens agree is printed too (random fp32 weights: a near-tie can flip late).

    python bench/llm_cpu.py                     # the full table (a few minutes)
    python bench/llm_cpu.py --quick             # a tiny config, seconds
    python bench/llm_cpu.py --profile           # top ops of both sides (torch.profiler)
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from mmcore.convert import import_model
from mmcore.generation import GenerationConfig, generate
from mmcore_llama import CausalLMRunner

TARGET = 0.8
FULL = {"vocab_size": 32000, "hidden_size": 768, "intermediate_size": 2048,
        "num_hidden_layers": 12, "num_attention_heads": 12, "num_key_value_heads": 12,
        "max_position_embeddings": 512}
QUICK = {"vocab_size": 512, "hidden_size": 64, "intermediate_size": 128,
         "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
         "max_position_embeddings": 256}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    p.add_argument("--prompt-tokens", type=int, default=64)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3, help="timed runs of each (best)")
    p.add_argument("--quick", action="store_true", help="hidden 64, 2 layers, vocab 512")
    p.add_argument("--profile", action="store_true",
                   help="profile one generation of each side instead of timing")
    p.add_argument("--hf-attn", default="sdpa", help="transformers' attn_implementation")
    return p.parse_args(argv)


def build(folder: Path, quick: bool, attn: str) -> tuple[Any, CausalLMRunner]:
    """(transformers model, mmcore runner) holding the same random weights."""
    import transformers

    config = transformers.LlamaConfig(**(QUICK if quick else FULL), tie_word_embeddings=False,
                                      bos_token_id=1, eos_token_id=2, pad_token_id=0)
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(config).save_pretrained(folder, safe_serialization=True)
    hf = transformers.LlamaForCausalLM.from_pretrained(folder, attn_implementation=attn,
                                                       dtype=torch.float32).eval()
    hf.generation_config.eos_token_id = None
    runner = CausalLMRunner.from_model(import_model(folder, "hf-llama").eval())
    return hf, runner


def cpu_time(run: Callable[[], Any]) -> tuple[float, Any]:
    start = time.process_time()
    out = run()
    return time.process_time() - start, out


def runners(hf: Any, ours: CausalLMRunner, ids: torch.Tensor, new: int
            ) -> dict[str, tuple[Callable[[], Any], Callable[[], Any]]]:
    """{case: (mmcore run, transformers run)}; generation runs return the new tokens."""
    mask = torch.ones_like(ids)
    config = GenerationConfig(max_new_tokens=new)

    def ours_generate() -> torch.Tensor:
        return generate(ours, ids, attention_mask=mask, config=config).new_tokens

    @torch.no_grad()
    def hf_generate() -> torch.Tensor:
        out = hf.generate(ids, attention_mask=mask, max_new_tokens=new, min_new_tokens=new,
                          do_sample=False, eos_token_id=None, pad_token_id=0)
        return out[:, ids.shape[1]:]

    @torch.no_grad()
    def hf_prefill() -> torch.Tensor:
        return hf(ids, attention_mask=mask, use_cache=True, logits_to_keep=1).logits

    def ours_prefill() -> torch.Tensor:
        return ours.prefill(ids, mask.bool())[0]

    return {"generate": (ours_generate, hf_generate), "prefill": (ours_prefill, hf_prefill)}


def measure(cases: dict[str, tuple[Callable[[], Any], Callable[[], Any]]], repeats: int
            ) -> dict[str, tuple[float, float, Any, Any]]:
    """{case: (best mmcore seconds, best transformers seconds, outputs)} after a warm-up."""
    result = {}
    for name, (ours, theirs) in cases.items():
        ours(), theirs()  # warm-up
        times: tuple[list[float], list[float]] = ([], [])
        outs: list[Any] = [None, None]
        for _ in range(repeats):
            for side, run in enumerate((ours, theirs)):
                seconds, outs[side] = cpu_time(run)
                times[side].append(seconds)
        result[name] = (min(times[0]), min(times[1]), outs[0], outs[1])
    return result


def report(threads: int, batch: int, prompt: int, res: dict[str, tuple[float, float, Any, Any]]
           ) -> None:
    g_ours, g_hf, tokens, ref = res["generate"]
    same = int((tokens == ref).all(dim=1).sum())
    p_ours, p_hf, logits, ref_logits = res["prefill"]
    diff = float((logits - ref_logits[:, -1]).abs().max())
    rate = batch * prompt
    print(f"threads {threads}  batch {batch:2d} | generate: mmcore {g_ours:7.3f} s  "
          f"transformers {g_hf:7.3f} s  ratio {g_ours / g_hf:.2f} "
          f"({'meets' if g_ours / g_hf <= TARGET else 'misses'} <= {TARGET})  "
          f"rows equal {same}/{batch} | prefill: mmcore {rate / p_ours:8.0f} tok/s  "
          f"transformers {rate / p_hf:8.0f} tok/s  ratio {p_ours / p_hf:.2f}  "
          f"max |dlogit| {diff:.1e}", flush=True)


def profile(hf: Any, ours: CausalLMRunner, ids: torch.Tensor, new: int) -> None:
    """Top operators (self CPU time) of one generation on each side."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    cases = runners(hf, ours, ids, new)["generate"]
    for name, run in zip(("mmcore", "transformers"), cases, strict=True):
        run()
        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            run()
        print(f"\n== {name}: batch {ids.shape[0]}, {new} new tokens, "
              f"{torch.get_num_threads()} thread(s)")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=18))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        hf, ours = build(Path(tmp), args.quick, args.hf_attn)
    params = sum(p.numel() for p in hf.parameters())
    print(f"LLaMA {params / 1e6:.1f}M parameters, fp32, prompt {args.prompt_tokens}, "
          f"{args.new_tokens} new tokens, clock: process CPU time, best of {args.repeats}")
    vocab = hf.config.vocab_size
    for threads in args.threads:
        torch.set_num_threads(threads)
        for batch in args.batch_sizes:
            g = torch.Generator().manual_seed(batch)
            ids = torch.randint(3, vocab, (batch, args.prompt_tokens), generator=g)
            if args.profile:
                profile(hf, ours, ids, min(args.new_tokens, 32))
                continue
            report(threads, batch, args.prompt_tokens,
                   measure(runners(hf, ours, ids, args.new_tokens), args.repeats))


if __name__ == "__main__":
    main()

"""The GPU suite: one script, under 8 minutes on one H100/H200, whose output goes into
docs/performance.md.

Steps (each is isolated: a failing step is recorded with its error and the rest still run):

1. ``correctness``: every attention and contrastive-loss candidate that can run here,
   against an fp32 reference (output and gradients, padded keys, odd shapes). Only the
   candidates that pass are timed.
2. ``attention``: self-attention (4k tokens) and latent cross-attention (256 queries over
   50k keys), bf16, forward and forward+backward, against every SDPA backend, xformers and
   FlashAttention where installed (``bench/attention_kernels.py`` does the measuring).
3. ``contrastive``: peak memory and time of the contrastive loss at B = 64k and 256k
   (d = 512, bf16; the anchor is 736 MB at 64k).
4. ``clip``: CLIP ViT-B/16 training throughput (images/s) and MFU with bf16 autocast and
   torch.compile, against open_clip's ViT-B-16 with the same batch where it is installed.
5. ``whisper``: Whisper large-v3-shaped decoding (random weights, greedy, one window) in
   tokens/s, mmcore against transformers ``generate``.
6. writes ``gpu_suite.json`` and ``gpu_suite.md`` (a markdown table) to ``--out``.

    python bench/gpu_suite.py --out results/
    python bench/gpu_suite.py --dry-run --out /tmp/suite   # CPU, tiny sizes, seconds

``--dry-run`` runs every step on CPU at tiny sizes: it checks the code paths and makes no
timing claims (times are still written, marked ``dry_run``).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import attention_kernels as attention_bench  # noqa: E402  (not "kernels": a PyPI package)

Result = dict[str, Any]
#: dense bf16 peak of the GPUs the suite is meant for (TFLOP/s), for MFU
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("results"))
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes, no timing claims")
    p.add_argument("--steps", nargs="+", default=list(STEPS), choices=list(STEPS))
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    return p.parse_args(argv)


class Env:
    """Device, dtype and sizes for this run (the real GPU sizes, or tiny CPU ones)."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.dry = args.dry_run
        self.device = "cpu" if self.dry or not torch.cuda.is_available() else "cuda"
        self.dtype = torch.float32 if self.device == "cpu" else torch.bfloat16
        self.iters, self.warmup = (1, 0) if self.dry else (args.iters, args.warmup)

    def sync(self) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()

    def seconds(self, fn: Callable[[], Any], iters: int | None = None) -> float:
        """Median seconds of ``fn`` after the warm-up calls."""
        ms = attention_bench._time_ms(fn, self.device, self.warmup, iters or self.iters)
        return ms / 1e3

    def peak_mb(self, fn: Callable[[], Any]) -> float | None:
        """Peak CUDA memory (MB) allocated by ``fn`` above what was live; None on CPU."""
        out: dict[str, float | None] = {}
        with attention_bench._peak_mib(self.device, out):
            fn()
        return None if out["peak"] is None else out["peak"] * 2**20 / 1e6


# -- 1. correctness -------------------------------------------------------------------------


def attention_candidates(env: Env) -> dict[str, Callable[..., torch.Tensor]]:
    """bench/attention_kernels.py's candidates, plus FlashAttention (unmasked) if installed."""
    cands = dict(attention_bench.candidates(env.device))
    if env.device == "cuda" and importlib.util.find_spec("flash_attn") is not None:
        from flash_attn import flash_attn_func

        def flash(q: Any, k: Any, v: Any, mask: Any, causal: bool) -> torch.Tensor:
            if mask is not None:
                raise ValueError("flash_attn_func takes no padding mask (varlen not wired)")
            out = flash_attn_func(*(t.transpose(1, 2) for t in (q, k, v)), causal=causal)
            return out.transpose(1, 2)

        cands["flash-attn"] = flash
    return cands


def check_attention(env: Env) -> list[Result]:
    """Each candidate's max error (output, dq, dk, dv) against the fp32 reference."""
    shapes = [attention_bench.Shape("odd self", 2, 3, 67, 67, 64),
              attention_bench.Shape("odd cross", 2, 3, 5, 301, 64, cross=True)]
    tol = 1e-4 if env.dtype == torch.float32 else 3e-2
    rows = []
    for s in shapes:
        for masked in (False, True):
            q, k, v, mask = attention_bench.make_inputs(s, env.dtype, env.device, masked)
            dout = torch.randn_like(q)
            ref = attention_bench._reference(s, q, k, v, mask, dout)
            for name, fn in attention_candidates(env).items():
                rows.append(_check_one(s, name, fn, (q, k, v, mask, dout), ref, tol, masked))
    return rows


def _check_one(s: Any, name: str, fn: Callable[..., torch.Tensor], inputs: tuple[Any, ...],
               ref: tuple[torch.Tensor, list[torch.Tensor]], tol: float, masked: bool) -> Result:
    q, k, v, mask, dout = inputs
    row: Result = {"op": s.name, "candidate": name, "masked": masked}
    try:
        leaves = [x.detach().requires_grad_(True) for x in (q, k, v)]
        out = fn(*leaves, mask, s.causal)
        grads = torch.autograd.grad(out, leaves, dout)
        errs = [(out.float() - ref[0]).abs().max().item()]
        errs += [(g.float() - r).abs().max().item() for g, r in zip(grads, ref[1], strict=True)]
        row.update(max_err=max(errs), ok=max(errs) <= tol * max(1.0, ref[0].abs().max().item()))
    except Exception as e:  # a candidate that cannot run this case is reported, not fatal
        row.update(ok=None, error=f"{type(e).__name__}: {str(e).splitlines()[0][:120]}")
    return row


def check_contrastive(env: Env) -> list[Result]:
    """Every runnable contrastive-loss candidate's loss and gradients against fp32."""
    from mmcore.kernels import dispatch, select_kernels

    choices = select_kernels().choices
    rows = []
    for name, cand in dispatch._CANDIDATES["contrastive_loss"].items():
        if cand.rejection(dispatch.detect_hardware(env.device)) is not None:
            continue
        g = torch.Generator(device=env.device).manual_seed(0)
        a, b = (torch.nn.functional.normalize(torch.randn(37, 64, generator=g,
                                                          device=env.device), dim=-1)
                for _ in range(2))
        scale = torch.tensor(14.0, device=env.device)
        got = _loss_and_grads(cand.fn, a.to(env.dtype), b.to(env.dtype), scale)
        want = _loss_and_grads(dispatch._CANDIDATES["contrastive_loss"]["reference"].fn,
                               a.double(), b.double(), scale.double())
        err = max((x.double() - y).abs().max().item() for x, y in zip(got, want, strict=True))
        tol = 1e-4 if env.dtype == torch.float32 else 5e-2
        rows.append({"op": "contrastive_loss", "candidate": name, "max_err": err,
                     "ok": err <= tol, "default": choices["contrastive_loss"] == name})
    return rows


def _loss_and_grads(fn: Callable[..., torch.Tensor], a: torch.Tensor, b: torch.Tensor,
                    scale: torch.Tensor) -> list[torch.Tensor]:
    a, b = a.clone().requires_grad_(True), b.clone().requires_grad_(True)
    loss = fn(a, b, scale, kind="softmax")
    return [loss.detach(), *torch.autograd.grad(loss, (a, b))]


def step_correctness(env: Env) -> Result:
    rows = check_attention(env) + check_contrastive(env)
    failed = [f"{r['op']}/{r['candidate']}" for r in rows if r.get("ok") is False]
    return {"rows": rows, "failed": failed}


# -- 2. attention timing ----------------------------------------------------------------------


def attention_shapes(env: Env) -> list[Any]:
    shape = attention_bench.Shape
    if env.dry:
        return [shape("self-attn 64", 1, 2, 64, 64, 32),
                shape("latent-x-attn 8x200", 1, 2, 8, 200, 32, cross=True)]
    return [shape("self-attn 4k dh64", 4, 16, 4096, 4096, 64),
            shape("latent-x-attn 256x50k", 4, 8, 256, 50_000, 64, cross=True)]


def step_attention(env: Env, failed: list[str]) -> Result:
    """Forward and forward+backward of every candidate that passed step 1, bf16."""
    args = argparse.Namespace(device=env.device, warmup=env.warmup, iters=env.iters)
    rows = []
    for s in attention_shapes(env):
        q, k, v, mask = attention_bench.make_inputs(s, env.dtype, env.device, False)
        dout = torch.randn_like(q)
        ref = attention_bench._reference(s, q, k, v, mask, dout)
        for name, fn in attention_candidates(env).items():
            if any(f.endswith(f"/{name}") for f in failed) or (name == "naive" and not env.dry):
                continue
            rows += [vars(r) for r in
                     attention_bench.bench_one(s, name, fn, (q, k, v, mask, dout), ref, args)]
    return {"rows": rows}


# -- 3. contrastive-loss memory ---------------------------------------------------------------


def step_contrastive(env: Env) -> Result:
    """Peak memory and time of the default (and any forced GPU) contrastive loss."""
    from mmcore.kernels import dispatch

    sizes, dim = ((256, 1024), 32) if env.dry else ((65_536, 262_144), 512)
    hw = dispatch.detect_hardware(env.device)
    rows = []
    for name, cand in dispatch._CANDIDATES["contrastive_loss"].items():
        if name == "reference" or cand.rejection(hw) is not None:
            continue
        for batch in sizes:
            g = torch.Generator(device=env.device).manual_seed(0)
            a, b = (torch.randn(batch, dim, device=env.device, generator=g, dtype=env.dtype)
                    .requires_grad_(True) for _ in range(2))
            scale = torch.tensor(14.0, device=env.device)

            def run(fn: Callable[..., torch.Tensor] = cand.fn, a: Any = a, b: Any = b,
                    scale: Any = scale) -> None:
                torch.autograd.grad(fn(a, b, scale, kind="softmax"), (a, b))

            peak = env.peak_mb(run)
            rows.append({"kernel": name, "batch": batch, "dim": dim, "peak_mb": peak,
                         "seconds": env.seconds(run, iters=min(env.iters, 3)),
                         "anchor_mb_at_64k": 736})
    return {"rows": rows}


# -- 4. CLIP ViT-B/16 training throughput -----------------------------------------------------


def clip_config(dry: bool) -> Any:
    """transformers' CLIPConfig for ViT-B/16 (or the tiny --quick config of clip_cpu)."""
    import clip_cpu
    from transformers import CLIPConfig

    if dry:
        return clip_cpu.hf_config(quick=True, attn="sdpa")
    return CLIPConfig(vision_config={"patch_size": 16})


def clip_batch(config: Any, batch: int, device: str) -> dict[str, Any]:
    import clip_cpu

    pixels, ids, mask = clip_cpu.make_inputs(config, batch, seed=0)
    return {"image": pixels.to(device), "text": {"ids": ids.to(device), "mask": mask.to(device)}}


def train_rate(env: Env, model: torch.nn.Module, loss_of: Callable[[], torch.Tensor],
               batch: int) -> float:
    """Samples per second of forward + loss + backward + AdamW under bf16 autocast."""
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast(env.device, dtype=torch.bfloat16, enabled=not env.dry):
            loss = loss_of()
        loss.backward()
        opt.step()

    return batch / env.seconds(step)


def train_flops(model: torch.nn.Module, loss_of: Callable[[], torch.Tensor]) -> float:
    """FLOPs of one training step (3x the counted forward FLOPs)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.no_grad():
        loss_of()
    return 3.0 * counter.get_total_flops()


def step_clip(env: Env) -> Result:
    import mmcore
    from mmcore.layers.transformer import compile_stacks
    from mmcore_clip.hf_clip import spec_from_hf_clip_config

    config, batch = clip_config(env.dry), 2 if env.dry else 256
    model = mmcore.build(spec_from_hf_clip_config(config)).to(env.device).train()
    data = clip_batch(config, batch, env.device)
    flops = train_flops(model, lambda: model.loss(data)["loss"])
    compiled = not env.dry and compile_stacks(model)
    rows = [{"model": "mmcore", "compile": compiled,
             "samples_per_s": train_rate(env, model, lambda: model.loss(data)["loss"], batch)}]
    open_clip_row = _open_clip_rate(env, data, batch)
    if open_clip_row is not None:
        rows.append(open_clip_row)
    for row in rows:
        row["mfu"] = _mfu(env, flops * row["samples_per_s"] / batch)
    return {"batch": batch, "train_flops_per_step": flops, "rows": rows}


def _open_clip_rate(env: Env, data: dict[str, Any], batch: int) -> Result | None:
    """open_clip's ViT-B-16 with its ClipLoss, compiled, same batch; None if not installed."""
    if importlib.util.find_spec("open_clip") is None or env.dry:
        return None
    import open_clip

    model = open_clip.create_model("ViT-B-16").to(env.device).train()
    model = torch.compile(model)
    loss = open_clip.ClipLoss()

    def loss_of() -> torch.Tensor:
        image, text, scale = model(data["image"], data["text"]["ids"])
        return loss(image, text, scale)

    return {"model": "open_clip", "compile": True,
            "samples_per_s": train_rate(env, model, loss_of, batch)}


def _mfu(env: Env, flops_per_s: float) -> float | None:
    if env.device != "cuda":
        return None
    name = torch.cuda.get_device_name()
    peak = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)
    return None if peak is None else flops_per_s / (peak * 1e12)


# -- 5. Whisper large-v3-shaped decoding ------------------------------------------------------


def step_whisper(env: Env) -> Result:
    """Greedy decoding of one window from a shared encoder output, tokens/s of each side."""
    from mmcore.convert import import_model
    from mmcore_whisper.testing import LANGUAGES, audio_features, write_random_whisper

    shape = ({"d_model": 64, "layers": 2, "heads": 4} if env.dry else
             {"d_model": 1280, "layers": 32, "heads": 20, "n_mels": 128, "text_tokens": 50257,
              "languages": tuple(LANGUAGES)})
    tokens = 8 if env.dry else 200
    with tempfile.TemporaryDirectory() as tmp:
        hf = write_random_whisper(Path(tmp) / "w", max_target_positions=448, max_length=448,
                                  **shape)
        ours = import_model(Path(tmp) / "w").eval()
    dtype = torch.float32 if env.dry else torch.float16
    hf, ours = hf.to(env.device, dtype), ours.to(env.device, dtype)
    features = audio_features(1, n_mels=shape.get("n_mels", 80), seed=1).to(env.device, dtype)
    run_hf, run_ours = _whisper_runners(hf, ours, features, tokens)
    rows = []
    for name, run in (("transformers", run_hf), ("mmcore", run_ours)):
        count = len(run())
        rows.append({"model": name, "tokens": count,
                     "tokens_per_s": count / env.seconds(run, iters=min(env.iters, 3))})
    return {"shape": shape, "max_new_tokens": tokens, "rows": rows}


def _whisper_runners(hf: Any, ours: Any, features: torch.Tensor, tokens: int
                     ) -> tuple[Callable[[], list[int]], Callable[[], list[int]]]:
    from transformers.modeling_outputs import BaseModelOutput

    from mmcore_whisper.transcribe import DecodeOptions, decode_window, encode, whisper_head

    head = whisper_head(ours)
    with torch.no_grad():
        hidden = BaseModelOutput(last_hidden_state=hf.model.encoder(features).last_hidden_state)
        audio = encode(ours, head, features)
    prompt = head.tokens.prompt(language_id=head.tokens.language_id("en"), task="transcribe",
                                timestamps=False)
    options = DecodeOptions(timestamps=False, max_new_tokens=tokens)

    @torch.no_grad()
    def run_hf() -> list[int]:
        out = hf.generate(encoder_outputs=hidden, language="en", task="transcribe",
                          max_new_tokens=tokens, force_unique_generate_call=True)
        return list(out[0, len(prompt):].tolist())

    @torch.no_grad()
    def run_ours() -> list[int]:
        return list(decode_window(head, audio, prompt, options))

    return run_hf, run_ours


# -- 6. the report ----------------------------------------------------------------------------


STEPS = ("correctness", "attention", "contrastive", "clip", "whisper")


def run_step(name: str, env: Env, results: dict[str, Any]) -> None:
    start = time.perf_counter()
    try:
        failed = results.get("correctness", {}).get("failed", [])
        out = {"correctness": lambda: step_correctness(env),
               "attention": lambda: step_attention(env, failed),
               "contrastive": lambda: step_contrastive(env),
               "clip": lambda: step_clip(env),
               "whisper": lambda: step_whisper(env)}[name]()
        out["status"] = "ok"
    except Exception as e:  # one broken step must not lose the others' results
        out = {"status": "error", "error": f"{type(e).__name__}: {e}",
               "traceback": traceback.format_exc()}
    out["seconds"] = time.perf_counter() - start
    results[name] = out
    print(f"[{name}] {out['status']} in {out['seconds']:.1f} s", flush=True)


def markdown(results: dict[str, Any]) -> str:
    """One table per step (a row per measurement), the status line of each step first."""
    lines = [f"GPU suite on {results['device']} (torch {results['torch']}); "
             f"{'DRY RUN: no timing claims' if results['dry_run'] else 'measured'}", ""]
    for name in STEPS:
        step = results.get(name)
        if step is None:
            continue
        lines.append(f"### {name}: {step['status']} ({step['seconds']:.1f} s)")
        rows = step.get("rows", [])
        if step["status"] != "ok":
            lines += ["", f"`{step['error']}`", ""]
        elif rows:
            keys = list(dict.fromkeys(k for r in rows for k in r))
            lines += ["", "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
            lines += ["| " + " | ".join(_cell(r.get(k)) for k in keys) + " |" for r in rows]
            lines.append("")
    return "\n".join(lines) + "\n"


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    env = Env(args)
    name = torch.cuda.get_device_name() if env.device == "cuda" else "cpu"
    results: dict[str, Any] = {"device": name, "torch": torch.__version__,
                               "dry_run": env.dry, "dtype": str(env.dtype)}
    for step in STEPS:
        if step in args.steps:
            run_step(step, env, results)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_suite.json").write_text(json.dumps(results, indent=1, default=str))
    (args.out / "gpu_suite.md").write_text(markdown(results))
    print(markdown(results))
    return 0 if all(results[s]["status"] == "ok" for s in STEPS if s in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())

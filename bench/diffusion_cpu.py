"""The Stable Diffusion U-Net on CPU: mmcore against diffusers, same weights and inputs.

A small random ``UNet2DConditionModel`` in Stable Diffusion v1's layout (three levels,
channels 64/128/256, two ResNet blocks per level, cross-attention in the top two down
levels and the bottom two up levels and the middle, 8 heads, text width 128) is saved with
``save_pretrained`` and imported with mmcore's diffusers converter
(``mmcore_diffusion.convert.load_unet``), so both sides hold the same fp32 weights. After
checking that their outputs agree, it times, in one run, alternating:

* **step**: one denoising step, batch 1 (``--size`` 32 latents, 77 text tokens);
* **guided step**: one classifier-free-guidance step, the U-Net on batch 2
  (``[uncond; cond]``), as ``StableDiffusionPipeline`` runs it.

Both clocks are reported: ``time.process_time`` (this process's CPU time, all threads; far
less disturbed on a shared machine) and wall time, as medians over ``--iters`` runs after
``--warmup``. ratio = mmcore / diffusers; the target is <= 1.0.

    python bench/diffusion_cpu.py                 # the full table
    python bench/diffusion_cpu.py --quick         # a tiny U-Net, seconds
    python bench/diffusion_cpu.py --profile       # top ops of both sides (torch.profiler)
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mmcore_diffusion.convert import load_unet

TARGET = 1.0
FULL: dict[str, Any] = {
    "block_out_channels": (64, 128, 256), "layers_per_block": 2, "cross_attention_dim": 128,
    "attention_head_dim": 8, "sample_size": 32, "in_channels": 4, "out_channels": 4,
    "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D")}
QUICK: dict[str, Any] = {
    "block_out_channels": (32, 64), "layers_per_block": 1, "cross_attention_dim": 32,
    "attention_head_dim": 8, "sample_size": 8, "in_channels": 4, "out_channels": 4,
    "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D")}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, nargs="+", default=[1],
                   help="torch.set_num_threads values, one table each (default: 1)")
    p.add_argument("--size", type=int, default=None,
                   help="latent side (default: 32, or 8 with --quick)")
    p.add_argument("--text-tokens", type=int, default=77)
    p.add_argument("--warmup", type=int, default=2, help="untimed runs of each")
    p.add_argument("--iters", type=int, default=7, help="timed runs of each (median)")
    p.add_argument("--quick", action="store_true", help="channels 32/64, one block, 8x8")
    p.add_argument("--profile", action="store_true",
                   help="after timing, profile a guided step of each and print top ops")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def build(folder: Path, quick: bool, seed: int) -> tuple[Any, Any]:
    """(mmcore U-Net, diffusers U-Net) with the same random weights (every parameter
    perturbed, so zero-initialised layers do not hide a difference)."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    ref: Any = UNet2DConditionModel(**(QUICK if quick else FULL))
    ref.eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    ref.save_pretrained(folder)
    return load_unet(folder).eval(), ref


def cases(ours: Any, ref: Any, size: int, tokens: int, width: int
          ) -> dict[str, tuple[Callable[[], Tensor], Callable[[], Tensor]]]:
    """name -> (mmcore run, diffusers run), each returning the U-Net output."""
    g = torch.Generator().manual_seed(1)
    latents = torch.randn(1, 4, size, size, generator=g)
    cond, uncond = (torch.randn(1, tokens, width, generator=g) for _ in range(2))
    t = torch.tensor(500)
    guided_x, guided_c = torch.cat([latents, latents]), torch.cat([uncond, cond])
    return {
        "step (batch 1)": (lambda: ours(latents, t, cond),
                           lambda: ref(latents, t, encoder_hidden_states=cond,
                                       return_dict=False)[0]),
        "guided step (batch 2)": (lambda: ours(guided_x, t, guided_c),
                                  lambda: ref(guided_x, t, encoder_hidden_states=guided_c,
                                              return_dict=False)[0]),
    }


def clocked(run: Callable[[], Tensor]) -> tuple[float, float]:
    """(CPU seconds, wall seconds) of one run."""
    cpu, wall = time.process_time(), time.perf_counter()
    run()
    return time.process_time() - cpu, time.perf_counter() - wall


def measure(pair: tuple[Callable[[], Tensor], Callable[[], Tensor]], warmup: int, iters: int
            ) -> dict[str, tuple[float, float]]:
    """side -> (median CPU s, median wall s), the two sides alternating."""
    for _ in range(warmup):
        pair[0](), pair[1]()
    times: dict[str, list[tuple[float, float]]] = {"mmcore": [], "diffusers": []}
    for _ in range(iters):
        times["mmcore"].append(clocked(pair[0]))
        times["diffusers"].append(clocked(pair[1]))
    return {side: (statistics.median(c for c, _ in runs), statistics.median(w for _, w in runs))
            for side, runs in times.items()}


def profile(pair: tuple[Callable[[], Tensor], Callable[[], Tensor]], rows: int = 12) -> None:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    for side, run in zip(("mmcore", "diffusers"), pair, strict=True):
        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            run()
        print(f"\n{side}: top ops by self CPU time")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    cfg = QUICK if args.quick else FULL
    size = args.size or (8 if args.quick else 32)
    with tempfile.TemporaryDirectory() as tmp:
        ours, ref = build(Path(tmp) / "unet", args.quick, args.seed)
    params = sum(p.numel() for p in ours.parameters())
    print(f"U-Net: channels {cfg['block_out_channels']}, {params:,} parameters; latents "
          f"{size}x{size}x4, {args.text_tokens} text tokens of width "
          f"{cfg['cross_attention_dim']}; fp32; mmcore attention kernel "
          f"{ours.kernels.choices.get('attention', '?')}, diffusers "
          f"{type(ref.attn_processors[next(iter(ref.attn_processors))]).__name__}")
    runs = cases(ours, ref, size, args.text_tokens, cfg["cross_attention_dim"])
    with torch.inference_mode():
        for name, (a, b) in runs.items():
            diff = (a() - b()).abs().max().item()
            print(f"{name}: max |mmcore - diffusers| = {diff:.2e}")
        for threads in args.threads:
            torch.set_num_threads(threads)
            print(f"\nthreads {threads} (torch.set_num_threads); median of {args.iters}, "
                  "ms per step")
            print(f"{'':24}{'mmcore cpu':>12}{'diffusers cpu':>15}{'ratio':>8}"
                  f"{'mmcore wall':>13}{'diffusers wall':>16}{'ratio':>8}")
            for name, pair in runs.items():
                m = measure(pair, args.warmup, args.iters)
                (oc, ow), (rc, rw) = m["mmcore"], m["diffusers"]
                print(f"{name:24}{oc * 1e3:12.1f}{rc * 1e3:15.1f}{oc / rc:8.2f}"
                      f"{ow * 1e3:13.1f}{rw * 1e3:16.1f}{ow / rw:8.2f}")
        print(f"\nratio = mmcore / diffusers (target <= {TARGET})")
        if args.profile:
            profile(runs["guided step (batch 2)"])


if __name__ == "__main__":
    main()

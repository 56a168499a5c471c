"""CLIP ViT-B/32 on CPU: mmcore against Hugging Face transformers, same weights and inputs.

Times the forward pass (image + text embeddings and logits) and one training step
(forward + contrastive loss + backward + AdamW) of each, after checking that their
outputs agree. Ratio = mmcore / transformers: below 1 means mmcore is faster.

    python bench/clip_cpu.py [--batch-size 8] [--threads N] [--iters 5] [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import mmcore
from mmcore_clip.hf_clip import hf_clip_to_mmcore, spec_from_hf_clip_config

Inputs = dict[str, Any]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--threads", type=int, default=torch.get_num_threads(),
                   help="torch.set_num_threads (default: torch's default, %(default)s)")
    p.add_argument("--warmup", type=int, default=2, help="untimed iterations per step kind")
    p.add_argument("--iters", type=int, default=5, help="timed iterations (median reported)")
    p.add_argument("--quick", action="store_true", help="a small config for a smoke run")
    p.add_argument("--hf-attn", default="sdpa", choices=["sdpa", "eager"],
                   help="transformers attn_implementation (default: %(default)s)")
    p.add_argument("--hf-attention-mask", action="store_true",
                   help="also pass the padding mask to transformers (mmcore's causal text "
                        "tower never needs it; without it both run plain causal attention)")
    p.add_argument("--profile", action="store_true",
                   help="after timing, profile one train step of each and print top ops")
    p.add_argument("--clock", default="wall", choices=["wall", "cpu"],
                   help="wall: perf_counter; cpu: this process's CPU time (process_time), "
                        "robust to other load on a shared machine when used with --threads 1")
    p.add_argument("--compile", action="store_true",
                   help="compile both: mmcore's train.compile (its transformer stacks, in "
                        "place) and torch.compile of the transformers model (its Trainer's "
                        "torch_compile switch); warm-up then includes compilation")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def hf_config(quick: bool, attn: str) -> Any:
    """ViT-B/32 (transformers' CLIPConfig defaults) or a small config for --quick."""
    from transformers import CLIPConfig

    if not quick:
        return CLIPConfig(attn_implementation=attn)
    return CLIPConfig(
        text_config={"hidden_size": 128, "intermediate_size": 512, "num_hidden_layers": 2,
                     "num_attention_heads": 4, "vocab_size": 1000,
                     "max_position_embeddings": 77, "eos_token_id": 999,
                     "bos_token_id": 998, "pad_token_id": 0},
        vision_config={"hidden_size": 128, "intermediate_size": 512, "num_hidden_layers": 2,
                       "num_attention_heads": 4, "image_size": 64, "patch_size": 16},
        projection_dim=64, attn_implementation=attn)


def build_pair(quick: bool, attn: str) -> tuple[nn.Module, nn.Module]:
    """(mmcore model, transformers CLIPModel) with the same weights. The full run builds
    mmcore's ``clip-vit-b-32`` preset; loading is strict, so the architectures match."""
    from transformers import CLIPModel

    config = hf_config(quick, attn)
    hf = CLIPModel(config)
    ours = mmcore.build(spec_from_hf_clip_config(config) if quick else "clip-vit-b-32")
    ours.load_state_dict(hf_clip_to_mmcore(hf.state_dict()), strict=True)
    return ours, hf


def make_inputs(config: Any, batch: int, seed: int) -> tuple[Tensor, Tensor, Tensor]:
    """pixels (B, 3, S, S); ids (B, L) whose last valid token is the EOT (the highest id,
    ``eos_token_id``), padded with 0; mask (B, L)."""
    g = torch.Generator().manual_seed(seed)
    vc, tc = config.vision_config, config.text_config
    size, length, eot = vc.image_size, tc.max_position_embeddings, tc.vocab_size - 1
    assert tc.eos_token_id in (eot, 2), "EOT must be the eos id (or legacy argmax pooling)"
    pixels = torch.randn(batch, 3, size, size, generator=g)
    ids = torch.randint(1, eot, (batch, length), generator=g)
    lengths = torch.randint(2, length + 1, (batch,), generator=g)
    mask = torch.arange(length)[None, :] < lengths[:, None]
    ids = ids.masked_fill(~mask, 0)
    ids[torch.arange(batch), lengths - 1] = eot
    return pixels, ids, mask


def mm_forward(model: nn.Module, batch: Inputs) -> Tensor:
    """mmcore: embeddings of both towers and the (B, B) image-text logits."""
    out = model(batch)
    image = F.normalize(out.embeddings["image"], dim=-1)
    text = F.normalize(out.embeddings["text"], dim=-1)
    return model.objectives["contrastive"].scale() * image @ text.t()


def hf_forward(model: nn.Module, inputs: Inputs) -> Tensor:
    """transformers: ``logits_per_image`` (B, B)."""
    return model(**inputs).logits_per_image


def check_agreement(ours: nn.Module, hf: nn.Module, batch: Inputs, inputs: Inputs) -> None:
    """Print the max abs differences of embeddings, logits and loss; fail if large."""
    with torch.inference_mode():
        out = ours(batch)
        ref = hf(**inputs, return_loss=True)
        loss = ours.loss(batch, out)["loss"]
        logits = mm_forward(ours, batch)
    diffs = {
        "image embeds": (F.normalize(out.embeddings["image"], dim=-1) - ref.image_embeds),
        "text embeds": (F.normalize(out.embeddings["text"], dim=-1) - ref.text_embeds),
        "logits_per_image": logits - ref.logits_per_image,
        "loss": loss - ref.loss,
    }
    worst = {k: float(v.abs().max()) for k, v in diffs.items()}
    print("agreement (max abs diff): " + ", ".join(f"{k} {v:.2e}" for k, v in worst.items()))
    if max(worst.values()) > 1e-3:
        raise SystemExit("outputs disagree; the timings would compare different computations")


def train_step_fn(model: nn.Module, loss_of: Callable[[], Tensor]) -> Callable[[], None]:
    """A closure doing zero_grad, forward + loss, backward and one AdamW step."""
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5,
                            betas=(0.9, 0.98), weight_decay=0.2)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss_of().backward()
        opt.step()

    return step


def time_pair(fns: dict[str, Callable[[], Any]], warmup: int, iters: int,
              clock: Callable[[], float] = time.perf_counter) -> dict[str, list[float]]:
    """Milliseconds of each fn per iteration. They alternate, and so does which goes
    first, so drift and order effects fall on both alike."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for i in range(iters):
        order = list(fns) if i % 2 == 0 else list(reversed(fns))
        for name in order:
            start = clock()
            fns[name]()
            times[name].append((clock() - start) * 1e3)
    return times


def inference(fn: Callable[[], Any]) -> Callable[[], Any]:
    """``fn`` run under ``torch.inference_mode``."""
    def run() -> Any:
        with torch.inference_mode():
            return fn()
    return run


def profile_step(name: str, step: Callable[[], None], rows: int = 15) -> None:
    """Print the ops with the most self CPU time in one training step (``--profile``)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    print(f"\n== profile: {name} train step ==")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows))


def print_table(results: dict[str, dict[str, list[float]]]) -> None:
    """Median (the headline) and min (least disturbed by other load) of each step."""
    print(f"\n{'step':<12}{'mmcore ms':>12}{'transformers ms':>18}{'ratio':>8}"
          f"{'min ratio':>11}")
    for step, r in results.items():
        mm, hf = statistics.median(r["mmcore"]), statistics.median(r["transformers"])
        low = min(r["mmcore"]) / min(r["transformers"])
        print(f"{step:<12}{mm:>12.1f}{hf:>18.1f}{mm / hf:>8.3f}{low:>11.3f}")
    print("ratio = mmcore / transformers median ms (< 1: mmcore faster); "
          "min ratio = the same with each side's fastest run")


def main(argv: list[str] | None = None) -> None:
    import transformers

    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    ours, hf = build_pair(args.quick, args.hf_attn)
    pixels, ids, mask = make_inputs(hf.config, args.batch_size, args.seed)
    batch = {"image": pixels, "text": {"ids": ids, "mask": mask}}
    inputs = {"pixel_values": pixels, "input_ids": ids,
              "attention_mask": mask.long() if args.hf_attention_mask else None}
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, "
          f"threads {torch.get_num_threads()}, clock {args.clock}, batch {args.batch_size}, "
          f"config {'quick' if args.quick else 'clip-vit-b-32'} "
          f"({sum(p.numel() for p in ours.parameters()):,} params)")
    print(f"attention: transformers attn_implementation={hf.config._attn_implementation!r} "
          f"(vision {hf.vision_model.config._attn_implementation!r}, text "
          f"{hf.text_model.config._attn_implementation!r}; padding mask passed: "
          f"{args.hf_attention_mask}); mmcore kernels "
          f"{ours.kernel_choices}")
    ours.eval()
    hf.eval()
    check_agreement(ours, hf, batch, inputs)
    if args.compile:
        from mmcore.layers.transformer import compile_stacks

        print(f"compile: mmcore stacks compiled: {compile_stacks(ours)}; transformers: "
              "torch.compile(model)")
        hf = torch.compile(hf)
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    results = {"forward": time_pair({
        "mmcore": inference(lambda: mm_forward(ours, batch)),
        "transformers": inference(lambda: hf_forward(hf, inputs))},
        args.warmup, args.iters, clock)}
    ours.train()
    hf.train()
    steps = {"mmcore": train_step_fn(ours, lambda: ours.loss(batch)["loss"]),
             "transformers": train_step_fn(hf, lambda: hf(**inputs, return_loss=True).loss)}
    results["train step"] = time_pair(steps, args.warmup, args.iters, clock)
    print_table(results)
    if args.profile:
        for name, step in steps.items():
            profile_step(name, step)


if __name__ == "__main__":
    main()

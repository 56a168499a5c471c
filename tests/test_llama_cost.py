"""``mmcore inspect`` generation figures (FLOPs per generated token, KV-cache memory) for
decoder LMs, against hand-computed numbers for ``llama-tiny``."""

from __future__ import annotations

import json

import pytest

from mmcore.cli import main
from mmcore.plugins import get_registry
from mmcore.spec import load_spec
from mmcore.summary import summarize

# llama-tiny: width 128, 4 layers, 4 heads / 2 kv heads of 32, ffn 344, vocab 259, 128 positions
LAYER = 2 * 128 * 128 + 2 * (2 * 128 * 64) + 2 * 128 * 128 + 3 * (2 * 128 * 344)  # q,k,v,o,mlp
HEAD = 2 * 128 * 259
PER_KEY = 2 * 2 * 4 * 32  # q k^T and p v over 4 heads of 32, per layer


def figures(context: int | None = None, dtype: str = "fp32", batch: int = 1) -> dict[str, int]:
    spec = load_spec("llama-tiny", get_registry())
    cost = summarize(spec, batch_size=batch, dtype=dtype, context=context).cost
    assert cost is not None and cost.generation is not None
    return cost.generation


def test_flops_per_token_and_kv_cache_at_the_default_context() -> None:
    assert LAYER == 362_496
    assert figures() == {"context": 128,
                         "flops_per_token": 4 * LAYER + HEAD + 4 * PER_KEY * 128,  # 1,778,432
                         "kv_cache_bytes": 2 * 4 * 2 * 32 * 128 * 4}  # k and v, fp32


def test_context_batch_and_dtype() -> None:
    got = figures(context=64, dtype="bf16", batch=3)
    assert got["flops_per_token"] == 1_647_360
    assert got["kv_cache_bytes"] == 2 * 4 * 2 * 32 * 64 * 2 * 3
    with pytest.raises(ValueError, match="--context 129 exceeds the model's context of 128"):
        figures(context=129)


def test_inspect_prints_them(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", "llama-tiny", "--context", "64"]) == 0
    out = capsys.readouterr().out
    assert "generation at context 64: 1.65 MFLOP per generated token (1,647,360)" in out
    assert "KV cache 128.00 KiB (131,072 bytes, batch 1, fp32)" in out
    assert main(["inspect", "llama-tiny", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["cost"]["generation"]["context"] == 128


def test_models_that_do_not_decode_have_no_generation_figures() -> None:
    spec = load_spec("clip-tiny", get_registry())
    cost = summarize(spec).cost
    assert cost is not None and cost.generation is None

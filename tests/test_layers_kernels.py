"""Attention kernels against a float64 reference, kernel selection, shared layers and the
Perceiver latent backbone."""

from __future__ import annotations

import ast
import json
import math
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor

import mmcore
from mmcore.backbone import LatentBackbone
from mmcore.builder import BuildContext
from mmcore.checkpoint import read_metadata
from mmcore.contract import Tokens
from mmcore.encoders import TransformerEncoder, TransformerEncoderConfig
from mmcore.kernels import Candidate, Hardware, KernelError, KernelSet, dispatch, select_kernels
from mmcore.kernels.attention import reference_attention, sdpa_attention
from mmcore.layers import (
    LearnedPositions,
    MultiHeadAttention,
    pool,
    sinusoidal_positions,
    sinusoidal_positions_2d,
)
from mmcore.plugins import get_registry

CPU = Hardware()
A100 = Hardware("cuda", (8, 0), "A100")
H100 = Hardware("cuda", (9, 0), "H100")


@pytest.fixture(autouse=True)
def _no_kernel_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in [v for v in os.environ if v.startswith(dispatch.ENV_PREFIX)]:
        monkeypatch.delenv(var)


# -- attention kernels vs a float64 naive implementation ----------------------------------


def naive_attention(q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Tensor | None,
                    causal: bool) -> Tensor:
    """One query at a time in float64. Causal aligns the last query with the last key;
    a query with no allowed key gives zeros."""
    q, k, v = q.double(), k.double(), v.double()
    b, h, nq, d = q.shape
    nk = k.shape[2]
    out = torch.zeros(b, h, nq, v.shape[-1], dtype=torch.float64)
    for bi in range(b):
        for i in range(nq):
            allowed = torch.ones(nk, dtype=torch.bool)
            if key_padding_mask is not None:
                allowed &= key_padding_mask[bi]
            if causal:
                allowed &= torch.arange(nk) <= i + nk - nq
            if not allowed.any():
                continue
            for hi in range(h):
                scores = k[bi, hi, allowed] @ q[bi, hi, i] / math.sqrt(d)  # (allowed,)
                out[bi, hi, i] = torch.softmax(scores, 0) @ v[bi, hi, allowed]
    return out


def _qkv(b: int, h: int, nq: int, nk: int, d: int, seed: int = 0) -> tuple[Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(b, h, n, d, generator=g) for n in (nq, nk, nk))


def _padding(lengths: list[int], nk: int) -> Tensor:
    return torch.arange(nk)[None, :] < torch.tensor(lengths)[:, None]  # (B, Nk)


KERNELS = {"reference": reference_attention, "sdpa": sdpa_attention}
CASES = {  # name: (B, H, Nq, Nk, Dh, key lengths or None, causal)
    "self": (2, 2, 5, 5, 8, None, False),
    "self-padded": (2, 2, 6, 6, 8, [6, 3], False),
    "cross": (2, 2, 3, 7, 8, None, False),
    "cross-padded": (3, 2, 3, 7, 4, [7, 2, 5], False),
    "all-keys-padded": (2, 1, 4, 4, 8, [4, 0], False),
    "causal": (2, 2, 6, 6, 8, None, True),
    "causal-padded": (2, 2, 6, 6, 8, [6, 4], True),
    "causal-3x127": (2, 2, 3, 127, 16, None, True),
    "causal-3x127-padded": (2, 1, 3, 127, 5, [127, 60], True),
    "causal-more-queries": (1, 2, 5, 3, 8, None, True),
    "odd-3x127": (2, 3, 3, 127, 5, [127, 100], False),
    "one-key": (2, 2, 4, 1, 8, None, False),
}


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("case", CASES)
def test_attention_matches_float64(kernel: str, case: str) -> None:
    b, h, nq, nk, d, lengths, causal = CASES[case]
    q, k, v = _qkv(b, h, nq, nk, d)
    mask = None if lengths is None else _padding(lengths, nk)
    got = KERNELS[kernel](q, k, v, key_padding_mask=mask, causal=causal)
    want = naive_attention(q, k, v, mask, causal)
    assert got.shape == (b, h, nq, d) and got.dtype == torch.float32
    torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=1e-5)


def test_naive_attention_is_not_trivial() -> None:
    """The reference really masks: early causal queries and padded rows differ from full."""
    q, k, v = _qkv(1, 1, 3, 127, 4)
    full, causal = naive_attention(q, k, v, None, False), naive_attention(q, k, v, None, True)
    assert not torch.allclose(full[..., 0, :], causal[..., 0, :])
    assert torch.allclose(full[..., -1, :], causal[..., -1, :])  # the last query sees every key
    padded = naive_attention(q, k, v, _padding([0], 127), False)
    assert torch.equal(padded, torch.zeros_like(padded))


@pytest.mark.parametrize("kernel", KERNELS)
def test_attention_in_float64_is_exact(kernel: str) -> None:
    q, k, v = (t.double() for t in _qkv(2, 2, 3, 9, 8))
    mask = _padding([9, 4], 9)
    got = KERNELS[kernel](q, k, v, key_padding_mask=mask, causal=True)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, naive_attention(q, k, v, mask, True), atol=1e-12, rtol=1e-12)


# -- kernel selection ---------------------------------------------------------------------


@pytest.fixture
def fancy(monkeypatch: pytest.MonkeyPatch) -> Candidate:
    """A private candidate table with a Hopper-only attention kernel of top priority."""
    table = {op: dict(cands) for op, cands in dispatch._CANDIDATES.items()}
    monkeypatch.setattr(dispatch, "_CANDIDATES", table)
    cand = Candidate("attention", "fancy", reference_attention, devices=("cuda",),
                     min_capability=(9, 0), priority=1000, note="test kernel")
    dispatch.register_candidate(cand)
    return cand


def test_cpu_selects_sdpa_for_attention() -> None:
    choices = select_kernels(None, CPU).choices
    assert set(choices) == set(dispatch.op_names())
    assert choices["attention"] == choices["cross_attention"] == "sdpa"
    for op, name in choices.items():  # every choice can run on a CPU
        assert dispatch._CANDIDATES[op][name].rejection(CPU) is None


def test_catalogue_registers_every_candidate() -> None:
    assert {op: sorted(cands) for op, cands in dispatch._CANDIDATES.items()} == {
        "attention": ["reference", "sdpa", "triton", "xformers"],
        "contrastive_loss": ["chunked", "reference", "triton"],
        "cross_attention": ["reference", "sdpa", "triton", "xformers"],
    }
    triton = dispatch._CANDIDATES["contrastive_loss"]["triton"]
    assert triton.fn.__name__ == "triton_contrastive_loss" and triton.packages == ("triton",)


KERNELS_DIR = Path(mmcore.__file__).parent / "kernels"


def _kernel_imports() -> dict[str, list[tuple[str, list[str]]]]:
    """module stem -> [(imported mmcore.kernels module stem, imported names)], including
    imports inside functions (a lazy import still closes a cycle)."""
    out: dict[str, list[tuple[str, list[str]]]] = {}
    for path in sorted(KERNELS_DIR.glob("*.py")):
        tree = ast.parse(path.read_text())
        out[path.stem] = [(node.module.rsplit(".", 1)[1], [a.name for a in node.names])
                          for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                          and (node.module or "").startswith("mmcore.kernels.")]
    return out


def test_kernel_modules_form_no_cycle_and_share_no_privates() -> None:
    imports = _kernel_imports()
    assert not any(name.startswith("_") for deps in imports.values() for _, names in deps
                   for name in names)
    graph = {mod: {dep for dep, _ in deps} for mod, deps in imports.items()}
    order: list[str] = []
    while graph:  # peel off modules whose imports are all placed: a cycle never empties
        ready = sorted(m for m, deps in graph.items() if deps <= set(order))
        assert ready, f"import cycle among {sorted(graph)}"
        order += ready
        graph = {m: deps for m, deps in graph.items() if m not in ready}
    # dispatch is selection only: it names no candidate module
    assert {dep for dep, _ in imports["dispatch"]} == set()


def test_cuda_without_gpu_packages_selects_sdpa() -> None:
    choices = select_kernels(None, A100).choices
    assert choices["attention"] == choices["cross_attention"] == "sdpa"


def test_capability_gates_a_candidate(fancy: Candidate) -> None:
    assert select_kernels(None, CPU).choices["attention"] == "sdpa"
    assert select_kernels(None, A100).choices["attention"] == "sdpa"
    assert select_kernels(None, H100).choices["attention"] == "fancy"
    assert select_kernels(None, H100).choices["cross_attention"] == "sdpa"
    rows = {(r["op"], r["candidate"]): r for r in dispatch.explain(A100)}
    assert rows[("attention", "fancy")]["status"] == "rejected"
    assert rows[("attention", "fancy")]["reason"] == "needs compute capability >= 9.0"
    assert rows[("attention", "sdpa")]["status"] == "chosen"


def test_forced_kernel_that_cannot_run_raises(fancy: Candidate) -> None:
    with pytest.raises(KernelError, match="'fancy' was forced for 'attention' but cannot run: "
                                          "needs device cuda, this is cpu"):
        select_kernels({"attention": "fancy"}, CPU)
    with pytest.raises(KernelError, match=r"needs compute capability >= 9\.0"):
        select_kernels({"attention": "fancy"}, A100)
    assert select_kernels({"attention": "fancy"}, H100).choices["attention"] == "fancy"


def test_forced_unknown_kernel_or_op_raises() -> None:
    with pytest.raises(KernelError, match="unknown kernel 'warp' for op 'attention'; known: "
                                          "reference, sdpa"):
        select_kernels({"attention": "warp"}, CPU)
    with pytest.raises(KernelError, match=r"unknown kernel op\(s\) \['atention'\]"):
        select_kernels({"atention": "reference"}, CPU)


def test_forced_reference_and_auto() -> None:
    forced = select_kernels({"attention": "reference", "cross_attention": "auto"}, A100)
    assert forced.choices["attention"] == "reference"
    assert forced.choices["cross_attention"] == "sdpa"


def test_env_var_forces_and_spec_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MMCORE_KERNEL_ATTENTION", "reference")
    choices = select_kernels(None, CPU).choices
    assert choices["attention"] == "reference" and choices["cross_attention"] == "sdpa"
    assert select_kernels({"attention": "sdpa"}, CPU).choices["attention"] == "sdpa"
    monkeypatch.setenv("MMCORE_KERNEL_ATTENTION", "nonsense")
    with pytest.raises(KernelError, match="unknown kernel 'nonsense'"):
        select_kernels(None, CPU)


def test_unsuitable_call_falls_back_to_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    table = {op: dict(cands) for op, cands in dispatch._CANDIDATES.items()}
    monkeypatch.setattr(dispatch, "_CANDIDATES", table)
    calls: list[torch.dtype] = []

    def half_only(q: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        calls.append(q.dtype)
        return reference_attention(q, *args, **kwargs)

    dispatch.register_candidate(Candidate("attention", "half", half_only,
                                          dtypes=(torch.float16,), head_dims=(8, 64)))
    kernels = KernelSet({"attention": "half"})
    q, k, v = _qkv(1, 1, 2, 2, 8)
    kernels.attention(q, k, v)  # float32: the reference runs
    kernels.attention(q.half(), k.half(), v.half())
    kernels.attention(*(t[..., :4].half() for t in (q, k, v)))  # head dim 4 < 8
    assert calls == [torch.float16]


# -- kernels chosen for a model -----------------------------------------------------------


def _spec(**extra: Any) -> dict[str, Any]:
    return {
        "name": "kernels",
        "modalities": {
            "image": {"tokenizer": {"type": "patch-embedding", "image_size": 16,
                                    "patch_size": 4, "width": 16},
                      "encoder": {"type": "vit", "layers": 2, "heads": 2}},
            "text": {"tokenizer": {"type": "token-embedding", "vocab_size": 300, "width": 16,
                                   "context_length": 8},
                     "encoder": {"type": "text-transformer", "layers": 1, "heads": 2,
                                 "causal": False}},
        },
        "fusion": {"type": "perceiver", "width": 16, "num_latents": 4, "layers": 1, "heads": 2},
        **extra,
    }


def _outputs(model: Any) -> Tensor:
    g = torch.Generator().manual_seed(3)
    batch = {"image": torch.randn(2, 3, 16, 16, generator=g),
             "text": {"ids": torch.randint(0, 300, (2, 8), generator=g),
                      "mask": _padding([8, 5], 8)}}
    with torch.no_grad():
        return model.eval()(batch).embeddings["fused"]


def _seeded_build(spec: dict[str, Any]) -> Any:
    torch.manual_seed(0)
    return mmcore.build(spec)


def test_forced_reference_model_matches_default(tmp_path: Path) -> None:
    default = _seeded_build(_spec())
    forced = _seeded_build(_spec(kernels={"attention": "reference",
                                          "cross_attention": "reference"}))
    assert default.kernel_choices["attention"] == "sdpa"
    assert forced.kernel_choices["attention"] == forced.kernel_choices["cross_attention"] \
        == "reference"
    a, b = _outputs(default), _outputs(forced)
    assert a.abs().max() > 0.01
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_forced_choice_is_recorded_in_checkpoints(tmp_path: Path) -> None:
    model = _seeded_build(_spec(kernels={"attention": "reference"}))
    assert model.kernel_choices["attention"] == "reference"
    assert model.kernel_choices["cross_attention"] == "sdpa"
    path = mmcore.save(model, tmp_path / "model.safetensors")
    recorded = json.loads(read_metadata(path)["kernels"])
    assert recorded["attention"] == "reference" and recorded["cross_attention"] == "sdpa"
    loaded = mmcore.load(path)
    assert loaded.kernel_choices["attention"] == "reference"


def test_every_layer_shares_the_model_kernels() -> None:
    model = _seeded_build(_spec())
    layers = [m for m in model.modules() if isinstance(m, MultiHeadAttention)]
    assert len(layers) > 4
    assert all(layer.kernels is model.kernels for layer in layers)


# -- positional embeddings and pooling ----------------------------------------------------


def test_learned_positions() -> None:
    positions = LearnedPositions(length=10, width=4)
    x = torch.randn(2, 7, 4)
    out = positions(x)
    assert out.shape == (2, 7, 4)
    torch.testing.assert_close(out - x, positions.weight[:7].expand(2, -1, -1))
    with pytest.raises(ValueError, match="11 tokens is longer than the 10 learned positions"):
        positions(torch.randn(1, 11, 4))


def test_sinusoidal_positions() -> None:
    table = sinusoidal_positions(50, 8)
    assert table.shape == (50, 8) and table.dtype == torch.float32
    assert torch.equal(table[0], torch.tensor([0.0] * 4 + [1.0] * 4))
    freq = 10000.0 ** (-1 / 3)  # channel 1 of 4 sin channels
    assert table[3, 1].item() == pytest.approx(math.sin(3 * freq), abs=1e-6)
    assert table[3, 5].item() == pytest.approx(math.cos(3 * freq), abs=1e-6)
    assert table[:, 0].tolist() == pytest.approx([math.sin(p) for p in range(50)], abs=1e-6)
    with pytest.raises(ValueError, match="even width"):
        sinusoidal_positions(4, 7)


def test_sinusoidal_positions_2d() -> None:
    table = sinusoidal_positions_2d(2, 3, 8)
    assert table.shape == (6, 8)
    rows, cols = sinusoidal_positions(2, 4), sinusoidal_positions(3, 4)
    for r in range(2):
        for c in range(3):
            assert torch.equal(table[r * 3 + c], torch.cat([rows[r], cols[c]]))
    with pytest.raises(ValueError, match="divisible by 4"):
        sinusoidal_positions_2d(2, 2, 6)


def _pool_example() -> Tokens:
    x = torch.arange(2 * 4 * 3, dtype=torch.float32).view(2, 4, 3)
    return Tokens(x, torch.tensor([[True, True, True, False], [True, True, False, False]]))


def test_pool_cls_eot_mean() -> None:
    tokens = _pool_example()
    assert pool(tokens, "cls").tolist() == [[0, 1, 2], [12, 13, 14]]
    assert pool(tokens, "eot").tolist() == [[6, 7, 8], [15, 16, 17]]
    assert pool(tokens, "mean").tolist() == [[3, 4, 5], [13.5, 14.5, 15.5]]
    unmasked = Tokens(tokens.x)
    assert pool(unmasked, "eot").tolist() == [[9, 10, 11], [21, 22, 23]]
    assert pool(unmasked, "mean").tolist() == [[4.5, 5.5, 6.5], [16.5, 17.5, 18.5]]
    with pytest.raises(ValueError, match="unknown pooling 'max'"):
        pool(tokens, "max")  # type: ignore[arg-type]


def test_attention_layer_rejects_uneven_heads() -> None:
    with pytest.raises(ValueError, match="width 10 is not divisible by heads 4"):
        MultiHeadAttention(width=10, heads=4, kernels=KernelSet())


# -- the Perceiver latent backbone --------------------------------------------------------


def _spy(kernels: KernelSet) -> dict[str, list[tuple[int, ...]]]:
    """Record (q shape, k shape) of every attention call through ``kernels``."""
    seen: dict[str, list[tuple[int, ...]]] = {"attention": [], "cross_attention": []}
    for op in seen:
        original: Callable[..., Tensor] = getattr(kernels, op)

        def record(q: Tensor, k: Tensor, *args: Any, _op: str = op,
                   _fn: Callable[..., Tensor] = original, **kwargs: Any) -> Tensor:
            seen[_op].append((*q.shape, k.shape[2]))
            return _fn(q, k, *args, **kwargs)

        setattr(kernels, op, record)
    return seen


@pytest.fixture
def backbone() -> Iterator[tuple[LatentBackbone, dict[str, list[tuple[int, ...]]]]]:
    torch.manual_seed(0)
    kernels = select_kernels(None, CPU)
    seen = _spy(kernels)
    model = LatentBackbone(input_width=12, width=16, num_latents=4, layers=2, heads=2,
                           cross_heads=1, kernels=kernels).eval()
    yield model, seen


def test_backbone_output_shape(backbone: tuple[LatentBackbone, Any]) -> None:
    model, _ = backbone
    inputs = Tokens(torch.randn(2, 10, 12), _padding([10, 6], 10))
    queries = torch.randn(2, 3, 16)
    assert model.encode(inputs).shape == (2, 4, 16)  # (B, M, D)
    assert model(inputs, queries).shape == (2, 3, 16)  # (B, Q, D)


@pytest.mark.parametrize("n", [1, 10, 500])
def test_latent_blocks_do_not_see_n(backbone: tuple[LatentBackbone, Any], n: int) -> None:
    model, seen = backbone
    shapes: list[tuple[int, ...]] = []
    hook = model.latent_blocks.register_forward_pre_hook(
        lambda module, args: shapes.append(tuple(args[0].shape)))
    with torch.no_grad():
        model(Tokens(torch.randn(2, n, 12)), torch.randn(2, 3, 16))
    hook.remove()
    assert shapes == [(2, 4, 16)]  # (B, M, D) whatever N is
    # self-attention: 2 layers over the 4 latents only (B, H, M, Dh, Nk = M)
    assert seen["attention"] == [(2, 2, 4, 8, 4)] * 2
    # the only call that reads all N inputs is the encoder's cross-attention with M queries
    assert seen["cross_attention"] == [(2, 1, 4, 16, n), (2, 1, 3, 16, 4)]


def test_backbone_ignores_padded_inputs(backbone: tuple[LatentBackbone, Any]) -> None:
    model, _ = backbone
    x = torch.randn(2, 8, 12)
    mask = _padding([8, 5], 8)
    changed = x.clone()
    # only padding differs, by a non-constant vector: an input LayerNorm would turn a
    # constant row (e.g. all 100.0) into its bias, whatever the constant
    changed[1, 5:] = 100 * torch.randn(3, 12, generator=torch.Generator().manual_seed(1))
    queries = torch.randn(2, 3, 16)
    with torch.no_grad():
        a = model(Tokens(x, mask), queries)
        b = model(Tokens(changed, mask), queries)
        c = model(Tokens(changed), queries)  # (B, 3, 16), the padding read as real tokens
    torch.testing.assert_close(a, b)
    assert (a[1] - c[1]).abs().max() > 1e-2


# -- the core transformer encoder ---------------------------------------------------------


@pytest.mark.parametrize("causal", [True, False])
def test_transformer_encoder_causal_option(causal: bool) -> None:
    """Causal: a change at token 4 reaches tokens 4.. only; full: it reaches token 0 too.
    The change is a random vector, which no LayerNorm in the blocks can cancel."""
    torch.manual_seed(0)
    cfg = TransformerEncoderConfig(width=16, layers=2, heads=2, causal=causal)
    encoder = TransformerEncoder(cfg, 16, select_kernels(None, CPU)).eval()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 7, 16, generator=g)
    changed = x.clone()
    changed[:, 4] += torch.randn(16, generator=g)
    mask = torch.arange(7)[None] < torch.tensor([7, 5])[:, None]  # (B, N), padding last
    with torch.no_grad():
        a, b = encoder(Tokens(x, mask)).x, encoder(Tokens(changed, mask)).x  # (B, N, D)
    moved = (a - b).abs().amax(-1)  # (B, N)
    assert moved[:, 4].min() > 1e-2
    if causal:
        torch.testing.assert_close(a[:, :4], b[:, :4])
    else:
        assert moved[:, 0].min() > 1e-2


def test_text_transformer_is_the_causal_core_encoder() -> None:
    entry = get_registry().get("encoder", "text-transformer")
    encoder = entry.factory(entry.config.model_validate({"layers": 1, "heads": 2, "width": 8}),
                            BuildContext(kernels=select_kernels(None, CPU), in_width=8))
    assert isinstance(encoder, TransformerEncoder) and encoder.causal
    assert [k for k in encoder.state_dict() if not k.startswith("stack.blocks.0.")] == [
        "stack.final_norm.weight", "stack.final_norm.bias"]

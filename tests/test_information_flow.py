"""Which input can influence which output, measured through gradients.

``influence(output, source)`` is the gradient of a random projection of ``output`` with
respect to ``source``: exactly zero when no computation path carries ``source`` into
``output`` (a random projection avoids cancellations such as the zero sum of a LayerNorm).
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import Tensor, nn

from mmcore.builder import BuildContext
from mmcore.contract import Tokens
from mmcore.kernels import Hardware, select_kernels
from mmcore.plugins import get_registry

WIDTHS = {"alpha": 16, "beta": 12}
LENGTHS = {"alpha": 5, "beta": 8}
KERNELS = select_kernels(None, Hardware())


def build(name: str, params: dict[str, Any] | None = None,
          widths: dict[str, int] | None = None) -> Any:
    """A fusion from ``params`` (its registered tiny config when None), in eval mode."""
    entry = get_registry().get("fusion", name)
    torch.manual_seed(0)
    cfg = entry.config.model_validate(entry.tiny if params is None else params)
    return entry.factory(cfg, BuildContext(kernels=KERNELS, widths=dict(widths or WIDTHS))).eval()


def inputs(seed: int = 0) -> dict[str, Tokens]:
    """name: Tokens (3, N, D) whose x require grad; samples 1 and 2 are padded."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, width in WIDTHS.items():
        n = LENGTHS[name]
        real = torch.tensor([n, n - 2, 1])
        x = torch.randn(3, n, width, generator=g).requires_grad_(True)
        out[name] = Tokens(x, torch.arange(n)[None] < real[:, None])
    return out


def influence(output: Tensor, source: Tensor) -> Tensor:
    """d <r, output> / d source for a fixed random r. Same shape as ``source``."""
    r = torch.randn(output.shape, generator=torch.Generator().manual_seed(1))
    (grad,) = torch.autograd.grad((output * r).sum(), source, retain_graph=True,
                                  allow_unused=True)
    return torch.zeros_like(source) if grad is None else grad


def flows(output: Tensor, source: Tensor) -> bool:
    """Whether ``source`` influences ``output``; False only for an exactly zero gradient."""
    return bool(influence(output, source).abs().max() > 0)


# -- padding carries nothing, in every fusion ----------------------------------------------


#: Fusions whose registry entry brings its own example inputs (token ids to splice at,
#: latent grids): the standard alpha/beta Tokens do not fit them, and the conformance
#: suite's padding-invariance check runs them on their own examples instead.
OWN_INPUTS = sorted(e.name for e in get_registry().list("fusion") if e.example is not None)


@pytest.mark.parametrize("name", [n for n in get_registry().names("fusion")
                                  if n not in OWN_INPUTS])
def test_padding_influences_no_output(name: str) -> None:
    fusion, tokens = build(name), inputs()
    out = fusion(tokens)
    for source in tokens.values():
        padded = ~source.valid()
        assert padded.any()
        for key, emb in out.embeddings.items():
            grad = influence(emb, source.x)
            assert torch.count_nonzero(grad[padded]) == 0, (key, "reads padding")
        for key, stream in out.tokens.items():
            real = stream.valid()
            grad = influence(stream.x[real], source.x)
            assert torch.count_nonzero(grad[padded]) == 0, (key, "reads padding")


# -- late ----------------------------------------------------------------------------------


@pytest.mark.parametrize("combine", ["none", "concat", "mean", "weighted", "attention"])
def test_late_modalities_never_meet(combine: str) -> None:
    tokens = inputs()
    out = build("late", {"embed_dim": 8, "combine": combine})(tokens)
    for a, b in (("alpha", "beta"), ("beta", "alpha")):
        assert torch.equal(influence(out.embeddings[a], tokens[b].x),
                           torch.zeros_like(tokens[b].x))
        assert flows(out.embeddings[a], tokens[a].x)
    if combine != "none":
        assert all(flows(out.embeddings["fused"], t.x) for t in tokens.values())


# -- early ---------------------------------------------------------------------------------


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_early_everything_influences_everything(pooling: str) -> None:
    tokens = inputs()
    out = build("early", {"width": 8, "layers": 1, "heads": 2, "fused_pooling": pooling})(tokens)
    outputs = [*out.embeddings.values(), *(t.x[t.valid()] for t in out.tokens.values())]
    for output in outputs:
        for source in tokens.values():
            grad = influence(output, source.x)
            # every real token of every modality reaches every output
            assert (grad.abs().sum(-1)[source.valid()] > 0).all()


# -- cross-attention and co-attention ------------------------------------------------------


@pytest.mark.parametrize("every", [1, 2])
def test_cross_attention_flows_from_context_to_query_only(every: int) -> None:
    tokens = inputs()
    fusion = build("cross-attention", {"query": "alpha", "context": "beta", "layers": 2,
                                       "heads": 2, "every": every})
    out = fusion(tokens)
    alpha, beta = tokens["alpha"].x, tokens["beta"].x
    assert not flows(out.embeddings["beta"], alpha)  # the context never sees the query
    assert not flows(out.tokens["beta"].x, alpha)
    assert not flows(out.embeddings["alpha"], beta)  # the query's own embedding is unfused
    assert flows(out.embeddings["fused"], alpha) and flows(out.embeddings["fused"], beta)
    assert flows(out.tokens["fused"].x, beta)


def test_co_attention_flows_both_ways() -> None:
    tokens = inputs()
    out = build("co-attention", {"layers": 1, "heads": 2})(tokens)
    for key in ("alpha", "beta", "fused"):
        assert all(flows(out.embeddings[key], t.x) for t in tokens.values()), key


# -- bottleneck ----------------------------------------------------------------------------

BOTTLENECK = {"width": 8, "layers": 4, "fusion_layer": 2, "num_bottlenecks": 2, "heads": 2}


def _stream_outputs(fusion: Any, name: str) -> tuple[list[Tensor], list[Any]]:
    """Record the output of every layer of ``name``'s stream."""
    seen: list[Tensor] = []
    hooks = [block.register_forward_hook(lambda m, args, out: seen.append(out))
             for block in fusion.streams[name]]
    return seen, hooks


def test_bottleneck_no_cross_modal_influence_before_fusion_layer() -> None:
    fusion, tokens = build("bottleneck", BOTTLENECK), inputs()
    seen, hooks = _stream_outputs(fusion, "alpha")
    out = fusion(tokens)
    for hook in hooks:
        hook.remove()
    assert len(seen) == 4
    # layers 0 and 1: separate streams; layer 2, the first fusion layer, reads the learned
    # bottleneck tokens every stream starts from; layer 3 reads their first average
    for layer in seen[:3]:
        assert not flows(layer, tokens["beta"].x) and flows(layer, tokens["alpha"].x)
    assert seen[2].shape[1] == LENGTHS["alpha"] + 2  # the stream's tokens + its copy
    assert flows(seen[3], tokens["beta"].x)
    assert flows(out.embeddings["alpha"], tokens["beta"].x)
    assert flows(out.embeddings["beta"], tokens["alpha"].x)


@pytest.mark.parametrize("params", [{"num_bottlenecks": 0}, {"fusion_layer": 4}])
def test_bottleneck_without_fusion_tokens_modalities_never_meet(params: dict[str, Any]) -> None:
    tokens = inputs()
    out = build("bottleneck", {**BOTTLENECK, **params})(tokens)
    assert not flows(out.embeddings["alpha"], tokens["beta"].x)
    assert not flows(out.embeddings["beta"], tokens["alpha"].x)
    assert flows(out.embeddings["fused"], tokens["beta"].x)


def _own_copy(copies: dict[str, Tensor], present: dict[str, Tensor]) -> dict[str, Tensor]:
    return copies  # each stream keeps its own bottleneck tokens: no exchange


def _zeroed(copies: dict[str, Tensor], present: dict[str, Tensor]) -> dict[str, Tensor]:
    return {m: torch.zeros_like(z) for m, z in copies.items()}


@pytest.mark.parametrize("block", [_own_copy, _zeroed, "detach"])
def test_bottleneck_tokens_are_the_only_path(block: Any) -> None:
    """Blocking the exchange of the fusion tokens removes every cross-modal influence."""
    fusion, tokens = build("bottleneck", BOTTLENECK), inputs()
    out = fusion(tokens)
    assert flows(out.embeddings["alpha"], tokens["beta"].x)
    exchange = fusion.exchange
    if block == "detach":
        fusion.exchange = lambda c, p: {m: z.detach() for m, z in exchange(c, p).items()}
    else:
        fusion.exchange = block
    out = fusion(tokens)
    assert not flows(out.embeddings["alpha"], tokens["beta"].x)
    assert not flows(out.tokens["beta"].x, tokens["alpha"].x)
    assert flows(out.embeddings["alpha"], tokens["alpha"].x)


def test_bottleneck_blocked_exchange_makes_outputs_independent() -> None:
    """Values, not only gradients: with each stream keeping its own copy, a new beta input
    leaves alpha's outputs unchanged; with the exchange it changes them."""
    fusion, tokens, other = build("bottleneck", BOTTLENECK), inputs(0), inputs(1)
    mixed = {"alpha": tokens["alpha"], "beta": other["beta"]}
    with torch.no_grad():
        assert not torch.allclose(fusion(tokens).embeddings["alpha"],
                                  fusion(mixed).embeddings["alpha"])
        fusion.exchange = _own_copy
        assert torch.equal(fusion(tokens).embeddings["alpha"], fusion(mixed).embeddings["alpha"])


# -- gated cross-attention -----------------------------------------------------------------

GATED = {"text": "alpha", "visual": "beta", "lm_layers": 2, "heads": 2,
         "resampler": {"num_latents": 2, "layers": 1, "heads": 2}}


def test_gated_xattn_is_the_language_model_at_initialisation() -> None:
    fusion, tokens = build("gated-xattn", GATED), inputs()
    text = tokens["alpha"]
    with_visual = fusion(tokens).tokens["fused"].x
    without_visual = fusion({"alpha": text}).tokens["fused"].x
    plain_lm = fusion.lm(text.x, text.valid(), causal=True)
    assert torch.equal(with_visual, without_visual) and torch.equal(with_visual, plain_lm)
    fusion.xattn = nn.ModuleDict()  # the blocks removed
    assert torch.equal(fusion(tokens).tokens["fused"].x, with_visual)


def test_gated_xattn_gates_open_the_visual_path() -> None:
    fusion, tokens = build("gated-xattn", GATED), inputs()
    out = fusion(tokens)
    assert not flows(out.tokens["fused"].x, tokens["beta"].x)  # tanh(0) closes the gates
    out.embeddings["fused"].pow(2).sum().backward()
    assert all(b.attn_gate.grad is not None and b.attn_gate.grad.abs() > 0
               for b in fusion.xattn.values())  # ... yet the gates learn
    opened = build("gated-xattn", {**GATED, "init_gate": 0.5})
    tokens = inputs()
    out = opened(tokens)
    assert flows(out.embeddings["fused"], tokens["beta"].x)
    assert not flows(out.embeddings["alpha"], tokens["beta"].x)  # the text input's own


def test_gated_xattn_language_model_is_causal() -> None:
    tokens = inputs()
    out = build("gated-xattn", {**GATED, "init_gate": 0.5})(tokens)
    text = tokens["alpha"].x
    for i in range(text.shape[1]):
        grad = influence(out.tokens["fused"].x[0, i], text).abs().sum(-1)[0]  # (N,)
        assert (grad[i + 1:] == 0).all() and (grad[: i + 1] > 0).all()


# -- perceiver resampler and perceiver -----------------------------------------------------


def test_resampler_leaves_other_modalities_alone() -> None:
    tokens = inputs()
    out = build("perceiver-resampler")(tokens)  # resamples beta
    assert flows(out.embeddings["beta"], tokens["beta"].x)
    assert not flows(out.embeddings["beta"], tokens["alpha"].x)
    assert not flows(out.embeddings["alpha"], tokens["beta"].x)


def test_perceiver_latents_read_every_modality() -> None:
    tokens = inputs()
    out = build("perceiver")(tokens)
    assert all(flows(out.embeddings["fused"], t.x) for t in tokens.values())

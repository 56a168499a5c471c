"""Every registered component passes the conformance suite, and the suite catches bugs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from pydantic import Field
from torch import Tensor, nn

from mmcore.builder import BuildContext
from mmcore.contract import Encoder, Fusion, FusionOutput, Tokens
from mmcore.plugins import get_registry
from mmcore.registry import ComponentConfig, Entry, NoConfig, Registry
from mmcore.testing import (
    CHECKED_KINDS,
    check_component,
    conformance_cases,
    conformance_params,
)


@pytest.mark.parametrize(("kind", "name"), conformance_params())
def test_component_conforms(kind: str, name: str) -> None:
    check_component(get_registry(), kind, name)


def test_every_first_party_component_is_a_case() -> None:
    registry = get_registry()
    cases = set(conformance_cases(registry))
    for kind in CHECKED_KINDS[1:]:  # every module kind; preprocessors need an example
        assert {(kind, n) for n in registry.names(kind)} <= cases
    assert {("preprocessor", "image"), ("preprocessor", "byte-text")} <= cases
    assert ("preprocessor", "hf-tokenizer") not in cases  # needs a tokenizer.json file


def test_cases_filter_by_plugin_and_ids() -> None:
    cases = conformance_cases(get_registry(), plugin="mmcore_image")
    assert cases == [("preprocessor", "image"), ("tokenizer", "patch-embedding"),
                     ("encoder", "vit")]
    ids = [p.id for p in conformance_params(plugin="mmcore_image")]
    assert ids == ["preprocessor:image", "tokenizer:patch-embedding", "encoder:vit"]


@pytest.mark.parametrize(("preprocessor", "tokenizer", "items"), [
    ("image", "patch-embedding", [torch.rand(3, 40, 24), torch.rand(3, 16, 16)]),
    ("byte-text", "token-embedding", ["a red square", "x" * 40]),
])
def test_tiny_preprocessor_feeds_its_tokenizer(preprocessor: str, tokenizer: str,
                                               items: list[Any]) -> None:
    registry = get_registry()
    ctx = BuildContext(kernels=_kernels())
    pre, tok = (registry.get(kind, name) for kind, name in
                (("preprocessor", preprocessor), ("tokenizer", tokenizer)))
    run = pre.factory(pre.config.model_validate(pre.tiny), ctx)
    module = tok.factory(tok.config.model_validate(tok.tiny), ctx)
    tokens = module(run(items))
    assert tokens.x.shape[0] == 2 and tokens.x.shape[2] == module.out_width


# -- the suite itself catches broken components ------------------------------------------


def _kernels() -> Any:
    from mmcore.kernels import Hardware, select_kernels

    return select_kernels(None, Hardware())


class WidthConfig(ComponentConfig):
    width: int | None = Field(None, gt=0)


class Linear(Encoder):
    """A correct encoder: (B, N, D) -> (B, N, D)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.out_width = width
        self.proj = nn.Linear(width, width)

    def forward(self, tokens: Tokens) -> Tokens:
        return Tokens(self.proj(tokens.x), tokens.mask)


class UnusedParameter(Linear):
    def __init__(self, width: int) -> None:
        super().__init__(width)
        self.unused = nn.Parameter(torch.zeros(width))


class MixesBatch(Linear):
    def forward(self, tokens: Tokens) -> Tokens:
        x = self.proj(tokens.x)
        return Tokens(x - x.mean(0, keepdim=True), tokens.mask)


class UnsavedState(Linear):
    """A random buffer that changes the output but is not saved."""

    def __init__(self, width: int) -> None:
        super().__init__(width)
        self.register_buffer("noise", torch.randn(width), persistent=False)

    def forward(self, tokens: Tokens) -> Tokens:
        return Tokens(self.proj(tokens.x) + self.noise, tokens.mask)


class WrongWidth(Linear):
    def __init__(self, width: int) -> None:
        super().__init__(width)
        self.out_width = width + 1


class ProducesNaN(Linear):
    def forward(self, tokens: Tokens) -> Tokens:
        return Tokens(self.proj(tokens.x) * float("nan"), tokens.mask)


class BadFusion(Fusion):
    """Declares an embedding it never returns."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(16, 4)
        self.embedding_widths = {"alpha": 4, "fused": 4}

    def forward(self, tokens: dict[str, Tokens]) -> FusionOutput:
        return FusionOutput(tokens=tokens, embeddings={"alpha": self.proj(tokens["alpha"].x[:, 0])})


class VectorLoss(nn.Module):
    def forward(self, output: Any, batch: Any) -> dict[str, Tensor]:
        return {"loss": output.embeddings["alpha"].sum(-1)}


def _encoder(cls: type[Linear]) -> Callable[[WidthConfig, BuildContext], Linear]:
    return lambda cfg, ctx: cls(ctx.encoder_width(cfg.width))


class RequiredConfig(ComponentConfig):
    layers: int


def _registry(kind: str, factory: Callable[..., Any], config: type = NoConfig,
              tiny: dict[str, Any] | None = None) -> Registry:
    registry = Registry()
    registry.add(Entry(kind, "broken", factory, config, "fake_plugin", "0", "here:1",
                       tiny=tiny))
    return registry


def test_a_correct_component_passes() -> None:
    check_component(_registry("encoder", _encoder(Linear), WidthConfig, {}), "encoder", "broken")


@pytest.mark.parametrize(("kind", "factory", "config", "tiny", "expected"), [
    ("encoder", _encoder(UnusedParameter), WidthConfig, {},
     "backward: no gradient reaches parameter(s) unused"),
    ("encoder", _encoder(MixesBatch), WidthConfig, {}, "batch invariance: element 0 alone"),
    ("encoder", _encoder(UnsavedState), WidthConfig, {},
     "save/load round trip: the reloaded module differs"),
    ("encoder", _encoder(WrongWidth), WidthConfig, {}, "expected (3, N, 17)"),
    ("encoder", _encoder(ProducesNaN), WidthConfig, {}, "forward: non-finite values"),
    ("encoder", _encoder(Linear), RequiredConfig, None, "build: no tiny config"),
    ("encoder", _encoder(Linear), RequiredConfig, {"layers": "x"}, "tiny config"),
    ("tokenizer", lambda cfg, ctx: Linear(4), NoConfig, None, "must register example="),
    ("fusion", lambda cfg, ctx: BadFusion(), NoConfig, None, "embedding 'fused'"),
    ("objective", lambda cfg, ctx: VectorLoss(), NoConfig, None, "loss has shape (3,)"),
    ("head", lambda cfg, ctx: object(), NoConfig, None, "not a torch.nn.Module"),
])
def test_the_suite_catches(kind: str, factory: Callable[..., Any], config: type,
                           tiny: dict[str, Any] | None, expected: str) -> None:
    with pytest.raises(AssertionError) as info:
        check_component(_registry(kind, factory, config, tiny), kind, "broken")
    message = str(info.value)
    assert f"{kind} 'broken' (plugin fake_plugin, here:1)" in message
    assert expected in message


def test_unknown_component_is_an_assertion() -> None:
    with pytest.raises(AssertionError, match="Did you mean 'vit'"):
        check_component(get_registry(), "encoder", "vti")


def test_the_suite_leaves_the_global_rng_alone() -> None:
    torch.manual_seed(123)
    before = torch.get_rng_state()
    check_component(get_registry(), "head", "classifier")
    assert torch.equal(torch.get_rng_state(), before)

"""The conformance suite's padding invariance, dataset checks, and use without pytest."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
import torch
from pydantic import Field
from tiny_specs import DATA, IMAGE, TEXT
from torch import nn

from mmcore.builder import BuildContext
from mmcore.contract import Encoder, Fusion, FusionOutput, Tokens
from mmcore.plugins import get_registry
from mmcore.registry import ComponentConfig, Entry, NoConfig, Registry
from mmcore.spec import load_spec
from mmcore.testing import check_component, check_dataset, check_item, conformance_params


class WidthConfig(ComponentConfig):
    width: int | None = Field(None, gt=0)


class MaskedMean(Encoder):
    """Correct: each token plus the mean of the real tokens. (B, N, D) -> (B, N, D)"""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.out_width = width
        self.proj = nn.Linear(width, width)

    def forward(self, tokens: Tokens) -> Tokens:
        valid = tokens.valid()[..., None].float()  # (B, N, 1)
        mean = (tokens.x * valid).sum(1, keepdim=True) / valid.sum(1, keepdim=True)
        return Tokens(self.proj(tokens.x + mean), tokens.mask)


class LeakyConv(Encoder):
    """A 1-D convolution over the sequence that reads padded neighbours (the bug)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.out_width = width
        self.conv = nn.Conv1d(width, width, kernel_size=3, padding=1)

    def forward(self, tokens: Tokens) -> Tokens:
        x = self.conv(tokens.x.transpose(1, 2)).transpose(1, 2)  # (B, N, D)
        return Tokens(x, tokens.mask)


class LeakyPooling(Fusion):
    """Pools every token, padded or not, into the fused embedding (the bug)."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(16, 4)
        self.embedding_widths = {"fused": 4}

    def forward(self, tokens: dict[str, Tokens]) -> FusionOutput:
        return FusionOutput(tokens=tokens,
                            embeddings={"fused": self.proj(tokens["alpha"].x.mean(1))})


def _registry(kind: str, factory: Any, config: type = NoConfig,
              tiny: dict[str, Any] | None = None) -> Registry:
    registry = Registry()
    registry.add(Entry(kind, "candidate", factory, config, "fake_plugin", "0", "here:1",
                       tiny=tiny))
    return registry


def _encoder(cls: type[Encoder]) -> Any:
    return lambda cfg, ctx: cls(ctx.encoder_width(cfg.width))


def test_a_mask_respecting_encoder_passes_padding_invariance() -> None:
    registry = _registry("encoder", _encoder(MaskedMean), WidthConfig, {})
    check_component(registry, "encoder", "candidate")


def test_a_convolution_leaking_padding_fails() -> None:
    registry = _registry("encoder", _encoder(LeakyConv), WidthConfig, {})
    with pytest.raises(AssertionError, match="padding invariance: random values at padded"):
        check_component(registry, "encoder", "candidate")


def test_a_fusion_pooling_padding_fails() -> None:
    registry = _registry("fusion", lambda cfg, ctx: LeakyPooling())
    with pytest.raises(AssertionError, match=r"padding invariance.*embeddings\.fused"):
        check_component(registry, "fusion", "candidate")


def test_padding_check_perturbs_only_padded_positions() -> None:
    from mmcore.testing.padding import perturb_padding

    mask = torch.tensor([[True, True, False]])
    tokens = Tokens(torch.zeros(1, 3, 4), mask)
    noisy = perturb_padding({"a": tokens}, torch.Generator().manual_seed(0))["a"]
    assert torch.equal(noisy.x[:, :2], tokens.x[:, :2])
    assert noisy.x[0, 2].std() > 0.1  # non-constant over the features


def _spec(data: dict[str, Any] | None = None) -> Any:
    return load_spec({"modalities": {"image": IMAGE, "text": TEXT},
                      "fusion": {"type": "late", "embed_dim": 16,
                                 "pooling": {"image": "cls", "text": "eot"}},
                      "objectives": {"clip": {"type": "contrastive", "pairs": [["image", "text"]]}},
                      "data": data or DATA})


def test_dataset_check_collates_the_spec_data() -> None:
    batch = check_dataset(_spec(), items=3)
    assert batch["image"].shape == (3, 3, 16, 16)
    assert batch["text"]["ids"].shape == (3, 40)


def test_dataset_check_names_a_missing_modality() -> None:
    items = [{"image": torch.rand(3, 16, 16), "caption": "a red square"}]
    with pytest.raises(AssertionError, match="item 0 lacks the modality key"):
        check_dataset(_spec(), dataset=items)  # type: ignore[arg-type]
    with pytest.raises(AssertionError, match="not a mapping"):
        check_item(["image"], ["image"], 0)


def test_dataset_check_reports_items_that_do_not_collate() -> None:
    items = [{"image": "not an image", "text": "a"}]
    with pytest.raises(AssertionError, match="do not collate"):
        check_dataset(_spec(), dataset=items)  # type: ignore[arg-type]


def test_conformance_params_without_pytest(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pytest", None)  # import pytest -> ImportError
    cases = conformance_params(plugin="mmcore_image")
    assert cases == [("preprocessor", "image"), ("tokenizer", "patch-embedding"),
                     ("encoder", "vit")]


def test_plain_use_never_imports_pytest() -> None:
    code = ("import sys; sys.modules['pytest'] = None\n"
            "from mmcore.plugins import get_registry\n"
            "from mmcore.testing import check_component, conformance_params\n"
            "for kind, name in conformance_params(plugin='mmcore_image'):\n"
            "    check_component(get_registry(), kind, name)\n"
            "print('ok')\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_first_party_encoders_respect_padding() -> None:
    """The new check runs inside check_component for the registered transformers."""
    for name in ("vit", "text-transformer"):
        check_component(get_registry(), "encoder", name)
    assert BuildContext  # the harness context type stays importable from the builder

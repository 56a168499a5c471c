"""BLIP: conformance of its components, the weight sharing, and every parameter reached."""

from __future__ import annotations

import pytest
import torch

import mmcore
from mmcore.plugins import get_registry
from mmcore.spec import load_spec
from mmcore.testing import check_component, conformance_params
from mmcore.validation import unreached_parameters


@pytest.mark.parametrize(("kind", "name"), conformance_params(plugin="mmcore_blip"))
def test_conformance(kind: str, name: str) -> None:
    check_component(get_registry(), kind, name)


def _tiny_model() -> mmcore.MultimodalModel:
    torch.manual_seed(0)
    return mmcore.build(load_spec("blip-tiny"))


def _batch(model: mmcore.MultimodalModel, n: int = 4) -> dict[str, object]:
    from mmcore_shapes.dataset import ShapesConfig, ShapesDataset

    data = ShapesDataset(ShapesConfig(image_size=24, train_size=n))
    items = [data[i] for i in range(n)]
    return {"image": model.preprocess("image", [it["image"] for it in items]),
            "text": model.preprocess("text", [it["text"] for it in items])}


def test_one_backward_reaches_every_parameter() -> None:
    model = _tiny_model()
    model.train()
    model.loss(_batch(model))["loss"].backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []
    assert unreached_parameters(load_spec("blip-tiny"), model) == {}


def test_sharing_layout() -> None:
    """Encoder and decoder share everything but their self-attention: one cross-attention
    and one feed-forward per layer, and two self-attentions."""
    model = _tiny_model()
    layer = model.fusion.layers[0]
    assert layer.attention is not layer.decoder_attention
    names = {n.split(".")[0] for n, _ in layer.named_parameters()}
    assert names == {"attention", "decoder_attention", "cross_attention", "feed_forward"}
    width = 64
    one_attention = 4 * (width * width + width) + 2 * width
    assert sum(p.numel() for p in layer.decoder_attention.parameters()) == one_attention


def test_outputs_and_losses() -> None:
    model = _tiny_model()
    model.eval()
    batch = _batch(model)
    with torch.no_grad():
        out = model(batch)
        losses = model.loss(batch)
    assert set(out.tokens) >= {"image", "text", "fused", "decoder"}
    assert out.embeddings["image"].shape == (4, 64) and out.embeddings["fused"].shape == (4, 64)
    for name in ("itc/loss", "itm/loss", "lm/loss"):
        assert torch.isfinite(losses[name])
    # an untrained LM is close to uniform over 261 ids
    assert abs(float(losses["lm/loss"]) - torch.log(torch.tensor(261.0))) < 1.0

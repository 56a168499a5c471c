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
    return {**model.preprocess_with_views("image", [it["image"] for it in items]),  # + chroma
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


def test_momentum_distillation_targets_and_loss() -> None:
    from mmcore_objectives.contrastive import distilled_targets, soft_contrastive_loss

    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(5, 8, generator=g), torch.randn(5, 8, generator=g)
    scale = torch.tensor(10.0)
    assert torch.equal(distilled_targets(a, b, scale, 0.0), torch.eye(5))
    soft = distilled_targets(a, b, scale, 0.4)
    torch.testing.assert_close(soft.sum(1), torch.ones(5))
    assert bool((soft.diagonal() >= 0.6).all())
    logits = scale * (torch.nn.functional.normalize(a, dim=-1)
                      @ torch.nn.functional.normalize(b, dim=-1).t())
    labels = torch.arange(5)
    plain = (torch.nn.functional.cross_entropy(logits, labels)
             + torch.nn.functional.cross_entropy(logits.t(), labels)) / 2
    eye = torch.eye(5)
    torch.testing.assert_close(soft_contrastive_loss(a, b, scale, eye, eye), plain)


def test_momentum_model_is_an_ema_and_every_trainable_parameter_trains() -> None:
    spec = mmcore.load_spec("blip-tiny", overrides=["fusion.momentum=0.9",
                                                    "objectives.itc.distill_alpha=0.4"])
    torch.manual_seed(0)
    model = mmcore.build(spec)
    fusion = model.fusion
    online = fusion.text_proj.weight.detach().clone()
    with torch.no_grad():
        fusion.momentum_model["text_proj"].weight.zero_()
    model.train()
    batch = _batch(model)
    losses = model.loss(batch)
    torch.testing.assert_close(fusion.momentum_model["text_proj"].weight, 0.1 * online)
    assert {"image_momentum", "text_momentum"} <= set(model(batch).embeddings)
    losses["loss"].backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []
    assert not any(p.requires_grad for p in fusion.momentum_model.parameters())

"""Missing modalities: a three-modality model (image, text, audio) runs with one absent,
and ``modality_dropout`` masks whole modalities per sample at the configured rate."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

import mmcore
from mmcore.model import MultimodalModel

MODALITIES = ("audio", "image", "text")

IMAGE = {"tokenizer": {"type": "patch-embedding", "image_size": 8, "patch_size": 4, "width": 16},
         "encoder": {"type": "vit", "layers": 1, "heads": 2}}
TEXT = {"tokenizer": {"type": "token-embedding", "vocab_size": 259, "width": 16,
                      "context_length": 8},
        "encoder": {"type": "text-transformer", "layers": 1, "heads": 2, "causal": False}}
AUDIO = {"preprocessor": {"type": "audio", "n_mels": 8, "pad_to_seconds": 0.1},
         "tokenizer": {"type": "conv-stem", "width": 16, "n_mels": 8, "frames": 10},
         "encoder": {"type": "audio-transformer", "layers": 1, "heads": 2}}

PERCEIVER = {
    "fusion": {"type": "perceiver", "width": 16, "num_latents": 4, "layers": 1, "heads": 2},
    "heads": {"classifier": {"type": "classifier", "num_classes": 3}},
    "objectives": {"classification": {"type": "classification", "head": "classifier"}},
}
LATE = {
    "fusion": {"type": "late", "embed_dim": 8},
    "objectives": {"contrastive": {"type": "contrastive",
                                   "pairs": [["image", "text"], ["audio", "text"],
                                             ["audio", "image"]]}},
}


def build(fusion: dict[str, Any], dropout: dict[str, float] | None = None) -> MultimodalModel:
    torch.manual_seed(0)
    spec = mmcore.load_spec({"name": "three-modalities",
                             "modalities": {"image": IMAGE, "text": TEXT, "audio": AUDIO},
                             "modality_dropout": dropout or {}, **fusion})
    return mmcore.build(spec)


def batch(model: MultimodalModel, size: int, seed: int = 0,
          raw_audio: bool = True) -> dict[str, Any]:
    """A batch of every modality. Audio goes through the model's own preprocessor, or is
    random log-mel features (B, 8, 10) for the large batches of the statistical tests."""
    g = torch.Generator().manual_seed(seed)
    if raw_audio:
        rng = np.random.default_rng(seed)
        audio = model.preprocess("audio", [(0.1 * rng.standard_normal(1200 + 40 * i)
                                            .astype(np.float32), 16_000)
                                           for i in range(size)])
    else:
        audio = torch.randn(size, 8, 10, generator=g)
    return {"image": torch.randn(size, 3, 8, 8, generator=g),
            "text": {"ids": torch.randint(0, 259, (size, 8), generator=g),
                     "mask": torch.ones(size, 8, dtype=torch.bool)},
            "audio": audio,
            "label": torch.randint(0, 3, (size,), generator=g)}


@pytest.mark.parametrize("absent", MODALITIES)
@pytest.mark.parametrize("fusion", [PERCEIVER, LATE], ids=["perceiver", "late"])
def test_forward_and_loss_without_one_modality(fusion: dict[str, Any], absent: str) -> None:
    model = build(fusion)
    data = batch(model, 4)
    assert data["audio"].shape == (4, 8, 10)
    del data[absent]
    losses = model.loss(data)
    assert torch.isfinite(losses["loss"])
    losses["loss"].backward()
    for name in MODALITIES:
        grads = [p.grad for p in model.tokenizers[name].parameters()]
        if name == absent:
            assert all(g is None for g in grads), f"{name} is absent but got gradients"
        else:
            assert any(g is not None and bool(g.abs().sum() > 0) for g in grads), name


def test_late_fusion_emits_only_the_present_embeddings() -> None:
    model = build(LATE).eval()
    data = batch(model, 3)
    del data["audio"]
    with torch.no_grad():
        output = model(data)
    assert sorted(output.embeddings) == ["image", "text"]


def test_an_absent_modality_equals_a_fully_masked_one() -> None:
    """The Perceiver's latents ignore masked tokens, so dropping audio from the batch or
    masking all of its tokens gives the same prediction."""
    model = build(PERCEIVER).eval()
    data = batch(model, 3)
    with torch.no_grad():
        tokens = model.encode(data)
        tokens["audio"] = mmcore.contract.Tokens(tokens["audio"].x,
                                                 torch.zeros_like(tokens["audio"].valid()))
        masked = model.heads["classifier"](model.fusion(tokens))
        absent = model({k: v for k, v in data.items() if k != "audio"}).heads["classifier"]
        full = model(data).heads["classifier"]
    torch.testing.assert_close(masked, absent, atol=1e-5, rtol=1e-5)
    assert float((full - absent).abs().max()) > 1e-4  # audio does matter when present


def test_modality_dropout_spec_trains_a_step() -> None:
    model = build(PERCEIVER, dropout={"audio": 0.5}).train()
    assert model.modality_dropout == {"audio": 0.5}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    losses = model.loss(batch(model, 8))
    assert torch.isfinite(losses["loss"])
    losses["loss"].backward()
    optimizer.step()
    changed = [n for n, p in model.named_parameters() if not torch.equal(p, before[n])]
    assert any(n.startswith("tokenizers.audio.") for n in changed)
    assert any(n.startswith("fusion.") for n in changed)


def _dropped(model: MultimodalModel, data: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Per modality, which samples had every token masked. (B,) bool each."""
    with torch.no_grad():
        tokens = model.encode(data)
    return {name: ~t.valid().any(dim=1) for name, t in tokens.items()}


@pytest.mark.parametrize("p", [0.5, 0.2])
def test_modality_dropout_masks_about_p_of_the_samples(p: float) -> None:
    model = build(PERCEIVER, dropout={"audio": p})
    data = batch(model, 2000, seed=1, raw_audio=False)
    torch.manual_seed(1234)
    dropped = _dropped(model.train(), data)
    # binomial(2000, p): the standard deviation of the fraction is at most 0.0112
    assert abs(float(dropped["audio"].float().mean()) - p) < 0.04
    assert not dropped["image"].any() and not dropped["text"].any()
    assert not _dropped(model.eval(), data)["audio"].any()  # evaluation drops nothing


def test_modality_dropout_never_removes_every_modality() -> None:
    rates = {"audio": 0.6, "image": 0.6, "text": 0.6}
    model = build(PERCEIVER, dropout=rates).train()
    torch.manual_seed(7)
    dropped = _dropped(model, batch(model, 1000, seed=2, raw_audio=False))
    every = dropped["audio"] & dropped["image"] & dropped["text"]
    assert not every.any()
    # a drop is undone where all three fell (0.6^3 of the samples): each modality is
    # masked in 0.6 - 0.216 = 0.384 of them
    for d in dropped.values():
        assert abs(float(d.float().mean()) - (0.6 - 0.6**3)) < 0.05

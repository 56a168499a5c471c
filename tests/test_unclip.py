"""unCLIP (mmcore_unclip): the clip-embedding tokenizer, the shapes-clip views, the prior
(a ``dit`` over the one-token CLIP image embedding) sampled through the shared DDIM
sampler and checked in float64 against DDIM steps computed by hand, and the two tiny
stages trained for two steps each, chained by ``mmcore generate`` into reproducible PNGs.

The CLIP here is the ``clip-tiny`` preset with random weights (seed 0): nothing is
downloaded or trained beyond a few steps."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import mmcore
import mmcore_unclip.generate as unclip_generate
from mmcore.cli import main
from mmcore.generation.command import choose
from mmcore.plugins import get_registry
from mmcore.testing import check_component
from mmcore_diffusion.generate import LatentDiffusionGenerator
from mmcore_diffusion.pipeline import sample_latents
from mmcore_diffusion.samplers import DDIMSampler
from mmcore_unclip.data import ShapesClipConfig, ShapesClipDataset
from mmcore_unclip.embeddings import ClipEmbeddingConfig, ClipEmbeddingTokenizer
from mmcore_unclip.generate import UnclipGenerator, sample_prior

CLIP = ["modalities.clip_image.preprocessor.clip=clip-tiny"]
SMALL = ["train.steps=2", "train.batch_size=4", "train.warmup_steps=0", "train.log_every=1",
         "train.checkpoint_every=100", "train.num_workers=0", "data.train_size=16"]
PRIOR = [*CLIP, "modalities.clip_text.preprocessor.clip=clip-tiny", "fusion.width=16",
         "fusion.layers=2", "fusion.heads=2", *SMALL]
DECODER = [*CLIP, "fusion.block_out_channels=[8,16]", "fusion.norm_num_groups=4",
           "modalities.image.preprocessor.size=16", "modalities.image.tokenizer.image_size=16",
           "modalities.image.tokenizer.codec.block_out_channels=[8,16]",
           "modalities.image.tokenizer.codec.norm_num_groups=4", "data.image_size=16",
           "fusion.heads=[2,2]", "modalities.clip_image.tokenizer.width=12",
           "fusion.cross_attention_dim=12", *SMALL]


def test_clip_embedding_tokenizer_conforms_and_inverts() -> None:
    check_component(get_registry(), "tokenizer", "clip-embedding")
    e = F.normalize(torch.randn(3, 64, generator=torch.Generator().manual_seed(0)), dim=-1)
    plain = ClipEmbeddingTokenizer(ClipEmbeddingConfig(dim=64))
    tokens = plain(e)
    assert tokens.x.shape == (3, 1, 64) and plain.out_width == 64
    assert torch.equal(tokens.x[:, 0], e * 8.0)  # sqrt(64): unit variance per component
    assert torch.allclose(plain.embedding(tokens.x), e, atol=1e-7)
    projected = ClipEmbeddingTokenizer(ClipEmbeddingConfig(dim=64, tokens=4, width=12))
    assert projected(e).x.shape == (3, 4, 12) and projected.out_width == 12
    assert ClipEmbeddingTokenizer.takes_prompts is False
    with pytest.raises(ValueError, match=r"takes embeddings \(B, 64\), got \(3, 32\)"):
        plain(torch.zeros(3, 32))
    with pytest.raises(ValueError, match="tokens and width"):
        ClipEmbeddingConfig(dim=64, tokens=4)


def test_shapes_clip_views() -> None:
    ds = ShapesClipDataset(ShapesClipConfig(image_size=32, clip_image_size=24, train_size=8))
    item = ds[3]
    assert item["image"].size == (32, 32) and item["clip_image"].size == (24, 24)
    assert item["clip_text"] == item["text"]
    held_out = ds.split("eval")
    assert isinstance(held_out, ShapesClipDataset) and held_out.cfg.split == "eval"
    assert {held_out[i]["label"] for i in range(len(held_out))} == set(held_out.labels)


@pytest.fixture(scope="module")
def prior() -> mmcore.MultimodalModel:  # type: ignore[name-defined]
    torch.manual_seed(0)
    return mmcore.build(mmcore.load_spec("unclip-tiny-prior", PRIOR))


def test_prior_denoiser_shapes_and_loss(prior: object) -> None:
    model: object = prior
    fusion = model.fusion  # type: ignore[attr-defined]
    assert type(fusion.network).__name__ == "DiT" and fusion.network.shape.channels == 64
    out = fusion.denoise(torch.randn(5, 64, 1, 1), torch.tensor(10), torch.randn(5, 1, 64))
    assert out.shape == (5, 64, 1, 1)
    data = ShapesClipDataset(ShapesClipConfig(image_size=16, clip_image_size=24, train_size=8))
    from mmcore.data import Collator

    batch = Collator.for_model(model)([data[i] for i in range(4)])
    assert batch["clip_image"].shape == batch["clip_text"].shape == (4, 64)
    assert torch.allclose(batch["clip_image"].norm(dim=-1), torch.ones(4), atol=1e-6)
    model.train()  # type: ignore[attr-defined]
    losses = model.loss(batch)  # type: ignore[attr-defined]
    assert losses["loss"].shape == () and math.isfinite(float(losses["loss"].detach()))
    losses["loss"].backward()
    grads = [p.grad for p in fusion.parameters() if p.requires_grad]
    assert grads and all(g is not None for g in grads)


def _cosine_alphas_cumprod() -> torch.Tensor:
    """Nichol & Dhariwal's cosine schedule, by hand in float64: (1000,)."""
    def bar(t: float) -> float:
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
    betas = torch.tensor([min(1 - bar((i + 1) / 1000) / bar(i / 1000), 0.999)
                          for i in range(1000)], dtype=torch.float64)
    return torch.cumprod(1 - betas, 0)


def test_prior_sampling_is_two_hand_computed_ddim_steps_in_float64(prior: object) -> None:
    model = prior.double()  # type: ignore[attr-defined]
    model.eval()
    fusion = model.fusion
    assert isinstance(fusion.sampler(), DDIMSampler)
    prompts = ["a red star", "a blue circle"]
    noise = torch.randn(2, 64, 1, 1, generator=torch.Generator().manual_seed(1),
                        dtype=torch.float64)
    got = sample_prior(model, prompts, steps=2, guidance=3.0, noise=noise,
                       generator=torch.Generator().manual_seed(0))
    # by hand: trailing spacing of 1000 in 2 -> t = 999, 499; v prediction; alpha_prev of
    # the last step is 1 (set_alpha_to_one); guidance u + 3 (c - u) with a zero null text
    ac = _cosine_alphas_cumprod()
    with torch.no_grad():
        text = model.preprocess("clip_text", prompts).double() * 8.0  # (2, 64), scaled
        cond = text[:, None, :]
        x = noise
        for t, prev in ((999, 499), (499, None)):
            c = fusion.network(x, torch.tensor(float(t)), cond)
            u = fusion.network(x, torch.tensor(float(t)), torch.zeros_like(cond))
            v = u + 3.0 * (c - u)
            a = ac[t]
            a_prev = ac[prev] if prev is not None else torch.tensor(1.0, dtype=torch.float64)
            x0 = a.sqrt() * x - (1 - a).sqrt() * v
            eps = a.sqrt() * v + (1 - a).sqrt() * x
            x = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps
        want = F.normalize(x.reshape(2, 64) / 8.0, dim=-1)
    assert got.dtype == torch.float64 and got.shape == (2, 64)
    assert torch.allclose(got, want, atol=1e-5), float((got - want).abs().max())
    model.float()


def _train(spec: str, overrides: list[str], out: Path, init: dict[str, str] | None = None) -> Path:
    mmcore.train(mmcore.load_spec(spec, overrides), out, init=init)
    return out


def test_two_stages_train_and_generate_reproducibly(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    prior_run = _train("unclip-tiny-prior", PRIOR, tmp_path / "prior")
    decoder_run = _train("unclip-tiny", [*DECODER, f"metadata.unclip.prior={prior_run}"],
                         tmp_path / "decoder")
    decoder = mmcore.load(decoder_run)
    generators = [(e.name, e.factory()) for e in get_registry().list("generator")]
    assert not LatentDiffusionGenerator().accepts(decoder)
    assert isinstance(choose(decoder, generators), UnclipGenerator)

    calls: list[int] = []

    def spy(*args: object, **kwargs: object) -> torch.Tensor:
        calls.append(int(kwargs["steps"]))  # type: ignore[call-overload]
        return sample_latents(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(unclip_generate, "sample_latents", spy)
    runs = []
    for name in ("a", "b"):
        out = tmp_path / name
        assert main(["generate", str(decoder_run), "--prompt", "a red star", "--n", "2",
                     "--steps", "3", "--guidance", "4", "--seed", "0", "--out", str(out)]) == 0
        runs.append({p.name: p.read_bytes() for p in sorted(out.glob("*.png"))})
    assert calls == [3, 3, 3, 3]  # prior then decoder, through the shared sampling loop
    assert sorted(runs[0]) == ["a-red-star-000.png", "a-red-star-001.png", "grid.png"]
    assert runs[0] == runs[1]
    assert "denoising" in capsys.readouterr().err
    other = tmp_path / "c"
    assert main(["generate", str(decoder_run), "--prompt", "a red star", "--n", "2",
                 "--steps", "3", "--seed", "1", "--out", str(other)]) == 0
    assert (other / "a-red-star-000.png").read_bytes() != runs[0]["a-red-star-000.png"]
    images = UnclipGenerator().images(decoder, ["a red star"], steps=2, seed=0)
    assert images.shape == (1, 3, 16, 16) and 0 <= float(images.min()) <= float(images.max()) <= 1

    decoder.spec = decoder.spec.model_copy(update={"metadata": {}})
    with pytest.raises(ValueError, match=r"names no prior: set metadata.unclip.prior=RUN \(an "
                       r"unclip-tiny-prior run\) when training it"):
        UnclipGenerator().images(decoder, ["x"], steps=2)


def test_clip_embed_names_a_missing_clip(tmp_path: Path) -> None:
    from mmcore_unclip.embeddings import ClipEmbedConfig, ClipEmbedder

    embed = ClipEmbedder(ClipEmbedConfig(clip=str(tmp_path / "no-such-run"), modality="text"))
    with pytest.raises(ValueError, match="is neither a run folder or checkpoint nor a preset"):
        embed(["a red star"])

"""DALL-E (plugins/mmcore_dalle): the VQ-VAE's quantizer against hand computations, the
codec under the reconstruction objective, the prior's image-only loss, generation through
the one loop (image codes only, seeded, cached == teacher-forced) and the commands."""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

import mmcore
from mmcore.cli import main
from mmcore.contract import ModelOutput
from mmcore_dalle import runner as dalle_runner
from mmcore_dalle.generator import DalleGenerator
from mmcore_dalle.prior import CodeTokens, DallePriorLoss, DallePriorLossConfig
from mmcore_dalle.quantizer import VectorQuantizer, code_statistics, nearest_codes
from mmcore_dalle.runner import DalleRunner, ImageCodesOnly, sample_codes, sampling_config
from mmcore_llama import LMTokens

CODEC = {"type": "vq-vae", "channels": [8, 16], "res_blocks": 1, "norm_groups": 4,
         "latent_channels": 4, "codebook_size": 8}


def _codebook_quantizer(update: str = "ema", **options: Any) -> VectorQuantizer:
    q = VectorQuantizer(size=3, dim=2, update=update, **options).double()  # type: ignore[arg-type]
    with torch.no_grad():
        q.codebook.copy_(torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]], dtype=torch.float64))
        if update == "ema":
            q.embed_sum.copy_(q.codebook)  # cluster sizes start at 1
    return q


def _grid(vectors: list[list[float]]) -> torch.Tensor:
    """Vectors (M, 2) as latents (1, 2, 1, M)."""
    return torch.tensor(vectors, dtype=torch.float64).t().reshape(1, 2, 1, -1)


# -- quantizer ---------------------------------------------------------------------------


def test_nearest_code_by_hand() -> None:
    codebook = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
    z = torch.tensor([[0.4, 0.1], [0.6, 0.0], [0.1, 1.2], [0.5, 0.0]], dtype=torch.float64)
    # squared distances: row 0 (0.17, 0.37, 3.77); row 1 (0.36, 0.16, 4.36);
    # row 2 (1.45, 2.25, 0.65); row 3 a tie (0.25, 0.25, 4.25): the lower index
    assert nearest_codes(z, codebook).tolist() == [0, 1, 2, 0]
    q = _codebook_quantizer().eval()
    out = q(_grid(z.tolist()))
    assert out.codes.tolist() == [[[0, 1, 2, 0]]]
    assert torch.equal(out.z_q[0, :, 0].t(), codebook[[0, 1, 2, 0]])


def test_straight_through_gradient_and_commitment_loss() -> None:
    q = _codebook_quantizer(beta=0.25).eval()
    z = _grid([[0.4, 0.1], [0.6, 0.0]]).requires_grad_(True)
    out = q(z)
    weights = torch.tensor([[[[1.0, -2.0]], [[3.0, 0.5]]]], dtype=torch.float64)
    (out.z_q * weights).sum().backward()
    assert torch.equal(z.grad, weights)  # the decoder's gradient passes unchanged
    # commitment 0.25 * mean((z - q)^2) over 4 elements: (0.16 + 0.01 + 0.16 + 0) / 4
    assert out.loss.item() == pytest.approx(0.25 * 0.33 / 4, abs=1e-12)


def test_gradient_codebook_adds_its_loss_and_learns() -> None:
    q = _codebook_quantizer(update="gradient", beta=0.25).train()
    z = _grid([[0.4, 0.1], [0.6, 0.0]]).requires_grad_(True)
    out = q(z)
    assert out.loss.item() == pytest.approx(1.25 * 0.33 / 4, abs=1e-12)
    out.loss.backward()
    # d/de of mean((e - sg z)^2): code 0 from (0.4, 0.1): 2 * (0 - z) / 4
    assert torch.allclose(q.codebook.grad[0], torch.tensor([-0.2, -0.05], dtype=torch.float64))


def test_ema_update_equals_the_hand_formula() -> None:
    q = _codebook_quantizer(decay=0.9, eps=1e-5).train()
    q.cluster_size.copy_(torch.tensor([2.0, 1.0, 3.0], dtype=torch.float64))
    q.embed_sum.copy_(torch.tensor([[0.2, 0.0], [1.0, 0.2], [0.0, 6.0]], dtype=torch.float64))
    vectors = [[0.4, 0.1], [0.6, 0.0], [0.1, 1.2], [0.2, -0.1]]  # codes 0, 1, 2, 0
    q(_grid(vectors).requires_grad_(True))
    n = torch.tensor([2.0, 1.0, 1.0], dtype=torch.float64)
    sums = torch.tensor([[0.6, 0.0], [0.6, 0.0], [0.1, 1.2]], dtype=torch.float64)
    size = 0.9 * torch.tensor([2.0, 1.0, 3.0], dtype=torch.float64) + 0.1 * n
    embed = 0.9 * torch.tensor([[0.2, 0.0], [1.0, 0.2], [0.0, 6.0]], dtype=torch.float64) \
        + 0.1 * sums
    total = size.sum()
    smoothed = (size + 1e-5) / (total + 3 * 1e-5) * total
    assert torch.allclose(q.cluster_size, size, rtol=0, atol=1e-12)
    assert torch.allclose(q.codebook, embed / smoothed[:, None], rtol=0, atol=1e-12)


def test_no_update_in_eval_mode_or_without_gradients() -> None:
    q = _codebook_quantizer(restart_after=1).train()
    before = copy.deepcopy(q.state_dict())
    q(_grid([[0.4, 0.1]]))  # no grad: a frozen codec in another model
    q.eval()
    q(_grid([[0.4, 0.1]]).requires_grad_(True))
    assert all(torch.equal(before[k], v) for k, v in q.state_dict().items())


def test_dead_codes_restart_from_the_batch() -> None:
    torch.manual_seed(0)
    q = _codebook_quantizer(restart_after=2).train()
    vectors = [[0.1, 0.1], [0.2, -0.1], [-0.1, 0.3]]  # all nearest to code 0
    q(_grid(vectors).requires_grad_(True))
    assert q.unused_steps.tolist() == [0, 1, 1]
    batch = torch.tensor(vectors, dtype=torch.float64)
    assert not any(torch.equal(q.codebook[1], row) for row in batch)  # not yet
    q(_grid(vectors).requires_grad_(True))  # codes 1 and 2: unused for 2 steps
    for code in (1, 2):
        assert any(torch.equal(q.codebook[code], row) for row in batch)
        assert torch.equal(q.embed_sum[code], q.codebook[code])
    assert q.unused_steps.tolist() == [0, 0, 0]
    assert q.cluster_size[1:].tolist() == [1.0, 1.0]


def test_usage_and_perplexity_of_known_assignments() -> None:
    counts, usage, perplexity = code_statistics(torch.tensor([0, 0, 1, 1]), 4)
    assert counts.tolist() == [2.0, 2.0, 0.0, 0.0]
    assert usage.item() == 0.5
    assert perplexity.item() == pytest.approx(2.0, abs=1e-6)
    _, usage, perplexity = code_statistics(torch.tensor([[0, 1], [2, 2]]), 8)
    # frequencies (1/4, 1/4, 1/2): exp(1.5 ln 2) = 2 ** 1.5
    assert usage.item() == 3 / 8
    assert perplexity.item() == pytest.approx(2**1.5, abs=1e-5)


# -- codec under the reconstruction objective ----------------------------------------------


def _codec_spec() -> dict[str, Any]:
    return {"name": "vq-test",
            "modalities": {"image": {
                "preprocessor": {"type": "image", "size": 8, "mean": [0.5] * 3,
                                 "std": [0.5] * 3},
                "tokenizer": {"type": "latent", "image_size": 8, "reconstruct": True,
                              "codec": CODEC}}},
            "fusion": {"type": "passthrough"},
            "objectives": {"reconstruction": {"type": "reconstruction", "kl_weight": 0.0}}}


def test_reconstruction_adds_the_vq_loss_and_logs_usage() -> None:
    torch.manual_seed(0)
    model = mmcore.build(_codec_spec()).train()
    images = torch.rand(2, 3, 8, 8) * 2 - 1
    model.eval()  # no codebook update, so the codes below are those the loss saw
    logs = model.loss({"image": images})
    codec = model.tokenizers["image"].codec
    z = codec.encoder(images)
    codes = codec.encode_codes(images)
    q = codec.quantizer.lookup(codes)
    mse = F.mse_loss(codec.decode(q), images)
    commitment = 0.25 * F.mse_loss(z, q)
    assert logs["loss"].item() == pytest.approx((mse + commitment).item(), rel=1e-5)
    _, usage, perplexity = code_statistics(codes, 8)
    assert logs["reconstruction/usage"].item() == usage.item()
    assert logs["reconstruction/perplexity"].item() == pytest.approx(perplexity.item())
    assert logs["reconstruction/psnr"].item() == pytest.approx(
        10 * math.log10(4 / mse.item()), rel=1e-5)


# -- the prior's loss ------------------------------------------------------------------------


def test_prior_loss_is_taken_on_image_tokens_only() -> None:
    torch.manual_seed(0)
    text_vocab, vocab = 5, 5 + 3 + 1  # 3 codes, BOI = 8
    ids = torch.tensor([[1, 2, 4, 8, 6, 5, 7], [3, 4, 0, 8, 5, 5, 6]])
    mask = torch.tensor([[True] * 7, [True, True, False, True, True, True, True]])
    logits = torch.randn(2, 7, vocab, dtype=torch.float64)
    output = ModelOutput(tokens={"text": LMTokens(torch.zeros(2, 7, 4), mask, ids=ids)},
                         embeddings={}, heads={"lm": logits})
    loss = DallePriorLoss(DallePriorLossConfig(text_vocab=text_vocab))
    terms = loss(output, {})
    # image targets: positions 3..5 predict ids[4..6] in both rows
    logp = torch.log_softmax(logits, dim=-1)
    want = -sum(logp[r, t, ids[r, t + 1]] for r in range(2) for t in (3, 4, 5)) / 6
    assert terms["loss"].item() == pytest.approx(want.item(), abs=1e-12)
    changed = logits.clone()
    changed[:, :3] += torch.randn(2, 3, vocab, dtype=torch.float64) * 5  # text positions
    changed[:, 6] += 7.0  # the last position predicts nothing
    output.heads["lm"] = changed
    assert loss(output, {})["loss"].item() == pytest.approx(want.item(), abs=1e-12)
    weighted = DallePriorLoss(DallePriorLossConfig(text_vocab=text_vocab, text_weight=0.5))
    output.heads["lm"] = logits
    # text targets: row 0 ids 2, 4 (positions 0, 1); row 1 id 4 (position 0; 0 is padding)
    text = -(logp[0, 0, 2] + logp[0, 1, 4] + logp[1, 0, 4]) / 3
    assert weighted(output, {})["loss"].item() == pytest.approx((want + 0.5 * text).item(),
                                                               abs=1e-12)


# -- generation ------------------------------------------------------------------------------


def _prior_spec(codebook: int = 8) -> dict[str, Any]:
    return {"name": "dalle-test",
            "modalities": {
                "image": {"preprocessor": {"type": "image", "size": 8, "mean": [0.5] * 3,
                                           "std": [0.5] * 3},
                          "tokenizer": {"type": "vq-codes", "image_size": 8,
                                        "codec": {**CODEC, "codebook_size": codebook}}},
                "text": {"preprocessor": {"type": "byte-text", "context_length": 12},
                         "tokenizer": {"type": "lm-embedding", "vocab_size": 259, "width": 16,
                                       "context_length": 12}}},
            "fusion": {"type": "dalle-prior", "codebook_size": codebook, "image_tokens": 16,
                       "layers": 1, "heads": 2, "ffn": 24, "max_positions": 64},
            "heads": {"lm": {"type": "lm-head", "vocab_size": 259 + codebook + 1}},
            "objectives": {"prior": {"type": "dalle-prior", "text_weight": 0.1}},
            "data": {"type": "shapes", "image_size": 8, "train_size": 64},
            "train": {"steps": 2, "batch_size": 4, "log_every": 1, "seed": 0,
                      "freeze": ["modalities.image.tokenizer"]}}


@pytest.fixture(scope="module")
def prior() -> Any:
    torch.manual_seed(0)
    return mmcore.build(_prior_spec())


def test_generation_gives_image_codes_only_and_is_seeded(prior: Any, monkeypatch) -> None:
    calls = []
    real = dalle_runner.stream

    def spy(*args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs["processors"])
        return real(*args, **kwargs)

    monkeypatch.setattr(dalle_runner, "stream", spy)
    config = sampling_config(prior, n=3, seed=0, temperature=2.0)
    codes = sample_codes(prior, ["a red star", "a blue circle"], config)
    assert codes.shape == (6, 16) and int(codes.min()) >= 0 and int(codes.max()) < 8
    assert len(calls) == 1 and isinstance(calls[0][0], ImageCodesOnly)
    assert torch.equal(codes, sample_codes(prior, ["a red star", "a blue circle"], config))
    other = sample_codes(prior, ["a red star", "a blue circle"],
                         sampling_config(prior, n=3, seed=1, temperature=2.0))
    assert not torch.equal(codes, other)
    scores = ImageCodesOnly(259, 267)(codes, torch.zeros(1, 268))
    assert torch.isinf(scores[0, :259]).all() and torch.isinf(scores[0, 267:]).all()
    assert (scores[0, 259:267] == 0).all()


def test_cached_steps_equal_the_teacher_forced_forward(prior: Any) -> None:
    texts = ["a red star", "the blue circle is big"]
    codes = sample_codes(prior, texts, sampling_config(prior, seed=3, temperature=1.5))
    runner = DalleRunner(prior)
    ids, mask = runner.prompts(prior, texts)
    logits, cache = runner.prefill(ids, mask)
    stepped = [logits]
    for i in range(15):
        mask = torch.cat([mask, mask.new_ones(2, 1)], dim=1)
        logits, cache = runner.step(codes[:, i : i + 1] + 259, mask, cache)
        stepped.append(logits)
    text = prior.tokenizers["text"](prior.preprocess("text", texts))
    image = CodeTokens(torch.zeros(2, 16, 4), codes=codes, grid=(4, 4))
    with torch.no_grad():
        fused = prior.fusion({"text": text, "image": image})
        full = prior.heads["lm"](fused)  # (2, 12 + 1 + 16, V)
    assert torch.allclose(torch.stack(stepped, 1), full[:, 12:28], atol=1e-5, rtol=1e-5)


def test_generator_images_protocol(prior: Any) -> None:
    generator = DalleGenerator()
    assert generator.accepts(prior)
    images = generator.images(prior, ["a red star", "a green square"], steps=50, guidance=4.0,
                              seed=0)
    assert images.shape == (2, 3, 8, 8) and 0 <= float(images.min()) <= float(images.max()) <= 1
    assert torch.equal(images, generator.images(prior, ["a red star", "a green square"],
                                                seed=0))


# -- training and the command ----------------------------------------------------------------


def test_tiny_dalle_trains_two_steps_and_generate_writes_files(tmp_path: Path,
                                                               capsys: Any) -> None:
    torch.manual_seed(0)
    run = tmp_path / "run"
    codec_before = mmcore.build(_prior_spec()).tokenizers["image"].state_dict()
    mmcore.train(_prior_spec(), run, progress=False)
    metrics = (run / "metrics.jsonl").read_text().splitlines()
    assert len(metrics) == 2 and '"prior/image_loss"' in metrics[0]
    trained = mmcore.load(run / "model.safetensors")
    codec_after = trained.tokenizers["image"].state_dict()
    assert all(torch.equal(codec_before[k], v) for k, v in codec_after.items())  # frozen
    outputs = []
    for name in ("a", "b"):
        argv = ["generate", str(run), "--prompt", "a red star", "--n", "4", "--seed", "0",
                "--temperature", "1.0", "--top-k", "5", "--top-p", "0.9",
                "--out", str(tmp_path / name)]
        assert main(argv) == 0
        outputs.append({p.name: p.read_bytes() for p in sorted((tmp_path / name).iterdir())})
    assert sorted(outputs[0]) == ["a-red-star-000.png", "a-red-star-001.png",
                                  "a-red-star-002.png", "a-red-star-003.png", "grid.png"]
    assert outputs[0] == outputs[1]
    assert "image tokens" in capsys.readouterr().err
    assert main(["generate", str(run), "--prompt", "x", "--steps", "3",
                 "--out", str(tmp_path / "c")]) != 0
    assert "--steps: not used by DALL-E models" in capsys.readouterr().err


def test_rerank_orders_candidates_by_clip_score(prior: Any, tmp_path: Path,
                                                capsys: Any) -> None:
    from mmcore_dalle.rerank import clip_scores, rerank

    torch.manual_seed(0)
    clip = mmcore.build("clip-tiny")
    images = torch.rand(5, 3, 8, 8)
    ordered, scores = rerank(clip, "a red star", images)
    raw = clip_scores(clip, "a red star", images)
    assert torch.equal(scores, raw.sort(descending=True).values)
    assert torch.equal(ordered[0], images[int(raw.argmax())])
    mmcore.save(clip, tmp_path / "clip.safetensors")
    mmcore.save(prior, tmp_path / "dalle.safetensors")
    argv = ["generate", str(tmp_path / "dalle.safetensors"), "--prompt", "a red star", "--n",
            "3", "--seed", "0", "--rerank", str(tmp_path / "clip.safetensors"),
            "--out", str(tmp_path / "out")]
    assert main(argv) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if "CLIP scores" in x)
    values = [float(v) for v in line.split("best first")[1].split()]
    assert len(values) == 3 and values == sorted(values, reverse=True)

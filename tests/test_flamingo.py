"""Flamingo: interleaved masking (exact zero influence across images, the plain LM before
the first image), padding, frozen LM, resampler time embeddings, cached generation, the
command line and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import mmcore
from mmcore.cli import main
from mmcore.contract import Tokens
from mmcore.kernels import KernelSet
from mmcore_flamingo.data import ShapesFewShotConfig, ShapesFewShotDataset
from mmcore_flamingo.masking import attend_mask, media_index, per_row_media
from mmcore_flamingo.runner import FlamingoRunner, check_images, prepare
from mmcore_flamingo.text import CHUNK_ID, IMAGE_ID, FlamingoTextConfig, FlamingoTextPreprocessor
from mmcore_fusions import GatedCrossAttentionBlock, PerceiverResampler
from mmcore_fusions.resampler import ResamplerParams
from mmcore_shapes.dataset import held_out
from mmcore_shapes.render import render

SPEC = {
    "name": "flamingo-test",
    "modalities": {
        "image": {"preprocessor": {"type": "interleaved-images", "size": 16},
                  "tokenizer": {"type": "patch-embedding", "image_size": 16, "patch_size": 8,
                                "width": 16},
                  "encoder": {"type": "vit", "layers": 1, "heads": 2}},
        "text": {"preprocessor": {"type": "flamingo-text", "context_length": 40},
                 "tokenizer": {"type": "lm-embedding", "vocab_size": 261, "width": 32,
                               "context_length": 40, "eos_token_id": 257,
                               "pad_token_id": 258}},
    },
    "fusion": {"type": "flamingo", "media_token_id": 259, "layers": 3, "heads": 4,
               "kv_heads": 2, "ffn": 48, "every": 2, "init_gate": 0.7, "max_positions": 40,
               "resampler": {"num_latents": 3, "layers": 1, "heads": 2}},
    "heads": {"lm": {"type": "lm-head", "text": "text", "vocab_size": 261, "tied": True}},
    "objectives": {"lm": {"type": "interleaved-lm", "head": "lm", "text": "text"}},
}


@pytest.fixture(scope="module")
def model() -> mmcore.MultimodalModel:
    torch.manual_seed(0)
    return mmcore.build(SPEC).eval()


def _hidden(model, ids: torch.Tensor, mask: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
    return model({"text": {"ids": ids, "mask": mask}, "image": pixels}).tokens["text"].x


def _ids(text: str) -> torch.Tensor:
    pre = FlamingoTextPreprocessor(FlamingoTextConfig(context_length=40))
    return torch.tensor([pre.row({"prompt": text})])


def test_media_index_counts_the_last_image_at_or_before_each_token() -> None:
    ids = torch.tensor([[1, IMAGE_ID, 2, 3, IMAGE_ID, 4, CHUNK_ID]])
    assert media_index(ids, IMAGE_ID).tolist() == [[0, 1, 1, 1, 2, 2, 2]]
    visual, owner = per_row_media(torch.randn(2, 3, 4), torch.tensor([2]))
    assert visual.shape == (1, 6, 4) and owner.tolist() == [[1, 1, 1, 2, 2, 2]]
    attend = attend_mask(media_index(ids, IMAGE_ID), owner)
    assert attend[0, 0].sum() == 0 and attend[0, 2].tolist() == [True] * 3 + [False] * 3


def test_block_output_of_a_token_depends_only_on_its_own_image() -> None:
    """Perturbing image j by a non-constant random vector leaves the block output of every
    token whose last image is i != j (and of tokens before any image) exactly unchanged."""
    torch.manual_seed(1)
    block = GatedCrossAttentionBlock(width=8, visual_width=6, heads=2, kernels=KernelSet(),
                                     init_gate=0.5)
    ids = torch.tensor([[1, 2, IMAGE_ID, 3, 4, IMAGE_ID, 5, IMAGE_ID, 6]])
    index = media_index(ids, IMAGE_ID)
    features = torch.randn(3, 4, 6)
    x = torch.randn(1, ids.shape[1], 8)
    for j in range(3):
        bumped = features.clone()
        bumped[j] += torch.randn(4, 6)
        outs = []
        for f in (features, bumped):
            visual, owner = per_row_media(f, torch.tensor([3]))
            outs.append(block(x, visual, attend=attend_mask(index, owner)))
        other = index[0] != j + 1
        assert torch.equal(outs[0][0, other], outs[1][0, other])
        assert not torch.allclose(outs[0][0, ~other], outs[1][0, ~other])
    visual, owner = per_row_media(features, torch.tensor([3]))
    out = block(x, visual, attend=attend_mask(index, owner))
    assert torch.equal(out[0, :2], x[0, :2])  # no image yet: the block adds exactly zero


def test_images_reach_no_earlier_token_and_no_image_means_the_plain_lm(model) -> None:
    ids = _ids("a cat<image>red<|endofchunk|><image>blue")
    mask = torch.ones_like(ids, dtype=torch.bool)
    pixels = torch.randn(2, 3, 16, 16)
    base = _hidden(model, ids, mask, pixels)
    bumped = pixels.clone()
    bumped[1] += torch.randn(3, 16, 16)
    second = int((ids[0] == IMAGE_ID).nonzero()[1])
    assert torch.equal(base[0, :second], _hidden(model, ids, mask, bumped)[0, :second])
    first = int((ids[0] == IMAGE_ID).nonzero()[0])
    plain = model.fusion.stack(model.tokenizers["text"](ids).x, mask)
    assert torch.equal(base[0, :first], plain[0, :first])
    assert not torch.allclose(base[0, first:], plain[0, first:])


def test_a_padded_batch_matches_each_row_alone(model) -> None:
    pre = model.preprocessors["text"]
    batch = pre(["<image>red<|endofchunk|><image>blue<|endofchunk|>", "no image here",
                 "x<image>star<|endofchunk|>"])
    pixels = torch.randn(3, 3, 16, 16)
    together = _hidden(model, batch["ids"], batch["mask"], pixels)
    images = [pixels[:2], None, pixels[2:]]
    for row in range(3):
        n = int(batch["mask"][row].sum())
        ids, mask = batch["ids"][row : row + 1, :n], batch["mask"][row : row + 1, :n]
        inputs = {"text": {"ids": ids, "mask": mask}}
        if images[row] is not None:
            inputs["image"] = images[row]
        alone = model(inputs).tokens["text"].x
        torch.testing.assert_close(together[row, :n], alone[0], atol=1e-5, rtol=1e-5)


def test_the_lm_is_frozen_and_the_blocks_and_resampler_train() -> None:
    spec = {**SPEC, "fusion": {**SPEC["fusion"], "freeze_lm": True}}
    fusion = mmcore.build(spec).fusion
    assert not any(p.requires_grad for p in fusion.stack.parameters())
    assert all(p.requires_grad for p in fusion.xattn.parameters())
    assert all(p.requires_grad for p in fusion.resampler.parameters())
    assert sorted(fusion.xattn) == ["0", "2"]  # every 2 layers, from layer 0


def test_resampler_time_embeddings_tell_video_frames_apart() -> None:
    torch.manual_seed(2)
    params = ResamplerParams(num_latents=2, layers=1, heads=2, time_embeddings=3,
                             frame_tokens=4)
    resampler = PerceiverResampler(params=params, input_width=8, width=8, kernels=KernelSet())
    frames = torch.randn(1, 3, 4, 8)
    swapped = frames[:, [1, 0, 2]]
    out = resampler(Tokens(frames.reshape(1, 12, 8)))
    assert not torch.allclose(out, resampler(Tokens(swapped.reshape(1, 12, 8))))
    resampler.time = None  # without them the frames are an unordered set
    torch.testing.assert_close(resampler(Tokens(frames.reshape(1, 12, 8))),
                               resampler(Tokens(swapped.reshape(1, 12, 8))))


def test_cached_generation_equals_full_recomputation(model) -> None:
    images = [render("red", "star", 16, np.random.default_rng(0)),
              render("blue", "circle", 16, np.random.default_rng(1))]
    runner, ids, mask = prepare(model, ["<image>red<|endofchunk|><image>", "x<image>"],
                                [*images, images[0]])
    logits, cache = runner.prefill(ids, mask)
    pixels = model.preprocess("image", [[*images, images[0]]])
    for _ in range(3):
        nxt = logits.argmax(-1, keepdim=True)
        ids = torch.cat([ids, nxt], 1)
        mask = torch.cat([mask, torch.ones_like(nxt, dtype=torch.bool)], 1)
        logits, cache = runner.step(nxt, mask, cache)
        full = model({"text": {"ids": ids, "mask": mask}, "image": pixels}).heads["lm"][:, -1]
        torch.testing.assert_close(logits, full, atol=1e-4, rtol=1e-4)


def test_loss_trains_the_blocks(model) -> None:
    data = ShapesFewShotDataset(ShapesFewShotConfig(image_size=16, train_size=8, max_shots=2))
    batch = mmcore.data.Collator.for_model(model)([data[i] for i in range(4)])
    loss = model.loss(batch)["loss"]
    loss.backward()
    assert torch.isfinite(loss)
    assert model.fusion.xattn["0"].attn_gate.grad is not None
    model.zero_grad()


@pytest.mark.parametrize(("prompt", "images", "message"), [
    ("<image>red<|endofchunk|><image>", 1, "2 <image> marker(s) but 1 image(s) were given "
     "(more markers than images)"),
    ("<image>", 2, "1 <image> marker(s) but 2 image(s) were given (fewer markers"),
])
def test_marker_and_image_counts_must_agree(prompt: str, images: int, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_images([prompt], [None] * images)


def test_the_fusion_names_both_counts(model) -> None:
    ids = _ids("<image>red<|endofchunk|><image>")
    with pytest.raises(ValueError, match=r"holds 2 <image> marker\(s\) but 3 image"):
        _hidden(model, ids, torch.ones_like(ids, dtype=torch.bool), torch.randn(3, 3, 16, 16))


@pytest.mark.parametrize("text", ["<image><image>red<|endofchunk|>",
                                  "<image>red<|endofchunk|><image>",
                                  "<image><|endofchunk|><image>blue"])
def test_an_image_needs_a_following_text_chunk(text: str) -> None:
    pre = FlamingoTextPreprocessor(FlamingoTextConfig(context_length=40))
    with pytest.raises(ValueError, match="has no text chunk after it"):
        pre([text])


def test_few_shot_data_defines_the_task_only_through_the_examples() -> None:
    data = ShapesFewShotDataset(ShapesFewShotConfig(image_size=16, eval_size=40, split="eval"))
    unseen = set(held_out())
    items = [data.sequence(i, 2) for i in range(40)]
    assert {it["task"] for it in items} == {"colour", "shape"}
    for it in items:
        assert it["prompt"].count("<image>") == len(it["image"]) == 3
        assert it["text"] == it["prompt"] + it["answer"] + "<|endofchunk|>"
    zero = data.sequence(0, 0)
    assert zero["prompt"] == "<image>" and zero["answer"] == items[0]["answer"]
    assert all(lbl in unseen for lbl in [data.images.labels[0]])


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    folder = tmp_path_factory.mktemp("flamingo")
    torch.manual_seed(0)
    path = mmcore.save(mmcore.build(SPEC), folder / "model.safetensors")
    images = []
    for name, (colour, shape) in {"a": ("red", "star"), "b": ("blue", "circle")}.items():
        render(colour, shape, 16, np.random.default_rng(0)).save(folder / f"{name}.png")
        images.append(folder / f"{name}.png")
    return path, images


def test_generate_from_the_command_line(saved, capsys: pytest.CaptureFixture[str]) -> None:
    model, (a, b) = saved
    argv = ["generate", str(model), "--prompt", "<image>a red star<|endofchunk|><image>",
            "--image", str(a), "--image", str(b), "--max-new-tokens", "4"]
    assert main(argv) == 0
    streamed = capsys.readouterr().out
    assert main([*argv, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert streamed.strip() == out[0]["completion"].strip()
    assert main([*argv[:-4], "--max-new-tokens", "4"]) != 0  # one image for two markers
    assert "2 <image> marker(s) but 1 image(s)" in capsys.readouterr().err


def test_runner_without_images_is_the_plain_lm(model) -> None:
    runner = FlamingoRunner(model, None)
    ids = _ids("hello")
    logits, _ = runner.prefill(ids)
    full = model({"text": {"ids": ids, "mask": torch.ones_like(ids, dtype=torch.bool)}})
    torch.testing.assert_close(logits, full.heads["lm"][:, -1])

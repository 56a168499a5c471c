"""The text-to-image evaluation tasks (plugins/mmcore_diffusion/tasks.py): reconstruction
PSNR against a float64 hand computation, the generation task's bookkeeping with a fake
generator and a fake judge (exact numbers), and both tasks end to end through
``mmcore eval`` on untrained tiny models."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torch import Tensor, nn

import mmcore
from mmcore.builder import build
from mmcore.checkpoint import save
from mmcore.cli import main
from mmcore.tasks import TaskOptions
from mmcore_diffusion.generate import LatentDiffusionGenerator, generate_images
from mmcore_diffusion.tasks import (
    ReconstructionScore,
    ReconstructionTask,
    evaluate_generation,
    held_out_classes,
    psnr_db,
    shapes_prompts,
)
from mmcore_shapes.dataset import ShapesConfig, ShapesDataset, caption, held_out


def test_psnr_equals_a_float64_hand_computation() -> None:
    gen = torch.Generator().manual_seed(0)
    original = torch.rand(3, 3, 5, 7, generator=gen)
    recon = (original + 0.1 * torch.randn(3, 3, 5, 7, generator=gen)).clamp(0, 1)
    score = ReconstructionScore()
    score.add(original[:2], recon[:2])
    score.add(original[2:], recon[2:])
    result = score.result()
    a, b = original.double().numpy(), recon.double().numpy()
    mse = float(np.mean((a - b) ** 2))
    per_image = np.mean((a - b) ** 2, axis=(1, 2, 3))
    assert result["images"] == 3
    assert result["mse"] == pytest.approx(mse, rel=1e-12)
    assert result["psnr"] == pytest.approx(10 * math.log10(1 / mse), rel=1e-12)
    assert result["psnr_per_image"] == pytest.approx(
        float(np.mean(10 * np.log10(1 / per_image))), rel=1e-12)
    assert psnr_db(0.01) == pytest.approx(20.0)
    assert psnr_db(0.0) == pytest.approx(100.0)  # identical images: capped, not infinite


class FakeVQ(nn.Module):
    """A discrete codec: code 1 where a normalised pixel is > 0, else 0; decodes to
    +-0.5; 4 codes, 2 of them ever used."""

    latent_channels, downsampling = 3, 1

    def encode(self, x: Tensor) -> Tensor:
        return (x > 0).long()

    def decode(self, codes: Tensor) -> Tensor:
        return codes.float() - 0.5

    def codebook_counts(self, codes: Tensor) -> Tensor:
        return torch.bincount(codes.flatten(), minlength=4)


class FakeVQCodes(nn.Module):
    """The same codes handed back as mmcore_dalle's VQ-VAE does: ``encode`` -> an object
    with ``mean`` (the latents) and ``codes``; the codec has ``codebook_size``."""

    latent_channels, downsampling, codebook_size = 3, 1, 4

    def encode(self, x: Tensor) -> Any:
        codes = (x > 0).long()
        return SimpleNamespace(mean=codes, codes=codes)

    def decode(self, codes: Tensor) -> Tensor:
        return codes.float() - 0.5


def _codec_model() -> Any:
    spec = mmcore.load_spec("ldm-tiny-codec")
    return build(spec)


@pytest.mark.parametrize("codec", [FakeVQ, FakeVQCodes])
def test_reconstruction_of_known_images_with_a_discrete_codec(codec: type[nn.Module]) -> None:
    model = _codec_model()
    model.tokenizers["image"].codec = codec()
    levels = [0, 255, 128]  # black -> code 0, white and grey -> code 1
    data = [{"image": Image.new("RGB", (32, 32), (v, v, v))} for v in levels]
    result = ReconstructionTask().run(model, data, TaskOptions(batch_size=2, progress=False))
    decoded = [0.25, 0.75, 0.75]  # (code - 0.5) * std 0.5 + mean 0.5
    errors = [(v / 255 - d) ** 2 for v, d in zip(levels, decoded, strict=True)]
    assert result["images"] == 3
    assert result["mse"] == pytest.approx(sum(errors) / 3, rel=1e-6)
    assert result["psnr"] == pytest.approx(10 * math.log10(3 / sum(errors)), rel=1e-6)
    assert result["codebook_size"] == 4 and result["codebook_used"] == 2
    assert result["codebook_usage"] == 0.5
    assert result["perplexity"] == pytest.approx(math.exp(-(1 / 3) * math.log(1 / 3)
                                                          - (2 / 3) * math.log(2 / 3)))


def test_reconstruction_through_mmcore_eval(tmp_path: Path,
                                            capsys: pytest.CaptureFixture) -> None:
    torch.manual_seed(0)
    path = tmp_path / "codec.safetensors"
    save(_codec_model(), path)
    assert main(["eval", str(path), "--task", "reconstruction", "--limit", "6",
                 "--batch-size", "4", "--json"]) == 0
    out = capsys.readouterr()
    result = json.loads(out.out)
    assert result["task"] == "reconstruction" and result["images"] == 6
    assert result["modality"] == "image"
    assert result["psnr"] == pytest.approx(psnr_db(result["mse"]))
    assert 0 < result["mse"] < 1 and "codebook_size" not in result
    assert "reconstruction" in out.err  # the progress bar


# ---------------------------------------------------------------- generation


class FakeGenerator:
    """Writes the true colour and shape indices into the pixels (channel 0 = colour / 10,
    channel 1 = shape / 10); the first image of each prompt gets the next shape, every
    image of a held-out prompt the next colour."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[str], Any, Any, int]] = []
        self.truth = {p: (c, s) for p, _, c, s in shapes_prompts()}
        self.unseen = {p for p, label, _, _ in shapes_prompts() if label in held_out(1)}

    def accepts(self, model: Any) -> bool:
        return True

    def images(self, model: Any, prompts: list[str], *, steps: int | None = None,
               guidance: float | None = None, seed: int = 0) -> Tensor:
        self.calls.append((prompts, steps, guidance, seed))
        out = torch.zeros(len(prompts), 3, 16, 16)
        for i, prompt in enumerate(prompts):
            colour, shape = self.truth[prompt]
            colour = (colour + 1) % 6 if prompt in self.unseen else colour
            shape = (shape + 1) % 6 if i == 0 else shape
            out[i, 0], out[i, 1] = colour / 10, shape / 10
        return out


class FakeJudge(nn.Module):
    """Reads the indices back from the 8-bit pixels the task hands it."""

    def __init__(self) -> None:
        super().__init__()
        self.modalities = ["pixels"]
        self.heads = {"c": None, "s": None}
        self.objectives = {
            "colour": SimpleNamespace(cfg=SimpleNamespace(head="c", target="colour")),
            "shape": SimpleNamespace(cfg=SimpleNamespace(head="s", target="shape"))}

    def preprocess(self, modality: str, images: list[Image.Image]) -> Tensor:
        return torch.tensor(np.stack([np.asarray(im) for im in images])).float() / 255

    def forward(self, batch: dict[str, Tensor]) -> Any:
        x = batch["pixels"][:, 0, 0]  # (N, 3): the top-left pixel
        onehot = [nn.functional.one_hot((x[:, ch] * 10).round().long(), 6) for ch in (0, 1)]
        return SimpleNamespace(heads={"c": onehot[0], "s": onehot[1]})


def test_generation_bookkeeping_is_exact_with_a_fake_generator_and_judge() -> None:
    generator = FakeGenerator()
    result = evaluate_generation(None, generator, FakeJudge(), k=4, steps=7, guidance=2.5,
                                 seed=10, held_out=held_out(1), judge_items=0,
                                 progress=False)
    assert len(generator.calls) == 36
    assert generator.calls[0] == (["a red circle"] * 4, 7, 2.5, 10)
    assert generator.calls[-1] == (["an orange star"] * 4, 7, 2.5, 45)
    assert result["seen"] == {"colour": 1.0, "shape": 0.75, "both": 0.75, "images": 120}
    assert result["held_out"] == {"colour": 0.0, "shape": 0.75, "both": 0.0, "images": 24}
    assert result["all"] == {"colour": 120 / 144, "shape": 0.75, "both": 90 / 144,
                             "images": 144}
    assert result["held_out_prompts"] == ["a red circle", "a green square",
                                          "a blue triangle", "a yellow diamond",
                                          "a purple cross", "an orange star"]
    assert result["both_per_prompt"]["a red square"] == 0.75
    assert result["both_per_prompt"]["a red circle"] == 0.0
    assert result["image_size"] == 16 and result["classifier_on_renders"] is None
    json.dumps(result)


def test_prompts_and_held_out_combinations_come_from_the_shapes_data() -> None:
    prompts = shapes_prompts()
    assert len(prompts) == 36 and prompts[0] == ("a red circle", 0, 0, 0)
    assert prompts[35] == ("an orange star", 35, 5, 5)
    assert caption("orange", "star") == "an orange star"
    data = ShapesDataset(ShapesConfig(image_size=16, eval_size=12, split="eval"))
    assert held_out_classes(data) == held_out(1) == sorted(set(data.labels))
    two = ShapesDataset(ShapesConfig(image_size=16, split="eval", holdout_per_colour=2))
    assert held_out_classes(two) == held_out(2)
    assert held_out_classes(None) is None
    everything = ShapesDataset(ShapesConfig(image_size=16, all_combinations=True))
    assert everything.labels == list(range(36)) and held_out_classes(everything) == []
    assert ShapesDataset(ShapesConfig(image_size=16)).labels == [
        i for i in range(36) if i not in held_out(1)]  # the default is unchanged


def test_generation_through_mmcore_eval_on_untrained_tiny_models(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    torch.manual_seed(0)
    ldm, judge = tmp_path / "ldm.safetensors", tmp_path / "judge.safetensors"
    model = build(mmcore.load_spec("ldm-tiny"))
    save(model, ldm)
    save(build(mmcore.load_spec("shapes-classifier")), judge)
    argv = ["eval", str(ldm), "--task", "generation", "--classifier", str(judge), "--k", "2",
            "--steps", "2", "--limit", "3", "--json"]
    assert main(argv) == 0
    out = capsys.readouterr()
    result = json.loads(out.out)
    assert "generation" in out.err  # the progress bar over prompts
    assert result["prompts"] == 3 and result["images_per_prompt"] == 2
    assert result["image_size"] == 32 and result["held_out_known"] is True
    assert result["held_out_prompts"] == ["a red circle"]
    assert result["seen"]["images"] == 4 and result["held_out"]["images"] == 2
    assert set(result["all"]) == {"colour", "shape", "both", "images"}
    assert result["classifier_on_renders"]["images"] == 360
    assert list(result["both_per_prompt"]) == ["a red circle", "a red square",
                                               "a red triangle"]
    assert main(argv) == 0  # the same seed judges the same images
    assert json.loads(capsys.readouterr().out) == result
    # the generator's images are generate_images' for the same seed
    loaded = mmcore.load(ldm)
    assert torch.equal(LatentDiffusionGenerator().images(loaded, ["a red star"] * 2, steps=2,
                                                         seed=3),
                       generate_images(loaded, ["a red star"] * 2, steps=2, seed=3))


def test_generation_needs_a_classifier(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    codec = tmp_path / "codec.safetensors"
    save(_codec_model(), codec)
    assert main(["eval", str(codec), "--task", "generation", "--limit", "1"]) != 0
    assert "generation needs --classifier RUN" in capsys.readouterr().err
    assert main(["validate", "shapes-classifier"]) == 0

"""Latent diffusion as registered parts: the stable-diffusion-v1 preset's analytic figures,
a diffusers folder imported by ``mmcore import`` sampling from a prompt string exactly as
``StableDiffusionPipeline`` does, ``mmcore generate`` writing reproducible PNGs, and the
errors for bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import mmcore
from mmcore.builder import build
from mmcore.checkpoint import save
from mmcore.cli import main
from mmcore.convert import import_model
from mmcore.errors import CheckpointError
from mmcore.summary import summarize
from mmcore_diffusion.clip_bpe import CLIPBPEConfig, CLIPBPEPreprocessor
from mmcore_diffusion.cost import sampling_memory, unet_flops
from mmcore_diffusion.generate import generate_images
from mmcore_diffusion.unet import UNetConfig
from mmcore_text.preprocess import bytes_to_unicode

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")
from test_diffusion_models import tiny_unet, tiny_vae  # noqa: E402
from test_diffusion_pipeline import SCHEDULER, tiny_text_encoder  # noqa: E402

PROMPT = "a red star"


def test_stable_diffusion_v1_preset_counts_without_allocating() -> None:
    summary = summarize(mmcore.load_spec("stable-diffusion-v1"))
    assert summary.cost is not None and not summary.cost.partial
    by_path = {c.path: c.parameters for c in summary.components}
    assert by_path["fusion"] == 859_520_964
    assert by_path["modalities.image.tokenizer"] == 83_653_863
    text = by_path["modalities.text.tokenizer"] + by_path["modalities.text.encoder"]
    assert text == 123_060_480
    assert summary.cost.parameters == summary.parameters == 1_066_235_307
    unet = next(c.flops for c in summary.cost.components if c.path == "fusion")
    assert unet == unet_flops(UNetConfig(), 64, 64, 77) == 803_273_441_280
    weights = 1_066_235_307
    assert sampling_memory(weights, UNetConfig(), 64, 1) == 5_437_642_412
    assert sampling_memory(weights, UNetConfig(), 64, 8) == 13_646_550_700


def _tiny_clip_tokenizer(folder: Path) -> object:
    """A CLIPTokenizer with the 512 byte pieces, a few merges and the two special tokens."""
    chars = list(bytes_to_unicode().values())
    merges = ["r e", "re d</w>", "s t", "st a", "sta r</w>", "b l", "bl u", "blu e</w>"]
    vocab = chars + [c + "</w>" for c in chars] + [m.replace(" ", "") for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    folder.mkdir(parents=True)
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    tok = transformers.CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"),
                                     model_max_length=77)
    tok.save_pretrained(folder)
    return tok


@pytest.fixture
def sd_folder(tmp_path: Path) -> tuple[Path, dict]:
    root = tmp_path / "sd"
    parts = {"unet": tiny_unet(root / "unet"), "vae": tiny_vae(root / "vae"),
             "text_encoder": tiny_text_encoder(root / "text_encoder"),
             "tokenizer": _tiny_clip_tokenizer(root / "tokenizer"),
             "scheduler": diffusers.DDIMScheduler(**SCHEDULER)}
    parts["scheduler"].save_pretrained(root / "scheduler")
    return root, parts


def test_clip_bpe_equals_clip_tokenizer(sd_folder: tuple[Path, dict]) -> None:
    folder, parts = sd_folder
    ours = CLIPBPEPreprocessor(CLIPBPEConfig(vocab=str(folder / "tokenizer/vocab.json"),
                                             merges=str(folder / "tokenizer/merges.txt")))
    texts = [PROMPT, "A  Blue star, red!", ""]
    want = parts["tokenizer"](texts, padding="max_length", max_length=77,
                              truncation=True, return_tensors="pt").input_ids
    assert torch.equal(ours(texts)["ids"], want)


def test_imported_folder_samples_a_prompt_like_stable_diffusion_pipeline(
        sd_folder: tuple[Path, dict], tmp_path: Path) -> None:
    folder, parts = sd_folder
    pipe = diffusers.StableDiffusionPipeline(
        vae=parts["vae"], text_encoder=parts["text_encoder"], tokenizer=parts["tokenizer"],
        unet=parts["unet"], scheduler=parts["scheduler"], safety_checker=None,
        feature_extractor=None, requires_safety_checker=False)
    latents = torch.randn(1, 4, 8, 8)
    want = pipe(PROMPT, latents=latents, num_inference_steps=5, guidance_scale=4.0,
                height=16, width=16, output_type="np").images  # (1, 16, 16, 3)
    assert main(["import", str(folder), "--out", str(tmp_path / "sd.safetensors")]) == 0
    model = mmcore.load(tmp_path / "sd.safetensors")
    got = generate_images(model, [PROMPT], steps=5, guidance=4.0, noise=latents)
    torch.testing.assert_close(got.permute(0, 2, 3, 1), torch.from_numpy(want).float(),
                               atol=1e-3, rtol=0)


def test_unimplemented_scheduler_is_refused_by_name(sd_folder: tuple[Path, dict]) -> None:
    folder, _ = sd_folder
    diffusers.PNDMScheduler(**{k: v for k, v in SCHEDULER.items()
                               if k != "clip_sample"}).save_pretrained(folder / "scheduler")
    with pytest.raises(CheckpointError, match="scheduler 'PNDMScheduler' is not implemented"):
        import_model(folder)


def _tiny_ldm(path: Path) -> Path:
    torch.manual_seed(0)
    model = build(mmcore.load_spec("ldm-tiny"))
    save(model, path)
    return path


def test_generate_writes_pngs_and_a_grid_reproducibly(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture) -> None:
    model = _tiny_ldm(tmp_path / "ldm.safetensors")
    runs = []
    for name in ("a", "b"):
        out = tmp_path / name
        argv = ["generate", str(model), "--prompt", PROMPT, "--n", "4", "--steps", "3",
                "--guidance", "4", "--seed", "0", "--out", str(out)]
        assert main(argv) == 0
        runs.append({p.name: p.read_bytes() for p in sorted(out.glob("*.png"))})
    assert sorted(runs[0]) == ["a-red-star-000.png", "a-red-star-001.png",
                               "a-red-star-002.png", "a-red-star-003.png", "grid.png"]
    assert runs[0] == runs[1]
    assert "denoising" in capsys.readouterr().err
    other = tmp_path / "c"
    assert main(["generate", str(model), "--prompt", PROMPT, "--n", "4", "--steps", "3",
                 "--seed", "1", "--out", str(other)]) == 0
    assert (other / "a-red-star-000.png").read_bytes() != runs[0]["a-red-star-000.png"]


def test_generate_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    model = _tiny_ldm(tmp_path / "ldm.safetensors")
    assert main(["generate", str(model), "--prompt", "x", "--max-new-tokens", "3",
                 "--out", str(tmp_path)]) != 0
    assert "--max-new-tokens: not used by latent diffusion models" in capsys.readouterr().err
    loaded = mmcore.load(model)
    with pytest.raises(ValueError, match="image size 30 is not divisible by 4"):
        generate_images(loaded, ["x"], steps=2, size=30)

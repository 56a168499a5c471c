"""diffusers-sd both ways: a tiny random Stable Diffusion folder saved by diffusers and
transformers is imported, exported with ``mmcore export``, loaded by diffusers /
transformers (U-Net, VAE and text encoder outputs within 1e-4 of the mmcore model's, the
tokenizer's ids equal to the clip-bpe preprocessor's, the pipeline loading the folder)
and imported again (the same state dict); and folders whose weights diffusers saved as
shards import like single-file ones."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from mmcore.checkpoint import save
from mmcore.cli import main
from mmcore.convert import export_model, import_model
from mmcore.errors import CheckpointError
from mmcore_diffusion.generate import generate_images

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")
from test_diffusion_models import tiny_unet, tiny_vae  # noqa: E402
from test_diffusion_pipeline import SCHEDULER, tiny_text_encoder  # noqa: E402
from test_diffusion_registered import _tiny_clip_tokenizer  # noqa: E402

TEXTS = ["a red star", "A  Blue star, red!", ""]


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Loaded checkpoints write their tokenizer files under the test's own folder."""
    monkeypatch.setenv("MMCORE_CACHE", str(tmp_path / "cache"))


def _sd_folder(root: Path, *, shard: bool = False) -> Path:
    """unet/, vae/, text_encoder/, tokenizer/, scheduler/ as diffusers writes them; with
    ``shard`` the U-Net and VAE weights in several files with an index."""
    tiny_unet(root / "unet")
    tiny_vae(root / "vae")
    tiny_text_encoder(root / "text_encoder")
    _tiny_clip_tokenizer(root / "tokenizer")
    diffusers.DDIMScheduler(**SCHEDULER).save_pretrained(root / "scheduler")
    if shard:
        for name, cls in (("unet", diffusers.UNet2DConditionModel),
                          ("vae", diffusers.AutoencoderKL)):
            part = cls.from_pretrained(root / name)
            shutil.rmtree(root / name)
            part.save_pretrained(root / name, max_shard_size="200KB")
    return root


def _same_state(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sorted(sa) == sorted(sb)
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def test_sharded_diffusers_weights_import_like_single_files(tmp_path: Path) -> None:
    single = import_model(_sd_folder(tmp_path / "single"))
    sharded_folder = _sd_folder(tmp_path / "sharded", shard=True)
    assert len(list((sharded_folder / "unet").glob("*.safetensors"))) > 2
    assert (sharded_folder / "vae" / "diffusion_pytorch_model.safetensors.index.json").is_file()
    _same_state(import_model(sharded_folder), single)


def test_sharded_index_naming_a_missing_shard_is_refused(tmp_path: Path) -> None:
    folder = _sd_folder(tmp_path / "sd", shard=True)
    index = folder / "unet" / "diffusion_pytorch_model.safetensors.index.json"
    first = sorted(set(json.loads(index.read_text())["weight_map"].values()))[0]
    (folder / "unet" / first).unlink()
    with pytest.raises(CheckpointError, match=f"shard '{first}' is missing"):
        import_model(folder)


def test_stable_diffusion_round_trip(tmp_path: Path) -> None:
    model = import_model(_sd_folder(tmp_path / "hf")).eval()
    ckpt = save(model, tmp_path / "sd.safetensors")
    shutil.rmtree(tmp_path / "hf")  # the tokenizer files must come from the checkpoint
    out = tmp_path / "exported"
    assert main(["export", str(ckpt), "--format", "diffusers-sd", "--out", str(out)]) == 0
    assert json.loads((out / "model_index.json").read_text())["unet"] == [
        "diffusers", "UNet2DConditionModel"]

    tokenizer = transformers.CLIPTokenizer.from_pretrained(out / "tokenizer")
    want = tokenizer(TEXTS, padding="max_length", max_length=77, truncation=True,
                     return_tensors="pt").input_ids
    text = model.preprocessors["text"](TEXTS)
    assert torch.equal(text["ids"], want)

    pipe = diffusers.StableDiffusionPipeline.from_pretrained(out, safety_checker=None)
    assert isinstance(pipe.scheduler, diffusers.DDIMScheduler)
    g = torch.Generator().manual_seed(0)
    latents, timesteps = torch.randn(2, 4, 8, 8, generator=g), torch.tensor([10, 700])
    pixels = torch.rand(2, 3, 16, 16, generator=g) * 2 - 1
    with torch.no_grad():
        context = pipe.text_encoder(want[:2]).last_hidden_state  # (2, 77, 32)
        ours_context = model.encoders["text"](model.tokenizers["text"](
            {"ids": text["ids"][:2], "mask": text["mask"][:2]})).x
        noise = pipe.unet(latents, timesteps, encoder_hidden_states=context).sample
        ours_noise = model.fusion.network(latents, timesteps, context)
        codec = model.tokenizers["image"].codec
        decoded = pipe.vae.decode(latents).sample
        mean = pipe.vae.encode(pixels).latent_dist.mean
    torch.testing.assert_close(ours_context, context, atol=1e-4, rtol=0)
    torch.testing.assert_close(ours_noise, noise, atol=1e-4, rtol=0)
    with torch.no_grad():
        torch.testing.assert_close(codec.decode(latents), decoded, atol=1e-4, rtol=0)
        torch.testing.assert_close(codec.encode(pixels).mean, mean, atol=1e-4, rtol=0)
    assert float(noise.std()) > 0.1 and float(context.std()) > 0.1
    start = torch.randn(1, 4, 8, 8, generator=g)
    images = pipe("a red star", latents=start, num_inference_steps=3, guidance_scale=4.0,
                  height=16, width=16, output_type="np").images  # (1, 16, 16, 3)
    got = generate_images(model, ["a red star"], steps=3, guidance=4.0, noise=start)
    torch.testing.assert_close(got.permute(0, 2, 3, 1), torch.from_numpy(images).float(),
                               atol=1e-3, rtol=0)  # [0, 1] pixels after 3 guided steps
    _same_state(import_model(out), model)


def test_a_byte_text_model_is_refused_by_name(tmp_path: Path) -> None:
    import mmcore
    from mmcore.builder import build

    model = build(mmcore.load_spec("ldm-tiny"))  # byte-level text: no CLIPTokenizer
    with pytest.raises(CheckpointError, match=r"text\.preprocessor is 'byte-text', not"):
        export_model(model, tmp_path / "out", "diffusers-sd")

"""A whole Stable Diffusion run (plugins/mmcore_diffusion): a diffusers-layout folder of
tiny random parts (U-Net, VAE, CLIPTextModel, DDIM scheduler) imported into mmcore, then
text ids -> CLIP embeddings -> DDIM with classifier-free guidance -> VAE decode, compared
with diffusers' ``StableDiffusionPipeline`` from the same initial latents within 1e-3."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mmcore_diffusion.convert import load_sampler, load_unet, load_vae
from mmcore_diffusion.guidance import drop_conditioning, guidance_batch
from mmcore_diffusion.pipeline import decode, sample_latents
from mmcore_diffusion.text_encoder import load_text_encoder

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")
from test_diffusion_models import tiny_unet, tiny_vae  # noqa: E402

SCHEDULER = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                 clip_sample=False, set_alpha_to_one=False, steps_offset=1)


def tiny_text_encoder(folder: Path) -> object:
    torch.manual_seed(2)
    cfg = transformers.CLIPTextConfig(vocab_size=1000, hidden_size=32, intermediate_size=37,
                                      num_hidden_layers=2, num_attention_heads=4,
                                      max_position_embeddings=77, hidden_act="quick_gelu",
                                      bos_token_id=0, eos_token_id=2, pad_token_id=1)
    model = transformers.CLIPTextModel(cfg).eval()
    model.save_pretrained(folder)
    return model


@pytest.fixture
def sd_folder(tmp_path: Path) -> tuple[Path, dict]:
    parts = {"unet": tiny_unet(tmp_path / "unet"), "vae": tiny_vae(tmp_path / "vae"),
             "text_encoder": tiny_text_encoder(tmp_path / "text_encoder")}
    parts["scheduler"] = diffusers.DDIMScheduler(**SCHEDULER)
    parts["scheduler"].save_pretrained(tmp_path / "scheduler")
    return tmp_path, parts


def test_text_encoder_matches_transformers(sd_folder: tuple[Path, dict]) -> None:
    folder, parts = sd_folder
    ours = load_text_encoder(folder / "text_encoder")
    ids = torch.randint(0, 1000, (2, 77))
    with torch.no_grad():
        want = parts["text_encoder"](ids)[0]
        torch.testing.assert_close(ours(ids), want, atol=1e-4, rtol=0)


def test_ddim_guided_run_matches_stable_diffusion_pipeline(sd_folder: tuple[Path, dict]) -> None:
    folder, parts = sd_folder
    ids = torch.randint(0, 1000, (1, 77))
    empty = torch.randint(0, 1000, (1, 77))
    with torch.no_grad():
        ref_cond = parts["text_encoder"](ids)[0]
        ref_uncond = parts["text_encoder"](empty)[0]
    pipe = diffusers.StableDiffusionPipeline(
        vae=parts["vae"], text_encoder=parts["text_encoder"], tokenizer=None, unet=parts["unet"],
        scheduler=parts["scheduler"], safety_checker=None, feature_extractor=None,
        requires_safety_checker=False)
    latents = torch.randn(1, 4, 8, 8)
    want = pipe(prompt_embeds=ref_cond, negative_prompt_embeds=ref_uncond, latents=latents,
                num_inference_steps=5, guidance_scale=4.0, height=16, width=16,
                output_type="np").images  # (1, 16, 16, 3)

    text = load_text_encoder(folder / "text_encoder")
    with torch.no_grad():
        cond, uncond = text(ids), text(empty)
    final = sample_latents(load_unet(folder / "unet"), load_sampler(folder / "scheduler"),
                           latents, cond, uncond=uncond, steps=5, guidance=4.0)
    images = decode(load_vae(folder / "vae"), final).permute(0, 2, 3, 1)
    torch.testing.assert_close(images, torch.from_numpy(want).float(), atol=1e-3, rtol=0)


def test_guidance_errors_and_dropout() -> None:
    cond = torch.randn(2, 5, 8)
    with pytest.raises(ValueError, match="unconditional"):
        guidance_batch(cond, None, 4.0)
    assert guidance_batch(cond, None, 1.0) is cond
    empty = torch.zeros(1, 5, 8)
    dropped = drop_conditioning(cond, empty, 1.0)
    assert torch.equal(dropped, empty.expand(2, 5, 8))
    assert torch.equal(drop_conditioning(cond, empty, 0.0), cond)

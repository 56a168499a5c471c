"""Latent diffusion (Stable Diffusion) from registered parts that users recombine.

A text-to-image model is an ordinary mmcore composition::

    image: preprocessor ``image`` (to [-1, 1]) -> tokenizer ``latent`` holding a **codec**
           (``kl-autoencoder``; registered through ``register_codecs``): latents as tokens
    text:  preprocessor ``clip-bpe`` or ``byte-text`` -> ``token-embedding`` ->
           ``text-transformer`` (CLIP's text tower, imported or trained from the spec)
    fusion ``unet`` or ``dit``: the denoiser (its attention through the kernel registry)
    objectives ``diffusion`` (noise/v prediction, conditioning dropout for guidance)

A codec alone trains with the ``passthrough`` fusion and the ``reconstruction`` objective;
its weights sit at ``modalities.image.tokenizer`` in both models, so
``init: {modalities.image.tokenizer: RUN}`` carries it into the diffusion model.

Modules: :mod:`.vae` (KL autoencoder), :mod:`.unet`/:mod:`.unet_blocks` (U-Net),
:mod:`.dit` (DiT), :mod:`.codec` (codec kind, ``latent`` tokenizer), :mod:`.denoisers`
(the fusions), :mod:`.objectives`, :mod:`.schedules`, :mod:`.samplers` (DDPM, DDIM, Euler,
DPM-Solver++ matching diffusers), :mod:`.guidance`, :mod:`.pipeline` (the sampling loop),
:mod:`.generate` (``mmcore generate``), :mod:`.clip_bpe` (CLIP's tokenizer),
:mod:`.convert` / :mod:`.importer` (diffusers folders), :mod:`.tasks` (``mmcore eval
--task reconstruction|generation``), :mod:`.cost` / :mod:`.costs` (analytic costs).
"""

from __future__ import annotations

from pathlib import Path

from mmcore import hookimpl
from mmcore.cost import zero_cost
from mmcore.hookspecs import Register
from mmcore.registry import NoConfig
from mmcore_diffusion.clip_bpe import CLIPBPEConfig, CLIPBPEPreprocessor
from mmcore_diffusion.codec import (
    KLAutoencoderConfig,
    LatentTokenizerConfig,
    build_kl_autoencoder,
    build_latent_tokenizer,
    build_passthrough,
    example_images,
)
from mmcore_diffusion.costs import dit_cost, latent_tokenizer_cost, no_cost, unet_cost
from mmcore_diffusion.denoisers import (
    DiTDenoiserConfig,
    UNetDenoiserConfig,
    build_dit,
    build_unet,
    example_denoiser_input,
)
from mmcore_diffusion.generate import LatentDiffusionGenerator
from mmcore_diffusion.importer import make_converter
from mmcore_diffusion.objectives import (
    DiffusionConfig,
    ReconstructionConfig,
    build_diffusion,
    build_reconstruction,
    example_diffusion,
    example_reconstruction,
)
from mmcore_diffusion.tasks import GenerationTask, ReconstructionTask

__version__ = "0.2.0"

SPECS = Path(__file__).resolve().parent / "specs"
TINY_CODEC = {"type": "kl-autoencoder", "block_out_channels": [8, 16], "layers_per_block": 1,
              "norm_num_groups": 4, "latent_channels": 4, "mid_block_attention": True}
TINY_UNET = {"block_out_channels": [8, 16], "down_attention": [True, False],
             "up_attention": [False, True], "layers_per_block": 1, "heads": [2, 2],
             "cross_attention_dim": 12, "norm_num_groups": 4, "in_channels": 16,
             "out_channels": 16, "image": "alpha", "text": "beta", "sample_size": 8}


@hookimpl
def register_codecs(register: Register) -> None:
    register("kl-autoencoder", build_kl_autoencoder, config=KLAutoencoderConfig,
             tiny={k: v for k, v in TINY_CODEC.items() if k != "type"},
             summary="Stable Diffusion's KL autoencoder: images <-> continuous latents")


@hookimpl
def register_preprocessors(register: Register) -> None:
    register("clip-bpe", CLIPBPEPreprocessor.from_config, config=CLIPBPEConfig, cost=zero_cost,
             summary="CLIP's BPE tokenizer (vocab.json + merges.txt), padded to 77")


@hookimpl
def register_tokenizers(register: Register) -> None:
    register("latent", build_latent_tokenizer, config=LatentTokenizerConfig,
             tiny={"codec": TINY_CODEC, "image_size": 8, "reconstruct": True},
             example=example_images, cost=latent_tokenizer_cost,
             summary="images -> a codec's scaled latents as tokens (B, h*w, C)")


@hookimpl
def register_fusions(register: Register) -> None:
    register("unet", build_unet, config=UNetDenoiserConfig, cost=unet_cost, tiny=TINY_UNET,
             example=example_denoiser_input,
             summary="latent-diffusion U-Net denoiser (ResNet + spatial transformer blocks)")
    register("dit", build_dit, config=DiTDenoiserConfig, cost=dit_cost,
             tiny={"image": "alpha", "text": "beta", "width": 16, "layers": 1, "heads": 2,
                   "sample_size": 8},
             example=example_denoiser_input,
             summary="DiT denoiser: latent patches as tokens, adaLN-Zero, text cross-attention")
    register("passthrough", build_passthrough, config=NoConfig, cost=no_cost, tiny={},
             summary="no fusion: tokens go to the objectives as they are (codec training)")


@hookimpl
def register_objectives(register: Register) -> None:
    register("diffusion", build_diffusion, config=DiffusionConfig, cost=no_cost, tiny={},
             example=example_diffusion,
             summary="noise or v prediction under a beta schedule, with conditioning dropout")
    register("reconstruction", build_reconstruction, config=ReconstructionConfig,
             cost=no_cost, tiny={}, example=example_reconstruction,
             summary="a codec's pixel MSE + KL weight; reports PSNR")


@hookimpl
def register_converters(register: Register) -> None:
    register("diffusers-sd", make_converter,
             summary="diffusers Stable Diffusion folder (unet/, vae/, text_encoder/, "
                     "tokenizer/, scheduler/, model_index.json), import and export")


@hookimpl
def register_generators(register: Register) -> None:
    register("latent-diffusion", LatentDiffusionGenerator,
             summary="text -> image with a diffusion denoiser, guidance and a codec decoder")


@hookimpl
def register_eval_tasks(register: Register) -> None:
    register("reconstruction", ReconstructionTask,
             summary="a codec's MSE and PSNR (dB, [0, 1] images) on the evaluation split")
    register("generation", GenerationTask,
             summary="text-to-image: colour/shape accuracy of K images per shapes prompt, "
                     "judged by --classifier, seen vs held-out combinations")


@hookimpl
def register_presets(register: Register) -> None:
    register("stable-diffusion-v1", SPECS / "stable-diffusion-v1.yaml",
             summary="Stable Diffusion v1 architecture (U-Net 859.5M + VAE 83.7M + CLIP text "
                     "123.1M = 1,066,235,307)",
             pretrained={"hf://stable-diffusion-v1-5/stable-diffusion-v1-5": "diffusers-sd"})
    register("ldm-tiny-codec", SPECS / "ldm-tiny-codec.yaml",
             summary="stage 1 of ldm-tiny: a tiny KL autoencoder trained on 32 px shapes")
    register("ldm-tiny", SPECS / "ldm-tiny.yaml",
             summary="tiny text-to-image latent diffusion on shapes (init the codec from an "
                     "ldm-tiny-codec run)")
    register("shapes-classifier", SPECS / "shapes-classifier.yaml",
             summary="judge of generated shapes: ViT with colour and shape heads trained on "
                     "all 36 combinations (mmcore eval --task generation --classifier RUN)")

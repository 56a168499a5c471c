"""DALL-E from registered parts: a VQ-VAE codec and an autoregressive prior over
[text tokens; image tokens].

    stage 1: image -> ``latent`` tokenizer holding a ``vq-vae`` codec (kind ``codec``,
             hook ``register_codecs``) -> ``passthrough`` -> ``reconstruction`` objective
             (pixel MSE + commitment/codebook loss; PSNR, code usage and perplexity logged)
    stage 2: text ``byte-text`` -> ``lm-embedding`` over one vocabulary (text bytes, then
             the image codes, then <begin-image>); image -> ``vq-codes`` tokenizer (the
             frozen codec, its weights at ``modalities.image.tokenizer`` as in stage 1)
             -> fusion ``dalle-prior`` (the ``decoder-lm`` trunk over [text; BOI; codes])
             -> ``lm-head`` -> objective ``dalle-prior`` (loss on image tokens, text
             optional).

Generation runs through the one loop (:mod:`mmcore.generation`) with a logit processor
that keeps only image codes (:mod:`.runner`); ``mmcore generate`` writes PNGs through
:mod:`.generator`, optionally reranked by a CLIP run (:mod:`.rerank`).
"""

from __future__ import annotations

from pathlib import Path

from mmcore import hookimpl
from mmcore.hookspecs import Register
from mmcore_dalle.generator import DalleGenerator
from mmcore_dalle.prior import (
    DallePriorConfig,
    DallePriorLossConfig,
    VQCodesConfig,
    build_dalle_prior,
    build_dalle_prior_loss,
    build_vq_codes,
    example_code_images,
    example_prior_inputs,
    example_prior_loss,
)
from mmcore_dalle.runner import DalleRunner, ImageCodesOnly, sample_codes, sample_images
from mmcore_dalle.vqvae import VQVAE, VQVAEConfig, build_vq_vae

__version__ = "0.1.0"
__all__ = ["VQVAE", "DalleGenerator", "DalleRunner", "ImageCodesOnly", "sample_codes",
           "sample_images"]

SPECS = Path(__file__).resolve().parent / "specs"
TINY_CODEC = {"channels": [8, 16], "res_blocks": 1, "norm_groups": 4, "latent_channels": 4,
              "codebook_size": 16}


@hookimpl
def register_codecs(register: Register) -> None:
    register("vq-vae", build_vq_vae, config=VQVAEConfig, tiny=TINY_CODEC,
             summary="VQ-VAE: images <-> a grid of discrete code ids (EMA or gradient "
                     "codebook, dead-code restarts)")


@hookimpl
def register_tokenizers(register: Register) -> None:
    register("vq-codes", build_vq_codes, config=VQCodesConfig,
             tiny={"codec": {"type": "vq-vae", **TINY_CODEC}, "image_size": 8},
             example=example_code_images,
             summary="images -> a fixed VQ codec's code ids (B, h*w) (and their vectors)")


@hookimpl
def register_fusions(register: Register) -> None:
    register("dalle-prior", build_dalle_prior, config=DallePriorConfig,
             example=example_prior_inputs,
             tiny={"text": "alpha", "image": "beta", "text_vocab": 11, "codebook_size": 6,
                   "image_tokens": 4, "layers": 1, "heads": 4, "kv_heads": 2, "ffn": 24},
             summary="DALL-E prior: decoder-lm trunk over [text; <begin-image>; image codes]")


@hookimpl
def register_objectives(register: Register) -> None:
    register("dalle-prior", build_dalle_prior_loss, config=DallePriorLossConfig,
             tiny={"text_vocab": 11, "text_weight": 0.1}, example=example_prior_loss,
             summary="next-token loss on image codes (text tokens optional, small weight)")


@hookimpl
def register_generators(register: Register) -> None:
    register("dalle", DalleGenerator,
             summary="text -> image tokens through the generation loop -> VQ decoder; "
                     "optional CLIP reranking")


@hookimpl
def register_presets(register: Register) -> None:
    register("dalle-tiny-codec", SPECS / "dalle-tiny-codec.yaml",
             summary="stage 1 of dalle-tiny: a tiny VQ-VAE (32 px -> 8x8 ids, 128 codes) "
                     "trained on shapes")
    register("dalle-tiny", SPECS / "dalle-tiny.yaml",
             summary="tiny DALL-E on shapes: VQ codes + decoder-lm prior (init the codec "
                     "from a dalle-tiny-codec run)")

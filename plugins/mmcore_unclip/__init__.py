"""unCLIP (DALL-E 2) from registered parts: a diffusion prior from the CLIP text
embedding to the CLIP image embedding, and a latent-diffusion decoder conditioned on the
image embedding.

Two specs, two training stages, both plain compositions::

    unclip-tiny-prior   clip_text  --clip-embed (frozen CLIP text tower)--> (B, D)
                        clip_image --clip-embed (frozen CLIP image tower)--> (B, D)
                        both -> clip-embedding tokenizer (B, 1, D); fusion dit (the
                        embedding as one token, cross-attending to the text embedding);
                        objective diffusion (v prediction, cosine schedule, dropout)
    unclip-tiny         image: latent tokenizer holding a trained ldm-tiny-codec (frozen);
                        clip_image: clip-embed -> clip-embedding projected to K tokens;
                        fusion unet cross-attending to those tokens; objective diffusion

The CLIP (a ``clip-tiny`` run) is named by the ``clip-embed`` preprocessors and never
becomes part of either model's weights. ``mmcore generate DECODER_RUN`` chains prompt ->
prior -> decoder -> codec through :class:`~mmcore_unclip.generate.UnclipGenerator`; the
decoder's spec names the prior run in ``metadata.unclip.prior``.

Modules: :mod:`.embeddings` (preprocessor, tokenizer), :mod:`.data` (``shapes-clip``),
:mod:`.generate` (the generator), :mod:`.evaluate` (the prior's cosine similarity).
"""

from __future__ import annotations

from pathlib import Path

from mmcore import hookimpl
from mmcore.cost import zero_cost
from mmcore.hookspecs import Register
from mmcore_unclip.data import ShapesClipConfig, ShapesClipDataset
from mmcore_unclip.embeddings import (
    ClipEmbedConfig,
    ClipEmbedder,
    ClipEmbeddingConfig,
    build_clip_embedding,
    clip_embedding_cost,
    example_embeddings,
)
from mmcore_unclip.evaluate import PriorTask
from mmcore_unclip.generate import UnclipGenerator

__version__ = "0.1.0"

SPECS = Path(__file__).resolve().parent / "specs"


@hookimpl
def register_preprocessors(register: Register) -> None:
    register("clip-embed", ClipEmbedder.from_config, config=ClipEmbedConfig, cost=zero_cost,
             summary="raw images or captions -> a frozen CLIP's unit-norm embeddings (B, D)")


@hookimpl
def register_tokenizers(register: Register) -> None:
    register("clip-embedding", build_clip_embedding, config=ClipEmbeddingConfig,
             tiny={"dim": 8, "tokens": 3, "width": 12}, example=example_embeddings,
             cost=clip_embedding_cost,
             summary="CLIP embeddings (B, D) -> one scaled token, or K projected context "
                     "tokens")


@hookimpl
def register_datasets(register: Register) -> None:
    register("shapes-clip", ShapesClipDataset.from_config, config=ShapesClipConfig,
             tiny={"image_size": 16, "clip_image_size": 24, "train_size": 64, "eval_size": 24},
             summary="shapes with clip_image (drawn at the CLIP's size) and clip_text views")


@hookimpl
def register_generators(register: Register) -> None:
    register("unclip", UnclipGenerator,
             summary="text -> CLIP text embedding -> prior -> image embedding -> decoder -> "
                     "codec")


@hookimpl
def register_eval_tasks(register: Register) -> None:
    register("prior", PriorTask,
             summary="unCLIP prior: cosine of sampled vs true CLIP image embeddings, and "
                     "their zero-shot colour/shape")


@hookimpl
def register_presets(register: Register) -> None:
    register("unclip-tiny-prior", SPECS / "unclip-tiny-prior.yaml",
             summary="stage 1 of unclip-tiny: diffusion prior from clip-tiny's text "
                     "embedding to its image embedding (give the CLIP run)")
    register("unclip-tiny", SPECS / "unclip-tiny.yaml",
             summary="stage 2 of unclip-tiny: latent decoder conditioned on the CLIP image "
                     "embedding; mmcore generate chains the prior run it names")

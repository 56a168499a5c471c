"""mmcore's BLIP: one text transformer in three modes with BLIP's weight sharing, its ITC +
ITM + LM objectives, the ``hf-blip`` importer, CapFilt and the ``caption`` / ``capfilt``
commands.

Design. A BLIP model is an ordinary spec::

    image: ``patch-embedding`` + ``vit`` (pre-norm blocks, final norm; HF BlipVisionModel)
    text:  ``byte-text`` (or an HF tokenizer) + ``blip-text-embedding`` (BERT embeddings;
           the tokens keep their ids so the fusion can swap the first token)
    fusion ``blip``: the BERT-style text layers, each with the encoder's self-attention, the
           decoder's own self-attention, one cross-attention and one feed-forward block,
           run as the unimodal encoder (ITC), the grounded encoder (ITM) and the decoder (LM)
    objectives ``contrastive`` (ITC), ``blip-matching`` (ITM, hard negatives mined from the
           ITC similarities and re-encoded through the shared layers), ``blip-lm`` (LM)

Captions are decoded by :class:`mmcore_blip.runner.BlipCaptionRunner` through the one
generation loop (greedy, beam or nucleus sampling).
"""

from __future__ import annotations

from pathlib import Path

from mmcore import hookimpl
from mmcore.hookspecs import Register
from mmcore_blip import cli
from mmcore_blip.data import NoisyShapesConfig, NoisyShapesDataset
from mmcore_blip.export import HFBlipConverter
from mmcore_blip.fusion import BlipFusionConfig, build_blip
from mmcore_blip.objectives import (
    BlipLMConfig,
    BlipMatchingConfig,
    build_blip_lm,
    build_blip_matching,
    example_blip_lm,
    example_blip_matching,
)
from mmcore_blip.task import CaptioningTask
from mmcore_blip.text import (
    BlipTextEmbeddingConfig,
    build_blip_text_embedding,
    example_text_ids,
)

__version__ = "0.1.0"

SPECS = Path(__file__).resolve().parent / "specs"


@hookimpl
def register_tokenizers(register: Register) -> None:
    register("blip-text-embedding", build_blip_text_embedding, config=BlipTextEmbeddingConfig,
             tiny={"vocab_size": 11, "width": 16, "max_length": 8}, example=example_text_ids,
             summary="BERT text embeddings (word + position, LayerNorm); the tokens keep "
                     "their ids")


@hookimpl
def register_fusions(register: Register) -> None:
    register("blip", build_blip, config=BlipFusionConfig,
             tiny={"image": "beta", "text": "alpha", "layers": 1, "heads": 2, "embed_dim": 8},
             summary="BLIP's text transformer: unimodal encoder (ITC), image-grounded encoder "
                     "(ITM) and decoder (LM) sharing all but their self-attention")


@hookimpl
def register_objectives(register: Register) -> None:
    register("blip-matching", build_blip_matching, config=BlipMatchingConfig,
             example=example_blip_matching,
             summary="BLIP's ITM: hard negatives mined from the ITC similarities, re-encoded "
                     "through the blip fusion's shared layers")
    register("blip-lm", build_blip_lm, config=BlipLMConfig, tiny={"vocab_size": 11},
             example=example_blip_lm,
             summary="BLIP's LM loss: BERT prediction head over the blip decoder's states")


@hookimpl
def register_converters(register: Register) -> None:
    register("hf-blip", HFBlipConverter,
             summary="Hugging Face BlipForImageTextRetrieval / BlipForConditionalGeneration "
                     "folder, import and export")


@hookimpl
def register_datasets(register: Register) -> None:
    register("shapes-noisy", NoisyShapesDataset.from_config, config=NoisyShapesConfig,
             tiny={"image_size": 16, "train_size": 64, "eval_size": 24},
             summary="the shapes data with wrong_fraction (0.3) of its captions wrong; items "
                     "say which (caption_ok), for judging CapFilt")


@hookimpl
def register_eval_tasks(register: Register) -> None:
    register("captioning", CaptioningTask,
             summary="greedy captions scored by exact colour and shape words, and ITC "
                     "retrieval recall@1")


@hookimpl
def register_commands(register: Register) -> None:
    register("caption", cli.caption_arguments, cli.caption_run, summary=cli.CAPTION_SUMMARY)
    register("capfilt", cli.capfilt_arguments, cli.capfilt_run, summary=cli.CAPFILT_SUMMARY)


@hookimpl
def register_presets(register: Register) -> None:
    register("blip-tiny", SPECS / "blip-tiny.yaml",
             summary="tiny BLIP (ViT + shared BERT text transformer; ITC + ITM + LM) that "
                     "trains on the built-in shapes data in minutes on a CPU")
    register("blip", SPECS / "blip.yaml",
             summary="BLIP base: ViT-B/16 (384 px) + BERT-base text transformer shared by "
                     "ITC (momentum distillation), ITM and LM")

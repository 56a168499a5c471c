"""mmcore's Flamingo: gated cross-attention dense blocks entering a LLaMA-family LM through
its layer hook, a Perceiver Resampler, interleaved image-text sequences with Flamingo's
masking, the ``hf-idefics`` converter, the ``shapes-few-shot`` data and ``few-shot``
evaluation, and the generator behind ``mmcore generate`` for Flamingo models.

Design. The model is a composition of registered components::

    image: preprocessor ``interleaved-images`` (each item's list of images -> (K, 3, S, S),
           images in marker order) -> ``patch-embedding`` -> a ViT encoder
    text:  preprocessor ``flamingo-text`` (``<image>`` / ``<|endofchunk|>`` markers -> ids,
           labels -100 on markers) -> tokenizer ``lm-embedding`` (mmcore_llama; keeps ids)
    fusion ``flamingo``: resampler per image, then the ``decoder-lm`` trunk (frozen by
           default) with a gated block before every ``every``-th layer, entered through the
           trunk's ``hook``; token t sees only the last image at or before it
    heads  ``lm-head``; objectives ``interleaved-lm`` (next-token loss on the text)

* Images of a batch are one flat list, in the order of the ``<image>`` markers row after
  row (as LLaVA's); the fusion counts each row's markers and names both counts when the
  markers and the images differ.
* Tokens that see no image skip the blocks (exact zero), so they equal the plain LM;
  ``dense_without_media: true`` runs the blocks' dense part for them too (Idefics).
* Generation goes through the one loop: :class:`FlamingoRunner` is a
  :class:`mmcore.generation.Decoder`.
"""

from __future__ import annotations

from pathlib import Path

from mmcore import hookimpl
from mmcore.cost import zero_cost
from mmcore.hookspecs import Register
from mmcore_flamingo.data import ShapesFewShotConfig, ShapesFewShotDataset
from mmcore_flamingo.export import HFIdeficsConverter
from mmcore_flamingo.fewshot import FewShotTask
from mmcore_flamingo.fusion import (
    FlamingoConfig,
    FlamingoFusion,
    build_flamingo,
    example_flamingo,
    flamingo_cost,
)
from mmcore_flamingo.generator import FlamingoGenerator
from mmcore_flamingo.objective import (
    InterleavedLMConfig,
    build_interleaved_lm,
    example_interleaved_lm,
)
from mmcore_flamingo.runner import FlamingoRunner, complete
from mmcore_flamingo.text import (
    FlamingoTextConfig,
    InterleavedImagesConfig,
    build_flamingo_text,
    build_interleaved_images,
    example_sequences,
)
from mmcore_llama import causal_lm_cost

__version__ = "0.1.0"
__all__ = ["FlamingoFusion", "FlamingoRunner", "complete"]

SPECS = Path(__file__).resolve().parent / "specs"


@hookimpl
def register_preprocessors(register: Register) -> None:
    register("flamingo-text", build_flamingo_text, config=FlamingoTextConfig,
             tiny={"context_length": 32}, example=example_sequences, cost=zero_cost,
             summary="interleaved text (<image>, <|endofchunk|>) -> ids, mask, labels")
    register("interleaved-images", build_interleaved_images, config=InterleavedImagesConfig,
             tiny={"size": 16}, cost=zero_cost,
             summary="each item's list of images -> one (K, 3, S, S) batch in marker order")


@hookimpl
def register_fusions(register: Register) -> None:
    register("flamingo", build_flamingo, config=FlamingoConfig, cost=flamingo_cost,
             example=example_flamingo,
             tiny={"text": "alpha", "image": "beta", "media_token_id": 5, "layers": 2,
                   "heads": 4, "kv_heads": 2, "ffn": 24, "init_gate": 0.5,
                   "freeze_lm": False},
             summary="gated cross-attention blocks in a (frozen) LLaMA-family LM, "
                     "interleaved images (Flamingo)")


@hookimpl
def register_objectives(register: Register) -> None:
    register("interleaved-lm", build_interleaved_lm, config=InterleavedLMConfig,
             cost=causal_lm_cost, tiny={}, example=example_interleaved_lm,
             summary="next-token loss on the text of interleaved sequences (markers ignored)")


@hookimpl
def register_datasets(register: Register) -> None:
    register("shapes-few-shot", ShapesFewShotDataset.from_config, config=ShapesFewShotConfig,
             tiny={"image_size": 16, "train_size": 64, "eval_size": 24, "max_shots": 2},
             summary="k (image, colour-or-shape) examples and a query; eval = unseen "
                     "colour-shape combinations")


@hookimpl
def register_eval_tasks(register: Register) -> None:
    register("few-shot", FewShotTask, summary="in-context accuracy per shot count (--shots)")


@hookimpl
def register_generators(register: Register) -> None:
    register("flamingo", FlamingoGenerator,
             summary="Flamingo models: continue interleaved <image> prompts about --image")


@hookimpl
def register_converters(register: Register) -> None:
    register("hf-idefics", HFIdeficsConverter,
             summary="Hugging Face IdeficsForVisionText2Text folder (vision tower, resampler, "
                     "gated cross-attention, LLaMA LM), import and export")


@hookimpl
def register_presets(register: Register) -> None:
    register("flamingo-tiny", SPECS / "flamingo-tiny.yaml",
             summary="tiny Flamingo (ViT + resampler + gated blocks in a LLaMA LM) that "
                     "learns few-shot colour/shape naming in context on a CPU")
    register("flamingo-80b", SPECS / "flamingo-80b.yaml",
             summary="Flamingo-80B shape (80 layers x 8192, a block every 7th layer, "
                     "64-query resampler) for mmcore inspect")

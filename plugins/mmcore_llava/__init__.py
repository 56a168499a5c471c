"""mmcore's LLaVA: a CLIP vision tower, a projector and a LLaMA-family LM, composed as an
ordinary spec; the ``hf-llava`` converter; the shapes VQA data, the ``vqa`` evaluation
task, and the generator behind ``mmcore generate`` for LLaVA models.

Design. The model is a composition of registered components, no LLaVA-specific model
class::

    image: preprocessor ``image`` (CLIP normalisation)
           tokenizer ``patch-embedding`` (CLS + patches + learned positions)
           encoder ``vit-features`` (the CLIP ViT; returns hidden state ``feature_layer``,
                    -2 for LLaVA, with the CLS token dropped: ``select: default``)
    text:  preprocessor ``llava-chat`` (chat template; each ``<image>`` placeholder expanded
                    to the image's N tokens; labels that keep the answer only)
           tokenizer ``lm-embedding`` (mmcore_llama; keeps the ids)
    fusion ``llava``: projector (``linear`` or ``mlp2x_gelu``) over the image tokens, spliced
           into the text embeddings where the id is ``<image>`` (images in prompt order,
           as transformers' ``masked_scatter``), then the ``decoder-lm`` trunk
    heads  ``lm-head``; objectives ``instruction-lm`` (answer tokens only)

* The placeholders are expanded by the preprocessor (as HF's processor does), so labels,
  masks and positions line up with the tokens the LM sees; the fusion checks that the
  placeholder count equals images x tokens per image and names both counts when not.
* The vision tower keeps every layer and its final norm (what a CLIP checkpoint holds and
  transformers counts) but runs only up to ``feature_layer``.
* Generation goes through the one loop: :class:`LlavaRunner` is a
  :class:`mmcore.generation.Decoder` whose ``prefill`` splices the image tokens.
* Training: ``llava-tiny`` trains everything from scratch on ``shapes-vqa``; the
  ``llava-1.5-7b-stage1`` spec trains the projector only (``train.freeze`` and the fusion's
  ``freeze_lm``), ``llava-1.5-7b-stage2`` also the LM (full) and ``-stage2-lora`` LoRA
  adapters on the LM trunk (``train.lora``).
"""

from __future__ import annotations

from pathlib import Path

from mmcore import hookimpl
from mmcore.hookspecs import Register
from mmcore_llama import causal_lm_cost
from mmcore_llava.chat import (
    LlavaChatConfig,
    LlavaChatPreprocessor,
    build_llava_chat,
    example_conversations,
)
from mmcore_llava.data import ShapesVQAConfig, ShapesVQADataset
from mmcore_llava.export import HFLlavaConverter
from mmcore_llava.fusion import LlavaConfig, LlavaFusion, build_llava, example_llava, llava_cost
from mmcore_llava.generator import LlavaGenerator
from mmcore_llava.objective import InstructionLMConfig, build_instruction_lm, example_instruction_lm
from mmcore_llava.runner import LlavaRunner, answer
from mmcore_llava.vision import ViTFeaturesConfig, build_vit_features, vit_features_cost
from mmcore_llava.vqa import VQATask, vqa_accuracy

__version__ = "0.1.0"
__all__ = ["LlavaChatPreprocessor", "LlavaFusion", "LlavaRunner", "answer", "vqa_accuracy"]

SPECS = Path(__file__).resolve().parent / "specs"


@hookimpl
def register_preprocessors(register: Register) -> None:
    register("llava-chat", build_llava_chat, config=LlavaChatConfig,
             tiny={"image_tokens": 2, "context_length": 48}, example=example_conversations,
             summary="chat template + <image> expansion -> ids, mask, answer-only labels")


@hookimpl
def register_encoders(register: Register) -> None:
    register("vit-features", build_vit_features, config=ViTFeaturesConfig,
             tiny={"layers": 2, "heads": 2, "feature_layer": -1, "final_norm": False},
             cost=vit_features_cost,
             summary="CLIP ViT returning one hidden layer's patch tokens (LLaVA's "
                     "vision_feature_layer, CLS dropped)")


@hookimpl
def register_fusions(register: Register) -> None:
    register("llava", build_llava, config=LlavaConfig, cost=llava_cost, example=example_llava,
             tiny={"text": "alpha", "image": "beta", "image_token_id": 5, "layers": 1,
                   "heads": 4, "kv_heads": 2, "ffn": 24},
             summary="project image tokens, splice them at <image> into the text embeddings, "
                     "run a LLaMA-family decoder")


@hookimpl
def register_objectives(register: Register) -> None:
    register("instruction-lm", build_instruction_lm, config=InstructionLMConfig,
             tiny={}, example=example_instruction_lm, cost=causal_lm_cost,
             summary="next-token loss on answer tokens only (prompt and image tokens masked)")


@hookimpl
def register_datasets(register: Register) -> None:
    register("shapes-vqa", ShapesVQADataset.from_config, config=ShapesVQAConfig,
             tiny={"image_size": 16, "train_size": 64, "eval_size": 24},
             summary="questions about the shapes images (colour, shape, yes/no, describe); "
                     "eval = unseen colour-shape combinations")


@hookimpl
def register_converters(register: Register) -> None:
    register("hf-llava", HFLlavaConverter,
             summary="Hugging Face LlavaForConditionalGeneration folder (CLIP vision tower, "
                     "projector, LLaMA LM), import and export")


@hookimpl
def register_generators(register: Register) -> None:
    register("llava", LlavaGenerator,
             summary="LLaVA models: answer prompts with <image> placeholders about --image")


@hookimpl
def register_eval_tasks(register: Register) -> None:
    register("vqa", VQATask, summary="exact-match answer accuracy on held-out questions")


@hookimpl
def register_presets(register: Register) -> None:
    register("llava-tiny", SPECS / "llava-tiny.yaml",
             summary="tiny LLaVA (ViT + projector + LLaMA LM) trained from scratch on "
                     "shapes-vqa in minutes on a CPU")
    register("shapes-views", SPECS / "shapes-views.yaml",
             summary="llava-tiny's and flamingo-tiny's two vision towers: RGB with a colour "
                     "classifier, the colour-free chroma view with a shape classifier")
    register("shapes-factors", SPECS / "shapes-factors.yaml",
             summary="llava-tiny's vision tower pre-trained with separate colour and shape "
                     "classifiers (load it with --init modalities.image=RUN)")
    register("shapes-factors-recolour", SPECS / "shapes-factors-recolour.yaml",
             summary="shapes-factors with shape questions in off-palette hues (shape "
                     "cannot be read from colour)")
    register("llava-1.5-7b", SPECS / "llava-1.5-7b.yaml",
             summary="LLaVA-1.5-7B architecture (CLIP ViT-L/14-336, mlp2x_gelu, vicuna-7b): "
                     "7,063,427,072 parameters",
             pretrained={"hf://llava-hf/llava-1.5-7b-hf": "hf-llava"})
    register("llava-1.5-7b-stage1", SPECS / "llava-1.5-7b-stage1.yaml",
             summary="LLaVA-1.5-7B stage 1: train the projector only")
    register("llava-1.5-7b-stage2", SPECS / "llava-1.5-7b-stage2.yaml",
             summary="LLaVA-1.5-7B stage 2: projector and LM train (full fine-tune)")
    register("llava-1.5-7b-stage2-lora", SPECS / "llava-1.5-7b-stage2-lora.yaml",
             summary="LLaVA-1.5-7B stage 2 with LoRA adapters on the LM trunk")

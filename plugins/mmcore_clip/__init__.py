"""The CLIP model family: weight converters (Hugging Face ``CLIPModel`` folders both ways;
OpenAI / open_clip state dicts in) and the folder datasets zero-shot and retrieval
evaluation read (``image-folder``, ``image-captions``) with the standard prompt sets."""

from __future__ import annotations

from mmcore import hookimpl
from mmcore.hookspecs import Register
from mmcore_clip.hf_converter import HFClipConverter
from mmcore_clip.image_captions import ImageCaptionsConfig, ImageCaptionsDataset
from mmcore_clip.image_folder import ImageFolderConfig, ImageFolderDataset
from mmcore_clip.openai_clip import OpenAIClipConverter

__version__ = "0.1.0"


@hookimpl
def register_converters(register: Register) -> None:
    register("hf-clip", HFClipConverter,
             summary="transformers CLIPModel folder (config.json, model.safetensors, "
                     "tokenizer.json), import and export")
    register("openai-clip", OpenAIClipConverter,
             summary="OpenAI / open_clip ViT state dict (.safetensors or weights-only .pt)")


@hookimpl
def register_datasets(register: Register) -> None:
    register("image-folder", ImageFolderDataset.from_config, config=ImageFolderConfig,
             summary="root/<class>/<image> for zero-shot classification; prompt templates "
                     "by set name (openai, simple) or file")
    register("image-captions", ImageCaptionsDataset.from_config, config=ImageCaptionsConfig,
             summary="a folder of images + captions.csv / captions.jsonl (image, caption) "
                     "for retrieval")

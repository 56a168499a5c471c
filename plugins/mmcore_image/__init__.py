"""mmcore's image modality: preprocessor, patch tokenizer and ViT encoder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmcore import hookimpl
from mmcore.cost import zero_cost
from mmcore.hookspecs import Register
from mmcore_image.encoder import ViTConfig, build_vit, vit_cost
from mmcore_image.preprocess import ImagePreprocessConfig, ImagePreprocessor
from mmcore_image.tokenizer import (
    PatchEmbedConfig,
    build_patch_embedding,
    example_pixels,
    patch_embedding_cost,
)

__version__ = "0.1.0"

SPECS = Path(__file__).resolve().parent / "specs"


def example_images(preprocessor: Any, batch_size: int,
                   generator: torch.Generator) -> list[np.ndarray]:
    """Random uint8 (H, W, 3) images of differing sizes, for the conformance suite."""
    sizes = [(20 + 7 * i, 16 + 5 * (i % 2)) for i in range(batch_size)]
    return [torch.randint(0, 256, (h, w, 3), generator=generator, dtype=torch.uint8).numpy()
            for h, w in sizes]


@hookimpl
def register_preprocessors(register: Register) -> None:
    register("image", ImagePreprocessor.from_config, config=ImagePreprocessConfig,
             tiny={"size": 16}, example=example_images, cost=zero_cost,
             summary="PIL images, paths or arrays -> normalised (B, 3, S, S)")


@hookimpl
def register_tokenizers(register: Register) -> None:
    register("patch-embedding", build_patch_embedding, config=PatchEmbedConfig,
             tiny={"image_size": 16, "patch_size": 8, "width": 16}, example=example_pixels,
             cost=patch_embedding_cost,
             summary="non-overlapping patches -> tokens, optional CLS, positions")


@hookimpl
def register_encoders(register: Register) -> None:
    register("vit", build_vit, config=ViTConfig, tiny={"layers": 1, "heads": 2}, cost=vit_cost,
             summary="Vision Transformer encoder (pre-norm blocks)")


@hookimpl
def register_presets(register: Register) -> None:
    register("clip-vit-b-32", SPECS / "clip-vit-b-32.yaml",
             summary="the CLIP ViT-B/32 architecture (151,277,313 parameters)",
             pretrained={"hf://openai/clip-vit-base-patch32": "hf-clip"})

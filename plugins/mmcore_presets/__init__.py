"""The chapter presets (video-transformer, fusion-compare, whisper-large-encoder) and the
``feature-projection`` tokenizer for precomputed features."""

from __future__ import annotations

from pathlib import Path

from mmcore import hookimpl
from mmcore.hookspecs import Register
from mmcore_presets.features import (
    FeatureProjectionConfig,
    build_feature_projection,
    example_features,
    feature_projection_cost,
)

__version__ = "0.1.0"

SPECS = Path(__file__).resolve().parent / "specs"


@hookimpl
def register_tokenizers(register: Register) -> None:
    register("feature-projection", build_feature_projection, config=FeatureProjectionConfig,
             tiny={"features": 6, "width": 16, "length": 5, "norm": True,
                   "modality_token": True, "positions": "learned"},
             example=example_features, cost=feature_projection_cost,
             summary="precomputed feature vectors (B, N, F) -> Linear [+ norm, positions, "
                     "modality token]")


@hookimpl
def register_presets(register: Register) -> None:
    register("video-transformer", SPECS / "video-transformer.yaml",
             summary="the chapter's multimodal video transformer (visual + audio + text "
                     "features, early fusion, 400 classes; 154,610,688 parameters in the "
                     "chapter's count)")
    register("fusion-compare", SPECS / "fusion-compare.yaml",
             summary="one image and one text encoder under six fusions, costed side by side "
                     "by mmcore inspect")
    register("whisper-large-encoder", SPECS / "whisper-large-encoder.yaml",
             summary="the chapter's Whisper encoder (24 x 1024, 16 heads, 1500 tokens; "
                     "12,587,008 parameters per layer in its count)")

"""The chapter presets (video-transformer, fusion-compare, whisper-large-encoder; see
registry.yaml) and the ``feature-projection`` tokenizer for precomputed features."""

from __future__ import annotations

from mmcore import hookimpl
from mmcore.hookspecs import Register
from mmcore_presets.features import (
    FeatureProjectionConfig,
    build_feature_projection,
    example_features,
    feature_projection_cost,
)

__version__ = "0.1.0"


@hookimpl
def register_tokenizers(register: Register) -> None:
    register("feature-projection", build_feature_projection, config=FeatureProjectionConfig,
             tiny={"features": 6, "width": 16, "length": 5, "norm": True,
                   "modality_token": True, "positions": "learned"},
             example=example_features, cost=feature_projection_cost,
             summary="precomputed feature vectors (B, N, F) -> Linear [+ norm, positions, "
                     "modality token]")

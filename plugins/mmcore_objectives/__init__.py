"""mmcore's objectives (contrastive, classification) and the classifier head."""

from __future__ import annotations

from mmcore import hookimpl
from mmcore.hookspecs import Register
from mmcore_objectives.classification import (
    ClassificationConfig,
    ClassifierConfig,
    build_classification,
    build_classifier,
)
from mmcore_objectives.contrastive import ContrastiveConfig, build_contrastive

__version__ = "0.1.0"


@hookimpl
def register_heads(register: Register) -> None:
    register("classifier", build_classifier, config=ClassifierConfig,
             tiny={"num_classes": 3}, summary="pooled embedding -> class logits")


@hookimpl
def register_objectives(register: Register) -> None:
    register("contrastive", build_contrastive, config=ContrastiveConfig,
             tiny={"pairs": [["alpha", "beta"]]},  # names mmcore.testing provides
             summary="symmetric InfoNCE over named modality pairs, learnable temperature")
    register("classification", build_classification, config=ClassificationConfig,
             tiny={"head": "logits"},  # the head mmcore.testing provides
             summary="cross-entropy of a head's logits against integer labels")

"""mmcore's objectives and the classifier head.

contrastive (CLIP / SigLIP), classification, image-text matching with hard negatives
(BLIP's ITM), masked modelling (MAE / BERT; it masks through the model's ``prepare`` hook),
captioning (a KV-cached causal decoder) and temporal ordering (permutation classification).
"""

from __future__ import annotations

from mmcore import hookimpl
from mmcore.hookspecs import Register
from mmcore_objectives.captioning import (
    CaptioningConfig,
    build_captioning,
    captioning_cost,
    example_captioning,
)
from mmcore_objectives.classification import (
    ClassificationConfig,
    ClassifierConfig,
    build_classification,
    build_classifier,
    classification_cost,
    classifier_cost,
)
from mmcore_objectives.contrastive import ContrastiveConfig, build_contrastive
from mmcore_objectives.costs import contrastive_cost
from mmcore_objectives.masked import (
    MaskedModellingConfig,
    build_masked_modelling,
    example_masked,
    masked_modelling_cost,
)
from mmcore_objectives.matching import MatchingConfig, build_matching, matching_cost
from mmcore_objectives.ordering import (
    TemporalOrderingConfig,
    build_temporal_ordering,
    temporal_ordering_cost,
)

__version__ = "0.1.0"


@hookimpl
def register_heads(register: Register) -> None:
    register("classifier", build_classifier, config=ClassifierConfig,
             tiny={"num_classes": 3}, cost=classifier_cost,
             summary="pooled embedding -> class logits")


@hookimpl
def register_objectives(register: Register) -> None:
    # tiny configs name what mmcore.testing provides: tokens alpha (width 16) and beta
    # (width 12), embeddings alpha/beta/fused (width 8), a head "logits"
    register("contrastive", build_contrastive, config=ContrastiveConfig,
             tiny={"pairs": [["alpha", "beta"]]}, cost=contrastive_cost,
             summary="CLIP (softmax) or SigLIP (sigmoid) loss over named modality pairs, tiled")
    register("classification", build_classification, config=ClassificationConfig,
             tiny={"head": "logits"}, cost=classification_cost,
             summary="cross-entropy of a head's logits against integer labels")
    register("matching", build_matching, config=MatchingConfig,
             tiny={"query": "alpha", "context": "beta", "query_width": 16,
                   "context_width": 12, "heads": 2},
             cost=matching_cost,
             summary="BLIP image-text matching: cross-attention fusion + binary classifier, "
                     "hard negatives sampled from embedding similarities")
    register("masked-modelling", build_masked_modelling, config=MaskedModellingConfig,
             tiny={"modality": "alpha", "width": 16, "decoder_heads": 2},
             example=example_masked, cost=masked_modelling_cost,
             summary="MAE / BERT: hide tokens before the encoder, reconstruct features or ids")
    register("captioning", build_captioning, config=CaptioningConfig,
             tiny={"context": "alpha", "context_width": 16, "vocab_size": 11, "width": 16,
                   "layers": 1, "heads": 2, "max_length": 8},
             example=example_captioning, cost=captioning_cost,
             summary="causal text decoder cross-attending to context tokens; KV-cached "
                     "generation")
    register("temporal-ordering", build_temporal_ordering, config=TemporalOrderingConfig,
             tiny={"modality": "alpha", "width": 16, "hidden": 16},
             cost=temporal_ordering_cost,
             summary="cut a sequence into K segments, classify which of the K! orders "
                     "shuffled them")

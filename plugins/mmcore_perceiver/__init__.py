"""Perceiver IO: output-query builders, query decoders (heads), per-query objectives, the
``hf-perceiver`` importer, the ``perceiver-seg-tiny`` preset and the ``segmentation``
task of ``mmcore eval``.

The trunk is the core latent backbone behind the ``perceiver`` fusion; this plugin adds
what decodes it: any number of output queries, each built from what must be predicted
(a position, a modality, a task), cross-attend to the latents.
"""

from __future__ import annotations

from pathlib import Path

from mmcore import hookimpl
from mmcore.hookspecs import Register
from mmcore_perceiver import segmentation
from mmcore_perceiver.decoders import (
    PooledClassifierConfig,
    QueryClassifierConfig,
    QueryRegressorConfig,
    build_pooled_classifier,
    build_query_classifier,
    build_query_regressor,
    example_latents,
)
from mmcore_perceiver.hf_export import HFPerceiverConverter
from mmcore_perceiver.objectives import (
    PerQueryClassificationConfig,
    PerQueryRegressionConfig,
    build_per_query_classification,
    build_per_query_regression,
    example_classification,
    example_regression,
)
from mmcore_perceiver.queries import (
    ConcatConfig,
    EmbeddingConfig,
    FourierConfig,
    LearnedConfig,
    LearnedPositionsConfig,
    build_concat,
    build_embedding,
    build_fourier,
    build_learned,
    build_learned_positions,
)

__version__ = "0.1.0"

SPECS = Path(__file__).resolve().parent / "specs"


@hookimpl
def register_queries(register: Register) -> None:
    register("learned", build_learned, config=LearnedConfig,
             tiny={"num_queries": 3, "width": 8}, summary="Q learned query vectors")
    register("learned-positions", build_learned_positions, config=LearnedPositionsConfig,
             tiny={"shape": [2, 3], "width": 8},
             summary="one learned query per cell of a 1-D [N] or 2-D [H, W] output grid")
    register("fourier-positions", build_fourier, config=FourierConfig,
             tiny={"shape": [2, 3], "num_bands": 2},
             summary="Fourier features of each cell of a 1-D or 2-D output grid "
                     "(optionally projected)")
    register("modality-embedding", build_embedding, config=EmbeddingConfig,
             tiny={"width": 4, "name": "image"},
             summary="one learned vector naming the output modality (for concat)")
    register("task-embedding", build_embedding, config=EmbeddingConfig,
             tiny={"width": 4, "name": "segmentation"},
             summary="one learned vector naming the task (for concat)")
    register("concat", build_concat, config=ConcatConfig,
             tiny={"parts": [{"type": "fourier-positions", "shape": [4], "num_bands": 2},
                             {"type": "task-embedding", "width": 4}]},
             summary="concatenate query builders' features per query (1-query parts repeat)")


_DECODER_TINY = {"queries": {"type": "learned-positions", "shape": [2, 2], "width": 8},
                 "heads": 2, "latent_width": 8}


@hookimpl
def register_heads(register: Register) -> None:
    register("query-classifier", build_query_classifier, config=QueryClassifierConfig,
             tiny={**_DECODER_TINY, "num_classes": 3}, example=example_latents,
             summary="Perceiver IO decoder: output queries -> per-query logits (B, Q, C)")
    register("query-regressor", build_query_regressor, config=QueryRegressorConfig,
             tiny={**_DECODER_TINY, "outputs": 2}, example=example_latents,
             summary="Perceiver IO decoder: output queries -> per-query values (B, Q, K)")
    register("pooled-query-classifier", build_pooled_classifier, config=PooledClassifierConfig,
             tiny={"num_classes": 3, "latent_width": 8}, example=example_latents,
             summary="Perceiver IO classification decoder: learned query -> logits (B, C)")


@hookimpl
def register_objectives(register: Register) -> None:
    register("per-query-classification", build_per_query_classification,
             config=PerQueryClassificationConfig, tiny={"head": "logits"},
             example=example_classification,
             summary="cross-entropy of per-query logits against per-cell labels (masks)")
    register("per-query-regression", build_per_query_regression,
             config=PerQueryRegressionConfig, tiny={"head": "logits"},
             example=example_regression,
             summary="MSE / L1 of per-query values against per-cell targets")


@hookimpl
def register_converters(register: Register) -> None:
    register("hf-perceiver", HFPerceiverConverter,
             summary="transformers PerceiverForMaskedLM folder (config.json, "
                     "model.safetensors), import and export")


@hookimpl
def register_presets(register: Register) -> None:
    register("perceiver-seg-tiny", SPECS / "perceiver-seg-tiny.yaml",
             summary="per-pixel segmentation of the built-in shapes (background or colour) "
                     "with the Perceiver trunk and 1,024 Fourier position queries")


@hookimpl
def register_eval_tasks(register: Register) -> None:
    register("segmentation", segmentation.SegmentationTask, summary=segmentation.SUMMARY)

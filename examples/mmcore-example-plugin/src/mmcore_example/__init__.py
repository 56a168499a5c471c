"""An example third-party mmcore plugin: a tabular modality (rows of numeric features).

mmcore finds this module through the ``mmcore.plugins`` entry point in pyproject.toml and
calls the hooks below with a ``register`` callback, one per kind of component. Nothing is
registered by importing the module; only the hooks register.
"""

from __future__ import annotations

from pathlib import Path

from mmcore import hookimpl
from mmcore.hookspecs import Register

from .dataset import SyntheticTabular, SyntheticTabularConfig
from .encoder import TabularTransformerConfig, build_tabular_transformer
from .preprocess import TabularPreprocessConfig, TabularPreprocessor, example_rows
from .tokenizer import FeatureTokensConfig, build_feature_tokenizer, example_features

__version__ = "0.2.0"
SPECS = Path(__file__).resolve().parent / "specs"


@hookimpl
def register_preprocessors(register: Register) -> None:
    register("tabular", TabularPreprocessor.from_config, config=TabularPreprocessConfig,
             tiny={"num_features": 4}, example=example_rows,
             summary="rows of numbers -> (B, F) float32, optional standardisation")


@hookimpl
def register_tokenizers(register: Register) -> None:
    register("feature-tokens", build_feature_tokenizer, config=FeatureTokensConfig,
             tiny={"num_features": 4, "width": 16}, example=example_features,
             summary="one token per numeric feature (FT-Transformer) + CLS")


@hookimpl
def register_encoders(register: Register) -> None:
    register("tabular-transformer", build_tabular_transformer, config=TabularTransformerConfig,
             tiny={"layers": 1, "heads": 2},
             summary="transformer over feature tokens, missing values masked")


@hookimpl
def register_datasets(register: Register) -> None:
    register("synthetic-tabular", SyntheticTabular.from_config, config=SyntheticTabularConfig,
             tiny={"num_features": 4, "train_size": 32, "eval_size": 16},
             summary="Gaussian class clusters of numeric features, generated on the fly")


@hookimpl
def register_presets(register: Register) -> None:
    register("tabular-classifier-tiny", SPECS / "tabular-classifier-tiny.yaml",
             summary="tiny FT-Transformer-style classifier of 8 numeric features")

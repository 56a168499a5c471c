"""CLAP and AudioCLIP: audio-text (and image) contrastive models.

Components: the ``clap-audio`` log-mel preprocessor, HTSAT (``htsat-patch-embedding`` +
``swin-transformer``), RoBERTa (``roberta-embedding`` + ``bert-encoder``), the ``late-mlp``
fusion (MLP projection heads), the ``two-scale-contrastive`` objective, the ``hf-clap``
weight importer, and the ``shapes-sounds`` and ``audio-folder`` datasets. Preset
``audioclip-tiny`` trains image, text and audio towers together on shapes-sounds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmcore import hookimpl
from mmcore.cost import zero_cost
from mmcore.hookspecs import Register
from mmcore_clap.bert import BertEncoderConfig, bert_encoder_cost, build_bert_encoder
from mmcore_clap.captions import (
    AudioCaptioningTask,
    ShapesSoundsCaptionsConfig,
    ShapesSoundsCaptionsDataset,
)
from mmcore_clap.datasets import (
    AudioFolderConfig,
    AudioFolderDataset,
    ShapesSoundsConfig,
    ShapesSoundsDataset,
)
from mmcore_clap.export import HFClapConverter
from mmcore_clap.htsat_embedding import (
    HTSATEmbeddingConfig,
    build_htsat_embedding,
    example_spectrograms,
    htsat_embedding_cost,
)
from mmcore_clap.objective import (
    TwoScaleContrastiveConfig,
    build_two_scale_contrastive,
    two_scale_contrastive_cost,
)
from mmcore_clap.preprocess import ClapAudioConfig, ClapAudioPreprocessor
from mmcore_clap.projection import LateMLPConfig, build_late_mlp, late_mlp_cost
from mmcore_clap.roberta import (
    RobertaEmbeddingConfig,
    build_roberta_embedding,
    example_roberta_ids,
    roberta_embedding_cost,
)
from mmcore_clap.swin import SwinConfig, build_swin, example_grid, swin_cost

__version__ = "0.1.0"

SPECS = Path(__file__).resolve().parent / "specs"


def example_clap_waveforms(preprocessor: ClapAudioPreprocessor, batch_size: int,
                           generator: torch.Generator) -> list[Any]:
    """A short waveform (repeat-padded), a long one (cropped) and one at another sample
    rate (resampled), for the conformance suite."""
    samples, rate = preprocessor.cfg.max_samples, preprocessor.cfg.sample_rate
    out: list[Any] = []
    for i in range(batch_size):
        noise = 0.1 * torch.randn(samples // 3 + 2 * samples * (i % 2) + 7 * i,
                                  generator=generator).numpy()
        out.append((noise, rate // 2) if i % 3 == 2 else noise.astype(np.float32))
    return out


@hookimpl
def register_preprocessors(register: Register) -> None:
    register("clap-audio", ClapAudioPreprocessor.from_config, config=ClapAudioConfig,
             tiny={"sample_rate": 8000, "n_fft": 64, "hop_length": 32, "n_mels": 8,
                   "max_length_s": 0.1, "f_min": 0, "f_max": 4000},
             example=example_clap_waveforms, cost=zero_cost,
             summary="WAV paths or waveforms -> CLAP log-mel dB (B, frames, n_mels), as "
                     "transformers' ClapFeatureExtractor")


@hookimpl
def register_tokenizers(register: Register) -> None:
    register("htsat-patch-embedding", build_htsat_embedding, config=HTSATEmbeddingConfig,
             tiny={"width": 8, "n_mels": 8, "spec_size": 16}, example=example_spectrograms,
             cost=htsat_embedding_cost,
             summary="HTSAT: batch-normed log-mel folded into a square image -> conv patches")
    register("roberta-embedding", build_roberta_embedding, config=RobertaEmbeddingConfig,
             tiny={"vocab_size": 50, "width": 16, "max_positions": 20},
             example=example_roberta_ids, cost=roberta_embedding_cost,
             summary="RoBERTa: word + token-type + padding-offset positions, LayerNorm")


@hookimpl
def register_encoders(register: Register) -> None:
    register("swin-transformer", build_swin, config=SwinConfig,
             tiny={"width": 8, "grid_size": 4, "depths": [2, 1], "heads": [2, 2],
                   "window_size": 2},
             example=example_grid, cost=swin_cost,
             summary="Swin / HTSAT: shifted-window attention with relative-position bias, "
                     "patch merging between stages")
    register("bert-encoder", build_bert_encoder, config=BertEncoderConfig,
             tiny={"layers": 2, "heads": 2}, cost=bert_encoder_cost,
             summary="BERT / RoBERTa post-norm transformer encoder")


@hookimpl
def register_fusions(register: Register) -> None:
    register("late-mlp", build_late_mlp, config=LateMLPConfig,
             tiny={"embed_dim": 8, "hidden_dim": 6, "tanh_pooler": ["beta"],
                   "pooling": {"beta": "cls"}},
             cost=late_mlp_cost,
             summary="late fusion with Linear-act-Linear projection heads (CLAP), optional "
                     "BERT tanh pooler")


@hookimpl
def register_objectives(register: Register) -> None:
    register("two-scale-contrastive", build_two_scale_contrastive,
             config=TwoScaleContrastiveConfig, tiny={"pairs": [["alpha", "beta"]]},
             cost=two_scale_contrastive_cost,
             summary="symmetric InfoNCE with a learned logit scale per direction (CLAP's "
                     "logit_scale_a / logit_scale_t)")


@hookimpl
def register_datasets(register: Register) -> None:
    register("shapes-sounds", ShapesSoundsDataset.from_config, config=ShapesSoundsConfig,
             tiny={"image_size": 16, "train_size": 64, "eval_size": 24, "seconds": 0.1},
             summary="the shapes data plus a synthetic sound per item: colour = pitch, "
                     "shape = rhythm")
    register("shapes-sounds-captions", ShapesSoundsCaptionsDataset.from_config,
             config=ShapesSoundsCaptionsConfig,
             tiny={"image_size": 16, "train_size": 64, "eval_size": 24, "seconds": 0.1},
             summary="shapes-sounds audio with the caption 'a <colour> <shape>' as byte ids")
    register("audio-folder", AudioFolderDataset.from_config, config=AudioFolderConfig,
             summary="audio files in one subfolder per class (zero-shot evaluation)")


@hookimpl
def register_converters(register: Register) -> None:
    register("hf-clap", HFClapConverter,
             summary="Hugging Face ClapModel folder (config.json + model.safetensors + "
                     "tokenizer.json), unfused HTSAT only, import and export")


@hookimpl
def register_presets(register: Register) -> None:
    register("audioclip-tiny", SPECS / "audioclip-tiny.yaml",
             summary="tiny AudioCLIP (image, text and audio towers, late fusion, contrastive "
                     "over the three pairs) that trains on the built-in shapes-sounds data in "
                     "minutes on a CPU")
    register("audiocap-tiny", SPECS / "audiocap-tiny.yaml",
             summary="tiny audio captioner (audio transformer + byte-level captioning "
                     "decoder) that captions the shapes-sounds audio; eval: --task "
                     "audio-captioning")


@hookimpl
def register_eval_tasks(register: Register) -> None:
    register("audio-captioning", AudioCaptioningTask,
             summary="greedy captions of held-out sounds: key-word accuracy (colour, shape), "
                     "exact match, word F1, BLEU-1")

"""mmcore's audio modality: WAV/waveform -> Whisper log-mel preprocessor, Whisper's conv
stem tokenizer and a transformer encoder."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from mmcore import hookimpl
from mmcore.cost import zero_cost
from mmcore.hookspecs import Register
from mmcore_audio.backends import read_audio
from mmcore_audio.encoder import (
    AudioTransformerConfig,
    audio_transformer_cost,
    build_audio_transformer,
)
from mmcore_audio.preprocess import AudioPreprocessConfig, AudioPreprocessor, mono_samples
from mmcore_audio.resample import resample
from mmcore_audio.tokenizer import (
    ConvStemConfig,
    build_conv_stem,
    conv_stem_cost,
    example_features,
)
from mmcore_audio.wav import check_sample_rate, decode_wav, read_wav

__version__ = "0.1.0"

#: public API for other plugins: WAV decoding (paths and bytes), any audio file
#: (``read_audio``: WAV built in, FLAC/OGG/MP3 with soundfile) and band-limited resampling
__all__ = ["check_sample_rate", "decode_wav", "mono_samples", "read_audio", "read_wav",
           "resample"]


def example_waveforms(preprocessor: Any, batch_size: int,
                      generator: torch.Generator) -> list[tuple[np.ndarray, int]]:
    """Noise bursts of differing lengths and sample rates, for the conformance suite."""
    rates = [16_000, 8_000, 44_100]
    out = []
    for i in range(batch_size):
        rate = rates[i % len(rates)]
        length = rate // 20 + 97 * i  # about 50 ms, trimmed or padded by the preprocessor
        out.append((0.1 * torch.randn(length, generator=generator).numpy(), rate))
    return out


@hookimpl
def register_preprocessors(register: Register) -> None:
    register("audio", AudioPreprocessor.from_config, config=AudioPreprocessConfig,
             tiny={"pad_to_seconds": 0.05}, example=example_waveforms,
             cost=zero_cost,
             summary="WAV paths or waveforms -> Whisper log-mel features (B, n_mels, frames)")


@hookimpl
def register_tokenizers(register: Register) -> None:
    register("conv-stem", build_conv_stem, config=ConvStemConfig,
             tiny={"width": 16, "n_mels": 8, "frames": 12}, example=example_features,
             cost=conv_stem_cost,
             summary="Whisper's two conv1d layers (stride 2) + sinusoidal positions")


@hookimpl
def register_encoders(register: Register) -> None:
    register("audio-transformer", build_audio_transformer, config=AudioTransformerConfig,
             tiny={"layers": 1, "heads": 2}, cost=audio_transformer_cost,
             summary="pre-norm transformer encoder with a final norm (Whisper's encoder)")

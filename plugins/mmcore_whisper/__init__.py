"""mmcore's Whisper family: the ``whisper-decoder`` head (Whisper's text decoder with a
KV cache), the ``hf-whisper`` converter (Hugging Face folders -> mmcore) and decoding
behind ``mmcore transcribe``: greedy, beam search and sampling through the one generation
loop (``runner``: the decoder as an ``mmcore.generation.Decoder``; ``decoding``: the
timestamp and suppression rules as a logit processor), 30 s windows of many files batched
(``transcribe``), and openai-whisper's policy around each window (``policy``: temperature
fallback, no-speech, prompts; ``options``), word timestamps (``alignment``) and transcript
files (``formats``). Fine-tuning: the ``whisper-lm`` objective and the ``audio-text-folder``
dataset.

A Whisper model is an ordinary mmcore composition: the ``audio`` modality (log-mel
preprocessor, ``conv-stem`` tokenizer, ``audio-transformer`` encoder), ``late`` fusion
(which passes the audio tokens through) and this plugin's decoder head.
"""

from __future__ import annotations

from mmcore import hookimpl
from mmcore.hookspecs import Register
from mmcore_whisper import cli, finetune
from mmcore_whisper.convert import make_converter
from mmcore_whisper.datasets import AudioTextFolderConfig, AudioTextFolderDataset
from mmcore_whisper.decoder import (
    WhisperDecoderConfig,
    build_whisper_decoder,
    tiny_tokens,
    whisper_decoder_cost,
)
from mmcore_whisper.objective import (
    TINY_DECODER,
    WhisperLMConfig,
    build_whisper_lm,
    example_whisper_lm,
)

__version__ = "0.1.0"


@hookimpl
def register_heads(register: Register) -> None:
    # the conformance suite's context tokens: "alpha", width 16
    register("whisper-decoder", build_whisper_decoder, config=WhisperDecoderConfig,
             tiny={"context": "alpha", "vocab_size": 16, "width": 16, "layers": 1, "heads": 2,
                   "ffn_dim": 32, "max_positions": 8, "tokens": tiny_tokens()},
             cost=whisper_decoder_cost,
             summary="Whisper's text decoder (learned positions, cross-attention to the "
                     "audio, tied output); KV-cached greedy/beam decoding with timestamps")


@hookimpl
def register_converters(register: Register) -> None:
    register("hf-whisper", make_converter,
             summary="Hugging Face Whisper folder (config.json, model.safetensors, "
                     "tokenizer.json), tiny to large-v3 and .en, import and export")


@hookimpl
def register_objectives(register: Register) -> None:
    register("whisper-lm", build_whisper_lm, config=WhisperLMConfig,
             tiny={"decoder": TINY_DECODER}, example=example_whisper_lm,
             summary="fine-tuning Whisper: teacher-forced next-token loss of the "
                     "whisper-decoder head on transcripts behind the task prompt")


@hookimpl
def register_datasets(register: Register) -> None:
    register("audio-text-folder", AudioTextFolderDataset.from_config,
             config=AudioTextFolderConfig,
             summary="speech clips with a .txt transcript beside each (train/eval split by "
                     "a seeded hash of the path)")


@hookimpl
def register_commands(register: Register) -> None:
    register("transcribe", cli.add_arguments, cli.run, summary=cli.SUMMARY)
    register("whisper-spec", finetune.add_arguments, finetune.run, summary=finetune.SUMMARY)

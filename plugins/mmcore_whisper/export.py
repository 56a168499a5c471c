"""mmcore Whisper -> a Hugging Face folder that ``WhisperForConditionalGeneration``,
``AutoTokenizer`` and ``WhisperFeatureExtractor`` load, and that ``hf-whisper`` imports back.

Writes ``config.json`` and ``generation_config.json`` (the special tokens, languages, tasks,
suppress lists and alignment heads of the ``whisper-decoder`` head), ``model.safetensors``
(``model.encoder.*`` / ``model.decoder.*``; the output projection stays tied), the
tokenizer files the model carries and ``preprocessor_config.json``. The encoder's ``k_proj``
biases must be zero (Whisper has none); a fine-tuned model whose are not is refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import Tensor

from mmcore.convert import hf
from mmcore.convert.hf_export import token_names, write_json, write_tokenizer, write_weights
from mmcore.errors import CheckpointError
from mmcore_whisper.decoder import WhisperDecoder
from mmcore_whisper.keys import HEAD, HF_TO_MMCORE

#: mmcore_audio's fixed feature settings (16 kHz, 25 ms window, 10 ms hop)
SAMPLE_RATE, N_FFT, HOP_LENGTH = 16_000, 400, 160


def _parts(model: Any) -> tuple[str, WhisperDecoder, Any, Any]:
    """(head name, the whisper-decoder head, the conv stem, the audio encoder's validated
    config); CheckpointError when the model is not Whisper's composition."""
    from mmcore.plugins import get_registry
    from mmcore.spec import params_of

    heads = [(n, h) for n, h in model.heads.items() if isinstance(h, WhisperDecoder)]
    if len(heads) != 1:
        raise CheckpointError("hf-whisper exports a model with one whisper-decoder head")
    name, head = heads[0]
    audio = head.cfg.context
    spec = model.spec
    modality = spec.modalities.get(audio)
    types = (getattr(modality, "tokenizer", None), getattr(modality, "encoder", None))
    if [getattr(t, "type", None) for t in types] != ["conv-stem", "audio-transformer"]:
        raise CheckpointError(f"hf-whisper exports modality {audio!r} as conv-stem + "
                              "audio-transformer (Whisper's encoder)")
    if sorted(spec.modalities) != [audio] or spec.fusion.type != "late":
        raise CheckpointError("hf-whisper exports an audio-only model with late fusion")
    encoder = params_of(get_registry(), "encoder", modality.encoder)
    return name, head, model.tokenizers[audio], encoder


def _int_ratio(width: int, ratio: float) -> int:
    return int(width * ratio)


def hf_config(head: WhisperDecoder, stem: Any, encoder_cfg: Any) -> dict[str, Any]:
    """config.json of ``WhisperForConditionalGeneration``."""
    cfg, tokens = head.cfg, head.cfg.tokens
    if encoder_cfg.act != cfg.act:
        raise CheckpointError(f"encoder activation {encoder_cfg.act!r} differs from the "
                              f"decoder's {cfg.act!r}; Whisper has one activation_function")
    if stem.cfg.width != cfg.width:
        raise CheckpointError(f"encoder width {stem.cfg.width} differs from the decoder's "
                              f"{cfg.width}; Whisper has one d_model")
    return {
        "architectures": ["WhisperForConditionalGeneration"], "model_type": "whisper",
        "vocab_size": cfg.vocab_size, "d_model": cfg.width, "num_mel_bins": stem.cfg.n_mels,
        "encoder_layers": encoder_cfg.layers, "encoder_attention_heads": encoder_cfg.heads,
        "encoder_ffn_dim": _int_ratio(cfg.width, encoder_cfg.mlp_ratio),
        "decoder_layers": cfg.layers, "decoder_attention_heads": cfg.heads,
        "decoder_ffn_dim": cfg.hidden, "max_source_positions": stem.cfg.tokens,
        "max_target_positions": cfg.max_positions,
        "activation_function": hf.hf_activation(cfg.act), "scale_embedding": False,
        "tie_word_embeddings": True, "decoder_start_token_id": tokens.start,
        "eos_token_id": tokens.eos, "pad_token_id": tokens.eos, "bos_token_id": tokens.eos,
        "suppress_tokens": list(tokens.suppress),
        "begin_suppress_tokens": list(tokens.begin_suppress), "torch_dtype": "float32",
    }


def generation_config(head: WhisperDecoder) -> dict[str, Any]:
    """generation_config.json: what ``hf-whisper`` reads the head's tokens from."""
    tokens = head.cfg.tokens
    out: dict[str, Any] = {
        "decoder_start_token_id": tokens.start, "eos_token_id": tokens.eos,
        "pad_token_id": tokens.eos, "bos_token_id": tokens.eos,
        "is_multilingual": tokens.multilingual, "suppress_tokens": list(tokens.suppress),
        "begin_suppress_tokens": list(tokens.begin_suppress), "return_timestamps": False}
    optional = {"no_timestamps_token_id": tokens.no_timestamps, "max_length": tokens.max_length,
                "max_initial_timestamp_index": tokens.max_initial_timestamp_index}
    out.update({k: v for k, v in optional.items() if v is not None})
    if tokens.multilingual:
        out["lang_to_id"] = {f"<|{code}|>": i for code, i in tokens.languages.items()}
        out["task_to_id"] = dict(tokens.tasks)
    if tokens.alignment_heads is not None:
        out["alignment_heads"] = [list(p) for p in tokens.alignment_heads]
    return out


def hf_state(model: Any, head_name: str) -> dict[str, Tensor]:
    """The model's tensors under WhisperForConditionalGeneration's keys."""
    state: dict[str, Tensor] = {}
    for key, value in model.state_dict().items():
        if key.startswith("objectives."):
            continue
        if key.startswith("encoders.") and key.endswith("attn.k_proj.bias"):
            if value.count_nonzero():
                raise CheckpointError(f"{key} is not zero: Whisper's encoder k_proj has no "
                                      "bias, so this model cannot be exported to hf-whisper")
            continue
        state[key.replace(f"heads.{head_name}.", f"heads.{HEAD}.", 1)] = value
    back = HF_TO_MMCORE.inverse(target="Hugging Face Whisper")
    renamed = back.apply(state, source="the mmcore model")
    return {f"model.{k}": v for k, v in renamed.items()}


def feature_extractor(n_mels: int, frames: int) -> dict[str, Any]:
    """preprocessor_config.json for ``WhisperFeatureExtractor``."""
    samples = frames * HOP_LENGTH
    return {"feature_extractor_type": "WhisperFeatureExtractor", "feature_size": n_mels,
            "sampling_rate": SAMPLE_RATE, "hop_length": HOP_LENGTH, "n_fft": N_FFT,
            "chunk_length": samples // SAMPLE_RATE, "n_samples": samples,
            "nb_max_frames": frames, "padding_side": "right", "padding_value": 0.0,
            "return_attention_mask": False, "processor_class": "WhisperProcessor"}


def _tokenizer(model: Any, head: WhisperDecoder, head_name: str, out: Path) -> bool:
    from mmcore.assets import asset_files

    files = asset_files(model).get(f"heads.{head_name}.tokens.tokenizer")
    if not files:
        return False
    content, *_ = files.values()
    eos = head.cfg.tokens.eos
    special = token_names(content, {"bos_token": eos, "eos_token": eos, "pad_token": eos,
                                    "unk_token": eos})
    write_tokenizer(out, content, special, sidecars=dict(list(files.items())[1:]),
                    model_max_length=head.cfg.max_positions,
                    extra={"processor_class": "WhisperProcessor"})
    return True


def export_folder(model: Any, out: Path) -> None:
    """Write ``model`` (an mmcore Whisper composition) as an HF Whisper folder at ``out``.
    Without a tokenizer.json (none named by the head) the folder holds no tokenizer files;
    ``hf-whisper`` still imports it, but transcripts cannot be turned into text."""
    head_name, head, stem, encoder = _parts(model)
    config = hf_config(head, stem, encoder)
    tensors = hf_state(model, head_name)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / hf.CONFIG, config)
    write_json(out / "generation_config.json", generation_config(head))
    write_weights(out, tensors)
    write_json(out / "preprocessor_config.json", feature_extractor(stem.cfg.n_mels,
                                                                   stem.cfg.frames))
    _tokenizer(model, head, head_name, out)

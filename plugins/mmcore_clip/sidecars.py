"""The files beside CLIP weights: JSON configs, the tokenizer and image preprocessing.

They become the spec's preprocessors: ``hf-tokenizer`` on ``tokenizer.json`` (special
tokens from ``tokenizer_config.json`` / ``special_tokens_map.json``) and ``image`` with the
mean/std of ``preprocessor_config.json`` (Hugging Face) or ``open_clip_config.json``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mmcore.convert.hf import read_json_object
from mmcore.errors import CheckpointError
from mmcore_clip.hf_clip import hf_tokenizer_preprocessor

TOKENIZER_JSON = "tokenizer.json"
#: tokenizer files an export copies beside tokenizer.json when they exist
TOKENIZER_SIDECARS = ("tokenizer_config.json", "special_tokens_map.json", "vocab.json",
                      "merges.txt")
EOT, SOT = "<|endoftext|>", "<|startoftext|>"


def read_mapping(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``, or {} when the file does not exist."""
    return read_json_object(path, missing_ok=True)


def special_token(folder: Path, name: str, default: str) -> str:
    """``name`` (e.g. ``eos_token``) from tokenizer_config.json or special_tokens_map.json;
    values are strings or ``{"content": ...}`` objects."""
    for file in ("tokenizer_config.json", "special_tokens_map.json"):
        value = read_mapping(folder / file).get(name)
        if isinstance(value, Mapping):
            value = value.get("content")
        if isinstance(value, str) and value:
            return value
    return default


def check_tokenizer(path: Path, eos_token: str, vocab_size: int) -> int:
    """The EOT id of ``path``; CheckpointError if the tokenizer cannot serve the model:
    unreadable, no EOT, sequences that do not end with it, or ids past ``vocab_size``."""
    from tokenizers import Tokenizer

    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises plain Exception
        raise CheckpointError(f"{path} is not a readable tokenizers file: {exc}") from None
    tokenizer.no_padding()  # as the hf-tokenizer preprocessor does
    tokenizer.no_truncation()
    eos_id = tokenizer.token_to_id(eos_token)
    if eos_id is None:
        raise CheckpointError(f"{path} has no token {eos_token!r} (the end-of-text token)")
    ids = tokenizer.encode("a photo").ids
    if not ids or ids[-1] != eos_id:
        raise CheckpointError(f"{path} does not end an encoded text with {eos_token!r} (its "
                              "post-processor must append it): CLIP pools text at that token")
    if tokenizer.get_vocab_size() > vocab_size:
        raise CheckpointError(f"{path} has {tokenizer.get_vocab_size()} tokens but the model's "
                              f"embedding only {vocab_size}")
    return int(eos_id)


def text_preprocessor(path: Path, context_length: int, vocab_size: int) -> dict[str, Any]:
    """``hf-tokenizer`` params for ``path``, padding/truncating to ``context_length``; the
    preprocessor's mask then ends at the EOT, where mmcore (and HF) pool."""
    folder = path.parent
    pad, eos = special_token(folder, "pad_token", EOT), special_token(folder, "eos_token", EOT)
    check_tokenizer(path, eos, vocab_size)
    return hf_tokenizer_preprocessor(str(path.resolve()), context_length, pad_token=pad,
                                     eos_token=eos)


def _triple(value: Any, where: str) -> tuple[float, float, float] | None:
    if value is None:
        return None
    if (not isinstance(value, (list, tuple)) or len(value) != 3
            or not all(isinstance(v, (int, float)) for v in value)):
        raise CheckpointError(f"{where} must be three numbers, got {value!r}")
    return (float(value[0]), float(value[1]), float(value[2]))


def image_preprocessor(size: int, mean: Any = None, std: Any = None,
                       where: str = "image preprocessing") -> dict[str, Any]:
    """``image`` preprocessor params: resize the short side to ``size`` and center-crop;
    mean/std default to CLIP's."""
    params: dict[str, Any] = {"type": "image", "size": size}
    for key, value in (("mean", mean), ("std", std)):
        triple = _triple(value, f"{where} {key}")
        if triple is not None:
            params[key] = list(triple)
    return params


def hf_image_preprocessor(folder: Path, size: int) -> dict[str, Any]:
    """From ``preprocessor_config.json`` (image_mean / image_std) when it exists."""
    cfg = read_mapping(folder / "preprocessor_config.json")
    return image_preprocessor(size, cfg.get("image_mean"), cfg.get("image_std"),
                              "preprocessor_config.json")

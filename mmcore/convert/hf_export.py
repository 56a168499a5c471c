"""Writing Hugging Face folders (exports): weights, JSON files and the tokenizer files
``AutoTokenizer.from_pretrained`` reads. The reading side is :mod:`mmcore.convert.hf`.

An exporter gets the model's tokenizer files from :func:`mmcore.checkpoint.model_assets`
and writes them with :func:`write_tokenizer`; nothing here imports ``transformers``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import Tensor

from mmcore.checkpoint import atomic_write, save_tensors, write_text
from mmcore.convert.hf import SAFETENSORS
from mmcore.errors import CheckpointError

#: the tokenizer files an export writes
TOKENIZER_JSON, TOKENIZER_CONFIG, SPECIAL_TOKENS_MAP = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def write_json(path: Path, data: Any) -> None:
    """Atomically write ``data`` as indented JSON."""
    write_text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def write_weights(folder: Path, tensors: Mapping[str, Tensor]) -> Path:
    """``folder/model.safetensors`` (contiguous CPU tensors, ``format: pt`` as HF writes)."""
    return save_tensors(tensors, Path(folder) / SAFETENSORS, {"format": "pt"})


def token_names(tokenizer_json: bytes, ids: Mapping[str, int | None]) -> dict[str, str]:
    """``{"bos_token": "<s>", ...}``: the special (added) tokens of a tokenizer.json at the
    given ids (``{"bos_token": 1, ...}``). None ids, and ids of ordinary vocabulary entries
    (naming those would make transformers treat them as special), are left out;
    CheckpointError for an id the tokenizer does not have."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_str(tokenizer_json.decode("utf-8"))
    added = tokenizer.get_added_tokens_decoder()
    out = {}
    for name, idx in ids.items():
        if idx is None:
            continue
        if tokenizer.id_to_token(int(idx)) is None:
            raise CheckpointError(f"the tokenizer has no token with id {idx} ({name})")
        if int(idx) in added:
            out[name] = added[int(idx)].content
    return out


def write_tokenizer(folder: Path, tokenizer_json: bytes, special: Mapping[str, str], *,
                    sidecars: Mapping[str, bytes] | None = None,
                    tokenizer_class: str = "PreTrainedTokenizerFast",
                    model_max_length: int | None = None,
                    extra: Mapping[str, Any] | None = None) -> None:
    """Write ``tokenizer.json`` (as given), ``tokenizer_config.json`` and
    ``special_tokens_map.json`` so that ``AutoTokenizer.from_pretrained(folder)`` encodes
    as the tokenizer.json does.

    ``sidecars`` (file name -> bytes, e.g. from :func:`mmcore.assets.asset_files`) are
    written as they are: a source's own ``tokenizer_config.json`` keeps its chat template.
    The two files are generated where ``sidecars`` lacks them: ``special``
    (``{"bos_token": "<s>", ...}``), ``tokenizer_class`` (the default applies
    tokenizer.json's own normaliser and post-processor), ``model_max_length``, ``extra``.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    given = {k: v for k, v in (sidecars or {}).items() if k != TOKENIZER_JSON}
    for name, content in {TOKENIZER_JSON: tokenizer_json, **given}.items():
        atomic_write(folder / name, lambda tmp, c=content: Path(tmp).write_bytes(c))
    if TOKENIZER_CONFIG not in given:
        config: dict[str, Any] = {"tokenizer_class": tokenizer_class, **special}
        if model_max_length is not None:
            config["model_max_length"] = model_max_length
        config.update(extra or {})
        write_json(folder / TOKENIZER_CONFIG, config)
    if SPECIAL_TOKENS_MAP not in given:
        write_json(folder / SPECIAL_TOKENS_MAP, dict(special))

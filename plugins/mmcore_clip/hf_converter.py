"""The ``hf-clip`` converter: a Hugging Face ``CLIPModel`` folder <-> an mmcore model.

Import reads ``config.json`` as JSON (no ``transformers``), the weights from
``model.safetensors`` (or a sharded ``model.safetensors.index.json``, or a
``pytorch_model.bin`` through ``torch.load(weights_only=True)``) through
:mod:`mmcore.convert.hf`, and points the text preprocessor at the folder's
``tokenizer.json``. Export writes the folder back.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import Tensor

from mmcore.convert import hf
from mmcore.errors import CheckpointError
from mmcore_clip.checks import check_weights
from mmcore_clip.hf_clip import hf_clip_to_mmcore, spec_from_clip_config
from mmcore_clip.hf_config import ClipConfig, clip_config
from mmcore_clip.sidecars import TOKENIZER_JSON, hf_image_preprocessor, text_preprocessor

if TYPE_CHECKING:
    from mmcore.model import MultimodalModel

CONFIG = hf.CONFIG
WEIGHTS = hf.SAFETENSORS
SHARD_INDEX = hf.SAFETENSORS_INDEX
LEGACY_WEIGHTS = "pytorch_model.bin"
#: text config ids an export restores (they decide where transformers pools the text)
TEXT_IDS = ("pad_token_id", "bos_token_id", "eos_token_id")


def _missing_files(folder: Path) -> list[str]:
    has_weights = any((folder / n).is_file() for n in (WEIGHTS, SHARD_INDEX, LEGACY_WEIGHTS))
    return [name for name, present in ((CONFIG, (folder / CONFIG).is_file()),
                                       (WEIGHTS, has_weights),
                                       (TOKENIZER_JSON, (folder / TOKENIZER_JSON).is_file()))
            if not present]


def check_folder(folder: Path) -> None:
    """CheckpointError naming every file a CLIP folder lacks."""
    if not folder.is_dir():
        raise CheckpointError(f"{folder} is not a folder; hf-clip reads a Hugging Face CLIP "
                              f"folder ({CONFIG}, {WEIGHTS}, {TOKENIZER_JSON})")
    missing = _missing_files(folder)
    if not missing:
        return
    hint = ""
    if TOKENIZER_JSON in missing and (folder / "vocab.json").is_file():
        hint = (" (it has vocab.json/merges.txt: CLIPTokenizerFast.from_pretrained(folder)"
                ".save_pretrained(folder) writes tokenizer.json)")
    raise CheckpointError(f"{folder} is missing {', '.join(missing)}; a Hugging Face CLIP "
                          f"folder needs {CONFIG}, {WEIGHTS} and {TOKENIZER_JSON}{hint}")


def read_hf_weights(folder: Path) -> dict[str, Tensor]:
    """The folder's state dict: model.safetensors, its shards, or (weights only)
    pytorch_model.bin, as hf-clip has always read it."""
    return hf.read_weights(folder, allow_pickle=True)


def hf_to_mmcore_tensors(state: dict[str, Tensor], source: str) -> dict[str, Tensor]:
    """HF keys -> mmcore keys; CheckpointError listing the keys that do not map."""
    try:
        return hf_clip_to_mmcore(state)
    except KeyError as exc:
        raise CheckpointError(f"{source}: {exc} (a CLIPModel checkpoint is expected; heads "
                              "and other variants are not supported)") from None


def read_folder_config(folder: Path) -> ClipConfig:
    """The folder's ``config.json`` with CLIP's defaults filled in."""
    return clip_config(hf.read_config(folder))


class HFClipConverter:
    """A transformers ``CLIPModel`` folder (config.json, model.safetensors, tokenizer.json)."""

    def detect(self, source: Path) -> bool:
        return source.is_dir() and hf.config_model_type(source) == "clip"

    def to_mmcore(self, source: Path) -> tuple[dict[str, Any], dict[str, Tensor]]:
        check_folder(source)
        cfg = read_folder_config(source)
        state = read_hf_weights(source)
        check_weights(cfg, state, str(source))
        tensors = hf_to_mmcore_tensors(state, str(source))
        text = text_preprocessor(source / TOKENIZER_JSON, cfg.text["max_position_embeddings"],
                                 cfg.text["vocab_size"])
        metadata = {"converted_from": {"format": "hf-clip", "source": str(source.resolve())},
                    "hf_clip": {"text_config": {k: cfg.text[k] for k in TEXT_IDS}}}
        spec = spec_from_clip_config(
            cfg, name=source.resolve().name or "hf-clip", text_preprocessor=text,
            image_preprocessor=hf_image_preprocessor(source, cfg.vision["image_size"]),
            metadata=metadata, source="converted from transformers CLIPModel")
        return spec, tensors

    def from_mmcore(self, model: MultimodalModel, out_dir: Path) -> None:
        from mmcore_clip.hf_export import export_hf_clip

        export_hf_clip(model, out_dir)

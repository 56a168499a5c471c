"""mmcore BLIP -> a Hugging Face ``BlipForImageTextRetrieval`` (modes ``itc`` + ``itm``) or
``BlipForConditionalGeneration`` (mode ``lm``) folder that ``from_pretrained`` loads.

Writes ``config.json`` (from the spec), ``model.safetensors`` (HF keys: the inverse of the
import's key maps, q/k/v fused back into the ViT's ``qkv``), ``preprocessor_config.json``
and, when the text preprocessor reads a ``tokenizer.json``, that file with a
``tokenizer_config.json``. HF's retrieval model keeps no ITC temperature: the export
writes it as ``mmcore_itc_logit_scale`` in ``config.json`` (transformers ignores the key),
so ``mmcore import`` gives the model back unchanged. Anything HF cannot represent
(three modes at once, a momentum model, ``enc_token_id``, differing norm epsilons) is
refused with every difference named.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

import mmcore_blip.convert as convert_module
from mmcore.convert import hf
from mmcore.convert.hf_export import TOKENIZER_JSON, write_json, write_tokenizer, write_weights
from mmcore.errors import CheckpointError
from mmcore_blip.convert import (
    CAPTIONING,
    CAPTIONING_KEYS,
    LOGIT_SCALE_KEY,
    RETRIEVAL,
    RETRIEVAL_KEYS,
    TEXT_DEFAULTS,
)

#: objective type -> the name the import's key maps use
_OBJECTIVES = {"contrastive": "itc", "blip-matching": "itm", "blip-lm": "lm"}
_TYPES = (("modalities.image.tokenizer", "patch-embedding"), ("modalities.image.encoder", "vit"),
          ("modalities.text.tokenizer", "blip-text-embedding"), ("fusion", "blip"))


def _params(kind: str, ref: Any) -> Any:
    from mmcore.plugins import get_registry
    from mmcore.spec import params_of

    return params_of(get_registry(), kind, ref)


def _fail(problems: list[str]) -> CheckpointError:
    return CheckpointError("cannot export to hf-blip: " + "; ".join(problems))


def _parts(spec: Any) -> dict[str, Any]:
    """The validated configs the export reads, by short name; CheckpointError listing
    every part that does not fit."""
    refs = {path: ref for path, _, ref in spec.components()}
    wrong = [f"{path} is {getattr(refs.get(path), 'type', None)!r}, not {kind!r}"
             for path, kind in _TYPES if getattr(refs.get(path), "type", None) != kind]
    if sorted(spec.modalities) != ["image", "text"]:
        wrong.insert(0, f"the modalities must be image and text, not {sorted(spec.modalities)}")
    if wrong:
        raise _fail(wrong)
    parts = {short: _params(path.rsplit(".", 1)[-1], refs[path]) for short, path in
             (("patch", "modalities.image.tokenizer"), ("vit", "modalities.image.encoder"),
              ("embed", "modalities.text.tokenizer"), ("fusion", "fusion"))}
    for name, ref in spec.objectives.items():
        if ref.type in _OBJECTIVES:
            parts[_OBJECTIVES[ref.type]] = _params("objective", ref)
            parts[f"{_OBJECTIVES[ref.type]}_name"] = name
    return parts


def architecture(parts: dict[str, Any]) -> str:
    """Which HF class the model is; CheckpointError naming what differs from both."""
    fusion, patch, vit = parts["fusion"], parts["patch"], parts["vit"]
    modes = sorted(fusion.modes)
    problems = []
    if modes not in (["itc", "itm"], ["lm"]):
        problems.append(f"fusion modes {fusion.modes} are neither [itc, itm] "
                        f"({RETRIEVAL}) nor [lm] ({CAPTIONING})")
    arch = RETRIEVAL if modes == ["itc", "itm"] else CAPTIONING
    needed = ["itc", "itm"] if arch == RETRIEVAL else ["lm"]
    problems += [f"no {n} objective ({next(k for k, v in _OBJECTIVES.items() if v == n)})"
                 for n in needed if n not in parts]
    eps = {"the image encoder's": None, "text embedding": parts["embed"].norm_eps,
           "fusion": fusion.norm_eps}
    if arch == CAPTIONING and "lm" in parts:
        eps["blip-lm"] = parts["lm"].norm_eps
        if parts["lm"].act != fusion.act:
            problems.append(f"blip-lm act {parts['lm'].act!r} differs from the fusion's "
                            f"{fusion.act!r}")
    if len({v for v in eps.values() if v is not None}) > 1:
        problems.append(f"the text norm epsilons differ ({eps}); HF has one layer_norm_eps")
    checks = [
        (fusion.momentum is None, "a momentum model (momentum) has no HF equivalent"),
        (arch == CAPTIONING or fusion.enc_token_id is None,
         "HF's retrieval model reads the text ids as given: enc_token_id must be unset"),
        (arch == RETRIEVAL or fusion.dec_token_id is not None,
         "the captioner needs dec_token_id (HF's text_config.bos_token_id)"),
        (patch.cls_token and patch.positions == "learned" and patch.bias,
         "patch-embedding needs cls_token, learned positions and bias: true"),
        (not vit.pre_norm and vit.final_norm and vit.width in (None, patch.width),
         "vit needs pre_norm: false, final_norm: true and the patch width"),
        (patch.channels == 3, "images need 3 channels"),
    ]
    problems += [message for ok, message in checks if not ok]
    for name, act in (("vit", vit.act), ("fusion", fusion.act)):
        if act not in hf.HF_ACTIVATIONS:
            problems.append(f"{name} activation {act!r} has no HF equivalent")
    if problems:
        raise _fail(problems)
    return arch


def blip_config(spec: Any, parts: dict[str, Any], arch: str,
                logit_scale: float | None) -> dict[str, Any]:
    """config.json of the export (token ids as imported, else the lm objective's, else
    transformers' defaults)."""
    patch, vit, embed, fusion = parts["patch"], parts["vit"], parts["embed"], parts["fusion"]
    ids = {k: TEXT_DEFAULTS[k] for k in ("bos_token_id", "sep_token_id", "pad_token_id")}
    ids.update(spec.metadata.get("hf_blip", {}).get("text_config", {}))
    if arch == CAPTIONING:
        lm = parts["lm"]
        ids["bos_token_id"] = fusion.dec_token_id
        ids.update({k: v for k, v in (("sep_token_id", lm.eos_id), ("pad_token_id", lm.pad_id))
                    if v is not None})
    text = {"vocab_size": embed.vocab_size, "hidden_size": embed.width,
            "encoder_hidden_size": patch.width,
            "intermediate_size": fusion.hidden or 4 * embed.width,
            "num_hidden_layers": fusion.layers, "num_attention_heads": fusion.heads,
            "max_position_embeddings": embed.max_length,
            "hidden_act": hf.hf_activation(fusion.act), "layer_norm_eps": fusion.norm_eps,
            "is_decoder": True, **ids}
    vision = {"hidden_size": patch.width, "intermediate_size": int(patch.width * vit.mlp_ratio),
              "num_hidden_layers": vit.layers, "num_attention_heads": vit.heads,
              "image_size": patch.image_size, "patch_size": patch.patch_size,
              "hidden_act": hf.hf_activation(vit.act), "layer_norm_eps": vit.norm_eps}
    config: dict[str, Any] = {"architectures": [arch], "model_type": "blip",
                              "text_config": text, "vision_config": vision,
                              "image_text_hidden_size": fusion.embed_dim,
                              "projection_dim": fusion.embed_dim, "torch_dtype": "float32"}
    if logit_scale is not None:
        config[LOGIT_SCALE_KEY] = logit_scale
    return config


def _fuse_qkv(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """The ViT's q/k/v projections (D, D) each -> one ``qkv`` (3D, D), as BLIP stores it."""
    out = {}
    for key, value in state.items():
        head, sep, tail = key.rpartition(".attn.q_proj.")
        if sep and key.startswith("encoders.image."):
            parts = [state[f"{head}.attn.{n}.{tail}"] for n in ("q_proj", "k_proj", "v_proj")]
            out[f"{head}.qkv.{tail}"] = torch.cat(parts)
        elif not (key.startswith("encoders.image.") and (".attn.k_proj." in key
                                                         or ".attn.v_proj." in key)):
            out[key] = value
    return out


def hf_state(model: Any, parts: dict[str, Any], arch: str) -> dict[str, Tensor]:
    """The model's tensors under HF BLIP keys (the ITC temperature left out)."""
    state = {k: v.detach() for k, v in model.state_dict().items()}
    for short in ("itc", "itm", "lm"):
        name = parts.get(f"{short}_name")
        if name is not None and name != short:
            state = {(f"objectives.{short}." + k[len(f"objectives.{name}."):]
                      if k.startswith(f"objectives.{name}.") else k): v
                     for k, v in state.items()}
    state.pop("objectives.itc.logit_scale", None)
    state = _fuse_qkv(state)
    width = parts["patch"].width
    state["tokenizers.image.cls"] = state["tokenizers.image.cls"].reshape(1, 1, width)
    positions = state["tokenizers.image.positions.weight"]
    state["tokenizers.image.positions.weight"] = positions.reshape(1, -1, width)
    keys = RETRIEVAL_KEYS if arch == RETRIEVAL else CAPTIONING_KEYS
    out = keys.inverse(target="Hugging Face BLIP").apply(state, source="the mmcore model")
    if arch == CAPTIONING:  # HF ties it to predictions.bias only with tied embeddings
        out["text_decoder.cls.predictions.decoder.bias"] = \
            out["text_decoder.cls.predictions.bias"]
    return {k: v.clone().contiguous() for k, v in out.items()}  # no shared storage


def tied(tensors: dict[str, Tensor]) -> bool:
    """Whether the captioner's output projection equals its word embeddings (HF ties them
    unless ``tie_word_embeddings`` is false)."""
    decoder = tensors.get("text_decoder.cls.predictions.decoder.weight")
    words = tensors.get("text_decoder.bert.embeddings.word_embeddings.weight")
    return decoder is not None and words is not None and torch.equal(decoder, words)


def _image_processor(spec: Any, size: int) -> dict[str, Any]:
    pre = spec.modalities["image"].preprocessor
    params = _params("preprocessor", pre) if pre is not None and pre.type == "image" else None
    mean = list(params.mean) if params is not None else [0.48145466, 0.4578275, 0.40821073]
    std = list(params.std) if params is not None else [0.26862954, 0.26130258, 0.27577711]
    return {"image_processor_type": "BlipImageProcessor", "do_resize": True,
            "size": {"height": size, "width": size}, "resample": 3, "do_rescale": True,
            "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": mean,
            "image_std": std, "do_convert_rgb": True}


def tokenizer_files(model: Any) -> dict[str, bytes]:
    """The tokenizer.json the text preprocessor reads (``hf-tokenizer``) and the sidecars
    it came with (:func:`mmcore.assets.asset_files`: embedded in a checkpoint or beside an
    imported folder's file), by file name; {} for a model that reads none."""
    from mmcore.assets import asset_files

    pre = model.spec.modalities["text"].preprocessor
    if pre is None or pre.type != "hf-tokenizer":
        return {}
    files = asset_files(model).get("modalities.text.preprocessor.path", {})
    if not files:
        raise CheckpointError(f"the text preprocessor's tokenizer {pre.params.get('path')} "
                              "no longer exists")
    main = next(iter(files))
    return {TOKENIZER_JSON: files[main], **{k: v for k, v in files.items() if k != main}}


def _write_tokenizer(model: Any, out: Path, context: int) -> None:
    """tokenizer.json with the source's tokenizer_config.json / special_tokens_map.json, or
    generated ones that load it as it is (ids as the mmcore preprocessor gives them)."""
    files = tokenizer_files(model)
    if not files:
        return
    content = files.pop(TOKENIZER_JSON)
    write_tokenizer(out, content, special_tokens(content), sidecars=files,
                    model_max_length=context)


def special_tokens(data: bytes) -> dict[str, str]:
    """BERT's special tokens that a tokenizer.json has."""
    added = {t.get("content") for t in json.loads(data).get("added_tokens", [])}
    vocab = json.loads(data).get("model", {}).get("vocab", {})
    names = {"unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]",
             "cls_token": "[CLS]", "mask_token": "[MASK]"}
    return {k: v for k, v in names.items()
            if v in added or (isinstance(vocab, dict) and v in vocab)}


def export_hf_blip(model: Any, out: Path) -> None:
    """Write ``model`` as a transformers BLIP folder at ``out`` (created; files replaced)."""
    spec = getattr(model, "spec", None)
    if spec is None:
        raise CheckpointError("cannot export to hf-blip: the model has no spec")
    parts = _parts(spec)
    arch = architecture(parts)
    scale = None
    if arch == RETRIEVAL:
        value = getattr(model.objectives[parts["itc_name"]], "logit_scale", None)
        scale = float(value.detach()) if value is not None else None
    config = blip_config(spec, parts, arch, scale)
    tensors = hf_state(model, parts, arch)
    if arch == CAPTIONING:
        config["tie_word_embeddings"] = config["text_config"]["tie_word_embeddings"] = \
            tied(tensors)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_weights(out, tensors)
    write_json(out / hf.CONFIG, config)
    write_json(out / "preprocessor_config.json",
                _image_processor(spec, parts["patch"].image_size))
    _write_tokenizer(model, out, parts["embed"].max_length)


class HFBlipConverter(convert_module.HFBlipConverter):
    """The registered converter, in and out: :mod:`mmcore_blip.convert` reads the folder, this
    module writes it (kept apart, so neither imports the other)."""

    def from_mmcore(self, model: Any, out: Path) -> None:
        """Write ``model`` as an HF BLIP folder (:func:`mmcore_blip.export.export_hf_blip`)."""
        export_hf_blip(model, Path(out))

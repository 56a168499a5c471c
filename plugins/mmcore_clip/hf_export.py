"""mmcore CLIP -> a Hugging Face ``CLIPModel`` folder that ``from_pretrained`` loads.

Writes ``config.json`` (from the spec), ``model.safetensors`` (HF keys), the tokenizer
files (the ``hf-tokenizer``'s own, carried by the model; for ``byte-text`` an equivalent
tokenizer.json) and ``preprocessor_config.json``. A model whose
spec is not CLIP's shape (pre-norm ViT with CLS + causal text transformer pooled at the
EOT, late fusion with bias-free projections, a softmax contrastive objective) is refused
with every difference listed.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from torch import Tensor

from mmcore.checkpoint import atomic_write, save_tensors
from mmcore.convert.hf_export import write_tokenizer
from mmcore.errors import CheckpointError
from mmcore_clip.hf_clip import HF_ACTS, mmcore_to_hf_clip
from mmcore_clip.hf_config import LEGACY_EOS_ID, ClipConfig
from mmcore_clip.sidecars import EOT, SOT

#: (component path, registered type) the export needs
_TYPES = (("modalities.image.tokenizer", "patch-embedding"), ("modalities.image.encoder", "vit"),
          ("modalities.text.tokenizer", "token-embedding"),
          ("modalities.text.encoder", "text-transformer"), ("fusion", "late"))
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
#: byte-text's special ids (mmcore_text.preprocess)
_BYTE_IDS = {"bos_token_id": 256, "eos_token_id": 257, "pad_token_id": 258}


def _refs(spec: Any) -> dict[str, Any]:
    """Component path -> ref of the components the export reads; raises on the wrong kind."""
    if sorted(spec.modalities) != ["image", "text"]:
        raise CheckpointError("cannot export to hf-clip: the model needs exactly the "
                              f"modalities image and text, it has {sorted(spec.modalities)}")
    refs = {path: ref for path, _, ref in spec.components()}
    wrong = [f"{path} is {getattr(refs.get(path), 'type', None)!r}, not {kind!r}"
             for path, kind in _TYPES if getattr(refs.get(path), "type", None) != kind]
    if wrong:
        raise CheckpointError("cannot export to hf-clip: " + "; ".join(wrong))
    return refs


def _params(kind: str, ref: Any) -> Any:
    """The validated config of ``ref`` (defaults filled in)."""
    from mmcore.plugins import get_registry
    from mmcore.spec import params_of

    return params_of(get_registry(), kind, ref)


def _contrastive(spec: Any) -> tuple[str, Any]:
    """(name, ref) of the model's contrastive objective."""
    found = [(n, r) for n, r in spec.objectives.items() if r.type == "contrastive"]
    if len(found) != 1:
        raise CheckpointError("cannot export to hf-clip: the model needs one contrastive "
                              f"objective (its logit scale); it has {sorted(spec.objectives)}")
    return found[0]


def _tower_problems(name: str, encoder: Any, width: int) -> list[str]:
    problems = []
    if encoder.width not in (None, width):
        problems.append(f"{name} encoder width {encoder.width} differs from its tokens' {width}")
    if encoder.act not in HF_ACTS:
        problems.append(f"{name} activation {encoder.act!r} has no HF equivalent")
    if not encoder.final_norm:
        problems.append(f"{name} encoder needs final_norm: true")
    return problems


def _problems(p: dict[str, Any], objective: Any) -> list[str]:
    patch, vit, tok, txt, late = (p[k] for k in ("patch", "vit", "tok", "txt", "late"))
    problems = _tower_problems("image", vit, patch.width) + _tower_problems("text", txt, tok.width)
    checks = [
        (patch.cls_token and patch.positions == "learned" and not patch.bias,
         "patch-embedding needs cls_token, learned positions and no bias"),
        (vit.pre_norm, "vit needs pre_norm: true"),
        (tok.positions == "learned", "token-embedding needs learned positions"),
        (txt.causal, "text-transformer needs causal: true"),
        (late.embed_dim is not None and not late.projection_bias and late.combine == "none",
         "late fusion needs embed_dim, projection_bias: false and combine: none"),
        (late.pooling.get("image") == "cls" and late.pooling.get("text") == "eot",
         "late fusion needs pooling {image: cls, text: eot}"),
        (objective.params.get("loss", "softmax") == "softmax",
         "the contrastive objective needs loss: softmax"),
    ]
    return problems + [message for ok, message in checks if not ok]


def _towers(p: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    patch, vit, tok, txt = p["patch"], p["vit"], p["tok"], p["txt"]
    vision = {"hidden_size": patch.width, "intermediate_size": int(patch.width * vit.mlp_ratio),
              "num_hidden_layers": vit.layers, "num_attention_heads": vit.heads,
              "num_channels": patch.channels, "image_size": patch.image_size,
              "patch_size": patch.patch_size, "hidden_act": HF_ACTS[vit.act],
              "layer_norm_eps": vit.norm_eps}
    text = {"vocab_size": tok.vocab_size, "hidden_size": tok.width,
            "intermediate_size": int(tok.width * txt.mlp_ratio),
            "num_hidden_layers": txt.layers, "num_attention_heads": txt.heads,
            "max_position_embeddings": tok.context_length, "hidden_act": HF_ACTS[txt.act],
            "layer_norm_eps": txt.norm_eps}
    return vision, text


def clip_config_of(spec: Any, logit_scale: float) -> ClipConfig:
    """The HF CLIP architecture of an mmcore spec; CheckpointError lists what does not fit."""
    refs = _refs(spec)
    names = {"patch": "modalities.image.tokenizer", "vit": "modalities.image.encoder",
             "tok": "modalities.text.tokenizer", "txt": "modalities.text.encoder",
             "late": "fusion"}
    p = {short: _params(path.rsplit(".", 1)[-1], refs[path]) for short, path in names.items()}
    problems = _problems(p, _contrastive(spec)[1])
    if problems:
        raise CheckpointError("cannot export to hf-clip: " + "; ".join(problems))
    vision, text = _towers(p)
    text.update(text_ids(spec, text["vocab_size"]))
    legacy = spec.metadata.get("hf_clip", {}).get("text_config", {}).get("eos_token_id")
    if text["eos_token_id"] == LEGACY_EOS_ID != legacy and text["vocab_size"] - 1 != 2:
        raise CheckpointError("cannot export to hf-clip: the EOT token has id 2, which "
                              "transformers reads as a legacy config and pools at "
                              "argmax(input_ids) instead; the outputs would differ")
    return ClipConfig(vision=vision, text=text, projection_dim=p["late"].embed_dim,
                      logit_scale_init_value=logit_scale)


def text_ids(spec: Any, vocab_size: int) -> dict[str, Any]:
    """pad/bos/eos ids for the HF text config: as imported, else from the preprocessor
    (HF pools at the first ``eos_token_id``, mmcore at the last real token: the EOT)."""
    saved = spec.metadata.get("hf_clip", {}).get("text_config")
    if isinstance(saved, dict) and set(saved) >= {"eos_token_id"}:
        return dict(saved)
    pre = spec.modalities["text"].preprocessor
    if pre is not None and pre.type == "byte-text":
        return dict(_BYTE_IDS)
    if pre is not None and pre.type == "hf-tokenizer":
        return _tokenizer_ids(pre.params)
    return {"bos_token_id": vocab_size - 2, "eos_token_id": vocab_size - 1, "pad_token_id": 0}


def _tokenizer_ids(params: dict[str, Any]) -> dict[str, Any]:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(params["path"]))
    eos = tokenizer.token_to_id(params.get("eos_token") or EOT)
    pad = tokenizer.token_to_id(params["pad_token"]) if params.get("pad_token") else 0
    return {"bos_token_id": tokenizer.token_to_id(SOT), "eos_token_id": eos,
            "pad_token_id": pad}


def hf_state(model: Any, objective: str) -> dict[str, Tensor]:
    """The model's tensors under HF keys (the contrastive objective's logit scale included,
    whatever the objective is called)."""
    state = dict(model.state_dict())
    own = f"objectives.{objective}.logit_scale"
    if own in state:
        state["objectives.contrastive.logit_scale"] = state.pop(own)
    try:
        return mmcore_to_hf_clip(state)
    except KeyError as exc:
        raise CheckpointError(f"cannot export to hf-clip: {exc}") from None


def _write_json(path: Path, data: Any) -> None:
    text = json.dumps(data, indent=2) + "\n"
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def _write_tokenizer(model: Any, spec: Any, out: Path) -> None:
    """The tokenizer files: an ``hf-tokenizer``'s tokenizer.json with the sidecars the model
    carries (:func:`mmcore.assets.asset_files`; a tokenizer_config.json is generated when
    there is none), or for ``byte-text`` an equivalent tokenizer.json. Other text
    preprocessors: none (the folder holds the weights; importing it needs a tokenizer.json)."""
    from mmcore.assets import asset_files
    from mmcore_text.preprocess import BYTE_SPECIAL, byte_text_tokenizer_json

    pre = spec.modalities["text"].preprocessor
    if pre is not None and pre.type == "byte-text":
        params = _params("preprocessor", pre)
        write_tokenizer(out, byte_text_tokenizer_json(params.lowercase), BYTE_SPECIAL,
                        model_max_length=params.context_length)
        return
    if pre is None or pre.type != "hf-tokenizer":
        return
    files = asset_files(model).get("modalities.text.preprocessor.path")
    if not files:
        raise CheckpointError(f"the text preprocessor's tokenizer {pre.params['path']} no "
                              "longer exists (and the model does not carry it)")
    content, *_ = files.values()
    sidecars = dict(list(files.items())[1:])
    special = {} if "tokenizer_config.json" in sidecars else _tokenizer_config(pre.params,
                                                                              content)
    cls = special.pop("tokenizer_class", "CLIPTokenizer")
    length = special.pop("model_max_length", None)
    write_tokenizer(out, content, special, sidecars=sidecars, tokenizer_class=cls,
                    model_max_length=length)


def _tokenizer_config(params: dict[str, Any], content: bytes) -> dict[str, Any]:
    """A minimal tokenizer_config.json: CLIPTokenizer for BPE vocabularies."""
    model_type = json.loads(content).get("model", {}).get("type")
    eos = params.get("eos_token") or EOT
    return {"tokenizer_class": "CLIPTokenizer" if model_type == "BPE" else
            "PreTrainedTokenizerFast", "model_max_length": params["context_length"],
            "bos_token": SOT, "eos_token": eos, "unk_token": eos,
            "pad_token": params.get("pad_token") or eos}


def image_processor_config(spec: Any) -> dict[str, Any]:
    """preprocessor_config.json for transformers' CLIPImageProcessor."""
    pre = spec.modalities["image"].preprocessor
    image = spec.modalities["image"].tokenizer.params["image_size"]
    params = _params("preprocessor", pre) if pre is not None and pre.type == "image" else None
    size = params.size if params is not None else image
    mean, std = (params.mean, params.std) if params is not None else (CLIP_MEAN, CLIP_STD)
    return {"image_processor_type": "CLIPImageProcessor", "do_resize": True,
            "size": {"shortest_edge": size}, "do_center_crop": True,
            "crop_size": {"height": size, "width": size}, "resample": 3, "do_rescale": True,
            "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": list(mean),
            "image_std": list(std), "do_convert_rgb": True}


def export_hf_clip(model: Any, out: Path) -> None:
    """Write ``model`` as a transformers ``CLIPModel`` folder at ``out``."""
    spec = getattr(model, "spec", None)
    if spec is None:
        raise CheckpointError("cannot export to hf-clip: the model has no spec")
    name, _ = _contrastive(spec)
    logit_scale = getattr(model.objectives[name], "logit_scale", None)
    cfg = clip_config_of(spec, float(logit_scale.detach()) if logit_scale is not None
                         else math.log(1 / 0.07))
    tensors = hf_state(model, name)
    out.mkdir(parents=True, exist_ok=True)
    save_tensors(tensors, out / "model.safetensors", {"format": "pt"})
    _write_json(out / "config.json", cfg.to_hf())
    _write_tokenizer(model, spec, out)
    _write_json(out / "preprocessor_config.json", image_processor_config(spec))

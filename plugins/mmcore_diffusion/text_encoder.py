"""The CLIP text encoder that conditions the U-Net, imported from a diffusers
``text_encoder/`` folder (a transformers ``CLIPTextModel``).

It is mmcore's own text tower (``mmcore_text``'s token embedding and the core transformer
encoder, causal), with weights renamed by the ``hf-clip`` converter's key map.
``forward(ids: (B, L))`` -> the last hidden states after the final LayerNorm ``(B, L, D)``,
which is what Stable Diffusion cross-attends to.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from mmcore.convert import hf
from mmcore.encoders import TransformerEncoder
from mmcore.errors import CheckpointError
from mmcore.kernels import KernelSet, select_kernels
from mmcore_clip.hf_clip import HF_TO_MMCORE
from mmcore_text.embedding import TokenEmbedding, TokenEmbeddingConfig
from mmcore_text.encoder import TextTransformerConfig

#: mmcore CLIP keys (after the hf-clip map) -> this module's
PREFIXES = {"tokenizers.text.": "embedding.", "encoders.text.": "encoder."}


class CLIPTextEncoder(nn.Module):
    """Token ids ``(B, L)`` -> hidden states ``(B, L, D)`` (causal, final LayerNorm)."""

    def __init__(self, *, embedding: TokenEmbedding, encoder: TransformerEncoder) -> None:
        super().__init__()
        self.embedding, self.encoder = embedding, encoder

    def forward(self, ids: Tensor) -> Tensor:
        return self.encoder(self.embedding(ids)).x


def build_text_encoder(cfg: Mapping[str, Any], kernels: KernelSet | None = None,
                       where: str = "text_encoder/config.json") -> CLIPTextEncoder:
    """A transformers ``CLIPTextConfig`` dict -> an untrained :class:`CLIPTextEncoder`."""
    model_type = cfg.get("model_type")
    if model_type != "clip_text_model":
        raise CheckpointError(f"{where}: model_type {model_type!r} is not a CLIP text "
                              "model ('clip_text_model')")
    width, hidden = cfg.get("hidden_size", 512), cfg.get("intermediate_size", 2048)
    embedding = TokenEmbedding(TokenEmbeddingConfig(
        vocab_size=cfg.get("vocab_size", 49408), width=width,
        context_length=cfg.get("max_position_embeddings", 77)))
    encoder_cfg = TextTransformerConfig(
        layers=cfg.get("num_hidden_layers", 12), heads=cfg.get("num_attention_heads", 8),
        mlp_ratio=hidden / width, act=hf.activation(cfg.get("hidden_act", "quick_gelu")),
        norm_eps=cfg.get("layer_norm_eps", 1e-5), causal=True)
    kernels = kernels if kernels is not None else select_kernels()
    return CLIPTextEncoder(embedding=embedding,
                           encoder=TransformerEncoder(encoder_cfg, width, kernels))


def _rename(state: dict[str, Tensor]) -> dict[str, Tensor]:
    out = {}
    for key, value in state.items():
        for old, new in PREFIXES.items():
            if key.startswith(old):
                out[new + key[len(old):]] = value
    return out


def load_text_encoder(folder: Path, *, kernels: KernelSet | None = None) -> CLIPTextEncoder:
    """A diffusers ``text_encoder/`` folder (config.json, model.safetensors) -> the encoder."""
    folder = Path(folder)
    model = build_text_encoder(hf.read_config(folder), kernels, str(folder / hf.CONFIG))
    state = hf.read_weights(folder)
    if not any(k.startswith("text_model.") for k in state):  # newer transformers drop it
        state = {f"text_model.{k}": v for k, v in state.items()}
    mapped = HF_TO_MMCORE.apply(state, source=str(folder))
    renamed = _rename(mapped)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(renamed))
    extra = sorted(set(mapped) - {k for k in mapped if k.startswith(tuple(PREFIXES))})
    if missing or extra:
        raise CheckpointError(f"{folder}: CLIP text weights do not match: missing "
                              f"{missing[:4]}, unexpected {extra[:4]}")
    model.load_state_dict(renamed, strict=True)
    return model.eval()

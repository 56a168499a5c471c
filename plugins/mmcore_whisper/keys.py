"""Hugging Face Whisper keys -> mmcore keys, shared by the importer (:mod:`.convert`) and
the exporter (:mod:`.export`), which reads the map backwards."""

from __future__ import annotations

from mmcore.convert import hf

_ENCODER_PARTS = {"self_attn.": "attn.", "self_attn_layer_norm.": "norm1.",
                  "final_layer_norm.": "norm2.", "fc1.": "mlp.fc1.", "fc2.": "mlp.fc2."}
_ENCODER_FIXED = {"encoder.conv1.weight": "tokenizers.audio.conv1.weight",
                  "encoder.conv1.bias": "tokenizers.audio.conv1.bias",
                  "encoder.conv2.weight": "tokenizers.audio.conv2.weight",
                  "encoder.conv2.bias": "tokenizers.audio.conv2.bias",
                  "encoder.embed_positions.weight": "tokenizers.audio.fixed_positions",
                  "encoder.layer_norm.weight": "encoders.audio.stack.final_norm.weight",
                  "encoder.layer_norm.bias": "encoders.audio.stack.final_norm.bias"}
HEAD = "decoder"
#: prefix-stripped HF Whisper keys -> mmcore keys (the decoder is the head, key for key)
HF_TO_MMCORE = hf.KeyMap(
    [*_ENCODER_FIXED.items(),
     *((f"encoder.layers.{{}}.{old}*", f"encoders.audio.stack.blocks.{{}}.{new}*")
       for old, new in _ENCODER_PARTS.items()),
     ("decoder.*", f"heads.{HEAD}.*")])

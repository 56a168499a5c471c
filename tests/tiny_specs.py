"""Tiny image/text modality specs and shapes data shared by the training tests."""

from __future__ import annotations

from typing import Any

IMAGE: dict[str, Any] = {
    "preprocessor": {"type": "image", "size": 16},
    "tokenizer": {"type": "patch-embedding", "image_size": 16, "patch_size": 8, "width": 16},
    "encoder": {"type": "vit", "layers": 1, "heads": 2}}
TEXT: dict[str, Any] = {
    "preprocessor": {"type": "byte-text", "context_length": 40},
    "tokenizer": {"type": "token-embedding", "vocab_size": 259, "width": 16,
                  "context_length": 40},
    "encoder": {"type": "text-transformer", "layers": 1, "heads": 2}}
DATA: dict[str, Any] = {"type": "shapes", "image_size": 16, "train_size": 200, "eval_size": 24}

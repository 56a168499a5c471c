"""Suite-wide settings: one intra-op thread (tiny models run faster and steadier on a busy
2-core machine), and a fresh plugin registry per test session."""

from __future__ import annotations

import torch

torch.set_num_threads(1)

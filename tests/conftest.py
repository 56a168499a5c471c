"""Suite-wide settings.

- Triton kernels run in the CPU interpreter unless the caller says otherwise
  (``TRITON_INTERPRET=0`` on a GPU machine runs the same kernel tests on CUDA). It must be
  set before anything imports triton, which torch or transformers may do during collection.
- One intra-op thread: tiny models run faster and steadier on a busy 2-core machine.
"""

from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import torch

torch.set_num_threads(1)

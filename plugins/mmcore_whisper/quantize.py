"""int8 dynamic quantisation of a Whisper model for CPU inference (``--quantize int8``).

Every ``nn.Linear`` (encoder and decoder projections, MLPs) becomes torch's dynamically
quantised linear (``torch.ao.quantization.quantize_dynamic``, qint8 weights per tensor,
activations quantised on the fly per call, fbgemm/x86 kernels), and the decoder's tied
output projection (hidden @ embed_tokens.weight.T, V x D numbers read at every decoding
step, most of a step's time) becomes one too. The conv stem, embeddings, norms and
attention scores stay fp32. The model is changed in place and is for inference only (no
gradients, CPU only).

torch 2.13 marks eager-mode quantisation as deprecated in favour of the separate torchao
package; this module uses torch's own API (no extra dependency) and keeps its deprecation
warnings quiet. Measured speed and WER against fp32: docs/performance.md.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import Tensor, nn

from mmcore_whisper.decoder import WhisperDecoder

#: the values of ``--quantize``
QUANTIZE_MODES = ("none", "int8")


class Int8OutputProjection:
    """The decoder's (D, V) output projection as an int8 dynamically quantised linear.

    Stands where :class:`~mmcore_whisper.decoder.KVCache` keeps its ``output`` matrix:
    ``hidden @ projection`` calls :meth:`__rmatmul__`, hidden (..., D) -> logits (..., V).
    """

    def __init__(self, weight: Tensor) -> None:
        """``weight``: the (V, D) embedding matrix."""
        linear = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
        linear.weight = nn.Parameter(weight.detach().float(), requires_grad=False)
        self.linear = _quantize(nn.Sequential(linear))[0]

    def __rmatmul__(self, hidden: Tensor) -> Tensor:
        return self.linear(hidden)


def _quantize(module: nn.Module) -> Any:
    with warnings.catch_warnings():  # torch 2.13: eager quantisation is deprecated
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(module, {nn.Linear}, dtype=torch.qint8,
                                                      inplace=True)


def quantize_model(model: nn.Module, mode: str = "int8") -> nn.Module:
    """Quantise ``model`` (an mmcore Whisper model on CPU) in place; returns it in eval mode.

    ``mode``: ``none`` (unchanged) or ``int8`` (see the module docstring). ValueError for
    another mode or a model that is not on the CPU.
    """
    if mode not in QUANTIZE_MODES:
        raise ValueError(f"unknown quantisation {mode!r}; choose from "
                         f"{', '.join(QUANTIZE_MODES)}")
    if mode == "none":
        return model
    devices = {p.device.type for p in model.parameters()}
    if devices - {"cpu"}:
        raise ValueError(f"int8 dynamic quantisation runs on the CPU; the model is on "
                         f"{', '.join(sorted(devices))}")
    model.eval()
    for head in list(model.modules()):
        if isinstance(head, WhisperDecoder):
            head.output_override = Int8OutputProjection(head.embed_tokens.weight)
    _quantize(model)
    return model

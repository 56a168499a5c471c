"""Kernel registry: each op has a pure-PyTorch reference and candidates that declare what
they need. Selection happens once, when a model is built or loaded, from the hardware."""

from mmcore.kernels.catalogue import register_builtin_kernels
from mmcore.kernels.dispatch import (
    Candidate,
    Hardware,
    KernelError,
    KernelSet,
    detect_hardware,
    explain,
    op_names,
    select_kernels,
)

register_builtin_kernels()

__all__ = [
    "Candidate",
    "Hardware",
    "KernelError",
    "KernelSet",
    "detect_hardware",
    "explain",
    "op_names",
    "select_kernels",
]

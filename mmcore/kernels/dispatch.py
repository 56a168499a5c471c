"""Choose one implementation per op from the hardware present, once, and explain why.

Only the selection machinery lives here; the candidates themselves are registered by
:mod:`mmcore.kernels.catalogue` (imported by the package, so they are present whenever
``mmcore.kernels`` is)."""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from mmcore.errors import MMCoreError, suggest

log = logging.getLogger(__name__)
ENV_PREFIX = "MMCORE_KERNEL_"  # e.g. MMCORE_KERNEL_ATTENTION=reference


class KernelError(MMCoreError):
    """A forced kernel that cannot run here, or an unknown op or kernel name."""


@dataclass(frozen=True)
class Hardware:
    """What selection looks at. Tests build these by hand to simulate other machines."""

    device: str = "cpu"  # "cpu" or "cuda"
    capability: tuple[int, int] | None = None
    name: str = "cpu"
    packages: frozenset[str] = frozenset()

    def describe(self) -> str:
        if self.device == "cuda" and self.capability is not None:
            return f"{self.name} (cuda, capability {self.capability[0]}.{self.capability[1]})"
        return self.name


@dataclass(frozen=True)
class Candidate:
    """One implementation of an op and what it needs to run."""

    op: str
    name: str
    fn: Callable[..., Any]
    devices: tuple[str, ...] = ("cpu", "cuda")
    min_capability: tuple[int, int] | None = None
    packages: tuple[str, ...] = ()
    priority: int = 0  # higher wins among those that can run
    note: str = ""
    #: input dtypes it accepts (None: any) and the inclusive head-dim range (None: any)
    dtypes: tuple[torch.dtype, ...] | None = None
    head_dims: tuple[int, int] | None = None
    #: why automatic selection passes over it although it can run (empty: it may be
    #: chosen). A GPU candidate stays manual until a recorded benchmark shows it beating
    #: the default on its op and shapes; forcing it still works.
    manual_only: str = ""

    def accepts(self, x: torch.Tensor) -> bool:
        """Whether one call's input ``x: (..., Dh)`` suits this kernel (checked per call;
        an unsuitable call falls back to the op's reference)."""
        if self.dtypes is not None and x.dtype not in self.dtypes:
            return False
        if self.head_dims is not None:
            lo, hi = self.head_dims
            return lo <= x.shape[-1] <= hi
        return True

    def rejection(self, hw: Hardware) -> str | None:
        """Why this candidate cannot run on ``hw``, or None if it can."""
        if hw.device not in self.devices:
            return f"needs device {'/'.join(self.devices)}, this is {hw.device}"
        if self.min_capability is not None and (hw.capability or (0, 0)) < self.min_capability:
            return f"needs compute capability >= {self.min_capability[0]}.{self.min_capability[1]}"
        missing = [p for p in self.packages if p not in hw.packages]
        if missing:
            return f"package(s) not installed: {', '.join(missing)}"
        return None


_CANDIDATES: dict[str, dict[str, Candidate]] = {}


def register_candidate(cand: Candidate) -> None:
    """Add an implementation of an op; the name ``reference`` is the always-present one."""
    _CANDIDATES.setdefault(cand.op, {})[cand.name] = cand


_OPTIONAL_PACKAGES = ("triton", "xformers")


def op_names() -> list[str]:
    return sorted(_CANDIDATES)


class DeviceError(MMCoreError):
    """A ``--device`` that is not a device name, or names hardware this machine lacks."""


#: the device names ``check_device`` accepts
DEVICE_FORMS = "cpu, cuda, cuda:N or mps"


def check_device(device: str | torch.device) -> str:
    """``device`` as a torch device string, or DeviceError in one line: not a device name
    (the valid forms are listed), or CUDA / an index / MPS this machine does not have."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise DeviceError(f"--device {device!r} is not a device; use {DEVICE_FORMS}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch is built without CUDA" if torch.version.cuda is None else \
                "no CUDA GPU is visible"
            raise DeviceError(f"--device {device}: CUDA is absent on this machine ({why}); "
                              "use --device cpu")
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise DeviceError(f"--device {device}: this machine has {count} CUDA device(s), "
                              f"cuda:0 to cuda:{count - 1}")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise DeviceError(f"--device {device}: MPS is absent on this machine; use --device cpu")
    elif dev.type not in ("cpu", "cuda", "mps", "meta"):
        raise DeviceError(f"--device {device!r} is not supported; use {DEVICE_FORMS}")
    return str(dev)


def detect_hardware(device: str | torch.device | None = None) -> Hardware:
    """The hardware a model on ``device`` (default: cuda if available) will run on; a
    device named explicitly must exist here (:func:`check_device`)."""
    dev = torch.device(check_device(device)) if device is not None else torch.device(
        "cuda" if torch.cuda.is_available() else "cpu")
    packages = frozenset(p for p in _OPTIONAL_PACKAGES if importlib.util.find_spec(p) is not None)
    if dev.type == "cuda" and torch.cuda.is_available():
        index = dev.index if dev.index is not None else torch.cuda.current_device()
        cap = torch.cuda.get_device_capability(index)
        return Hardware("cuda", (cap[0], cap[1]), torch.cuda.get_device_name(index), packages)
    return Hardware("cpu", None, "cpu", packages)


@dataclass
class KernelSet:
    """The chosen implementation of each op. Shared by every layer of one model, so a
    re-selection (e.g. after loading on other hardware) reaches all of them."""

    choices: dict[str, str] = field(default_factory=dict)

    def candidate(self, op: str) -> Candidate:
        return _CANDIDATES[op][self.choices.get(op, "reference")]

    def fn(self, op: str) -> Callable[..., Any]:
        return self.candidate(op).fn

    def call(self, op: str, x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        """Run ``op`` with the chosen kernel, or the reference when it does not accept ``x``."""
        cand = self.candidate(op)
        if not cand.accepts(x):
            cand = _CANDIDATES[op]["reference"]
        return cand.fn(x, *args, **kwargs)

    def attention(self, q: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        """Self-attention. (B, H, N, Dh) -> (B, H, N, Dh); see :mod:`mmcore.kernels.attention`."""
        return self.call("attention", q, *args, **kwargs)

    def cross_attention(self, q: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        """Queries over another sequence. (B, H, Nq, Dh) -> (B, H, Nq, Dh)."""
        return self.call("cross_attention", q, *args, **kwargs)

    def update(self, other: KernelSet) -> None:
        self.choices.clear()
        self.choices.update(other.choices)


def _forced(op: str, requested: Mapping[str, str]) -> str | None:
    value = requested.get(op) or os.environ.get(ENV_PREFIX + op.upper())
    return None if value in (None, "", "auto") else value


def _choose(op: str, hw: Hardware, forced: str | None) -> str:
    cands = _CANDIDATES[op]
    if forced is not None:
        if forced not in cands:
            raise KernelError(f"unknown kernel {forced!r} for op {op!r}; known: {', '.join(cands)}")
        why = cands[forced].rejection(hw)
        if why is not None:
            raise KernelError(f"kernel {forced!r} was forced for {op!r} but cannot run: {why}")
        return forced
    usable = [c for c in cands.values() if c.rejection(hw) is None and not c.manual_only]
    best = max(usable, key=lambda c: c.priority)
    for c in cands.values():
        if c.priority > best.priority:
            log.info("kernel %s/%s not used: %s", op, c.name, _not_chosen(op, c, hw))
    return best.name


def _not_chosen(op: str, cand: Candidate, hw: Hardware) -> str:
    """Why ``cand`` is not the automatic choice on ``hw`` (it is not the best)."""
    why = cand.rejection(hw)
    if why is not None:
        return why
    if cand.manual_only:
        force = f"{ENV_PREFIX}{op.upper()}={cand.name}"
        return f"not chosen automatically: {cand.manual_only}; force with {force}"
    return f"lower priority; {cand.note}"


def check_environment() -> None:
    """KernelError for an ``MMCORE_KERNEL_<OP>`` variable naming no op (a typo would
    otherwise be ignored, while the same key in a spec is an error)."""
    ops = {op.upper(): op for op in op_names()}
    for key in sorted(os.environ):
        if key.startswith(ENV_PREFIX) and key[len(ENV_PREFIX):] not in ops:
            hint = suggest(key[len(ENV_PREFIX):], list(ops))
            raise KernelError(f"environment variable {key} names no kernel op.{hint} Ops: "
                              + ", ".join(ENV_PREFIX + name for name in ops))


def select_kernels(requested: Mapping[str, str] | None = None,
                   hardware: Hardware | None = None) -> KernelSet:
    """One choice per op. ``requested`` (from the spec) and ``MMCORE_KERNEL_<OP>`` force one;
    a forced choice that cannot run raises KernelError; ``auto`` picks the best that can."""
    requested = dict(requested or {})
    unknown = sorted(set(requested) - set(_CANDIDATES))
    if unknown:
        raise KernelError(f"unknown kernel op(s) {unknown}; ops are {op_names()}")
    check_environment()
    hw = hardware or detect_hardware()
    return KernelSet({op: _choose(op, hw, _forced(op, requested)) for op in op_names()})


def explain(hardware: Hardware | None = None,
            requested: Mapping[str, str] | None = None) -> list[dict[str, str]]:
    """Rows of (op, candidate, status, reason) for ``mmcore kernels``."""
    hw = hardware or detect_hardware()
    chosen = select_kernels(requested, hw).choices
    rows = []
    for op in op_names():
        for cand in sorted(_CANDIDATES[op].values(), key=lambda c: -c.priority):
            why = cand.rejection(hw)
            status = "chosen" if chosen[op] == cand.name else ("rejected" if why else "available")
            reason = cand.note if status == "chosen" else _not_chosen(op, cand, hw)
            rows.append({"op": op, "candidate": cand.name, "status": status, "reason": reason})
    return rows

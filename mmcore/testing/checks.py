"""The conformance checks behind :func:`mmcore.testing.check_component`."""


from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ValidationError
from torch import Tensor, nn

from mmcore.builder import BuildContext
from mmcore.checkpoint import read_tensors, save_tensors
from mmcore.contract import FusionOutput, ModelOutput, Tokens
from mmcore.kernels import KernelSet, detect_hardware, select_kernels
from mmcore.registry import Entry
from mmcore.testing import padding
from mmcore.testing.constants import (
    BATCH_SIZE,
    EMBEDDING_WIDTH,
    ENCODER_WIDTH,
    HEAD_NAME,
    MODALITY_WIDTHS,
    NUM_CLASSES,
    SEED,
    TOLERANCE,
)


class _Failure(Exception):
    """A failed check; :func:`check_component` turns it into an AssertionError."""


# -- shared helpers -----------------------------------------------------------------------


@contextmanager
def _step(label: str, step: str) -> Iterator[None]:
    """Report a failure (or any exception) inside ``step`` as an AssertionError."""
    try:
        yield
    except _Failure as exc:
        raise AssertionError(f"{label}: {step}: {exc}") from None
    except Exception as exc:
        raise AssertionError(f"{label}: {step} raised {type(exc).__name__}: {exc}") from exc


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise _Failure(message)


def _generator(offset: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(SEED + offset)


def _tiny_params(entry: Entry) -> BaseModel:
    """The entry's tiny params, validated; a config that needs params must have them."""
    if entry.tiny is None:
        try:
            return entry.config.model_validate({})
        except ValidationError:
            raise _Failure("no tiny config: register it with tiny={...} (the smallest "
                           "params that build)") from None
    try:
        return entry.config.model_validate(entry.tiny)
    except ValidationError as exc:
        raise _Failure(f"its tiny config {entry.tiny} is invalid: {exc}") from None


def _kernels() -> KernelSet:
    return select_kernels(None, detect_hardware("cpu"))


def _tensors(obj: Any, prefix: str = "output") -> dict[str, Tensor]:
    """Every tensor inside ``obj`` (dataclasses, mappings, sequences), by path."""
    if isinstance(obj, Tensor):
        return {prefix: obj}
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        items: Iterator[tuple[str, Any]] = (
            (f.name, getattr(obj, f.name)) for f in dataclasses.fields(obj))
    elif isinstance(obj, Mapping):
        items = ((str(k), v) for k, v in obj.items())
    elif isinstance(obj, (list, tuple)):
        items = ((str(i), v) for i, v in enumerate(obj))
    else:
        return {}
    out: dict[str, Tensor] = {}
    for key, value in items:
        out.update(_tensors(value, f"{prefix}.{key}"))
    return out


def _take(obj: Any, i: int) -> Any:
    """Element ``i`` of a batched input, keeping a batch dimension of 1."""
    if isinstance(obj, Tensor):
        return obj[i : i + 1] if obj.dim() > 0 else obj
    if isinstance(obj, Tokens):  # a subclass keeps its own fields (e.g. LMTokens' ids)
        return dataclasses.replace(obj, **{f.name: _take(getattr(obj, f.name), i)
                                           for f in dataclasses.fields(obj) if f.init})
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.replace(obj, **{f.name: _take(getattr(obj, f.name), i)
                                           for f in dataclasses.fields(obj)})
    if isinstance(obj, Mapping):
        return {k: _take(v, i) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_take(v, i) for v in obj)
    return obj


def _with_grad(obj: Any) -> Any:
    """A copy of ``obj`` whose floating tensors are leaves that require grad."""
    if isinstance(obj, Tensor):
        return obj.detach().clone().requires_grad_(True) if obj.is_floating_point() else obj
    if isinstance(obj, Tokens):  # a subclass keeps its own fields (e.g. LMTokens' ids)
        return dataclasses.replace(obj, x=_with_grad(obj.x))
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.replace(obj, **{f.name: _with_grad(getattr(obj, f.name))
                                           for f in dataclasses.fields(obj)})
    if isinstance(obj, Mapping):
        return {k: _with_grad(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_with_grad(v) for v in obj)
    return obj


def _check_finite(tensors: Mapping[str, Tensor]) -> None:
    bad = [k for k, t in tensors.items() if t.is_floating_point() and not torch.isfinite(t).all()]
    _require(not bad, f"non-finite values in {', '.join(bad)}")


def _compare(expected: Mapping[str, Tensor], got: Mapping[str, Tensor], what: str,
             tolerance: float | None) -> None:
    """Same tensor names and shapes, and values equal (exactly when ``tolerance`` is None)."""
    _require(set(expected) == set(got),
             f"{what}: outputs {sorted(got)} differ from {sorted(expected)}")
    for key, want in expected.items():
        have = got[key]
        _require(want.shape == have.shape,
                 f"{what}: {key} has shape {tuple(have.shape)}, expected {tuple(want.shape)}")
        if tolerance is None or not want.is_floating_point():
            _require(torch.equal(want, have), f"{what}: {key} is not exactly equal "
                     f"(max difference {_max_diff(want, have):.3g})")
        else:
            _require(torch.allclose(want, have, atol=tolerance, rtol=tolerance),
                     f"{what}: {key} differs by up to {_max_diff(want, have):.3g} "
                     f"(tolerance {tolerance:g})")


def _max_diff(a: Tensor, b: Tensor) -> float:
    if a.numel() == 0:
        return 0.0
    return float((a.double() - b.double()).abs().max())


# -- modules ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Harness:
    """How the suite builds, feeds and checks one kind of module."""

    #: BuildContext for the validated tiny params
    context: Callable[[BaseModel, KernelSet], BuildContext]
    #: standard inputs (as call arguments) for a batch, when the entry has no example
    inputs: Callable[[BuildContext, int, torch.Generator], tuple[Any, ...]] | None
    #: checks the output's contract type and shapes: (module, output, batch size)
    check: Callable[[nn.Module, Any, int], None]
    #: whether outputs are per-element (objectives reduce over the batch)
    per_element: bool = True


def check_module(entry: Entry, label: str, harness: _Harness) -> None:
    with _step(label, "build"):
        params = _tiny_params(entry)
        ctx = harness.context(params, _kernels())
        module = _build(entry, params, ctx, seed=SEED)
        args = _inputs(entry, harness, module, ctx)
    with _step(label, "forward"):
        expected = _forward(module, args, harness)
    with _step(label, "backward"):
        buffers = {k: b.clone() for k, b in module.named_buffers()}
        _check_backward(module, args)
        with torch.no_grad():  # train-mode updates (BatchNorm running stats) are undone
            for k, b in module.named_buffers():
                b.copy_(buffers[k])
    with _step(label, "save/load round trip"):
        fresh = _build(entry, params, harness.context(params, ctx.kernels), seed=SEED + 1)
        _check_round_trip(module, fresh, args, expected)
    if harness.per_element:
        with _step(label, "batch invariance"):
            _check_batch_invariance(module, args, expected)
        with _step(label, "padding invariance"):
            _check_padding_invariance(module, args)


def _build(entry: Entry, params: BaseModel, ctx: BuildContext, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    module = entry.factory(params, ctx)
    _require(isinstance(module, nn.Module),
             f"the factory returned {type(module).__name__}, not a torch.nn.Module")
    return module


def _inputs(entry: Entry, harness: _Harness, module: nn.Module,
            ctx: BuildContext) -> tuple[Any, ...]:
    generator = _generator(1)
    if entry.example is not None:
        example = entry.example(module, BATCH_SIZE, generator)
        return tuple(example) if entry.kind == "objective" else (example,)
    if harness.inputs is None:
        raise _Failure(f"a {entry.kind} must register example=(module, batch_size, generator)"
                       " -> input, as the suite cannot make its inputs")
    return harness.inputs(ctx, BATCH_SIZE, generator)


def _forward(module: nn.Module, args: tuple[Any, ...], harness: _Harness) -> dict[str, Tensor]:
    """Run in eval mode, check the contract, and return the output's tensors."""
    module.eval()
    with torch.no_grad():
        output = module(*args)
    harness.check(module, output, BATCH_SIZE)
    tensors = _tensors(output)
    _require(bool(tensors), f"the output {type(output).__name__} holds no tensors")
    if harness.per_element:
        unbatched = [k for k, t in tensors.items() if t.dim() == 0 or t.shape[0] != BATCH_SIZE]
        _require(not unbatched, f"{', '.join(unbatched)} lack the leading batch dimension")
    _check_finite(tensors)
    return tensors


def _loss(output: Any) -> Tensor:
    """A scalar that depends on every floating output value, through fixed random weights."""
    if isinstance(output, Mapping) and isinstance(output.get("loss"), Tensor):
        return output["loss"]
    generator = _generator(2)
    total = torch.zeros(())
    for tensor in _tensors(output).values():
        if tensor.is_floating_point():
            weights = torch.randn(tensor.shape, generator=generator, dtype=tensor.dtype)
            total = total + (tensor * weights).sum()
    return total


def _check_backward(module: nn.Module, args: tuple[Any, ...]) -> None:
    """Train mode: every trainable parameter gets a finite, non-None gradient."""
    module.train()
    module.zero_grad(set_to_none=True)
    args = _with_grad(args)
    loss = _loss(module(*args))
    _require(isinstance(loss, Tensor) and loss.requires_grad,
             "the output does not depend on the parameters or inputs (no autograd graph)")
    loss.backward()
    trainable = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    missing = [n for n, p in trainable if p.grad is None]
    _require(not missing, f"no gradient reaches parameter(s) {', '.join(missing)}")
    bad = [n for n, p in trainable if p.grad is not None and not torch.isfinite(p.grad).all()]
    _require(not bad, f"non-finite gradient in {', '.join(bad)}")
    if trainable:
        _require(any(bool(p.grad.abs().sum() > 0) for _, p in trainable if p.grad is not None),
                 "every parameter gradient is zero")
    inputs = [t for t in _tensors(args).values() if t.requires_grad]
    if inputs:
        _require(any(t.grad is not None and bool(t.grad.abs().sum() > 0) for t in inputs),
                 "the output does not depend on the input")
    module.zero_grad(set_to_none=True)


def _check_round_trip(module: nn.Module, fresh: nn.Module, args: tuple[Any, ...],
                      expected: Mapping[str, Tensor]) -> None:
    """state_dict -> safetensors -> a freshly built module gives exactly equal outputs."""
    state = module.state_dict()
    with tempfile.TemporaryDirectory() as tmp:
        path = save_tensors(state, Path(tmp) / "component.safetensors")
        loaded = read_tensors(path)
    _require(set(loaded) == set(state), "the file does not hold every state_dict tensor")
    fresh.load_state_dict(loaded, strict=True)
    fresh.eval()
    with torch.no_grad():
        got = _tensors(fresh(*args))
    _compare(expected, got, "the reloaded module differs", tolerance=None)


def _check_batch_invariance(module: nn.Module, args: tuple[Any, ...],
                            expected: Mapping[str, Tensor]) -> None:
    """Eval mode: element i alone gives row i of the batched output."""
    module.eval()
    for i in range(BATCH_SIZE):
        with torch.no_grad():
            alone = _tensors(module(*_take(args, i)))
        batched = {k: _take(v, i) for k, v in expected.items()}
        _compare(batched, alone, f"element {i} alone vs in a batch of {BATCH_SIZE}",
                 tolerance=TOLERANCE)


def _check_padding_invariance(module: nn.Module, args: tuple[Any, ...]) -> None:
    """Eval mode: random values at padded input positions leave real outputs unchanged."""
    masks = padding.input_masks(args)
    if not masks:  # no padded input: nothing to check
        return
    module.eval()
    with torch.no_grad():
        clean = padding.real_outputs(module(*args), masks)
        noisy = padding.real_outputs(module(*padding.perturb_padding(args, _generator(3))),
                                     masks)
    _compare(clean, noisy, "random values at padded positions changed the real outputs",
             tolerance=TOLERANCE)


# -- standard inputs and per-kind contract checks -----------------------------------------


def _mask(batch: int, length: int, generator: torch.Generator) -> Tensor:
    """(B, N) bool, real tokens first; element 0 is full, the others random lengths >= 1."""
    lengths = torch.randint(1, length + 1, (batch,), generator=generator)
    lengths[0] = length
    return torch.arange(length)[None, :] < lengths[:, None]


def _tokens(batch: int, length: int, width: int, generator: torch.Generator) -> Tokens:
    x = torch.randn(batch, length, width, generator=generator)
    return Tokens(x, _mask(batch, length, generator))


def _modalities(batch: int, generator: torch.Generator) -> dict[str, Tokens]:
    return {name: _tokens(batch, 5 + 2 * i, width, generator)
            for i, (name, width) in enumerate(MODALITY_WIDTHS.items())}


def _embeddings(batch: int, generator: torch.Generator) -> dict[str, Tensor]:
    names = [*MODALITY_WIDTHS, "fused"]
    return {n: torch.randn(batch, EMBEDDING_WIDTH, generator=generator) for n in names}


def _embedding_widths() -> dict[str, int]:
    return {n: EMBEDDING_WIDTH for n in [*MODALITY_WIDTHS, "fused"]}


def _encoder_width(params: BaseModel) -> int:
    width = getattr(params, "width", None)
    return width if isinstance(width, int) else ENCODER_WIDTH


def _check_tokens(tokens: Any, batch: int, width: int, what: str) -> None:
    _require(isinstance(tokens, Tokens), f"{what} must be Tokens, got {type(tokens).__name__}")
    _require(tokens.x.shape[0] == batch and tokens.x.shape[2] == width,
             f"{what}.x has shape {tuple(tokens.x.shape)}, expected ({batch}, N, {width})")
    _require(tokens.x.is_floating_point(), f"{what}.x must be floating point")
    _require(tokens.mask is None or tokens.mask.dtype == torch.bool,
             f"{what}.mask must be bool")


def _out_width(module: nn.Module) -> int:
    width = getattr(module, "out_width", None)
    _require(isinstance(width, int) and width > 0,
             "the module must set out_width (an int) for the components after it")
    assert isinstance(width, int)
    return width


def _check_tokenizer(module: nn.Module, output: Any, batch: int) -> None:
    _check_tokens(output, batch, _out_width(module), "the output")


def _check_fusion(module: nn.Module, output: Any, batch: int) -> None:
    _require(isinstance(output, FusionOutput),
             f"the output must be a FusionOutput, got {type(output).__name__}")
    widths = getattr(module, "embedding_widths", None)
    _require(isinstance(widths, Mapping),
             "the fusion must set embedding_widths {name: width} for heads and objectives")
    assert isinstance(widths, Mapping)
    for name, width in widths.items():
        emb = output.embeddings.get(name)
        _require(emb is not None, f"embedding {name!r} (in embedding_widths) is missing")
        _require(tuple(emb.shape) == (batch, width),
                 f"embedding {name!r} has shape {tuple(emb.shape)}, expected ({batch}, {width})")
    for name, tokens in output.tokens.items():
        _check_tokens(tokens, batch, tokens.width, f"tokens[{name!r}]")


def _check_head(module: nn.Module, output: Any, batch: int) -> None:
    _require(isinstance(output, Tensor), f"the output must be a Tensor, got {type(output)}")
    size = getattr(module, "out_features", None)
    _require(isinstance(size, int), "the head must set out_features (its output size)")
    _require(output.shape[0] == batch and output.shape[-1] == size,
             f"the output has shape {tuple(output.shape)}, expected ({batch}, ..., {size})")


def _check_objective(module: nn.Module, output: Any, batch: int) -> None:
    _require(isinstance(output, Mapping), f"the output must be a dict, got {type(output)}")
    _require("loss" in output, f"the output has no 'loss' (keys: {sorted(output)})")
    wrong = [k for k, v in output.items() if not isinstance(v, Tensor)]
    _require(not wrong, f"values of {wrong} are not tensors")
    _require(output["loss"].dim() == 0, f"loss has shape {tuple(output['loss'].shape)}, not ()")


def _model_output(ctx: BuildContext, batch: int,
                  generator: torch.Generator) -> tuple[ModelOutput, dict[str, Tensor]]:
    heads = {HEAD_NAME: torch.randn(batch, NUM_CLASSES, generator=generator)}
    output = ModelOutput(tokens=_modalities(batch, generator),
                         embeddings=_embeddings(batch, generator), heads=heads)
    return output, {"label": torch.randint(0, NUM_CLASSES, (batch,), generator=generator)}


HARNESSES: dict[str, _Harness] = {
    "tokenizer": _Harness(
        context=lambda p, k: BuildContext(kernels=k, modality="alpha"),
        inputs=None,
        check=_check_tokenizer,
    ),
    "encoder": _Harness(
        context=lambda p, k: BuildContext(kernels=k, modality="alpha",
                                          in_width=_encoder_width(p)),
        inputs=lambda c, b, g: (_tokens(b, 6, c.in_width or ENCODER_WIDTH, g),),
        check=_check_tokenizer,
    ),
    "fusion": _Harness(
        context=lambda p, k: BuildContext(kernels=k, widths=dict(MODALITY_WIDTHS)),
        inputs=lambda c, b, g: (_modalities(b, g),),
        check=_check_fusion,
    ),
    "head": _Harness(
        context=lambda p, k: BuildContext(kernels=k, embedding_widths=_embedding_widths()),
        inputs=lambda c, b, g: (FusionOutput(_modalities(b, g), _embeddings(b, g)),),
        check=_check_head,
    ),
    "objective": _Harness(
        context=lambda p, k: BuildContext(kernels=k, embedding_widths=_embedding_widths(),
                                          heads={HEAD_NAME: NUM_CLASSES}),
        inputs=_model_output,
        check=_check_objective,
        per_element=False,
    ),
}


# -- preprocessors ------------------------------------------------------------------------


def check_preprocessor(entry: Entry, label: str) -> None:
    """Raw example items -> collated tensors, deterministic and per-item."""
    with _step(label, "build"):
        preprocessor = entry.factory(_tiny_params(entry), BuildContext(kernels=_kernels()))
        _require(callable(preprocessor), "the factory must return a callable")
        if entry.example is None:
            raise _Failure("a preprocessor needs example=(preprocessor, batch_size, "
                           "generator) -> raw items")
        items = list(entry.example(preprocessor, BATCH_SIZE, _generator(1)))
        _require(len(items) == BATCH_SIZE, f"example gave {len(items)} items, not {BATCH_SIZE}")
    with _step(label, "forward"):
        expected = _preprocess(preprocessor, items)
        _compare(expected, _preprocess(preprocessor, items), "a second run differs", None)
    with _step(label, "batch invariance"):
        for i in range(BATCH_SIZE):
            alone = _preprocess(preprocessor, items[i : i + 1], batch=1)
            _compare({k: _take(v, i) for k, v in expected.items()}, alone,
                     f"item {i} alone vs in a batch of {BATCH_SIZE}", TOLERANCE)


def _preprocess(preprocessor: Callable[[Sequence[Any]], Any], items: Sequence[Any],
                batch: int = BATCH_SIZE) -> dict[str, Tensor]:
    output = preprocessor(items)
    _require(isinstance(output, (Tensor, Mapping)),
             f"the output must be a tensor or a mapping of tensors, got {type(output)}")
    tensors = _tensors(output)
    _require(bool(tensors), "the output holds no tensors")
    for key, tensor in tensors.items():
        _require(tensor.dim() >= 1 and tensor.shape[0] == batch,
                 f"{key} has shape {tuple(tensor.shape)}, expected a leading batch of {batch}")
        _require(not tensor.requires_grad, f"{key} requires grad; preprocessors run without")
    _check_finite(tensors)
    return tensors

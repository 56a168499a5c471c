"""contrastive_loss kernels against a float64 definition: values and gradients wrt a, b,
logit_scale and logit_bias, for both losses, odd sizes and rows offset into the columns."""

from __future__ import annotations

import os

# The Triton kernels run on CPU tensors in the interpreter; it must be on before triton is
# imported. TRITON_INTERPRET=0 on a GPU machine runs the same tests on CUDA instead.
INTERPRET = os.environ.setdefault("TRITON_INTERPRET", "1") == "1"

import subprocess  # noqa: E402
import sys  # noqa: E402
import textwrap  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from typing import Any  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import Tensor  # noqa: E402

from mmcore.builder import BuildContext  # noqa: E402
from mmcore.contract import ModelOutput  # noqa: E402
from mmcore.kernels import Hardware, KernelSet, select_kernels  # noqa: E402
from mmcore.kernels.contrastive import (  # noqa: E402
    chunked_contrastive_loss,
    contrastive_accuracy,
    reference_contrastive_loss,
)
from mmcore_objectives.contrastive import ContrastiveConfig, build_contrastive  # noqa: E402

KINDS = ["softmax", "sigmoid"]
Loss = Callable[..., Tensor]


def fresh_generator() -> torch.Generator:
    """A new seed every call; pytest shows the printed seed when a test fails."""
    seed = time.time_ns() % 2**31
    print(f"seed {seed}")
    return torch.Generator().manual_seed(seed)


def inputs(m: int, n: int, dim: int, kind: str, dtype: torch.dtype = torch.float64,
           device: str = "cpu") -> list[Tensor]:
    """[a (M, D), b (N, D) L2-normalised, logit_scale, (logit_bias)] as leaves with grad.
    Each row of b near the row of a it pairs with, so positives matter."""
    g = fresh_generator()
    a = F.normalize(torch.randn(m, dim, generator=g, dtype=torch.float64), dim=1)
    b = F.normalize(torch.randn(n, dim, generator=g, dtype=torch.float64), dim=1)
    scale = torch.empty((), dtype=torch.float64).uniform_(2.0, 30.0, generator=g)
    leaves = [a, b, scale]
    if kind == "sigmoid":
        leaves.append(torch.empty((), dtype=torch.float64).uniform_(-10.0, 2.0, generator=g))
    scalar_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    return [x.to(device=device, dtype=dtype if x.ndim else scalar_dtype).requires_grad_()
            for x in leaves]


def loss_and_grads(fn: Loss, leaves: list[Tensor], kind: str, **kw: Any) -> list[Tensor]:
    bias = leaves[3] if kind == "sigmoid" else None
    loss = fn(leaves[0], leaves[1], leaves[2], kind=kind, logit_bias=bias, **kw)
    return [loss.detach(), *torch.autograd.grad(loss, leaves)]


def reference64(leaves: list[Tensor], kind: str, **kw: Any) -> list[Tensor]:
    """The definition in float64 on CPU, from copies of ``leaves``."""
    copies = [x.detach().cpu().double().requires_grad_() for x in leaves]
    return loss_and_grads(reference_contrastive_loss, copies, kind, **kw)


def assert_all_close(got: list[Tensor], want: list[Tensor], atol: float, rtol: float) -> None:
    names = ["loss", "d/da", "d/db", "d/dlogit_scale", "d/dlogit_bias"]
    for name, x, y in zip(names[:len(got)], got, want, strict=True):
        try:
            torch.testing.assert_close(x.detach().cpu().double(), y, atol=atol, rtol=rtol)
        except AssertionError as error:
            raise AssertionError(f"{name}: {error}") from None


# ---- the definition ---------------------------------------------------------------------


def test_reference_softmax_is_symmetric_cross_entropy() -> None:
    a, b, scale = inputs(9, 9, 8, "softmax")
    logits = scale * a @ b.t()
    target = torch.arange(9)
    want = (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)) / 2
    torch.testing.assert_close(reference_contrastive_loss(a, b, scale), want)


def test_reference_sigmoid_is_siglip() -> None:
    a, b, scale, bias = inputs(9, 9, 8, "sigmoid")
    labels = 2 * torch.eye(9, dtype=torch.float64) - 1  # +1 on the diagonal, -1 elsewhere
    want = -torch.log(torch.sigmoid(labels * (scale * a @ b.t() + bias))).sum() / 9
    got = reference_contrastive_loss(a, b, scale, kind="sigmoid", logit_bias=bias)
    torch.testing.assert_close(got, want)


def test_bias_with_softmax_and_bad_offsets_are_refused() -> None:
    a, b, scale = inputs(4, 6, 8, "softmax")
    for fn in (reference_contrastive_loss, chunked_contrastive_loss):
        with pytest.raises(ValueError, match="logit_bias"):
            fn(a, b, scale, logit_bias=torch.tensor(1.0))
        with pytest.raises(ValueError, match="row_offset"):
            fn(a, b, scale, row_offset=3)


# ---- chunked PyTorch --------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("batch", [1, 7, 64, 130])
def test_chunked_matches_reference(kind: str, batch: int) -> None:
    leaves = inputs(batch, batch, 24, kind)
    got = loss_and_grads(chunked_contrastive_loss, leaves, kind, block_size=17)
    assert_all_close(got, reference64(leaves, kind), atol=1e-10, rtol=1e-9)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("offset", [0, 23, 55])
def test_chunked_rows_offset_into_columns(kind: str, offset: int) -> None:
    leaves = inputs(20, 75, 12, kind)  # 20 local rows of a 75-column gathered batch
    got = loss_and_grads(chunked_contrastive_loss, leaves, kind, block_size=16, row_offset=offset)
    assert_all_close(got, reference64(leaves, kind, row_offset=offset), atol=1e-10, rtol=1e-9)


@pytest.mark.parametrize("kind", KINDS)
def test_chunked_float32_at_clip_max_scale(kind: str) -> None:
    leaves = inputs(130, 130, 32, kind, dtype=torch.float32)
    with torch.no_grad():
        leaves[2].fill_(100.0)
    got = loss_and_grads(chunked_contrastive_loss, leaves, kind, block_size=48)
    assert_all_close(got, reference64(leaves, kind), atol=1e-4, rtol=1e-4)


def test_chunked_accuracy_matches_argmax() -> None:
    g = fresh_generator()
    a, b = torch.randn(75, 6, generator=g), torch.randn(75, 6, generator=g)
    b[::3] = a[::3]  # a third of the rows find their pair
    want = ((a @ b.t()).argmax(1) == torch.arange(75)).float().mean()
    assert contrastive_accuracy(a, b, block_size=16) == want


# ---- Triton -----------------------------------------------------------------------------

TRITON_DEVICE = "cpu" if INTERPRET else "cuda"
needs_triton = pytest.mark.skipif(
    not INTERPRET and not torch.cuda.is_available(), reason="TRITON_INTERPRET=0 and no CUDA")


def triton_loss() -> Loss:
    pytest.importorskip("triton")
    from mmcore.kernels.triton_contrastive import triton_contrastive_loss

    return triton_contrastive_loss


def assert_kernels_run(a: Tensor, b: Tensor) -> None:
    """The inputs reach the Triton kernels rather than the chunked fallback."""
    from mmcore.kernels.triton_contrastive import _runs_here

    assert _runs_here(a, b)


@needs_triton
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("batch", "dim"), [(5, 16), (33, 40), (70, 16)])
def test_triton_matches_reference(kind: str, batch: int, dim: int) -> None:
    fn = triton_loss()
    leaves = inputs(batch, batch, dim, kind, dtype=torch.float32, device=TRITON_DEVICE)
    assert_kernels_run(leaves[0], leaves[1])
    got = loss_and_grads(fn, leaves, kind)
    assert_all_close(got, reference64(leaves, kind), atol=2e-5, rtol=1e-4)


@needs_triton
@pytest.mark.parametrize("kind", KINDS)
def test_triton_rows_offset_and_wide_features(kind: str) -> None:
    """20 rows offset into 70 columns; D = 300 spans three feature blocks in the backward."""
    fn = triton_loss()
    leaves = inputs(20, 70, 300, kind, dtype=torch.float32, device=TRITON_DEVICE)
    got = loss_and_grads(fn, leaves, kind, row_offset=37)
    assert_all_close(got, reference64(leaves, kind, row_offset=37), atol=2e-5, rtol=1e-4)


@needs_triton
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("batch", "dim"), [(33, 40), (257, 16)])
def test_triton_half_precision(kind: str, batch: int, dim: int) -> None:
    """float16 inputs, float32 accumulation; at B = 257 the per-pair gradients (~1 / B^2)
    would underflow float16 if they were cast before the dot. (The interpreter's tl.dot gets
    bfloat16 wrong, so bfloat16 is left to a GPU run.)"""
    fn = triton_loss()
    leaves = inputs(batch, batch, dim, kind, dtype=torch.float16, device=TRITON_DEVICE)
    assert_kernels_run(leaves[0], leaves[1])
    got = loss_and_grads(fn, leaves, kind)
    assert_all_close(got, reference64(leaves, kind), atol=2e-3, rtol=2e-2)


@needs_triton
def test_triton_float64_goes_to_chunked() -> None:
    fn = triton_loss()
    leaves = inputs(9, 9, 8, "softmax", device=TRITON_DEVICE)
    got = loss_and_grads(fn, leaves, "softmax")
    assert_all_close(got, reference64(leaves, "softmax"), atol=1e-10, rtol=1e-9)


# ---- selection and the objective ----------------------------------------------------------


def test_selection_per_hardware() -> None:
    choose = lambda hw: select_kernels(hardware=hw).choices["contrastive_loss"]  # noqa: E731
    assert choose(Hardware()) == "chunked"
    ampere = Hardware("cuda", (8, 0), "A100", frozenset({"triton"}))
    assert choose(ampere) == "chunked"  # triton: unmeasured on a GPU, so forced only
    assert select_kernels({"contrastive_loss": "triton"}, ampere).choices[
        "contrastive_loss"] == "triton"
    assert choose(Hardware("cuda", (7, 5), "T4", frozenset({"triton"}))) == "chunked"
    assert choose(Hardware("cuda", (9, 0), "H100", frozenset())) == "chunked"


def test_importing_mmcore_does_not_import_triton() -> None:
    code = textwrap.dedent("""
        import sys
        import mmcore, mmcore.kernels.contrastive, mmcore_objectives
        assert "triton" not in sys.modules, "triton was imported"
    """)
    subprocess.run([sys.executable, "-c", code], check=True)


def objective(loss: str, kernel: str) -> Any:
    cfg = ContrastiveConfig(pairs=[("image", "text")], loss=loss)
    ctx = BuildContext(kernels=KernelSet({"contrastive_loss": kernel}),
                       embedding_widths={"image": 16, "text": 16})
    return build_contrastive(cfg, ctx)


@pytest.mark.parametrize("loss", KINDS)
def test_objective_uses_the_chosen_kernel(loss: str) -> None:
    g = fresh_generator()
    emb = {"image": torch.randn(40, 16, generator=g), "text": torch.randn(40, 16, generator=g)}
    emb["text"][::4] = 0.3 * emb["text"][::4] + emb["image"][::4]  # some rows find their pair
    output = ModelOutput(tokens={}, embeddings=emb)
    chunked, reference = objective(loss, "chunked"), objective(loss, "reference")
    got, want = chunked(output, {}), reference(output, {})
    torch.testing.assert_close(got["loss"], want["loss"])
    got["loss"].backward()
    assert chunked.logit_scale.grad is not None
    image, text = F.normalize(emb["image"], dim=1), F.normalize(emb["text"], dim=1)
    want_acc = ((image @ text.t()).argmax(1) == torch.arange(40)).float().mean()
    torch.testing.assert_close(got["image_text_accuracy"], want_acc)
    if loss == "sigmoid":  # SigLIP's initialisation: scale 10, bias -10
        torch.testing.assert_close(chunked.scale(), torch.tensor(10.0))
        assert chunked.logit_bias is not None and chunked.logit_bias.grad is not None
        assert float(chunked.logit_bias.detach()) == -10.0
    else:
        assert chunked.logit_bias is None
        torch.testing.assert_close(chunked.scale(), torch.tensor(1 / 0.07))

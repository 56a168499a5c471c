"""Pre-norm transformer blocks (self-attention, optional cross-attention, MLP)."""

from __future__ import annotations

from torch import Tensor, nn

from mmcore.kernels import KernelSet
from mmcore.kernels.attention import real_padding
from mmcore.layers.attention import MultiHeadAttention
from mmcore.layers.mlp import MLP
from mmcore.layers.norms import make_norm


class TransformerBlock(nn.Module):
    """x + attn(norm(x)); [x + cross(norm(x), context)]; x + mlp(norm(x)). (B, N, D) -> same."""

    def __init__(self, *, width: int, heads: int, kernels: KernelSet, mlp_ratio: float = 4.0,
                 act: str = "gelu", norm: str = "layernorm", norm_eps: float = 1e-5,
                 cross_width: int | None = None) -> None:
        super().__init__()
        self.norm1 = make_norm(norm, width, norm_eps)
        self.attn = MultiHeadAttention(width=width, heads=heads, kernels=kernels)
        self.cross_norm: nn.Module | None = None
        self.cross_attn: MultiHeadAttention | None = None
        if cross_width is not None:
            self.cross_norm = make_norm(norm, width, norm_eps)
            self.cross_attn = MultiHeadAttention(width=width, heads=heads, kernels=kernels,
                                                 kv_width=cross_width)
        self.norm2 = make_norm(norm, width, norm_eps)
        self.mlp = MLP(width=width, hidden=int(width * mlp_ratio), act=act)

    def forward(self, x: Tensor, mask: Tensor | None = None, causal: bool = False,
                context: Tensor | None = None, context_mask: Tensor | None = None) -> Tensor:
        x = x + self.attn(self.norm1(x), key_padding_mask=mask, causal=causal)
        if self.cross_attn is not None and self.cross_norm is not None and context is not None:
            x = x + self.cross_attn(self.cross_norm(x), context, key_padding_mask=context_mask)
        return x + self.mlp(self.norm2(x))


class TransformerStack(nn.Module):
    """``layers`` blocks, with optional input and final norms. (B, N, D) -> (B, N, D)."""

    def __init__(self, *, width: int, layers: int, heads: int, kernels: KernelSet,
                 mlp_ratio: float = 4.0, act: str = "gelu", norm: str = "layernorm",
                 norm_eps: float = 1e-5, pre_norm: bool = False, final_norm: bool = True,
                 cross_width: int | None = None) -> None:
        super().__init__()
        self.pre_norm = make_norm(norm, width, norm_eps) if pre_norm else nn.Identity()
        self.blocks = nn.ModuleList(
            TransformerBlock(width=width, heads=heads, kernels=kernels, mlp_ratio=mlp_ratio,
                             act=act, norm=norm, norm_eps=norm_eps, cross_width=cross_width)
            for _ in range(layers)
        )
        self.final_norm = make_norm(norm, width, norm_eps) if final_norm else nn.Identity()

    def forward(self, x: Tensor, mask: Tensor | None = None, causal: bool = False,
                context: Tensor | None = None, context_mask: Tensor | None = None) -> Tensor:
        x = self.pre_norm(x)
        # an all-real mask is no mask: checked once here, not in every layer
        mask, context_mask = real_padding(mask), real_padding(context_mask)
        for block in self.blocks:
            x = block(x, mask, causal, context, context_mask)
        return self.final_norm(x)


def compile_stacks(module: nn.Module) -> bool:
    """``torch.compile`` every :class:`TransformerStack` inside ``module`` in place (the
    state-dict keys stay as they are). Returns False, with a warning and the module left
    eager, where torch.compile cannot run here (no C++ compiler, unsupported platform)."""
    import warnings

    import torch

    try:  # a tiny probe: compilation failures surface on the first call, not at wrap time
        torch.compile(lambda t: t * 2 + 1)(torch.ones(2))
    except Exception as exc:  # any compiler failure means: stay eager
        warnings.warn(f"train.compile: torch.compile cannot run here ({exc}); training "
                      "continues without it", RuntimeWarning, stacklevel=2)
        return False
    for sub in module.modules():
        if isinstance(sub, TransformerStack):
            sub.compile()
    return True

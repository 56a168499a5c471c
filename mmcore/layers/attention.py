"""Multi-head attention (self and cross) through the kernel dispatch point."""

from __future__ import annotations

from torch import Tensor, nn

from mmcore.kernels import KernelSet
from mmcore.kernels.attention import reference_attention


class MultiHeadAttention(nn.Module):
    """Self- or cross-attention: queries ``(B, Nq, D)`` attend to keys/values ``(B, Nk, Dkv)``.

    ``qk_width`` / ``v_width`` (default ``width``) set the query-key and value channels
    (Perceiver IO's ``qk_channels`` / ``v_channels``); the output is projected back to
    ``width``. ``key_padding_mask: (B, Nk)`` is True for real keys. The score computation goes
    through ``kernels`` (shared by the whole model), chosen once at build/load time.
    """

    def __init__(self, *, width: int, heads: int, kernels: KernelSet, kv_width: int | None = None,
                 bias: bool = True, qk_width: int | None = None,
                 v_width: int | None = None) -> None:
        super().__init__()
        kv_width = kv_width or width
        # query/key and value channels (Perceiver IO sets them apart from ``width``)
        qk_name, qk_width = ("width", width) if qk_width is None else ("qk_width", qk_width)
        v_name, v_width = (qk_name, qk_width) if v_width is None else ("v_width", v_width)
        for name, channels in ((qk_name, qk_width), (v_name, v_width)):
            if channels % heads:
                raise ValueError(f"{name} {channels} is not divisible by heads {heads}")
        self.heads, self.head_dim = heads, qk_width // heads
        self.v_head_dim = v_width // heads
        self.kernels = kernels
        self.q_proj = nn.Linear(width, qk_width, bias=bias)
        self.k_proj = nn.Linear(kv_width, qk_width, bias=bias)
        self.v_proj = nn.Linear(kv_width, v_width, bias=bias)
        self.out_proj = nn.Linear(v_width, width, bias=bias)

    def _split(self, x: Tensor) -> Tensor:
        b, n, _ = x.shape
        return x.view(b, n, self.heads, -1).transpose(1, 2)  # (B, H, N, Dh)

    def forward(self, x: Tensor, context: Tensor | None = None,
                key_padding_mask: Tensor | None = None, causal: bool = False) -> Tensor:
        source = x if context is None else context
        q = self._split(self.q_proj(x))  # (B, H, Nq, Dh)
        k = self._split(self.k_proj(source))  # (B, H, Nk, Dh)
        v = self._split(self.v_proj(source))
        run = self.kernels.attention if context is None else self.kernels.cross_attention
        if self.v_head_dim != self.head_dim:  # kernels take one head size for q, k and v
            run = reference_attention
        out = run(q, k, v, key_padding_mask=key_padding_mask, causal=causal)
        b, _, nq, _ = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(b, nq, -1))  # (B, Nq, D)

"""Swin transformer over a square token grid (HTSAT, CLAP's audio encoder).

Stages of pre-norm blocks attend within ``window x window`` windows, with a learned
relative-position bias per head; every second block shifts the windows by half a window
(a cyclic roll, with a mask so tokens only attend to tokens that were neighbours before
the roll). Between stages, patch merging concatenates each 2 x 2 neighbourhood and halves
the grid while doubling the width. A stage whose grid is no larger than the window uses
one unshifted window, as Swin does. Every stage's grid must be a multiple of the window
(HF pads otherwise; no released CLAP needs it). Tokens are row-major over the grid; no padding mask.
"""

from __future__ import annotations

import torch
from pydantic import Field, model_validator
from torch import Tensor, nn

from mmcore.builder import BuildContext
from mmcore.contract import Encoder, Tokens
from mmcore.cost import Cost, CostContext, Shape, linear, mlp, norm
from mmcore.layers import MLP
from mmcore.registry import ComponentConfig

#: HF Swin/HTSAT: the patch-merging and final norms use LayerNorm's default eps
MERGE_NORM_EPS = 1e-5
#: additive score of a token pair that the shifted-window mask separates (as Swin)
SEPARATED = -100.0


class SwinConfig(ComponentConfig):
    """``width`` (stage 0) defaults to the tokenizer's; stage i has width * 2**i."""

    width: int | None = Field(None, gt=0)
    #: side of the input token grid (HTSAT: spec_size // patch_stride)
    grid_size: int = Field(gt=0)
    depths: list[int] = Field(min_length=1)
    heads: list[int] = Field(min_length=1)
    window_size: int = Field(8, gt=0)
    mlp_ratio: float = Field(4.0, gt=0)
    qkv_bias: bool = True
    act: str = "gelu"
    norm_eps: float = Field(1e-5, gt=0)
    final_norm: bool = True

    @model_validator(mode="after")
    def _check(self) -> SwinConfig:
        if len(self.depths) != len(self.heads) or min(self.depths) < 1:
            raise ValueError(f"depths {self.depths} and heads {self.heads} need one positive "
                             "entry per stage")
        if self.grid_size % 2 ** (len(self.depths) - 1):
            raise ValueError(f"grid_size {self.grid_size} must halve evenly "
                             f"{len(self.depths) - 1} times")
        for i, size in enumerate(self.resolutions):
            if size < self.window_size or size % self.window_size:
                raise ValueError(f"stage {i} has a {size}x{size} token grid; it must be a "
                                 f"multiple of window_size {self.window_size}")
        return self

    @property
    def resolutions(self) -> list[int]:
        return [self.grid_size // 2**i for i in range(len(self.depths))]


def relative_position_index(window: int) -> Tensor:
    """(w*w, w*w) index into the ((2w-1)**2, heads) bias table for each token pair."""
    coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window),
                                        indexing="ij")).flatten(1)  # (2, w*w)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window - 1)
    return rel[..., 0] * (2 * window - 1) + rel[..., 1]


def windows_of(x: Tensor, window: int) -> Tensor:
    """(B, H, W, C) -> (B * H/w * W/w, w * w, C), windows row-major."""
    b, h, w, c = x.shape
    x = x.view(b, h // window, window, w // window, window, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, window * window, c)


def merge_windows(x: Tensor, window: int, h: int, w: int) -> Tensor:
    """Inverse of :func:`windows_of`: (B * nW, w * w, C) -> (B, H, W, C)."""
    c = x.shape[-1]
    x = x.view(-1, h // window, w // window, window, window, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, h, w, c)


def shift_mask(size: int, window: int, shift: int) -> Tensor:
    """(nW, w*w, w*w) additive mask: 0 within a region of the rolled grid, -100 across."""
    idx = torch.arange(size)
    region = (idx >= size - window).long() + (idx >= size - shift).long()  # (size,)
    labels = (region[:, None] * 3 + region[None, :]).float()[None, :, :, None]
    flat = windows_of(labels, window).squeeze(-1)  # (nW, w*w)
    same = flat[:, None, :] == flat[:, :, None]
    return torch.zeros(same.shape).masked_fill(~same, SEPARATED)


class WindowAttention(nn.Module):
    """Multi-head self-attention inside windows, plus a relative-position bias.
    (B * nW, w*w, C) -> same."""

    def __init__(self, *, width: int, heads: int, window: int, qkv_bias: bool) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by heads {heads}")
        self.heads, self.head_dim = heads, width // heads
        self.query = nn.Linear(width, width, bias=qkv_bias)
        self.key = nn.Linear(width, width, bias=qkv_bias)
        self.value = nn.Linear(width, width, bias=qkv_bias)
        self.out_proj = nn.Linear(width, width)
        self.relative_position_bias_table = nn.Parameter(
            torch.randn((2 * window - 1) ** 2, heads) * 0.02)
        self.register_buffer("relative_position_index", relative_position_index(window),
                             persistent=False)

    def _split(self, x: Tensor) -> Tensor:
        b, n, _ = x.shape
        return x.view(b, n, self.heads, self.head_dim).transpose(1, 2)  # (B', H, N, Dh)

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        bw, n, c = x.shape
        q, k, v = self._split(self.query(x)), self._split(self.key(x)), self._split(self.value(x))
        scores = (q @ k.transpose(-1, -2)) * self.head_dim**-0.5  # (B', H, N, N)
        index = self.get_buffer("relative_position_index").reshape(-1)
        bias = self.relative_position_bias_table[index].view(n, n, -1).permute(2, 0, 1)
        scores = scores + bias.unsqueeze(0)
        if mask is not None:  # (nW, N, N), windows repeat per batch element
            nw = mask.shape[0]
            scores = scores.view(bw // nw, nw, self.heads, n, n) + mask[None, :, None]
            scores = scores.view(bw, self.heads, n, n)
        out = torch.softmax(scores, dim=-1) @ v  # (B', H, N, Dh)
        return self.out_proj(out.transpose(1, 2).reshape(bw, n, c))


class SwinBlock(nn.Module):
    """x + window-attn(norm(x)) (shifted when ``shift``), then x + mlp(norm(x)).
    (B, size*size, C) -> same."""

    def __init__(self, *, width: int, heads: int, size: int, window: int, shift: int,
                 cfg: SwinConfig) -> None:
        super().__init__()
        self.size, self.window, self.shift = size, window, shift
        self.norm1 = nn.LayerNorm(width, eps=cfg.norm_eps)
        self.attn = WindowAttention(width=width, heads=heads, window=window,
                                    qkv_bias=cfg.qkv_bias)
        self.norm2 = nn.LayerNorm(width, eps=cfg.norm_eps)
        self.mlp = MLP(width=width, hidden=int(width * cfg.mlp_ratio), act=cfg.act)
        self.mask: Tensor | None
        self.register_buffer("mask", shift_mask(size, window, shift) if shift else None,
                             persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        grid = self.norm1(x).view(b, self.size, self.size, c)
        if self.shift:
            grid = torch.roll(grid, shifts=(-self.shift, -self.shift), dims=(1, 2))
        mask = None if self.mask is None else self.mask.to(x.dtype)
        attended = self.attn(windows_of(grid, self.window), mask)
        grid = merge_windows(attended, self.window, self.size, self.size)
        if self.shift:
            grid = torch.roll(grid, shifts=(self.shift, self.shift), dims=(1, 2))
        x = x + grid.reshape(b, n, c)
        return x + self.mlp(self.norm2(x))


class PatchMerging(nn.Module):
    """Concatenate each 2 x 2 neighbourhood, norm, halve. (B, S*S, C) -> (B, S*S/4, 2C)."""

    def __init__(self, *, width: int, size: int) -> None:
        super().__init__()
        self.size = size
        self.norm = nn.LayerNorm(4 * width, eps=MERGE_NORM_EPS)
        self.reduction = nn.Linear(4 * width, 2 * width, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        b, _, c = x.shape
        grid = x.view(b, self.size, self.size, c)
        parts = [grid[:, row::2, col::2] for col in range(2) for row in range(2)]
        merged = torch.cat(parts, dim=-1).view(b, -1, 4 * c)  # (B, S*S/4, 4C)
        return self.reduction(self.norm(merged))


def shift_of(cfg: SwinConfig, size: int, index: int) -> int:
    """Window shift of block ``index`` in a stage over a ``size`` grid: every second
    block shifts by half a window, unless one window covers the grid."""
    return 0 if size <= cfg.window_size or index % 2 == 0 else cfg.window_size // 2


class SwinStage(nn.Module):
    """``depth`` blocks over a ``size`` grid, then patch merging unless it is the last."""

    def __init__(self, *, width: int, heads: int, depth: int, size: int, merge: bool,
                 cfg: SwinConfig) -> None:
        super().__init__()
        self.blocks = nn.ModuleList()
        for i in range(depth):
            self.blocks.append(SwinBlock(width=width, heads=heads, size=size,
                                         window=cfg.window_size, shift=shift_of(cfg, size, i),
                                         cfg=cfg))
        self.merge = PatchMerging(width=width, size=size) if merge else None

    def forward(self, x: Tensor) -> Tensor:
        for block in self.blocks:
            x = block(x)
        return self.merge(x) if self.merge is not None else x


class SwinTransformer(Encoder):
    """(B, grid*grid, D) -> (B, (grid / 2**(S-1))**2, D * 2**(S-1))."""

    def __init__(self, cfg: SwinConfig, width: int) -> None:
        super().__init__()
        self.cfg, self.in_width = cfg, width
        last = len(cfg.depths) - 1
        self.stages = nn.ModuleList(
            SwinStage(width=width * 2**i, heads=heads, depth=depth, size=size,
                      merge=i < last, cfg=cfg)
            for i, (depth, heads, size) in enumerate(zip(cfg.depths, cfg.heads,
                                                         cfg.resolutions, strict=True)))
        self.out_width = width * 2**last
        self.final_norm = nn.LayerNorm(self.out_width, eps=MERGE_NORM_EPS) \
            if cfg.final_norm else nn.Identity()

    def forward(self, tokens: Tokens) -> Tokens:
        x = tokens.x
        if x.shape[1] != self.cfg.grid_size**2:
            raise ValueError(f"swin-transformer expects a {self.cfg.grid_size}x"
                             f"{self.cfg.grid_size} grid ({self.cfg.grid_size**2} tokens), "
                             f"got {x.shape[1]}")
        if tokens.mask is not None and not bool(tokens.mask.all()):
            raise ValueError("swin-transformer attends over a full grid; it takes no padding")
        for stage in self.stages:
            x = stage(x)
        return Tokens(self.final_norm(x))


def build_swin(cfg: SwinConfig, ctx: BuildContext) -> SwinTransformer:
    width = ctx.encoder_width(cfg.width)
    for i, heads in enumerate(cfg.heads):
        if (width * 2**i) % heads:
            raise ValueError(f"stage {i} width {width * 2**i} is not divisible by heads {heads}")
    return SwinTransformer(cfg, width)


def _block_cost(cfg: SwinConfig, width: int, heads: int, size: int) -> Cost:
    n, window = size * size, cfg.window_size
    proj = (linear(n, width, width, cfg.qkv_bias).times(3) + linear(n, width, width))
    scores = Cost(params=(2 * cfg.window_size - 1) ** 2 * heads,
                  flops=2 * 2 * n * window * window * width,  # q k^T and p v per window
                  activations=heads * n * window * window + 3 * n * width,
                  attention_scores=n * window * window)
    return (norm(n, width) + proj + scores + norm(n, width)
            + mlp(n, width, int(width * cfg.mlp_ratio)))


def swin_cost(cfg: SwinConfig, ctx: CostContext) -> Cost:
    """Blocks over each stage's grid (the configured one, not ``ctx``'s token count),
    patch merging between stages, the final norm."""
    if ctx.in_shape is None and cfg.width is None:
        raise ValueError("swin-transformer needs the width of the tokens it receives")
    width = cfg.width or (ctx.in_shape.width if ctx.in_shape else 0)
    cost, last = Cost(), len(cfg.depths) - 1
    for i, (depth, heads, size) in enumerate(zip(cfg.depths, cfg.heads, cfg.resolutions,
                                                 strict=True)):
        w = width * 2**i
        cost = cost + _block_cost(cfg, w, heads, size).times(depth)
        if i < last:
            quarter = size * size // 4
            cost = cost + norm(quarter, 4 * w) + linear(quarter, 4 * w, 2 * w, bias=False)
    tokens, out = cfg.resolutions[-1] ** 2, width * 2**last
    if cfg.final_norm:
        cost = cost + norm(tokens, out)
    return Cost(cost.params, cost.flops, cost.activations, cost.attention_scores,
                Shape(tokens, out))


def example_grid(module: SwinTransformer, batch_size: int, generator: torch.Generator) -> Tokens:
    """A full random token grid of the configured size, for the conformance suite."""
    n = module.cfg.grid_size**2
    return Tokens(torch.randn(batch_size, n, module.in_width, generator=generator))

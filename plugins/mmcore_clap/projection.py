"""Late fusion with MLP projection heads (CLAP): each modality is pooled on its own, then
projected by Linear -> activation -> Linear into the shared embedding space.

A modality named in ``tanh_pooler`` first passes its pooled vector through BERT's pooler,
``tanh(Linear(x))`` (CLAP's text tower pools its first token this way).
"""

from __future__ import annotations

from pydantic import Field
from torch import Tensor, nn

from mmcore.builder import BuildContext
from mmcore.contract import Fusion, FusionOutput, Tokens
from mmcore.cost import Cost, CostContext, linear
from mmcore.layers import MLP, pool
from mmcore.layers.pooling import PoolKind
from mmcore.registry import ComponentConfig


class LateMLPConfig(ComponentConfig):
    embed_dim: int = Field(gt=0)
    #: hidden width of each projection MLP; None: embed_dim (CLAP)
    hidden_dim: int | None = Field(None, gt=0)
    act: str = "relu"
    #: modality -> cls | eot | mean; unnamed modalities use ``default_pooling``
    pooling: dict[str, PoolKind] = Field(default_factory=dict)
    default_pooling: PoolKind = "mean"
    #: modalities whose pooled vector goes through tanh(Linear(x)) first (BERT's pooler)
    tanh_pooler: list[str] = Field(default_factory=list)

    @property
    def hidden(self) -> int:
        return self.hidden_dim or self.embed_dim


def _check_names(cfg: LateMLPConfig, widths: dict[str, int]) -> None:
    unknown = sorted((set(cfg.pooling) | set(cfg.tanh_pooler)) - set(widths))
    if unknown:
        raise ValueError(f"pooling / tanh_pooler name unknown modalities {unknown}; "
                         f"modalities are {sorted(widths)}")


class LateMLPFusion(Fusion):
    """name: Tokens (B, N, D_m) -> embeddings name: (B, embed_dim); no modality sees another."""

    def __init__(self, cfg: LateMLPConfig, widths: dict[str, int]) -> None:
        super().__init__()
        _check_names(cfg, widths)
        self.cfg = cfg
        self.embedding_widths = {m: cfg.embed_dim for m in sorted(widths)}
        self.poolers = nn.ModuleDict({m: nn.Linear(widths[m], widths[m])
                                      for m in sorted(cfg.tanh_pooler)})
        self.projections = nn.ModuleDict({
            m: MLP(width=w, hidden=cfg.hidden, out=cfg.embed_dim, act=cfg.act)
            for m, w in sorted(widths.items())})

    def embed(self, name: str, tokens: Tokens) -> Tensor:
        """One modality's tokens -> its (B, embed_dim) embedding (not normalised)."""
        pooled = pool(tokens, self.cfg.pooling.get(name, self.cfg.default_pooling))  # (B, D)
        if name in self.poolers:
            pooled = self.poolers[name](pooled).tanh()
        return self.projections[name](pooled)

    def forward(self, tokens: dict[str, Tokens]) -> FusionOutput:
        embeddings = {name: self.embed(name, tokens[name]) for name in sorted(tokens)}
        return FusionOutput(tokens=dict(tokens), embeddings=embeddings)


def build_late_mlp(cfg: LateMLPConfig, ctx: BuildContext) -> LateMLPFusion:
    return LateMLPFusion(cfg, ctx.widths)


def late_mlp_cost(cfg: LateMLPConfig, ctx: CostContext) -> Cost:
    """Per modality: the optional pooler and a two-layer MLP, on one pooled vector."""
    cost = Cost()
    for name, shape in sorted(ctx.shapes.items()):
        if name in cfg.tanh_pooler:
            cost = cost + linear(1, shape.width, shape.width)
        cost = cost + linear(1, shape.width, cfg.hidden) + linear(1, cfg.hidden, cfg.embed_dim)
    return Cost(cost.params, cost.flops, cost.activations,
                embeddings={m: cfg.embed_dim for m in sorted(ctx.shapes)})

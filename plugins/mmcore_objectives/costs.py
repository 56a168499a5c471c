"""Cost of the contrastive objective (kept beside, not inside, contrastive.py while that
file is being rewritten; it reads only the config)."""

from __future__ import annotations

from mmcore.cost import Cost, CostContext
from mmcore_objectives.contrastive import ContrastiveConfig


def contrastive_cost(cfg: ContrastiveConfig, ctx: CostContext) -> Cost:
    """Exact params: the logit scale, and SigLIP's logit bias. FLOPs per sample: the B x B
    similarity costs 2 B E per sample per pair, which depends on the batch size, so it is
    left out (it is small beside the encoders)."""
    return Cost(params=1 + int(cfg.loss == "sigmoid"))

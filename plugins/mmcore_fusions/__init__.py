"""mmcore's fusion strategies: early, late, cross-modal attention (one-directional and
co-attention), attention bottlenecks, the Perceiver latent array, the Perceiver resampler
and Flamingo's gated cross-attention over a frozen language model."""

from __future__ import annotations

from mmcore import hookimpl
from mmcore.hookspecs import Register
from mmcore_fusions.bottleneck import BottleneckFusionConfig, bottleneck_cost, build_bottleneck
from mmcore_fusions.co_attention import (
    CoAttentionFusionConfig,
    build_co_attention,
    co_attention_cost,
)
from mmcore_fusions.cross_attention import (
    CrossAttentionFusionConfig,
    build_cross_attention,
    cross_attention_cost,
)
from mmcore_fusions.early import EarlyFusionConfig, build_early, early_cost
from mmcore_fusions.gated_xattn import (
    GatedCrossAttentionBlock,
    GatedXAttnConfig,
    build_gated_xattn,
    gated_xattn_cost,
)
from mmcore_fusions.late import LateFusionConfig, build_late, late_cost
from mmcore_fusions.perceiver import PerceiverFusionConfig, build_perceiver, perceiver_cost
from mmcore_fusions.resampler import (
    PerceiverResampler,
    PerceiverResamplerConfig,
    build_perceiver_resampler,
    perceiver_resampler_cost,
)

__version__ = "0.1.0"

__all__ = ["GatedCrossAttentionBlock", "PerceiverResampler", "register_fusions"]


@hookimpl
def register_fusions(register: Register) -> None:
    register("early", build_early, config=EarlyFusionConfig, cost=early_cost,
             tiny={"width": 8, "layers": 1, "heads": 2},
             summary="one transformer over the joint sequence with modality-type embeddings")
    register("late", build_late, config=LateFusionConfig, cost=late_cost,
             tiny={"embed_dim": 8},
             summary="pool and project each modality on its own; optional combination")
    register("cross-attention", build_cross_attention, config=CrossAttentionFusionConfig,
             cost=cross_attention_cost,
             tiny={"query": "alpha", "context": "beta", "layers": 2, "heads": 2},
             summary="a query modality's stack cross-attends to a context modality (BLIP)")
    register("co-attention", build_co_attention, config=CoAttentionFusionConfig,
             cost=co_attention_cost, tiny={"layers": 1, "heads": 2},
             summary="two streams, each cross-attending to the other every layer (ViLBERT)")
    register("bottleneck", build_bottleneck, config=BottleneckFusionConfig,
             cost=bottleneck_cost,
             tiny={"width": 8, "layers": 2, "fusion_layer": 0, "num_bottlenecks": 2,
                   "heads": 2},
             summary="per-modality streams exchanging through shared fusion tokens (MBT)")
    register("perceiver", build_perceiver, config=PerceiverFusionConfig, cost=perceiver_cost,
             tiny={"width": 16, "num_latents": 4, "layers": 1, "heads": 2},
             summary="latent array cross-attends to all modalities (Perceiver IO)")
    register("perceiver-resampler", build_perceiver_resampler,
             config=PerceiverResamplerConfig, cost=perceiver_resampler_cost,
             tiny={"modality": "beta", "num_latents": 3, "layers": 1, "heads": 2},
             summary="learned latents resample one modality to a fixed number of tokens")
    register("gated-xattn", build_gated_xattn, config=GatedXAttnConfig, cost=gated_xattn_cost,
             tiny={"text": "alpha", "visual": "beta", "lm_layers": 2, "heads": 2,
                   "init_gate": 0.5, "resampler": {"num_latents": 3, "layers": 1, "heads": 2}},
             summary="gated cross-attention blocks in a frozen language model (Flamingo)")

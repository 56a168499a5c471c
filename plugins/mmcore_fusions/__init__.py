"""mmcore's fusion strategies: late fusion and the Perceiver latent array."""

from __future__ import annotations

from mmcore import hookimpl
from mmcore.hookspecs import Register
from mmcore_fusions.late import LateFusionConfig, build_late
from mmcore_fusions.perceiver import PerceiverFusionConfig, build_perceiver

__version__ = "0.1.0"


@hookimpl
def register_fusions(register: Register) -> None:
    register("late", build_late, config=LateFusionConfig, tiny={"embed_dim": 8},
             summary="pool and project each modality on its own; optional combination")
    register("perceiver", build_perceiver, config=PerceiverFusionConfig,
             tiny={"width": 16, "num_latents": 4, "layers": 1, "heads": 2},
             summary="latent array cross-attends to all modalities (Perceiver IO)")

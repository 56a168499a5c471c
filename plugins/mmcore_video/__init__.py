"""mmcore's video modality: a frames preprocessor, ViViT tubelet embedding, and joint or
factorised space-time transformer encoders."""

from __future__ import annotations

from typing import Any

import torch

from mmcore import hookimpl
from mmcore.cost import zero_cost
from mmcore.hookspecs import Register
from mmcore_video.factorised import (
    FactorisedConfig,
    build_space_time_factorised,
    example_grid_tokens,
    space_time_factorised_cost,
)
from mmcore_video.joint import (
    VideoTransformerConfig,
    build_space_time_joint,
    space_time_joint_cost,
)
from mmcore_video.preprocess import FramesConfig, FramesPreprocessor
from mmcore_video.tokenizer import (
    TubeletConfig,
    build_tubelet_embedding,
    example_clips,
    tubelet_cost,
)

__version__ = "0.1.0"


def example_videos(preprocessor: Any, batch_size: int, generator: torch.Generator) -> list[Any]:
    """Clips of differing lengths and frame sizes: (T, H, W, 3) uint8 arrays and a list of
    float frames, for the conformance suite."""
    clips: list[Any] = []
    for i in range(batch_size):
        t, h, w = 2 + 3 * i, 18 + 5 * i, 16 + 3 * (i % 2)
        clip = torch.randint(0, 256, (t, h, w, 3), generator=generator, dtype=torch.uint8)
        clips.append(clip.numpy() if i % 2 == 0 else [f.numpy() / 255.0 for f in clip])
    return clips


@hookimpl
def register_preprocessors(register: Register) -> None:
    register("frames", FramesPreprocessor.from_config, config=FramesConfig,
             tiny={"size": 8, "num_frames": 4}, example=example_videos, cost=zero_cost,
             summary="frame lists or (T, H, W, C) clips -> normalised (B, C, T, S, S)")


@hookimpl
def register_tokenizers(register: Register) -> None:
    register("tubelet-embedding", build_tubelet_embedding, config=TubeletConfig,
             tiny={"num_frames": 4, "image_size": 8, "tubelet_size": 2, "patch_size": 4,
                   "width": 16, "cls_token": True},
             example=example_clips, cost=tubelet_cost,
             summary="3-D tubelets (Conv3d) -> tokens, learned or separable positions")


@hookimpl
def register_encoders(register: Register) -> None:
    register("space-time-joint", build_space_time_joint, config=VideoTransformerConfig,
             tiny={"layers": 1, "heads": 2}, cost=space_time_joint_cost,
             summary="full attention over all tubelet tokens (ViViT model 1)")
    register("space-time-factorised", build_space_time_factorised, config=FactorisedConfig,
             tiny={"layers": 1, "heads": 2, "time": 2, "space": 3},
             example=example_grid_tokens, cost=space_time_factorised_cost,
             summary="spatial then temporal attention in every block (ViViT model 3)")


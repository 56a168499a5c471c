"""``vit-features``: a CLIP ViT that returns one hidden layer's patch tokens, as LLaVA reads
its vision tower (``vision_feature_layer``, ``vision_feature_select_strategy``).

The module holds the whole tower (every layer and the final norm, with the ``vit``
encoder's keys, so a CLIP checkpoint loads unchanged and parameter counts match
transformers') but runs only the layers up to ``feature_layer``.
"""

from __future__ import annotations

from typing import Literal

from torch import nn

from mmcore.builder import BuildContext
from mmcore.contract import Encoder, Tokens
from mmcore.cost import Cost, CostContext, Shape, transformer_stack
from mmcore.kernels import KernelSet
from mmcore.kernels.attention import real_padding
from mmcore.layers import TransformerStack
from mmcore_image.encoder import ViTConfig

#: HF vision_feature_select_strategy: "default" drops the CLS token, "full" keeps it
SELECT_STRATEGIES = ("default", "full")


class ViTFeaturesConfig(ViTConfig):
    #: which hidden state to return, as an index into HF's ``hidden_states`` (layers + 1
    #: entries: the input after ``pre_norm``, then each layer's output); -2 = LLaVA's
    feature_layer: int = -2
    #: ``default``: drop the first (CLS) token; ``full``: keep every token
    select: Literal["default", "full"] = "default"


def used_layers(cfg: ViTFeaturesConfig) -> int:
    """How many layers run to reach ``feature_layer``; ValueError when it is out of range."""
    count = cfg.layers + 1  # hidden states: the input, then one per layer
    if not -count <= cfg.feature_layer < count:
        raise ValueError(f"feature_layer {cfg.feature_layer} is out of range for {cfg.layers} "
                         f"layers (hidden states {-count}..{count - 1})")
    return cfg.feature_layer % count


class ViTFeatures(Encoder):
    """(B, 1 + N, D) CLS + patch tokens -> (B, N, D) (``default``) or (B, 1 + N, D)
    (``full``): the hidden state after ``used_layers`` blocks, without the final norm."""

    def __init__(self, cfg: ViTFeaturesConfig, width: int, kernels: KernelSet) -> None:
        super().__init__()
        self.cfg = cfg
        self.out_width = width
        self.depth = used_layers(cfg)
        self.stack = TransformerStack(width=width, layers=cfg.layers, heads=cfg.heads,
                                      kernels=kernels, mlp_ratio=cfg.mlp_ratio, act=cfg.act,
                                      norm_eps=cfg.norm_eps, pre_norm=cfg.pre_norm,
                                      final_norm=cfg.final_norm)

    @property
    def blocks(self) -> nn.ModuleList:
        return self.stack.blocks

    def forward(self, tokens: Tokens) -> Tokens:
        x = self.stack.pre_norm(tokens.x)  # (B, 1 + N, D)
        mask = real_padding(tokens.mask)
        for block in self.stack.blocks[: self.depth]:
            x = block(x, mask)
        if self.cfg.select == "default":
            mask = None if tokens.mask is None else tokens.mask[:, 1:]
            return Tokens(x[:, 1:], mask)  # (B, N, D)
        return Tokens(x, tokens.mask)


def build_vit_features(cfg: ViTFeaturesConfig, ctx: BuildContext) -> ViTFeatures:
    return ViTFeatures(cfg, ctx.encoder_width(cfg.width), ctx.kernels)


def vit_features_cost(cfg: ViTFeaturesConfig, ctx: CostContext) -> Cost:
    """Parameters of the whole tower; FLOPs and activations of the layers that run."""
    if ctx.in_shape is None:
        raise ValueError("vit-features' cost needs the shape of its input tokens")
    width, tokens = cfg.width or ctx.in_shape.width, ctx.in_shape.tokens
    whole = transformer_stack(tokens, width, cfg.layers, cfg.heads, cfg.mlp_ratio,
                              pre_norm=cfg.pre_norm, final_norm=cfg.final_norm)
    run = transformer_stack(tokens, width, used_layers(cfg), cfg.heads, cfg.mlp_ratio,
                            pre_norm=cfg.pre_norm, final_norm=False)
    out = tokens - 1 if cfg.select == "default" else tokens
    return Cost(whole.params, run.flops, run.activations, run.attention_scores,
                Shape(out, width))

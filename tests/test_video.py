"""Video plugin: frames preprocessor, tubelet embedding, joint and factorised encoders."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode

from mmcore.builder import BuildContext
from mmcore.contract import Tokens
from mmcore.cost import CostContext, Shape
from mmcore.kernels import KernelSet
from mmcore.plugins import get_registry
from mmcore_video.factorised import FactorisedConfig, build_space_time_factorised
from mmcore_video.joint import VideoTransformerConfig, build_space_time_joint
from mmcore_video.preprocess import FramesConfig, FramesPreprocessor, sample_indices
from mmcore_video.tokenizer import TubeletConfig, build_tubelet_embedding

MEAN, STD = 0.5, 0.25


def _preprocessor(**params: Any) -> FramesPreprocessor:
    return FramesPreprocessor(FramesConfig(mean=(MEAN,) * 3, std=(STD,) * 3, **params))


def _numbered_clip(length: int, h: int = 12, w: int = 10) -> np.ndarray:
    """(T, H, W, 3) uint8 whose frame t is filled with the value 10 t."""
    return np.stack([np.full((h, w, 3), 10 * t, dtype=np.uint8) for t in range(length)])


def _frame_numbers(clips: torch.Tensor) -> list[list[int]]:
    """Invert the normalisation of numbered clips (B, 3, T, S, S) -> frame numbers."""
    values = clips[:, 0, :, 0, 0] * STD + MEAN  # (B, T) in [0, 1]
    return (values * 255 / 10).round().int().tolist()


def _ctx(width: int) -> BuildContext:
    return BuildContext(kernels=KernelSet(), in_width=width)


# -- preprocessor -------------------------------------------------------------------------


def test_sample_indices_are_uniform_and_pad_with_the_last_frame() -> None:
    assert sample_indices(10, 4) == [1, 3, 6, 8]
    assert sample_indices(8, 8) == list(range(8))
    assert sample_indices(3, 5) == [0, 1, 2, 2, 2]
    with pytest.raises(ValueError, match="no frames"):
        sample_indices(0, 4)


def test_frames_from_arrays_pil_and_tensors() -> None:
    preprocess = _preprocessor(size=8, num_frames=4)
    clip = _numbered_clip(10)
    pil = [Image.fromarray(f) for f in _numbered_clip(3)]
    tensor = torch.from_numpy(_numbered_clip(4)).permute(0, 3, 1, 2)  # (T, C, H, W) frames
    out = preprocess([clip, pil, list(tensor), torch.from_numpy(clip)])
    assert out.shape == (4, 3, 4, 8, 8)
    assert out.dtype == torch.float32
    assert _frame_numbers(out) == [[1, 3, 6, 8], [0, 1, 2, 2], [0, 1, 2, 3], [1, 3, 6, 8]]
    # a constant frame normalises to (value / 255 - mean) / std everywhere
    torch.testing.assert_close(out[0, :, 1], torch.full((3, 8, 8), (30 / 255 - MEAN) / STD))


def test_frames_are_resized_on_the_short_side_and_center_cropped() -> None:
    frame = np.zeros((8, 16, 3), dtype=np.uint8)
    frame[:, 4:12] = 255  # a bright centre band, as wide as the crop
    out = _preprocessor(size=4, num_frames=1)([[frame]])
    assert out.shape == (1, 3, 1, 4, 4)
    assert torch.all(out[0, :, 0, :, 1:3] > (0.9 - MEAN) / STD)  # the band fills the crop


def test_frames_errors_are_clear() -> None:
    preprocess = _preprocessor(size=8, num_frames=2)
    with pytest.raises(ValueError, match=r"\(T, H, W, C\)"):
        preprocess([np.zeros((4, 8, 8), dtype=np.uint8)])
    with pytest.raises(TypeError, match="list of frames"):
        preprocess([Image.new("RGB", (8, 8))])
    with pytest.raises(ValueError, match="no frames"):
        preprocess([[]])
    with pytest.raises(ValueError, match="no video clips"):
        preprocess([])


# -- tubelet embedding --------------------------------------------------------------------


def test_tubelet_shapes_grid_and_cls() -> None:
    cfg = TubeletConfig(num_frames=8, image_size=32, tubelet_size=2, patch_size=16, width=12,
                        cls_token=True)
    tokenizer = build_tubelet_embedding(cfg, _ctx(12))
    assert tokenizer.grid == (4, 2, 2)
    assert (tokenizer.time, tokenizer.space) == (4, 4)
    tokens = tokenizer(torch.randn(2, 3, 8, 32, 32))
    assert tokens.x.shape == (2, 1 + 16, 12)
    with pytest.raises(ValueError, match=r"expected clips \(B, 3, 8, 32, 32\)"):
        tokenizer(torch.randn(2, 3, 6, 32, 32))
    with pytest.raises(ValueError, match="not a multiple of tubelet_size"):
        TubeletConfig(num_frames=7, image_size=32, tubelet_size=2, patch_size=16, width=12)


def test_tubelet_tokens_are_time_major_projections_of_each_tube() -> None:
    cfg = TubeletConfig(num_frames=4, image_size=8, tubelet_size=2, patch_size=4, width=6,
                        positions="none")
    tokenizer = build_tubelet_embedding(cfg, _ctx(6))
    clip = torch.randn(1, 3, 4, 8, 8)
    x = tokenizer(clip).x  # (1, 2 * 2 * 2, 6)
    weight, bias = tokenizer.proj.weight, tokenizer.proj.bias
    for t, h, w in [(0, 0, 0), (0, 1, 0), (1, 0, 1), (1, 1, 1)]:
        tube = clip[0, :, 2 * t : 2 * t + 2, 4 * h : 4 * h + 4, 4 * w : 4 * w + 4]
        expected = (weight * tube).sum(dim=(1, 2, 3, 4)) + bias
        torch.testing.assert_close(x[0, t * 4 + h * 2 + w], expected, atol=1e-5, rtol=1e-5)


def test_separable_positions_are_a_time_plus_space_table() -> None:
    cfg = TubeletConfig(num_frames=4, image_size=8, tubelet_size=2, patch_size=4, width=6,
                        positions="separable")
    tokenizer = build_tubelet_embedding(cfg, _ctx(6))
    with torch.no_grad():
        tokenizer.proj.weight.zero_()
        tokenizer.proj.bias.zero_()
    x = tokenizer(torch.randn(1, 3, 4, 8, 8)).x[0].reshape(2, 4, 6)  # (T', S, D)
    time_pos, space_pos = tokenizer.time_positions, tokenizer.space_positions
    assert time_pos is not None and space_pos is not None
    torch.testing.assert_close(x, time_pos + space_pos)


# -- encoders -----------------------------------------------------------------------------


def _factorised(time: int, space: int, width: int = 16, layers: int = 2) -> Any:
    cfg = FactorisedConfig(layers=layers, heads=2, time=time, space=space)
    return build_space_time_factorised(cfg, _ctx(width)).eval()


def _joint_like(factorised: Any, width: int = 16) -> Any:
    """A joint encoder holding the factorised one's spatial attention, norms and MLPs."""
    joint = build_space_time_joint(VideoTransformerConfig(layers=len(factorised.blocks),
                                                          heads=2), _ctx(width)).eval()
    state = {"stack.final_norm." + k: v for k, v in factorised.final_norm.state_dict().items()}
    names = {"norm1": "space_norm", "attn": "space_attn", "norm2": "mlp_norm", "mlp": "mlp"}
    for i, block in enumerate(factorised.blocks):
        for ours, theirs in names.items():
            for k, v in block.get_submodule(theirs).state_dict().items():
                state[f"stack.blocks.{i}.{ours}.{k}"] = v
    joint.load_state_dict(state)
    return joint


def _silence_time_attention(factorised: Any) -> None:
    with torch.no_grad():
        for block in factorised.blocks:
            block.time_attn.out_proj.weight.zero_()
            block.time_attn.out_proj.bias.zero_()


def test_factorised_with_one_frame_is_spatial_attention_only() -> None:
    torch.manual_seed(0)
    factorised = _factorised(time=1, space=6)
    _silence_time_attention(factorised)
    tokens = Tokens(torch.randn(2, 6, 16))
    with torch.no_grad():
        torch.testing.assert_close(factorised(tokens).x, _joint_like(factorised)(tokens).x)


def test_factorised_without_time_attention_is_per_frame_joint_attention() -> None:
    torch.manual_seed(1)
    factorised = _factorised(time=3, space=4)
    _silence_time_attention(factorised)
    joint = _joint_like(factorised)
    x = torch.randn(2, 12, 16)
    with torch.no_grad():
        got = factorised(Tokens(x)).x
        per_frame = joint(Tokens(x.reshape(6, 4, 16))).x.reshape(2, 12, 16)
        mixed = joint(Tokens(x)).x
    torch.testing.assert_close(got, per_frame, atol=1e-5, rtol=1e-5)
    assert float((got - mixed).abs().max()) > 1e-2  # joint attention does mix frames


def test_temporal_attention_mixes_only_one_spatial_location() -> None:
    """With spatial attention silenced, changing token (t=0, s=1) moves only tokens at s=1."""
    torch.manual_seed(2)
    factorised = _factorised(time=3, space=4, layers=1)
    with torch.no_grad():
        factorised.blocks[0].space_attn.out_proj.weight.zero_()
        factorised.blocks[0].space_attn.out_proj.bias.zero_()
        x = torch.randn(1, 12, 16)
        y = x.clone()
        y[0, 1] += torch.randn(16)  # frame 0, location 1 (not a constant: LayerNorm)
        changed = (factorised(Tokens(x)).x - factorised(Tokens(y)).x).abs().amax(-1)[0]
    moved = changed.reshape(3, 4) > 1e-6  # (T, S)
    assert moved[:, 1].all() and not moved[:, [0, 2, 3]].any()


def test_factorised_ignores_padded_frames() -> None:
    torch.manual_seed(3)
    factorised = _factorised(time=3, space=4)
    x = torch.randn(1, 12, 16)
    mask = torch.ones(1, 12, dtype=torch.bool)
    mask[0, 8:] = False  # the last frame is padding
    y = x.clone()
    y[0, 8:] = torch.randn(4, 16)
    with torch.no_grad():
        a, b = factorised(Tokens(x, mask)).x, factorised(Tokens(y, mask)).x
    torch.testing.assert_close(a[0, :8], b[0, :8])


def test_factorised_checks_the_grid() -> None:
    factorised = _factorised(time=2, space=4)
    with pytest.raises(ValueError, match=r"2 x 4 = 8 tokens, got 9 \(a CLS token"):
        factorised(Tokens(torch.randn(1, 9, 16)))
    with pytest.raises(ValueError, match=r"got 7$"):
        factorised(Tokens(torch.randn(1, 7, 16)))


def test_tubelets_through_both_encoders() -> None:
    cfg = TubeletConfig(num_frames=4, image_size=8, tubelet_size=2, patch_size=4, width=16)
    tokenizer = build_tubelet_embedding(cfg, _ctx(16))
    tokens = tokenizer(torch.randn(2, 3, 4, 8, 8))
    factorised = _factorised(time=tokenizer.time, space=tokenizer.space)
    joint = build_space_time_joint(VideoTransformerConfig(layers=1, heads=2), _ctx(16))
    assert factorised(tokens).x.shape == joint(tokens).x.shape == (2, 8, 16)


# -- costs --------------------------------------------------------------------------------


def _cost(kind: str, name: str, params: dict, ctx: CostContext | None = None) -> Any:
    entry = get_registry().get(kind, name)
    return entry.cost(entry.config.model_validate(params), ctx or CostContext())


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _counted_flops(module: torch.nn.Module, inputs: Any) -> int:
    """FLOPs torch's own counter sees in one forward pass."""
    with FlopCounterMode(display=False) as counter:
        module(inputs)
    return int(counter.get_total_flops())


@pytest.mark.parametrize(("positions", "cls_token"), [("learned", True), ("separable", False),
                                                      ("separable", True), ("none", False)])
def test_tubelet_cost_counts_its_parameters(positions: str, cls_token: bool) -> None:
    params = {"num_frames": 8, "image_size": 32, "tubelet_size": 2, "patch_size": 16,
              "width": 24, "positions": positions, "cls_token": cls_token}
    cost = _cost("tokenizer", "tubelet-embedding", params)
    tokenizer = build_tubelet_embedding(TubeletConfig(**params), _ctx(24))
    assert cost.params == _count(tokenizer)
    assert cost.flops == _counted_flops(tokenizer, torch.randn(1, 3, 8, 32, 32))
    assert cost.out == Shape(16 + int(cls_token), 24)
    assert cost.flops == 2 * 16 * (3 * 2 * 16 * 16) * 24


def test_encoder_costs_count_their_parameters() -> None:
    ctx = CostContext(in_shape=Shape(12, 32))
    joint = {"layers": 2, "heads": 4}
    assert _cost("encoder", "space-time-joint", joint, ctx).params == _count(
        build_space_time_joint(VideoTransformerConfig(**joint), _ctx(32)))
    fact = {"layers": 2, "heads": 4, "time": 3, "space": 4}
    cost = _cost("encoder", "space-time-factorised", fact, ctx)
    factorised = build_space_time_factorised(FactorisedConfig(**fact), _ctx(32))
    assert cost.params == _count(factorised)
    assert cost.flops == _counted_flops(factorised, Tokens(torch.randn(1, 12, 32)))
    assert cost.out == Shape(12, 32)
    # vs joint attention over 12 tokens: scores for 3 frames of 4 x 4 and 4 locations of
    # 3 x 3 instead of 12 x 12, plus the temporal attention's 4 projections
    joint_cost = _cost("encoder", "space-time-joint", joint, ctx)
    layers, n, d = 2, 12, 32

    def scores(pairs: int) -> int:
        return 2 * 2 * pairs * d  # q k^T and p v, 2 FLOPs per multiply-add

    extra = scores(n * n) - scores(3 * 4 * 4) - scores(4 * 3 * 3) - 4 * 2 * n * d * d
    assert joint_cost.flops - cost.flops == layers * extra
    assert _cost("preprocessor", "frames", {}).params == 0


"""Import of a diffusers-layout Stable Diffusion folder, read through
:mod:`mmcore.convert.hf` (config reading, safetensors only, strict key mapping).

A folder holds ``unet/``, ``vae/``, ``text_encoder/``, ``tokenizer/`` and ``scheduler/``.
``unet/`` and ``vae/`` hold ``config.json`` and ``diffusion_pytorch_model.safetensors``
(or its shards, listed by ``diffusion_pytorch_model.safetensors.index.json``).
Configs are translated into :class:`UNetConfig` / :class:`VAEConfig`; every block type,
class or option mmcore does not implement is refused by name (never approximated).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from mmcore.convert import hf
from mmcore.errors import CheckpointError
from mmcore.kernels import KernelSet
from mmcore_diffusion.samplers import (
    DDIMSampler,
    DDPMSampler,
    DPMSolverSampler,
    EulerSampler,
    Sampler,
    dpm_solver_from_config,
)
from mmcore_diffusion.schedules import NoiseSchedule
from mmcore_diffusion.unet import UNet2DCondition, UNetConfig
from mmcore_diffusion.vae import AutoencoderKL, VAEConfig

WEIGHTS = "diffusion_pytorch_model.safetensors"
DOWN_BLOCKS = {"CrossAttnDownBlock2D": True, "DownBlock2D": False}
UP_BLOCKS = {"CrossAttnUpBlock2D": True, "UpBlock2D": False}
#: diffusers UNet2DConditionModel options mmcore implements only at these values
UNET_FIXED: dict[str, tuple[Any, ...]] = {
    "mid_block_type": ("UNetMidBlock2DCrossAttn",), "act_fn": ("silu",),
    "center_input_sample": (False,), "class_embed_type": (None,), "num_class_embeds": (None,),
    "addition_embed_type": (None,), "encoder_hid_dim": (None,), "time_cond_proj_dim": (None,),
    "time_embedding_type": ("positional",), "time_embedding_dim": (None,),
    "time_embedding_act_fn": (None,), "timestep_post_act": (None,),
    "resnet_time_scale_shift": ("default",), "resnet_skip_time_act": (False,),
    "resnet_out_scale_factor": (1.0,), "dual_cross_attention": (False,),
    "only_cross_attention": (False,), "mid_block_only_cross_attention": (None, False),
    "cross_attention_norm": (None,), "attention_type": ("default",),
    "conv_in_kernel": (3,), "conv_out_kernel": (3,), "downsample_padding": (1,),
    "mid_block_scale_factor": (1, 1.0), "reverse_transformer_layers_per_block": (None,),
    "projection_class_embeddings_input_dim": (None,), "addition_time_embed_dim": (None,)}
VAE_FIXED: dict[str, tuple[Any, ...]] = {
    "act_fn": ("silu",), "shift_factor": (None,), "latents_mean": (None,),
    "latents_std": (None,)}


def _fixed(cfg: Mapping[str, Any], fixed: Mapping[str, tuple[Any, ...]], where: str) -> None:
    for key, allowed in fixed.items():
        if key in cfg and cfg[key] not in allowed:
            raise CheckpointError(f"{where}: {key}={cfg[key]!r} is not implemented by mmcore "
                                  f"(supported: {', '.join(repr(a) for a in allowed)})")


def _class(cfg: Mapping[str, Any], name: str, where: str) -> None:
    if cfg.get("_class_name", name) != name:
        raise CheckpointError(f"{where}: _class_name {cfg['_class_name']!r} is not "
                              f"implemented by mmcore (expected {name})")


def _block_kinds(types: Any, known: Mapping[str, bool], key: str, where: str) -> tuple[bool, ...]:
    unknown = [t for t in types if t not in known]
    if unknown:
        raise CheckpointError(f"{where}: {key} has block type(s) {', '.join(unknown)} that "
                              f"mmcore does not implement (supported: {', '.join(known)})")
    return tuple(known[t] for t in types)


def _per_level(value: Any, levels: int, key: str, where: str) -> tuple[int, ...]:
    values = [value] * levels if isinstance(value, int) else list(value)
    if len(values) != levels or not all(isinstance(v, int) for v in values):
        raise CheckpointError(f"{where}: {key} must be an int or {levels} ints, got {value!r}")
    return tuple(values)


def _int(cfg: Mapping[str, Any], key: str, where: str, default: int) -> int:
    value = cfg.get(key, default)
    if value is None:
        return default
    if not isinstance(value, int):
        raise CheckpointError(f"{where}: {key}={value!r}: only a single int is implemented")
    return value


def unet_config(cfg: Mapping[str, Any], where: str = "unet/config.json") -> UNetConfig:
    """A diffusers ``UNet2DConditionModel`` config -> :class:`UNetConfig` (refusing by name
    every block type and option mmcore does not implement)."""
    _class(cfg, "UNet2DConditionModel", where)
    _fixed(cfg, UNET_FIXED, where)
    d = UNetConfig()
    channels = tuple(cfg.get("block_out_channels", d.block_out_channels))
    down = _block_kinds(cfg.get("down_block_types", ("CrossAttnDownBlock2D",) * 3 +
                                ("DownBlock2D",)), DOWN_BLOCKS, "down_block_types", where)
    up = _block_kinds(cfg.get("up_block_types", ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3),
                      UP_BLOCKS, "up_block_types", where)
    if not len(down) == len(up) == len(channels):
        raise CheckpointError(f"{where}: down_block_types, up_block_types and "
                              "block_out_channels must have the same length")
    heads = cfg.get("num_attention_heads") or cfg.get("attention_head_dim", 8)
    cross = cfg.get("cross_attention_dim", 1280)
    if not isinstance(cross, int):
        raise CheckpointError(f"{where}: cross_attention_dim={cross!r}: only one int is "
                              "implemented")
    return UNetConfig(
        in_channels=cfg.get("in_channels", 4), out_channels=cfg.get("out_channels", 4),
        block_out_channels=channels, down_attention=down, up_attention=up,
        layers_per_block=_int(cfg, "layers_per_block", where, 2),
        heads=_per_level(heads, len(channels), "attention_head_dim", where),
        cross_attention_dim=cross,
        transformer_depth=_int(cfg, "transformer_layers_per_block", where, 1),
        norm_num_groups=cfg.get("norm_num_groups", 32), norm_eps=cfg.get("norm_eps", 1e-5),
        flip_sin_to_cos=cfg.get("flip_sin_to_cos", True), freq_shift=cfg.get("freq_shift", 0),
        linear_projection=bool(cfg.get("use_linear_projection", False)))


def vae_config(cfg: Mapping[str, Any], where: str = "vae/config.json") -> VAEConfig:
    """A diffusers ``AutoencoderKL`` config -> :class:`VAEConfig`."""
    _class(cfg, "AutoencoderKL", where)
    _fixed(cfg, VAE_FIXED, where)
    channels = tuple(cfg.get("block_out_channels", (64,)))
    _block_kinds(cfg.get("down_block_types", ("DownEncoderBlock2D",) * len(channels)),
                 {"DownEncoderBlock2D": True}, "down_block_types", where)
    _block_kinds(cfg.get("up_block_types", ("UpDecoderBlock2D",) * len(channels)),
                 {"UpDecoderBlock2D": True}, "up_block_types", where)
    return VAEConfig(
        in_channels=cfg.get("in_channels", 3), out_channels=cfg.get("out_channels", 3),
        latent_channels=cfg.get("latent_channels", 4), block_out_channels=channels,
        layers_per_block=_int(cfg, "layers_per_block", where, 1),
        norm_num_groups=cfg.get("norm_num_groups", 32),
        scaling_factor=cfg.get("scaling_factor", 0.18215),
        use_quant_conv=cfg.get("use_quant_conv", True),
        use_post_quant_conv=cfg.get("use_post_quant_conv", True),
        mid_block_attention=cfg.get("mid_block_add_attention", True))


def _transformer_rules(prefix: str) -> list[tuple[str, str]]:
    """diffusers Transformer2DModel keys under ``prefix`` -> :class:`SpatialTransformer`'s."""
    src, dst = f"{prefix}.transformer_blocks.{{}}", f"{prefix}.blocks.{{}}"
    return [(f"{src}.attn1.to_out.0.*", f"{dst}.attn1.to_out.*"),
            (f"{src}.attn2.to_out.0.*", f"{dst}.attn2.to_out.*"),
            (f"{src}.ff.net.0.proj.*", f"{dst}.ff.proj.*"),
            (f"{src}.ff.net.2.*", f"{dst}.ff.out.*"),
            (f"{src}.*", f"{dst}.*")]


def unet_key_map() -> hf.KeyMap:
    """diffusers UNet2DConditionModel keys -> :class:`UNet2DCondition` keys."""
    rules: list[tuple[str, str]] = []
    for prefix in ("down_blocks.{}.attentions.{}", "up_blocks.{}.attentions.{}",
                   "mid_block.attentions.{}"):
        rules += _transformer_rules(prefix)
    rules += [(f"{top}.*", f"{top}.*") for top in (
        "conv_in", "time_embedding", "down_blocks", "mid_block", "up_blocks", "conv_norm_out",
        "conv_out")]
    return hf.KeyMap(rules, target="mmcore U-Net")


def vae_key_map() -> hf.KeyMap:
    """diffusers AutoencoderKL keys (current and legacy attention names) -> mmcore's."""
    rules: list[tuple[str, str]] = []
    for side in ("encoder", "decoder"):
        attn = f"{side}.mid_block.attentions.{{}}"
        rules.append((f"{attn}.group_norm.*", f"{attn}.group_norm.*"))
        for old, new in (("to_out.0", "to_out"), ("proj_attn", "to_out"), ("query", "to_q"),
                         ("key", "to_k"), ("value", "to_v"), ("to_q", "to_q"),
                         ("to_k", "to_k"), ("to_v", "to_v")):
            rules.append((f"{attn}.{old}.*", f"{attn}.attn.{new}.*"))
        rules.append((f"{side}.*", f"{side}.*"))
    rules += [("quant_conv.*", "quant_conv.*"), ("post_quant_conv.*", "post_quant_conv.*")]
    return hf.KeyMap(rules, target="mmcore autoencoder")


def read_component_weights(folder: Path) -> dict[str, Tensor]:
    """``folder/diffusion_pytorch_model.safetensors``, or the shards its
    ``.index.json`` lists (read and validated by :func:`mmcore.convert.hf.read_weights`;
    pickles refused)."""
    folder = Path(folder)
    if not hf.has_weights(folder, WEIGHTS):
        found = sorted(p.name for p in folder.glob("diffusion_pytorch_model*"))
        extra = f" (found {', '.join(found)}; pickled weights are not read: convert them " \
            "to safetensors)" if found else ""
        raise CheckpointError(f"{folder} has no {WEIGHTS} (nor "
                              f"{hf.index_name(WEIGHTS)}){extra}")
    return hf.read_weights(folder, name=WEIGHTS)


def load_state(model: nn.Module, state: Mapping[str, Tensor], key_map: hf.KeyMap,
               source: str) -> None:
    """Rename ``state`` with ``key_map`` and load it strictly (shapes checked) into ``model``."""
    expected = model.state_dict()
    renamed = key_map.apply(state, source=source, expected=expected)
    bad = [f"{k} {tuple(v.shape)} (expected {tuple(expected[k].shape)})"
           for k, v in renamed.items() if v.shape != expected[k].shape]
    if bad:
        raise CheckpointError(f"{source}: shape mismatch for {', '.join(bad[:4])}")
    model.load_state_dict(renamed, strict=True)


def load_unet(folder: Path, *, kernels: KernelSet | None = None) -> UNet2DCondition:
    """A diffusers ``unet/`` folder -> :class:`UNet2DCondition` with its weights."""
    folder = Path(folder)
    cfg = unet_config(hf.read_config(folder), str(folder / hf.CONFIG))
    model = UNet2DCondition(cfg, kernels=kernels)
    load_state(model, read_component_weights(folder), unet_key_map(), str(folder / WEIGHTS))
    return model.eval()


def load_vae(folder: Path, *, kernels: KernelSet | None = None) -> AutoencoderKL:
    """A diffusers ``vae/`` folder -> :class:`AutoencoderKL` with its weights."""
    folder = Path(folder)
    cfg = vae_config(hf.read_config(folder), str(folder / hf.CONFIG))
    model = AutoencoderKL(cfg, kernels=kernels)
    load_state(model, read_component_weights(folder), vae_key_map(), str(folder / WEIGHTS))
    return model.eval()


SCHEDULER_CONFIG = "scheduler_config.json"
SAMPLERS = {"DDPMScheduler": DDPMSampler, "DDIMScheduler": DDIMSampler,
            "EulerDiscreteScheduler": EulerSampler,
            "DPMSolverMultistepScheduler": DPMSolverSampler}
SCHEDULER_FIXED: dict[str, tuple[Any, ...]] = {
    "trained_betas": (None,), "thresholding": (False,), "rescale_betas_zero_snr": (False,),
    "variance_type": ("fixed_small", "fixed_large", None), "use_karras_sigmas": (False,),
    "use_exponential_sigmas": (False,), "use_beta_sigmas": (False,),
    "interpolation_type": ("linear",), "timestep_type": ("discrete",),
    "final_sigmas_type": ("zero",), "prediction_type": ("epsilon", "v_prediction")}


def sampler_from_config(cfg: Mapping[str, Any], *, cls: str | None = None,
                        where: str = SCHEDULER_CONFIG) -> Sampler:
    """A diffusers scheduler config -> the matching sampler. ``cls`` overrides
    ``_class_name`` (as ``DDIMScheduler.from_config(other.config)`` does in diffusers)."""
    name = cls or cfg.get("_class_name")
    if name not in SAMPLERS:
        raise CheckpointError(f"{where}: scheduler {name!r} is not implemented by mmcore; "
                              f"implemented: {', '.join(SAMPLERS)} (pass one to use its "
                              "sampler with this schedule)")
    if name == "DPMSolverMultistepScheduler":
        return dpm_solver_from_config(cfg, where)
    _fixed(cfg, SCHEDULER_FIXED, where)
    schedule = NoiseSchedule.create(
        cfg.get("beta_schedule", "linear"), cfg.get("num_train_timesteps", 1000),
        cfg.get("beta_start", 1e-4), cfg.get("beta_end", 0.02),
        cfg.get("prediction_type", "epsilon"))
    if name == "EulerDiscreteScheduler":
        return EulerSampler(schedule, spacing=cfg.get("timestep_spacing", "linspace"),
                            steps_offset=cfg.get("steps_offset", 0))
    clip = cfg.get("clip_sample_range", 1.0) if cfg.get("clip_sample", True) else None
    common = dict(spacing=cfg.get("timestep_spacing", "leading"),
                  steps_offset=cfg.get("steps_offset", 0), clip_sample=clip)
    if name == "DDPMScheduler":
        return DDPMSampler(schedule, **common,
                           variance=cfg.get("variance_type", "fixed_small"))
    return DDIMSampler(schedule, **common, set_alpha_to_one=cfg.get("set_alpha_to_one", True))


def load_sampler(folder: Path, *, cls: str | None = None) -> Sampler:
    """The sampler of a diffusers ``scheduler/`` folder (``scheduler_config.json``)."""
    path = Path(folder) / SCHEDULER_CONFIG
    return sampler_from_config(hf.read_json_object(path), cls=cls, where=str(path))

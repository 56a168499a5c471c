"""Analytic costs of the registered diffusion components (``mmcore inspect`` builds
nothing): exact parameters, and the FLOPs of one denoising step at the configured latent
size (``sample_size``) with the text length the text modality emits."""

from __future__ import annotations

from mmcore.cost import Cost, CostContext, Figure, Shape
from mmcore.registry import ComponentConfig
from mmcore_diffusion import cost as counts
from mmcore_diffusion.codec import KLAutoencoderConfig, LatentTokenizerConfig
from mmcore_diffusion.denoisers import DiTDenoiserConfig, UNetDenoiserConfig
from mmcore_diffusion.unet import UNetConfig


def kl_autoencoder_params(cfg: KLAutoencoderConfig) -> int:
    return counts.vae_parameters(cfg.vae_config())


def latent_tokenizer_cost(cfg: LatentTokenizerConfig, ctx: CostContext) -> Cost:
    """The codec's parameters (a KL autoencoder) and FLOPs: encoding one ``image_size``
    image, and decoding it back with ``reconstruct``."""
    codec = dict(cfg.codec)
    kind = codec.pop("type")
    if kind != "kl-autoencoder":
        raise ValueError(f"no analytic cost for codec {kind!r}")
    params = KLAutoencoderConfig.model_validate(codec)
    side = cfg.image_size // params.vae_config().downsampling
    flops = counts.vae_flops(params.vae_config(), cfg.image_size, decode=cfg.reconstruct)
    return Cost(params=kl_autoencoder_params(params), flops=flops,
                out=Shape(side * side, params.latent_channels))


def _text_tokens(cfg: UNetDenoiserConfig | DiTDenoiserConfig, ctx: CostContext) -> int:
    shape = ctx.shapes.get(cfg.text)
    return shape.tokens if shape is not None else 77


#: batch sizes ``mmcore inspect`` reports the sampling memory at
SAMPLING_BATCHES = (1, 8)


def unet_cost(cfg: UNetDenoiserConfig, ctx: CostContext) -> Cost:
    """FLOPs: one U-Net call on one ``sample_size``-square latent (guidance doubles it).
    Figures for ``mmcore inspect``: those FLOPs as one denoising step, and the memory of
    guided fp32 sampling at :data:`SAMPLING_BATCHES` (every weight of the model + the
    U-Net's working set, :func:`~mmcore_diffusion.cost.sampling_memory`)."""
    unet: UNetConfig = cfg.unet_config()
    side, text = cfg.sample_size, _text_tokens(cfg, ctx)
    flops = counts.unet_flops(unet, side, side, text)
    scores = side**4 if unet.down_attention[0] else 0
    figures = [Figure(f"one denoising step per image ({side}x{side} latents, {text} text "
                      "tokens, unguided)", flops, "FLOP")]
    figures += [Figure(f"sampling memory at batch {b} (guided, fp32)",
                       counts.sampling_memory(0, unet, side, b), "B", per_parameter=4)
                for b in SAMPLING_BATCHES]
    return Cost(params=counts.unet_parameters(unet), flops=flops, attention_scores=scores,
                out=Shape(side * side, unet.out_channels), figures=tuple(figures))


def dit_cost(cfg: DiTDenoiserConfig, ctx: CostContext) -> Cost:
    image = ctx.shapes.get(cfg.image)
    text = ctx.shapes.get(cfg.text)
    if image is None or text is None:
        raise ValueError(f"dit's cost needs modalities {cfg.image!r} and {cfg.text!r}")
    c, d, p = image.width, cfg.width, cfg.patch_size
    hidden = int(d * cfg.mlp_ratio)
    lin = counts.linear
    block = (4 * lin(d, d) + lin(d, d) + 2 * lin(text.width, d) + lin(d, d) + 2 * d
             + lin(d, hidden) + lin(hidden, d) + lin(d, 6 * d))
    params = (c * d * p * p + d + 2 * lin(d, d) + cfg.layers * block + lin(d, 2 * d)
              + lin(d, p * p * c))
    n = cfg.sample_size**2 // (p * p)
    per_block = 2 * n * d * d * 6 + 2 * text.tokens * text.width * d * 2 \
        + 2 * 2 * n * (n + text.tokens) * d + 2 * 2 * n * d * hidden + 2 * d * 6 * d
    flops = 2 * n * c * p * p * d + cfg.layers * per_block + 2 * n * d * p * p * c \
        + 2 * 2 * d * d + 2 * d * 2 * d  # time MLP, final modulation
    return Cost(params=params, flops=flops, attention_scores=n * n,
                out=Shape(cfg.sample_size**2, c))


def no_cost(cfg: ComponentConfig, ctx: CostContext) -> Cost:
    return Cost()

"""Objectives of latent diffusion: ``diffusion`` (noise or v prediction under a schedule,
with conditioning dropout for classifier-free guidance) and ``reconstruction`` (a codec's
pixel MSE plus a KL term; it reports PSNR). A codec with ``auxiliary_terms(posterior) ->
{"loss": ..., name: metric}`` (a VQ-VAE) has that loss added and the rest logged.

Both corrupt or decode the model's input, so both work through ``prepare(batch, tokens)``
(see :class:`mmcore.contract.Objective`); ``forward`` reads what ``prepare`` left in
``output.prepared``.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from mmcore.builder import BuildContext
from mmcore.contract import Batch, ModelOutput, Objective, Tokens
from mmcore.registry import ComponentConfig
from mmcore_diffusion.codec import Latents, tokens_to_latents
from mmcore_diffusion.denoisers import STEP_KEY, step_tokens
from mmcore_diffusion.schedules import NoiseSchedule


class DiffusionConfig(ComponentConfig):
    image: str = "image"
    text: str = "text"
    beta_schedule: Literal["linear", "scaled_linear", "squaredcos_cap_v2"] = "scaled_linear"
    num_train_timesteps: int = Field(1000, gt=0)
    beta_start: float = Field(0.00085, gt=0)
    beta_end: float = Field(0.012, gt=0)
    prediction_type: Literal["epsilon", "v_prediction"] = "epsilon"
    #: chance that a training sample's text is dropped (classifier-free guidance)
    condition_dropout: float = Field(0.1, ge=0, lt=1)


class Diffusion(Objective):
    """MSE between the denoiser's output and the noise (or v) added by ``prepare``."""

    def __init__(self, cfg: DiffusionConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.schedule = NoiseSchedule.create(cfg.beta_schedule, cfg.num_train_timesteps,
                                             cfg.beta_start, cfg.beta_end, cfg.prediction_type)

    def prepare(self, batch: Batch, tokens: dict[str, Tokens]) -> tuple[dict[str, Tokens], Any]:
        """Clean latents ``(B, N, C)`` -> noisy ones at random timesteps; drop the text of
        a ``condition_dropout`` share of the samples (training only)."""
        if self.cfg.image not in tokens:
            raise ValueError(f"diffusion: the batch has no {self.cfg.image!r} latents")
        x0 = tokens[self.cfg.image].x.detach()
        b = x0.shape[0]
        t = torch.randint(0, self.schedule.train_steps, (b,), device=x0.device)
        noise = torch.randn_like(x0)
        noisy = self.schedule.add_noise(x0, noise, t)
        dropped = (torch.rand(b, device=x0.device) < self.cfg.condition_dropout) \
            if self.training else torch.zeros(b, dtype=torch.bool, device=x0.device)
        out = dict(tokens)
        out[self.cfg.image] = Tokens(noisy)
        out[STEP_KEY] = step_tokens(t, dropped)
        return out, {"target": self.schedule.target(x0, noise, t)}

    def forward(self, output: ModelOutput, batch: Batch) -> dict[str, Tensor]:
        if not isinstance(output.prepared, dict) or "target" not in output.prepared:
            raise ValueError("the diffusion objective needs its prepare hook: train through "
                             "MultimodalModel.loss(batch)")
        if self.cfg.image not in output.tokens:
            raise ValueError(f"diffusion: the fusion returned no {self.cfg.image!r} tokens")
        loss = F.mse_loss(output.tokens[self.cfg.image].x, output.prepared["target"])
        return {"loss": loss}


def build_diffusion(cfg: DiffusionConfig, ctx: BuildContext) -> Diffusion:
    return Diffusion(cfg)


def example_diffusion(module: Objective, batch: int,
                      generator: torch.Generator) -> tuple[ModelOutput, dict[str, Any]]:
    pred = torch.randn(batch, 16, 4, generator=generator)
    target = torch.randn(batch, 16, 4, generator=generator)
    return ModelOutput(tokens={"image": Tokens(pred)}, embeddings={},
                       prepared={"target": target}), {}


class ReconstructionConfig(ComponentConfig):
    image: str = "image"
    #: weight of the KL to N(0, I) (summed over latent elements, averaged over the batch)
    kl_weight: float = Field(1e-6, ge=0)


def psnr(mse: Tensor) -> Tensor:
    """PSNR (dB) of images in [-1, 1] from their MSE (peak-to-peak 2)."""
    return 10 * torch.log10(4.0 / mse.clamp_min(1e-12))


class Reconstruction(Objective):
    """Decode the codec latents the ``latent`` tokenizer made and compare with the pixels."""

    def __init__(self, cfg: ReconstructionConfig) -> None:
        super().__init__()
        self.cfg = cfg

    def prepare(self, batch: Batch, tokens: dict[str, Tokens]) -> tuple[dict[str, Tokens], Any]:
        latents = tokens.get(self.cfg.image)
        if not isinstance(latents, Latents) or latents.codec is None:
            raise ValueError(f"reconstruction needs modality {self.cfg.image!r} to use the "
                             "'latent' tokenizer (a codec)")
        recon = latents.reconstruction
        if recon is None:
            z = latents.codec.unscale(tokens_to_latents(latents.x, latents.grid[0]))
            recon = latents.codec.decode(z)
        target = batch[self.cfg.image].to(latents.x.device)
        kl = latents.posterior.kl() if latents.posterior is not None \
            else recon.new_zeros(len(recon))
        # a codec's own terms (a VQ codec: commitment/codebook ``loss``, usage, perplexity)
        terms = getattr(latents.codec, "auxiliary_terms", None)
        extra = terms(latents.posterior) if callable(terms) and latents.posterior is not None \
            else {}
        return tokens, {"reconstruction": recon, "target": target, "kl": kl, "extra": extra}

    def forward(self, output: ModelOutput, batch: Batch) -> dict[str, Tensor]:
        state = output.prepared
        if not isinstance(state, dict) or "reconstruction" not in state:
            raise ValueError("the reconstruction objective needs its prepare hook: train "
                             "through MultimodalModel.loss(batch)")
        mse = F.mse_loss(state["reconstruction"], state["target"])
        kl = state["kl"].mean()
        extra = dict(state.get("extra") or {})
        loss = mse + self.cfg.kl_weight * kl + extra.pop("loss", 0.0)
        return {"loss": loss, "mse": mse.detach(), "kl": kl.detach(),
                "psnr": psnr(mse.detach()), **{k: v.detach() for k, v in extra.items()}}


def build_reconstruction(cfg: ReconstructionConfig, ctx: BuildContext) -> Reconstruction:
    return Reconstruction(cfg)


def example_reconstruction(module: Objective, batch: int,
                           generator: torch.Generator) -> tuple[ModelOutput, dict[str, Any]]:
    recon = torch.randn(batch, 3, 8, 8, generator=generator)
    target = torch.rand(batch, 3, 8, 8, generator=generator) * 2 - 1
    kl = torch.rand(batch, generator=generator) * math.e
    return ModelOutput(tokens={}, embeddings={}, prepared={
        "reconstruction": recon, "target": target, "kl": kl}), {}

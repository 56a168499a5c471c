"""Vector quantisation (VQ-VAE, van den Oord et al. 2017): each encoder output vector is
replaced by its nearest codebook entry.

- The encoder learns through the straight-through estimator: ``z_q = z + sg(q - z)``, so
  the decoder's gradient reaches ``z`` unchanged.
- The codebook learns either by gradient (``update: gradient``, codebook loss
  ``|sg(z) - q|^2``) or by exponential moving averages (``update: ema``, VQ-VAE-2 /
  Sonnet): ``N_k <- d N_k + (1 - d) n_k``, ``m_k <- d m_k + (1 - d) sum_{i in k} z_i``,
  ``e_k = m_k / N~_k`` with Laplace-smoothed counts ``N~_k = (N_k + eps) / (N + K eps) * N``.
- The commitment loss ``beta |z - sg(q)|^2`` keeps the encoder near its codes.
- Dead-code restarts: a code no batch has used for ``restart_after`` training steps is
  re-initialised to a random encoder output of the current batch.
- ``usage`` (share of codes used in the batch) and ``perplexity`` (``exp`` of the entropy
  of the batch's code frequencies) tell whether the codebook collapses.

Updates (EMA, restarts) happen only in training mode with trainable encoder outputs
(``z.requires_grad``), so a frozen codec inside another model never changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass
class Quantized:
    """The result of quantising ``z (B, C, h, w)``.

    ``z_q``: the straight-through quantised latents (B, C, h, w) (values are the codes,
    gradients go to ``z``); ``codes``: (B, h, w) code ids; ``loss``: commitment (+ codebook,
    in gradient mode) loss, a scalar; ``usage``, ``perplexity``: scalars of this batch.
    The ``latent`` tokenizer reads it like a posterior: ``mean``, ``sample()``, ``kl()``.
    """

    z_q: Tensor
    codes: Tensor
    loss: Tensor
    usage: Tensor
    perplexity: Tensor

    @property
    def mean(self) -> Tensor:
        return self.z_q

    def sample(self, generator: torch.Generator | None = None) -> Tensor:
        """A VQ posterior is deterministic: the quantised latents."""
        return self.z_q

    def kl(self) -> Tensor:
        """No KL term for a VQ codec: zeros (B,)."""
        return self.z_q.new_zeros(self.z_q.shape[0])


def nearest_codes(z: Tensor, codebook: Tensor) -> Tensor:
    """Flat vectors ``z (M, C)`` -> the index of the nearest row of ``codebook (K, C)`` in
    squared Euclidean distance (ties: the lowest index). (M,)"""
    distance = (z.pow(2).sum(1, keepdim=True) - 2 * z @ codebook.t()
                + codebook.pow(2).sum(1)[None, :])  # (M, K)
    return distance.argmin(dim=1)


def code_statistics(codes: Tensor, size: int) -> tuple[Tensor, Tensor, Tensor]:
    """Code ids (any shape) -> (counts (K,), usage, perplexity): usage is the share of the
    ``size`` codes used at least once, perplexity ``exp(-sum p log p)`` of the frequencies."""
    counts = torch.bincount(codes.reshape(-1), minlength=size).to(torch.float32)
    p = counts / counts.sum().clamp_min(1)
    entropy = -(p * torch.log(p.clamp_min(1e-12))).sum()
    return counts, (counts > 0).float().mean(), entropy.exp()


class VectorQuantizer(nn.Module):
    """``size`` codes of width ``dim``; ``forward(z (B, C, h, w)) -> Quantized``."""

    codebook: Tensor  # (K, C), a parameter (gradient) or a buffer (ema)
    cluster_size: Tensor  # (K,) EMA counts
    embed_sum: Tensor  # (K, C) EMA sums
    unused_steps: Tensor  # (K,) long

    def __init__(self, *, size: int, dim: int, beta: float = 0.25,
                 update: Literal["gradient", "ema"] = "ema", decay: float = 0.99,
                 eps: float = 1e-5, restart_after: int = 0) -> None:
        super().__init__()
        self.size, self.dim, self.beta, self.update = size, dim, beta, update
        self.decay, self.eps, self.restart_after = decay, eps, restart_after
        initial = nn.init.normal_(torch.empty(size, dim), std=dim**-0.5)
        if update == "gradient":
            self.codebook = nn.Parameter(initial)
        else:
            self.register_buffer("codebook", initial)
            self.register_buffer("cluster_size", torch.ones(size))
            self.register_buffer("embed_sum", initial.clone())
        #: training steps since each code was last used
        self.register_buffer("unused_steps", torch.zeros(size, dtype=torch.long))

    def lookup(self, codes: Tensor) -> Tensor:
        """Code ids (B, h, w) -> their vectors (B, C, h, w)."""
        return F.embedding(codes, self.codebook).permute(0, 3, 1, 2)

    def codes_of(self, z: Tensor) -> Tensor:
        """Encoder outputs (B, C, h, w) -> nearest code ids (B, h, w); no updates."""
        b, c, h, w = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, c)
        return nearest_codes(flat, self.codebook.detach()).view(b, h, w)

    def forward(self, z: Tensor) -> Quantized:
        b, c, h, w = z.shape
        if c != self.dim:
            raise ValueError(f"the quantizer expects {self.dim} channels, got {c}")
        flat = z.permute(0, 2, 3, 1).reshape(-1, c)  # (M, C)
        codes = nearest_codes(flat.detach(), self.codebook.detach())  # (M,)
        counts, usage, perplexity = code_statistics(codes, self.size)
        if self.training and z.requires_grad:
            with torch.no_grad():
                if self.update == "ema":
                    self.ema_update(flat.detach(), codes)
                self.restart_dead(flat.detach(), counts)
        q = F.embedding(codes, self.codebook).view(b, h, w, c).permute(0, 3, 1, 2)
        loss = self.beta * F.mse_loss(z, q.detach())
        if self.update == "gradient":
            loss = loss + F.mse_loss(q, z.detach())
        z_q = z + (q - z).detach()  # straight-through
        return Quantized(z_q, codes.view(b, h, w), loss, usage, perplexity)

    def ema_update(self, flat: Tensor, codes: Tensor) -> None:
        """One EMA step of the codebook from vectors ``flat (M, C)`` and their ``codes (M,)``."""
        onehot = F.one_hot(codes, self.size).to(flat.dtype)  # (M, K)
        self.cluster_size.mul_(self.decay).add_(onehot.sum(0), alpha=1 - self.decay)
        self.embed_sum.mul_(self.decay).add_(onehot.t() @ flat, alpha=1 - self.decay)
        total = self.cluster_size.sum()
        smoothed = (self.cluster_size + self.eps) / (total + self.size * self.eps) * total
        self.codebook.copy_(self.embed_sum / smoothed[:, None])

    def restart_dead(self, flat: Tensor, counts: Tensor) -> None:
        """Count unused steps; codes unused for ``restart_after`` steps take random rows of
        ``flat (M, C)`` (this batch's encoder outputs)."""
        if self.restart_after <= 0:
            return
        self.unused_steps.add_(1).masked_fill_(counts > 0, 0)
        dead = (self.unused_steps >= self.restart_after).nonzero()[:, 0]
        if len(dead) == 0:
            return
        rows = torch.randint(0, flat.shape[0], (len(dead),), device=flat.device)
        self.codebook.data[dead] = flat[rows]
        if self.update == "ema":
            self.embed_sum[dead] = flat[rows]
            self.cluster_size[dead] = 1.0
        self.unused_steps[dead] = 0

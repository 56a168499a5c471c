"""Latent diffusion (Stable Diffusion). Design placeholder; see below."""

__version__ = "0.1.0"

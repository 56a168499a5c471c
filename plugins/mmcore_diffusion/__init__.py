"""Latent diffusion (Stable Diffusion) from parts: an image codec, a denoiser, a noise
schedule, a sampler and classifier-free guidance, each usable alone.

Parts and the component kind each is meant to be registered as:

* **codec** ``kl-autoencoder`` (:mod:`.vae`): ``encode(images (B, 3, H, W))`` -> latent
  Gaussian ``(B, 4, H/8, W/8)``, ``decode`` back; a latent ``scaling_factor``.
  Registration waits for the ``register_codecs`` hookspec (not in ``mmcore.hookspecs`` yet).
* **denoiser** ``unet`` (:mod:`.unet`, blocks in :mod:`.unet_blocks`): the model's trunk,
  ``(B, 4, h, w)`` latents + timesteps + text ``(B, L, D)`` -> noise or v; self-attention
  and latent-to-text cross-attention go through the kernel registry (``attention`` and
  ``cross_attention`` ops). A DiT would fill the same slot.
* **objective** (:mod:`.schedules`): the forward process (linear, scaled-linear, cosine
  betas) and the epsilon or v target; conditioning dropout (:mod:`.guidance`).
* **sampler** used by generation (:mod:`.samplers`): DDPM, DDIM, Euler, step-for-step equal
  to diffusers' schedulers; :mod:`.pipeline` runs the loop with guidance and decodes.
* **text conditioning** (:mod:`.text_encoder`): mmcore's CLIP text tower (``mmcore_text``
  parts, ``hf-clip``'s key map).
* **import** (:mod:`.convert`): a diffusers folder's ``unet/``, ``vae/``, ``text_encoder/``
  and ``scheduler/`` through :mod:`mmcore.convert.hf`, refusing unimplemented block types,
  options and schedulers by name. :mod:`.cost` counts parameters without building.

Nothing is registered yet: no hook implementations until the codec/denoiser kinds exist.
"""

__version__ = "0.1.0"

"""Flamingo's interleaved masking: which image each text token may see.

The text holds one ``<image>`` marker per image; the images come in the order of their
markers, prompt after prompt (``K`` images for the whole batch). A token sees only the
visual tokens of the last image at or before it (the marker itself included, as
OpenFlamingo and Idefics do); tokens before a row's first image see none.
"""

from __future__ import annotations

import torch
from torch import Tensor


def media_index(ids: Tensor, media_token_id: int) -> Tensor:
    """(B, T) ids -> (B, T) long: 1 + the row-local index of the last image at or before
    each token, 0 where no image came yet."""
    return (ids == media_token_id).long().cumsum(1)


def check_count(ids: Tensor, images: int, media_token_id: int) -> Tensor:
    """The images of each row (B,); ValueError naming both counts when the ``<image>``
    markers of the batch and the ``images`` given differ."""
    per_row = (ids == media_token_id).sum(1)  # (B,)
    markers = int(per_row.sum())
    if markers != images:
        raise ValueError(f"the text holds {markers} <image> marker(s) but {images} image(s) "
                         "were given; give one image per <image>, in marker order")
    return per_row


def per_row_media(features: Tensor, per_row: Tensor) -> tuple[Tensor, Tensor]:
    """Images ``features (K, M, D)`` in marker order -> (visual (B, J * M, D), owner
    (B, J * M) long): row b's images side by side (J = most images in a row, zeros after a
    row's own), and for each visual token 1 + its image's index within the row (0: padding)."""
    b, (_, m, d) = per_row.shape[0], features.shape
    j = max(int(per_row.max()) if b else 0, 1)
    visual = features.new_zeros(b, j, m, d)
    owner = torch.zeros(b, j, dtype=torch.long, device=features.device)
    start = 0
    for row, count in enumerate(per_row.tolist()):
        visual[row, :count] = features[start : start + count]
        owner[row, :count] = torch.arange(1, count + 1, device=features.device)
        start += count
    owner = owner[:, :, None].expand(b, j, m).reshape(b, j * m)
    return visual.reshape(b, j * m, d), owner


def attend_mask(index: Tensor, owner: Tensor) -> Tensor:
    """index (B, T) from :func:`media_index`, owner (B, S) from :func:`per_row_media` ->
    (B, T, S) bool: token t may attend to visual token s."""
    return (index[:, :, None] == owner[:, None, :]) & (index[:, :, None] > 0)

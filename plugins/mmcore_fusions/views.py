"""Several vision towers over one image, joined into one token sequence per image.

A model may read one image through more than one modality (``ModalitySpec.source``: e.g.
an RGB tower and a tower over a colour-free view). A fusion that takes an ``image``
modality and ``views`` of it joins their tokens along the features, as Eagle joins
several vision encoders' patch tokens before one projector.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from mmcore.contract import Tokens
from mmcore.cost import Shape


def join_views(tokens: Mapping[str, Tokens], names: Sequence[str], who: str) -> Tokens | None:
    """The tokens of modalities ``names`` (image first, then its views), each (K, N, Dm),
    concatenated along the features -> (K, N, sum Dm), with the first one's mask; None when
    the batch has none of them. ValueError (naming ``who``, the fusion) when only some are
    there or their (K, N) differ."""
    present = [n for n in names if n in tokens]
    if not present:
        return None
    if len(present) != len(names):
        raise ValueError(f"{who}: the image views {list(names)} come together; the batch has "
                         f"only {present}")
    parts = [tokens[n] for n in names]
    if len(parts) == 1:
        return parts[0]
    if len({tuple(p.x.shape[:2]) for p in parts}) > 1:
        counts = ", ".join(f"{n} {tuple(p.x.shape[:2])}" for n, p in zip(names, parts,
                                                                         strict=True))
        raise ValueError(f"{who}: the image views must give the same (images, tokens); "
                         f"they give {counts}")
    return Tokens(torch.cat([p.x for p in parts], dim=-1), parts[0].mask)


def joined_shape(shapes: Mapping[str, Shape], names: Sequence[str], who: str) -> Shape:
    """The per-image token shape of modalities ``names`` joined along the features (for
    cost functions): the first one's tokens, the widths summed. ValueError (naming ``who``)
    when one's shape is unknown."""
    lacking = [n for n in names if n not in shapes]
    if lacking:
        raise ValueError(f"{who}'s cost needs the token shape of modality {lacking[0]!r}")
    return Shape(shapes[names[0]].tokens, sum(shapes[n].width for n in names))

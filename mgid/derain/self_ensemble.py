"""Geometric self-ensemble: the mean rain layer over the 8 flips and quarter turns of an image.

The 8 transforms are the dihedral group of the square (D4): ``T_k`` for ``k`` in 0..7 turns the image
by ``k % 4`` quarter turns (`torch.rot90` over the last two dims) and then, for ``k >= 4``, mirrors it
left-right. The self-ensemble of a rain predictor ``f`` on an image ``x`` (B, C, H, W) is

    R(x) = 1/8 * sum_k T_k^-1( f( T_k(x) ) )

each transformed input de-rained and its rain layer mapped back to the input's frame before
averaging. A network that is equivariant to the group (a pointwise function, say) gives back its plain
output; MGID's 3x3 convolutions, bottom/right padding and tile grid are not, so the mean differs and
averages out part of the network's errors, at 8 network passes per image.

Sizes: an odd number of quarter turns swaps H and W, so ``f`` must take any (H, W); the padding to
multiples of 8 and the tiling happen inside ``f`` (`mgid.derain.tiling.predict_rain`), in each turned
image's own frame, so any H, W (odd, not multiples of 8, non-square) work, and the ensemble composes
with tiling by wrapping the whole tiled prediction.
"""
from __future__ import annotations

from collections.abc import Callable

import torch

from mgid.errors import InputError

#: Size of the dihedral group: 4 turns, each with and without a mirror.
TRANSFORMS = 8


def _check_k(k: int) -> None:
    if not 0 <= k < TRANSFORMS:
        raise InputError(f"transform index must be in 0..{TRANSFORMS - 1}, got {k}")


def dihedral(x: torch.Tensor, k: int) -> torch.Tensor:
    """The transform ``T_k``: ``k % 4`` quarter turns (counter-clockwise, `torch.rot90` over the last two dims), then
    a left-right mirror when ``k >= 4``.

    Args:
        x: (..., H, W).
        k: the transform, 0..7.

    Returns:
        ``T_k(x)``: (..., H, W) for an even number of turns, else (..., W, H).

    Raises:
        InputError: ``k`` is not in 0..7.
    """
    _check_k(k)
    y = torch.rot90(x, k % 4, dims=(-2, -1))
    return y.flip(-1) if k >= 4 else y


def dihedral_inverse(y: torch.Tensor, k: int) -> torch.Tensor:
    """The inverse ``T_k^-1`` of `dihedral` (the mirror first, then the turns backwards).

    Args:
        y: (..., h, w).
        k: the transform, 0..7.

    Returns:
        ``T_k^-1(y)``: ``dihedral_inverse(dihedral(x, k), k)`` is ``x``, with its shape.

    Raises:
        InputError: ``k`` is not in 0..7.
    """
    _check_k(k)
    y = y.flip(-1) if k >= 4 else y
    return torch.rot90(y, -(k % 4), dims=(-2, -1))


def dihedral_mean(predict: Callable[[torch.Tensor], torch.Tensor], image: torch.Tensor) -> torch.Tensor:
    """The self-ensemble: the mean of ``T_k^-1(predict(T_k(image)))`` over the 8 transforms, summed in float64 (a
    predictor equivariant to the group gets its own output back bit for bit).

    Args:
        predict: maps (B, C, h, w) to a tensor of the same shape (the rain layer), for any h and w.
        image: (B, C, H, W).

    Returns:
        (B, C, H, W), in the dtype and on the device of the first prediction.
    """
    total: torch.Tensor | None = None
    out: torch.Tensor | None = None
    for k in range(TRANSFORMS):
        out = dihedral_inverse(predict(dihedral(image, k)), k)
        # summed in float64: 8 equal float32 values then add up exactly, so a predictor that is equivariant
        # to the group gets its own output back bit for bit (a float32 sum could round at 3x, 5x, ...)
        total = out.double() if total is None else total + out.double()
    return (total / TRANSFORMS).to(out.dtype)


__all__ = ["TRANSFORMS", "dihedral", "dihedral_inverse", "dihedral_mean"]

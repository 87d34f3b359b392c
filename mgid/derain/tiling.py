"""Inference on images of any size: whole, or in overlapping tiles blended smoothly.

`predict_rain` returns the rain layer R (B, 3, H, W) of images (B, 3, H, W) in [-1, 1] (the de-rained image is
``image - R``, `mgid.derain.derainer.BaseDerainer.derain`); `stream_rain` hands out the rows of the same result
for a NumPy image (`PixelSource`) as they become final, so no float buffer of the image's size is made. Here a
tiling is a tile size in pixels or None: the whole image, in one network pass (also where one tile covers the
image padded to multiples of 8). The derainers' `TILE_AUTO` is resolved to one of the two before it gets here
(`mgid.derain.memory_budget.choose_tile`).

Tiled inference:

1. The image is padded once to multiples of 8 (bottom/right, the model's ``pad_mode``); tile and overlap are
   rounded to multiples of 8 (`tile_geometry`), so each tile's 1/8-resolution query grid lines up with the whole
   image's.
2. Tiles of ``tile x tile`` pixels start every ``tile - overlap`` pixels, the last one flush with the bottom/right
   edge (`tile_starts`).
3. Each tile's rain layer is weighted by a separable raised-cosine window (rising over the first ``overlap``
   pixels, flat in the middle, falling over the last ``overlap``; flat at the image border), summed, and divided by
   the summed windows. The sum is kept in a float32 band of one row of tiles (`stream_tiled_rain`), whose final
   rows are handed out as soon as no later tile reaches them: bit for bit the result of an image-sized accumulator.
4. With ``global_norm=True`` (the default) a first pass gathers the per-channel mean and variance of the encoder's
   pre-norm query over the whole image (`MGIDNet.pre_norm_query`; each 1/8-resolution pixel counted once, from the
   tile whose core holds it) and every tile is normalised with them (``norm_stats``, each (B, C, 1, 1));
   ``global_norm=False`` normalises each tile by itself (one pass).

The network is reached only through two callables (`TileFn`, `QueryFn`), so another runtime of it
(`mgid.derain.onnx_backend`) tiles identically. It runs frozen (`inference_graph`) in ``precision`` fp32 or bf16
and channels_last or not (`mgid.precision`); tiles are blended in float32. What tiling changes in the result, and
why these choices: docs/DERAIN.md, "Design notes".
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Protocol

import numpy as np
import torch

from mgid.data.imageio import to_tensor
from mgid.derain.time_limit import check_time_limit
from mgid.errors import InputError
from mgid.models import DOWNSAMPLE, MGIDNet, pad_to_multiple
from mgid.models.encoder import NormStats
from mgid.models.inference_graph import InferenceGraph
from mgid.precision import resolve_channels_last, resolve_precision

#: Default overlap (pixels) between neighbouring tiles.
DEFAULT_OVERLAP = 64
#: The tiling that picks the whole image or tiles from a memory budget (`mgid.derain.derainer.BaseDerainer`,
#: `mgid.derain.memory_budget.choose_tile`); the derainers' other tilings are None (whole) and a tile size.
TILE_AUTO = "auto"
#: Smallest tile side accepted (two query pixels per side).
MIN_TILE = 2 * DOWNSAMPLE
#: Rows normalised at a time at the end of tiled inference (bounds its temporary to this many rows).
_ROWS_PER_CHUNK = 256


def _check_image(image: torch.Tensor) -> None:
    if not isinstance(image, torch.Tensor) or image.dim() != 4 or not image.is_floating_point():
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise InputError(f"expected a float tensor (B, 3, H, W) in [-1, 1], got {shape}")


def tile_geometry(tile: int, overlap: int) -> tuple[int, int]:
    """A tiling rounded to multiples of 8 and checked.

    Args:
        tile: the tile size in pixels.
        overlap: the overlap of neighbouring tiles in pixels.

    Returns:
        (tile rounded down, overlap rounded up), multiples of 8.

    Raises:
        InputError: ``tile`` is None or under `MIN_TILE`, ``overlap`` is None or negative, or the rounded overlap
            is not smaller than the rounded tile.
    """
    if tile is None or int(tile) < MIN_TILE:
        raise InputError(f"tile must be at least {MIN_TILE} pixels, got {tile}")
    if overlap is None or int(overlap) < 0:
        raise InputError(f"tile overlap must be >= 0 pixels, got {overlap}")
    t = int(tile) // DOWNSAMPLE * DOWNSAMPLE
    o = -(-int(overlap) // DOWNSAMPLE) * DOWNSAMPLE
    if o >= t:
        raise InputError(f"tile overlap ({overlap} -> {o} px, a multiple of {DOWNSAMPLE}) must be smaller than "
                         f"the tile ({tile} -> {t} px); e.g. --tile 512 --tile-overlap 32")
    return t, o


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Where tiles start along one axis.

    Args:
        length: the axis's length in pixels.
        tile: the tile size in pixels.
        overlap: the least overlap of neighbouring tiles in pixels (smaller than ``tile``).

    Returns:
        The start offsets, every ``tile - overlap`` pixels, the last tile ending at ``length``; ``[0]`` (one tile
        of ``length`` pixels) when ``length <= tile``. Multiples of 8 when the three arguments are.
    """
    if length <= tile:
        return [0]
    stride = tile - overlap
    starts = list(range(0, length - tile, stride))
    starts.append(length - tile)
    return starts


def _ramp(n: int, overlap: int, rise: bool, fall: bool) -> torch.Tensor:
    """1-D window of ``n`` px: raised cosine over ``overlap`` px at a rising/falling end, 1 elsewhere (> 0)."""
    w = torch.ones(n, dtype=torch.float32)
    if overlap > 0:
        k = min(overlap, n)
        edge = 0.5 - 0.5 * torch.cos(math.pi * (torch.arange(k, dtype=torch.float32) + 0.5) / overlap)
        if rise:
            w[:k] = torch.minimum(w[:k], edge)
        if fall:
            w[n - k:] = torch.minimum(w[n - k:], edge.flip(0))
    return w


def _cores(starts: list[int], size: int, tile: int) -> list[tuple[int, int]]:
    """Non-overlapping [lo, hi) pieces of [0, length): each tile owns the middle of its overlaps."""
    length = starts[-1] + size
    bounds = [0]
    for a, b in zip(starts, starts[1:]):
        mid = (b + a + tile) // 2  # middle of the overlap [b, a + tile)
        bounds.append(mid // DOWNSAMPLE * DOWNSAMPLE)
    bounds.append(length)
    return list(zip(bounds[:-1], bounds[1:]))


def _grid(h: int, w: int, tile: int, overlap: int):
    ys, xs = tile_starts(h, tile, overlap), tile_starts(w, tile, overlap)
    th, tw = min(tile, h), min(tile, w)
    return ys, xs, th, tw


#: Runs the network on one tile: ``(tile (B, 3, th, tw), norm_stats or None) -> rain (B, 3, th, tw)``. The tile is a
#: crop of the padded image on that image's device; the rain may be on any device and in any float dtype.
TileFn = Callable[[torch.Tensor, NormStats | None], torch.Tensor]
#: The pre-norm query (B, C, th/8, tw/8) of one tile (B, 3, th, tw) (`MGIDNet.pre_norm_query`), any device.
QueryFn = Callable[[torch.Tensor], torch.Tensor]


#: Receives final rows of a blended rain layer: ``(r0, r1, rain (B, 3, r1 - r0, W))``, top to bottom, each row once.
#: The rows are a view of the blend's band buffer: the callee may change them in place, and must copy what it keeps.
RowsFn = Callable[[int, int, torch.Tensor], None]


class TileSource(Protocol):
    """What tiled inference reads: a float (B, 3, H, W) image (H, W multiples of 8) one crop at a time."""

    #: (B, 3, H, W) of the (padded) image.
    shape: tuple[int, int, int, int]
    #: Where the crops are, and where the blend is kept.
    device: torch.device

    def crop(self, y0: int, y1: int, x0: int, x1: int) -> torch.Tensor:
        """Rows ``y0:y1``, columns ``x0:x1`` of the image: float (B, 3, y1 - y0, x1 - x0)."""
        ...


class TensorSource:
    """A `TileSource` over a padded float tensor (B, 3, H, W), H and W multiples of 8 (crops are views)."""

    def __init__(self, padded: torch.Tensor) -> None:
        self.padded = padded
        self.shape = tuple(padded.shape)
        self.device = padded.device

    def crop(self, y0: int, y1: int, x0: int, x1: int) -> torch.Tensor:
        return self.padded[..., y0:y1, x0:x1]


def _pad_index(n: int, padded: int, mode: str) -> np.ndarray:
    """Source index of each of ``padded`` positions of an axis of ``n`` padded at its end (`pad_to_multiple`'s
    ``reflect``: the edge not repeated; ``replicate``: the edge repeated)."""
    i = np.arange(padded)
    return np.where(i < n, i, 2 * (n - 1) - i) if mode == "reflect" else np.minimum(i, n - 1)


class PixelSource:
    """A `TileSource` over an RGB image: float (1, 3, H', W') crops of ``pad_to_multiple(to_tensor(rgb)[None],
    multiple, pad_mode)``, bit for bit, converted a crop at a time (no float copy of the image is made).

    Args:
        rgb: HxWx3 uint8 (or uint16) RGB (not copied).
        pad_mode: ``"reflect"`` (the default; ``"replicate"`` where the pad is not smaller than the side, as
            `pad_to_multiple`) or ``"replicate"``.
        multiple: H' and W' are H and W rounded up to it. Default 8.

    Raises:
        InputError: ``rgb`` is not HxWx3 uint8 or uint16 (`to_tensor`'s checks).

    Attributes:
        rgb: the image.
        height: H.
        width: W.
        shape: (1, 3, H', W'), padded.
        device: the CPU.
    """

    def __init__(self, rgb: np.ndarray, pad_mode: str = "reflect", multiple: int = DOWNSAMPLE) -> None:
        to_tensor(rgb[:1, :1])  # the checks of to_tensor (HxWx3, uint8/uint16), on one pixel
        self.rgb = rgb
        self.height, self.width = rgb.shape[:2]
        hp, wp = -(-self.height // multiple) * multiple, -(-self.width // multiple) * multiple
        if pad_mode == "reflect" and (hp - self.height >= self.height or wp - self.width >= self.width):
            pad_mode = "replicate"  # as pad_to_multiple: reflect needs the pad to be smaller than the side
        self.rows, self.cols = _pad_index(self.height, hp, pad_mode), _pad_index(self.width, wp, pad_mode)
        self.shape = (1, 3, hp, wp)
        self.device = torch.device("cpu")

    def crop(self, y0: int, y1: int, x0: int, x1: int) -> torch.Tensor:
        if y1 <= self.height and x1 <= self.width:
            pixels = self.rgb[y0:y1, x0:x1]
        else:  # reaches into the padding: gather its source pixels
            pixels = self.rgb[np.ix_(self.rows[y0:y1], self.cols[x0:x1])]
        return to_tensor(pixels)[None]

    def tensor(self) -> torch.Tensor:
        """The whole image, unpadded.

        Returns:
            ``to_tensor(rgb)[None]``: float32 (1, 3, H, W) in [-1, 1].
        """
        return to_tensor(self.rgb)[None]


@torch.no_grad()
def _global_query_stats(pre_norm_query: QueryFn, source: TileSource, tile: int, overlap: int) -> NormStats:
    """Per-sample, per-channel mean and biased variance (B, C, 1, 1) of the pre-norm query over the whole
    (padded) image, from the tiles' ``pre_norm_query`` (`MGIDNet.pre_norm_query`), each 1/8-res pixel counted once."""
    h, w = source.shape[-2:]
    ys, xs, th, tw = _grid(h, w, tile, overlap)
    ycores, xcores = _cores(ys, th, tile), _cores(xs, tw, tile)
    total: torch.Tensor | None = None
    total_sq: torch.Tensor | None = None
    for y, (ylo, yhi) in zip(ys, ycores):
        for x, (xlo, xhi) in zip(xs, xcores):
            check_time_limit()
            q = pre_norm_query(source.crop(y, y + th, x, x + tw))
            f = q[..., (ylo - y) // DOWNSAMPLE:(yhi - y) // DOWNSAMPLE,
                  (xlo - x) // DOWNSAMPLE:(xhi - x) // DOWNSAMPLE].double().cpu()
            s, s2 = f.sum(dim=(2, 3), keepdim=True), (f * f).sum(dim=(2, 3), keepdim=True)
            total = s if total is None else total + s
            total_sq = s2 if total_sq is None else total_sq + s2
    n = (h // DOWNSAMPLE) * (w // DOWNSAMPLE)
    mean = total / n
    var = (total_sq / n - mean * mean).clamp_min(0)
    return NormStats(mean.float(), var.float())


def tiling_of(height: int, width: int, tile: int | None, overlap: int) -> tuple[int, int] | None:
    """How `predict_rain` runs an image at a tiling.

    Args:
        height: the image's height in pixels.
        width: its width.
        tile: the tile size in pixels, or None (whole).
        overlap: the tile overlap in pixels.

    Returns:
        (tile, overlap) as `tile_geometry` rounds them when the image is run in tiles; None when it is run whole
        (``tile`` None, or one tile covers the image padded to multiples of 8).

    Raises:
        InputError: as `tile_geometry`, where tiles are needed.
    """
    if tile is None or (height <= tile and width <= tile):
        return None
    t, o = tile_geometry(tile, overlap)
    hp, wp = -(-height // DOWNSAMPLE) * DOWNSAMPLE, -(-width // DOWNSAMPLE) * DOWNSAMPLE
    return (t, o) if hp > t or wp > t else None


def inference_graph(net: MGIDNet | InferenceGraph, precision: str = "fp32",
                    channels_last: bool | None = False) -> InferenceGraph:
    """The `InferenceGraph` predictions run.

    Args:
        net: a graph (returned as it is: it has its own arithmetic) or an `MGIDNet` (frozen anew on its device, so
            each call sees the network's current weights).
        precision: ``"fp32"`` (the default), ``"bf16"`` or ``"auto"`` (`mgid.precision.resolve_precision`).
        channels_last: False (the default), True or None (auto, `mgid.precision.resolve_channels_last`).

    Returns:
        The graph.
    """
    if isinstance(net, InferenceGraph):
        return net
    device = next(net.parameters()).device
    precision = resolve_precision(precision, device, "inference")
    if channels_last is None:
        channels_last = resolve_channels_last(None, precision, device, "inference")
    return InferenceGraph(net, precision, channels_last)


@torch.no_grad()
def predict_rain(net: MGIDNet | InferenceGraph, image: torch.Tensor, tile: int | None = None,
                 overlap: int = DEFAULT_OVERLAP, global_norm: bool = True, precision: str = "fp32",
                 channels_last: bool | None = False) -> torch.Tensor:
    """The rain layer R of images (the network's memory is only read).

    Args:
        net: an `MGIDNet` (frozen for the call, `inference_graph`; its own mode and weights are left as they are)
            or an `InferenceGraph`.
        image: float (B, 3, H, W) in [-1, 1], any H and W.
        tile: the tile size in pixels (rounded down to a multiple of 8), or None (the default: the whole image, as
            where one tile covers it).
        overlap: the tile overlap in pixels (rounded up to a multiple of 8). Default `DEFAULT_OVERLAP`.
        global_norm: normalise the tiles with the whole image's statistics (True, the default) or each with its
            own.
        precision: the arithmetic of an `MGIDNet` (`inference_graph`). Default ``"fp32"``.
        channels_last: likewise. Default False.

    Returns:
        R (B, 3, H, W) on ``image``'s device, in its dtype (tiles run on the network's device).

    Raises:
        InputError: ``image`` is not a float (B, C, H, W) tensor, or a bad tiling (`tile_geometry`).
    """
    _check_image(image)
    h, w = image.shape[-2:]
    geometry = tiling_of(h, w, tile, overlap)
    graph = inference_graph(net, precision, channels_last)
    if geometry is not None:
        padded = pad_to_multiple(image, DOWNSAMPLE, graph.config.pad_mode)
        return tiled_rain(padded, *geometry, graph.rain, graph.pre_norm_query if global_norm else None)[..., :h, :w]
    return graph.rain(image).to(image.device, image.dtype)


@torch.no_grad()
def stream_rain(net: MGIDNet | InferenceGraph, source: PixelSource, tile: int, overlap: int, emit: RowsFn,
                global_norm: bool = True, precision: str = "fp32", channels_last: bool | None = False) -> None:
    """`predict_rain`'s tiled result for an image, handed out a band of final rows at a time instead of returned:
    bit for bit the rows of ``predict_rain(net, source.tensor(), tile, overlap, ...)``. The float state is one band
    of tile rows (`stream_tiled_rain`); nothing of the image's size is allocated here.

    Args:
        net: as `predict_rain`.
        source: the image (its ``pad_mode`` the network's).
        tile: the tile size, as `tiling_of` returns it (the image does need tiles).
        overlap: the tile overlap, likewise.
        emit: receives rows ``r0:r1`` of the rain layer, float32 (1, 3, r1 - r0, W), cropped to the image, top to
            bottom (a `RowsFn`).
        global_norm: as `predict_rain`.
        precision: as `predict_rain`.
        channels_last: as `predict_rain`.
    """
    graph = inference_graph(net, precision, channels_last)
    stream_tiled_rain(source, tile, overlap, graph.rain, graph.pre_norm_query if global_norm else None,
                      cropped_rows(emit, source.height, source.width))


def cropped_rows(emit: RowsFn, height: int, width: int) -> RowsFn:
    """A `RowsFn` that drops the padding.

    Args:
        emit: receives the rows, cropped.
        height: the image's height, before padding.
        width: its width.

    Returns:
        A `RowsFn` of the padded image's rows handing ``emit`` only rows ``< height`` and columns ``< width``.
    """
    def rows(r0: int, r1: int, rain: torch.Tensor) -> None:
        if r0 < height:
            r1 = min(r1, height)
            emit(r0, r1, rain[..., :r1 - r0, :width])

    return rows


@torch.no_grad()
def stream_tiled_rain(source: TileSource, tile: int, overlap: int, run_tile: TileFn, pre_norm_query: QueryFn | None,
                      emit: RowsFn, rows: int = _ROWS_PER_CHUNK) -> None:
    """The blended rain layer of ``source``, handed out a band of final rows at a time (the module doc's steps 2-4).

    The blend is kept in a float32 band (B, 3, tile, W), one row of tiles: the tiles of a row are added into it in
    the tiles' order, the rows no later tile reaches are divided by their summed windows and emitted, and the rows
    the next row of tiles overlaps move to the band's top. The rows are bit for bit those of an image-sized
    accumulator.

    Args:
        source: the image, float (B, 3, H, W), H and W multiples of 8.
        tile: the tile size, as `tile_geometry` returns it.
        overlap: the tile overlap, likewise.
        run_tile: runs the network on a crop (`TileFn`).
        pre_norm_query: the pre-norm query of a crop (`QueryFn`), for the whole image's statistics; None: each
            tile normalised by itself.
        emit: receives rows ``r0:r1``, float32 (B, 3, r1 - r0, W) on ``source.device`` (a `RowsFn`).
        rows: the most rows handed out at a time. Default 256.
    """
    b, c, h, w = source.shape
    device = source.device
    ys, xs, th, tw = _grid(h, w, tile, overlap)
    wys = [_ramp(th, overlap, rise=iy > 0, fall=iy < len(ys) - 1).to(device) for iy in range(len(ys))]
    wxs = [_ramp(tw, overlap, rise=ix > 0, fall=ix < len(xs) - 1).to(device) for ix in range(len(xs))]
    stats = _global_query_stats(pre_norm_query, source, tile, overlap) if pre_norm_query is not None else None
    band = torch.zeros(b, c, th, w, dtype=torch.float32, device=device)  # rows y .. y + th of the image
    for iy, (y, wy) in enumerate(zip(ys, wys)):
        for x, wx in zip(xs, wxs):
            check_time_limit()  # a time limit set around the call (mgid.derain.time_limit) is kept between tiles
            rain = run_tile(source.crop(y, y + th, x, x + tw), stats)
            band[..., :, x:x + tw] += rain.to(device, torch.float32) * (wy[:, None] * wx[None, :])
        done = ys[iy + 1] if iy + 1 < len(ys) else y + th  # rows above the next row of tiles are final
        for r0 in range(y, done, rows):
            r1 = min(done, r0 + rows)
            # The summed windows of these rows, adding the tiles' windows in the tiles' order, so the division is
            # the one an image-sized weight buffer would give, bit for bit.
            weight = torch.zeros(r1 - r0, w, dtype=torch.float32, device=device)
            for yy, wyy in zip(ys, wys):
                lo, hi = max(yy, r0), min(yy + th, r1)
                if lo < hi:
                    for x, wx in zip(xs, wxs):
                        weight[lo - r0:hi - r0, x:x + tw] += wyy[lo - yy:hi - yy, None] * wx[None, :]
            emit(r0, r1, band[..., r0 - y:r1 - y, :].div_(weight))
        if iy + 1 < len(ys):  # the rows the next row of tiles overlaps move up; the rest of the band starts at 0
            shift, keep = done - y, y + th - done
            for k in range(0, keep, shift):  # moved a shift at a time: source and destination never overlap
                n = min(shift, keep - k)
                band[..., k:k + n, :] = band[..., k + shift:k + shift + n, :]
            band[..., keep:, :].zero_()


@torch.no_grad()
def tiled_rain(padded: torch.Tensor, tile: int, overlap: int, run_tile: TileFn,
               pre_norm_query: QueryFn | None = None) -> torch.Tensor:
    """The blended rain layer of a padded image (`stream_tiled_rain` gathered into one tensor).

    Args:
        padded: float (B, 3, H, W), H and W multiples of 8.
        tile: the tile size, as `tile_geometry` returns it.
        overlap: the tile overlap, likewise.
        run_tile: runs the network on a crop (`TileFn`).
        pre_norm_query: the pre-norm query of a crop (`QueryFn`), for the whole image's statistics (None, the
            default: ``run_tile(crop, None)`` normalises each tile by itself).

    Returns:
        The rain layer (B, 3, H, W) in ``padded``'s dtype, on its device.
    """
    out = torch.empty(padded.shape, dtype=torch.float32, device=padded.device)

    def keep(r0: int, r1: int, rain: torch.Tensor) -> None:
        out[..., r0:r1, :] = rain

    stream_tiled_rain(TensorSource(padded), tile, overlap, run_tile, pre_norm_query, keep)
    return out.to(padded.dtype)

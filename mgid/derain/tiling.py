"""Inference on images of any size: whole, or in overlapping tiles blended smoothly.

`predict_rain` returns the rain layer R (B, 3, H, W) of an image (B, 3, H, W) in [-1, 1]; the
de-rained image is ``image - R`` (`mgid.derain.derainer.Derainer.derain`). With ``tile=None``, or when the image fits in one
tile, the network runs once on the whole image (padded to multiples of 8 by the model).

Tiled inference keeps memory bounded by the tile size (a 4000x3000 photo with ``tile=512`` needs the activations of
one 512x512 tile and a float32 band of one row of tiles, 512 x 4000; `predict_rain` of a tensor also returns the
float32 rain layer of the photo's size, while `stream_rain` of a NumPy image (`PixelSource`) converts each tile from
its pixels as it is needed and hands the blended rows out as they become final, keeping no float buffer of the
photo's size):

1. The image is padded once to multiples of 8 (bottom/right, the model's ``pad_mode``), as the
   untiled network does; tile and overlap are multiples of 8, so each tile's query grid (1/8
   resolution) lines up with the whole image's.
2. Tiles of ``tile x tile`` pixels start every ``tile - overlap`` pixels, the last one flush with the
   bottom/right edge.
3. Each tile's rain layer is multiplied by a separable raised-cosine window (rising over the first
   ``overlap`` pixels, flat in the middle, falling over the last ``overlap``; flat at the image
   border), summed, and divided by the summed windows. Seams fade over the overlap. The sum is kept in a band of
   one row of tiles (`stream_tiled_rain`): once a row of tiles is added, the rows above the next row of tiles are
   final, are divided (their summed windows computed a band of rows at a time, so no image-sized weight is stored)
   and handed out, and the overlapped rows move to the band's top; the tiles are added in the same order as into an
   image-sized accumulator, so the result is the same bit for bit.

What tiling changes: the memory read is per query pixel and BatchNorm in eval mode is a fixed
per-channel affine map, so both are tile-independent; the 3x3 convolutions see zero padding at the
tile borders (their receptive field reaches ~85 px from a pixel), which the blending fades out. The encoder's
``InstanceNorm2d`` on the query is *not* local: its mean and variance are taken over the whole input.
Per-tile statistics would shift each tile's features (visible as tiles of different rain strength),
so by default (``global_norm=True``) a first pass runs the encoder alone over the tiles
(`MGIDNet.pre_norm_query`), gathers the per-channel mean and variance of the pre-norm features over
the whole image (each 1/8-res pixel counted once, from the tile whose core holds it), and the second
pass normalises every tile with those (``net(tile, norm_stats=(mean, var))``, each (B, C, 1, 1)).
Only that public API of the network is used: no hooks, no module swapping, no submodule names. The result then differs from untiled inference only by the convolutions' border effects.
``global_norm=False`` normalises each tile by itself (one pass; the disagreement is larger).
The tiling itself (`tiled_rain`) reaches the network only through two callables (run a tile, the pre-norm
query of a tile), so another runtime of the same network (`mgid.derain.onnx_backend`) tiles identically.

Arithmetic (``precision``, ``channels_last``): the network runs frozen (`mgid.models.inference_graph`: BatchNorm
folded into the convolutions, ReLU and the decoder's concatenations fused into them) in ``fp32`` or ``bf16``
(weights and activations in bfloat16; the instance norm, memory read and rain layer in float32; tiles are blended in
float32), in channels_last memory format when ``channels_last`` is set. ``auto`` (`mgid.precision.resolve_precision`)
= bf16 on a CPU with native bf16 instructions (AVX512-BF16 or AMX, the detection training uses), fp32 elsewhere;
channels_last on every CPU except in fp32 without AVX512, which runs NCHW on NNPACK
(`mgid.precision.resolve_channels_last`): measured by ``benchmarks/bench_derain.py`` on both kinds (docs/DERAIN.md).
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Protocol

import numpy as np
import torch

from mgid.data.imageio import to_tensor
from mgid.derain.time_limit import check_time_limit
from mgid.models import DOWNSAMPLE, MGIDNet, pad_to_multiple
from mgid.models.encoder import NormStats
from mgid.models.inference_graph import InferenceGraph
from mgid.precision import resolve_channels_last, resolve_precision

#: Default overlap (pixels) between neighbouring tiles.
DEFAULT_OVERLAP = 64
#: The tile setting that picks whole images or tiles from a memory budget (`mgid.derain.derainer.Derainer`,
#: `mgid.derain.memory_budget.choose_tile`).
TILE_AUTO = "auto"
#: Smallest tile side accepted (two query pixels per side).
MIN_TILE = 2 * DOWNSAMPLE
#: Rows normalised at a time at the end of tiled inference (bounds its temporary to this many rows).
_ROWS_PER_CHUNK = 256


def _check_image(image: torch.Tensor) -> None:
    if not isinstance(image, torch.Tensor) or image.dim() != 4 or not image.is_floating_point():
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise ValueError(f"expected a float tensor (B, 3, H, W) in [-1, 1], got {shape}")


def tile_geometry(tile: int, overlap: int) -> tuple[int, int]:
    """(tile, overlap) rounded to multiples of 8: tile down (at least 16), overlap up; checked."""
    if tile is None or int(tile) < MIN_TILE:
        raise ValueError(f"tile must be at least {MIN_TILE} pixels, got {tile}")
    if overlap is None or int(overlap) < 0:
        raise ValueError(f"tile overlap must be >= 0 pixels, got {overlap}")
    t = int(tile) // DOWNSAMPLE * DOWNSAMPLE
    o = -(-int(overlap) // DOWNSAMPLE) * DOWNSAMPLE
    if o >= t:
        raise ValueError(f"tile overlap ({overlap} -> {o} px, a multiple of {DOWNSAMPLE}) must be smaller than "
                         f"the tile ({tile} -> {t} px); e.g. --tile 512 --tile-overlap 32")
    return t, o


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of ``tile`` px covering ``length`` px with at least ``overlap`` px overlap.

    The last tile ends at ``length``. With ``length <= tile``: ``[0]`` (one tile of ``length`` px).
    All starts are multiples of 8 when ``length``, ``tile`` and ``overlap`` are.
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
    """What tiled inference reads: a (B, 3, H, W) float image (H, W multiples of 8) one crop at a time."""

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
    """An HxWx3 uint8 (or uint16) RGB image as the float (1, 3, H', W') tiled inference reads: `to_tensor` of it,
    padded by `pad_to_multiple` (H', W' multiples of 8), converted a crop at a time, so no float copy of the
    image is ever made (12 bytes per pixel less than ``to_tensor`` of it). Crops are bit for bit the crops of
    ``pad_to_multiple(to_tensor(rgb)[None], 8, pad_mode)``: the conversion is per element and the padding of
    both modes copies pixels.

    Attributes:
        rgb: the image (not copied).
        height, width: its size; shape: (1, 3, H', W') padded; device: the CPU.
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
        """The whole image, unpadded: ``to_tensor(rgb)[None]`` (12 bytes per pixel)."""
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
    """(tile, overlap) as `tile_geometry` rounds them when an image of ``height`` x ``width`` is de-rained in
    tiles of ``tile``, or None when `predict_rain` runs it whole (``tile`` None, or one tile covers the image
    padded to multiples of 8)."""
    if tile is None or (height <= tile and width <= tile):
        return None
    t, o = tile_geometry(tile, overlap)
    hp, wp = -(-height // DOWNSAMPLE) * DOWNSAMPLE, -(-width // DOWNSAMPLE) * DOWNSAMPLE
    return (t, o) if hp > t or wp > t else None


def inference_graph(net: MGIDNet | InferenceGraph, precision: str = "fp32",
                    channels_last: bool | None = False) -> InferenceGraph:
    """``net`` as the `InferenceGraph` predictions run: a graph as it is (``precision`` and ``channels_last`` are
    its own then), an `MGIDNet` frozen at ``precision`` (fp32, bf16 or auto, `mgid.precision.resolve_precision`)
    and ``channels_last`` (None: auto, `mgid.precision.resolve_channels_last`) on its device (a few milliseconds:
    the weights are folded anew, so each call sees the network's current weights)."""
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
    """The rain layer R (B, 3, H, W) of ``image`` (B, 3, H, W) in [-1, 1], memory read only.

    ``tile=None`` (or an image that fits in one tile) runs the network once. Otherwise tiles of
    ``tile`` px (rounded down to a multiple of 8) overlapping by ``overlap`` px (rounded up) are
    blended as the module doc describes. Tiles run on the network's device; the result is on
    ``image``'s device, in its dtype. ``net``: an `MGIDNet` (frozen for the call at ``precision`` (fp32, bf16 or
    auto) and ``channels_last`` (None: auto), `inference_graph`; its own mode and weights are left as they are) or
    an `InferenceGraph` (which has its own arithmetic).
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
    """`predict_rain`'s tiled result for an image read from ``source`` (its ``pad_mode`` the network's), handed to
    ``emit`` a band of final rows at a time (cropped to the image: rows ``r0:r1`` of (1, 3, r1 - r0, W) float32)
    instead of returned: bit for bit the rows of ``predict_rain(net, source.tensor(), tile, overlap, ...)``.

    ``tile``/``overlap`` as `tiling_of` returns them (the image does need tiles). What stays of the image's size
    is the caller's (``source`` and what ``emit`` fills); the float state is one band of tile rows (see
    `stream_tiled_rain`).
    """
    graph = inference_graph(net, precision, channels_last)
    stream_tiled_rain(source, tile, overlap, graph.rain, graph.pre_norm_query if global_norm else None,
                      cropped_rows(emit, source.height, source.width))


def cropped_rows(emit: RowsFn, height: int, width: int) -> RowsFn:
    """``emit`` given only rows ``< height`` and columns ``< width`` of the padded image's rows (the padding
    dropped)."""
    def rows(r0: int, r1: int, rain: torch.Tensor) -> None:
        if r0 < height:
            r1 = min(r1, height)
            emit(r0, r1, rain[..., :r1 - r0, :width])

    return rows


@torch.no_grad()
def stream_tiled_rain(source: TileSource, tile: int, overlap: int, run_tile: TileFn, pre_norm_query: QueryFn | None,
                      emit: RowsFn, rows: int = _ROWS_PER_CHUNK) -> None:
    """The blended rain layer (B, 3, H, W) of ``source`` (H, W multiples of 8), float32 on its device, handed to
    ``emit`` a band of at most ``rows`` final rows at a time, top to bottom (the module doc's steps 2-3).

    The blend is kept in a band of one row of tiles (B, 3, tile, W) float32: the tiles of a row are added into it
    (each weighted by its window, in the tiles' order, as an image-sized accumulator would add them), then the
    rows no later tile reaches (above the next row of tiles) are divided by their summed windows and emitted, and
    the rows the next row of tiles overlaps move to the band's top. So the float state is 12 bytes x B x tile x W
    (plus a ``rows`` x W temporary for the summed windows), not the image's size, and the rows are bit for bit those
    of the image-sized accumulator. ``tile``/``overlap`` as `tile_geometry` returns them; ``pre_norm_query`` and
    ``run_tile`` as `tiled_rain`.
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
    """The blended rain layer (B, 3, H, W) of ``padded`` (B, 3, H, W), H and W multiples of 8, in ``padded``'s dtype
    and on its device, from tiles run by ``run_tile`` (the module doc's steps 2-3; `stream_tiled_rain` gathered
    into one tensor).

    ``tile``/``overlap`` as `tile_geometry` returns them. With ``pre_norm_query`` (global normalisation) a first
    pass gathers the whole image's instance-norm statistics from it and every tile is run with them; without
    it, ``run_tile(crop, None)`` normalises each tile by itself. The network is reached only through the two
    callables, so other runtimes (`mgid.derain.onnx_backend`) tile exactly as `predict_rain` does.
    """
    out = torch.empty(padded.shape, dtype=torch.float32, device=padded.device)

    def keep(r0: int, r1: int, rain: torch.Tensor) -> None:
        out[..., r0:r1, :] = rain

    stream_tiled_rain(TensorSource(padded), tile, overlap, run_tile, pre_norm_query, keep)
    return out.to(padded.dtype)

"""Inference on images of any size: whole, or in overlapping tiles blended smoothly.

`predict_rain` returns the rain layer R (B, 3, H, W) of an image (B, 3, H, W) in [-1, 1]; the
de-rained image is ``image - R`` (`mgid.derain.derainer.Derainer.derain`). With ``tile=None``, or when the image fits in one
tile, the network runs once on the whole image (padded to multiples of 8 by the model).

Tiled inference keeps memory bounded by the tile size (a 4000x3000 photo with ``tile=512`` needs
the activations of one 512x512 tile, plus the input and two float32 accumulators of the photo's
size on the input's device):

1. The image is padded once to multiples of 8 (bottom/right, the model's ``pad_mode``), as the
   untiled network does; tile and overlap are multiples of 8, so each tile's query grid (1/8
   resolution) lines up with the whole image's.
2. Tiles of ``tile x tile`` pixels start every ``tile - overlap`` pixels, the last one flush with the
   bottom/right edge.
3. Each tile's rain layer is multiplied by a separable raised-cosine window (rising over the first
   ``overlap`` pixels, flat in the middle, falling over the last ``overlap``; flat at the image
   border), summed, and divided by the summed windows (summed a band of rows at a time, so no image-sized
   weight is stored). Seams fade over the overlap.

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

Arithmetic (``precision``, ``channels_last``): ``fp32``, or ``bf16`` = the network under
``torch.autocast`` (bfloat16 convolutions, fp32 weights and memory items; the rain layer is returned
in the input's dtype; tiles are blended in fp32), with the input in channels_last memory format when
``channels_last`` is set. ``auto`` (`mgid.precision.resolve_precision`) = bf16 on a CPU with native bf16 instructions
(AVX512-BF16 or AMX, the detection training uses), fp32 elsewhere; channels_last on every CPU (1.4x in fp32
on AVX2, 4-5x with bf16 on AVX512-BF16/AMX): measured by ``benchmarks/bench_derain.py`` on both kinds.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch

from mgid.derain.time_limit import check_time_limit
from mgid.models import DOWNSAMPLE, MGIDNet, pad_to_multiple
from mgid.models.encoder import NormStats
from mgid.precision import autocast, resolve_channels_last, resolve_precision

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


@torch.no_grad()
def _global_query_stats(pre_norm_query: QueryFn, padded: torch.Tensor, tile: int, overlap: int) -> NormStats:
    """Per-sample, per-channel mean and biased variance (B, C, 1, 1) of the pre-norm query over the whole
    (padded) image, from the tiles' ``pre_norm_query`` (`MGIDNet.pre_norm_query`), each 1/8-res pixel counted once."""
    h, w = padded.shape[-2:]
    ys, xs, th, tw = _grid(h, w, tile, overlap)
    ycores, xcores = _cores(ys, th, tile), _cores(xs, tw, tile)
    total: torch.Tensor | None = None
    total_sq: torch.Tensor | None = None
    for y, (ylo, yhi) in zip(ys, ycores):
        for x, (xlo, xhi) in zip(xs, xcores):
            check_time_limit()
            q = pre_norm_query(padded[..., y:y + th, x:x + tw])
            f = q[..., (ylo - y) // DOWNSAMPLE:(yhi - y) // DOWNSAMPLE,
                  (xlo - x) // DOWNSAMPLE:(xhi - x) // DOWNSAMPLE].double().cpu()
            s, s2 = f.sum(dim=(2, 3), keepdim=True), (f * f).sum(dim=(2, 3), keepdim=True)
            total = s if total is None else total + s
            total_sq = s2 if total_sq is None else total_sq + s2
    n = (h // DOWNSAMPLE) * (w // DOWNSAMPLE)
    mean = total / n
    var = (total_sq / n - mean * mean).clamp_min(0)
    return NormStats(mean.float(), var.float())


@torch.no_grad()
def predict_rain(net: MGIDNet, image: torch.Tensor, tile: int | None = None, overlap: int = DEFAULT_OVERLAP,
                 global_norm: bool = True, precision: str = "fp32", channels_last: bool | None = False) -> torch.Tensor:
    """The rain layer R (B, 3, H, W) of ``image`` (B, 3, H, W) in [-1, 1], memory read only.

    ``tile=None`` (or an image that fits in one tile) runs the network once. Otherwise tiles of
    ``tile`` px (rounded down to a multiple of 8) overlapping by ``overlap`` px (rounded up) are
    blended as the module doc describes. Tiles run on the network's device; the result is on
    ``image``'s device, in its dtype. The network's train/eval mode is restored afterwards.
    ``precision`` (fp32, bf16 autocast or auto) and ``channels_last`` (None: auto) as the module doc
    says; the network's own memory format is left as it is (`mgid.derain.derainer.Derainer` converts it once).
    """
    _check_image(image)
    was_training = net.training
    net.eval()
    try:
        device = next(net.parameters()).device
        precision = resolve_precision(precision, device, "inference")
        if channels_last is None:
            channels_last = resolve_channels_last(None, precision, device, "inference")
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        h, w = image.shape[-2:]
        with autocast(device, precision):
            if tile is not None and (h > tile or w > tile):
                tile, overlap = tile_geometry(tile, overlap)
                padded = pad_to_multiple(image, DOWNSAMPLE, net.config.pad_mode)
                if padded.shape[-2] > tile or padded.shape[-1] > tile:
                    return _predict_tiled(net, padded, tile, overlap, global_norm, fmt)[..., :h, :w]
            out = net(image.to(device).contiguous(memory_format=fmt), update_memory=False, memory_losses=False)
            return out.rain.to(image.device, image.dtype)
    finally:
        net.train(was_training)


@torch.no_grad()
def tiled_rain(padded: torch.Tensor, tile: int, overlap: int, run_tile: TileFn,
               pre_norm_query: QueryFn | None = None) -> torch.Tensor:
    """The blended rain layer (B, 3, H, W) of ``padded`` (B, 3, H, W), H and W multiples of 8, in ``padded``'s dtype
    and on its device, from tiles run by ``run_tile`` (the module doc's steps 2-3).

    ``tile``/``overlap`` as `tile_geometry` returns them. With ``pre_norm_query`` (global normalisation) a first
    pass gathers the whole image's instance-norm statistics from it and every tile is run with them; without
    it, ``run_tile(crop, None)`` normalises each tile by itself. The network is reached only through the two
    callables, so other runtimes (`mgid.derain.onnx_backend`) tile exactly as `predict_rain` does.
    """
    b, c, h, w = padded.shape
    ys, xs, th, tw = _grid(h, w, tile, overlap)
    acc = torch.zeros(b, c, h, w, dtype=torch.float32, device=padded.device)
    wys = [_ramp(th, overlap, rise=iy > 0, fall=iy < len(ys) - 1).to(padded.device) for iy in range(len(ys))]
    wxs = [_ramp(tw, overlap, rise=ix > 0, fall=ix < len(xs) - 1).to(padded.device) for ix in range(len(xs))]
    stats = _global_query_stats(pre_norm_query, padded, tile, overlap) if pre_norm_query is not None else None
    for y, wy in zip(ys, wys):
        for x, wx in zip(xs, wxs):
            check_time_limit()  # a time limit set around the call (mgid.derain.time_limit) is kept between tiles
            rain = run_tile(padded[..., y:y + th, x:x + tw], stats)
            acc[..., y:y + th, x:x + tw] += rain.to(padded.device, torch.float32) * (wy[:, None] * wx[None, :])
    # The summed windows, a band of rows at a time (each band adds the tiles' windows in the tiles' order, so
    # the division is the one an image-sized weight buffer would give, bit for bit), divided in place.
    for r0 in range(0, h, _ROWS_PER_CHUNK):
        r1 = min(h, r0 + _ROWS_PER_CHUNK)
        weight = torch.zeros(r1 - r0, w, dtype=torch.float32, device=padded.device)
        for y, wy in zip(ys, wys):
            lo, hi = max(y, r0), min(y + th, r1)
            if lo < hi:
                for x, wx in zip(xs, wxs):
                    weight[lo - r0:hi - r0, x:x + tw] += wy[lo - y:hi - y, None] * wx[None, :]
        acc[..., r0:r1, :].div_(weight)
    return acc.to(padded.dtype)


def _predict_tiled(net: MGIDNet, padded: torch.Tensor, tile: int, overlap: int, global_norm: bool,
                   fmt: torch.memory_format = torch.contiguous_format) -> torch.Tensor:
    """`tiled_rain` with ``net`` on its device, inputs in memory format ``fmt``."""
    device = next(net.parameters()).device

    def run_tile(crop: torch.Tensor, stats: NormStats | None) -> torch.Tensor:
        return net(crop.to(device).contiguous(memory_format=fmt), update_memory=False, memory_losses=False,
                   norm_stats=stats).rain

    def query(crop: torch.Tensor) -> torch.Tensor:
        return net.pre_norm_query(crop.to(device).contiguous(memory_format=fmt))

    return tiled_rain(padded, tile, overlap, run_tile, query if global_norm else None)

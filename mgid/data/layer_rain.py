"""The benchmarks' kind of rain: Photoshop-style streak layers with an optional veil (our own code).

`render_layer_rain` renders one frame's rain layer and draws its `LayerVeil`; `apply_veil` applies the veil;
`LayerRainConfig` holds the settings, `sample_layer_frame` the per-frame draws, `segment_kernel` the motion blur.
`mgid.data.synthetic_rain` uses it as one kind of rain (``RainConfig.layer_probability``) and the held-out set
``layered`` renders with it. The model, the defaults and their measurements: docs/RAIN.md.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from mgid.errors import InputError

from .ranges import check_range, check_value

#: Points per pixel of streak length at which the motion-blur segment is sampled (each splatted bilinearly):
#: enough that a slanted segment's kernel has no gaps or beads.
_KERNEL_SAMPLES_PER_PIXEL = 4
#: The Gaussian speck blur is cut at this many sigmas (what ``cv2.GaussianBlur`` needs as a kernel size).
_SPECK_CUTOFF = 3.0
#: Percent: densities are given in percent of the pixels.
_PERCENT = 100.0
#: Motion-blurred values below this fraction of the layer's maximum are set to exactly 0: ``cv2.filter2D``
#: convolves large kernels by DFT, whose round-off leaves ~1e-8 everywhere, and such values stay below one grey
#: level after the brightness levels anyway. Exact zeros keep rain-free pixels exactly clean.
_ROUNDOFF_FLOOR = 1e-3


#: Name of the settings in validation messages.
_OWNER = "LayerRainConfig"


@dataclass(frozen=True)
class LayerRainConfig:
    """Every knob of the layer rain renderer. Ranges are (low, high), drawn uniformly per frame (per layer where
    said). The defaults are the training setting (docs/RAIN.md says why); `mgid.data.heldout_sets` fixes its
    own setting for the ``layered`` held-out set."""

    layers_range: tuple[int, int] = (1, 3)
    """Number of streak layers in one frame, drawn per frame (whole numbers, inclusive)."""
    density_range: tuple[float, float] = (0.1, 1.0)
    """Percent of the pixels that survive the levels as specks, one value per frame, shared evenly by its layers
    (the frame's rain coverage grows with density times streak length)."""
    angle_range: tuple[float, float] = (-30.0, 30.0)
    """Fall angle in degrees from vertical, one per frame; positive leans right going down (within +-60)."""
    angle_spread: float = 12.0
    """Each layer after the first falls at the frame's angle plus a uniform offset in +-this many degrees
    (in [0, 45])."""
    length_range: tuple[float, float] = (15.0, 45.0)
    """Motion-blur length in pixels (the streak length), drawn per layer (>= 1)."""
    softness_range: tuple[float, float] = (0.2, 0.7)
    """Standard deviation in pixels of the Gaussian blur of the noise before the levels, drawn per layer: larger
    makes bigger specks, so wider streaks (0 = single-pixel specks)."""
    saturated_share: float = 0.1
    """Share of the surviving specks stretched to full brightness by the levels (white point), in (0, 1]."""
    brightness_range: tuple[float, float] = (0.3, 0.9)
    """Brightness in [0, 1] of a streak's body, drawn per layer."""
    streak_white_quantile: float = 0.95
    """Quantile of a layer's non-zero motion-blurred pixels mapped to its brightness (the second levels), in
    (0, 1]; the brighter rest (where specks or streaks overlap) saturates."""
    veil_probability: float = 0.4
    """Probability that a frame gets a veil (accumulation) at all. Only some frames, so that what the two frames
    of a pair share is mostly background, not haze."""
    veil_range: tuple[float, float] = (0.05, 0.3)
    """Veil strength ``1 - t`` (t the transmission) of a veiled frame, in [0, 1]."""
    airlight_range: tuple[float, float] = (0.75, 1.0)
    """Grey level ``A`` of the veil (atmospheric light), in [0, 1]."""

    def __post_init__(self) -> None:
        if len(self.layers_range) != 2 or any(int(n) != n for n in self.layers_range) \
                or not 1 <= self.layers_range[0] <= self.layers_range[1]:
            raise InputError(f"LayerRainConfig.layers_range must be two whole numbers 1 <= low <= high, "
                             f"got {self.layers_range}")
        check_range(_OWNER, "density_range", self.density_range, lo=0.0, hi=_PERCENT)
        check_range(_OWNER, "angle_range", self.angle_range, lo=-60.0, hi=60.0)
        check_value(_OWNER, "angle_spread", self.angle_spread, 0.0, 45.0)
        check_range(_OWNER, "length_range", self.length_range, lo=1.0)
        check_range(_OWNER, "softness_range", self.softness_range, lo=0.0)
        check_value(_OWNER, "saturated_share", self.saturated_share, 0.0, 1.0, lo_open=True)
        check_range(_OWNER, "brightness_range", self.brightness_range, lo=0.0, hi=1.0)
        check_value(_OWNER, "streak_white_quantile", self.streak_white_quantile, 0.0, 1.0, lo_open=True)
        check_value(_OWNER, "veil_probability", self.veil_probability, 0.0, 1.0)
        check_range(_OWNER, "veil_range", self.veil_range, lo=0.0, hi=1.0)
        check_range(_OWNER, "airlight_range", self.airlight_range, lo=0.0, hi=1.0)


@dataclass(frozen=True)
class LayerVeil:
    """One frame's veil: ``B' = B t + A (1 - t)`` with ``t = 1 - strength``; strength 0 means no veil."""

    strength: float
    """``1 - t`` in [0, 1]."""
    airlight: float
    """Grey atmospheric light ``A`` in [0, 1]."""


@dataclass(frozen=True)
class LayerFrame:
    """The values drawn for one frame (`sample_layer_frame`); each per-layer tuple has one entry per layer."""

    density: float
    """Percent of the pixels that survive as specks, summed over the layers."""
    angles: tuple[float, ...]
    """Fall angle of each layer in degrees from vertical."""
    lengths: tuple[float, ...]
    """Streak (motion-blur) length of each layer in pixels."""
    softness: tuple[float, ...]
    """Speck blur sigma of each layer in pixels."""
    brightness: tuple[float, ...]
    """Streak brightness of each layer in [0, 1]."""
    veil: LayerVeil
    """The frame's veil (strength 0 when the frame has none)."""


def sample_layer_frame(rng: np.random.Generator, cfg: LayerRainConfig) -> LayerFrame:
    """Draw one frame's values from ``cfg`` in a fixed order.

    The order is layer count, density, angle, per-layer angle offsets, lengths, softness, brightness, then the
    veil's coin, strength and light; the veil comes last, so the veil settings never move the streaks.

    Args:
        rng: source of every draw (a seeded generator reproduces the frame).
        cfg: renderer settings.

    Returns:
        The frame's `LayerFrame`.
    """
    u = lambda r: float(rng.uniform(r[0], r[1]))  # noqa: E731 - one uniform draw per range
    n = int(rng.integers(int(cfg.layers_range[0]), int(cfg.layers_range[1]) + 1))
    density = u(cfg.density_range)
    angle = u(cfg.angle_range)
    offsets = rng.uniform(-cfg.angle_spread, cfg.angle_spread, n)
    offsets[0] = 0.0  # the first layer keeps the frame's angle
    lengths = rng.uniform(*cfg.length_range, n)
    softness = rng.uniform(*cfg.softness_range, n)
    brightness = rng.uniform(*cfg.brightness_range, n)
    veiled = rng.random() < cfg.veil_probability
    strength = u(cfg.veil_range)
    airlight = u(cfg.airlight_range)
    return LayerFrame(density=density, angles=tuple(float(angle + o) for o in offsets),
                      lengths=tuple(float(x) for x in lengths), softness=tuple(float(x) for x in softness),
                      brightness=tuple(float(x) for x in brightness),
                      veil=LayerVeil(strength=strength if veiled else 0.0, airlight=airlight))


def segment_kernel(length: float, angle_deg: float) -> np.ndarray:
    """Motion-blur kernel: a box average along a segment through the kernel's centre.

    The segment is sampled ``_KERNEL_SAMPLES_PER_PIXEL`` times per pixel and each sample splatted bilinearly, so
    slanted and fractional lengths blur as evenly as vertical whole ones.

    Args:
        length: segment length in pixels; ``<= 1`` gives the 1x1 identity.
        angle_deg: direction in degrees from vertical, positive leaning right going down.

    Returns:
        A (k, k) float32 array, k odd, summing to 1.
    """
    if length <= 1.0:
        return np.ones((1, 1), np.float32)
    k = (int(math.ceil(length)) + 2) | 1  # odd, with a pixel of room for the bilinear splats at the ends
    c = (k - 1) / 2.0
    a = math.radians(angle_deg)
    t = np.linspace(-0.5 * (length - 1.0), 0.5 * (length - 1.0), int(math.ceil(length * _KERNEL_SAMPLES_PER_PIXEL)))
    x, y = c + t * math.sin(a), c + t * math.cos(a)
    x0, y0 = np.floor(x).astype(np.int64), np.floor(y).astype(np.int64)
    fx, fy = x - x0, y - y0
    kern = np.zeros((k, k), np.float64)
    for dy, dx, wgt in ((0, 0, (1 - fy) * (1 - fx)), (0, 1, (1 - fy) * fx), (1, 0, fy * (1 - fx)), (1, 1, fy * fx)):
        np.add.at(kern, (y0 + dy, x0 + dx), wgt)
    return (kern / kern.sum()).astype(np.float32)


def _order_statistics(values: np.ndarray, ranks: list[int]) -> list[float]:
    """The values of the given ranks (0 = the smallest) in ``values`` (any shape, flattened); a partition, not a
    sort or ``np.quantile``, which are several times slower on a frame's pixels."""
    flat = values.ravel()
    ranks = [min(max(int(r), 0), flat.size - 1) for r in ranks]
    part = np.partition(flat, ranks)
    return [float(part[r]) for r in ranks]


def _streak_layer(canvas_h: int, canvas_w: int, rng: np.random.Generator, share: float, angle: float, length: float,
                  softness: float, brightness: float, cfg: LayerRainConfig) -> np.ndarray:
    """One streak layer on a ``canvas_h`` x ``canvas_w`` canvas (steps 1-5 of docs/RAIN.md), float32 in
    [0, 1]; ``share`` is the fraction (not percent) of pixels that survive the levels."""
    noise = rng.random((canvas_h, canvas_w), dtype=np.float32)
    pixels = canvas_h * canvas_w
    survivors = int(round(share * pixels))
    if survivors < 1:  # not one speck survives: no streaks
        return np.zeros((canvas_h, canvas_w), np.float32)
    if softness > 0.0:
        size = 2 * int(math.ceil(_SPECK_CUTOFF * softness)) + 1
        noise = cv2.GaussianBlur(noise, (size, size), softness, borderType=cv2.BORDER_REFLECT_101)
    # Levels: the black point leaves `survivors` pixels above it, the white point the brightest share of them.
    saturated = max(1, int(round(cfg.saturated_share * survivors)))
    black, white = _order_statistics(noise, [pixels - survivors - 1, pixels - saturated])
    if white > black:
        specks = np.clip((noise - np.float32(black)) * np.float32(1.0 / (white - black)), 0.0, 1.0)
    else:  # too few distinct values to stretch between: every survivor at full brightness
        specks = (noise > black).astype(np.float32)
    streaks = cv2.filter2D(specks, -1, segment_kernel(length, angle), borderType=cv2.BORDER_CONSTANT)
    peak = float(streaks.max())
    if peak <= 0.0:
        return np.zeros((canvas_h, canvas_w), np.float32)
    streaks[streaks < np.float32(_ROUNDOFF_FLOOR * peak)] = 0.0
    body = streaks[streaks > 0.0]
    (body_white,) = _order_statistics(body, [int(cfg.streak_white_quantile * (body.size - 1))])
    scale = np.float32(brightness / max(body_white, np.finfo(np.float32).tiny))
    return np.clip(streaks * scale, 0.0, 1.0)


def render_layer_rain(h: int, w: int, rng: np.random.Generator,
                      cfg: LayerRainConfig | None = None) -> tuple[np.ndarray, LayerVeil]:
    """Render one frame's layer rain and draw its veil (the model: docs/RAIN.md).

    Args:
        h: frame height in pixels (>= 1).
        w: frame width in pixels (>= 1).
        rng: source of all randomness (a seeded generator reproduces the frame).
        cfg: renderer settings (default ``LayerRainConfig()``, the training setting).

    Returns:
        ``(rain, veil)``: the rain layer R, (H, W) float32 in [0, 1] (0 = no rain), and the frame's `LayerVeil`
        (apply it to the background with `apply_veil` before screening R on top).

    Raises:
        InputError: ``h`` or ``w`` is below 1 (a ``ValueError``).
    """
    if h < 1 or w < 1:
        raise InputError(f"render_layer_rain needs h, w >= 1, got {h}x{w}")
    cfg = cfg or LayerRainConfig()
    frame = sample_layer_frame(rng, cfg)
    # Streaks are rendered on a canvas grown by half the longest streak plus the speck blur, so that streaks
    # whose specks lie outside the frame still reach into it, as in an uncropped photo.
    margin = int(math.ceil(0.5 * max(frame.lengths) + _SPECK_CUTOFF * max(frame.softness))) + 1
    ch, cw = h + 2 * margin, w + 2 * margin
    share = frame.density / _PERCENT / len(frame.angles)
    keep = np.ones((ch, cw), np.float32)  # prod_k (1 - R_k)
    for angle, length, softness, brightness in zip(frame.angles, frame.lengths, frame.softness, frame.brightness):
        keep *= 1.0 - _streak_layer(ch, cw, rng, share, angle, length, softness, brightness, cfg)
    rain = np.clip(1.0 - keep[margin:margin + h, margin:margin + w], 0.0, 1.0)
    return np.ascontiguousarray(rain, dtype=np.float32), frame.veil


def apply_veil(image: np.ndarray, veil: LayerVeil) -> np.ndarray:
    """Veil an image: ``image * t + A * (1 - t)`` with ``t = 1 - veil.strength``.

    Args:
        image: (H, W, 3) or (H, W) float32 in [0, 1].
        veil: the frame's veil, from `render_layer_rain`.

    Returns:
        The veiled image, same shape, float32; ``image`` itself when the strength is 0 (no veil).
    """
    if veil.strength <= 0.0:
        return image
    t = np.float32(1.0 - veil.strength)
    return (image * t + np.float32(veil.airlight) * (np.float32(1.0) - t)).astype(np.float32)

"""The benchmarks' kind of rain: a Photoshop-style streak layer with an optional veil (our own code).

The training sets behind Rain100L/H, Rain12 and DDN (Rain14000) are described as made in an image editor:
dense noise, blurred a little, thresholded by "levels" so that only the brightest specks survive, motion-blurred
along one direction and screen-blended onto the background; heavy sets add accumulation (the image mixed towards
an atmospheric light) and several streak layers. This module renders that from the description alone (no code
taken from anyone); `mgid.data.synthetic_rain` uses it as one more kind of rain
(``RainConfig.layer_probability``), and the held-out set ``layered`` (`mgid.data.heldout_sets`) renders with it.

Model of one frame's rain layer ``R`` (HxW, values in [0, 1]). Per frame: the number of streak layers ``n``,
the speck density ``d`` (percent of pixels, shared evenly by the layers), the fall angle ``a`` (degrees from
vertical, positive leans right going down). Per layer ``k``: angle ``a_k`` (``a`` for the first layer, ``a`` plus
up to ``angle_spread`` for the others), streak length ``L_k``, speck softness ``sigma_k``, brightness ``b_k``.

1. Noise: ``N ~ U(0, 1)`` per pixel, on a canvas grown by half the longest streak (plus the speck blur), so
   streaks enter through the borders; the frame is cut from its middle.
2. Blur: ``G = GaussianBlur(N, sigma_k)``: neighbours correlate, so what survives step 3 are small round specks
   (about ``2 sigma_k`` wide, which is the width of the streaks).
3. Levels: the black point ``lo`` is the value of ``G`` that leaves ``d / n`` percent of the pixels above it,
   the white point ``hi`` the one that leaves ``saturated_share`` of those (order statistics of ``G``);
   ``S = clip((G - lo) / (hi - lo), 0, 1)``: exactly ``d / n`` percent of the pixels survive and the brightest
   ``saturated_share`` of them are at full brightness.
4. Motion blur: ``M = S * K`` with ``K`` a box average along a segment of length ``L_k`` at angle ``a_k``
   (`segment_kernel`); values under ``_ROUNDOFF_FLOOR`` of M's maximum are set to exactly 0.
5. Levels again (the streaks' brightness): ``R_k = clip(b_k * M / m_k, 0, 1)`` with ``m_k`` the
   ``streak_white_quantile`` quantile of M's non-zero pixels, so the body of a streak is ``b_k`` bright whatever
   its length (the motion blur divides a speck's brightness by ``L_k``).
6. Layers combine by screen blending, ``R = 1 - prod_k (1 - R_k)``.

Veil (accumulation), per frame: with probability ``veil_probability`` a strength ``s = 1 - t`` (t the
transmission) from ``veil_range`` and a grey atmospheric light ``A`` from ``airlight_range``; otherwise
``s = 0``. `apply_veil` makes ``B' = B t + A (1 - t)``; `mgid.data.synthetic_rain.add_rain` veils the background
first and then screens the streaks on top, ``I = 1 - (1 - B') (1 - R)`` (streaks are nearer than the haze).

Why the defaults are what they are: the time-lapse objective only sees a pixel's background where one frame of a
pair is clean there, and treats what both frames share as background. A Rain100H-density layer (0.4-3 % specks,
15-45 px) covered 82 % of a frame and 70 % of both frames of a pair, and training on it collapsed (issue 25). So
the density varies per frame (light frames like Rain100L, dense ones like Rain100H) with a mean that keeps the
pixels rainy in both frames of a pair to a few percent, and the veil is present in only some frames, with a
strength drawn per frame, so that most of it differs between the two frames of a pair. Measured at the defaults
over 500 pairs of 128x128 frames (``rain_coverage``, threshold 0.05; ``docs/RAIN.md`` has the command,
``tests/data/test_layer_rain.py`` bounds them on 50 pairs): one frame 17.5 % rainy (a tenth of the frames under
6.4 %, a tenth over 29 %, the densest 43 %; the ``long`` recipe's streaks: 17.5 %), both frames of a pair
3.1 % (the ``long`` recipe: 3.4 %). The veil strength ``s`` differs between the two frames of a pair by 0.098
on average (mean strength 0.070), and the part both frames share, ``E[min(s_a, s_b)] / E[s]``, is 30 % of it
(0.021 of strength; in expectation ``p (a + (b - a) / 3) / ((a + b) / 2)`` = 0.30 for probability ``p`` and
``veil_range`` ``(a, b)``). A 128x128 frame renders in 2-4 ms on one (shared) core.

Everything is drawn from the ``numpy.random.Generator`` passed in, in a fixed order (`sample_layer_frame`:
layer count, density, angle, per-layer angle offsets, lengths, softness, brightness, then the veil's coin,
strength and light; then one noise field per layer), so a seed reproduces a frame exactly, and changing the veil
settings leaves the streaks as they were.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

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
    said). The defaults are the training setting (see the module docstring for why); `mgid.data.heldout_sets`
    fixes its own setting for the ``layered`` held-out set."""

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
            raise ValueError(f"LayerRainConfig.layers_range must be two whole numbers 1 <= low <= high, "
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
    """Draw one frame's values from ``cfg`` in a fixed order (see the module docstring); the veil comes last,
    so the veil settings never move the streaks."""
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
    """Motion-blur kernel: a box average along a segment of ``length`` pixels through the centre at
    ``angle_deg`` from vertical. Returns a k x k float32 array (k odd) summing to 1; ``length <= 1`` gives the
    1x1 identity. The segment is sampled ``_KERNEL_SAMPLES_PER_PIXEL`` times per pixel and each sample splatted
    bilinearly, so slanted and fractional lengths blur as evenly as vertical whole ones."""
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
    """One streak layer on a ``canvas_h`` x ``canvas_w`` canvas (steps 1-5 of the module docstring), float32 in
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
    """Render one frame's layer rain and draw its veil (the model: see the module docstring).

    Args:
        h, w: size of the frame in pixels (>= 1).
        rng: source of all randomness (a seeded generator reproduces the frame).
        cfg: renderer settings (default ``LayerRainConfig()``, the training setting).

    Returns:
        ``(rain, veil)``: the rain layer R, HxW float32 in [0, 1] (0 = no rain), and the frame's `LayerVeil`
        (apply it to the background with `apply_veil` before screening R on top).

    Raises:
        ValueError: ``h`` or ``w`` is below 1.
    """
    if h < 1 or w < 1:
        raise ValueError(f"render_layer_rain needs h, w >= 1, got {h}x{w}")
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
    """``image * t + A * (1 - t)`` with ``t = 1 - veil.strength``: HxWx3 (or HxW) float32 in [0, 1] in, same
    shape and dtype out; ``image`` itself is returned when the strength is 0 (no veil)."""
    if veil.strength <= 0.0:
        return image
    t = np.float32(1.0 - veil.strength)
    return (image * t + np.float32(veil.airlight) * (np.float32(1.0) - t)).astype(np.float32)

"""A second, independent rain renderer, used ONLY to build held-out evaluation sets (never for training).

`add_perspective_rain` makes a rainy frame from a clean one; `PerspectiveRainConfig` holds the settings
(`PERSPECTIVE_RAIN` the default), `sample_streaks`, `render_streaks` and `drop_colour` are its steps. It shares
no code with `mgid.data.synthetic_rain`, so a score on its output measures generalisation to unseen rain.
The model and its cost: docs/EVALUATE.md, "Design notes".
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from mgid.errors import InputError

from .ranges import check_range, check_value

#: Streak densities are counted per this many pixels (a 100x100 patch).
_DENSITY_AREA = 1.0e4
#: Bounding boxes extend this many sigmas (across) / taper sigmas (beyond the ends): exp(-3.5^2/2) ~ 0.002.
_CUTOFF = 3.5


#: Name of the settings in validation messages.
_OWNER = "PerspectiveRainConfig"


@dataclass(frozen=True)
class PerspectiveRainConfig:
    """Every knob of the perspective rain renderer. Ranges are (low, high), sampled uniformly per frame.

    Geometric sizes and the opacity describe the NEAREST drop (depth ``z_near``); a drop at depth ``z``
    is scaled by ``q = z_near / z`` (the model: docs/EVALUATE.md).
    """

    density_range: tuple[float, float] = (46.0, 66.0)
    """Streaks per 100x100 pixels of image, one value per frame (the Poisson mean of the count)."""
    angle_range: tuple[float, float] = (-20.0, 20.0)
    """Fall angle in degrees from vertical, one per frame; positive leans right going down (within +-60)."""
    angle_jitter: float = 3.0
    """Per-streak deviation from the frame's angle, uniform in +-this many degrees (< 45)."""
    depth_range: tuple[float, float] = (1.0, 4.0)
    """(z_near, z_far): depths of the nearest and farthest drops (arbitrary units, > 0)."""
    depth_power: float = 2.0
    """Depth density ``p(z) ~ z^depth_power``; 2 = drops uniform in the view frustum, 0 = uniform in z."""
    perspective: float = 0.7
    """How strongly a streak's row follows its depth, in [0, 1]: 0 = rows independent of depth,
    1 = the nearest drops at the bottom edge, the farthest at the top edge."""
    length_range: tuple[float, float] = (35.0, 55.0)
    """Length in pixels of a nearest streak's core (between the tapers), one value per frame."""
    length_jitter: float = 0.3
    """Per-streak relative length variation, uniform in 1 +- this (in [0, 1))."""
    sigma_range: tuple[float, float] = (1.1, 1.6)
    """Gaussian cross-section sigma in pixels of a nearest streak, one value per frame."""
    min_sigma: float = 0.55
    """Lower bound on any streak's sigma in pixels (thinner Gaussians alias on the pixel grid)."""
    end_softness: float = 0.12
    """Gaussian taper beyond each end: taper sigma = this * core length + cross-section sigma."""
    opacity_range: tuple[float, float] = (0.7, 0.95)
    """Peak alpha in [0, 1] of a nearest streak, one value per frame."""
    opacity_jitter: float = 0.3
    """Per-streak relative dimming, uniform in [1 - this, 1] (in [0, 1])."""
    opacity_depth_exponent: float = 0.5
    """Opacity scales with ``q^this``: 0 = far drops as opaque as near ones, 1 = proportional to 1/depth."""
    sky_range: tuple[float, float] = (0.85, 0.97)
    """Grey level of the sky refracted by a drop, one value per frame, in [0, 1]."""
    sky_mix: float = 0.6
    """Weight of the sky in the drop colour L (the rest is the blurred, brightened background), in [0, 1]."""
    env_gain: float = 1.3
    """Brightening gain on the blurred background inside the drop colour (>= 0)."""
    env_lift: float = 0.1
    """Offset added to the brightened, blurred background inside the drop colour, in [-1, 1]."""
    refraction_blur: float = 5.0
    """Sigma in pixels of the Gaussian blur of the background seen through a drop (> 0)."""

    def __post_init__(self) -> None:
        check_range(_OWNER, "density_range", self.density_range, lo=0.0)
        check_range(_OWNER, "angle_range", self.angle_range, lo=-60.0, hi=60.0)
        check_value(_OWNER, "angle_jitter", self.angle_jitter, lo=0.0, hi=45.0, hi_open=True)
        check_range(_OWNER, "depth_range", self.depth_range, lo=0.0, lo_open=True)
        check_value(_OWNER, "depth_power", self.depth_power, lo=0.0)
        check_value(_OWNER, "perspective", self.perspective, lo=0.0, hi=1.0)
        check_range(_OWNER, "length_range", self.length_range, lo=1.0)
        check_value(_OWNER, "length_jitter", self.length_jitter, lo=0.0, hi=1.0, hi_open=True)
        check_range(_OWNER, "sigma_range", self.sigma_range, lo=0.0, lo_open=True)
        check_value(_OWNER, "min_sigma", self.min_sigma, lo=0.0, lo_open=True)
        check_value(_OWNER, "end_softness", self.end_softness, lo=0.0)
        check_range(_OWNER, "opacity_range", self.opacity_range, lo=0.0, hi=1.0)
        check_value(_OWNER, "opacity_jitter", self.opacity_jitter, lo=0.0, hi=1.0)
        check_value(_OWNER, "opacity_depth_exponent", self.opacity_depth_exponent, lo=0.0)
        check_range(_OWNER, "sky_range", self.sky_range, lo=0.0, hi=1.0)
        check_value(_OWNER, "sky_mix", self.sky_mix, lo=0.0, hi=1.0)
        check_value(_OWNER, "env_gain", self.env_gain, lo=0.0)
        check_value(_OWNER, "env_lift", self.env_lift, lo=-1.0, hi=1.0)
        check_value(_OWNER, "refraction_blur", self.refraction_blur, lo=0.0, lo_open=True)


# Calibration of both presets: mean PSNR (Y, BT.601) of rainy vs clean on 128x128 crops of the
# scikit-image photos ``coffee`` and ``grass`` after resizing by a factor in [0.5, 1]; 16 crops (8 each)
# and, in parentheses, 48 crops. Retune the densities if the model or these numbers change.

#: Default evaluation rain: moderate, many thin short-to-medium streaks; input PSNR 23.3 dB (23.7).
PERSPECTIVE_RAIN = PerspectiveRainConfig()

#: Heavy evaluation rain: long, wide, very soft streaks that together cover most of the frame (fewer
#: streaks per area than the default, but each covers several times the pixels); input PSNR 16.0 dB (16.3).
PERSPECTIVE_HEAVY_RAIN = PerspectiveRainConfig(
    density_range=(31.0, 46.0),
    angle_range=(-25.0, 25.0),
    angle_jitter=4.0,
    length_range=(70.0, 110.0),
    sigma_range=(2.4, 3.4),
    min_sigma=0.8,
    end_softness=0.2,
    opacity_range=(0.7, 0.9),
    opacity_jitter=0.25,
    opacity_depth_exponent=0.35,
    sky_mix=0.7,
    env_gain=1.4,
    env_lift=0.15,
    refraction_blur=7.0,
)


@dataclass(frozen=True)
class Streaks:
    """Per-streak parameters of one frame, each a float64 array of shape (N,) (pixel units)."""

    cx: np.ndarray
    """Centre column (x, pixel-index coordinates; may lie outside the image)."""
    cy: np.ndarray
    """Centre row (y)."""
    ux: np.ndarray
    """x component of the unit fall direction, ``sin(angle)``."""
    uy: np.ndarray
    """y component of the unit fall direction, ``cos(angle)`` (> 0: downwards)."""
    half: np.ndarray
    """Half length of the core segment."""
    sigma: np.ndarray
    """Gaussian cross-section sigma."""
    tau: np.ndarray
    """Gaussian sigma of the taper beyond each end."""
    opacity: np.ndarray
    """Peak alpha in [0, 1]."""

    def __len__(self) -> int:
        return int(self.cx.shape[0])


def _half_extents(ux: np.ndarray, uy: np.ndarray, half: np.ndarray, sigma: np.ndarray,
                  tau: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Half width and half height (each (N,)) of the boxes outside which the streaks' alpha is cut to 0.

    The box holds the core segment plus ``_CUTOFF`` taper sigmas along the fall direction and
    ``_CUTOFF`` cross-section sigmas across it.
    """
    along = half + _CUTOFF * tau
    across = _CUTOFF * sigma
    return np.abs(ux) * along + np.abs(uy) * across, np.abs(uy) * along + np.abs(ux) * across


def sample_streaks(h: int, w: int, rng: np.random.Generator, cfg: PerspectiveRainConfig) -> tuple[Streaks, float]:
    """Draw one frame's streaks for an HxW image and its sky level (the model: docs/EVALUATE.md).

    Streaks may enter through the borders: each one's centre is placed over the image grown by its own
    box half extents, so the density of every streak size stays ``density`` per 100x100 px right up to
    the borders. That is done by drawing a Poisson count over the image grown by the LARGEST possible
    extent and thinning each candidate with probability (its grown area) / (largest grown area).

    The draw order is fixed so the same generator state gives the same frame.

    Args:
        h: image height in pixels.
        w: image width in pixels.
        rng: source of every draw.
        cfg: renderer settings.

    Returns:
        ``(streaks, sky)``: the kept `Streaks` and the frame's grey sky level in [0, 1].
    """
    u = lambda r: float(rng.uniform(r[0], r[1]))  # noqa: E731 - one uniform draw per range
    density = u(cfg.density_range)
    angle = u(cfg.angle_range)
    length = u(cfg.length_range)
    sigma = u(cfg.sigma_range)
    opacity = u(cfg.opacity_range)
    sky = u(cfg.sky_range)

    # Largest possible box half extent (nearest drop, longest jitter, any angle): bounds the candidates.
    core = length * (1.0 + cfg.length_jitter)
    sig_max = max(sigma, cfg.min_sigma)
    margin = math.hypot(0.5 * core + _CUTOFF * (cfg.end_softness * core + sig_max), _CUTOFF * sig_max)
    grown_max = (h + 2.0 * margin) * (w + 2.0 * margin)
    count = int(rng.poisson(density * grown_max / _DENSITY_AREA))

    # Depth by inverse CDF of p(z) ~ z^k on [z_near, z_far]: z = (a + v (b - a))^(1/(k+1)).
    z_near, z_far = (float(v) for v in cfg.depth_range)
    k1 = cfg.depth_power + 1.0
    a, b = z_near ** k1, z_far ** k1
    z = (a + rng.uniform(0.0, 1.0, count) * (b - a)) ** (1.0 / k1)
    q = z_near / z  # inverse depth: 1 for the nearest drop, z_near / z_far for the farthest
    ang = np.deg2rad(angle + rng.uniform(-cfg.angle_jitter, cfg.angle_jitter, count))
    lengths = length * q * rng.uniform(1.0 - cfg.length_jitter, 1.0 + cfg.length_jitter, count)
    ops = opacity * q ** cfg.opacity_depth_exponent * rng.uniform(1.0 - cfg.opacity_jitter, 1.0, count)
    thin = rng.uniform(0.0, 1.0, count)
    row_u = rng.uniform(0.0, 1.0, count)
    col_u = rng.uniform(0.0, 1.0, count)

    ux, uy = np.sin(ang), np.cos(ang)
    half = 0.5 * lengths
    sig = np.maximum(sigma * q, cfg.min_sigma)
    tau = cfg.end_softness * lengths + sig
    ex, ey = _half_extents(ux, uy, half, sig, tau)
    keep = thin * grown_max < (h + 2.0 * ey) * (w + 2.0 * ex)
    q_far = z_near / z_far
    near = (q - q_far) / (1.0 - q_far) if q_far < 1.0 else np.ones(count)
    # Row: near drops low in the frame, far drops high up, blended with a uniform position; as a
    # fraction of the image height grown by the streak's own extent so that both ends stay reachable.
    row = cfg.perspective * near + (1.0 - cfg.perspective) * row_u
    cy = -ey + row * (h + 2.0 * ey)
    cx = -ex + col_u * (w + 2.0 * ex)
    streaks = Streaks(cx=cx[keep], cy=cy[keep], ux=ux[keep], uy=uy[keep], half=half[keep], sigma=sig[keep],
                      tau=tau[keep], opacity=np.clip(ops[keep], 0.0, 1.0))
    return streaks, sky


def render_streaks(h: int, w: int, streaks: Streaks) -> np.ndarray:
    """Rasterise streaks analytically into an alpha map ``A = 1 - prod_i (1 - alpha_i)``.

    Each streak is evaluated over its own bounding box only (vectorised over the box's pixels), so the
    cost is proportional to the covered area; pixel (row i, column j) sits at ``(x, y) = (j, i)``.

    Args:
        h: image height in pixels.
        w: image width in pixels.
        streaks: the streaks to draw (from `sample_streaks`).

    Returns:
        The alpha map, (H, W) float32 in [0, 1], exactly 0 away from every streak.
    """
    keep = np.ones((h, w), np.float32)  # prod_i (1 - alpha_i)
    if len(streaks) == 0:
        return np.zeros((h, w), np.float32)
    ext_x, ext_y = _half_extents(streaks.ux, streaks.uy, streaks.half, streaks.sigma, streaks.tau)
    # Pixels whose centre lies inside the box: [ceil(c - e), floor(c + e)], as a half-open slice.
    x0 = np.clip(np.ceil(streaks.cx - ext_x), 0, w).astype(np.int64)
    x1 = np.clip(np.floor(streaks.cx + ext_x) + 1, 0, w).astype(np.int64)
    y0 = np.clip(np.ceil(streaks.cy - ext_y), 0, h).astype(np.int64)
    y1 = np.clip(np.floor(streaks.cy + ext_y) + 1, 0, h).astype(np.int64)
    visible = np.flatnonzero((x1 > x0) & (y1 > y0) & (streaks.opacity > 0))
    # Plain Python scalars in the loop: NumPy scalar arithmetic is several times slower.
    cols = [a.tolist() for a in (x0, x1, y0, y1)]
    pars = [a.tolist() for a in (streaks.cx, streaks.cy, streaks.ux, streaks.uy, streaks.half,
                                 streaks.sigma, streaks.tau, streaks.opacity)]
    for i in visible.tolist():
        xa, xb, ya, yb = cols[0][i], cols[1][i], cols[2][i], cols[3][i]
        cx, cy, ux, uy, half, sig, tau, op = (p[i] for p in pars)
        dx = np.arange(xa, xb, dtype=np.float32) - np.float32(cx)
        dy = (np.arange(ya, yb, dtype=np.float32) - np.float32(cy))[:, None]
        s = dx * np.float32(ux) + dy * np.float32(uy)  # along the fall direction
        p = dx * np.float32(uy) - dy * np.float32(ux)  # across it
        over = np.maximum(np.abs(s) - np.float32(half), 0.0)  # distance beyond the nearer end
        expo = p * p * np.float32(-0.5 / (sig * sig)) + over * over * np.float32(-0.5 / (tau * tau))
        keep[ya:yb, xa:xb] *= 1.0 - np.float32(op) * np.exp(expo)
    return np.clip(1.0 - keep, 0.0, 1.0)


def drop_colour(clean: np.ndarray, sky: float, cfg: PerspectiveRainConfig) -> np.ndarray:
    """Colour L seen through a drop: grey sky mixed with the blurred, brightened background.

    Args:
        clean: the background, (H, W, 3) float32 in [0, 1].
        sky: the frame's grey sky level in [0, 1].
        cfg: renderer settings (``sky_mix``, ``refraction_blur``, ``env_gain``, ``env_lift``).

    Returns:
        L, (H, W, 3) float32 in [0, 1].
    """
    blurred = cv2.GaussianBlur(clean, (0, 0), sigmaX=cfg.refraction_blur, borderType=cv2.BORDER_REFLECT_101)
    env = np.clip(blurred * np.float32(cfg.env_gain) + np.float32(cfg.env_lift), 0.0, 1.0)
    return (np.float32(cfg.sky_mix * sky) + np.float32(1.0 - cfg.sky_mix) * env).astype(np.float32)


def add_perspective_rain(clean: np.ndarray, rng: np.random.Generator,
                         cfg: PerspectiveRainConfig | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Make a rainy frame for evaluation from a clean background (the model: docs/EVALUATE.md).

    Args:
        clean: (H, W, 3) float in [0, 1] (the background B; it is the exact ground truth of the pair).
        rng: source of all randomness (a seeded generator reproduces the frame).
        cfg: renderer settings (default `PERSPECTIVE_RAIN`).

    Returns:
        ``(rainy, alpha)``: rainy (H, W, 3) float32 in [0, 1] with ``rainy >= clean`` everywhere, and the
        streak alpha A, (H, W) float32 in [0, 1]; where ``A == 0`` the rainy pixel equals the clean one.

    Raises:
        InputError: ``clean`` is not (H, W, 3) with H, W >= 1 (a ``ValueError``).
    """
    cfg = PERSPECTIVE_RAIN if cfg is None else cfg
    img = np.asarray(clean, dtype=np.float32)
    if img.ndim != 3 or img.shape[2] != 3 or img.shape[0] < 1 or img.shape[1] < 1:
        raise InputError(f"add_perspective_rain expects an HxWx3 image in [0, 1], got shape {img.shape}")
    h, w = img.shape[:2]
    streaks, sky = sample_streaks(h, w, rng, cfg)
    alpha = render_streaks(h, w, streaks)
    if len(streaks) == 0:
        return np.clip(img, 0.0, 1.0), alpha  # nothing to composite (and no blur to pay for)
    img = np.ascontiguousarray(np.clip(img, 0.0, 1.0))
    lift = np.maximum(drop_colour(img, sky, cfg) - img, 0.0)  # a drop never darkens what lies behind it
    rainy = img + alpha[..., None] * lift  # exactly B where alpha == 0
    return np.clip(rainy, 0.0, 1.0).astype(np.float32), alpha

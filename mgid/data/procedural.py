"""Procedural backgrounds: dead-leaves scenes with textured shapes, gradients, edges and lines.

`dead_leaves` draws one scene back to front (discs, rotated rectangles, thick lines), colours every shape with a
base colour, a linear gradient and an optional texture, and adds a background gradient, a mild blur and sensor
noise; a seeded ``numpy.random.Generator`` reproduces it. Why dead leaves: docs/TRAIN.md, "Design notes".
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from mgid.errors import InputError

#: Sub-pixel bits for OpenCV's drawing calls.
_SHIFT = 4
#: Shape kinds drawn on the label map.
_DISC, _RECT, _LINE = 0, 1, 2


@dataclass(frozen=True)
class DeadLeavesConfig:
    """Settings of `dead_leaves`; sizes are relative to the image side unless stated."""

    shapes_range: tuple[int, int] = (80, 300)
    """Number of shapes drawn per image (uniform in the range)."""
    radius_range: tuple[float, float] = (0.01, 0.35)
    """Shape radius relative to the side; drawn from a power law ~ r^-alpha within the range."""
    alpha: float = 2.0
    """Exponent of the radius power law (3 is scale invariant; lower favours large shapes)."""
    shape_probabilities: tuple[float, float, float] = (0.55, 0.3, 0.15)
    """Probabilities of a disc, a rotated rectangle (straight edges) and a thick line."""
    texture_probability: float = 0.5
    """Share of shapes with a sinusoidal or noise texture on top of their colour and gradient."""
    saturation_range: tuple[float, float] = (0.0, 0.8)
    """Colour saturation of a scene (per scene, so some scenes are almost grey)."""
    blur_probability: float = 0.3
    """Probability of a mild Gaussian blur (depth of field) of the whole scene."""
    noise_std: float = 0.01
    """Standard deviation of additive Gaussian sensor noise (in [0, 1] units)."""

    def __post_init__(self) -> None:
        lo, hi = self.shapes_range
        if not 1 <= lo <= hi:
            raise InputError(f"DeadLeavesConfig.shapes_range must satisfy 1 <= low <= high, got {self.shapes_range}")
        rlo, rhi = self.radius_range
        if not 0 < rlo <= rhi:
            raise InputError(f"DeadLeavesConfig.radius_range must satisfy 0 < low <= high, got {self.radius_range}")
        if len(self.shape_probabilities) != 3 or min(self.shape_probabilities) < 0 or sum(self.shape_probabilities) <= 0:
            raise InputError("DeadLeavesConfig.shape_probabilities must be three non-negative numbers, not all 0")
        for name in ("texture_probability", "blur_probability"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise InputError(f"DeadLeavesConfig.{name} must lie in [0, 1], got {getattr(self, name)}")
        if self.noise_std < 0 or self.alpha <= 1.0:
            raise InputError("DeadLeavesConfig: noise_std must be >= 0 and alpha > 1")


def _power_law(rng: np.random.Generator, n: int, lo: float, hi: float, alpha: float) -> np.ndarray:
    """``n`` samples of density ~ r^-alpha on [lo, hi] (inverse CDF)."""
    if hi <= lo:
        return np.full(n, lo)
    a = 1.0 - alpha
    u = rng.random(n)
    return (lo ** a + u * (hi ** a - lo ** a)) ** (1.0 / a)


def _random_colours(rng: np.random.Generator, n: int, saturation: float) -> np.ndarray:
    """(n, 3) RGB colours in [0, 1]: a grey level mixed with a random hue by ``saturation``."""
    grey = rng.random((n, 1))
    hue = rng.random((n, 3))
    return np.clip((1.0 - saturation) * grey + saturation * hue, 0.0, 1.0)


def dead_leaves(size: int | tuple[int, int], rng: np.random.Generator,
                config: DeadLeavesConfig | None = None) -> np.ndarray:
    """A procedural scene: (H, W, 3) float32 RGB in [0, 1].

    Args:
        size: side, or (height, width), in pixels.
        rng: source of all randomness.
        config: shape, texture and noise settings (default ``DeadLeavesConfig()``).

    Returns:
        The scene, (H, W, 3) float32 RGB in [0, 1].

    Raises:
        InputError: a size that is not positive (a ``ValueError``).
    """
    cfg = config or DeadLeavesConfig()
    h, w = (size, size) if isinstance(size, (int, np.integer)) else (int(size[0]), int(size[1]))
    if h < 1 or w < 1:
        raise InputError(f"dead_leaves: size must be positive, got {size!r}")
    side = float(max(h, w))
    n = int(rng.integers(cfg.shapes_range[0], cfg.shapes_range[1] + 1))
    saturation = float(rng.uniform(*cfg.saturation_range))
    radii = _power_law(rng, n, cfg.radius_range[0] * side, cfg.radius_range[1] * side, cfg.alpha)
    # large shapes first so that small ones occlude them (the dead-leaves order, back to front)
    radii = np.sort(radii)[::-1]
    probs = np.asarray(cfg.shape_probabilities, float)
    kinds = rng.choice(3, size=n, p=probs / probs.sum())
    cx, cy = rng.uniform(0, w, n), rng.uniform(0, h, n)
    angles = rng.uniform(0, 180, n)
    aspect = rng.uniform(0.3, 1.0, n)

    # label 0 is the background; shape k gets label k + 1
    labels = np.zeros((h, w), np.float32)  # float32 holds integers exactly up to 2^24
    s = 1 << _SHIFT
    for k in range(n):
        lab = float(k + 1)
        r = float(radii[k])
        if kinds[k] == _DISC:
            cv2.circle(labels, (int(cx[k] * s), int(cy[k] * s)), max(1, int(r * s)), lab, -1, cv2.LINE_8, _SHIFT)
        elif kinds[k] == _RECT:
            box = cv2.boxPoints(((float(cx[k]), float(cy[k])), (2 * r, 2 * r * float(aspect[k])), float(angles[k])))
            cv2.fillPoly(labels, [np.rint(box * s).astype(np.int32)], lab, cv2.LINE_8, _SHIFT)
        else:
            t = np.deg2rad(angles[k])
            dx, dy = np.cos(t) * r * 2, np.sin(t) * r * 2
            thick = max(1, int(round(r * 0.15 * float(aspect[k]))))
            cv2.line(labels, (int((cx[k] - dx) * s), int((cy[k] - dy) * s)),
                     (int((cx[k] + dx) * s), int((cy[k] + dy) * s)), lab, thick, cv2.LINE_8, _SHIFT)
    idx = labels.astype(np.int64)

    # per-label parameters (index 0 = background); colour + gradient + texture, evaluated per pixel
    m = n + 1
    base = _random_colours(rng, m, saturation)
    grad = rng.normal(0.0, 0.35, (m, 2)) / side  # change in [0, 1] units per pixel
    grad_amp = rng.uniform(-0.6, 0.6, (m, 1))  # how much of the gradient goes into the colour
    centre = np.stack([np.concatenate([[w / 2], cx]), np.concatenate([[h / 2], cy])], 1)
    textured = rng.random(m) < cfg.texture_probability
    freq = rng.uniform(0.05, 0.6, m)
    tex_angle = rng.uniform(0, np.pi, m)
    tex_amp = np.where(textured, rng.uniform(0.03, 0.2, m), 0.0)
    phase = rng.uniform(0, 2 * np.pi, m)

    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    rel_x = xx - centre[idx, 0]
    rel_y = yy - centre[idx, 1]
    ramp = rel_x * grad[idx, 0] + rel_y * grad[idx, 1]
    wave = np.sin(freq[idx] * (rel_x * np.cos(tex_angle[idx]) + rel_y * np.sin(tex_angle[idx])) + phase[idx])
    img = base[idx] + (grad_amp[idx] * ramp[..., None]) * side * 0.1 + (tex_amp[idx] * wave)[..., None]
    # fine noise texture on some shapes (grass/gravel-like), blurred a little so it is not white noise
    noisy = (textured & (rng.random(m) < 0.5))[idx]
    if noisy.any():
        grain = cv2.GaussianBlur(rng.normal(0.0, 0.12, (h, w)).astype(np.float32), (0, 0), 0.8)
        img += (grain * noisy)[..., None]
    img = img.astype(np.float32)
    if rng.random() < cfg.blur_probability:
        img = cv2.GaussianBlur(img, (0, 0), float(rng.uniform(0.5, 1.5)))
    if cfg.noise_std > 0:
        img += rng.normal(0.0, cfg.noise_std, img.shape).astype(np.float32)
    return np.clip(img, 0.0, 1.0).astype(np.float32)

"""Our synthetic rain renderer (NumPy + OpenCV), used to build time-lapse scenes from still photos.

Model of one rainy frame, all values in [0, 1]:

1. Illumination (mild global change between frames of a scene): ``B' = clip(gain * B + offset)``,
   gain and offset centred on 1 and 0, so that what the frames of a scene agree on is the clean B.
2. Veil (rain accumulated far away, optional per frame, off by default): ``B'' = B' * t + A * (1 - t)``
   with transmission ``t`` and grey atmospheric light ``A``.
3. Rain layer ``R`` (HxW): ``layers`` depth layers of straight streaks, each drawn anti-aliased with
   ``cv2.line`` and motion-blurred along the fall direction with ``cv2.filter2D``. Near layers have
   long, wide, bright, strongly blurred streaks; far layers short, thin, dim, dense ones. Layers are
   combined by screen blending, ``R = 1 - prod_k (1 - R_k)``.
4. Composite by screen blending: ``I = 1 - (1 - B'') * (1 - R)`` (rain only ever brightens).

Per frame one fall angle is drawn (degrees from vertical, positive leans right going down) and each
streak deviates from it by a small jitter; density, length, width, brightness and blur are drawn per
frame too, so frames of one scene differ in all of them. Everything is drawn from the
``numpy.random.Generator`` passed in, in a fixed order, so a seed reproduces a frame exactly.
A 256x256 frame takes a few milliseconds.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

#: Sub-pixel precision (fractional bits) of streak end points given to ``cv2.line``.
_LINE_SHIFT = 4
#: Streak densities are counted per this many pixels (a 100x100 patch).
_DENSITY_AREA = 1.0e4


def _check_range(name: str, rng: tuple[float, float], lo: float | None = None, hi: float | None = None) -> None:
    a, b = rng
    if a > b:
        raise ValueError(f"RainConfig.{name}: lower bound {a} is above upper bound {b}")
    if lo is not None and a < lo:
        raise ValueError(f"RainConfig.{name}: {a} is below the allowed minimum {lo}")
    if hi is not None and b > hi:
        raise ValueError(f"RainConfig.{name}: {b} is above the allowed maximum {hi}")


@dataclass(frozen=True)
class RainConfig:
    """Every knob of the rain renderer. Ranges are (low, high), sampled uniformly per frame.

    Geometric ranges (length, width, blur) and the intensity range describe the nearest depth layer;
    farther layers are scaled down towards ``far_scale`` / ``far_intensity``.
    """

    density_range: tuple[float, float] = (6.0, 30.0)
    """Streaks per 100x100 pixels in one frame, summed over all depth layers."""
    angle_range: tuple[float, float] = (-30.0, 30.0)
    """Fall angle in degrees from vertical, one per frame (must lie within +-30)."""
    angle_jitter: float = 4.0
    """Per-streak deviation from the frame's angle, uniform in +-this many degrees."""
    length_range: tuple[float, float] = (10.0, 50.0)
    """Streak length in pixels (nearest layer), one value per frame."""
    length_jitter: float = 0.3
    """Per-streak relative length variation, uniform in 1 +- this."""
    width_range: tuple[float, float] = (1.0, 3.0)
    """Streak width in pixels (nearest layer), one value per frame; drawn widths are whole pixels >= 1."""
    intensity_range: tuple[float, float] = (0.5, 1.0)
    """Streak brightness in [0, 1] (nearest layer), one value per frame."""
    intensity_jitter: float = 0.25
    """Per-streak relative dimming, uniform in [1 - this, 1]."""
    blur_range: tuple[float, float] = (1.0, 9.0)
    """Motion-blur kernel length in pixels along the fall direction (nearest layer); <= 1 means none."""
    layers: int = 3
    """Number of depth layers of streaks."""
    far_scale: float = 0.4
    """Length, width and blur of the farthest layer relative to the nearest one."""
    far_intensity: float = 0.6
    """Brightness of the farthest layer relative to the nearest one."""
    veil_probability: float = 0.0
    """Probability that a frame gets a veil (haze) at all. Off by default: a veil on some frames of a scene
    becomes part of the background the time-lapse objective learns (a lifted, low-contrast tone)."""
    veil_range: tuple[float, float] = (0.0, 0.2)
    """Veil strength 1 - t (t = transmission) when a veil is drawn."""
    airlight_range: tuple[float, float] = (0.75, 1.0)
    """Grey level A of the veil (atmospheric light)."""
    gain_range: tuple[float, float] = (0.95, 1.05)
    """Global illumination gain of the background per frame (keep it centred on 1: the background two frames
    agree on is then the clean one)."""
    offset_range: tuple[float, float] = (-0.02, 0.02)
    """Global illumination offset of the background per frame (in [0, 1] units; keep it centred on 0)."""
    heavy_probability: float = 0.0
    """Probability that a frame is heavy rain, drawn from the ``heavy_*`` ranges instead of the ones above."""
    heavy_density_range: tuple[float, float] = (25.0, 80.0)
    """Streaks per 100x100 pixels of a heavy-rain frame."""
    heavy_length_range: tuple[float, float] = (25.0, 80.0)
    """Streak length in pixels (nearest layer) of a heavy-rain frame."""
    heavy_width_range: tuple[float, float] = (2.0, 5.0)
    """Streak width in pixels (nearest layer) of a heavy-rain frame."""
    heavy_blur_range: tuple[float, float] = (4.0, 15.0)
    """Motion-blur length in pixels (nearest layer) of a heavy-rain frame."""

    def __post_init__(self) -> None:
        _check_range("density_range", self.density_range, lo=0.0)
        _check_range("angle_range", self.angle_range, lo=-30.0, hi=30.0)
        _check_range("length_range", self.length_range, lo=1.0)
        _check_range("width_range", self.width_range, lo=1.0)
        _check_range("intensity_range", self.intensity_range, lo=0.0, hi=1.0)
        _check_range("blur_range", self.blur_range, lo=0.0)
        _check_range("veil_range", self.veil_range, lo=0.0, hi=1.0)
        _check_range("airlight_range", self.airlight_range, lo=0.0, hi=1.0)
        _check_range("gain_range", self.gain_range, lo=0.0)
        _check_range("offset_range", self.offset_range, lo=-1.0, hi=1.0)
        _check_range("heavy_density_range", self.heavy_density_range, lo=0.0)
        _check_range("heavy_length_range", self.heavy_length_range, lo=1.0)
        _check_range("heavy_width_range", self.heavy_width_range, lo=1.0)
        _check_range("heavy_blur_range", self.heavy_blur_range, lo=0.0)
        if not 0.0 <= self.heavy_probability <= 1.0:
            raise ValueError(f"RainConfig.heavy_probability must lie in [0, 1], got {self.heavy_probability}")
        if self.layers < 1:
            raise ValueError(f"RainConfig.layers must be >= 1, got {self.layers}")
        for name in ("angle_jitter", "length_jitter", "intensity_jitter", "far_scale", "far_intensity",
                     "veil_probability"):
            if getattr(self, name) < 0:
                raise ValueError(f"RainConfig.{name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 < self.far_scale <= 1.0 or not 0.0 < self.far_intensity <= 1.0:
            raise ValueError("RainConfig.far_scale and far_intensity must lie in (0, 1]")
        if self.length_jitter >= 1.0 or self.intensity_jitter > 1.0 or self.veil_probability > 1.0:
            raise ValueError("RainConfig: length_jitter must be < 1, intensity_jitter and veil_probability <= 1")


@dataclass(frozen=True)
class FrameRain:
    """The per-frame values drawn from a `RainConfig` (nearest-layer values, see there)."""

    density: float
    angle: float
    length: float
    width: float
    intensity: float
    blur: float
    depth_scales: tuple[float, ...] = field(default=(1.0,))
    depth_intensities: tuple[float, ...] = field(default=(1.0,))


def sample_frame_rain(rng: np.random.Generator, cfg: RainConfig) -> FrameRain:
    """Draw the per-frame rain parameters (density, angle, length, width, brightness, blur).

    With ``cfg.heavy_probability > 0`` a coin is drawn first (only then, so that configurations without
    heavy rain keep their random streams) and a heavy frame takes density, length, width and blur from
    the ``heavy_*`` ranges.
    """
    u = lambda r: float(rng.uniform(r[0], r[1]))  # noqa: E731 - one uniform draw per range
    n = cfg.layers
    heavy = cfg.heavy_probability > 0 and rng.random() < cfg.heavy_probability
    density_r, length_r, width_r, blur_r = (
        (cfg.heavy_density_range, cfg.heavy_length_range, cfg.heavy_width_range, cfg.heavy_blur_range) if heavy
        else (cfg.density_range, cfg.length_range, cfg.width_range, cfg.blur_range))
    # t = 0 for the nearest layer, 1 for the farthest; geometry and brightness shrink linearly with t.
    t = np.linspace(0.0, 1.0, n) if n > 1 else np.zeros(1)
    return FrameRain(
        density=u(density_r),
        angle=u(cfg.angle_range),
        length=u(length_r),
        width=u(width_r),
        intensity=u(cfg.intensity_range),
        blur=u(blur_r),
        depth_scales=tuple(float(x) for x in 1.0 - (1.0 - cfg.far_scale) * t),
        depth_intensities=tuple(float(x) for x in 1.0 - (1.0 - cfg.far_intensity) * t),
    )


def motion_blur_kernel(length: float, angle_deg: float) -> np.ndarray | None:
    """Normalised line kernel (k x k float32, k odd) that smears along ``angle_deg`` from vertical.

    Returns ``None`` for ``length <= 1`` (no blur).
    """
    if length <= 1.0:
        return None
    k = int(np.ceil(length)) | 1  # odd size so the kernel has a centre pixel
    c = (k - 1) / 2.0
    a = np.deg2rad(angle_deg)
    dx, dy = np.sin(a) * (length - 1) / 2.0, np.cos(a) * (length - 1) / 2.0
    kern = np.zeros((k, k), np.uint8)
    s = 1 << _LINE_SHIFT
    p0 = (int(round((c - dx) * s)), int(round((c - dy) * s)))
    p1 = (int(round((c + dx) * s)), int(round((c + dy) * s)))
    cv2.line(kern, p0, p1, 255, 1, cv2.LINE_AA, _LINE_SHIFT)
    kern = kern.astype(np.float32)
    total = float(kern.sum())
    if total <= 0.0:
        return None
    return kern / total


def _draw_layer(h: int, w: int, rng: np.random.Generator, fr: FrameRain, cfg: RainConfig,
                density: float, scale: float, brightness: float) -> np.ndarray:
    """One depth layer: anti-aliased streaks on an HxW canvas, motion-blurred; float32 in [0, 1]."""
    length = fr.length * scale
    margin = int(np.ceil(length))  # centres may lie outside so that streaks enter from the borders
    area = (h + 2 * margin) * (w + 2 * margin)
    count = int(rng.poisson(density * area / _DENSITY_AREA))
    canvas = np.zeros((h, w), np.uint8)  # cv2 anti-aliases 8-bit canvases only
    if count > 0:
        cx = rng.uniform(-margin, w + margin, count)
        cy = rng.uniform(-margin, h + margin, count)
        ang = np.deg2rad(fr.angle + rng.uniform(-cfg.angle_jitter, cfg.angle_jitter, count))
        half = 0.5 * length * rng.uniform(1.0 - cfg.length_jitter, 1.0 + cfg.length_jitter, count)
        widths = np.maximum(1, np.rint(fr.width * scale * rng.uniform(0.75, 1.25, count))).astype(int)
        values = np.rint(255.0 * fr.intensity * brightness
                         * rng.uniform(1.0 - cfg.intensity_jitter, 1.0, count)).astype(int)
        s = float(1 << _LINE_SHIFT)
        dx, dy = half * np.sin(ang), half * np.cos(ang)
        x0 = np.rint((cx - dx) * s).astype(int).tolist()
        y0 = np.rint((cy - dy) * s).astype(int).tolist()
        x1 = np.rint((cx + dx) * s).astype(int).tolist()
        y1 = np.rint((cy + dy) * s).astype(int).tolist()
        for a, b, c, d, wd, v in zip(x0, y0, x1, y1, widths.tolist(), values.tolist()):
            cv2.line(canvas, (a, b), (c, d), v, wd, cv2.LINE_AA, _LINE_SHIFT)
    layer = canvas.astype(np.float32) * np.float32(1.0 / 255.0)
    kern = motion_blur_kernel(fr.blur * scale, fr.angle)
    if kern is not None:
        layer = cv2.filter2D(layer, -1, kern, borderType=cv2.BORDER_REFLECT_101)
    return layer


def render_rain_layer(h: int, w: int, rng: np.random.Generator, cfg: RainConfig | None = None) -> np.ndarray:
    """Render one frame's rain layer R: float32 HxW in [0, 1] (0 = no rain).

    Per-frame parameters come from `sample_frame_rain`; the density is shared among the depth layers
    in proportion to 1 / scale, so far layers hold more (smaller) streaks.
    """
    cfg = cfg or RainConfig()
    fr = sample_frame_rain(rng, cfg)
    weights = 1.0 / np.asarray(fr.depth_scales)
    weights = weights / weights.sum()
    keep = np.ones((h, w), np.float32)  # prod_k (1 - R_k): screen blend of the layers
    for scale, bright, wgt in zip(fr.depth_scales, fr.depth_intensities, weights):
        keep *= 1.0 - _draw_layer(h, w, rng, fr, cfg, fr.density * float(wgt), scale, bright)
    return np.clip(1.0 - keep, 0.0, 1.0)


def change_illumination(image: np.ndarray, rng: np.random.Generator, cfg: RainConfig) -> np.ndarray:
    """Mild global illumination change: ``clip(gain * image + offset, 0, 1)``, HxWx3 float32."""
    gain = rng.uniform(*cfg.gain_range)
    offset = rng.uniform(*cfg.offset_range)
    return np.clip(image * np.float32(gain) + np.float32(offset), 0.0, 1.0).astype(np.float32)


def add_rain(clean: np.ndarray, rng: np.random.Generator, cfg: RainConfig | None = None, *,
             illumination: bool = True, veil: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Make a rainy frame from a clean background.

    Args:
        clean: HxWx3 float in [0, 1] (the background B).
        rng: source of all randomness (a seeded generator reproduces the frame).
        cfg: renderer settings.
        illumination: apply the per-frame gain/offset change (off for paired clean/rainy sets,
            where the clean image must be the exact background).
        veil: allow a veil (still subject to ``cfg.veil_probability``).

    Returns:
        ``(rainy, rain)``: rainy HxWx3 float32 in [0, 1] and the rain layer R, HxW float32 in [0, 1].
    """
    cfg = cfg or RainConfig()
    img = np.asarray(clean, dtype=np.float32)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"add_rain expects an HxWx3 image in [0, 1], got shape {img.shape}")
    h, w = img.shape[:2]
    # Draw order is fixed (illumination, veil, rain) so a seed gives the same frame every time.
    if illumination:
        img = change_illumination(img, rng, cfg)
    use_veil = veil and rng.uniform() < cfg.veil_probability
    strength = rng.uniform(*cfg.veil_range)
    airlight = rng.uniform(*cfg.airlight_range)
    if use_veil:
        t = np.float32(1.0 - strength)
        img = img * t + np.float32(airlight) * (np.float32(1.0) - t)
    rain = render_rain_layer(h, w, rng, cfg)
    # 1 - (1 - B)(1 - R) written as B + R (1 - B): the same value, but exactly B where R = 0 and
    # never below B in floating point (the rain layer only ever brightens)
    r = rain[..., None]
    rainy = img + r * (1.0 - img)
    return np.clip(rainy, 0.0, 1.0).astype(np.float32), rain

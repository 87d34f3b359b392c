"""Our synthetic rain renderer (NumPy + OpenCV), used to build time-lapse scenes from still photos.

`add_rain` makes a rainy frame from a clean background; `render_rain_layer` renders the rain layer alone;
`RainConfig` holds every setting (optional kinds of rain are off by default and then draw nothing from the random
stream); `rain_coverage` measures how much of a frame, or of every frame of a scene, is rainy. The model:
docs/RAIN.md, "Design notes".
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import cv2
import numpy as np

from mgid.errors import InputError

from .layer_rain import LayerRainConfig, LayerVeil, apply_veil, render_layer_rain
from .ranges import check_range

#: Sub-pixel precision (fractional bits) of streak end points given to ``cv2.line``.
_LINE_SHIFT = 4
#: Streak densities are counted per this many pixels (a 100x100 patch).
_DENSITY_AREA = 1.0e4


#: Name of the settings in validation messages.
_OWNER = "RainConfig"


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
    directions_range: tuple[int, int] = (1, 1)
    """Number of fall directions in one frame, drawn per frame (integers, inclusive): the frame's streaks are
    split evenly among them, the first keeping the frame's angle and each other one drawing its own from
    ``angle_range``."""
    long_probability: float = 0.0
    """Probability that a frame has long streaks: length and density from the ``long_*`` ranges instead."""
    long_length_range: tuple[float, float] = (80.0, 200.0)
    """Streak length in pixels (nearest layer) of a long-streak frame."""
    long_density_range: tuple[float, float] = (1.0, 5.0)
    """Streaks per 100x100 pixels of a long-streak frame (fewer: each covers more pixels)."""
    drizzle_probability: float = 0.0
    """Probability that a frame gets a drizzle layer on top of its streaks."""
    drizzle_density_range: tuple[float, float] = (80.0, 250.0)
    """Drizzle streaks per 100x100 pixels."""
    drizzle_length_range: tuple[float, float] = (1.5, 5.0)
    """Drizzle streak length in pixels (one width, no motion blur)."""
    drizzle_intensity_range: tuple[float, float] = (0.15, 0.45)
    """Drizzle brightness in [0, 1]."""
    near_probability: float = 0.0
    """Probability that a frame gets near-camera streaks on top of its others."""
    near_density_range: tuple[float, float] = (0.3, 1.5)
    """Near-camera streaks per 100x100 pixels."""
    near_length_range: tuple[float, float] = (60.0, 200.0)
    """Near-camera streak length in pixels."""
    near_width_range: tuple[float, float] = (4.0, 12.0)
    """Near-camera streak width in pixels, before the Gaussian softening."""
    near_softness_range: tuple[float, float] = (1.5, 4.0)
    """Standard deviation in pixels of the Gaussian blur that softens near-camera streaks (out of focus)."""
    near_intensity_range: tuple[float, float] = (0.1, 0.35)
    """Near-camera streak brightness in [0, 1] (faint: they are out of focus)."""
    layer_probability: float = 0.0
    """Probability that a frame's rain is the Photoshop-style streak layer of the benchmarks' training sets
    (`mgid.data.layer_rain`, settings in ``layer``) instead of the streaks above (the two are never stacked, so
    each bounds the frame's coverage on its own); such a frame also gets the layer's own veil."""
    layer: LayerRainConfig = field(default_factory=LayerRainConfig)
    """Settings of the layer rain, used in the ``layer_probability`` share of the frames."""

    def __post_init__(self) -> None:
        check_range(_OWNER, "density_range", self.density_range, lo=0.0)
        check_range(_OWNER, "angle_range", self.angle_range, lo=-30.0, hi=30.0)
        check_range(_OWNER, "length_range", self.length_range, lo=1.0)
        check_range(_OWNER, "width_range", self.width_range, lo=1.0)
        check_range(_OWNER, "intensity_range", self.intensity_range, lo=0.0, hi=1.0)
        check_range(_OWNER, "blur_range", self.blur_range, lo=0.0)
        check_range(_OWNER, "veil_range", self.veil_range, lo=0.0, hi=1.0)
        check_range(_OWNER, "airlight_range", self.airlight_range, lo=0.0, hi=1.0)
        check_range(_OWNER, "gain_range", self.gain_range, lo=0.0)
        check_range(_OWNER, "offset_range", self.offset_range, lo=-1.0, hi=1.0)
        check_range(_OWNER, "heavy_density_range", self.heavy_density_range, lo=0.0)
        check_range(_OWNER, "heavy_length_range", self.heavy_length_range, lo=1.0)
        check_range(_OWNER, "heavy_width_range", self.heavy_width_range, lo=1.0)
        check_range(_OWNER, "heavy_blur_range", self.heavy_blur_range, lo=0.0)
        check_range(_OWNER, "long_length_range", self.long_length_range, lo=1.0)
        check_range(_OWNER, "long_density_range", self.long_density_range, lo=0.0)
        check_range(_OWNER, "drizzle_density_range", self.drizzle_density_range, lo=0.0)
        check_range(_OWNER, "drizzle_length_range", self.drizzle_length_range, lo=1.0)
        check_range(_OWNER, "drizzle_intensity_range", self.drizzle_intensity_range, lo=0.0, hi=1.0)
        check_range(_OWNER, "near_density_range", self.near_density_range, lo=0.0)
        check_range(_OWNER, "near_length_range", self.near_length_range, lo=1.0)
        check_range(_OWNER, "near_width_range", self.near_width_range, lo=1.0)
        check_range(_OWNER, "near_softness_range", self.near_softness_range, lo=0.0)
        check_range(_OWNER, "near_intensity_range", self.near_intensity_range, lo=0.0, hi=1.0)
        for name in ("heavy_probability", "long_probability", "drizzle_probability", "near_probability",
                     "layer_probability"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise InputError(f"RainConfig.{name} must lie in [0, 1], got {getattr(self, name)}")
        lo_dir, hi_dir = self.directions_range
        if int(lo_dir) != lo_dir or int(hi_dir) != hi_dir or not 1 <= lo_dir <= hi_dir:
            raise InputError(f"RainConfig.directions_range must be two whole numbers 1 <= low <= high, "
                             f"got {self.directions_range}")
        if self.layers < 1:
            raise InputError(f"RainConfig.layers must be >= 1, got {self.layers}")
        for name in ("angle_jitter", "length_jitter", "intensity_jitter", "far_scale", "far_intensity",
                     "veil_probability"):
            if getattr(self, name) < 0:
                raise InputError(f"RainConfig.{name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 < self.far_scale <= 1.0 or not 0.0 < self.far_intensity <= 1.0:
            raise InputError("RainConfig.far_scale and far_intensity must lie in (0, 1]")
        if self.length_jitter >= 1.0 or self.intensity_jitter > 1.0 or self.veil_probability > 1.0:
            raise InputError("RainConfig: length_jitter must be < 1, intensity_jitter and veil_probability <= 1")
        if not isinstance(self.layer, LayerRainConfig):
            raise InputError(f"RainConfig.layer must be a LayerRainConfig, got {type(self.layer).__name__}")


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
    the ``heavy_*`` ranges. Then, likewise only with ``cfg.long_probability > 0``, a second coin makes it
    a long-streak frame, whose length and density come from the ``long_*`` ranges.

    Args:
        rng: source of every draw.
        cfg: renderer settings.

    Returns:
        The frame's `FrameRain` (nearest-layer values and per-depth-layer scales).
    """
    u = lambda r: float(rng.uniform(r[0], r[1]))  # noqa: E731 - one uniform draw per range
    n = cfg.layers
    heavy = cfg.heavy_probability > 0 and rng.random() < cfg.heavy_probability
    long = cfg.long_probability > 0 and rng.random() < cfg.long_probability
    density_r, length_r, width_r, blur_r = (
        (cfg.heavy_density_range, cfg.heavy_length_range, cfg.heavy_width_range, cfg.heavy_blur_range) if heavy
        else (cfg.density_range, cfg.length_range, cfg.width_range, cfg.blur_range))
    if long:
        density_r, length_r = cfg.long_density_range, cfg.long_length_range
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
    """Normalised line kernel that smears along a direction.

    Args:
        length: blur length in pixels.
        angle_deg: direction in degrees from vertical, positive leaning right going down.

    Returns:
        A (k, k) float32 array, k odd, summing to 1; ``None`` for ``length <= 1`` (no blur).
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
                density: float, scale: float, brightness: float, softness: float = 0.0) -> np.ndarray:
    """One depth layer: anti-aliased streaks on an HxW canvas, motion-blurred, then (``softness`` > 0)
    Gaussian-blurred with that standard deviation in pixels; float32 in [0, 1]."""
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
    if softness > 0.0:
        layer = cv2.GaussianBlur(layer, (0, 0), softness, borderType=cv2.BORDER_REFLECT_101)
    return layer


def _depth_layers(h: int, w: int, rng: np.random.Generator, fr: FrameRain, cfg: RainConfig) -> np.ndarray:
    """``prod_k (1 - R_k)`` over the depth layers of ``fr`` (HxW float32): the density is shared among
    the layers in proportion to 1 / scale, so far layers hold more (smaller) streaks."""
    weights = 1.0 / np.asarray(fr.depth_scales)
    weights = weights / weights.sum()
    keep = np.ones((h, w), np.float32)
    for scale, bright, wgt in zip(fr.depth_scales, fr.depth_intensities, weights):
        keep *= 1.0 - _draw_layer(h, w, rng, fr, cfg, fr.density * float(wgt), scale, bright)
    return keep


def _extra_layer(h: int, w: int, rng: np.random.Generator, cfg: RainConfig, fr: FrameRain, kind: str) -> np.ndarray:
    """One drizzle or near-camera layer (HxW float32 in [0, 1]) falling along ``fr``'s angle."""
    u = lambda r: float(rng.uniform(r[0], r[1]))  # noqa: E731 - one uniform draw per range
    if kind == "drizzle":
        extra = FrameRain(density=u(cfg.drizzle_density_range), angle=fr.angle, length=u(cfg.drizzle_length_range),
                          width=1.0, intensity=u(cfg.drizzle_intensity_range), blur=0.0)
        return _draw_layer(h, w, rng, extra, cfg, extra.density, 1.0, 1.0)
    extra = FrameRain(density=u(cfg.near_density_range), angle=fr.angle, length=u(cfg.near_length_range),
                      width=u(cfg.near_width_range), intensity=u(cfg.near_intensity_range), blur=0.0)
    return _draw_layer(h, w, rng, extra, cfg, extra.density, 1.0, 1.0, softness=u(cfg.near_softness_range))


def render_rain_layer(h: int, w: int, rng: np.random.Generator, cfg: RainConfig | None = None) -> np.ndarray:
    """Render one frame's rain layer R (0 = no rain).

    Per-frame parameters come from `sample_frame_rain`. With ``cfg.directions_range`` above 1 the
    streaks are split among that many fall directions; drizzle and near-camera layers are added with
    their probabilities. All layers are combined by screen blending, ``R = 1 - prod (1 - R_k)``.
    With ``cfg.layer_probability > 0`` a coin is drawn first (only then) and a frame it picks is the
    layer rain of `mgid.data.layer_rain` instead (its veil needs an image: see `add_rain`).

    Args:
        h: frame height in pixels.
        w: frame width in pixels.
        rng: source of every draw (a seeded generator reproduces the frame).
        cfg: renderer settings (default ``RainConfig()``).

    Returns:
        R, (H, W) float32 in [0, 1].
    """
    return _render_rain(h, w, rng, cfg or RainConfig())[0]


def _render_rain(h: int, w: int, rng: np.random.Generator, cfg: RainConfig) -> tuple[np.ndarray, LayerVeil | None]:
    """`render_rain_layer`'s rain layer and, for a layer-rain frame, its veil (None for the streaks)."""
    if cfg.layer_probability > 0 and rng.random() < cfg.layer_probability:
        return render_layer_rain(h, w, rng, cfg.layer)
    fr = sample_frame_rain(rng, cfg)
    lo_dir, hi_dir = cfg.directions_range
    directions = 1 if hi_dir == 1 else int(rng.integers(lo_dir, hi_dir + 1))
    if directions == 1:
        keep = _depth_layers(h, w, rng, fr, cfg)
    else:
        keep = np.ones((h, w), np.float32)
        share = dataclasses.replace(fr, density=fr.density / directions)
        for i in range(directions):
            angle = fr.angle if i == 0 else float(rng.uniform(*cfg.angle_range))
            keep *= _depth_layers(h, w, rng, dataclasses.replace(share, angle=angle), cfg)
    for kind, probability in (("drizzle", cfg.drizzle_probability), ("near", cfg.near_probability)):
        if probability > 0 and rng.random() < probability:
            keep *= 1.0 - _extra_layer(h, w, rng, cfg, fr, kind)
    return np.clip(1.0 - keep, 0.0, 1.0), None


def rain_coverage(rain: np.ndarray, threshold: float = 0.05) -> float:
    """Share of pixels whose rain exceeds a threshold.

    For N frames of one scene, ``rain_coverage(rain.min(axis=0))`` is the share of pixels rainy in *every*
    frame: the pixels the time-lapse objective cannot see clean in any of them.

    Args:
        rain: rain layer(s), (H, W) or (N, H, W), values in [0, 1].
        threshold: rain above it counts (default 0.05: about 13 grey levels over a black background).

    Returns:
        The share in [0, 1].
    """
    return float((np.asarray(rain) > threshold).mean())


def change_illumination(image: np.ndarray, rng: np.random.Generator, cfg: RainConfig) -> np.ndarray:
    """Mild global illumination change: ``clip(gain * image + offset, 0, 1)``.

    Args:
        image: (H, W, 3) float32 in [0, 1].
        rng: source of the gain and offset draws.
        cfg: renderer settings (``gain_range``, ``offset_range``).

    Returns:
        The changed image, (H, W, 3) float32 in [0, 1].
    """
    gain = rng.uniform(*cfg.gain_range)
    offset = rng.uniform(*cfg.offset_range)
    return np.clip(image * np.float32(gain) + np.float32(offset), 0.0, 1.0).astype(np.float32)


def add_rain(clean: np.ndarray, rng: np.random.Generator, cfg: RainConfig | None = None, *,
             illumination: bool = True, veil: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Make a rainy frame from a clean background.

    Args:
        clean: (H, W, 3) float in [0, 1] (the background B).
        rng: source of all randomness (a seeded generator reproduces the frame).
        cfg: renderer settings (default ``RainConfig()``).
        illumination: apply the per-frame gain/offset change (off for paired clean/rainy sets,
            where the clean image must be the exact background).
        veil: allow a veil (still subject to ``cfg.veil_probability``, and for a layer-rain frame to
            ``cfg.layer.veil_probability``; its values are drawn either way, so the stream is the same).

    Returns:
        ``(rainy, rain)``: rainy (H, W, 3) float32 in [0, 1] and the rain layer R, (H, W) float32 in [0, 1].

    Raises:
        InputError: ``clean`` is not (H, W, 3) (a ``ValueError``).
    """
    cfg = cfg or RainConfig()
    img = np.asarray(clean, dtype=np.float32)
    if img.ndim != 3 or img.shape[2] != 3:
        raise InputError(f"add_rain expects an HxWx3 image in [0, 1], got shape {img.shape}")
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
    rain, layer_veil = _render_rain(h, w, rng, cfg)
    if veil and layer_veil is not None:
        # the layer kind's own accumulation, under its streaks (they are nearer than the haze)
        img = apply_veil(img, layer_veil)
    # 1 - (1 - B)(1 - R) written as B + R (1 - B): the same value, but exactly B where R = 0 and
    # never below B in floating point (the rain layer only ever brightens)
    r = rain[..., None]
    rainy = img + r * (1.0 - img)
    return np.clip(rainy, 0.0, 1.0).astype(np.float32), rain

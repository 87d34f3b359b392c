"""Paper-convention PSNR/SSIM (`mgid.eval.metrics`) against hand-computed values and known properties."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter
from skimage.metrics import structural_similarity

from mgid.eval.metrics import psnr, rgb_to_y, score, ssim


def _solid(rgb: tuple[int, int, int], h: int = 16, w: int = 16) -> np.ndarray:
    return np.broadcast_to(np.array(rgb, np.uint8), (h, w, 3)).copy()


def _pair(seed: int = 0, shape=(32, 40, 3)) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 256, shape, dtype=np.uint8)
    noise = rng.integers(-20, 21, shape)
    return a, np.clip(a.astype(int) + noise, 0, 255).astype(np.uint8)


def test_y_of_pure_colours_is_bt601():
    # Y = 16 + (65.481 R + 128.553 G + 24.966 B) / 255, rounded (MATLAB rgb2ycbcr on uint8)
    cases = {(0, 0, 0): 16, (255, 255, 255): 235, (255, 0, 0): 81, (0, 255, 0): 145, (0, 0, 255): 41,
             (128, 128, 128): 126}
    for colour, expected in cases.items():
        r, g, b = colour
        formula = 16 + (65.481 * r + 128.553 * g + 24.966 * b) / 255
        assert round(formula) == expected
        y = rgb_to_y(_solid(colour))
        assert y.shape == (16, 16) and np.all(y == expected)
        assert np.allclose(rgb_to_y(_solid(colour), rounded=False), formula)


def test_psnr_on_y_by_hand():
    black, white = _solid((0, 0, 0)), _solid((255, 255, 255))
    assert psnr(black, white) == pytest.approx(20 * math.log10(255 / 219))  # Y 16 vs 235 everywhere
    # one pixel of 16x16 turned red: Y differs by 81 - 16 = 65 there, MSE = 65^2 / 256
    red_dot = black.copy()
    red_dot[3, 5] = (255, 0, 0)
    assert psnr(red_dot, black) == pytest.approx(10 * math.log10(255 ** 2 / (65 ** 2 / 256)))
    # a change that leaves the rounded Y unchanged does not count (Y is compared, not RGB)
    tweak = black.copy()
    tweak[0, 0] = (0, 0, 1)  # Y 16.098 -> 16
    assert psnr(tweak, black) == math.inf


def test_psnr_on_rgb_by_hand():
    a, b = _pair(1)
    mse = np.mean((a.astype(float) - b.astype(float)) ** 2)
    assert psnr(a, b, channel="rgb") == pytest.approx(10 * math.log10(255 ** 2 / mse))


def test_identical_images():
    a, _ = _pair(2)
    assert psnr(a, a) == math.inf and psnr(a, a, "rgb") == math.inf
    assert ssim(a, a) == pytest.approx(1.0) and ssim(a, a, "rgb") == pytest.approx(1.0)


def _wang_ssim(x: np.ndarray, y: np.ndarray) -> float:
    """SSIM by the formula: Gaussian window sigma 1.5 (truncated to 11x11), K1 0.01, K2 0.03, L 255,
    population (biased) statistics, mean over the pixels whose window fits (skimage crops 5 px)."""
    f = lambda z: gaussian_filter(z, 1.5, truncate=3.5, mode="reflect")  # noqa: E731
    mx, my = f(x), f(y)
    vx, vy, cxy = f(x * x) - mx * mx, f(y * y) - my * my, f(x * y) - mx * my
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))
    return float(s[5:-5, 5:-5].mean())


def test_ssim_matches_the_formula_and_skimage():
    a, b = _pair(3)
    ya, yb = rgb_to_y(a), rgb_to_y(b)
    expected = structural_similarity(ya, yb, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                     data_range=255, K1=0.01, K2=0.03, win_size=11)
    assert ssim(a, b) == pytest.approx(expected, abs=1e-12)
    assert ssim(a, b) == pytest.approx(_wang_ssim(ya, yb), abs=1e-9)
    per_channel = [_wang_ssim(a[..., c].astype(float), b[..., c].astype(float)) for c in range(3)]
    assert ssim(a, b, "rgb") == pytest.approx(np.mean(per_channel), abs=1e-9)


def test_properties():
    a, b = _pair(4)
    assert psnr(a, b) == pytest.approx(psnr(b, a)) and ssim(a, b) == pytest.approx(ssim(b, a))
    _, worse = _pair(4)
    worse = np.clip(b.astype(int) + np.random.default_rng(9).integers(-40, 41, b.shape), 0, 255).astype(np.uint8)
    assert psnr(a, worse) < psnr(a, b) and ssim(a, worse) < ssim(a, b)
    assert 0 < ssim(a, b) < 1
    assert score(a, b) == (psnr(a, b), ssim(a, b))
    assert score(a, b, "rgb") == (psnr(a, b, "rgb"), ssim(a, b, "rgb"))


def test_errors():
    a, b = _pair(5)
    with pytest.raises(ValueError, match="uint8"):
        psnr(a.astype(np.float32), b)
    with pytest.raises(ValueError, match="differ in size"):
        psnr(a, b[:-1])
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(a[:8, :8], b[:8, :8])
    with pytest.raises(ValueError, match="channel"):
        psnr(a, b, channel="lab")


def test_metrics_paper_convention():
    a = np.zeros((16, 16, 3), np.uint8)
    assert psnr(a, a) == math.inf and ssim(a, a) == pytest.approx(1.0)
    b = np.full_like(a, 10)
    # Y = 16 + 219 * v / 255, rounded: 16 vs 24.59 -> 25, so the error is 9 everywhere
    assert psnr(a, b) == pytest.approx(10 * math.log10(255 ** 2 / 81))
    with pytest.raises(ValueError, match="uint8"):
        psnr(a.astype(np.float32), b)

"""SSIM against scikit-image, and the MGID objective's terms, weights and modes on hand-made inputs."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from mgid import ops
from mgid.losses import SSIM, LossWeights, MGIDLoss, SSIMConfig, gaussian_window, ssim
from mgid.models import MGIDNet, MGIDOutput

L1_NAMES = ("l1_bg", "l1_bg1_i2", "l1_i1_bg2", "l1_recon1", "l1_recon2")
WEIGHT_NAMES = L1_NAMES + ("compactness", "separateness", "bsw", "ssim")
ALL_NAMES = WEIGHT_NAMES + ("total",)


def rand(*shape, seed=0, dtype=torch.float32):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype) * 2 - 1


# --- SSIM ---------------------------------------------------------------------------------------

def skimage_ssim(x: torch.Tensor, y: torch.Tensor, data_range: float) -> float:
    """Mean over the batch of skimage's channel-averaged SSIM of (B, C, H, W) images."""
    return float(np.mean([
        structural_similarity(a.numpy(), b.numpy(), channel_axis=0, gaussian_weights=True, sigma=1.5,
                              use_sample_covariance=False, data_range=data_range)
        for a, b in zip(x, y)
    ]))


@pytest.mark.parametrize("noise", [0.05, 0.3, 2.0])
def test_ssim_matches_skimage(noise):
    x = rand(2, 3, 24, 20, seed=1, dtype=torch.float64)
    y = (x + noise * rand(2, 3, 24, 20, seed=2, dtype=torch.float64)).clamp(-1, 1)
    assert ssim(x, y).item() == pytest.approx(skimage_ssim(x, y, 2.0), abs=1e-6)
    # float32 and a different data range
    cfg = SSIMConfig(data_range=1.0)
    assert ssim(x.float(), y.float(), cfg).item() == pytest.approx(skimage_ssim(x, y, 1.0), abs=1e-4)


def test_ssim_identity_and_symmetry():
    x, y = rand(2, 3, 16, 16, seed=3), rand(2, 3, 16, 16, seed=4)
    assert ssim(x, x).item() == pytest.approx(1.0, abs=1e-6)
    assert ssim(x, x, SSIMConfig(border="same")).item() == pytest.approx(1.0, abs=1e-6)
    assert ssim(x, y).item() == pytest.approx(ssim(y, x).item(), abs=1e-7)
    assert ssim(x, y).item() < 0.5
    per_image = ssim(x, y, reduction="none")
    assert per_image.shape == (2,) and torch.allclose(per_image.mean(), ssim(x, y))
    assert torch.allclose(SSIM()(x, y), ssim(x, y))


def test_ssim_differentiable():
    x = rand(1, 3, 16, 16, seed=5, dtype=torch.float64).requires_grad_()
    y = rand(1, 3, 16, 16, seed=6, dtype=torch.float64).requires_grad_()
    small = (x[:, :1, :11, :12].detach().requires_grad_(), y[:, :1, :11, :12].detach().requires_grad_())
    torch.autograd.gradcheck(lambda a, b: ssim(a, b), small)
    (-ssim(x, y)).backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def hand_ssim(x: np.ndarray, y: np.ndarray, c1: float, c2: float) -> float:
    """SSIM of (C, H, W) float64 arrays written out: zero-padded by 5, an 11x11 Gaussian (sigma 1.5) at every
    pixel, the map averaged over channels and pixels."""
    taps = np.exp(-0.5 * ((np.arange(11) - 5) / 1.5) ** 2)
    window = np.outer(taps, taps) / taps.sum() ** 2
    values = []
    for a, b in zip(x, y):
        pa, pb = np.pad(a, 5), np.pad(b, 5)
        for i in range(a.shape[0]):
            for j in range(a.shape[1]):
                wa, wb = pa[i:i + 11, j:j + 11], pb[i:i + 11, j:j + 11]
                mx, my = (window * wa).sum(), (window * wb).sum()
                vx, vy = (window * wa * wa).sum() - mx * mx, (window * wb * wb).sum() - my * my
                cov = (window * wa * wb).sum() - mx * my
                values.append((2 * mx * my + c1) * (2 * cov + c2) / ((mx * mx + my * my + c1) * (vx + vy + c2)))
    return float(np.mean(values))


def test_official_ssim_constants_and_zero_padding_by_hand():
    """The public code's SSIM (C1 = 0.01^2, C2 = 0.03^2 on [-1, 1] data, zero-padded borders) is data range 1 and
    border "same", for the function and for the loss's setting; the default's constants are 4x larger."""
    x = rand(1, 2, 4, 6, seed=11, dtype=torch.float64)
    y = (x + 0.4 * rand(1, 2, 4, 6, seed=12, dtype=torch.float64)).clamp(-1, 1)
    official = SSIMConfig(data_range=1.0, border="same")
    expected = hand_ssim(x[0].numpy(), y[0].numpy(), c1=1e-4, c2=9e-4)
    assert ssim(x, y, official).item() == pytest.approx(expected, abs=1e-12)
    four_times = hand_ssim(x[0].numpy(), y[0].numpy(), c1=4e-4, c2=36e-4)
    assert ssim(x, y, SSIMConfig(border="same")).item() == pytest.approx(four_times, abs=1e-12)
    assert abs(expected - four_times) > 1e-3  # the inputs tell the two apart

    weights = LossWeights(ssim_data_range=1.0, ssim_border="same")
    assert MGIDLoss(weights).ssim_config == official
    assert MGIDLoss().ssim_config == SSIMConfig()  # the default: data range 2, valid borders, as before
    i1, i2, o1, o2 = pair(same=False, zero_rain=False)
    _, terms = MGIDLoss(weights)(o1, o2, i1, i2)
    b1, b2 = o1.background.double().numpy(), o2.background.double().numpy()
    by_hand = np.mean([hand_ssim(a, b, c1=1e-4, c2=9e-4) for a, b in zip(b1, b2)])
    assert terms["ssim"].item() == pytest.approx(by_hand, abs=1e-5)  # float32 in the loss
    with pytest.raises(ValueError, match="ssim_border must be one of valid, same"):
        LossWeights(ssim_border="zeros")


def test_gaussian_window_and_errors():
    g = gaussian_window(11, 1.5, torch.float64)
    assert g.shape == (11,) and g.sum().item() == pytest.approx(1.0) and g.argmax().item() == 5
    with pytest.raises(ValueError, match="H, W >= 11"):
        ssim(torch.zeros(1, 1, 8, 16), torch.zeros(1, 1, 8, 16))
    with pytest.raises(ValueError, match="one shape"):
        ssim(torch.zeros(1, 1, 16, 16), torch.zeros(1, 2, 16, 16))
    with pytest.raises(ValueError, match="odd"):
        SSIMConfig(window_size=10)


# --- MGID loss ----------------------------------------------------------------------------------

def make_output(background, rain, query, compactness=0.0, separateness=0.0) -> MGIDOutput:
    return MGIDOutput(rain=rain, background=background, query=query,
                      compactness=torch.tensor(float(compactness)), separateness=torch.tensor(float(separateness)))


def pair(seed=0, same=True, zero_rain=True):
    i1 = rand(2, 3, 16, 16, seed=seed)
    i2 = i1.clone() if same else rand(2, 3, 16, 16, seed=seed + 1)
    r1 = torch.zeros_like(i1) if zero_rain else 0.1 * rand(2, 3, 16, 16, seed=seed + 2)
    r2 = torch.zeros_like(i2) if zero_rain else 0.1 * rand(2, 3, 16, 16, seed=seed + 3)
    q1, q2 = torch.randn(2, 8, 4, 4, generator=torch.Generator().manual_seed(seed + 4)).unbind(0)
    q1, q2 = q1[None].repeat(2, 1, 1, 1), q2[None].repeat(2, 1, 1, 1)
    return i1, i2, make_output(i1 - r1, r1, q1, 1.0, 0.5), make_output(i2 - r2, r2, q2, 3.0, 1.5)


def test_terms_names_and_detached():
    i1, i2, o1, o2 = pair(same=False, zero_rain=False)
    total, terms = MGIDLoss()(o1, o2, i1, i2)
    assert set(terms) == set(ALL_NAMES)
    assert all(t.dim() == 0 and not t.requires_grad for t in terms.values())
    assert torch.equal(terms["total"], total.detach())


def test_identical_frames_zero_rain():
    i1, i2, o1, o2 = pair(same=True, zero_rain=True)
    total, terms = MGIDLoss()(o1, o2, i1, i2)
    for name in L1_NAMES:
        assert terms[name].item() == 0.0
    assert terms["ssim"].item() == pytest.approx(1.0, abs=1e-6)


def test_l1_terms_values():
    i1, i2, o1, o2 = pair(same=False, zero_rain=False)
    _, t = MGIDLoss()(o1, o2, i1, i2)
    b1, b2, r1, r2 = o1.background, o2.background, o1.rain, o2.rain
    assert t["l1_bg"].item() == pytest.approx((b1 - b2).abs().mean().item())
    assert t["l1_bg1_i2"].item() == pytest.approx((b1 - i2).abs().mean().item())
    assert t["l1_i1_bg2"].item() == pytest.approx((i1 - b2).abs().mean().item())
    assert t["l1_recon1"].item() == pytest.approx((b2 + r1 - i1).abs().mean().item())
    assert t["l1_recon2"].item() == pytest.approx((b1 + r2 - i2).abs().mean().item())
    assert t["bsw"].item() == pytest.approx(ops.bsw_loss(o1.query, o2.query, k=50).item())


def test_default_weights_total():
    i1, i2, o1, o2 = pair(same=False, zero_rain=False)
    total, t = MGIDLoss()(o1, o2, i1, i2)
    expected = (sum(t[n] for n in L1_NAMES) + 0.01 * t["compactness"] + 0.01 * t["bsw"] - 0.5 * t["ssim"])
    assert total.item() == pytest.approx(expected.item(), rel=1e-6)
    assert t["compactness"].item() == pytest.approx(2.0)  # mean of 1 and 3
    assert t["separateness"].item() == pytest.approx(1.0)  # reported, weight 0


@pytest.mark.parametrize("name", WEIGHT_NAMES)
def test_each_weight_applied(name):
    i1, i2, o1, o2 = pair(same=False, zero_rain=False)
    zero = {n: 0.0 for n in WEIGHT_NAMES}
    weights = LossWeights(**{**zero, name: 2.5})
    total, t = MGIDLoss(weights)(o1, o2, i1, i2)
    sign = -1.0 if name == "ssim" else 1.0
    assert total.item() == pytest.approx(sign * 2.5 * t[name].item(), rel=1e-6)


def test_compactness_mode():
    i1, i2, o1, o2 = pair()
    _, mean_terms = MGIDLoss(LossWeights(compactness_mode="mean"))(o1, o2, i1, i2)
    _, last_terms = MGIDLoss(LossWeights(compactness_mode="last"))(o1, o2, i1, i2)
    assert mean_terms["compactness"].item() == pytest.approx(2.0)
    assert last_terms["compactness"].item() == pytest.approx(3.0)
    assert mean_terms["separateness"].item() == pytest.approx(1.0)
    assert last_terms["separateness"].item() == pytest.approx(1.5)
    with pytest.raises(ValueError, match="compactness_mode"):
        LossWeights(compactness_mode="first")


def test_missing_memory_losses():
    i1, i2, o1, o2 = pair()
    o1 = dataclasses.replace(o1, compactness=None, separateness=None)
    with pytest.raises(ValueError, match="compactness"):
        MGIDLoss()(o1, o2, i1, i2)
    # "last" needs only frame 2's; an unweighted missing term is reported as NaN.
    _, t = MGIDLoss(LossWeights(compactness_mode="last"))(o1, o2, i1, i2)
    assert t["compactness"].item() == pytest.approx(3.0)
    _, t = MGIDLoss(LossWeights(compactness=0.0))(o1, o2, i1, i2)
    assert torch.isnan(t["compactness"]) and torch.isfinite(t["total"])


def test_loss_backward_through_model():
    torch.manual_seed(0)
    net = MGIDNet()
    i1, i2 = rand(1, 3, 16, 16, seed=7), rand(1, 3, 16, 16, seed=8)
    o1, o2 = net(i1), net(i2)
    total, terms = MGIDLoss()(o1, o2, i1, i2)
    assert torch.isfinite(total)
    total.backward()
    grad = net.encoder.stage1[0][0].weight.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0

"""`mgid.models.inference_graph`: the frozen network computes what `MGIDNet.forward` computes, to rounding."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from mgid.derain.derainer import load_model
from mgid.models import MGIDNet, ModelConfig, NormStats
from mgid.models.inference_graph import InferenceGraph, _fold, fused_cpu_convolutions
from mgid.precision import autocast, nnpack_available
from tests.derain.tiny_network import TINY, calibrated, smooth_image

#: fp32 graph vs fp32 network, in units of the rain layer ([-1, 1]): folding BN and splitting the concatenations
#: reorder float32 sums only (measured up to 1.2e-5 on the tiny networks; a grey level is 7.8e-3).
FP32_ATOL = 5e-5
#: bf16 graph vs fp32 network on the shipped weights: under half a grey level (1/127.5 per level).
BF16_ATOL = 0.5 / 127.5

CONFIGS = {
    "default": TINY,
    "resize_conv+skip_first": ModelConfig(channels=8, memory_items=4, upsample="resize_conv",
                                          concat_order="skip_first"),
    "single_tanh+replicate": ModelConfig(channels=8, memory_items=4, double_tanh=False, pad_mode="replicate"),
}


def _net(config: ModelConfig, seed: int = 0) -> MGIDNet:
    torch.manual_seed(seed)
    return calibrated(MGIDNet(config))


def _eager_rain(net: MGIDNet, image: torch.Tensor, stats: NormStats | None = None) -> torch.Tensor:
    with torch.no_grad():
        return net(image, update_memory=False, memory_losses=False, norm_stats=stats).rain


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("channels_last", [True, False])
def test_fp32_graph_equals_the_network(name, channels_last):
    net = _net(CONFIGS[name])
    image = torch.cat([smooth_image(37, 50, seed=1), smooth_image(37, 50, seed=2)])  # odd sizes: padded inside
    graph = InferenceGraph(net, "fp32", channels_last)
    assert graph.precision == "fp32" and graph.dtype == torch.float32
    rain = graph.rain(image)
    assert rain.shape == image.shape and rain.dtype == torch.float32
    torch.testing.assert_close(rain, _eager_rain(net, image), rtol=0, atol=FP32_ATOL)
    torch.testing.assert_close(graph.pre_norm_query(image), net.pre_norm_query(image), rtol=0, atol=FP32_ATOL)
    stats = NormStats(torch.randn(2, 8, 1, 1) * 0.1, torch.rand(2, 8, 1, 1) + 0.5)  # a tile's given statistics
    assert (_eager_rain(net, image, stats) - _eager_rain(net, image)).abs().max() > 1e-3  # they matter
    torch.testing.assert_close(graph.rain(image, stats), _eager_rain(net, image, stats), rtol=0, atol=FP32_ATOL)


def test_unfused_path_equals_the_fused_one():
    """Where oneDNN's fused ops are missing (or off the CPU) the same folded weights run through F.conv2d."""
    net = _net(TINY)
    image = smooth_image(40, 48)
    fused = InferenceGraph(net, "fp32")
    plain = InferenceGraph(net, "fp32")
    plain.fused = False
    torch.testing.assert_close(plain.rain(image), _eager_rain(net, image), rtol=0, atol=FP32_ATOL)
    if fused_cpu_convolutions():
        assert fused.fused
        torch.testing.assert_close(fused.rain(image), plain.rain(image), rtol=0, atol=FP32_ATOL)
    bf16 = InferenceGraph(net, "bf16")  # oneDNN's bf16 convolutions need AVX512 (or AVX-NE-CONVERT): F.conv2d else
    assert bf16.fused is fused_cpu_convolutions(torch.bfloat16)
    assert torch.isfinite(bf16.rain(image)).all()
    nchw = InferenceGraph(net, "fp32", channels_last=False)  # NNPACK's Winograd convolutions where torch has them
    assert nchw.nnpack is nnpack_available() and not InferenceGraph(net, "bf16", channels_last=False).nnpack
    onednn = InferenceGraph(net, "fp32", channels_last=False)
    onednn.nnpack = False
    torch.testing.assert_close(nchw.rain(image), onednn.rain(image), rtol=0, atol=FP32_ATOL)
    torch.testing.assert_close(nchw.pre_norm_query(image), onednn.pre_norm_query(image), rtol=0, atol=FP32_ATOL)


def test_bf16_graph_on_the_shipped_weights_within_half_a_grey_level():
    """The arithmetic the CPU default runs where bf16 is native: weights and activations in bf16, the norm, memory
    read and output in fp32. Compared with fp32, and no farther from it than the autocast it replaced."""
    net = load_model(device="cpu", precision="fp32").net
    image = smooth_image(64, 80, seed=3)
    exact = _eager_rain(net, image)
    graph = InferenceGraph(net, "bf16")
    assert graph.dtype == torch.bfloat16 and graph.rain(image).dtype == torch.float32
    error = (graph.rain(image) - exact).abs().max().item()
    with autocast("cpu", "bf16"):
        autocast_error = (_eager_rain(net, image).float() - exact).abs().max().item()
    assert error < BF16_ATOL
    assert error < 2 * autocast_error + 1e-3


def test_graph_holds_copies_of_the_weights():
    net = _net(TINY)
    image = smooth_image(32, 32)
    graph = InferenceGraph(net, "fp32")
    before = graph.rain(image)
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(0.5)
    assert torch.equal(graph.rain(image), before)
    assert not torch.allclose(InferenceGraph(net, "fp32").rain(image), before)


def test_bad_precision_and_foreign_layers_are_refused():
    net = _net(TINY)
    with pytest.raises(ValueError, match="precision must be one of"):
        InferenceGraph(net, "fp16")
    with pytest.raises(TypeError, match="cannot fold a Dropout"):
        _fold([nn.Conv2d(3, 4, 3, padding=1), nn.Dropout()])

"""`--precision` / `--channels-last` of `mgid derain` (and `mgid.load_model`): parsing, fp32 forcing, auto.

``auto`` is bf16 autocast on a CPU with native bf16 instructions and fp32 elsewhere, channels_last on any CPU;
the CPU detection (`mgid.precision.cpu_has_native_bf16`) is monkeypatched both ways. Tiny networks.
"""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

import mgid
import mgid.precision
from mgid.cli import build_parser, main
from mgid.derain.tiling import predict_rain
from mgid.precision import CpuInfo, cpu_info, nnpack_available, resolve_channels_last, resolve_precision


@pytest.fixture(params=[True, False], ids=["cpu-with-bf16", "cpu-without-bf16"])
def bf16_cpu(request, monkeypatch) -> bool:
    monkeypatch.setattr(mgid.precision, "cpu_has_native_bf16", lambda: request.param)
    return request.param


def _conv_weights_channels_last(net: torch.nn.Module) -> bool:
    conv = next(m for m in net.modules() if isinstance(m, torch.nn.Conv2d))
    return conv.weight.is_contiguous(memory_format=torch.channels_last) and not conv.weight.is_contiguous()


def test_options_parse():
    parser = build_parser()
    for command in (["derain", "in", "out"], ["evaluate", "--data", "d"], ["heldout"]):
        args = parser.parse_args(command)
        assert (args.precision, args.channels_last) == ("auto", "auto")
    args = parser.parse_args(["derain", "in", "out", "--precision", "fp32", "--channels-last", "on"])
    assert (args.precision, args.channels_last) == ("fp32", "on")
    with pytest.raises(SystemExit):
        parser.parse_args(["derain", "in", "out", "--precision", "fp16"])
    with pytest.raises(SystemExit):
        parser.parse_args(["derain", "in", "out", "--channels-last", "yes"])
    with pytest.raises(ValueError, match="precision must be one of"):
        resolve_precision("fp16", "cpu", "inference")


def test_auto_is_bf16_channels_last_only_on_a_cpu_with_bf16(bf16_cpu):
    assert resolve_precision("auto", "cpu", "inference") == ("bf16" if bf16_cpu else "fp32")
    # inference takes channels_last on every CPU except fp32 without AVX512, which runs NCHW on NNPACK's Winograd
    # kernels where torch has them (bench_derain: 1.2x the channels_last graph on the AVX2 setting)
    fp32_cl = cpu_info().avx512_usable or not nnpack_available()
    assert resolve_channels_last(None, "auto", "cpu", "inference") is (bf16_cpu or fp32_cl)
    assert resolve_channels_last(None, "fp32", "cpu", "inference") is fp32_cl
    assert resolve_precision("auto", "cuda", "inference") == "fp32" and resolve_channels_last(None, "auto", "cuda", "inference") is False
    assert resolve_precision("bf16", "cpu", "inference") == "bf16" and resolve_channels_last(False, "bf16", "cpu", "inference") is False


def test_load_model_auto_and_fp32(weights, bf16_cpu):
    auto = mgid.load_model(weights, "cpu")
    fp32_cl = cpu_info().avx512_usable or not nnpack_available()
    assert auto.precision == ("bf16" if bf16_cpu else "fp32") and auto.channels_last is (bf16_cpu or fp32_cl)
    assert _conv_weights_channels_last(auto.net) is auto.channels_last
    forced = mgid.load_model(weights, "cpu", precision="fp32", channels_last=False)
    assert forced.precision == "fp32" and forced.channels_last is False
    assert not _conv_weights_channels_last(forced.net)
    x = torch.rand(1, 3, 40, 48) * 2 - 1
    fp32 = predict_rain(mgid.load_model(weights, "cpu", precision="fp32", channels_last=False).net, x,
                        channels_last=False)
    assert torch.equal(forced.rain_layer(x), fp32)  # fp32 forced: exactly the fp32 arithmetic


def test_bf16_output_close_to_fp32_untiled_and_tiled(weights):
    fast = mgid.load_model(weights, "cpu", precision="bf16", channels_last=True)
    ref = mgid.load_model(weights, "cpu", precision="fp32")
    rgb = np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8)
    for tile in (None, 32):
        a, b = fast.derain(rgb, tile=tile, overlap=16), ref.derain(rgb, tile=tile, overlap=16)
        assert a.dtype == np.uint8 and a.shape == rgb.shape
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 3
    x = torch.rand(1, 3, 40, 56) * 2 - 1
    assert fast.rain_layer(x).dtype == torch.float32  # the rain layer comes back in the input's dtype


def test_derain_command_says_and_uses_the_arithmetic(tmp_path, weights, bf16_cpu, capsys):
    image = tmp_path / "in.png"
    cv2.imwrite(str(image), np.random.default_rng(1).integers(0, 256, (24, 32, 3), dtype=np.uint8))
    assert main(["derain", str(image), str(tmp_path / "auto"), "--weights", str(weights), "--device", "cpu",
                 "--quiet"]) == 0
    out = capsys.readouterr().out
    assert ("on cpu, bf16 + channels_last" if bf16_cpu else "on cpu, fp32") in out
    assert "autocast" not in out  # inference runs the frozen graph: bf16 weights, not autocast
    assert main(["derain", str(image), str(tmp_path / "fp32"), "--weights", str(weights), "--device", "cpu",
                 "--precision", "fp32", "--quiet"]) == 0
    out = capsys.readouterr().out
    if cpu_info().avx512_usable or not nnpack_available():
        assert ("on cpu, fp32 + channels_last (precision set explicitly; auto memory format: channels_last on for "
                "inference in fp32 on cpu") in out
    else:
        assert ("on cpu, fp32 (precision set explicitly; auto memory format: channels_last off for inference in fp32 "
                "on cpu; NCHW: NNPACK's Winograd convolutions") in out
    assert (tmp_path / "fp32" / "in.png").is_file()


@pytest.mark.parametrize("aten, dnnl, avx512", [("AVX512", None, True), ("AVX2", None, False),
                                                ("AVX512", "AVX2", False), ("AVX512", "AVX512_CORE_AMX", True)])
def test_fp32_inference_memory_format_follows_avx512(monkeypatch, aten, dnnl, avx512):
    """fp32 inference: channels_last (oneDNN) where torch may use AVX512, NCHW (NNPACK) where it may not."""
    import mgid.precision as precision
    info = CpuInfo("test CPU", ("avx2", "avx512f"), aten, dnnl)
    assert info.avx512_usable is avx512
    monkeypatch.setattr(precision, "cpu_info", lambda: info)
    expected = avx512 or not nnpack_available()
    assert resolve_channels_last(None, "fp32", "cpu", "inference") is expected
    assert resolve_channels_last(None, "fp32", "cpu", "training") is False  # training: unchanged
    assert resolve_channels_last(True, "fp32", "cpu", "inference") is True  # set explicitly: as given

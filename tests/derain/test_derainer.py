"""Tiled inference, the NumPy/tensor API (`mgid.load_model`, `Derainer`) and weight loading errors.

Tiny networks (8 channels) on 16-80 px images; one torch thread (the machine is shared).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import mgid
import mgid.derain.derainer as api
import mgid.derain.tiling as inference
from mgid.checkpoint import CheckpointError
from mgid.derain.tiling import predict_rain, tile_geometry, tile_starts
from mgid.models import DOWNSAMPLE, Encoder, MGIDNet
from mgid.models.encoder import NormStats
from mgid.precision import Arithmetic, autocast
from tests.derain.tiny_network import TINY, calibrated, smooth_image, tiny_weights


def _pointwise_net() -> MGIDNet:
    """A calibrated net whose 3x3 (transposed) convolutions keep only their centre tap.

    Every layer is then local except the encoder's InstanceNorm, so tiled inference with global
    normalisation statistics must reproduce the untiled output up to float rounding.
    """
    torch.manual_seed(0)
    net = MGIDNet(TINY)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)) and m.kernel_size == (3, 3):
                centre = m.weight[..., 1, 1].clone()
                m.weight.zero_()
                m.weight[..., 1, 1] = 3 * centre
    return calibrated(net)


# ---------------------------------------------------------------------------------------------- tiling


def test_tile_geometry_and_starts():
    assert tile_geometry(50, 12) == (48, 16)  # tile rounded down, overlap up, to multiples of 8
    with pytest.raises(ValueError, match="smaller than the tile"):
        tile_geometry(32, 32)
    with pytest.raises(ValueError, match="at least"):
        tile_geometry(8, 0)
    assert tile_starts(80, 48, 16) == [0, 32]
    assert tile_starts(48, 48, 16) == [0]
    assert tile_starts(200, 64, 16) == [0, 48, 96, 136]
    for n in (80, 200, 1000):  # covered, overlapping by >= overlap, last tile flush with the end
        s = tile_starts(n, 64, 16)
        assert s[0] == 0 and s[-1] + 64 == n and all(b - a <= 48 for a, b in zip(s, s[1:]))


def test_tiled_equals_untiled_for_a_local_network():
    """Blending, geometry, padding and the global InstanceNorm statistics are exact: with every layer
    local, tiled == untiled to float rounding (measured 7e-6 max). Per-tile normalisation is not
    (measured max 0.89 on the [-1, 1] scale), which is why global statistics are the default."""
    net = _pointwise_net()
    for h, w, tile, overlap in ((80, 72, 48, 16), (77, 70, 40, 12)):
        img = smooth_image(h, w)
        full = predict_rain(net, img)
        tiled = predict_rain(net, img, tile=tile, overlap=overlap)
        assert tiled.shape == full.shape == img.shape
        assert (tiled - full).abs().max().item() < 1e-4
    per_tile = predict_rain(net, img, tile=40, overlap=12, global_norm=False)
    assert (per_tile - full).abs().max().item() > 1e-2


def test_tiled_close_to_untiled_for_the_tiny_model(tmp_path):
    """A freshly initialised (saved and reloaded) tiny model: 80x72 image, tile 48, overlap 16.

    Measured disagreement: ~1e-8 on the [-1, 1] scale (the untrained net's output hardly depends on
    the input; a 64-channel one gave 3.6e-4 = 0.05 grey levels), so the uint8 outputs may differ by
    at most one rounding step. The exactness of the machinery is tested with the local network above;
    how far a *trained* network's wide receptive field (~85 px radius) reaches past the overlap can
    only be measured on trained weights.
    """
    d = mgid.load_model(tiny_weights(tmp_path), device="cpu")
    rgb = np.random.default_rng(0).integers(0, 256, (80, 72, 3), dtype=np.uint8)
    full, tiled = d.derain(rgb), d.derain(rgb, tile=48, overlap=16)
    assert np.abs(full.astype(int) - tiled.astype(int)).max() <= 1
    t = torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 127.5 - 1
    diff = ((t - predict_rain(d.net, t, 48, 16)) - (t - predict_rain(d.net, t))).abs().max().item()
    assert diff < 1e-3


def test_untiled_when_the_image_fits_and_train_mode_restored():
    net = _pointwise_net().train()
    img = smooth_image(40, 40)
    a = predict_rain(net, img, tile=64)
    assert net.training  # restored
    b = predict_rain(net.eval(), img)
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        predict_rain(net, img[0])


# ------------------------------------------------------------------- tiling through the public encoder API


def _hooked_predict_rain(net: MGIDNet, image: torch.Tensor, tile: int, overlap: int, global_norm: bool = True,
                         precision: str = "fp32", channels_last: bool = False) -> torch.Tensor:
    """The tiled inference as it was before the public norm-statistics API (the oracle of the regression
    test): pass 1 captures the pre-norm query with a hook on the InstanceNorm2d, pass 2 replaces the
    norm's output with the features normalised by the summed statistics. Found by type, not by name."""
    norm = next(m for m in net.modules() if isinstance(m, torch.nn.InstanceNorm2d))
    device = next(net.parameters()).device
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    t, o = tile_geometry(tile, overlap)
    h0, w0 = image.shape[-2:]
    padded = inference.pad_to_multiple(image, DOWNSAMPLE, net.config.pad_mode)
    b, c, h, w = padded.shape
    ys, xs, th, tw = inference._grid(h, w, t, o)
    run = lambda crop: net(crop.to(device).contiguous(memory_format=fmt), update_memory=False,  # noqa: E731
                           memory_losses=False).rain
    net.eval()
    with torch.no_grad(), autocast(device, precision):
        handles = []
        if global_norm:
            captured = []
            handles.append(norm.register_forward_pre_hook(lambda m, i: captured.append(i[0])))
            total = torch.zeros(b, net.config.channels, dtype=torch.float64)
            total_sq = torch.zeros_like(total)
            for y, (ylo, yhi) in zip(ys, inference._cores(ys, th, t)):
                for x, (xlo, xhi) in zip(xs, inference._cores(xs, tw, t)):
                    captured.clear()
                    run(padded[..., y:y + th, x:x + tw])
                    f = captured[0][..., (ylo - y) // 8:(yhi - y) // 8, (xlo - x) // 8:(xhi - x) // 8].double()
                    total += f.sum(dim=(2, 3))
                    total_sq += (f * f).sum(dim=(2, 3))
            handles[0].remove()
            n = (h // 8) * (w // 8)
            mean = (total / n).float()
            var = (total_sq / n - (total / n) ** 2).clamp_min(0).float()

            def fixed(m, i, out):
                x = i[0]
                wide = torch.promote_types(x.dtype, torch.float32)
                mu, v = mean.to(x.device, wide).view(b, -1, 1, 1), var.to(x.device, wide).view(b, -1, 1, 1)
                return ((x.to(wide) - mu) / torch.sqrt(v + m.eps)).to(x.dtype)

            handles = [norm.register_forward_hook(fixed)]
        acc = torch.zeros(b, c, h, w)
        weight = torch.zeros(1, 1, h, w)
        try:
            for iy, y in enumerate(ys):
                wy = inference._ramp(th, o, rise=iy > 0, fall=iy < len(ys) - 1)
                for ix, x in enumerate(xs):
                    wx = inference._ramp(tw, o, rise=ix > 0, fall=ix < len(xs) - 1)
                    win = wy[:, None] * wx[None, :]
                    acc[..., y:y + th, x:x + tw] += run(padded[..., y:y + th, x:x + tw]).float() * win
                    weight[..., y:y + th, x:x + tw] += win
        finally:
            for hd in handles:
                hd.remove()
    return (acc / weight).to(image.dtype)[..., :h0, :w0]


def _two_images(h: int = 80, w: int = 72) -> torch.Tensor:
    img = smooth_image(h, w, seed=5).repeat(2, 1, 1, 1)
    img[1] = img[1].flip(-1) * 0.5  # two samples with different statistics
    return img


def _eager_tiled(net: MGIDNet, image: torch.Tensor, tile: int, overlap: int, global_norm: bool = True,
                 precision: str = "fp32", channels_last: bool = False) -> torch.Tensor:
    """The tiling machinery (`tiled_rain`) run on the network itself (``MGIDNet.forward`` under autocast, the path
    `predict_rain` took before the frozen inference graph) through the public norm-statistics API."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    h, w = image.shape[-2:]
    padded = inference.pad_to_multiple(image, DOWNSAMPLE, net.config.pad_mode)

    def run_tile(crop, stats):
        return net(crop.contiguous(memory_format=fmt), update_memory=False, memory_losses=False, norm_stats=stats).rain

    def query(crop):
        return net.pre_norm_query(crop.contiguous(memory_format=fmt))

    net.eval()
    with torch.no_grad(), autocast("cpu", precision):
        return inference.tiled_rain(padded, *tile_geometry(tile, overlap), run_tile,
                                    query if global_norm else None)[..., :h, :w]


@pytest.mark.parametrize("global_norm", [True, False])
def test_tiled_output_unchanged_by_the_public_norm_api(global_norm):
    """The tiling machinery on the network is bit-identical to the former hook/module-swap implementation (also
    measured once against outputs saved before the change: equal for pointwise/tiny nets, global_norm True/False,
    bf16 + channels_last); `predict_rain`, which runs the frozen graph, matches it to rounding."""
    torch.manual_seed(3)
    net = calibrated(MGIDNet(TINY))
    img = _two_images()
    for tile, overlap in ((48, 16), (40, 12)):
        old = _hooked_predict_rain(net, img, tile, overlap, global_norm)
        assert torch.equal(_eager_tiled(net, img, tile, overlap, global_norm), old)
        new = predict_rain(net, img, tile=tile, overlap=overlap, global_norm=global_norm, channels_last=True)
        torch.testing.assert_close(new, old, rtol=0, atol=5e-5)  # fp32 rounding: 1/150 of a grey level
        # NCHW fp32 runs NNPACK's Winograd convolutions where torch has them, whose transforms round more (5.4e-5
        # measured on an AMD EPYC with AVX2): 1/75 of a grey level
        winograd = predict_rain(net, img, tile=tile, overlap=overlap, global_norm=global_norm, channels_last=False)
        torch.testing.assert_close(winograd, old, rtol=0, atol=1e-4)
    old = _hooked_predict_rain(net, img, 48, 16, global_norm, precision="bf16", channels_last=True)
    assert torch.equal(_eager_tiled(net, img, 48, 16, global_norm, precision="bf16", channels_last=True), old)
    new = predict_rain(net, img, tile=48, overlap=16, global_norm=global_norm, precision="bf16", channels_last=True)
    exact = _hooked_predict_rain(net, img, 48, 16, global_norm)
    # bf16 rounds in other places in the graph (stored folded weights, no per-layer casts): no farther from fp32
    # than autocast was (measured on this untrained net: max 0.118 vs 0.129, mean 0.0095 vs 0.0133)
    for stat in (torch.max, torch.mean):
        assert stat((new - exact).abs()) <= 1.1 * stat((old - exact).abs())


class _RenamedEncoder(Encoder):
    """The same layers as an `Encoder` under other attribute names (no stage1-4, pool or norm)."""

    def __init__(self, src: Encoder) -> None:
        torch.nn.Module.__init__(self)
        self.blocks = torch.nn.ModuleList([src.stage1, src.stage2, src.stage3, src.stage4])
        self.down = src.pool
        self.inorm = src.norm

    @property
    def channels(self) -> int:
        return self.inorm.num_features

    @property
    def norm_eps(self) -> float:
        return float(self.inorm.eps)

    def pre_norm_features(self, image):
        s1 = self.blocks[0](image)
        s2 = self.blocks[1](self.down(s1))
        s3 = self.blocks[2](self.down(s2))
        return self.blocks[3](self.down(s3)), [s1, s2, s3]  # a list: the decoder empties it

    def normalise(self, features, norm_stats=None):
        return self.inorm(features) if norm_stats is None else super().normalise(features, norm_stats)


def test_tiling_does_not_depend_on_submodule_names():
    """A network whose encoder keeps its layers under other names tiles exactly as the original; the
    tiling code uses no hooks, no module swapping and no encoder attributes (the frozen graph, which reads the
    layers by name, is built in `mgid.models.inference_graph`)."""
    net = _pointwise_net()
    renamed = _pointwise_net()
    renamed.encoder = _RenamedEncoder(renamed.encoder)
    assert not any(hasattr(renamed.encoder, n) for n in ("stage1", "stage4", "pool", "norm"))
    img = _two_images(77, 70)
    for global_norm in (True, False):
        a = _eager_tiled(net, img, 40, 12, global_norm)
        b = _eager_tiled(renamed, img, 40, 12, global_norm)
        assert torch.equal(a, b)
    with torch.no_grad():
        full = renamed(img, update_memory=False).rain
    assert (b - full).abs().max().item() > 1e-2  # per-tile normalisation (the last b) differs ...
    assert (_eager_tiled(renamed, img, 40, 12) - full).abs().max().item() < 1e-4  # ... global not
    source = "\n".join(line for line in Path(inference.__file__).read_text().split("\n")
                        if not line.startswith(("from ", "import ")))
    for banned in ("register_forward_hook", "register_forward_pre_hook", ".encoder", "setattr", "stage4", ".norm"):
        assert banned not in source, banned


def test_norm_statistics_api_shapes_and_errors():
    torch.manual_seed(0)
    net = calibrated(MGIDNet(TINY))
    img = _two_images(40, 44)  # padded to 40x48: query 5x6
    q = net.pre_norm_query(img)
    assert q.shape == (2, TINY.channels, 5, 6)
    stats = net.norm_statistics(img)
    assert isinstance(stats, NormStats)
    assert stats.mean.shape == stats.var.shape == (2, TINY.channels, 1, 1) and (stats.var >= 0).all()
    enc = net.encoder.norm_statistics(inference.pad_to_multiple(img, DOWNSAMPLE))
    assert torch.equal(enc.mean, stats.mean) and torch.equal(enc.var, stats.var)
    with torch.no_grad():
        own, given = net(img, norm_stats=stats), net(img)
        assert torch.allclose(own.query, given.query, atol=1e-4)  # the instance norm's own statistics
        assert (own.rain - given.rain).abs().max().item() < 1e-5
        other = net(img, norm_stats=NormStats(stats.mean + 1, stats.var * 4))
        assert (other.rain - given.rain).abs().max().item() > 1e-3  # the statistics are used
        assert torch.allclose(net.encoder(inference.pad_to_multiple(img, DOWNSAMPLE), tuple(stats)).query,
                              own.query)
        bad = {"(B, C)": (stats.mean[..., 0, 0], stats.var),
               "batch": (stats.mean, stats.var[:1]),
               "channels": (stats.mean[:, :4], stats.var[:, :4])}
        for pair in bad.values():
            with pytest.raises(ValueError, match=r"shape \(B, C, 1, 1\) = \(2, 8, 1, 1\)"):
                net(img, norm_stats=pair)
        with pytest.raises(ValueError, match=r"norm_stats\.var must have shape"):
            net(img, norm_stats=(stats.mean, stats.var.view(2, 1, TINY.channels, 1)))
        with pytest.raises(TypeError, match="pair"):
            net(img, norm_stats=stats.mean)
        with pytest.raises(TypeError, match="floating"):
            net(img, norm_stats=(stats.mean.long(), stats.var))
        with pytest.raises(ValueError, match=r"\(B, C, h, w\)"):
            NormStats.of(q[0])


def test_state_dict_keys_match_the_shipped_weights():
    """The API is methods only: the parameter/buffer names of checkpoints written before stay the same."""
    from safetensors import safe_open

    shipped = Path(mgid.__file__).parent / "weights" / "mgid_embedded.safetensors"
    if not shipped.is_file():
        pytest.skip("shipped weights not present")
    with safe_open(str(shipped), "pt") as f:
        keys = set(f.keys())
    assert set(MGIDNet().state_dict()) == keys
    net = mgid.load_model(shipped, device="cpu", precision="fp32").net
    assert set(net.state_dict()) == keys


# ---------------------------------------------------------------------------------------------- API


def test_numpy_and_tensor_round_trip(tmp_path):
    d = mgid.load_model(tiny_weights(tmp_path), device="cpu")
    assert isinstance(d, api.Derainer) and not d.net.training and d.device == torch.device("cpu")
    rng = np.random.default_rng(1)
    for shape in ((17, 23, 3), (33, 50, 3), (16, 16, 3)):
        rgb = rng.integers(0, 256, shape, dtype=np.uint8)
        out, rain = d.derain(rgb), d.rain_layer(rgb)
        assert out.dtype == np.uint8 and out.shape == shape and rain.dtype == np.uint8 and rain.shape == shape
        both = d.derain_with_rain(rgb)
        assert np.array_equal(both[0], out) and np.array_equal(both[1], rain)
    chw = torch.rand(3, 20, 28) * 2 - 1
    bchw = torch.rand(2, 3, 24, 16) * 2 - 1
    assert d.derain(chw).shape == chw.shape and d.derain(bchw).shape == bchw.shape
    assert torch.allclose(d.derain(chw) + d.rain_layer(chw), chw, atol=1e-6)  # B = I - R
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        d.derain(np.zeros((16, 16), np.uint8))
    with pytest.raises(ValueError, match="float tensor"):
        d.derain(torch.zeros(3, 16, 16, dtype=torch.uint8))


def test_the_derainers_are_siblings_under_an_abstract_base():
    """The PyTorch and the onnxruntime derainer share `BaseDerainer`, which neither skips nor replaces (the
    onnxruntime one's base ``__init__`` is checked in tests/derain/test_onnx_export.py)."""
    from mgid.derain.onnx_backend import OnnxDerainer

    assert issubclass(api.Derainer, api.BaseDerainer) and issubclass(OnnxDerainer, api.BaseDerainer)
    assert not issubclass(OnnxDerainer, api.Derainer) and not issubclass(api.Derainer, OnnxDerainer)
    arithmetic = Arithmetic("fp32", False, "test", "inference")
    with pytest.raises(TypeError, match="abstract"):
        api.BaseDerainer(TINY, torch.device("cpu"), arithmetic)


def test_each_tiling_has_one_meaning(tmp_path, monkeypatch):
    """``tile``: "auto" plans from the memory budget, None is the whole image, an int a tile size; a call that
    leaves it out takes the derainer's own, and "default" is no tiling."""
    weights = tiny_weights(tmp_path)
    d = mgid.load_model(weights, device="cpu", precision="fp32", tile=48, overlap=16)
    rgb = np.random.default_rng(0).integers(0, 256, (80, 72, 3), dtype=np.uint8)
    own = d.derain(rgb)
    assert d.last_tile == 48  # left out: the derainer's own tiling
    assert np.array_equal(d.derain(rgb, tile=48), own) and d.last_tile == 48  # an int: tiles of that size
    whole = d.derain(rgb, tile=None)
    assert d.last_tile is None  # None: the whole image
    assert np.array_equal(api.Derainer(d.net, tile=None, precision="fp32").derain(rgb), whole)
    assert np.array_equal(d.derain(rgb, tile="auto"), whole) and d.last_tile is None  # auto: it fits the budget
    monkeypatch.setattr(d, "auto_tile", lambda batch, height, width, overlap=None, held_bytes=0: 40)
    assert np.array_equal(d.derain(rgb, tile="auto"), d.derain(rgb, tile=40))  # auto: the plan's tile
    assert d.last_tile == 40
    for bad in ("default", "none", 0.5, True):
        with pytest.raises((ValueError, TypeError)):
            d.derain(rgb, tile=bad)
        with pytest.raises((ValueError, TypeError)):
            mgid.load_model(weights, device="cpu", tile=bad)
    with pytest.raises(ValueError, match="tile must be 'auto', None"):
        d.derain(rgb, tile="default")


def test_load_model_weight_resolution(tmp_path, monkeypatch):
    weights = tiny_weights(tmp_path / "run" / "checkpoints")
    weights.rename(weights.with_name("last.safetensors"))
    weights.with_suffix(".json").rename(weights.with_name("last.json"))
    assert mgid.load_model(tmp_path / "run", device="cpu").weights.name == "last.safetensors"  # training folder
    assert mgid.load_model(tmp_path / "run" / "checkpoints" / "last.json", device="cpu").net.config == TINY
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert api.resolve_device("auto") == torch.device("cpu")
    with pytest.raises(RuntimeError, match="no CUDA GPU"):
        api.resolve_device("cuda")


def test_missing_shipped_weights_say_how_to_get_some(tmp_path, monkeypatch):
    monkeypatch.setattr(api, "DEFAULT_WEIGHTS", tmp_path / "weights" / "mgid_embedded.safetensors")
    with pytest.raises(FileNotFoundError, match="mgid train"):
        mgid.load_model()
    monkeypatch.setattr(api, "DEFAULT_WEIGHTS", tiny_weights(tmp_path))
    assert mgid.load_model(device="cpu").net.config == TINY


def test_load_model_refuses_pickles_truncated_and_orphan_files(tmp_path):
    good = tiny_weights(tmp_path)
    pickled = tmp_path / "model.pt"
    torch.save(MGIDNet(TINY).state_dict(), pickled)
    with pytest.raises(CheckpointError, match="pickled"):
        mgid.load_model(pickled)
    disguised = tmp_path / "disguised.safetensors"
    disguised.write_bytes(pickled.read_bytes())
    with pytest.raises(CheckpointError, match="pickled"):
        mgid.load_model(disguised)
    truncated = tmp_path / "cut.safetensors"
    truncated.write_bytes(good.read_bytes()[:-100])
    (tmp_path / "cut.json").write_bytes(good.with_suffix(".json").read_bytes())
    with pytest.raises(CheckpointError, match="truncated"):
        mgid.load_model(truncated)
    (tmp_path / "empty.safetensors").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty or truncated"):
        mgid.load_model(tmp_path / "empty.safetensors")
    orphan = tmp_path / "orphan.safetensors"
    orphan.write_bytes(good.read_bytes())
    with pytest.raises(FileNotFoundError, match="orphan.json"):
        mgid.load_model(orphan)
    with pytest.raises(FileNotFoundError, match="not found"):
        mgid.load_model(tmp_path / "nope.safetensors")


def test_package_exports():
    assert mgid.__version__ and callable(mgid.load_model)
    from mgid import load_model

    assert load_model is api.load_model
    first = Path(mgid.__file__).read_text().split("\n")
    code = [line for line in first if line.startswith(("import", "from"))]
    assert code[0].startswith("import torch")


def test_time_limit_stops_tiled_inference_between_tiles():
    """`mgid.derain.time_limit`: past the limit the next tile raises; without a limit (or after the block) nothing."""
    from mgid.derain.time_limit import TimeLimitExceeded, check_time_limit, time_limit

    net = _pointwise_net()
    img = smooth_image(80, 72)
    with time_limit(1e-9), pytest.raises(TimeLimitExceeded, match="time limit of 1e-09 s"):
        predict_rain(net, img, tile=48, overlap=16)
    with time_limit(60):
        predict_rain(net, img, tile=48, overlap=16)
    check_time_limit()  # the limit ended with its block
    with pytest.raises(ValueError, match="positive"):
        with time_limit(0):
            pass

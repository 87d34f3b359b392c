"""ONNX export (`mgid.derain.onnx_export`) and the onnxruntime backend (`mgid.derain.onnx_backend`).

A tiny calibrated network (8 channels, 4 items), exported once per module with the dynamo exporter (~10 s)
and once with the TorchScript exporter (~1 s); one onnxruntime/torch thread (the machine is shared). The
PyTorch side runs the reference ops, the path the graph was exported from.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import mgid
import mgid.derain.onnx_export as export
from mgid import cli, ops
from mgid.checkpoint import file_sha256, save_checkpoint
from mgid.data.imageio import read_image, write_image
from mgid.derain.derainer import BaseDerainer, Derainer, load_network
from mgid.derain.onnx_backend import OnnxDerainer, OnnxModelError, load_onnx_derainer
from mgid.derain.onnx_graphs import IMAGE_FILTER, TILING
from mgid.derain.tiling import predict_rain
from mgid.models import MGIDNet
from mgid.output_paths import OutputPathError
from tests.derain.tiny_network import TINY, calibrated, smooth_image, tiny_weights

pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

#: Max |onnxruntime - PyTorch| on the [-1, 1] scale (float rounding; measured ~1e-5).
TOL = 1e-4
#: (batch, H, W): multiples of 8 (what the graph takes) and, through OnnxDerainer, sizes that need padding.
SIZES = [(1, 16, 24), (2, 32, 32), (1, 40, 56), (2, 40, 56), (2, 8, 16)]
ODD_SIZES = [(1, 37, 45), (2, 21, 30), (1, 5, 30)]  # 5x30 pads 3 rows > 5/2: replicate, not reflect


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, MGIDNet]:
    """(checkpoint of a calibrated tiny network, that network reloaded in eval mode)."""
    folder = tmp_path_factory.mktemp("tiny")
    torch.manual_seed(0)
    net = calibrated(MGIDNet(TINY))  # O(1) activations, so the output depends on the input
    path = save_checkpoint(folder, net, None, {"config": {"model": TINY.to_dict()}}, names=("tiny",))["model"]
    return path, load_network(path)


@pytest.fixture(scope="module")
def exported(tiny, tmp_path_factory) -> export.ExportResult:
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return export.export_onnx(tiny[0], tmp_path_factory.mktemp("onnx") / "tiny.onnx", tiling_inputs=True)
    finally:
        torch.set_num_threads(saved)


@pytest.fixture(scope="module")
def exported_ts(tiny, tmp_path_factory) -> export.ExportResult:
    return export.export_onnx(tiny[1], tmp_path_factory.mktemp("onnx_ts") / "tiny_ts.onnx", exporter="torchscript",
                              tiling_inputs=True)


def _session(path: Path):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _reference_rain(net: MGIDNet, image: torch.Tensor) -> torch.Tensor:
    with torch.no_grad(), ops.use_reference():
        return net(image, update_memory=False, memory_losses=False).rain


def _image(b: int, h: int, w: int, seed: int = 3) -> torch.Tensor:
    img = smooth_image(h, w, seed).repeat(b, 1, 1, 1)
    if b > 1:
        img[1] = img[1].flip(-1) * 0.5  # samples with different statistics
    return img


# ----------------------------------------------------------------------------- the graph, in stock onnxruntime


@pytest.mark.parametrize("which", ["dynamo", "torchscript"])
def test_onnxruntime_matches_pytorch(which, tiny, exported, exported_ts):
    """The bare session (no mgid code) on several sizes and batches, own instance-norm statistics."""
    result = exported if which == "dynamo" else exported_ts
    assert result.exporter == which and result.fallback_reason is None
    net, session = tiny[1], _session(result.path)
    c = TINY.channels
    errors = {}
    for b, h, w in SIZES:
        img = _image(b, h, w)
        feeds = {"image": img.numpy(), "norm_mean": np.zeros((b, c, 1, 1), np.float32),
                 "norm_var": np.zeros((b, c, 1, 1), np.float32), "use_norm_stats": np.array([False])}
        rain, query = session.run(None, feeds)
        ref = _reference_rain(net, img)
        assert rain.shape == ref.shape and query.shape == (b, c, h // 8, w // 8)
        errors[(b, h, w)] = float(np.abs(rain - ref.numpy()).max())
        assert float(np.abs(query - net.pre_norm_query(img).detach().numpy()).max()) < TOL
        assert ref.abs().max() > 0.05  # not a trivially constant output
    print(f"\n{which}: max |onnxruntime - torch| on [-1, 1] by (B, H, W):",
          {k: f"{v:.2e}" for k, v in errors.items()})
    assert max(errors.values()) < TOL, errors


def test_given_norm_statistics_input(tiny, exported):
    """use_norm_stats=True normalises with the fed statistics, as forward(norm_stats=...)."""
    net, session = tiny[1], _session(exported.path)
    img, other = _image(2, 32, 40), _image(2, 48, 48, seed=9)
    stats = net.norm_statistics(other)
    rain = session.run(["rain"], {"image": img.numpy(), "norm_mean": stats.mean.detach().numpy(),
                                  "norm_var": stats.var.detach().numpy(), "use_norm_stats": np.array([True])})[0]
    with torch.no_grad(), ops.use_reference():
        ref = net(img, update_memory=False, memory_losses=False, norm_stats=stats).rain
    err = float(np.abs(rain - ref.numpy()).max())
    print(f"\ngiven statistics: max |onnxruntime - torch| {err:.2e}")
    assert err < TOL
    assert np.abs(rain - _reference_rain(net, img).numpy()).max() > 1e-3  # the input is used


@pytest.mark.parametrize("which", ["dynamo", "torchscript"])
def test_graph_has_only_standard_ops_and_metadata(which, tiny, exported, exported_ts):
    import onnx

    result = exported if which == "dynamo" else exported_ts
    model = onnx.load(str(result.path))
    assert export.custom_domains(model) == set()
    assert {n.domain for n in model.graph.node} <= set(export.STANDARD_DOMAINS)
    assert [i.name for i in model.graph.input] == list(TILING.inputs)
    assert [o.name for o in model.graph.output] == list(TILING.outputs)
    if which == "dynamo":
        # The encoder is in the graph once, though pre_norm_query and forward each run it when traced.
        convs = sum(isinstance(m, torch.nn.Conv2d) for m in tiny[1].modules())
        assert sum(n.op_type == "Conv" for n in model.graph.node) == convs
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["mgid.version"] == mgid.__version__
    assert json.loads(meta["mgid.model_config"]) == TINY.to_dict()
    assert meta["mgid.exporter"] == which and meta["mgid.output"] == "rain" and meta["mgid.input_multiple"] == "8"
    assert meta["mgid.graph_kind"] == "tiling" and result.kind == "tiling"
    if which == "dynamo":  # exported from the weights file: its hash is known
        assert meta["mgid.weights_sha256"] == hashlib.sha256(tiny[0].read_bytes()).hexdigest()
        assert meta["mgid.weights_file"] == tiny[0].name
    else:  # from a network: unknown
        assert meta["mgid.weights_sha256"] == ""
    assert result.opset == next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    assert result.max_abs_error is not None and result.max_abs_error < TOL


def test_export_restores_ops_mode_and_leaves_the_network(tiny, tmp_path, monkeypatch):
    net = tiny[1]
    net.train()
    ops.set_ops_mode("auto")
    try:
        export.export_onnx(net, tmp_path / "a.onnx", exporter="torchscript", verify=False)
        assert ops.ops_mode() == "auto"
        assert net.training  # the export worked on a copy
    finally:
        net.eval()
        ops.set_ops_mode(None)


def test_auto_falls_back_to_torchscript(tiny, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("simulated dynamo failure")

    monkeypatch.setattr(export, "_export_dynamo", broken)
    with pytest.warns(RuntimeWarning, match="TorchScript"):
        result = export.export_onnx(tiny[1], tmp_path / "fb.onnx", weights_sha256="ab" * 32)
    assert result.exporter == "torchscript" and "simulated" in result.fallback_reason
    assert result.metadata["mgid.weights_sha256"] == "ab" * 32
    with pytest.raises(RuntimeError, match="simulated"):
        export.export_onnx(tiny[1], tmp_path / "no.onnx", exporter="dynamo")
    assert not (tmp_path / "no.onnx").exists()


# ----------------------------------------------------------------------------- OnnxDerainer vs Derainer


@pytest.fixture(scope="module")
def derainers(tiny, exported) -> tuple[OnnxDerainer, Derainer]:
    return OnnxDerainer(exported.path, threads=1), Derainer(tiny[1], "cpu", precision="fp32")


def test_derainer_interface(derainers, exported):
    onnx_d, _ = derainers
    assert onnx_d.device == torch.device("cpu") and onnx_d.precision == "fp32" and onnx_d.channels_last is False
    assert onnx_d.tile == mgid.derain.tiling.TILE_AUTO and onnx_d.overlap == mgid.derain.tiling.DEFAULT_OVERLAP
    assert onnx_d.weights == exported.path and onnx_d.net is None and onnx_d.config == TINY
    assert "OnnxDerainer(" in repr(onnx_d)


def test_both_derainers_run_the_base_init(tiny, exported, monkeypatch):
    """An attribute set only in `BaseDerainer.__init__` reaches the onnxruntime and the PyTorch derainer alike: neither
    skips its parent's ``__init__``."""
    real = BaseDerainer.__init__

    def init(self, *args, **kwargs) -> None:
        real(self, *args, **kwargs)
        self.set_by_the_base = type(self).__name__

    monkeypatch.setattr(BaseDerainer, "__init__", init)
    onnx_d = OnnxDerainer(exported.path, threads=1, max_memory=1 << 30, self_ensemble=True)
    torch_d = Derainer(tiny[1], "cpu", precision="fp32", max_memory=1 << 30, self_ensemble=True)
    assert onnx_d.set_by_the_base == "OnnxDerainer" and torch_d.set_by_the_base == "Derainer"
    for d in (onnx_d, torch_d):
        assert d.config == TINY and d.max_memory == 1 << 30 and d.self_ensemble and d.last_tile is None


@pytest.mark.parametrize("b,h,w", SIZES[:3] + ODD_SIZES)
def test_untiled_derainer_matches_torch(derainers, b, h, w):
    onnx_d, torch_d = derainers
    img = _image(b, h, w)
    with ops.use_reference():
        ref = torch_d.derain(img)
    out = onnx_d.derain(img)
    assert out.shape == img.shape and out.dtype == img.dtype
    assert (out - ref).abs().max().item() < TOL
    chw = onnx_d.derain(img[0])
    assert chw.shape == img.shape[1:] and (chw - ref[0]).abs().max().item() < TOL


@pytest.mark.parametrize("global_norm", [True, False])
def test_tiled_derainer_matches_tiled_torch(derainers, tiny, global_norm):
    """Tiles, windows and (with global_norm) the whole image's statistics fed to the graph: as the torch path."""
    onnx_d, _ = derainers
    img = _image(2, 77, 70)
    with ops.use_reference():
        ref = predict_rain(tiny[1], img, tile=40, overlap=12, global_norm=global_norm)
        untiled = predict_rain(tiny[1], img)
    out = onnx_d.predict_rain(img, tile=40, overlap=12, global_norm=global_norm)
    err = (out - ref).abs().max().item()
    print(f"\ntiled (global_norm={global_norm}): max |onnxruntime - torch| {err:.2e} "
          f"(tiled - untiled: {(ref - untiled).abs().max().item():.2e})")
    assert err < TOL
    assert (out - untiled).abs().max().item() > 10 * TOL  # it really tiled


def test_tiled_numpy_api_matches_torch(tiny, exported):
    onnx_d = load_onnx_derainer(exported.path, tile=48, overlap=16, threads=1)
    torch_d = Derainer(tiny[1], "cpu", tile=48, overlap=16, precision="fp32")
    rgb = np.random.default_rng(0).integers(0, 256, (80, 72, 3), dtype=np.uint8)
    with ops.use_reference():
        ref_clean, ref_rain = torch_d.derain_with_rain(rgb)
        ref_layer = torch_d.rain_layer(rgb)
    clean, rain = onnx_d.derain_with_rain(rgb)
    assert clean.dtype == np.uint8 and clean.shape == rgb.shape
    assert np.abs(clean.astype(int) - ref_clean.astype(int)).max() <= 1  # rounding at .5 only
    assert np.abs(rain.astype(int) - ref_rain.astype(int)).max() <= 1
    assert np.abs(onnx_d.rain_layer(rgb).astype(int) - ref_layer.astype(int)).max() <= 1
    assert np.array_equal(onnx_d.derain(rgb), clean)
    assert np.abs(onnx_d.derain(rgb, tile=None).astype(int) - clean.astype(int)).max() > 0  # override: untiled


# ----------------------------------------------------------------------------- errors and atomic writes


def test_bad_files_give_clear_errors(tmp_path, tiny):
    with pytest.raises(FileNotFoundError, match="mgid export --onnx"):
        OnnxDerainer(tmp_path / "missing.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"this is not a protobuf \x00\xff" * 10)
    with pytest.raises(OnnxModelError, match="not an ONNX model"):
        OnnxDerainer(junk)
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    with pytest.raises(OnnxModelError, match="empty"):
        OnnxDerainer(empty)
    with pytest.raises(OnnxModelError, match="mgid export --weights"):
        OnnxDerainer(tiny[0])  # the safetensors checkpoint
    with pytest.raises(OnnxModelError, match="folder"):
        OnnxDerainer(tmp_path)
    # A valid ONNX model that is not an mgid export.
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    other = tmp_path / "other.onnx"
    onnx.save(helper.make_model(graph), str(other))
    with pytest.raises(OnnxModelError, match="not one of `mgid export`"):
        OnnxDerainer(other)


def test_missing_onnxruntime_says_pip_install(monkeypatch, exported):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import raises ImportError
    with pytest.raises(ModuleNotFoundError, match="pip install onnxruntime"):
        OnnxDerainer(exported.path)


def test_missing_onnx_says_pip_install(monkeypatch, tiny, tmp_path):
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(ModuleNotFoundError, match="pip install onnx onnxscript"):
        export.export_onnx(tiny[1], tmp_path / "x.onnx")


def test_bad_images_and_options(derainers, exported):
    onnx_d, _ = derainers
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        onnx_d.derain(np.zeros((16, 16), np.uint8))
    with pytest.raises(ValueError, match=r"\(3, H, W\) or \(B, 3, H, W\)"):
        onnx_d.derain(torch.zeros(1, 4, 16, 16))
    with pytest.raises(TypeError):
        onnx_d.derain([1, 2, 3])
    with pytest.raises(ValueError, match="too small"):
        onnx_d.derain(torch.zeros(1, 3, 8, 8))
    with pytest.raises(ValueError, match="at least"):
        onnx_d.derain(torch.zeros(1, 3, 40, 40), tile=8)
    with pytest.raises(ValueError, match="CPU only"):
        load_onnx_derainer(exported.path, device="cuda")
    with pytest.raises(ValueError, match="fp32"):
        load_onnx_derainer(exported.path, precision="bf16")
    with pytest.raises(ValueError, match="smaller than the tile"):
        load_onnx_derainer(exported.path, tile=32, overlap=32)


def test_export_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="weights file not found"):
        export.export_onnx(tmp_path / "nope.safetensors", tmp_path / "x.onnx")
    with pytest.raises(OutputPathError, match="is a folder"):
        export.export_onnx(None, tmp_path)
    with pytest.raises(TypeError, match="MGIDNet"):
        export.export_onnx(42, tmp_path / "x.onnx")
    with pytest.raises(ValueError, match="exporter"):
        export.export_onnx(None, tmp_path / "x.onnx", exporter="tflite")
    assert not (tmp_path / "x.onnx").exists()


def test_write_is_atomic(tiny, tmp_path, monkeypatch):
    """A failure while writing leaves no partial file, and an existing file untouched."""
    target = tmp_path / "model.onnx"
    target.write_bytes(b"previous contents")

    def crash(src, dst):
        assert Path(src).stat().st_size > 0 and Path(src).parent == target.parent  # written beside, in full
        raise OSError("simulated crash before the rename")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="simulated"):
        export.export_onnx(tiny[1], target, exporter="torchscript", verify=False, overwrite=True)
    assert target.read_bytes() == b"previous contents"
    assert sorted(os.listdir(tmp_path)) == ["model.onnx"]  # no temporary file left
    monkeypatch.undo()
    # A verification failure writes nothing either.
    monkeypatch.setattr(export, "_verify", lambda *a: 0.5)
    with pytest.raises(RuntimeError, match="nothing was written"):
        export.export_onnx(tiny[1], tmp_path / "new.onnx", exporter="torchscript")
    assert sorted(os.listdir(tmp_path)) == ["model.onnx"]


def test_export_command(tiny, tmp_path, capsys, monkeypatch):
    # The TorchScript exporter keeps the test fast; the command itself takes export_onnx's default (auto).
    real = export.export_onnx
    monkeypatch.setattr(export, "export_onnx", lambda w, p, o, **kw: real(w, p, o, exporter="torchscript", **kw))
    out = tmp_path / "sub" / "cli.onnx"
    assert cli.main(["export", "--onnx", str(out), "--weights", str(tiny[0]), "--opset", "18",
                     "--tiling-inputs"]) == 0
    printed = capsys.readouterr().out
    assert str(out) in printed and "opset 18" in printed and "sha256" in printed and "tiling graph" in printed
    assert out.is_file()
    assert cli.main(["export", "--onnx", str(tmp_path / "y.onnx"), "--weights", str(tmp_path / "none")]) == 2
    assert "weights file not found" in capsys.readouterr().err
    # the exported file through mgid derain --backend onnxruntime: the same result as PyTorch (fp32)
    rgb = np.random.default_rng(3).integers(0, 256, (40, 48, 3), dtype=np.uint8)
    write_image(tmp_path / "in" / "a.png", rgb)
    for backend, weights in (("onnxruntime", out), ("torch", tiny[0])):
        assert cli.main(["derain", str(tmp_path / "in"), str(tmp_path / backend), "--backend", backend,
                         "--weights", str(weights), "--device", "cpu", "--precision", "fp32", "--quiet"]) == 0
    a, b = read_image(tmp_path / "onnxruntime" / "a.png"), read_image(tmp_path / "torch" / "a.png")
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 1
    assert cli.main(["derain", str(tmp_path / "in"), str(tmp_path / "x"), "--backend", "onnxruntime"]) == 2
    assert "needs --weights FILE.onnx" in capsys.readouterr().err
    # the default export, an image filter, is for other runtimes: the tiling backend says what it needs
    image_filter = tmp_path / "filter.onnx"
    assert cli.main(["export", "--onnx", str(image_filter), "--weights", str(tiny[0])]) == 0
    assert "an image filter" in capsys.readouterr().out
    assert cli.main(["derain", str(tmp_path / "in"), str(tmp_path / "y"), "--backend", "onnxruntime",
                     "--weights", str(image_filter)]) == 2
    assert "mgid export --tiling-inputs" in capsys.readouterr().err


def test_output_path_is_checked_before_any_work(tmp_path, monkeypatch, capsys):
    """A photo is never replaced by ONNX bytes, and a path that cannot be written is refused at once with one
    line: the network is never loaded (its loader fails the test if called)."""
    def no_work(*_args):
        raise AssertionError("the export started before its path was checked")

    monkeypatch.setattr(export, "_resolve_net", no_work)
    victim = tmp_path / "victim.png"
    victim.write_bytes(b"a photo")
    (tmp_path / "file").write_bytes(b"x")
    existing = tmp_path / "old.onnx"
    existing.write_bytes(b"old model")
    cases = {victim: "must end in .onnx", tmp_path / "file" / "m.onnx": "is a file, not a folder",
             Path("/proc/mgid-no-such-dir/m.onnx"): "cannot create files in /proc",
             existing: "already exists; pass --overwrite"}
    for path, message in cases.items():
        with pytest.raises(OutputPathError, match=message):
            export.export_onnx(None, path)
        assert cli.main(["export", "--onnx", str(path)]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert victim.read_bytes() == b"a photo" and existing.read_bytes() == b"old model"


def test_write_failure_after_the_export_is_one_line(tiny, tmp_path, monkeypatch, capsys):
    """A write that fails after the work (disk full) is an error line, nothing written, exit 2."""
    real = export.export_onnx
    monkeypatch.setattr(export, "export_onnx", lambda w, p, o, **kw: real(w, p, o, exporter="torchscript", **kw))

    def disk_full(*_args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(export, "write_atomic", disk_full)
    out = tmp_path / "m.onnx"
    assert cli.main(["export", "--onnx", str(out), "--weights", str(tiny[0])]) == 2
    err = capsys.readouterr().err
    assert "No space left on device" in err and "Traceback" not in err and not out.exists()


def test_shipped_weights_resolve(tmp_path):
    """export_onnx(None, ...) reads the shipped weights (resolution only: the 64-channel export is the benchmark's)."""
    net, path, sha = export._resolve_net(None)
    assert path == mgid.derain.derainer.DEFAULT_WEIGHTS and sha == file_sha256(path)
    assert net.config.channels == 64 and not net.training
    with pytest.raises(FileNotFoundError):
        export._resolve_net(tiny_weights(tmp_path).with_name("absent.safetensors"))


def test_statistics_pass_uses_the_encoder_subgraph(exported, monkeypatch):
    """The extracted encoder gives the full graph's pre_norm_query; without the onnx package the full graph is
    used and the tiled result is the same."""
    with_enc = OnnxDerainer(exported.path, threads=1)
    assert with_enc._encoder_session is not None
    img = _image(2, 77, 70)
    monkeypatch.setitem(sys.modules, "onnx", None)
    monkeypatch.setitem(sys.modules, "onnx.utils", None)
    without = OnnxDerainer(exported.path, threads=1)
    assert without._encoder_session is None
    crop = img[..., :40, :40]
    assert torch.equal(with_enc.pre_norm_query(crop), without.pre_norm_query(crop))
    a = with_enc.predict_rain(img, tile=40, overlap=12)
    b = without.predict_rain(img, tile=40, overlap=12)
    assert (a - b).abs().max().item() < 1e-6


# ----------------------------------------------------------------------------- the default export: an image filter


def test_default_export_is_an_image_filter_stock_onnxruntime_runs_with_only_the_image(tiny, tmp_path, capsys):
    """`mgid export` (no options): one input ``image`` (N, 3, H, W) in [0, 1], one output ``derained`` in [0, 1],
    any H, W >= 8 (the padding is in the graph). Stock onnxruntime, fed only the image, matches ``mgid derain``
    (fp32, whole images) within 1 grey level, at sizes that are and are not multiples of 8."""
    import onnx

    path = tmp_path / "filter.onnx"
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert cli.main(["export", "--onnx", str(path), "--weights", str(tiny[0])]) == 0
    finally:
        torch.set_num_threads(saved)
    assert "an image filter" in capsys.readouterr().out
    model = onnx.load(str(path))
    assert [i.name for i in model.graph.input] == ["image"] and [o.name for o in model.graph.output] == ["derained"]
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["mgid.graph_kind"] == IMAGE_FILTER.kind and meta["mgid.input_range"] == "[0, 1]"
    assert meta["mgid.input_min_side"] == "8" and "[0,1]" in model.doc_string
    session = _session(path)  # stock onnxruntime, no mgid code
    rng = np.random.default_rng(5)
    for h, w in ((37, 45), (64, 48), (8, 16), (101, 33)):
        rgb = np.clip(smooth_image(h, w, seed=h).numpy()[0].transpose(1, 2, 0) * 127.5 + 127.5
                      + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)
        write_image(tmp_path / "in" / f"{h}x{w}.png", rgb)
        out = session.run(None, {"image": (rgb.transpose(2, 0, 1)[None] / 255.0).astype(np.float32)})[0]
        assert out.shape == (1, 3, h, w) and 0 <= out.min() and out.max() <= 1
        onnx_pixels = np.rint(out[0].transpose(1, 2, 0) * 255).astype(int)
        assert cli.main(["derain", str(tmp_path / "in" / f"{h}x{w}.png"), str(tmp_path / "out" / f"{h}x{w}.png"),
                         "--weights", str(tiny[0]), "--device", "cpu", "--precision", "fp32", "--quiet"]) == 0
        derained = read_image(tmp_path / "out" / f"{h}x{w}.png").astype(int)
        assert np.abs(onnx_pixels - derained).max() <= 1, (h, w)
        assert np.abs(derained - rgb.astype(int)).max() > 2  # the network changed the image
    batch = np.random.default_rng(0).random((3, 3, 24, 40)).astype(np.float32)
    assert session.run(None, {"image": batch})[0].shape == (3, 3, 24, 40)  # any batch


def test_an_opset_below_the_dynamo_exporters_is_written_by_torchscript(tiny, tmp_path):
    """Issue 27: ``--opset 13`` gives an opset-13 file (the dynamo exporter would keep 18 without a word), written by
    the TorchScript exporter, which the result says."""
    result = export.export_onnx(tiny[1], tmp_path / "o13.onnx", 13)
    assert result.opset == 13 and result.exporter == "torchscript" and result.max_abs_error < TOL
    assert "instead of the dynamo exporter: opset 13 is below its lowest, 18" in result.describe()


def test_opset_ranges_follow_the_installed_exporters():
    """`OPSET_RANGES` are the installed torch's and onnxscript's limits (a new version that moves them fails here)."""
    from torch.onnx import _constants

    converter = pytest.importorskip("onnxscript.version_converter._version_converter")
    torchlib = pytest.importorskip("torch.onnx._internal.exporter._constants")
    assert export.OPSET_RANGES["dynamo"] == (torchlib.TORCHLIB_OPSET, converter.SUPPORTED_MAX_ONNX_OPSET)
    assert export.OPSET_RANGES["torchscript"][1] == _constants.ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET

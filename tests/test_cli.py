"""``mgid derain`` and ``mgid bench`` end to end on tiny images with a tiny untrained model."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

import mgid.cli as cli
import mgid.cli.bench as bench_cli
import mgid.derain.derainer as api
from mgid.data import read_image, write_image


@pytest.fixture()
def photos(tmp_path: Path) -> Path:
    """photos/a.png (24x40), photos/b.jpg (32x32), photos/sub/c.png (16x24)."""
    rng = np.random.default_rng(0)
    root = tmp_path / "photos"
    for rel, (h, w) in {"a.png": (24, 40), "b.jpg": (32, 32), "sub/c.png": (16, 24)}.items():
        write_image(root / rel, rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    return root


def run(*argv: str | Path) -> int:
    return cli.main(["derain", *map(str, argv), "--device", "cpu", "--quiet"])


def _snapshot(root: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_single_file(tmp_path, photos, weights):
    assert run(photos / "a.png", tmp_path / "out", "--weights", weights) == 0
    out = read_image(tmp_path / "out" / "a.png")
    assert out.shape == (24, 40, 3) and out.dtype == np.uint8
    # OUTPUT may name the result file when INPUT is one file
    assert run(photos / "b.jpg", tmp_path / "one" / "clean.jpg", "--weights", weights) == 0
    assert read_image(tmp_path / "one" / "clean.jpg").shape == (32, 32, 3)


def test_folder_keeps_tree_format_and_writes_rain_and_compare(tmp_path, photos, weights):
    before = _snapshot(photos)
    out = tmp_path / "out"
    assert run(photos, out, "--weights", weights, "--save-rain", "--compare") == 0
    names = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert names == ["a.png", "a_compare.png", "a_rain.png", "b.jpg", "b_compare.png", "b_rain.png",
                     "sub/c.png", "sub/c_compare.png", "sub/c_rain.png"]
    assert (out / "b.jpg").read_bytes()[:2] == b"\xff\xd8"  # JPEG in, JPEG out
    assert read_image(out / "sub" / "c_rain.png").shape == (16, 24, 3)
    compare = read_image(out / "a_compare.png")
    assert compare.shape[1] > 3 * 40 and compare.shape[0] > 24  # three panels side by side (+ titles)
    assert _snapshot(photos) == before
    # a second run refuses to replace outputs unless asked
    assert run(photos, out, "--weights", weights) == 2
    assert run(photos, out, "--weights", weights, "--overwrite") == 0


def test_glob_and_tiles(tmp_path, photos, weights):
    out = tmp_path / "out"
    assert run(str(photos / "**" / "*.png"), out, "--weights", weights, "--tile", "16", "--tile-overlap", "8") == 0
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()) == ["a.png", "sub/c.png"]
    untiled = tmp_path / "untiled"
    assert run(photos / "a.png", untiled, "--weights", weights) == 0
    diff = np.abs(read_image(out / "a.png").astype(int) - read_image(untiled / "a.png").astype(int))
    assert diff.max() <= 1  # see tests/derain/test_derainer.py for the tiled-vs-untiled bound


def test_bad_files_are_skipped_and_reported(tmp_path, photos, weights, capsys):
    (photos / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    (photos / "notes.txt").write_text("hello")
    (photos / ".DS_Store").write_bytes(b"junk")  # hidden: ignored silently
    out = tmp_path / "out"
    assert run(photos, out, "--weights", weights) == 1
    err = capsys.readouterr().err
    assert "broken.png" in err and "notes.txt" in err and ".DS_Store" not in err
    assert (out / "a.png").is_file() and (out / "sub" / "c.png").is_file()
    assert not (out / "broken.png").exists() and not (out / "notes.txt").exists()


def test_never_overwrites_inputs(tmp_path, photos, weights, capsys):
    before = _snapshot(photos)
    assert run(photos, photos, "--weights", weights, "--overwrite") == 2
    assert "never writes over its inputs" in capsys.readouterr().err
    assert run(photos / "a.png", photos / "a.png", "--weights", weights, "--overwrite") == 2
    assert run(str(photos / "*.png"), photos, "--weights", weights, "--overwrite") == 2
    # an input named like another input's rain layer collides with it
    write_image(photos / "a_rain.png", np.zeros((16, 16, 3), np.uint8))
    assert run(photos, tmp_path / "out", "--weights", weights, "--save-rain") == 2
    assert "would both write" in capsys.readouterr().err
    (photos / "a_rain.png").unlink()
    assert _snapshot(photos) == before
    # OUTPUT inside INPUT: earlier results there are not taken as inputs
    assert run(photos, photos / "derained", "--weights", weights) == 0
    assert run(photos, photos / "derained", "--weights", weights, "--overwrite") == 0
    assert not (photos / "derained" / "derained").exists()
    assert {p: b for p, b in _snapshot(photos).items() if "derained" not in p.parts} == before


def test_missing_inputs_and_weights(tmp_path, photos, weights, monkeypatch, capsys):
    assert run(tmp_path / "nothing", tmp_path / "out", "--weights", weights) == 2
    assert run(str(tmp_path / "*.gif"), tmp_path / "out", "--weights", weights) == 2
    assert run(photos, tmp_path / "out", "--weights", weights, "--tile", "32", "--tile-overlap", "32") == 2
    assert "smaller than the tile" in capsys.readouterr().err
    monkeypatch.setattr(api, "DEFAULT_WEIGHTS", tmp_path / "none" / "mgid_embedded.safetensors")
    assert run(photos, tmp_path / "out") == 2
    assert "mgid train" in capsys.readouterr().err
    monkeypatch.setattr(api, "DEFAULT_WEIGHTS", weights)  # no --weights: the shipped ones
    assert run(photos / "a.png", tmp_path / "out") == 0


def test_bench_passes_arguments_through(monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(bench_cli.subprocess, "call", lambda argv, **kwargs: calls.append((argv, kwargs)) or 0)
    assert cli.main(["bench", "--quick", "--device", "cpu", "-h"]) == 0
    argv, kwargs = calls[0]
    assert argv[1:3] == ["-m", bench_cli.BENCH_MODULE] and argv[3:] == ["--quick", "--device", "cpu", "-h"]
    root = bench_cli.bench_source_tree()
    assert root is not None and (root / "benchmarks" / "bench_ops.py").is_file()  # in the source tree
    assert kwargs["env"]["PYTHONPATH"].split(os.pathsep)[0] == str(root)
    monkeypatch.setattr(bench_cli, "bench_source_tree", lambda: None)  # a normal install, run outside a checkout
    assert cli.main(["bench"]) == 2
    assert "source tree only" in capsys.readouterr().err


def test_photo_keeps_its_metadata_upright(tmp_path, weights):
    """A phone JPEG (EXIF orientation 6, camera make and model, an ICC profile) and a PNG with an ICC profile."""
    from PIL import Image, ImageCms

    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    exif = Image.Exif()
    exif[0x010F], exif[0x0110], exif[0x0112] = "Canon", "EOS R5", 6  # Make, Model, Orientation
    rgb = np.random.default_rng(0).integers(0, 256, (24, 40, 3), dtype=np.uint8)
    (tmp_path / "in").mkdir()
    Image.fromarray(rgb).save(tmp_path / "in" / "phone.jpg", exif=exif, icc_profile=icc, quality=95)
    Image.fromarray(rgb).save(tmp_path / "in" / "scan.png", icc_profile=icc)
    assert run(tmp_path / "in", tmp_path / "out", "--weights", weights) == 0
    with Image.open(tmp_path / "out" / "phone.jpg") as out:
        assert out.info["icc_profile"] == icc
        assert out.getexif()[0x010F] == "Canon" and out.getexif()[0x0112] == 1  # upright: shown as it is
        assert out.size == (24, 40)  # (width, height): the 24x40 stored pixels were turned on read
    with Image.open(tmp_path / "out" / "scan.png") as out:
        assert out.info["icc_profile"] == icc and out.size == (40, 24)


def test_suffix_and_jpeg_quality(tmp_path, photos, weights, capsys):
    assert run(photos, tmp_path / "out", "--weights", weights, "--suffix", "_derained", "--save-rain") == 0
    names = sorted(str(p.relative_to(tmp_path / "out")) for p in (tmp_path / "out").rglob("*") if p.is_file())
    assert names == ["a_derained.png", "a_derained_rain.png", "b_derained.jpg", "b_derained_rain.png",
                     "sub/c_derained.png", "sub/c_derained_rain.png"]
    sizes = {}
    for q in ("10", "95"):
        assert run(photos / "b.jpg", tmp_path / f"q{q}", "--weights", weights, "--jpeg-quality", q) == 0
        sizes[q] = (tmp_path / f"q{q}" / "b.jpg").stat().st_size
    assert run(photos / "b.jpg", tmp_path / "default", "--weights", weights) == 0
    assert sizes["10"] < sizes["95"] == (tmp_path / "default" / "b.jpg").stat().st_size  # default: 95
    capsys.readouterr()
    for bad in ("0", "101"):
        assert run(photos, tmp_path / "bad", "--weights", weights, "--jpeg-quality", bad) == 2
        err = capsys.readouterr().err
        assert err == f"mgid derain: error: --jpeg-quality must be from 1 to 100, got {bad}\n"
    assert not (tmp_path / "bad").exists()
    assert run(photos / "a.png", tmp_path / "v.mp4", "--suffix", "_x") == 2  # a video is named by OUTPUT
    assert "apply to images" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------
# issue 27 part 4: animated images, --opset, nothing scored


def test_animated_images_are_skipped_saying_so_not_cut_to_a_frame(tmp_path, photos, weights, capsys):
    from tests.data.test_image_header import FRAMES, animated

    animated(photos / "anim.webp")
    animated(photos / "anim_apng.png")
    assert run(photos, tmp_path / "out", "--weights", weights) == 1  # the still photos de-rained, two skipped
    err = capsys.readouterr().err
    assert f"anim.webp is an animated WebP with {FRAMES} frames" in err
    assert f"anim_apng.png is an animated PNG (APNG) with {FRAMES} frames" in err and "mgid derain FRAMES_FOLDER" in err
    written = sorted(p.name for p in (tmp_path / "out").rglob("*") if p.is_file())
    assert written == ["a.png", "b.jpg", "c.png"]


def test_export_refuses_an_opset_outside_the_exporters_range_in_one_line(tmp_path, monkeypatch, capsys):
    import mgid.derain.onnx_export as export

    def no_work(*_args):
        raise AssertionError("the export started before its opset was checked")

    monkeypatch.setattr(export, "_resolve_net", no_work)
    for opset in ("5", "10", "26", "-1"):
        out = tmp_path / f"m{opset}.onnx"
        assert cli.main(["export", "--onnx", str(out), "--opset", opset]) == 2
        err = capsys.readouterr().err
        assert err == (f"mgid export: error: ONNX opset {opset} is not supported: the exporters write opsets 18 to 25 "
                       f"(dynamo) and 11 to 17 (TorchScript); pass one of those, or no opset for the exporter's "
                       f"default; nothing was written\n")
        assert not out.exists()
    with pytest.raises(ValueError, match="the dynamo exporter writes opsets 18 to 25"):
        export.export_onnx(None, tmp_path / "x.onnx", 17, exporter="dynamo")
    with pytest.raises(ValueError, match="the torchscript exporter writes opsets 11 to 20"):
        export.export_onnx(None, tmp_path / "x.onnx", 21, exporter="torchscript")
    assert export.opset_exporter(13) == "torchscript" and export.opset_exporter(25) == "auto"
    assert not list(tmp_path.iterdir())
    with pytest.raises(SystemExit):
        cli.main(["export", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "ai.onnx opset: 18 to 25 (the dynamo exporter), or 11 to 17 (written by the TorchScript exporter)" in help_text


def test_evaluate_with_nothing_scored_is_one_error_line_without_a_summary(tmp_path, capsys):
    rng = np.random.default_rng(0)
    write_image(tmp_path / "pred" / "a.png", rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
    write_image(tmp_path / "gt" / "a.png", rng.integers(0, 256, (40, 32, 3), dtype=np.uint8))  # another size
    write_image(tmp_path / "pred" / "b.png", rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))  # no partner
    assert cli.main(["evaluate", "--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt"), "--quiet"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "nan" not in captured.err and "PSNR" not in captured.err
    assert captured.err == (f"mgid evaluate: error: no pair could be scored between {tmp_path / 'pred'} and "
                            f"{tmp_path / 'gt'}: 1 pair(s) skipped (a.png: size 32x32 differs from the target's "
                            f"32x40); 1 prediction(s) without a target (b.png)\n")
    assert not (tmp_path / "pred" / "metrics.csv").exists()


def test_one_handler_reports_mgid_and_os_errors_and_lets_bugs_through(monkeypatch, capsys):
    """`run_command`: an MgidError or OSError is one line and exit code 2; anything else keeps its traceback."""
    import mgid.cli.info as info_cli
    from mgid.errors import InputError

    def raising(error):
        def run(args):
            raise error
        return run

    monkeypatch.setattr(info_cli, "run", raising(InputError("the value is wrong")))
    assert cli.main(["info"]) == 2
    assert capsys.readouterr().err == "mgid info: error: the value is wrong\n"
    monkeypatch.setattr(info_cli, "run", raising(PermissionError(13, "Permission denied", "x.png")))
    assert cli.main(["info"]) == 2
    assert capsys.readouterr().err.startswith("mgid info: error: [Errno 13] Permission denied")
    monkeypatch.setattr(info_cli, "run", raising(RuntimeError("a kernel bug")))
    with pytest.raises(RuntimeError, match="a kernel bug"):
        cli.main(["info"])
    monkeypatch.setattr(info_cli, "run", raising(ValueError("a library's own ValueError")))
    with pytest.raises(ValueError, match="library"):
        cli.main(["info"])


def test_every_command_module_registers_run_and_prog():
    """One module per command: each adds its parser with ``run`` and ``prog``."""
    import argparse
    import importlib

    for name, module in cli.COMMANDS.items():
        parser = argparse.ArgumentParser(prog="mgid")
        importlib.import_module(module).register(parser.add_subparsers(dest="command"))
        sub = parser._subparsers._group_actions[0].choices[name]
        defaults = sub._defaults if name != "data" else sub._subparsers._group_actions[0].choices["synth"]._defaults
        assert callable(defaults["run"]) and defaults["prog"].startswith("mgid " + name), name

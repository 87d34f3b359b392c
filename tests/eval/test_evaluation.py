"""``mgid evaluate`` and `mgid.eval.scoring`: pairing layouts, scores, CSV/JSON outputs, --data with a model."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

import mgid
import mgid.cli as cli
import mgid.derain.derainer as api
from mgid.data import write_image
from mgid.eval.metrics import psnr, ssim
from mgid.eval.scoring import evaluate_folders, evaluate_model

RNG = np.random.default_rng(0)


def _img(h: int = 24, w: int = 32) -> np.ndarray:
    return RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)


def _noisy(a: np.ndarray, amount: int = 20) -> np.ndarray:
    return np.clip(a.astype(int) + RNG.integers(-amount, amount + 1, a.shape), 0, 255).astype(np.uint8)


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_pred_keeping_rainy_names_pairs_with_norain(tmp_path, capsys):
    gt, pred = tmp_path / "norain", tmp_path / "pred"
    clean = {i: _img() for i in (1, 2, 12)}
    for i, c in clean.items():
        write_image(gt / f"norain-{i}.png", c)
    write_image(pred / "rain-12.png", _noisy(clean[12]))  # kept the rainy name
    write_image(pred / "rain-001.png", _noisy(clean[1]))  # zero-padded number
    write_image(pred / "extra.png", _img())  # no partner
    report = evaluate_folders(pred, gt)
    assert [(s.name, s.target) for s in report.scores] == [("rain-001.png", "norain-1.png"),
                                                           ("rain-12.png", "norain-12.png")]
    assert [p.name for p in report.unmatched_predictions] == ["extra.png"]
    assert [p.name for p in report.unmatched_targets] == ["norain-2.png"]
    from mgid.data import read_image
    s12 = next(s for s in report.scores if s.name == "rain-12.png")
    assert s12.psnr == pytest.approx(psnr(read_image(pred / "rain-12.png"), clean[12]))
    assert s12.ssim == pytest.approx(ssim(read_image(pred / "rain-12.png"), clean[12]))

    out = tmp_path / "scores"
    argv = ["evaluate", "--pred", str(pred), "--gt", str(gt), "--out", str(out), "--quiet"]
    assert cli.main(argv) == 1  # two files without a partner: not a complete evaluation
    captured = capsys.readouterr()
    printed = captured.out
    assert "Y-channel" in printed and "over 2 image(s)" in printed and "extra.png" in printed
    assert "2 file(s) without a partner" in captured.err and "--allow-missing" in captured.err
    assert cli.main(argv + ["--allow-missing", "--overwrite"]) == 0
    rows = _read_csv(out / "metrics.csv")
    assert [r["name"] for r in rows] == ["rain-001.png", "rain-12.png"] and set(rows[0]) == {"name", "target",
                                                                                            "psnr", "ssim"}
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["count"] == 2 and summary["channel"] == "y"
    assert summary["psnr"] == pytest.approx(np.mean([s.psnr for s in report.scores]))
    assert summary["ssim"] == pytest.approx(np.mean([s.ssim for s in report.scores]))
    assert summary["unmatched_targets"] == [str(gt / "norain-2.png")]


def test_same_name_layout_rgb_identical_and_default_out(tmp_path):
    gt, pred = tmp_path / "target", tmp_path / "pred"
    a = _img()
    write_image(gt / "0001.png", a)
    write_image(pred / "0001.png", a)  # identical: inf / 1.0
    assert cli.main(["evaluate", "--pred", str(pred), "--gt", str(gt), "--rgb", "--quiet"]) == 0
    summary = json.loads((pred / "metrics.json").read_text())  # default --out: the --pred folder
    assert summary["psnr"] == "inf" and summary["ssim"] == pytest.approx(1.0) and summary["channel"] == "rgb"
    assert _read_csv(pred / "metrics.csv")[0]["psnr"] == "inf"
    assert evaluate_folders(pred, gt, channel="rgb").scores[0].psnr == math.inf


def test_unreadable_and_mismatched_pairs_are_skipped(tmp_path, capsys):
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    a, b = _img(), _img()
    write_image(gt / "a.png", a)
    write_image(pred / "a.png", _noisy(a))
    write_image(gt / "b.png", b)
    write_image(pred / "b.png", _img(16, 16))  # other size
    write_image(gt / "c.png", _img())
    (pred / "c.png").write_bytes(b"corrupt")
    assert cli.main(["evaluate", "--pred", str(pred), "--gt", str(gt), "--quiet"]) == 1
    out = capsys.readouterr().out
    assert "skipped" in out and "b.png" in out and "c.png" in out and "over 1 image(s)" in out
    assert cli.main(["evaluate", "--pred", str(pred)]) == 2  # --gt missing
    assert cli.main(["evaluate", "--pred", str(tmp_path / "none"), "--gt", str(gt)]) == 2


@pytest.mark.parametrize("layout", [("rain", "norain"), ("input", "target")])
def test_data_mode_derains_and_scores_inputs(tmp_path, weights, layout, monkeypatch, capsys):
    data = tmp_path / "set"
    rainy_name, clean_name = ("rain-{}.png", "norain-{}.png") if layout[0] == "rain" else ("{}.png", "{}.png")
    for i in (1, 2):
        c = _img(24, 24)
        write_image(data / layout[1] / clean_name.format(i), c)
        write_image(data / layout[0] / rainy_name.format(i), _noisy(c, 60))
    out = tmp_path / "eval"
    argv = ["evaluate", "--data", str(data), "--out", str(out), "--device", "cpu", "--quiet"]
    assert cli.main(argv + ["--weights", str(weights), "--tile", "16", "--tile-overlap", "8"]) == 0
    assert "mgid evaluate: on cpu, " in capsys.readouterr().err  # the arithmetic auto chose, and why
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["count"] == 2 and summary["weights"] == str(weights)
    assert summary["psnr_gain"] == pytest.approx(summary["psnr"] - summary["psnr_input"])
    rows = _read_csv(out / "metrics.csv")
    assert set(rows[0]) == {"name", "target", "psnr", "ssim", "psnr_input", "ssim_input"}
    assert sorted(p.name for p in (out / "derained").iterdir()) == [rainy_name.format(i) for i in (1, 2)]
    # the same numbers through the API; --data without --weights uses the shipped weights
    report = evaluate_model(mgid.load_model(weights, "cpu", tile=16, overlap=8), data)
    assert [s.psnr for s in report.scores] == pytest.approx([float(r["psnr"]) for r in rows], abs=1e-5)
    monkeypatch.setattr(api, "DEFAULT_WEIGHTS", weights)
    assert cli.main(argv) == 2  # the scores and images of the first run are kept
    assert "already exists; pass --overwrite" in capsys.readouterr().err
    assert cli.main(argv + ["--overwrite"]) == 0


def test_data_mode_errors(tmp_path, weights, capsys):
    (tmp_path / "flat").mkdir()
    assert cli.main(["evaluate", "--data", str(tmp_path / "flat"), "--weights", str(weights)]) == 2
    assert "rain/ + norain/" in capsys.readouterr().err
    assert cli.main(["evaluate", "--data", str(tmp_path), "--pred", str(tmp_path), "--gt", str(tmp_path)]) == 2
    assert cli.main(["evaluate", "--pred", str(tmp_path), "--gt", str(tmp_path), "--weights", str(weights)]) == 2


def test_outputs_are_checked_first_and_scores_printed_before_writing(tmp_path, weights, monkeypatch, capsys):
    """An existing metrics.json is not replaced, an --out that cannot be written is refused before any de-raining,
    and when the write fails after scoring the scores are on the screen and the error is one line."""
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    a = _img()
    write_image(gt / "a.png", a)
    write_image(pred / "a.png", _noisy(a))
    out = tmp_path / "out"
    out.mkdir()
    (out / "metrics.json").write_text("earlier scores")
    argv = ["evaluate", "--pred", str(pred), "--gt", str(gt), "--quiet"]
    assert cli.main(argv + ["--out", str(out)]) == 2
    assert "metrics.json already exists; pass --overwrite" in capsys.readouterr().err
    assert (out / "metrics.json").read_text() == "earlier scores"
    (tmp_path / "file").write_text("x")
    data = tmp_path / "set"
    write_image(data / "rain" / "rain-1.png", _noisy(a))
    write_image(data / "norain" / "norain-1.png", a)

    def no_model(*_args, **_kwargs):
        raise AssertionError("the weights were loaded before --out was checked")

    monkeypatch.setattr(api, "load_model", no_model)
    for bad in (tmp_path / "file" / "scores", Path("/proc/mgid-no-such-dir")):
        for extra in (["--pred", str(pred), "--gt", str(gt)], ["--data", str(data), "--weights", str(weights)]):
            assert cli.main(["evaluate", *extra, "--out", str(bad), "--quiet"]) == 2
            err = capsys.readouterr().err
            assert "cannot write" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1

    def disk_full(*_args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("mgid.eval.scoring.write_atomic", disk_full)
    assert cli.main(argv + ["--out", str(tmp_path / "new")]) == 2
    captured = capsys.readouterr()
    assert "over 1 image(s)" in captured.out  # the scores reached the screen
    assert "No space left on device" in captured.err and "printed above" in captured.err

"""One scoring loop (`mgid.eval.scoring.score_pairs`) behind training validation, ``mgid evaluate`` and
``mgid heldout``: the numbers equal the loops each of them had before, and agree across the three."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mgid.data import EmbeddedDataConfig, EmbeddedPairedSet, to_uint8, write_image
from mgid.derain.derainer import Derainer
from mgid.eval.heldout import MEDIAN3, RAINY, evaluate_heldout, median3x3
from mgid.eval.metrics import psnr, rgb_to_y, ssim
from mgid.eval.scoring import ImageScore, Pair, Scores, evaluate_model, mean_scores, net_derain_fn, score_pairs
from mgid.models import MGIDNet, ModelConfig
from mgid.train.validation import validate

SMALL = EmbeddedDataConfig(paired_size=32, paired_count=2)
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def net() -> MGIDNet:
    torch.manual_seed(0)
    return MGIDNet(ModelConfig(channels=8, memory_items=4)).eval()


def test_validation_equals_the_former_training_loop(net):
    paired = EmbeddedPairedSet(config=SMALL, rain="heavy")
    rows = []
    with torch.no_grad():  # the loop training.validate ran before it called score_pairs
        for i in range(len(paired)):
            item = paired[i]
            rainy, clean = to_uint8(item["rainy"]), to_uint8(item["clean"])
            out = to_uint8(net.derain(item["rainy"][None])[0])
            rows.append((psnr(out, clean), ssim(out, clean), psnr(rainy, clean), ssim(rainy, clean)))
    want = [float(np.mean([r[k] for r in rows])) for k in range(4)]
    got = validate(net, paired, CPU)
    assert isinstance(got, Scores)  # the evaluations' one result type
    assert [got.psnr, got.ssim, got.psnr_input, got.ssim_input] == want and got.count == 2  # exactly
    assert got.brightness_shift is None
    assert list(got.to_dict()) == ["psnr", "ssim", "psnr_input", "ssim_input", "count"]  # checkpoint / jsonl keys
    assert got.describe().startswith(f"rainy input {want[2]:.2f} dB / {want[3]:.4f} -> de-rained {want[0]:.2f} dB")


def test_heldout_equals_the_former_loop_and_training_validation(net):
    model = net_derain_fn(net, CPU)
    table = evaluate_heldout({"net": model}, sets=["streaks"], config=SMALL)["streaks"]
    paired = EmbeddedPairedSet(config=SMALL, rain="streaks")
    pairs = [paired.images(i) for i in range(len(paired))]

    def former(outputs):  # mgid.eval.heldout._score before it called score_pairs
        rows = []
        for out, (_, clean) in zip(outputs, pairs):
            shift = float(rgb_to_y(out, rounded=False).mean() - rgb_to_y(clean, rounded=False).mean())
            rows.append((psnr(out, clean), ssim(out, clean), shift))
        return [float(np.mean(c)) for c in zip(*rows)]

    for name, outputs in ((RAINY, [r for r, _ in pairs]), (MEDIAN3, [median3x3(r) for r, _ in pairs]),
                          ("net", [model(r) for r, _ in pairs])):
        got = table[name]
        assert isinstance(got, Scores) and [got.psnr, got.ssim, got.brightness_shift] == former(outputs)
        assert list(got.to_dict()) == ["psnr", "ssim", "brightness_shift", "count"]  # heldout.json keys
    # the same loop: training validation's numbers on the same set are the held-out table's
    v = validate(net, paired, CPU)
    assert (v.psnr, v.ssim, v.psnr_input, v.ssim_input) == (table["net"].psnr, table["net"].ssim,
                                                            table[RAINY].psnr, table[RAINY].ssim)


def test_evaluate_model_equals_the_former_loop_and_validation(net, tmp_path):
    paired = EmbeddedPairedSet(config=SMALL, rain="perspective")
    for i in range(len(paired)):
        rainy, clean = paired.images(i)
        write_image(tmp_path / "rain" / f"rain-{i}.png", rainy)
        write_image(tmp_path / "norain" / f"norain-{i}.png", clean)
    derainer = Derainer(net, "cpu", precision="fp32")
    report = evaluate_model(derainer, tmp_path)
    for i, row in enumerate(report.scores):
        rainy, clean = paired.images(i)
        out = derainer.derain(rainy)
        assert (row.psnr, row.ssim, row.psnr_input, row.ssim_input) == (psnr(out, clean), ssim(out, clean),
                                                                        psnr(rainy, clean), ssim(rainy, clean))
    means = report.means()
    summary = report.summary()
    assert isinstance(means, Scores) and (summary["psnr"], summary["psnr_input"]) == (means.psnr, means.psnr_input)
    v = validate(net, paired, CPU)  # the bare network in fp32 and the fp32 Derainer agree here
    assert means.psnr_input == v.psnr_input and means.psnr == pytest.approx(v.psnr, abs=1e-6)


def test_score_pairs_skips_or_raises_and_empty_means():
    a = np.zeros((16, 16, 3), np.uint8)
    bad = Pair("b", "b", lambda: (a, np.zeros((16, 12, 3), np.uint8)), source="b.png")
    good = Pair("g", "g", lambda: (a, a))
    skipped: list = []
    rows = score_pairs([bad, good], skipped=skipped, with_input=True, brightness=True)
    assert [r.name for r in rows] == ["g"] and skipped[0][0] == "b.png" and "differs" in skipped[0][1]
    assert rows[0] == ImageScore("g", "g", math.inf, 1.0, math.inf, 1.0, 0.0)
    with pytest.raises(ValueError, match="differs"):
        score_pairs([bad])
    empty = mean_scores([])
    assert empty.count == 0 and math.isnan(empty.psnr) and empty.psnr_input is None

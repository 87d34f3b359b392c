"""benchmarks.bench_public: its main() on tiny fake paired sets (both layouts), and on ../shared/benchmarks/rain12
when that folder exists (a user's clone has none: the test then skips and says why).

The benchmark ships with the source tree (not the package): ``benchmarks`` imports from the repository root.
One torch thread; the fake sets take seconds, rain12 about 15 s.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import benchmarks.bench_public as bench
from mgid.checkpoint import save_checkpoint
from mgid.data import read_image, write_image
from mgid.eval.metrics import score
from mgid.models import MGIDNet, ModelConfig

REPO = Path(__file__).resolve().parents[2]
RAIN12 = REPO.parent / "shared" / "benchmarks" / "rain12"
TINY = ModelConfig(channels=8, memory_items=4)



def _fake_set(root: Path, rainy_dir: str, clean_dir: str, rainy_name: str, clean_name: str, seed: int) -> Path:
    """Two 32x48 pairs: smooth clean images, rainy = clean plus bright streaks (so rain raises the mean Y)."""
    rng = np.random.default_rng(seed)
    for i in (1, 2):
        clean = np.clip(rng.normal(100, 20, (32, 48, 3)), 0, 255).astype(np.uint8)
        rainy = clean.copy()
        rainy[:, rng.choice(48, 6, replace=False)] = 230
        write_image(root / rainy_dir / rainy_name.format(i), rainy)
        write_image(root / clean_dir / clean_name.format(i), clean)
    return root


def _report(out: Path) -> tuple[dict, str]:
    files = sorted(out.glob("bench_public_*.json"))
    assert len(files) == 1, list(out.iterdir())
    return json.loads(files[0].read_text()), files[0].with_suffix(".md").read_text()


def test_fake_sets_both_layouts_several_weights(tmp_path):
    torch.manual_seed(0)
    tiny = save_checkpoint(tmp_path / "w", MGIDNet(TINY), None, {"config": {"model": TINY.to_dict()}},
                           names=("tiny",))["model"]
    a = _fake_set(tmp_path / "sets" / "mine", "rain", "norain", "rain-{}.png", "norain-{}.png", 0)
    b = _fake_set(tmp_path / "sets" / "rain12", "input", "target", "{}.png", "{}.png", 1)
    out = tmp_path / "out"
    argv = ["--sets", str(a), str(b), "--weights", str(REPO / "mgid" / "weights" / "mgid_embedded.safetensors"),
            str(tiny), "--names", "shipped", "tiny", "--device", "cpu", "--out", str(out), "--quiet",
            "--picture", str(tmp_path / "pics")]
    assert bench.main(argv) == 0
    report, md = _report(out)

    assert report["settings"]["precision"] == "fp32" and report["settings"]["self_ensemble"] is False
    assert report["command"].startswith("python -m benchmarks.bench_public --sets ")
    assert report["environment"]["cpu"]["line"] in md and report["wall_s"] > 0
    assert [s["name"] for s in report["sets"]] == ["mine", "rain12"]
    for s, root in zip(report["sets"], (a, b)):
        rows = {r["method"]: r for r in s["rows"]}
        assert s["pairs"] == 2 and not s["skipped"] and not s["unmatched"]
        # the rainy input row: the means of mgid.eval.metrics on the files themselves
        rainy_dir, clean_dir = ("rain", "norain") if root == a else ("input", "target")
        rainy_files = sorted((root / rainy_dir).iterdir())
        clean_files = sorted((root / clean_dir).iterdir())
        direct = [score(read_image(r), read_image(c)) for r, c in zip(rainy_files, clean_files)]
        assert rows["rainy input"]["psnr"] == pytest.approx(np.mean([p for p, _ in direct]), abs=1e-4)
        assert rows["rainy input"]["ssim"] == pytest.approx(np.mean([q for _, q in direct]), abs=1e-5)
        assert rows["rainy input"]["brightness_shift"] > 0  # the streaks brighten
        for name in ("shipped", "tiny"):
            r = rows[name]
            assert math.isfinite(r["psnr"]) and 0 < r["ssim"] <= 1 and r["count"] == 2
            assert r["gain_db"] == pytest.approx(r["psnr"] - rows["rainy input"]["psnr"], abs=1e-3)
            assert r["seconds_per_image"] > 0 and r["brightness_shift"] is not None
        assert s["picture"]["bytes"] < bench.PICTURE_MAX_BYTES
        assert Path(s["picture"]["file"]).is_file() and s["picture"]["columns"] == ["rainy", "shipped", "tiny", "clean"]
    # published results are listed for a folder named as a published set, with their sources, and not for others
    published = [r for r in report["sets"][1]["rows"] if r["kind"] not in ("input", "mgid")]
    assert [r["method"].split()[0] for r in published] == ["GMM", "DDN", "SIRR", "JORDER", "PReNet"]
    assert all(r["source"] for r in published) and len(report["sets"][0]["rows"]) == 3
    assert "| PReNet (Ren et al. 2019) | 36.66 | 0.9610 |" in md and "PReNet README (csdwren/PReNet)" in md
    assert "## mine (2 pairs)" in md and "| tiny |" in md


def test_errors(tmp_path, capsys):
    (tmp_path / "flat").mkdir()
    assert bench.main(["--sets", str(tmp_path / "flat"), "--out", str(tmp_path)]) == 2
    assert "bench_public: error:" in capsys.readouterr().err
    assert not list(tmp_path.glob("bench_public_*"))
    with pytest.raises(SystemExit):
        bench.main(["--limit", "0"])


@pytest.mark.skipif(not RAIN12.is_dir(), reason=f"{RAIN12} not found: the public test sets are in ../shared/benchmarks "
                                                "beside the repository only (never in a clone)")
def test_rain12_input_score_matches_the_shared_readme(tmp_path):
    """The full 12 pairs in fp32 (about 15 s on one thread): the rainy input scores what the shared README
    measured (30.13 dB / 0.855), the shipped weights score finite values, the published rows are listed."""
    assert bench.main(["--sets", str(RAIN12), "--device", "cpu", "--out", str(tmp_path), "--quiet"]) == 0
    report, md = _report(tmp_path)
    (s,) = report["sets"]
    rows = {r["method"]: r for r in s["rows"]}
    assert s["pairs"] == 12 and report["settings"]["precision"] == "fp32"
    assert rows["rainy input"]["psnr"] == pytest.approx(30.13, abs=0.01)
    assert rows["rainy input"]["ssim"] == pytest.approx(0.855, abs=0.0005)
    shipped = rows["shipped weights"]
    assert math.isfinite(shipped["psnr"]) and math.isfinite(shipped["ssim"]) and shipped["count"] == 12
    assert "PReNet (Ren et al. 2019)" in rows and "## rain12 (12 pairs)" in md

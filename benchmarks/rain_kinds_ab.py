"""Each kind of rain the renderer gained (issue 18), measured on the project's own held-out sets.

For every variant a short fine-tune of the same starting weights runs (``train.py --config cpu`` with the
variant's rain, same seed, same steps and schedule, BatchNorm recalibrated at the end), then all of them are
scored together with ``mgid heldout --precision fp32 --no-baselines`` and written as one table: the change
each kind makes against the control (the cpu recipe's rain), set by set, and the rain coverage of each
variant (share of pixels with rain above 0.05 in one frame, and in both frames of a pair).

    OMP_NUM_THREADS=1 python -m benchmarks.rain_kinds_ab --init mgid/weights/mgid_embedded.safetensors

Never run on the public benchmarks: the decision which kinds to keep is made here, on held-out data only.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.harness import REPO, RESULTS, environment, log, report_base, write_report
from mgid.data.synthetic_rain import RainConfig, rain_coverage, render_rain_layer

#: Variant name -> overrides of ``embedded.rain`` (the long recipe's settings, one kind at a time, then all).
VARIANTS: dict[str, dict[str, object]] = {
    "control": {},
    "directions 1-3": {"directions_range": (1, 3)},
    "long 0.3": {"long_probability": 0.3},
    "drizzle 0.3": {"drizzle_probability": 0.3},
    "near 0.3": {"near_probability": 0.3},
    "all four": {"directions_range": (1, 3), "long_probability": 0.3, "drizzle_probability": 0.3,
                 "near_probability": 0.3},
}


def flags(overrides: dict[str, object]) -> list[str]:
    """``train.py`` flags that set ``embedded.rain`` fields."""
    out: list[str] = []
    for key, value in overrides.items():
        values = value if isinstance(value, tuple) else (value,)
        out += [f"--embedded.rain.{key}", *map(str, values)]
    return out


def coverage(cfg: RainConfig, frames: int = 200, size: int = 128) -> dict[str, float]:
    """Mean share of pixels rainy (> 0.05) in one frame and in both frames of a pair of ``cfg``'s rain, ``size`` x
    ``size`` (the illumination settings do not change the rain layer)."""
    rng = np.random.default_rng(0)
    one, both = [], []
    for _ in range(frames // 2):
        a, b = render_rain_layer(size, size, rng, cfg), render_rain_layer(size, size, rng, cfg)
        one += [rain_coverage(a), rain_coverage(b)]
        both.append(rain_coverage(np.minimum(a, b)))
    return {"one_frame": float(np.mean(one)), "both_frames": float(np.mean(both))}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.rain_kinds_ab", description=__doc__.split("\n\n")[0])
    p.add_argument("--init", required=True, help="weights every variant starts from")
    p.add_argument("--steps", type=int, default=500, help="fine-tuning steps per variant")
    p.add_argument("--crop", type=int, default=64, help="crop size")
    p.add_argument("--runs", default="runs/rain_kinds_ab", help="where the variants' runs go")
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args(argv)
    runs = Path(args.runs)
    env = environment()
    started = time.perf_counter()
    weights, seconds = [], {}
    for name in args.variants:
        out = runs / name.replace(" ", "_")
        cmd = [sys.executable, str(REPO / "train.py"), "--config", "cpu", "--out", str(out), "--overwrite",
               "--init_weights", args.init, "--max_steps", str(args.steps), "--crop_size", str(args.crop),
               "--optim.warmup_steps", "50", "--val_every", "1000", "--image_every", "100000",
               "--checkpoint_every", "100000", *flags(VARIANTS[name])]
        log(f"{name}: {' '.join(cmd)}")
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        seconds[name] = round(time.perf_counter() - t0, 1)
        weights.append(str(out / "checkpoints" / "last.safetensors"))
    score_dir = runs / "heldout"
    cmd = [sys.executable, "-m", "mgid", "heldout", "--precision", "fp32", "--no-baselines", "--out", str(score_dir),
           "--weights", *weights, "--names", *args.variants]
    log(" ".join(cmd))
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    scores = json.loads((score_dir / "heldout.json").read_text())
    cov = {name: coverage(RainConfig(**VARIANTS[name])) for name in args.variants}
    sets = list(scores["sets"])

    def psnr(method: str, kind: str) -> float:
        return float(scores["sets"][kind][method]["psnr"])

    lines = [
        "# Each kind of rain, measured on the held-out sets (issue 18)", "",
        f"CPU: {env['cpu']['line']}; commit {env['git'].get('commit')}; {args.steps} steps of fine-tuning per "
        f"variant from `{args.init}` at {args.crop}x{args.crop}, batch 4, then BatchNorm recalibration; "
        f"scored with `mgid heldout --precision fp32` (24 images a set, Y-channel PSNR). Command: "
        f"`python -m benchmarks.rain_kinds_ab --init {args.init} --steps {args.steps} --crop {args.crop}`.", "",
        "| variant | " + " | ".join(f"{s} dB (vs control)" for s in sets)
        + " | mean change | rainy px, one frame | rainy px, both frames | train s |",
        "|---|" + "---|" * (len(sets) + 4),
    ]
    for name in args.variants:
        deltas = [psnr(name, s) - psnr("control", s) for s in sets] if "control" in args.variants else []
        cells = [f"{psnr(name, s):.2f} ({d:+.2f})" for s, d in zip(sets, deltas)] if deltas else \
            [f"{psnr(name, s):.2f}" for s in sets]
        mean = f"{np.mean(deltas):+.2f}" if deltas else "-"
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {mean} | {cov[name]['one_frame']:.3f} | "
                     f"{cov[name]['both_frames']:.4f} | {seconds[name]} |")
    lines += ["", "Rainy input: " + ", ".join(f"{s} {psnr('rainy input', s):.2f} dB" for s in sets)
              + f". Wall time {time.perf_counter() - started:.0f} s.", ""]
    markdown = "\n".join(lines)
    result = {"environment": env, "args": vars(args), "variants": VARIANTS, "scores": scores, "coverage": cov,
              "train_seconds": seconds}
    json_path, md_path = write_report(report_base(args.out, "rain_kinds_ab"), result, markdown)
    print(markdown)
    log(f"wrote {md_path} and {json_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Photo folders and the benchmarks' kind of rain, each alone and together (issue 25), on every held-out set.

Four arms fine-tune the same starting weights at equal steps and seed (``train.py --config long`` from
``--init``: 128x128 crops, batch 4, warm-up then cosine, BatchNorm recalibrated at the end):

* ``embedded``: the long recipe's data (the bundled photos, procedural scenes, the streak renderer);
* ``photos``: + the photo folders of ``--photos`` as backgrounds (75 % of them; their held-out photos excluded);
* ``layer rain``: + the benchmarks' kind of rain (`mgid.data.layer_rain`) in half the frames;
* ``both``: photo folders and layer rain.

Then the starting weights and the four arms are scored together by ``mgid heldout --precision fp32
--no-baselines --photo-folders <each sub-folder of --photos>`` on the five embedded held-out sets (``perspective``
is a renderer none of the arms trains on) and one set per photo sub-folder (its held-out photos), and the table
is written with each arm's mean gain and the rain coverage of its rain (pixels rainy in one frame, and in both
frames of a pair). ``--skip-train`` scores runs already trained with the same commands (``--runs``).

    OMP_NUM_THREADS=1 python -m benchmarks.data_ablation --init mgid/weights/mgid_embedded.safetensors \\
        --photos ../shared/photos --steps 1000

Never run on the public benchmarks: the arm is chosen here, on held-out data only.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.harness import REPO, RESULTS, environment, log, report_base, write_report
from benchmarks.rain_kinds_ab import coverage
from mgid.config.train_config import resolve_config

#: Share of frames rendered by the layer renderer in the arms with layer rain.
LAYER_SHARE = 0.5
#: Arm name -> (uses the photo folders, ``embedded.rain`` overrides).
ARMS: dict[str, tuple[bool, dict[str, object]]] = {
    "embedded": (False, {}),
    "photos": (True, {}),
    "layer rain": (False, {"layer_probability": LAYER_SHARE}),
    "both": (True, {"layer_probability": LAYER_SHARE}),
}


def train_command(arm: str, args: argparse.Namespace) -> list[str]:
    """The ``train.py`` command of one arm."""
    photos, rain = ARMS[arm]
    cmd = [sys.executable, str(REPO / "train.py"), "--config", "long", "--init_weights", args.init,
           "--max_steps", str(args.steps), "--optim.warmup_steps", "50", "--val_every", "0", "--val_count", "4",
           "--checkpoint_every", "250", "--seed", str(args.seed), "--out", str(run_dir(arm, args)), "--overwrite"]
    for key, value in rain.items():
        cmd += [f"--embedded.rain.{key}", str(value)]
    if photos:
        cmd += ["--embedded.photo_folders", str(args.photos)]
    return cmd


def run_dir(arm: str, args: argparse.Namespace) -> Path:
    return Path(args.runs) / arm.replace(" ", "_")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.data_ablation", description=__doc__.split("\n\n")[0])
    p.add_argument("--init", required=True, help="weights every arm starts from (also scored, as the baseline)")
    p.add_argument("--photos", required=True, type=Path, help="folder of clean photos (sub-folders become sets)")
    p.add_argument("--steps", type=int, default=1000, help="fine-tuning steps per arm [1000]")
    p.add_argument("--seed", type=int, default=0, help="seed of every arm [0]")
    p.add_argument("--runs", default="runs/data_ablation", help="where the arms' runs go")
    p.add_argument("--arms", nargs="+", choices=list(ARMS), default=list(ARMS))
    p.add_argument("--skip-train", action="store_true", help="score the runs already in --runs")
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args(argv)
    sub_folders = sorted(d for d in args.photos.iterdir() if d.is_dir()) if args.photos.is_dir() else []
    if not sub_folders:
        p.error(f"--photos {args.photos} has no sub-folders of photos")
    env = environment()
    started = time.perf_counter()
    seconds: dict[str, float] = {}
    for arm in args.arms:
        if args.skip_train:
            continue
        cmd = train_command(arm, args)
        log(f"{arm}: {' '.join(cmd)}")
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        seconds[arm] = round(time.perf_counter() - t0, 1)
    weights = [args.init] + [str(run_dir(arm, args) / "checkpoints" / "last.safetensors") for arm in args.arms]
    names = ["start"] + list(args.arms)
    score_dir = Path(args.runs) / "heldout"
    cmd = [sys.executable, "-m", "mgid", "heldout", "--precision", "fp32", "--no-baselines", "--out", str(score_dir),
           "--photo-folders", *map(str, sub_folders), "--weights", *weights, "--names", *names]
    log(" ".join(cmd))
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    scores = json.loads((score_dir / "heldout.json").read_text())
    sets = list(scores["sets"])
    long_rain = resolve_config("long").embedded.rain
    cov = {arm: coverage(dataclasses.replace(long_rain, **ARMS[arm][1])) for arm in args.arms}

    def gain(method: str, kind: str) -> float:
        return float(scores["sets"][kind][method]["psnr"]) - float(scores["sets"][kind]["rainy input"]["psnr"])

    def shift(method: str, kind: str) -> float:
        return float(scores["sets"][kind][method]["brightness_shift"])

    lines = [
        "# Photo folders and the benchmarks' kind of rain, alone and together (issue 25)", "",
        f"CPU: {env['cpu']['line']}; commit {env['git'].get('commit')}. {args.steps} steps per arm from "
        f"`{args.init}` (`train.py --config long`: 128x128 crops, batch 4, 50 warm-up steps then cosine, seed "
        f"{args.seed}, BatchNorm recalibrated at the end); photo folders: `{args.photos}` (75 % of the backgrounds, "
        f"10 photos per folder held out); layer rain in {LAYER_SHARE:.0%} of the frames. Scored with "
        "`mgid heldout --precision fp32` (24 images a set, Y-channel PSNR gain over the rainy input, dB; brightness "
        "shift in grey levels in brackets). Command: `python -m benchmarks.data_ablation --init "
        f"{args.init} --photos {args.photos} --steps {args.steps}`.", "",
        "| arm | " + " | ".join(sets) + " | mean gain | rainy px, one frame | both frames | train s |",
        "|---|" + "---|" * (len(sets) + 4),
    ]
    for name in names:
        cells = [f"{gain(name, s):+.2f} ({shift(name, s):+.1f})" for s in sets]
        mean = np.mean([gain(name, s) for s in sets])
        extra = (f"{cov[name]['one_frame']:.3f} | {cov[name]['both_frames']:.4f} | {seconds.get(name, '-')}"
                 if name in cov else "- | - | -")
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {mean:+.2f} | {extra} |")
    lines += ["", "Rainy input PSNR: " + ", ".join(f"{s} {scores['sets'][s]['rainy input']['psnr']:.2f} dB"
                                                  for s in sets) + f". Wall time {time.perf_counter() - started:.0f} s.",
              ""]
    markdown = "\n".join(lines)
    result = {"environment": env, "args": {k: str(v) for k, v in vars(args).items()},
              "arms": {k: {"photos": v[0], "rain": v[1]} for k, v in ARMS.items()}, "scores": scores,
              "coverage": cov, "train_seconds": seconds}
    json_path, md_path = write_report(report_base(args.out, "data_ablation"), result, markdown)
    print(markdown)
    log(f"wrote {md_path} and {json_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Learning curve of a training run: held-out PSNR/SSIM of every step checkpoint, and a picture.

Scores each ``RUN/checkpoints/step_XXXXXX.safetensors`` (written with ``--keep_step_checkpoints true``)
on the embedded held-out sets (`mgid.eval.heldout`; the same sets and metrics as ``mgid heldout``) and keeps
the results in ``RUN/learning_curve.json``, so a rerun scores only new checkpoints. ``--watch`` keeps
polling while the run trains (run it with ``nice`` beside the training job); ``--plot`` draws held-out
PSNR against steps, one line per set, with the rainy input as a dashed line; ``--previous`` draws the
curve of the run this one started from (its ``learning_curve.json``) first, and this run's steps after it.

    python -m tools.learning_curve --run runs/cpu --plot docs/images/learning_curve.png
    python -m tools.learning_curve --run runs/long --previous runs/cpu/learning_curve.json --plot curve.png
"""
from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

import torch

from mgid.derain.derainer import load_model
from mgid.eval.heldout import RAINY, evaluate_heldout

STEP_FILE = re.compile(r"step_(\d+)\.safetensors$")
CACHE = "learning_curve.json"
MODEL = "model"


def step_checkpoints(run: Path) -> dict[int, Path]:
    """``{step: path}`` of the run's step checkpoints."""
    found = {}
    for p in (run / "checkpoints").glob("step_*.safetensors"):
        m = STEP_FILE.search(p.name)
        if m and p.with_suffix(".json").is_file():
            found[int(m.group(1))] = p
    return dict(sorted(found.items()))


def load_cache(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {"count": None, "rainy": {}, "steps": {}}


def save_cache(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    tmp.replace(path)


def score_new(run: Path, count: int | None, device: str, photo_folders: list[str] | None = None) -> dict:
    """Score the step checkpoints not in the cache yet (on the held-out sets and one set per photo folder);
    returns the updated cache."""
    cache_path = run / CACHE
    data = load_cache(cache_path)
    folders = list(photo_folders or [])
    if data.get("count") != count or data.get("photo_folders", []) != folders:
        data = {"count": count, "photo_folders": folders, "rainy": {}, "steps": {}}
    for step, path in step_checkpoints(run).items():
        if str(step) in data["steps"]:
            continue
        table = evaluate_heldout({MODEL: load_model(path, device).derain}, count=count, baselines=False,
                                 photo_folders=folders)
        data["rainy"] = {s: {"psnr": row[RAINY].psnr, "ssim": row[RAINY].ssim} for s, row in table.items()}
        data["steps"][str(step)] = {s: {"psnr": row[MODEL].psnr, "ssim": row[MODEL].ssim,
                                        "brightness_shift": row[MODEL].brightness_shift} for s, row in table.items()}
        save_cache(cache_path, data)
        print(f"step {step}: " + ", ".join(f"{s} {v['psnr']:.2f} dB ({v['psnr'] - data['rainy'][s]['psnr']:+.2f})"
                                           for s, v in data["steps"][str(step)].items()), flush=True)
    return data


def plot(data: dict, out: Path, title: str, previous: dict | None = None) -> Path:
    """Held-out PSNR against steps for every set; the rainy input dashed in the same colour.

    ``previous``: the curve of the run ``data``'s run started from (same layout), drawn first with thin
    lines for the sets it has; ``data``'s steps are then counted from its last step.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = sorted(int(s) for s in data["steps"])
    before = sorted(int(s) for s in previous["steps"]) if previous else []
    offset = before[-1] if before else 0
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    for i, name in enumerate(data["rainy"]):
        colour = f"C{i}"
        if before and name in previous["rainy"]:
            ax.plot(before, [previous["steps"][str(s)][name]["psnr"] for s in before], "-", lw=1, color=colour)
        ax.plot([offset + s for s in steps], [data["steps"][str(s)][name]["psnr"] for s in steps], "-o", ms=3,
                color=colour, label=f"{name}: de-rained")
        ax.axhline(data["rainy"][name]["psnr"], ls="--", lw=1, color=colour, label=f"{name}: rainy input")
    if before:
        ax.axvline(offset, color="grey", lw=1, ls=":")
        ax.annotate("next stage starts", (offset, ax.get_ylim()[1]), fontsize=7, color="grey",
                    xytext=(3, -10), textcoords="offset points")
    ax.set_xlabel("training step")
    ax.set_ylabel("held-out PSNR, Y channel (dB)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2, loc="lower right")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.learning_curve", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, type=Path, help="training output folder (holds checkpoints/)")
    parser.add_argument("--count", type=int, default=None, help="images per held-out set [default: all, 24]")
    parser.add_argument("--device", default="cpu", help="where the network runs [cpu]")
    parser.add_argument("--threads", type=int, default=1, help="torch threads [1]")
    parser.add_argument("--watch", action="store_true", help="keep scoring new checkpoints until --until-step")
    parser.add_argument("--until-step", type=int, default=None, help="with --watch: stop after this step is scored")
    parser.add_argument("--poll", type=float, default=60.0, help="with --watch: seconds between looks [60]")
    parser.add_argument("--plot", type=Path, default=None, help="write the learning-curve picture here (PNG)")
    parser.add_argument("--title", default="MGID on the embedded default: held-out PSNR during training")
    parser.add_argument("--photo-folders", nargs="+", default=None, metavar="DIR",
                        help="also score a set per folder of clean photos (its held-out photos; as mgid heldout)")
    parser.add_argument("--previous", type=Path, default=None,
                        help="learning_curve.json of the run this one started from, drawn before it")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    while args.watch and not (args.run / "checkpoints").is_dir():  # the run may not have saved yet
        time.sleep(args.poll)
    if not (args.run / "checkpoints").is_dir():
        parser.error(f"{args.run} has no checkpoints/ folder: is it a training output folder?")
    while True:
        data = score_new(args.run, args.count, args.device, args.photo_folders)
        done = args.until_step is not None and str(args.until_step) in data["steps"]
        if not args.watch or done:
            break
        time.sleep(args.poll)
    if args.plot:
        if not data["steps"]:
            parser.error(f"no step checkpoints in {args.run / 'checkpoints'} (train with --keep_step_checkpoints true)")
        previous = load_cache(args.previous) if args.previous else None
        print(f"learning curve: {plot(data, args.plot, args.title, previous)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

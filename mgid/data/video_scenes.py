"""Static-camera clips as time-lapse scenes: the training data of ``mgid finetune``.

`extract_scenes` samples up to ``frames_per_clip`` frames spread evenly over each clip, checks with
`camera_shifts` that the camera did not move (`MovingCameraError`), and writes one scene folder per clip
(``ROOT/<NN>_<clip>/frame_XXXXXX.png``, the ``"scenes"`` layout of `mgid.data.folders.TimeLapseFolder`),
streaming the decode. Why evenly spread frames: docs/TRAIN.md, "Design notes".
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from mgid.data.video import VideoError, open_frames

from .imageio import write_image

#: Longest side of the grey copies the motion check correlates (phase correlation stays sub-pixel).
MOTION_CHECK_SIDE = 512
#: Where `extract_scenes` records what it extracted (to reuse the frames on --resume).
MANIFEST = "manifest.json"


class MovingCameraError(VideoError):
    """A clip whose camera moved: fine-tuning needs one static scene per clip."""


@dataclass(frozen=True)
class ClipScene:
    """One clip as a scene: its folder, the indices of the frames sampled, and the largest camera shift
    measured against the first sampled frame (pixels of the clip)."""

    clip: str
    folder: str
    frames: list[int]
    max_shift: float


def sample_indices(total: int, count: int) -> list[int]:
    """``min(count, total)`` frame indices spread evenly over ``range(total)``, first and last included."""
    if total < 2:
        raise VideoError(f"a clip needs at least 2 frames to be a time-lapse scene, this one has {total}")
    k = min(count, total)
    return sorted({round(i * (total - 1) / (k - 1)) for i in range(k)}) if k > 1 else [0]


def _grey(frame: np.ndarray) -> tuple[np.ndarray, float]:
    """A float32 grey copy with the longest side at most `MOTION_CHECK_SIDE`, and its scale."""
    h, w = frame.shape[:2]
    scale = min(1.0, MOTION_CHECK_SIDE / max(h, w))
    grey = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY).astype(np.float32)
    if scale < 1.0:
        grey = cv2.resize(grey, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    return grey, scale


def camera_shift(reference: np.ndarray, frame: np.ndarray) -> tuple[float, float]:
    """The translation (dx, dy) in pixels of ``frame`` against ``reference`` (HxWx3 uint8, same size), by
    phase correlation of grey copies under a Hann window (rain streaks, noise and illumination changes
    barely move its peak; a camera pan moves it by the pan)."""
    a, scale = _grey(reference)
    b, _ = _grey(frame)
    window = cv2.createHanningWindow((a.shape[1], a.shape[0]), cv2.CV_32F)
    (dx, dy), _ = cv2.phaseCorrelate(a, b, window)
    return dx / scale, dy / scale


def camera_shifts(frames: Sequence[np.ndarray]) -> list[tuple[float, float]]:
    """`camera_shift` of each frame against the first ((0, 0) for the first)."""
    return [camera_shift(frames[0], f) for f in frames]


def _clip_key(clip: Path) -> dict[str, object]:
    st = clip.stat()
    return {"path": str(clip.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _scene_name(i: int, clip: Path) -> str:
    return f"{i:02d}_{clip.stem if clip.is_file() else clip.name}"


def _extract_one(clip: Path, folder: Path, count: int, max_shift: float, fps: float | None) -> ClipScene:
    source = open_frames(clip, fps)
    if source.info.frames is None:  # the container stores no count (Matroska/WebM): decode once to count
        with source:
            total = sum(1 for _ in source.frames())
        source = open_frames(clip, fps)
    else:
        total = source.info.frames
    wanted_set = set(sample_indices(total, count))
    folder.mkdir(parents=True)
    reference: np.ndarray | None = None
    worst, worst_at, worst_shift = 0.0, 0, (0.0, 0.0)
    taken: list[int] = []
    with source:
        rate = float(source.info.fps)
        for i, frame in enumerate(source.frames()):
            if i not in wanted_set:
                continue
            if reference is None:
                reference = frame
            else:
                dx, dy = camera_shift(reference, frame)
                if max(abs(dx), abs(dy)) > worst:
                    worst, worst_at, worst_shift = max(abs(dx), abs(dy)), i, (dx, dy)
            write_image(folder / f"frame_{i:06d}.png", frame)
            taken.append(i)
    if len(taken) < 2:
        raise VideoError(f"{clip}: only {len(taken)} frame(s) could be decoded; a scene needs at least 2")
    if worst > max_shift:
        raise MovingCameraError(
            f"{clip}: the camera is not static: frame {worst_at} (t = {worst_at / rate:.2f} s) is shifted by "
            f"({worst_shift[0]:+.2f}, {worst_shift[1]:+.2f}) px from frame {taken[0]} (phase correlation of "
            f"{len(taken)} sampled frames; the limit is {max_shift:g} px, --max-shift). Fine-tuning learns from "
            f"one fixed scene under changing rain: use footage of a camera that does not move")
    return ClipScene(str(clip), folder.name, taken, worst)


def extract_scenes(clips: Sequence[str | Path], root: str | Path, frames_per_clip: int = 64,
                   max_shift: float = 1.0, fps: float | None = None) -> list[ClipScene]:
    """Write each clip's sampled frames to ``root/<NN>_<clip name>/`` and return what was taken.

    Frames are spread evenly over the clip, so any two are at least ``clip length / frames_per_clip`` apart and
    their rain is independent. The folder is built under a temporary name and renamed when every clip passed, so
    it never holds a partial set; when ``root`` already holds the frames of the same clips (same files, sizes,
    times) and settings, they are reused as they are (a resumed fine-tuning run).

    Args:
        clips: the video files (or frame folders) of a static camera.
        root: the folder to write.
        frames_per_clip: frames sampled per clip, at most.
        max_shift: largest camera shift in pixels tolerated between a sampled frame and the first.
        fps: frame rate of a frame folder (or of a file that stores none).

    Returns:
        One `ClipScene` per clip.

    Raises:
        MovingCameraError: a camera moved; it names the clip, the frame and the shift it measured.
        mgid.data.video.VideoError: no clips, fewer than 2 frames per clip, a missing or unreadable clip.
    """
    if not clips:
        raise VideoError("no clips given; pass --video CLIP [CLIP ...] (video files or folders of frames)")
    if frames_per_clip < 2:
        raise VideoError(f"frames per clip must be >= 2, got {frames_per_clip}")
    root = Path(root)
    paths = [Path(c) for c in clips]
    for p in paths:
        if not p.exists():
            raise VideoError(f"clip not found: {p}")
    key = {"clips": [_clip_key(p) for p in paths], "frames_per_clip": frames_per_clip, "max_shift": max_shift,
           "fps": fps}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
    manifest = root / MANIFEST
    if manifest.is_file():
        saved = json.loads(manifest.read_text(encoding="utf-8"))
        if saved.get("digest") == digest:
            return [ClipScene(**s) for s in saved["scenes"]]
    partial = root.with_name(f".{root.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        scenes = [_extract_one(p, partial / _scene_name(i, p), frames_per_clip, max_shift, fps)
                  for i, p in enumerate(paths)]
        (partial / MANIFEST).write_text(json.dumps(
            {"digest": digest, "key": key, "scenes": [s.__dict__ for s in scenes]}, indent=1), encoding="utf-8")
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    if root.exists():
        shutil.rmtree(root)
    os.replace(partial, root)
    return scenes

"""Small images, folders and settings the tests of `mgid.data` build their inputs from (tiny, in tmp_path)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from mgid.data import (
    EmbeddedDataConfig,
    RainConfig,
    to_uint8,
    write_image,
)

SMALL = EmbeddedDataConfig(size=48, frames_per_scene=4, train_scenes_per_photo=2, val_scenes_per_photo=2,
                           paired_count=4)
# no illumination change and no veil: a frame is exactly the screen blend of background and rain
PURE_RAIN = RainConfig(gain_range=(1.0, 1.0), offset_range=(0.0, 0.0), veil_probability=0.0)


def pattern(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A non-symmetric HxWx3 uint8 pattern in [20, 200] (so a +-50 offset never clips)."""
    return np.random.default_rng(seed).integers(20, 200, size=(h, w, 3), dtype=np.uint8)


def frame_of(base: np.ndarray, k: int) -> np.ndarray:
    """Frame k of a scene: the base plus a constant k * 10 (frames are told apart by the offset)."""
    return (base.astype(np.int16) + 10 * k).astype(np.uint8)


def offset_between(item: dict) -> float:
    """(frame2 - frame1) in grey levels, asserting it is constant: the same crop and flip for both."""
    a = to_uint8(item["frame1"]).astype(np.int16)
    b = to_uint8(item["frame2"]).astype(np.int16)
    d = b - a
    assert d.min() == d.max(), "frames were cut or flipped differently"
    return float(d.flat[0])


def make_scene_folders(root: Path, scenes: int = 3, frames: int = 4, hw=(24, 32)) -> Path:
    for s in range(scenes):
        base = pattern(*hw, seed=s)
        for k in range(frames):
            write_image(root / f"scene{s}" / f"{k:02d}.png", frame_of(base, k))
    return root


def make_flat(root: Path, scenes: int = 2, frames: int = 3, hw=(24, 32)) -> Path:
    for s in range(scenes):
        base = pattern(*hw, seed=s)
        for k in range(frames):
            write_image(root / f"my_scene{s}_{k:02d}.png", frame_of(base, k))
    return root


def make_mgid(root: Path, n: int = 3, hw=(24, 20)) -> Path:
    for i in range(n):
        base = pattern(*hw, seed=i)
        write_image(root / f"{i:04d}.png", np.concatenate([frame_of(base, 0), frame_of(base, 3)], axis=1))
    return root

"""Fine-tuning on a user's own static camera: the library behind ``mgid finetune --video CLIP ...``.

Each clip becomes one time-lapse scene (`mgid.data.video_scenes.extract_scenes`) and the run is an ordinary
training run (`mgid.train.Trainer`) from the given weights (the shipped ones by default) with the recipe
``finetune``; ``OUT/checkpoints/last.safetensors`` is what ``mgid derain --weights`` takes. How: docs/TRAIN.md,
"Design notes".
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

from mgid.checkpoint import read_weights
from mgid.config.fields import ConfigError
from mgid.config.train_config import TrainConfig
from mgid.models import ModelConfig

#: The recipe `mgid finetune` uses unless --config names another.
FINETUNE_RECIPE = "finetune"
#: Where the clips' sampled frames go, inside the run folder.
FRAMES_DIR = "frames"


@dataclasses.dataclass(frozen=True)
class ClipOptions:
    """How clips become scenes (the options of ``mgid finetune`` beyond the training config)."""

    videos: Sequence[str]
    """Static-camera clips: video files or folders of frames."""
    weights: str | None = None
    """The weights to start from (None: the shipped ones)."""
    frames_per_clip: int = 64
    """Frames sampled evenly over each clip."""
    max_shift: float = 1.0
    """Largest camera shift (pixels, phase correlation against the first sampled frame) still taken as static."""
    fps: float | None = None
    """Frame rate of a folder of frames (only used in messages)."""


def finetune_config(cfg: TrainConfig, clips: ClipOptions, log=print, extract: bool = True) -> TrainConfig:
    """Make ``cfg`` a fine-tuning run: the clips' frames as its scenes, the network of ``clips.weights`` as its start.

    Args:
        cfg: the resolved recipe and options; ``cfg.out`` is the run folder.
        clips: the clips and how to sample them (`ClipOptions`).
        log: where a line per scene goes (frames, clip, camera shift). Default `print`.
        extract: extract the clips' frames to ``OUT/frames`` (`FRAMES_DIR`; unless already there); False (for
            ``--print-config``) extracts nothing. Default True.

    Returns:
        A copy of ``cfg`` with ``data`` = ``OUT/frames``, ``layout`` = ``"scenes"``, ``init_weights`` = the
        resolved weights file and ``model`` = the network saved with those weights.

    Raises:
        FileNotFoundError: the weights are missing.
        mgid.checkpoint.CheckpointError: the weights files are pickled, truncated or inconsistent.
        ConfigError: the weights' record has no ``config.model`` section.
        mgid.data.video.VideoError: no clips, fewer than 2 frames per clip, a missing or unreadable clip.
        mgid.data.video_scenes.MovingCameraError: a clip's camera moved more than ``clips.max_shift``.
    """
    from mgid.data.video_scenes import extract_scenes
    from mgid.derain.derainer import resolve_weights

    weights = resolve_weights(clips.weights)
    _, saved, _ = read_weights(weights)
    if saved is None:
        raise ConfigError(f"{weights}: its record has no config.model; cannot fine-tune it")
    root = Path(cfg.out) / FRAMES_DIR
    scenes = extract_scenes(clips.videos, root, clips.frames_per_clip, clips.max_shift, clips.fps) if extract else []
    for s in scenes:
        log(f"scene {s.folder}: {len(s.frames)} frames of {s.clip} (frames {s.frames[0]}-{s.frames[-1]}), "
            f"camera shift at most {s.max_shift:.2f} px")
    return dataclasses.replace(cfg, data=str(root), layout="scenes", init_weights=str(weights),
                               model=ModelConfig.from_dict(saved))

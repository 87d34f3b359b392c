"""De-raining a video (a file or a folder of frames) into another, streamed: the library behind
``mgid derain IN.mp4 OUT.mp4``.

`derain_video` runs a `mgid.derain.derainer.Derainer` frame by frame (memory read only), ``batch_size`` frames per
network call, holding one batch in memory whatever the video's length; `median_video` is the classical
static-camera baseline, the per-pixel median of a sliding window of N frames (`temporal_median_stream`). Both keep
size, frame rate, frame count and audio, write to a temporary name renamed at the end, and return a `VideoReport`.
"""
from __future__ import annotations

import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from mgid.data.video import FrameSource, FrameWriter, VideoError, VideoInfo, is_video_file, open_frames
from mgid.errors import InputError

#: Frames per network call by device type when the caller names no batch size.
DEFAULT_BATCH = {"cuda": 8, "cpu": 1}


@dataclass(frozen=True)
class VideoReport:
    """What a video run did: frames written, wall seconds, the input's description, the output path."""

    output: Path
    frames: int
    seconds: float
    source: VideoInfo
    audio: bool

    @property
    def fps(self) -> float:
        """Frames processed per second of wall time."""
        return self.frames / self.seconds if self.seconds > 0 else float("inf")

    def truncation(self) -> str | None:
        """A warning when fewer frames were read than the input's header announces (a truncated or damaged
        file, which FFmpeg decodes up to the damage without an error), else None."""
        missing, expected = self.source.missing_frames(self.frames)
        if missing <= 0:
            return None
        exact = self.source.frames is not None
        return (f"{self.source.path} gave {self.frames} of the {expected} frames its header "
                f"{'announces' if exact else 'implies (duration x frame rate)'}: the file is truncated or damaged, "
                f"and {self.output} holds only those {self.frames}")


def is_video_job(input_path: str | Path, output_path: str | Path, temporal_median: int | None = None) -> bool:
    """Whether ``mgid derain INPUT OUTPUT`` is a video job: INPUT is a video file, OUTPUT names one, or a
    temporal median is asked for (a folder in is then a sequence of frames, not a set of photos)."""
    return is_video_file(input_path) or is_video_file(output_path) or temporal_median is not None


def _check_paths(src: Path, dst: Path, overwrite: bool) -> None:
    if not src.exists():
        raise VideoError(f"input not found: {src}")
    if dst.exists() and dst.resolve() == src.resolve():
        raise VideoError(f"the output {dst} is the input; name another file")
    if dst.is_file() and not overwrite:
        raise VideoError(f"{dst} already exists; pass --overwrite to replace it")


def _bar(total: int | None, progress: bool, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="frame", disable=(not progress) or None, file=sys.stderr)


def _run(source: FrameSource, dst: Path, frames: Callable[[Iterator[np.ndarray]], Iterable[np.ndarray]],
         progress: bool, desc: str) -> VideoReport:
    """Write ``frames(decoded frames)`` to ``dst`` with the source's rate and audio; the shared loop."""
    start = time.perf_counter()
    with FrameWriter(dst, source.info.fps, audio_from=source.audio_stream) as writer:
        bar = _bar(source.info.frames, progress, desc)
        try:
            for frame in frames(source.frames(writer.write_audio)):
                writer.write(frame)
                bar.update(1)
        finally:
            bar.close()
    return VideoReport(dst, writer.count, time.perf_counter() - start, source.info,
                       source.audio_stream is not None and dst.suffix != "")


def batched(frames: Iterable[np.ndarray], size: int) -> Iterator[list[np.ndarray]]:
    """Lists of ``size`` consecutive frames (the last one shorter)."""
    batch: list[np.ndarray] = []
    for frame in frames:
        batch.append(frame)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def derain_frames(derainer, frames: Iterable[np.ndarray], batch_size: int) -> Iterator[np.ndarray]:
    """``derainer``'s output for each frame (HxWx3 uint8 in and out), ``batch_size`` frames per call.

    Batching does not change a frame's result: the network in eval mode treats each image alone
    (instance norm per image, fixed BatchNorm statistics, a memory that is only read).
    """
    import torch

    from mgid.data.imageio import to_uint8

    for batch in batched(frames, batch_size):
        x = torch.from_numpy(np.stack(batch)).to(derainer.device).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        out = derainer.derain(x).cpu()
        yield from (to_uint8(o) for o in out)


def derain_video(derainer, src: str | Path, dst: str | Path, *, batch_size: int | None = None,
                 fps: float | Fraction | None = None, overwrite: bool = False, progress: bool = True) -> VideoReport:
    """De-rain a video frame by frame (the network's memory is only read).

    Args:
        derainer: a `mgid.derain.derainer.BaseDerainer` (PyTorch or onnxruntime).
        src: a video file, or a folder of frames in name order.
        dst: the video file to write (its suffix picks the container and codec) or a folder for PNG frames; the
            input's size, frame rate, frame count and audio are kept.
        batch_size: frames per network call (None: 8 on a GPU, 1 on a CPU).
        fps: the frame rate of a folder of frames (None: 25); ignored for a video file.
        overwrite: replace an existing ``dst``.
        progress: show a progress bar.

    Returns:
        The `VideoReport` (frames written, frame rate, audio, frames the header announced).

    Raises:
        VideoError: ``src`` is missing or cannot be read as a video, ``dst`` is ``src``, exists (without
            ``overwrite``) or cannot be written as a video, or ``batch_size`` < 1.
    """
    src, dst = Path(src), Path(dst)
    _check_paths(src, dst, overwrite)
    with open_frames(src, fps) as source:
        size = batch_size or DEFAULT_BATCH.get(derainer.device.type, 1)
        if size < 1:
            raise VideoError(f"batch size must be >= 1, got {size}")
        return _run(source, dst, lambda frames: derain_frames(derainer, frames, size), progress, "de-raining")


def temporal_median_stream(frames: Iterable[np.ndarray], window: int) -> Iterator[np.ndarray]:
    """The per-pixel median of a sliding window of ``window`` frames around each frame, streamed.

    Output frame t is the median of input frames ``t - (window - 1) // 2 ... t + window // 2``, the
    window cut at both ends of the clip (so the first and last frames use fewer frames); at most
    ``window`` frames are held at a time. An even window's median is the mean of the middle two, rounded.
    """
    if window < 1:
        raise InputError(f"the temporal median needs a window of at least 1 frame, got {window}")
    before, after = (window - 1) // 2, window // 2
    buffer: deque[np.ndarray] = deque(maxlen=window)
    first = 0  # index of buffer[0]
    t = 0  # next frame to output
    n = 0  # frames read
    for frame in frames:
        if len(buffer) == window:
            first += 1
        buffer.append(frame)
        n += 1
        while t + after < n:
            yield _median(buffer, max(t - before, first) - first, t + after - first + 1)
            t += 1
    while t < n:
        yield _median(buffer, max(t - before, first) - first, n - first)
        t += 1


def temporal_median(frames: np.ndarray) -> np.ndarray:
    """Per-pixel median of (T, H, W, 3) uint8 frames of one static scene -> HxWx3 uint8 (an even T's median is
    the mean of the middle two, rounded)."""
    return np.median(frames, axis=0).round().astype(np.uint8)


def _median(buffer: deque[np.ndarray], lo: int, hi: int) -> np.ndarray:
    return temporal_median(np.stack([buffer[i] for i in range(lo, hi)]))


def median_video(src: str | Path, dst: str | Path, window: int, *, fps: float | Fraction | None = None,
                 overwrite: bool = False, progress: bool = True) -> VideoReport:
    """Write the `temporal_median_stream` of ``src`` to ``dst`` (a baseline for a static camera)."""
    src, dst = Path(src), Path(dst)
    if window < 1:
        raise VideoError(f"--temporal-median needs a window of at least 1 frame, got {window}")
    _check_paths(src, dst, overwrite)
    with open_frames(src, fps) as source:
        return _run(source, dst, lambda frames: temporal_median_stream(frames, window), progress,
                    f"temporal median of {window}")

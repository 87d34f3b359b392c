"""Video in and out, streamed frame by frame: `open_frames` reads a video file or a folder of frames,
`FrameWriter` writes one, atomically.

Video files go through PyAV (FFmpeg bundled in its wheel); the input's audio is copied into the output. Frames are
(H, W, 3) uint8 RGB NumPy arrays throughout. A folder of images (any suffix `mgid.data.imageio` reads, in name
order) stands for a video without audio; its frame rate is given by the caller. Output goes to a temporary name
and is renamed on success. Why PyAV, and the audio and temporary-name details: docs/TRAIN.md, "Design notes".
"""
from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from mgid.data.imageio import IMAGE_SUFFIXES, list_images, read_image, write_image
from mgid.errors import MgidError

#: Frame rate given to a folder of frames when the caller names none.
DEFAULT_FOLDER_FPS = Fraction(25)
#: libx264's constant rate factor for written videos: visually lossless (FFmpeg's default is 23).
DEFAULT_CRF = 17


class VideoError(MgidError, ValueError):
    """A video that cannot be read or written; the message says what was wrong and what to do."""


@dataclass(frozen=True)
class ContainerFormat:
    """How a video file of one suffix is written: FFmpeg muxer, video codec, audio codec (re-encoding),
    and the audio codecs the muxer takes as they are (copied)."""

    muxer: str
    video_codec: str
    audio_codec: str
    copies_audio: tuple[str, ...]


#: Output suffix -> container. H.264 (libx264) where the container holds it: what players read.
CONTAINERS: dict[str, ContainerFormat] = {
    ".mp4": ContainerFormat("mp4", "libx264", "aac", ("aac", "mp3", "opus", "alac", "ac3")),
    ".m4v": ContainerFormat("mp4", "libx264", "aac", ("aac", "mp3", "opus", "alac", "ac3")),
    ".mov": ContainerFormat("mov", "libx264", "aac", ("aac", "mp3", "alac", "ac3", "pcm_s16le")),
    ".mkv": ContainerFormat("matroska", "libx264", "libopus",
                            ("aac", "mp3", "opus", "vorbis", "flac", "ac3", "pcm_s16le", "alac")),
    ".webm": ContainerFormat("webm", "libvpx-vp9", "libopus", ("opus", "vorbis")),
    ".avi": ContainerFormat("avi", "mpeg4", "mp3", ("mp3", "ac3", "pcm_s16le")),
}
VIDEO_SUFFIXES = tuple(CONTAINERS)


def is_video_file(path: str | Path) -> bool:
    """Whether ``path`` names a video file by its suffix (one of `VIDEO_SUFFIXES`)."""
    return Path(path).suffix.lower() in CONTAINERS


def _import_av() -> Any:
    try:
        import av
    except ImportError as exc:  # a dependency of mgid; only a broken environment lacks it
        raise VideoError("video needs PyAV: pip install av") from exc
    return av


@dataclass(frozen=True)
class VideoInfo:
    """What is known of a video before decoding it: ``frames`` is the container's count (None when the
    container does not store one: Matroska/WebM, folders never lack it); ``audio`` the input's audio codec;
    ``duration`` the container's duration in seconds (None when unknown, and for folders)."""

    path: Path
    width: int
    height: int
    fps: Fraction
    frames: int | None
    audio: str | None
    duration: float | None = None

    def expected_frames(self) -> tuple[int | None, bool]:
        """(the frame count the header announces, whether it is exact): the container's count when it stores
        one (exact), else the duration times the frame rate (an estimate, good to a frame), else (None, False)."""
        if self.frames is not None:
            return self.frames, True
        if self.duration:
            return round(self.duration * float(self.fps)), False
        return None, False

    def missing_frames(self, read: int) -> tuple[int, int | None]:
        """(frames the header announces that were not read, the announced count): > 0 when a video with ``read``
        frames decoded is truncated or damaged (an estimated count is given one frame of slack)."""
        expected, exact = self.expected_frames()
        if expected is None:
            return 0, None
        missing = expected - read
        return (missing if exact or missing > 1 else 0), expected

    def describe(self) -> str:
        n = "?" if self.frames is None else str(self.frames)
        audio = f", audio {self.audio}" if self.audio else ", no audio"
        return f"{self.path.name}: {self.width}x{self.height}, {float(self.fps):g} fps, {n} frames{audio}"


class FrameSource:
    """Frames of a video file or a folder of images, decoded one at a time (a context manager).

    ``frames(on_audio)`` yields each frame (HxWx3 uint8 RGB) in order; audio packets met on the way are
    handed to ``on_audio`` (a `FrameWriter.write_audio`), so audio and video stay interleaved.
    """

    def __init__(self, path: str | Path, fps: float | Fraction | None = None) -> None:
        self.path = Path(path)
        self._container: Any = None
        if not self.path.exists():
            raise VideoError(f"input not found: {self.path}")
        if self.path.is_dir():
            self._files = list_images(self.path)
            if not self._files:
                raise VideoError(f"no frames in {self.path}: a folder of frames holds images "
                                 f"({', '.join(s[1:] for s in IMAGE_SUFFIXES)}), read in name order")
            h, w = read_image(self._files[0]).shape[:2]
            rate = Fraction(fps).limit_denominator(1001) if fps else DEFAULT_FOLDER_FPS
            self.info = VideoInfo(self.path, w, h, rate, len(self._files), None)
            return
        self._open_container(fps)

    def _open_container(self, fps: float | Fraction | None) -> None:
        av = _import_av()
        try:
            self._container = av.open(str(self.path), mode="r")
        except (av.error.FFmpegError, OSError) as exc:
            raise VideoError(f"{self.path} is not a video FFmpeg can read ({exc}); give a video file "
                             f"({', '.join(VIDEO_SUFFIXES)}, ...) or a folder of frames") from exc
        if not self._container.streams.video:
            self.close()
            raise VideoError(f"{self.path} has no video stream (an audio or data file?)")
        video = self._container.streams.video[0]
        video.thread_type = "AUTO"  # frame/slice threads of the decoder
        audio = self._container.streams.audio[0] if self._container.streams.audio else None
        self._video, self._audio = video, audio
        rate = video.average_rate or video.guessed_rate or (Fraction(fps) if fps else None)
        if not rate:
            self.close()
            raise VideoError(f"{self.path}: the frame rate is not stored; pass it (--fps)")
        duration = self._container.duration / 1e6 if self._container.duration else None  # AV_TIME_BASE: microseconds
        self.info = VideoInfo(self.path, video.codec_context.width, video.codec_context.height, Fraction(rate),
                              video.frames or None, audio.codec_context.name if audio is not None else None, duration)

    @property
    def audio_stream(self) -> Any:
        """The input's PyAV audio stream (None: no audio, or a folder of frames)."""
        return None if self._container is None else self._audio

    def frames(self, on_audio: Callable[[Any], None] | None = None) -> Iterator[np.ndarray]:
        """Each frame in order, HxWx3 uint8 RGB. Raises `VideoError` naming the frame where decoding failed."""
        if self._container is None:
            for i, f in enumerate(self._files):
                img = read_image(f)
                if img.shape[:2] != (self.info.height, self.info.width):
                    raise VideoError(f"{f}: frame {i} is {img.shape[1]}x{img.shape[0]}, the first frame "
                                     f"{self.info.width}x{self.info.height}; a video's frames share one size")
                yield img
            return
        av = _import_av()
        streams = [self._video] + ([self._audio] if on_audio is not None and self._audio is not None else [])
        count = 0
        try:
            for packet in self._container.demux(*streams):
                if packet.stream.type == "audio":
                    if packet.dts is not None:
                        on_audio(packet)
                    continue
                for frame in packet.decode():
                    count += 1
                    yield frame.to_ndarray(format="rgb24")
        except av.error.FFmpegError as exc:
            raise VideoError(f"{self.path} is truncated or corrupt: decoding failed after {count} frames "
                             f"({exc})") from exc
        if count == 0:
            raise VideoError(f"{self.path} holds no decodable video frames (empty or truncated)")

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = None

    def __enter__(self) -> FrameSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_frames(path: str | Path, fps: float | Fraction | None = None) -> FrameSource:
    """A `FrameSource` over the video file or folder of frames ``path`` (``fps``: the rate of a folder,
    or of a file that stores none)."""
    return FrameSource(path, fps)


def _partial_path(path: Path) -> Path:
    return path.with_name(f".{path.stem}.partial{path.suffix}")


def check_output(path: str | Path) -> Path:
    """``path`` as an output video file or frame folder, checked before any work: a supported suffix (or
    none: a folder), a parent folder that exists or can be made, and not an existing folder for a file."""
    path = Path(path)
    if path.suffix and path.suffix.lower() not in CONTAINERS:
        raise VideoError(f"cannot write video {path}: unsupported suffix {path.suffix!r}; use one of "
                         f"{', '.join(VIDEO_SUFFIXES)} (or a name without suffix for a folder of PNG frames)")
    if path.suffix and path.is_dir():
        raise VideoError(f"output {path} is an existing folder; name a file")
    if not path.suffix and path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise VideoError(f"output folder {path} exists and is not empty; remove it or name another")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise VideoError(f"cannot write {path}: {parent} is a file, not a folder")
            if not os.access(parent, os.W_OK):
                raise VideoError(f"cannot write {path}: no permission to write in {parent}")
            break
    return path


class FrameWriter:
    """Writes frames (HxWx3 uint8 RGB) to a video file (container and codec from the suffix, `CONTAINERS`)
    or, for a name without suffix, to a folder of PNG frames; atomically (under ``.NAME.partial``, renamed).

    Use as a context manager: leaving it normally renames the output into place, leaving it by an
    exception removes the partial output. ``audio_from``: the input's PyAV audio stream, whose packets
    `write_audio` then takes (copied when the container accepts the codec, re-encoded otherwise).
    """

    def __init__(self, path: str | Path, fps: Fraction, audio_from: Any = None, crf: int = DEFAULT_CRF) -> None:
        self.path = check_output(path)
        self.fps = Fraction(fps)
        self.crf = crf
        self.count = 0
        self._audio_in = audio_from
        self._container: Any = None
        self._video: Any = None
        self._audio: Any = None
        self._pending_audio: list[Any] = []
        self._resampler: Any = None
        self._audio_decoder: Any = None
        self.partial = _partial_path(self.path) if self.path.suffix else self.path.with_name(
            f".{self.path.name}.partial")
        self._remove_partial()
        if self.path.suffix:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        else:
            self.partial.mkdir(parents=True)

    # ---- video files
    def _open(self, width: int, height: int) -> None:
        av = _import_av()
        fmt = CONTAINERS[self.path.suffix.lower()]
        try:
            self._container = av.open(str(self.partial), mode="w", format=fmt.muxer)
        except (av.error.FFmpegError, OSError) as exc:
            raise VideoError(f"cannot write {self.path}: {exc}") from exc
        odd = width % 2 or height % 2
        if odd and fmt.video_codec != "libx264":
            raise VideoError(f"{fmt.video_codec} in {self.path.suffix} needs an even width and height, the frames "
                             f"are {width}x{height}; write .mp4/.mkv/.mov (H.264 4:4:4 keeps odd sizes)")
        video = self._container.add_stream(fmt.video_codec, rate=self.fps)
        video.width, video.height = width, height
        # 4:2:0 halves the chroma resolution, so it needs even sizes; 4:4:4 keeps an odd size exactly
        video.pix_fmt = "yuv444p" if odd else "yuv420p"
        if fmt.video_codec == "libx264":
            video.options = {"crf": str(self.crf), "preset": "veryfast"}
        elif fmt.video_codec == "libvpx-vp9":
            video.options = {"crf": str(self.crf + 14), "b": "0", "deadline": "realtime", "cpu-used": "8"}
        else:
            video.options = {"qscale": "2"}
            video.codec_context.qscale = 2
        self._video = video
        if self._audio_in is not None:
            self._open_audio(av, fmt)
        for packet in self._pending_audio:
            self._mux_audio(packet)
        self._pending_audio.clear()

    def _open_audio(self, av: Any, fmt: ContainerFormat) -> None:
        src = self._audio_in
        if src.codec_context.name in fmt.copies_audio:
            self._audio = self._container.add_stream_from_template(src)
            return
        # re-encode: decode the copied packets and encode them in the container's codec
        self._audio = self._container.add_stream(fmt.audio_codec, rate=src.codec_context.sample_rate)
        self._audio.layout = src.codec_context.layout.name
        self._audio_decoder = av.CodecContext.create(src.codec_context.name, "r")
        self._audio_decoder.extradata = src.codec_context.extradata
        codec = self._audio.codec_context
        self._resampler = av.AudioResampler(format=codec.codec.audio_formats[0].name,
                                            layout=codec.layout.name, rate=codec.sample_rate)

    def write_audio(self, packet: Any) -> None:
        """Mux one audio packet of the input (kept until the first video frame opens the file)."""
        if self._audio_in is None:
            return
        if self._container is None:
            self._pending_audio.append(packet)
            return
        self._mux_audio(packet)

    def _mux_audio(self, packet: Any) -> None:
        if self._audio_decoder is None:
            packet.stream = self._audio
            self._container.mux(packet)
            return
        for frame in self._audio_decoder.decode(packet):
            frame.pts = None
            for resampled in self._resampler.resample(frame):
                self._container.mux(self._audio.encode(resampled))

    def write(self, frame: np.ndarray) -> None:
        """Append one HxWx3 uint8 RGB frame (all frames share the first one's size)."""
        if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
            raise VideoError(f"a frame must be HxWx3 uint8 RGB, got {frame.dtype} {frame.shape}")
        if not self.path.suffix:
            write_image(self.partial / f"frame_{self.count:06d}.png", frame)
            self.count += 1
            return
        if self._container is None:
            self._open(frame.shape[1], frame.shape[0])
        elif (frame.shape[1], frame.shape[0]) != (self._video.width, self._video.height):
            raise VideoError(f"frame {self.count} is {frame.shape[1]}x{frame.shape[0]}, the video "
                             f"{self._video.width}x{self._video.height}")
        av = _import_av()
        vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
        vf.pts = self.count
        vf.time_base = 1 / self.fps
        self._container.mux(self._video.encode(vf))
        self.count += 1

    def _finish(self) -> None:
        if not self.path.suffix:
            if self.count == 0:
                raise VideoError(f"no frames were written to {self.path}")
            if self.path.exists():
                self.path.rmdir()  # empty, checked by check_output
            self.partial.rename(self.path)
            return
        if self._container is None:
            raise VideoError(f"no frames were written to {self.path}")
        self._container.mux(self._video.encode(None))
        if self._audio_decoder is not None:
            for resampled in self._resampler.resample(None):
                self._container.mux(self._audio.encode(resampled))
            self._container.mux(self._audio.encode(None))
        self._container.close()
        self._container = None
        os.replace(self.partial, self.path)

    def _remove_partial(self) -> None:
        if self._container is not None:
            with contextlib.suppress(Exception):
                self._container.close()
            self._container = None
        if self.partial.is_dir():
            shutil.rmtree(self.partial, ignore_errors=True)
        else:
            self.partial.unlink(missing_ok=True)

    def __enter__(self) -> FrameWriter:
        return self

    def __exit__(self, exc_type: type | None, *exc: object) -> None:
        if exc_type is not None:
            self._remove_partial()
            return
        try:
            self._finish()
        except BaseException:
            self._remove_partial()
            raise

"""A synthetic static camera: clips of one still scene under rain, with their clean frames.

`StaticCamera` renders a clip (rain from `mgid.data.synthetic_rain` afresh in every frame, and the clean frame
under the same illumination as the exact target); two seeds are two recordings of the same camera. `write_clip`
encodes a clip as a video file. What it stands in for: docs/TRAIN.md, "Design notes".
"""
from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np

from mgid.errors import InputError

from .photos import load_photo
from .synthetic_rain import RainConfig, add_rain


@dataclass(frozen=True)
class StaticCamera:
    """One synthetic camera and its recording settings."""

    photo: str = "grass"
    """The scene: a photo scikit-image ships (`mgid.data.photos`); ``grass`` and ``coffee`` are held out
    from training the shipped weights."""
    size: tuple[int, int] = (192, 256)
    """(height, width) of the frames."""
    zoom: float = 0.75
    """Frame pixels per photo pixel (the held-out sets' scale is 0.5-1)."""
    frames: int = 48
    """Frames in a clip."""
    fps: float = 12.0
    """Frame rate of a clip."""
    noise_sigma: float = 1.5
    """Sensor noise, Gaussian, in grey levels (0-255)."""
    drift: float = 0.02
    """Illumination gain swings by +-this fraction over the clip (one period per clip): a cloud passing, not
    dusk. (MGID's objective ties the backgrounds of two frames together, so a fine-tuned network averages
    faster changes out: with +-6 % over 8 s its output kept one brightness, up to 7 grey levels off.)"""
    pan_px_per_frame: float = 0.0
    """Sideways camera motion in pixels per frame (0: a static camera)."""
    rain: RainConfig = field(default_factory=RainConfig)
    """The rain of every frame (the training renderer's defaults)."""
    audio_hz: float | None = 440.0
    """Frequency of the sine tone on the audio track (None: no audio)."""

    def __post_init__(self) -> None:
        h, w = self.size
        if h < 16 or w < 16 or self.frames < 1 or self.fps <= 0 or self.zoom <= 0:
            raise InputError(f"StaticCamera: need size >= 16x16, frames >= 1, fps > 0, zoom > 0; got {self}")


def scene(camera: StaticCamera, seed: int = 0) -> np.ndarray:
    """The camera's view without rain: (H + pan, W + travel, 3) float32 in [0, 1], the fixed central region
    of the photo at ``camera.zoom``, wide enough for the pan over the whole clip."""
    h, w = camera.size
    travel = int(math.ceil(camera.pan_px_per_frame * max(camera.frames - 1, 0))) + 1
    photo = load_photo(camera.photo)
    ph, pw = photo.shape[:2]
    zoom = max(camera.zoom, h / ph, (w + travel) / pw)
    sh, sw = min(ph, round(h / zoom)), min(pw, round((w + travel) / zoom))
    top, left = (ph - sh) // 2, (pw - sw) // 2
    region = cv2.resize(np.ascontiguousarray(photo[top:top + sh, left:left + sw]), (w + travel, h),
                        interpolation=cv2.INTER_AREA if zoom < 1 else cv2.INTER_CUBIC)
    return region.astype(np.float32) / 255.0


def _gain(camera: StaticCamera, t: int, phase: float) -> float:
    return 1.0 + camera.drift * math.sin(2 * math.pi * t / max(camera.frames, 1) + phase)


def _to_uint8(img01: np.ndarray) -> np.ndarray:
    return np.clip(img01 * 255.0 + 0.5, 0, 255).astype(np.uint8)


def _clean01(camera: StaticCamera, seed: int) -> Iterator[tuple[np.ndarray, np.random.Generator]]:
    """Each clean frame (HxWx3 float32 in [0, 1]) of the clip recorded with ``seed``, with the generator the
    rest of that frame (rain, noise) is drawn from: the drift's phase is its first draw, so the clean frames
    need no rain rendered."""
    rng = np.random.default_rng(seed)
    phase = float(rng.uniform(0, 2 * math.pi))
    view = scene(camera)
    h, w = camera.size
    for t in range(camera.frames):
        shift = np.float32([[1, 0, -camera.pan_px_per_frame * t], [0, 1, 0]])
        frame = cv2.warpAffine(view, shift, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        yield np.clip(frame * np.float32(_gain(camera, t, phase)), 0.0, 1.0), rng


def clip_frames(camera: StaticCamera, seed: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``(rainy, clean)`` HxWx3 uint8 RGB for each frame of the clip recorded with ``seed``."""
    for clean, rng in _clean01(camera, seed):
        rainy, _ = add_rain(clean, rng, camera.rain, illumination=False, veil=False)
        rainy = rainy + rng.normal(0.0, camera.noise_sigma / 255.0, rainy.shape).astype(np.float32)
        yield _to_uint8(rainy), _to_uint8(clean)


def write_clip(path: str | Path, camera: StaticCamera, seed: int, crf: int = 12) -> Path:
    """Encode the rainy frames of the clip recorded with ``seed`` as a video file (H.264 in MP4 or MKV,
    ``crf`` near-lossless so the compression hardly touches the rain), with a sine tone as AAC audio when
    ``camera.audio_hz`` is set. Returns ``path``."""
    import av

    path = Path(path)
    fps = Fraction(camera.fps).limit_denominator(1001)
    h, w = camera.size
    with av.open(str(path), mode="w") as container:
        video = container.add_stream("libx264", rate=fps)
        video.width, video.height, video.pix_fmt = w, h, "yuv420p"
        video.options = {"crf": str(crf), "preset": "veryfast"}
        audio = None
        if camera.audio_hz is not None:
            audio = container.add_stream("aac", rate=48000)
            audio.layout = "mono"
        for t, (rainy, _) in enumerate(clip_frames(camera, seed)):
            frame = av.VideoFrame.from_ndarray(rainy, format="rgb24")
            frame.pts, frame.time_base = t, 1 / fps
            container.mux(video.encode(frame))
        container.mux(video.encode(None))
        if audio is not None:
            _write_tone(av, container, audio, camera.audio_hz, camera.frames / camera.fps)
    return path


def _write_tone(av, container, audio, hz: float, seconds: float) -> None:
    rate, chunk = 48000, 1024
    n = int(round(seconds * rate))
    samples = (0.2 * np.sin(2 * np.pi * hz * np.arange(n) / rate)).astype(np.float32)
    for start in range(0, n, chunk):
        part = samples[start:start + chunk][None]
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(part), format="fltp", layout="mono")
        frame.sample_rate, frame.pts = rate, start
        container.mux(audio.encode(frame))
    container.mux(audio.encode(None))

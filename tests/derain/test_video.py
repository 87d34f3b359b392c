"""Videos (issue 11): reading and writing (`mgid.data.video`), ``mgid derain`` of a clip and the temporal median
(`mgid.derain.video`), clips as scenes and the static-camera check (`mgid.data.video_scenes`), and
``mgid finetune`` end to end, on synthetic static-camera clips written here as MP4 (`mgid.data.synthetic_video`).

Clips are tiny (64x48, a dozen frames) and the network is the tiny untrained one of `tests.derain.tiny_network`.
"""
from __future__ import annotations

import dataclasses
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from mgid import cli
from mgid.data.imageio import write_image
from mgid.data.synthetic_video import StaticCamera, clip_frames, write_clip
from mgid.data.video import FrameWriter, VideoError, open_frames
from mgid.data.video_scenes import MovingCameraError, camera_shift, extract_scenes, sample_indices
from mgid.derain.derainer import load_model
from mgid.derain.video import derain_frames, derain_video, median_video, temporal_median_stream

av = pytest.importorskip("av")

CAMERA = StaticCamera(size=(48, 64), frames=12, fps=10.0)


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return write_clip(tmp_path_factory.mktemp("clip") / "cam.mp4", CAMERA, seed=3)


def _streams(path: Path) -> tuple[int, Fraction, tuple[int, int], bool]:
    """(decoded frame count, frame rate, (width, height), has audio) of a video file."""
    with av.open(str(path)) as c:
        v = c.streams.video[0]
        rate, size, audio = v.average_rate, (v.codec_context.width, v.codec_context.height), bool(c.streams.audio)
        n = sum(1 for _ in c.decode(video=0))
    return n, rate, size, audio


def _audio_seconds(path: Path) -> float:
    with av.open(str(path)) as c:
        frames = list(c.decode(audio=0))
        return sum(f.samples for f in frames) / frames[0].sample_rate


# ---- the synthetic camera


def test_synthetic_clip_is_a_static_scene_under_changing_rain():
    pairs = list(clip_frames(CAMERA, seed=3))
    assert len(pairs) == CAMERA.frames
    rainy = np.stack([r for r, _ in pairs]).astype(int)
    clean = np.stack([c for _, c in pairs]).astype(int)
    assert rainy.shape == (12, 48, 64, 3)
    assert (rainy != clean).mean() > 0.3  # rain and noise on every frame
    assert np.abs(rainy[0] - rainy[1]).mean() > 1  # the rain changes
    drift = clean.reshape(12, -1).mean(1)
    assert 1 < drift.max() - drift.min() < 40  # slow illumination drift, not a new scene
    again = [c for _, c in clip_frames(CAMERA, seed=3)]
    assert all(np.array_equal(a, b) for a, b in zip(again, clean))  # the targets are reproducible


def test_written_clip_has_the_frames_rate_size_and_audio(clip):
    n, rate, size, audio = _streams(clip)
    assert (n, rate, size, audio) == (12, Fraction(10), (64, 48), True)
    with open_frames(clip) as src:
        assert (src.info.width, src.info.height, src.info.frames, src.info.audio) == (64, 48, 12, "aac")


# ---- mgid derain of a video


def test_derain_video_keeps_count_rate_size_and_audio(clip, weights, tmp_path):
    out = tmp_path / "out.mp4"
    assert cli.main(["derain", str(clip), str(out), "--weights", str(weights), "--device", "cpu", "--quiet"]) == 0
    assert _streams(out) == (12, Fraction(10), (64, 48), True)
    assert abs(_audio_seconds(out) - _audio_seconds(clip)) < 0.05
    assert not list(tmp_path.glob(".*partial*"))


@pytest.mark.parametrize("suffix", [".mkv", ".webm", ".avi", ".mov"])
def test_container_and_codec_follow_the_suffix(clip, tmp_path, suffix):
    out = tmp_path / f"median{suffix}"
    report = median_video(clip, out, 3, progress=False)
    n, rate, size, audio = _streams(out)
    assert (n, rate, size, report.frames) == (12, Fraction(10), (64, 48), 12)
    assert audio  # copied (mkv, mov) or re-encoded (webm: opus, avi: mp3)


def test_unsupported_suffix_is_refused_before_any_work(clip, tmp_path, capsys):
    assert cli.main(["derain", str(clip), str(tmp_path / "out.xyz"), "--temporal-median", "3", "--quiet"]) == 2
    assert "unsupported suffix '.xyz'" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_batched_frames_equal_frame_by_frame(clip, weights):
    derainer = load_model(weights, device="cpu", precision="fp32")
    with open_frames(clip) as src:
        frames = list(src.frames())
    one = list(derain_frames(derainer, frames, 1))
    five = list(derain_frames(derainer, frames, 5))
    assert len(five) == 12 and all(np.array_equal(a, b) for a, b in zip(one, five))
    assert all(np.array_equal(a, derainer.derain(f)) for a, f in zip(one, frames))


def test_tiled_video_derain_matches_tiled_images(clip, weights, tmp_path):
    derainer = load_model(weights, device="cpu", precision="fp32", tile=32, overlap=8)
    report = derain_video(derainer, clip, tmp_path / "frames", progress=False)
    written = sorted((tmp_path / "frames").iterdir())
    assert report.frames == len(written) == 12 and written[0].name == "frame_000000.png"
    with open_frames(clip) as src:
        first = next(iter(src.frames()))
    with open_frames(tmp_path / "frames") as out:
        assert np.array_equal(next(iter(out.frames())), derainer.derain(first))  # PNG frames are exact


def test_folder_of_frames_in_and_video_out(tmp_path, weights):
    folder = tmp_path / "frames"
    for i, (rainy, _) in enumerate(clip_frames(CAMERA, seed=5)):
        write_image(folder / f"{i:03d}.png", rainy)
    out = tmp_path / "out.mp4"
    code = cli.main(["derain", str(folder), str(out), "--weights", str(weights), "--fps", "12", "--device", "cpu",
                     "--quiet"])
    assert code == 0
    assert _streams(out) == (12, Fraction(12), (64, 48), False)


def test_temporal_median_is_the_median_of_the_window():
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (4, 5, 3), dtype=np.uint8) for _ in range(7)]
    for window in (1, 2, 3, 4, 7, 9):
        out = list(temporal_median_stream(iter(frames), window))
        assert len(out) == 7
        for t, o in enumerate(out):
            lo, hi = max(0, t - (window - 1) // 2), min(7, t + window // 2 + 1)
            want = np.median(np.stack(frames[lo:hi]), axis=0).round().astype(np.uint8)
            assert np.array_equal(o, want), (window, t)
    with pytest.raises(ValueError, match="at least 1"):
        list(temporal_median_stream(iter(frames), 0))


def test_frames_are_streamed_not_collected(weights):
    """Memory stays bounded on a long video: each stage pulls only what it needs from the one before."""
    read = []

    def endless():
        rng = np.random.default_rng(0)
        while True:
            read.append(1)
            yield rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)

    median = temporal_median_stream(endless(), 5)
    next(median)
    assert len(read) == 3  # frame 0's window: frames 0-2
    for _ in range(10):
        next(median)
    assert len(read) == 13  # one frame read per frame written, never more than the window ahead
    read.clear()
    derained = derain_frames(load_model(weights, device="cpu"), endless(), 4)
    for _ in range(5):
        next(derained)
    assert len(read) == 8  # two batches of 4


def test_temporal_median_removes_rain_of_a_static_camera(clip, tmp_path):
    out = tmp_path / "median.mp4"
    assert cli.main(["derain", str(clip), str(out), "--temporal-median", "5", "--quiet"]) == 0
    clean = np.stack([c for _, c in clip_frames(CAMERA, seed=3)]).astype(float)
    with open_frames(clip) as a, open_frames(out) as b:
        rainy, median = np.stack(list(a.frames())), np.stack(list(b.frames()))
    assert np.abs(median - clean).mean() < 0.6 * np.abs(rainy - clean).mean()


# ---- bad input and atomic output


def test_not_a_video(tmp_path, capsys):
    fake = tmp_path / "notes.mp4"
    fake.write_text("this is not a video\n" * 20)
    assert cli.main(["derain", str(fake), str(tmp_path / "out.mp4"), "--temporal-median", "3", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "is not a video FFmpeg can read" in err and str(fake) in err
    assert not (tmp_path / "out.mp4").exists()


def test_truncated_video_leaves_no_output(clip, tmp_path, capsys):
    cut = tmp_path / "cut.mp4"
    data = clip.read_bytes()
    cut.write_bytes(data[: len(data) // 2])  # moov atom at the end: gone
    out = tmp_path / "out.mp4"
    assert cli.main(["derain", str(cut), str(out), "--temporal-median", "3", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "cut.mp4" in err and ("truncated" in err or "not a video" in err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cut.mp4"]


def _faststart_mp4(path: Path, frames: int = 24) -> Path:
    """An MP4 with its index (moov) at the front, as phones and web tools write it: cut short, it still opens."""
    rng = np.random.default_rng(0)
    with av.open(str(path), "w", options={"movflags": "faststart"}) as c:
        s = c.add_stream("libx264", rate=12)
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        for _ in range(frames):
            c.mux(s.encode(av.VideoFrame.from_ndarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8),
                                                      format="rgb24")))
        c.mux(s.encode(None))
    return path


@pytest.mark.parametrize("kind", ["mp4-faststart", "mkv"])
def test_truncated_video_warns_with_the_counts_and_exits_1(tmp_path, weights, capsys, kind):
    """A cut file that FFmpeg decodes up to the cut without an error: the frames read are written, a warning
    gives the count read and the count the header announces (MKV stores none: duration x rate), exit code 1
    unless --allow-truncated."""
    whole = (_faststart_mp4(tmp_path / "whole.mp4") if kind == "mp4-faststart"
             else write_clip(tmp_path / "whole.mkv", dataclasses.replace(CAMERA, frames=24), seed=1))
    cut = tmp_path / f"cut{whole.suffix}"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    out = tmp_path / "out.mp4"
    assert cli.main(["derain", str(cut), str(out), "--temporal-median", "3", "--quiet"]) == 1
    err = capsys.readouterr().err
    n = _streams(out)[0]
    assert 0 < n < 24 and f"gave {n} of the 24 frames its header" in err and "--allow-truncated" in err
    assert cli.main(["derain", str(cut), str(tmp_path / "net.mp4"), "--weights", str(weights), "--device", "cpu",
                     "--allow-truncated", "--quiet"]) == 0
    assert f"gave {n} of the 24 frames" in capsys.readouterr().err
    assert cli.main(["derain", str(whole), str(tmp_path / "ok.mp4"), "--temporal-median", "3", "--quiet"]) == 0
    assert "warning" not in capsys.readouterr().err


def test_zero_frames(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli.main(["derain", str(empty), str(tmp_path / "out.mp4"), "--temporal-median", "3", "--quiet"]) == 2
    assert "no frames in" in capsys.readouterr().err
    audio_only = tmp_path / "tone.m4a"
    with av.open(str(audio_only), "w", format="mp4") as c:
        s = c.add_stream("aac", rate=48000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 48000
        c.mux(s.encode(frame))
        c.mux(s.encode(None))
    with pytest.raises(VideoError, match="has no video stream"):
        open_frames(audio_only)


def test_unwritable_output(clip, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert cli.main(["derain", str(clip), str(blocker / "out.mp4"), "--temporal-median", "3", "--quiet"]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_an_interrupted_write_leaves_nothing_under_the_final_name(clip, tmp_path):
    out = tmp_path / "out.mp4"
    with pytest.raises(KeyboardInterrupt), open_frames(clip) as src, FrameWriter(out, src.info.fps) as w:
        for i, frame in enumerate(src.frames(w.write_audio)):
            w.write(frame)
            if i == 5:
                raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_existing_output_needs_overwrite(clip, tmp_path, capsys):
    out = tmp_path / "out.mp4"
    out.write_bytes(b"old")
    assert cli.main(["derain", str(clip), str(out), "--temporal-median", "3", "--quiet"]) == 2
    assert "--overwrite" in capsys.readouterr().err and out.read_bytes() == b"old"
    assert cli.main(["derain", str(clip), str(out), "--temporal-median", "3", "--quiet", "--overwrite"]) == 0
    assert _streams(out)[0] == 12


def test_odd_frame_size_is_kept(tmp_path):
    rng = np.random.default_rng(1)
    out = tmp_path / "odd.mp4"
    with FrameWriter(out, Fraction(5)) as w:
        for _ in range(3):
            w.write(rng.integers(0, 256, (33, 45, 3), dtype=np.uint8))
    assert _streams(out)[:3] == (3, Fraction(5), (45, 33))


# ---- clips as scenes, the static-camera check


def test_sample_indices_spread_over_the_clip():
    assert sample_indices(100, 5) == [0, 25, 50, 74, 99]
    assert sample_indices(3, 10) == [0, 1, 2]
    with pytest.raises(VideoError, match="at least 2 frames"):
        sample_indices(1, 4)


def test_camera_shift_measures_a_pan():
    moving = dataclasses.replace(CAMERA, size=(96, 128), pan_px_per_frame=2.0, frames=4)
    frames = [r for r, _ in clip_frames(moving, seed=0)]
    dx, dy = camera_shift(frames[0], frames[3])
    assert abs(abs(dx) - 6.0) < 0.75 and abs(dy) < 0.75
    static = [r for r, _ in clip_frames(dataclasses.replace(moving, pan_px_per_frame=0.0), seed=0)]
    assert max(map(abs, camera_shift(static[0], static[3]))) < 0.5


def test_extract_scenes_writes_a_scene_per_clip_and_reuses_it(clip, tmp_path):
    root = tmp_path / "frames"
    scenes = extract_scenes([clip, clip], root, frames_per_clip=6)
    assert [s.folder for s in scenes] == ["00_cam", "01_cam"]
    assert scenes[0].frames == sample_indices(12, 6) and scenes[0].max_shift < 1.0
    assert len(list((root / "00_cam").glob("*.png"))) == 6
    stamp = (root / "00_cam" / "frame_000000.png").stat().st_mtime_ns
    assert extract_scenes([clip, clip], root, frames_per_clip=6) == scenes  # reused, not decoded again
    assert (root / "00_cam" / "frame_000000.png").stat().st_mtime_ns == stamp


def test_moving_camera_is_refused_with_what_was_measured(tmp_path):
    moving = write_clip(tmp_path / "pan.mp4", dataclasses.replace(CAMERA, size=(96, 128), pan_px_per_frame=1.5), 0)
    with pytest.raises(MovingCameraError, match=r"camera is not static: frame \d+ .* shifted by \([+-]\d+\.\d\d"):
        extract_scenes([moving], tmp_path / "frames", frames_per_clip=6)
    assert not (tmp_path / "frames").exists() and not list(tmp_path.glob(".frames*"))


# ---- mgid finetune


def _finetune(tmp_path: Path, weights: Path, *extra: str) -> int:
    return cli.main(["finetune", "--video", *extra, "--weights", str(weights), "--out", str(tmp_path / "run"),
                     "--device", "cpu", "--crop-size", "32", "--batch-size", "2", "--max-steps", "2",
                     "--bn-recalibration-batches", "1", "--precision", "fp32", "--channels-last", "off",
                     "--val-count", "1", "--embedded.paired_size", "32", "--checkpoint-every", "1"])


def test_finetune_starts_from_the_weights_and_writes_weights_derain_takes(clip, weights, tmp_path):
    assert _finetune(tmp_path, weights, str(clip)) == 0
    last = tmp_path / "run" / "checkpoints" / "last.safetensors"
    tuned = load_model(last, device="cpu")
    start = load_model(weights, device="cpu")
    moved = [k for k, v in tuned.net.state_dict().items() if not np.array_equal(v.numpy(), start.net.state_dict()[k].numpy())]
    assert moved  # trained from there ...
    assert tuned.net.config == start.net.config  # ... the same network
    assert cli.main(["derain", str(clip), str(tmp_path / "out.mp4"), "--weights", str(last), "--device", "cpu",
                     "--quiet"]) == 0
    # resume continues the run (frames reused)
    assert cli.main(["finetune", "--video", str(clip), "--weights", str(weights), "--out", str(tmp_path / "run"),
                     "--resume", "--max-steps", "3"]) == 0


def test_finetune_refuses_a_moving_camera(tmp_path, weights, capsys):
    moving = write_clip(tmp_path / "pan.mp4", dataclasses.replace(CAMERA, size=(96, 128), pan_px_per_frame=1.5), 0)
    assert _finetune(tmp_path, weights, str(moving)) == 2
    err = capsys.readouterr().err
    assert "camera is not static" in err and "px" in err
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_finetune_print_config_shows_the_run_and_writes_nothing(clip, weights, tmp_path, capsys):
    assert cli.main(["finetune", "--video", str(clip), "--weights", str(weights), "--out", str(tmp_path / "run"),
                     "--print-config"]) == 0
    out = capsys.readouterr().out
    assert f"init_weights: {weights}" in out and "layout: scenes" in out and "max_steps: 1000" in out
    assert not (tmp_path / "run").exists()


def test_finetune_starts_from_a_pretrained_folder(clip, weights, tmp_path):
    """Issue 26: weights saved with save_pretrained (the Hugging Face Hub layout) are a start for fine-tuning."""
    import mgid

    folder = mgid.save_pretrained(load_model(weights, device="cpu"), tmp_path / "pretrained")
    assert _finetune(tmp_path, folder, str(clip)) == 0
    tuned = load_model(tmp_path / "run" / "checkpoints" / "last.safetensors", device="cpu")
    assert tuned.net.config == load_model(folder, device="cpu").net.config

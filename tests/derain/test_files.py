"""`mgid.derain.files`: which files an INPUT names, the plan checks, the de-rain loop, atomic writes."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import mgid.data.imageio as imageio
from mgid.data import read_image, write_image
from mgid.derain.files import (
    DerainReport,
    Job,
    PlanError,
    collect_inputs,
    derain_files,
    plan_derain,
)


class FakeDerainer:
    """Stands in for `mgid.derain.derainer.Derainer`: the "clean" image is the inverted input."""

    def __init__(self, oom: BaseException | None = None):
        self.oom = oom

    def derain_with_rain(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.oom is not None and rgb.shape[0] == 7:
            raise self.oom
        return 255 - rgb, np.zeros_like(rgb)


@pytest.fixture()
def photos(tmp_path: Path) -> Path:
    """photos/a.png, photos/b.jpg, photos/sub/c.png, photos/.hidden/d.png, photos/notes.txt."""
    root = tmp_path / "photos"
    rng = np.random.default_rng(0)
    for rel in ("a.png", "b.jpg", "sub/c.png", ".hidden/d.png"):
        write_image(root / rel, rng.integers(0, 256, (8, 12, 3), dtype=np.uint8))
    (root / "notes.txt").write_text("not an image")
    return root


def _rel(files: list[tuple[Path, Path]]) -> list[str]:
    return [str(rel) for _, rel in files]


def test_collect_folder_file_and_glob(photos, tmp_path):
    files, seen, ignored = collect_inputs(str(photos), tmp_path / "out")
    assert _rel(files) == ["a.png", "b.jpg", "notes.txt", "sub/c.png"]  # hidden skipped, non-images kept
    assert seen == [p for p, _ in files] and ignored == 0
    files, _, _ = collect_inputs(str(photos / "sub" / "c.png"), tmp_path / "out")
    assert _rel(files) == ["c.png"]
    files, _, _ = collect_inputs(str(photos / "**" / "*.png"), tmp_path / "out")
    assert _rel(files) == ["a.png", "sub/c.png"]  # relative to the glob's folder part
    with pytest.raises(FileNotFoundError, match="no files match"):
        collect_inputs(str(photos / "*.gif"), tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="input not found"):
        collect_inputs(str(tmp_path / "nothing"), tmp_path / "out")


def test_collect_skips_the_output_folder_inside_the_input(photos):
    write_image(photos / "derained" / "a.png", np.zeros((8, 8, 3), np.uint8))  # an earlier result
    files, _, ignored = collect_inputs(str(photos), photos / "derained")
    assert "derained/a.png" not in _rel(files) and ignored == 1
    files, _, _ = collect_inputs(str(photos / "**" / "*.png"), photos / "derained")
    assert "derained/a.png" not in _rel(files)
    files, _, ignored = collect_inputs(str(photos), photos)  # OUTPUT == INPUT: nothing is ignored ...
    assert ignored == 0 and "derained/a.png" in _rel(files)


def test_plan_layout_and_refusals(photos, tmp_path):
    plan = plan_derain(str(photos), tmp_path / "out", save_rain=True, compare=True)
    job = next(j for j in plan.jobs if j.source.name == "c.png")
    assert job.outputs() == [tmp_path / "out/sub/c.png", tmp_path / "out/sub/c_rain.png",
                             tmp_path / "out/sub/c_compare.png"]
    assert not plan.single_file_output and plan.output_folder == tmp_path / "out"
    single = plan_derain(str(photos / "a.png"), tmp_path / "one" / "clean.png")
    assert single.single_file_output and [j.output for j in single.jobs] == [tmp_path / "one" / "clean.png"]
    assert single.output_folder == tmp_path / "one"
    with pytest.raises(PlanError, match="changes the format"):
        plan_derain(str(photos / "a.png"), tmp_path / "clean.jpg")
    with pytest.raises(PlanError, match="never writes over its inputs"):
        plan_derain(str(photos), photos, overwrite=True)
    with pytest.raises(PlanError, match="is a file"):
        plan_derain(str(photos), photos / "notes.txt")
    write_image(photos / "a_rain.png", np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(PlanError, match="would both write"):
        plan_derain(str(photos), tmp_path / "out", save_rain=True)
    write_image(tmp_path / "out" / "b.jpg", np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(PlanError, match="already exist"):
        plan_derain(str(photos), tmp_path / "out")
    assert plan_derain(str(photos), tmp_path / "out", overwrite=True).jobs  # allowed with overwrite


def test_derain_files_writes_results_and_skips_bad_files_with_reasons(photos, tmp_path):
    (photos / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    plan = plan_derain(str(photos), tmp_path / "out", save_rain=True)
    seen: list[tuple[Path, str]] = []
    report = derain_files(FakeDerainer(), plan.jobs, progress=False, on_skip=lambda p, r: seen.append((p, r)))
    assert isinstance(report, DerainReport) and not report.ok
    assert report.done == 3 and seen == report.skipped
    reasons = {p.name: r for p, r in report.skipped}
    assert set(reasons) == {"broken.png", "notes.txt"}
    assert "not a readable image" in reasons["broken.png"] and "not an image file (suffix '.txt'" in reasons["notes.txt"]
    np.testing.assert_array_equal(read_image(tmp_path / "out" / "a.png"), 255 - read_image(photos / "a.png"))
    assert (tmp_path / "out" / "sub" / "c_rain.png").is_file()
    assert not (tmp_path / "out" / "broken.png").exists() and not (tmp_path / "out" / "notes.txt").exists()
    assert not [p for p in (tmp_path / "out").rglob("*") if p.name.startswith(".")]  # no temporary files left


#: How running out of memory arrives: CUDA, torch's CPU allocator (a plain RuntimeError), NumPy, OpenCV.
OOM_ERRORS = [torch.OutOfMemoryError("CUDA out of memory"),
              RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate "
                           "memory: you tried to allocate 5754585600 bytes. Error code 12 (Cannot allocate memory)"),
              MemoryError("Unable to allocate 4.00 GiB"), RuntimeError("cv::OutOfMemoryError Insufficient memory")]


@pytest.mark.parametrize("oom", OOM_ERRORS, ids=["cuda", "cpu-allocator", "numpy", "opencv"])
def test_out_of_memory_is_skipped_with_advice(tmp_path, oom):
    write_image(tmp_path / "big.png", np.zeros((7, 9, 3), np.uint8))
    write_image(tmp_path / "small.png", np.zeros((4, 4, 3), np.uint8))
    jobs = [Job(tmp_path / n, tmp_path / "out" / n) for n in ("big.png", "small.png")]
    report = derain_files(FakeDerainer(oom), jobs, progress=False)
    assert report.done == 1 and len(report.skipped) == 1
    path, reason = report.skipped[0]
    assert path.name == "big.png" and "out of memory for a 9x7 image" in reason and "--tile" in reason


def test_other_runtime_errors_stop_the_run(tmp_path):
    """A failure that is not about memory (a broken network) is not turned into a skipped file."""
    write_image(tmp_path / "big.png", np.zeros((7, 9, 3), np.uint8))
    with pytest.raises(RuntimeError, match="NaN"):
        derain_files(FakeDerainer(RuntimeError("the network gave NaN")), [Job(tmp_path / "big.png", tmp_path / "o.png")],
                     progress=False)


def test_failed_write_leaves_no_partial_file(tmp_path, monkeypatch):
    write_image(tmp_path / "in" / "a.png", np.full((8, 8, 3), 10, np.uint8))
    final = tmp_path / "out" / "a.png"
    write_image(final, np.full((8, 8, 3), 99, np.uint8))  # an earlier result, replaced only when complete
    before = final.read_bytes()

    def failing_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(imageio.os, "replace", failing_replace)
    report = derain_files(FakeDerainer(), [Job(tmp_path / "in" / "a.png", final)], progress=False)
    assert report.done == 0 and "No space left" in report.skipped[0][1]
    assert final.read_bytes() == before  # the old file is intact ...
    assert sorted(p.name for p in final.parent.iterdir()) == ["a.png"]  # ... and no temporary file is left
    monkeypatch.undo()
    (tmp_path / "out2").mkdir()
    report = derain_files(FakeDerainer(), [Job(tmp_path / "in" / "a.png", tmp_path / "out2" / "a.png")],
                          progress=False)
    assert report.ok and report.done == 1


def test_write_image_keeps_normal_permissions(tmp_path):
    p = write_image(tmp_path / "x.png", np.zeros((4, 4, 3), np.uint8))
    plain = tmp_path / "plain"
    plain.write_bytes(b"")
    assert p.stat().st_mode & 0o777 == plain.stat().st_mode & 0o777


def test_suffix_names_results_and_their_extras(photos, tmp_path):
    plan = plan_derain(str(photos), tmp_path / "out", save_rain=True, compare=True, suffix="_derained")
    assert [str(j.output.relative_to(tmp_path / "out")) for j in plan.jobs] == [
        "a_derained.png", "b_derained.jpg", "notes_derained.txt", "sub/c_derained.png"]
    assert [p.name for p in plan.jobs[0].outputs()] == ["a_derained.png", "a_derained_rain.png",
                                                        "a_derained_compare.png"]
    default = plan_derain(str(photos), tmp_path / "out")  # no suffix: the input's own name
    assert [str(j.output.relative_to(tmp_path / "out")) for j in default.jobs] == ["a.png", "b.jpg", "notes.txt",
                                                                                  "sub/c.png"]
    for bad in ("_a/b", "x\0"):
        with pytest.raises(PlanError, match="contains"):
            plan_derain(str(photos), tmp_path / "out", suffix=bad)
    with pytest.raises(PlanError, match="already names the result"):
        plan_derain(str(photos / "a.png"), tmp_path / "one.png", suffix="_x")


def test_suffix_writes_beside_the_inputs_and_skips_earlier_results(photos, tmp_path):
    with pytest.raises(PlanError, match="never writes over its inputs"):
        plan_derain(str(photos), photos)  # without a suffix the results would be the inputs
    plan = plan_derain(str(photos / "*.png"), photos, suffix="_x")
    assert [j.output.name for j in plan.jobs] == ["a_x.png"] and plan.ignored == 0
    assert derain_files(FakeDerainer(), plan.jobs, progress=False).ok
    with pytest.raises(PlanError, match="already exist"):  # the result is not taken for an input ...
        plan_derain(str(photos / "*.png"), photos, suffix="_x")
    again = plan_derain(str(photos / "*.png"), photos, suffix="_x", overwrite=True)
    assert [j.source.name for j in again.jobs] == ["a.png"] and again.ignored == 1  # ... but left out


def test_results_keep_metadata_upright(tmp_path):
    from PIL import Image, ImageCms

    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    exif = Image.Exif()
    exif[0x010F], exif[0x0112] = "Canon", 6
    rgb = np.random.default_rng(0).integers(0, 256, (8, 12, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "a.png", exif=exif, icc_profile=icc)
    report = derain_files(FakeDerainer(), [Job(tmp_path / "a.png", tmp_path / "out" / "a.png")], progress=False)
    assert report.ok
    with Image.open(tmp_path / "out" / "a.png") as out:
        assert out.info["icc_profile"] == icc and out.getexif()[0x010F] == "Canon" and out.getexif()[0x0112] == 1
        np.testing.assert_array_equal(np.asarray(out), 255 - np.rot90(rgb, -1))

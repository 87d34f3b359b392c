"""De-raining image files on disk: which files an INPUT names, where their results go, the loop.

The library behind ``mgid derain``: `plan_derain` turns INPUT (a file, a folder searched recursively, or a glob)
and OUTPUT into a checked `DerainPlan`, one `Job` per input file (no output on an input, no two outputs on one
path, no existing output without ``overwrite``; its parts are `collect_inputs`, `plan_jobs` and `check_jobs`).
`derain_files` de-rains the jobs with a `mgid.derain.derainer.Derainer`, writes each result atomically (upright,
with its input's EXIF and ICC profile where the format holds them) and returns a `DerainReport` of the files done
and skipped with the reason; one bad file never stops the others.
"""
from __future__ import annotations

import glob
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mgid.data.imageio import (
    IMAGE_SUFFIXES,
    JPEG_QUALITY,
    SIXTEEN_BIT_SUFFIXES,
    Photo,
    read_photo,
    write_image,
    write_photo,
)
from mgid.errors import MgidError

#: Suffixes of the extra outputs beside ``<stem>.<ext>``: the rain layer and the comparison picture.
RAIN_TAG, COMPARE_TAG = "_rain", "_compare"
_GLOB_MAGIC = set("*?[")


class PlanError(MgidError, ValueError):
    """INPUT / OUTPUT cannot be de-rained as given (nothing was written); the message says why."""


@dataclass
class Job:
    """One input file and where its outputs go (``rain``/``compare`` only when asked for)."""

    source: Path
    output: Path
    rain: Path | None = None
    compare: Path | None = None

    def outputs(self) -> list[Path]:
        """The paths this job writes: the result first, then the rain layer and comparison if any."""
        return [p for p in (self.output, self.rain, self.compare) if p is not None]


@dataclass
class DerainPlan:
    """What `plan_derain` decided: the jobs, the input files seen, and how results are laid out."""

    jobs: list[Job]
    #: Every input file named by INPUT (images or not).
    input_files: list[Path]
    #: Files below INPUT left out as earlier results: they lie in the OUTPUT folder, or are named as another
    #: input's output (with a suffix, results beside their inputs).
    ignored: int
    #: True when OUTPUT is the result file of a single input file rather than a folder.
    single_file_output: bool
    #: Folder the results go to (OUTPUT, or its parent with ``single_file_output``).
    output_folder: Path


@dataclass
class DerainReport:
    """What `derain_files` did: the number of images written, the files skipped (with reasons) and the files
    written with their pixels changed to fit (with notes)."""

    done: int = 0
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    notes: list[tuple[Path, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when no file was skipped."""
        return not self.skipped


def _is_hidden(rel: Path) -> bool:
    return any(part.startswith(".") for part in rel.parts)


def _within(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
        return True
    except ValueError:
        return False


def _strictly_inside(folder: Path, root: Path) -> bool:
    """True when ``folder`` lies below ``root`` (not ``root`` itself)."""
    return folder.resolve() != root.resolve() and _within(folder, root)


def collect_inputs(spec: str, output: Path) -> tuple[list[tuple[Path, Path]], list[Path], int]:
    """Files named by INPUT: ``([(file, path relative to the input root)], every file seen, files ignored)``.

    A file gives itself; a folder every non-hidden file below it (recursively; files under
    ``output`` are ignored when OUTPUT lies inside INPUT); a glob (``*``, ``?``, ``[``; ``**`` recurses)
    its matching files, relative to the pattern's folder part (files under ``output`` are skipped when
    OUTPUT lies below that folder). Non-image files are included here
    (they are reported and skipped later). Raises ``FileNotFoundError`` when nothing matches.
    """
    path = Path(spec).expanduser()
    if path.is_file():
        return [(path, Path(path.name))], [path], 0
    if path.is_dir():
        files, ignored = [], 0
        skip_output = _strictly_inside(output, path)
        for p in sorted(path.rglob("*")):
            if not p.is_file() or _is_hidden(p.relative_to(path)):
                continue
            if skip_output and _within(p, output):
                ignored += 1
                continue
            files.append((p, p.relative_to(path)))
        return files, [p for p, _ in files], ignored
    if _GLOB_MAGIC & set(spec):
        parts = Path(spec).parts
        k = next(i for i, part in enumerate(parts) if _GLOB_MAGIC & set(part))
        base = Path(*parts[:k]) if k else Path(".")
        matches = sorted(Path(m) for m in glob.glob(os.path.expanduser(spec), recursive=True))
        skip_output = _strictly_inside(output, base)
        files = [(m, m.relative_to(base)) for m in matches
                 if m.is_file() and not (skip_output and _within(m, output))]
        if not files:
            raise FileNotFoundError(f"no files match {spec!r}")
        return files, [m for m, _ in files], 0
    raise FileNotFoundError(f"input not found: {spec} (give an image file, a folder or a quoted glob like "
                            f"'photos/*.jpg')")


def plan_jobs(inputs: list[tuple[Path, Path]], output: Path, save_rain: bool, compare: bool,
              single_file_output: bool = False, suffix: str = "") -> list[Job]:
    """Where each input's outputs go: ``OUTPUT/<relative path>`` with ``suffix`` after the stem (same name when
    it is empty; same format), plus ``<result stem>_rain.png`` and ``<result stem>_compare.png`` beside it when
    asked for. With ``single_file_output``, ``output`` is the result file itself (``suffix`` unused)."""
    jobs = []
    for source, rel in inputs:
        out = output if single_file_output else output / rel
        if suffix and not single_file_output:
            out = out.with_name(out.stem + suffix + out.suffix)
        rain = out.with_name(out.stem + RAIN_TAG + ".png") if save_rain else None
        comp = out.with_name(out.stem + COMPARE_TAG + ".png") if compare else None
        jobs.append(Job(source, out, rain, comp))
    return jobs


def check_jobs(jobs: list[Job], input_files: list[Path], overwrite: bool) -> str | None:
    """Why the plan is unsafe (an output that is an input, two outputs on one path, existing outputs
    without ``overwrite``), or None when it is safe."""
    inputs = {p.resolve(): p for p in input_files}
    seen: dict[Path, Path] = {}
    existing = []
    for job in jobs:
        for out in job.outputs():
            key = out.resolve()
            if key in inputs:
                return (f"{out} would overwrite the input {inputs[key]}; mgid never writes over its inputs: choose an "
                        f"OUTPUT folder that is not the input folder")
            if key in seen:
                return (f"{seen[key]} and {job.source} would both write {out}; rename one of them or leave out "
                        f"--save-rain/--compare")
            seen[key] = job.source
            if out.exists():
                existing.append(out)
    if existing and not overwrite:
        shown = ", ".join(str(p) for p in existing[:3]) + (f" and {len(existing) - 3} more" if len(existing) > 3 else "")
        return f"{shown} already exist(s); pass --overwrite to replace outputs (inputs are never overwritten)"
    return None


def suffix_problem(suffix: str) -> str | None:
    """Why ``suffix`` cannot follow a file name's stem (a path separator, a NUL), or None when it can."""
    bad = [c for c in ("/", os.sep, os.altsep, "\0") if c and c in suffix]
    if bad:
        return f"--suffix {suffix!r} contains {bad[0]!r}; it is added to file names, not paths"
    return None


def _without_earlier_results(jobs: list[Job], all_files: list[Path]) -> tuple[list[Job], list[Path]]:
    """``jobs`` and ``all_files`` without the input files that another job writes (earlier results beside their
    inputs, e.g. ``a_derained.jpg`` of ``a.jpg`` with ``--suffix _derained``); a job writing its own input stays,
    for `check_jobs` to refuse."""
    writers: dict[Path, set[Path]] = {}
    for job in jobs:
        for out in job.outputs():
            writers.setdefault(out.resolve(), set()).add(job.source.resolve())
    earlier = {key for key in (p.resolve() for p in all_files) if writers.get(key, set()) - {key}}
    return ([j for j in jobs if j.source.resolve() not in earlier],
            [p for p in all_files if p.resolve() not in earlier])


def plan_derain(input_spec: str, output: str | Path, save_rain: bool = False, compare: bool = False,
                overwrite: bool = False, suffix: str = "") -> DerainPlan:
    """The checked jobs of de-raining INPUT into OUTPUT; writes nothing.

    INPUT is a file, a folder searched recursively, or a glob. OUTPUT is a result file name exactly when INPUT
    is one file and OUTPUT has an image suffix and is not an existing folder; it must then keep INPUT's suffix.
    Results in an OUTPUT folder are named ``<stem><suffix><ext>``; with a ``suffix`` OUTPUT may be INPUT's folder,
    and input files named as another input's result are left out as earlier results (counted in
    `DerainPlan.ignored`).

    Args:
        input_spec: INPUT.
        output: OUTPUT, a folder or (for one input file) a file name with the same suffix.
        save_rain: also plan the rain layer's file of each result.
        compare: also plan a comparison picture of each result.
        overwrite: allow replacing existing outputs.
        suffix: added to each result's stem (empty: the input's name).

    Returns:
        The checked `DerainPlan`.

    Raises:
        PlanError: an existing file as OUTPUT folder, a format change, a ``suffix`` with a path separator or
            with a result file name as OUTPUT, an unsafe plan (see `check_jobs`); the message is for the user.
        FileNotFoundError: INPUT names nothing.
    """
    problem = suffix_problem(suffix)
    if problem:
        raise PlanError(problem)
    output = Path(output).expanduser()
    single = Path(input_spec).is_file() and output.suffix.lower() in IMAGE_SUFFIXES and not output.is_dir()
    if output.exists() and not output.is_dir() and not single:
        raise PlanError(f"OUTPUT {output} is a file; give a folder (it is created)")
    if single and suffix:
        raise PlanError(f"--suffix names results in an OUTPUT folder; OUTPUT {output} already names the result")
    inputs, all_files, ignored = collect_inputs(input_spec, output)
    if single and output.suffix.lower() != Path(input_spec).suffix.lower():
        raise PlanError(f"{output} changes the format of {input_spec}; keep the suffix "
                        f"{Path(input_spec).suffix} or give a folder")
    jobs = plan_jobs(inputs, output, save_rain, compare, single_file_output=single, suffix=suffix)
    kept, all_files = _without_earlier_results(jobs, all_files)
    ignored += len(jobs) - len(kept)
    jobs = kept
    problem = check_jobs(jobs, all_files, overwrite)
    if problem:
        raise PlanError(problem)
    return DerainPlan(jobs, all_files, ignored, single, output.parent if single else output)


def _not_an_image(path: Path) -> str | None:
    """Why ``path`` is not de-rained for its suffix, or None when the suffix is an image's."""
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return None
    return (f"not an image file (suffix {path.suffix or 'none'!r}; images are "
            f"{', '.join(IMAGE_SUFFIXES)})")


def _eight_bit(pixels: np.ndarray) -> np.ndarray:
    """uint16 pixels (any shape) -> uint8, rounded; uint8 unchanged."""
    if pixels.dtype == np.uint8:
        return pixels
    return ((pixels.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)


def _fit_depth(photo: Photo, output: Path) -> Photo:
    """``photo`` in a depth ``output``'s format holds: 16 bits only in PNG/TIFF (else 8, with a note)."""
    if photo.rgb.dtype == np.uint8 or output.suffix.lower() in SIXTEEN_BIT_SUFFIXES:
        return photo
    alpha = None if photo.alpha is None else _eight_bit(photo.alpha)
    return Photo(_eight_bit(photo.rgb), alpha, f"16-bit pixels, written as 8-bit ({output.suffix} holds 8)",
                 photo.metadata)


def derain_one(derainer, job: Job, max_pixels: int | None = None, jpeg_quality: int = JPEG_QUALITY) -> str | None:
    """De-rain ``job.source`` and write its outputs (each atomically: a failed write leaves no partial
    file under the final name); returns a note when the pixels were changed to fit (a float image written
    as 8-bit), else None. The colour is de-rained upright in the file's depth (8 or 16 bits), an alpha channel
    is copied unchanged, and the result keeps the input's EXIF (Orientation 1) and ICC profile where its
    format holds them; a JPEG result is written with ``jpeg_quality`` (1 to 100). Raises ``OSError``/``ValueError``
    for a file that cannot be read or written (or is over ``max_pixels``, checked from its header) and an
    out-of-memory error when the image does not fit."""
    photo = _fit_depth(read_photo(job.source, max_pixels), job.output)
    clean, rain = derainer.derain_with_rain(photo.rgb)
    write_photo(job.output, Photo(clean, photo.alpha, metadata=photo.metadata), jpeg_quality=jpeg_quality)
    if job.rain is not None:
        write_image(job.rain, rain)
    if job.compare is not None:
        from mgid.visualize import image_grid

        grid = [[_eight_bit(photo.rgb), _eight_bit(clean), rain]]
        write_image(job.compare, image_grid(grid, headers=["input", "de-rained", "rain"]))
    return photo.note


def derain_files(derainer, jobs: Sequence[Job], progress: bool = True,
                 on_skip: Callable[[Path, str], None] | None = None, max_pixels: int | None = None,
                 jpeg_quality: int = JPEG_QUALITY, on_retry: Callable[[Path, str], None] | None = None) -> DerainReport:
    """De-rain every job with ``derainer`` (a `mgid.derain.derainer.Derainer`); never stops at a bad file.

    A file without an image suffix, one that cannot be read or written (``OSError``/``ValueError``)
    and an image too large for the memory (any allocation failure, `mgid.derain.memory_budget.is_out_of_memory`,
    once the derainer's retries in smaller tiles have failed too) are skipped with their reason, and
    ``on_skip(path, reason)`` is called at once (e.g. to print it above the progress bar, with
    ``tqdm.write``). ``progress`` shows a tqdm bar on stderr (and only on a terminal). ``max_pixels``: larger
    images are skipped from their header, before any decode (None: any size). ``jpeg_quality``: of JPEG results
    (1 to 100). Notes on pixels changed to fit a format (`derain_one`) are collected in the report.
    ``on_retry(path, line)`` is called once for an image the derainer retries in smaller tiles after running out
    of memory (`mgid.derain.derainer.retry_notices`); without it the line is kept in the report's notes.
    """
    from tqdm import tqdm

    from mgid.derain.derainer import retry_notices
    from mgid.derain.memory_budget import MemoryBudgetError, is_out_of_memory

    report = DerainReport()
    bar = tqdm(jobs, desc="de-raining", unit="img", disable=(not progress) or None, file=sys.stderr)
    try:
        for job in bar:
            reason = _not_an_image(job.source)
            if reason is None:
                def retried(line: str, source: Path = job.source) -> None:
                    if on_retry is not None:
                        on_retry(source, line)
                    else:
                        report.notes.append((source, line))

                try:
                    with retry_notices(retried):
                        note = derain_one(derainer, job, max_pixels, jpeg_quality)
                except (OSError, ValueError) as exc:
                    reason = str(exc)
                except (RuntimeError, MemoryError) as exc:
                    if not is_out_of_memory(exc):
                        raise  # a broken network (NonFiniteOutputError, ...) fails every file alike: stop
                    size = _size_text(job.source)
                    if isinstance(exc, MemoryBudgetError):  # the plan, or the retries down to the smallest tile
                        reason = f"too large for the memory ({size}): {exc}"
                    else:  # not where the derainer retries (reading, converting, writing), or a derainer without
                        reason = (f"out of memory for a {size} image; free memory, resize the image, or give "
                                  f"smaller tiles (--tile) or a lower --max-memory")
                else:
                    report.done += 1
                    if note is not None:
                        report.notes.append((job.source, note))
                    continue
            report.skipped.append((job.source, reason))
            if on_skip is not None:
                on_skip(job.source, reason)
    finally:
        bar.close()
    return report


def _size_text(path: Path) -> str:
    """``"WxH"`` of an image file for messages (``"?x?"`` when even the header cannot be read)."""
    from mgid.data.imageio import image_size

    try:
        h, w = image_size(path)
    except (OSError, ValueError):
        return "?x?"
    return f"{w}x{h}"

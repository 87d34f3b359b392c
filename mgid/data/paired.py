"""Paired (rainy, clean) evaluation data: matching files of two folders, and a Dataset over them.

Layouts as papers publish them: ``rain/`` + ``norain/`` (Rain100L/H: ``rain-001.png`` <-> ``norain-001.png``) and
``input/`` + ``target/`` (Restormer, MPRNet test sets: the same name on both sides). `find_pairs` matches the
files (its rule is in its docstring), `PairedFolder` reads the pairs.
"""
from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from mgid.errors import InputError

from .imageio import PathLike, list_images, read_image, to_tensor

#: (rainy folder, clean folder) names that `PairedFolder` recognises, in order of preference.
PAIRED_LAYOUTS: tuple[tuple[str, str], ...] = (("rain", "norain"), ("input", "target"))

# "rain"/"norain" followed by "-", "_" or a digit (so "rainbow" keeps its name)
_RAIN_PREFIX = re.compile(r"^(?:no)?rain(?:[-_](?=.)|(?=\d))")


def pair_key(stem: str) -> str | int:
    """Normalised matching key of a file stem (see `find_pairs`): ``"norain-012"`` -> ``12``."""
    rest = _RAIN_PREFIX.sub("", stem.lower(), count=1)
    return int(rest) if rest.isdigit() else rest


@dataclass
class PairingResult:
    """Outcome of `find_pairs`: matched (input, target) paths and the files left without a partner."""

    pairs: list[tuple[Path, Path]] = field(default_factory=list)
    unmatched_inputs: list[Path] = field(default_factory=list)
    unmatched_targets: list[Path] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        """True when every file on both sides has a partner."""
        return not self.unmatched_inputs and not self.unmatched_targets

    def describe(self, limit: int = 5) -> str:
        """A one-paragraph summary naming (up to ``limit``) unmatched files per side."""
        def names(ps: list[Path]) -> str:
            shown = ", ".join(p.name for p in ps[:limit])
            return shown + (f", ... ({len(ps)} in all)" if len(ps) > limit else "")
        parts = [f"{len(self.pairs)} pair(s)"]
        if self.unmatched_inputs:
            parts.append(f"inputs without a target: {names(self.unmatched_inputs)}")
        if self.unmatched_targets:
            parts.append(f"targets without an input: {names(self.unmatched_targets)}")
        return "; ".join(parts)


def _index(files: list[Path], key_fn, side: Path) -> dict[Any, Path]:
    out: dict[Any, Path] = {}
    for p in files:
        k = key_fn(p)
        if k in out:
            raise InputError(f"{side}: {out[k].name} and {p.name} match the same partner (key {k!r}); "
                             f"rename or remove one of them")
        out[k] = p
    return out


def find_pairs(inputs_dir: PathLike, targets_dir: PathLike) -> PairingResult:
    """Pair image files of ``inputs_dir`` (rainy images or predictions) with ``targets_dir`` (clean).

    Matching rule, in order:

    1. the same file stem (``0001.png`` <-> ``0001.jpg``);
    2. the same *key* (`pair_key`): the stem lower-cased, with a leading ``rain`` / ``norain`` token (followed by
       ``-``, ``_`` or a digit) removed, and a numeric rest read as a number. So ``rain-12.png``,
       ``norain-012.png`` and ``12.png`` all have key 12: a prediction that kept the rainy file name
       (``rain-12.png``) pairs with the ground truth ``norain-12.png``.

    Files left without a partner are reported, never silently dropped.

    Args:
        inputs_dir: folder of rainy images or predictions.
        targets_dir: folder of clean images.

    Returns:
        A `PairingResult` with pairs sorted by target name and the unmatched files of each side.

    Raises:
        FileNotFoundError: a folder is missing.
        InputError: two files of one side match the same partner, e.g. ``rain-1.png`` and ``rain-001.png``
            (a ``ValueError``).
    """
    a_dir, b_dir = Path(inputs_dir), Path(targets_dir)
    a_files, b_files = list_images(a_dir), list_images(b_dir)
    result = PairingResult()
    # 1. exact stems
    a_by_stem = _index(a_files, lambda p: p.stem, a_dir)
    b_by_stem = _index(b_files, lambda p: p.stem, b_dir)
    matched = {s for s in a_by_stem if s in b_by_stem}
    pairs = [(a_by_stem[s], b_by_stem[s]) for s in matched]
    a_rest = [p for p in a_files if p.stem not in matched]
    b_rest = [p for p in b_files if p.stem not in matched]
    # 2. normalised keys (rain-12 <-> norain-12 <-> 12)
    a_by_key = _index(a_rest, lambda p: pair_key(p.stem), a_dir)
    b_by_key = _index(b_rest, lambda p: pair_key(p.stem), b_dir)
    keys = {k for k in a_by_key if k in b_by_key}
    pairs += [(a_by_key[k], b_by_key[k]) for k in keys]
    result.pairs = sorted(pairs, key=lambda ab: (ab[1].name, ab[0].name))
    result.unmatched_inputs = [p for k, p in a_by_key.items() if k not in keys]
    result.unmatched_targets = [p for k, p in b_by_key.items() if k not in keys]
    return result


def detect_paired_layout(root: PathLike) -> tuple[Path, Path]:
    """The (rainy, clean) sub-folders of a paired test set.

    Args:
        root: the set's folder, holding one of `PAIRED_LAYOUTS`.

    Returns:
        ``(rainy_dir, clean_dir)``.

    Raises:
        FileNotFoundError: ``root`` is not a folder.
        InputError: no known pair of sub-folders (a ``ValueError``).
    """
    r = Path(root)
    if not r.is_dir():
        raise FileNotFoundError(f"paired data folder not found: {r}")
    for a, b in PAIRED_LAYOUTS:
        if (r / a).is_dir() and (r / b).is_dir():
            return r / a, r / b
    wanted = " or ".join(f"{a}/ + {b}/" for a, b in PAIRED_LAYOUTS)
    raise InputError(f"{r} is not a paired data set: expected sub-folders {wanted}")


class PairedFolder(Dataset):
    """A paired (rainy, clean) evaluation set on disk.

    ``root`` holds ``rain/`` + ``norain/`` or ``input/`` + ``target/`` (or pass ``rainy_dir`` and
    ``clean_dir`` explicitly). Items: ``{"rainy", "clean"}`` (3, H, W) float in [-1, 1] and
    ``"name"`` (the rainy file's stem).

    Args:
        root: the set's folder; or leave it out and give both ``rainy_dir`` and ``clean_dir``.
        rainy_dir: folder of rainy images.
        clean_dir: folder of clean images.
        strict: unmatched files raise instead of giving a warning.

    Raises:
        FileNotFoundError: a folder is missing.
        InputError: neither ``root`` nor both folders given, no pair at all, unmatched files with ``strict``,
            or (when an item is read) a rainy image whose size differs from its target (a ``ValueError``).
    """

    def __init__(self, root: PathLike | None = None, *, rainy_dir: PathLike | None = None,
                 clean_dir: PathLike | None = None, strict: bool = False) -> None:
        if rainy_dir is None or clean_dir is None:
            if root is None:
                raise InputError("PairedFolder needs root, or both rainy_dir and clean_dir")
            rainy_dir, clean_dir = detect_paired_layout(root)
        self.rainy_dir, self.clean_dir = Path(rainy_dir), Path(clean_dir)
        self.result = find_pairs(self.rainy_dir, self.clean_dir)
        if not self.result.pairs:
            raise InputError(f"no (rainy, clean) pairs between {self.rainy_dir} and {self.clean_dir}: "
                             f"{self.result.describe()}")
        if not self.result.complete:
            msg = f"{self.rainy_dir} / {self.clean_dir}: {self.result.describe()}"
            if strict:
                raise InputError(msg)
            warnings.warn(msg + " (unmatched files are skipped)", stacklevel=2)
        self.pairs = self.result.pairs

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict[str, Any]:
        rainy_path, clean_path = self.pairs[index]
        rainy, clean = read_image(rainy_path), read_image(clean_path)
        if rainy.shape != clean.shape:
            raise InputError(f"{rainy_path} is {rainy.shape[0]}x{rainy.shape[1]} but its target {clean_path} is "
                             f"{clean.shape[0]}x{clean.shape[1]} (HxW); a pair must have one size")
        return {"rainy": to_tensor(rainy), "clean": to_tensor(clean), "name": rainy_path.stem}

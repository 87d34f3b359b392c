"""Output paths checked before any work, and files written atomically.

`check_output_file` refuses at once, in one line, a path a long command could not write (under a file, in an
unwritable folder, with the wrong suffix, or an existing file without ``--overwrite``); `folder_problem` says why
a folder cannot be written; `write_atomic` writes bytes through a temporary file and ``os.replace``. Why
writability is probed by writing: docs/SCALING.md, "Design notes".
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

from mgid.errors import MgidError


class OutputPathError(MgidError, ValueError):
    """An output path that cannot or must not be written; the message says why and what to do."""


def nearest_existing_folder(path: Path) -> Path:
    """The first of ``path``'s parents that exists (``path`` itself excluded)."""
    for parent in path.absolute().parents:
        if parent.exists():
            return parent
    return Path(path.absolute().anchor)


def folder_problem(folder: str | Path) -> str | None:
    """Why files cannot be written in ``folder`` (created when missing), or None when they can.

    The folder need not exist yet: its nearest existing ancestor must be a folder in which a file can be
    created (probed with a temporary file, removed at once).
    """
    folder = Path(folder)
    target = folder if folder.is_dir() else nearest_existing_folder(folder)
    if folder.exists() and not folder.is_dir():
        return f"{folder} is a file, not a folder"
    if not target.is_dir():
        return f"{target} is a file, not a folder"
    try:
        fd, probe = tempfile.mkstemp(prefix=".mgid-write-probe.", dir=target)
    except OSError as exc:
        return f"cannot create files in {target} ({exc.strerror or exc})"
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(probe)
    return None


def check_output_file(path: str | Path, *, overwrite: bool, suffixes: Sequence[str] = (),
                      what: str = "output") -> Path:
    """``path`` as a file about to be written, checked: suffix (one of ``suffixes``, lower case with the dot,
    when given), not a folder, its folder writable (`folder_problem`), and not an existing file unless
    ``overwrite``. Returns the path (``~`` expanded); raises `OutputPathError` with a one-line message."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise OutputPathError(f"{what} {path} is a folder; name a file inside it, e.g. "
                              f"{path / ('mgid' + (suffixes[0] if suffixes else ''))}")
    if suffixes and path.suffix.lower() not in suffixes:
        raise OutputPathError(f"{what} {path} must end in {' or '.join(suffixes)}")
    problem = folder_problem(path.parent)
    if problem is not None:
        raise OutputPathError(f"cannot write {what} {path}: {problem}")
    if path.exists() and not overwrite:
        raise OutputPathError(f"{what} {path} already exists; pass --overwrite to replace it")
    return path


def write_atomic(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in its folder, fsync, then ``os.replace``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise

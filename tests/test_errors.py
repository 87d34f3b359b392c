"""`mgid.errors`: every exception class mgid defines derives from `MgidError` and keeps its builtin kind."""
from __future__ import annotations

import importlib
import re
from pathlib import Path

import mgid
from mgid.errors import MgidError

PACKAGE = Path(mgid.__file__).parent
#: ``class Name(Base, ...):`` where a base names an exception (builtin or ours).
CLASS = re.compile(r"^class (\w+)\(([^)]*(?:Error|Exception|Exceeded|Interrupted|Full|Deadline|Tile)[^)]*)\):", re.M)


def _defined_exceptions() -> list[type]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        names = [m.group(1) for m in CLASS.finditer(text)]
        if not names:
            continue
        module = importlib.import_module(".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts))
        found += [cls for cls in (getattr(module, n) for n in names)
                  if isinstance(cls, type) and issubclass(cls, BaseException)]
    return found


def test_every_exception_of_the_package_is_an_mgid_error():
    classes = _defined_exceptions()
    assert len(classes) >= 21, [c.__name__ for c in classes]  # the 21 classes at the time of writing, at least
    outside = [f"{c.__module__}.{c.__name__}" for c in classes if not issubclass(c, MgidError)]
    assert not outside, f"derive these from mgid.errors.MgidError: {outside}"


def test_builtin_kinds_are_kept():
    from mgid.checkpoint import CheckpointError
    from mgid.derain.derainer import NonFiniteOutputError
    from mgid.derain.memory_budget import OutOfMemoryAtSmallestTile
    from mgid.derain.web_server import UploadDeadline
    from mgid.devices import DeviceError

    assert issubclass(CheckpointError, ValueError) and issubclass(NonFiniteOutputError, RuntimeError)
    assert issubclass(OutOfMemoryAtSmallestTile, MemoryError) and issubclass(UploadDeadline, TimeoutError)
    assert issubclass(DeviceError, RuntimeError) and issubclass(DeviceError, ValueError)
    error = CheckpointError("bad file")
    assert isinstance(error, MgidError) and str(error) == "bad file"

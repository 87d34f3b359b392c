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


#: ``raise`` of a builtin that a caller's bad input can reach: mgid raises its own classes instead, so the command
#: line's one handler (`mgid.cli.common.run_command`, which catches MgidError and OSError) reports it in one line.
BUILTIN_RAISE = re.compile(r"(?<![\w.])(ValueError|RuntimeError|ModuleNotFoundError|ImportError)\(")  # raised or returned
#: Raises of builtins that are bugs, not bad input (a traceback is right): ``file: builtin``.
BUG_RAISES = {"derain/web.py: RuntimeError"}  # OpenCV failing to encode uint8 pixels as PNG


def test_bad_input_raises_mgid_errors():
    found = {f"{path.relative_to(PACKAGE).as_posix()}: {m.group(1)}"
             for path in PACKAGE.rglob("*.py") for m in BUILTIN_RAISE.finditer(path.read_text(encoding="utf-8"))}
    assert found == BUG_RAISES, f"raise an MgidError subclass (mgid.errors.InputError, ...) instead: {found}"


def test_the_cli_has_one_error_handler():
    """Only `run_command` catches errors for reporting; no command module catches RuntimeError or ValueError (a
    kernel or torch bug would then turn into a one-line message without its traceback)."""
    broad = re.compile(r"except \(?[^:]*\b(RuntimeError|ValueError|Exception|ImportError|MgidError)\b")
    found = [f"{path.name}:{n}: {line.strip()}" for path in sorted((PACKAGE / "cli").glob("*.py"))
             for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
             if broad.search(line) and path.name != "common.py"]
    assert not found, found
    common = (PACKAGE / "cli" / "common.py").read_text(encoding="utf-8")
    assert common.count("except (MgidError, OSError)") == 1

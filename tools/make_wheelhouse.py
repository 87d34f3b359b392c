#!/usr/bin/env python
"""The wheels that tools/gpu_check.sh carries to the lent GPU machine, and their install there.

The lent machine (an H200; see tools/gpu_check.sh) has Python 3.12 with torch and almost every
dependency of mgid installed, but no package index and no network: what it lacks travels as wheels
in a git-ignored folder named in the device tool's ``carry`` (64 MiB for the whole tree).

Subcommands:

``download`` (default; needs pip's index, run it HERE): fetches into ``--dest``
(default ``tools/wheelhouse``) the binary wheels of `PACKAGES` for CPython 3.12 on manylinux
x86_64 (``pip download --only-binary=:all: --no-deps``), plus each package's older ``fallback``
release built for an older glibc, then writes ``COMMIT`` (this checkout's commit, which
gpu_check.sh reports where the copy on the device has no ``.git``) and ``MANIFEST.txt``, and prints
the folder's size and the ``run`` command to use. Extra ``NAME==VERSION`` arguments are fetched too.

``list``: prints ``distribution import-name version`` of each package in `PACKAGES`.

``install`` (run THERE, by gpu_check.sh): for each package in `PACKAGES` that does not import,
``pip install --no-index --find-links WHEELS --no-deps --target TARGET NAME`` (pip picks the newest
wheel in the folder that fits the machine), one package at a time so that one bad wheel stops
nothing else, then checks that each imports with TARGET on ``sys.path``. ``--always`` installs even
what already imports (the dry run: proves the wheels install, into a throwaway TARGET). Exit 0 when
every package imports at the end, 1 when one is missing (the message says which and what needs it).

Run from the repository root: ``python -m tools.make_wheelhouse`` (here, with pip's index).
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_DEST = REPO / "tools" / "wheelhouse"
#: Python of the lent machine's image.
TARGET_PYTHON = "3.12"
#: glibc versions of the manylinux tags offered to pip (it matches each tag exactly), newest first.
GLIBC_MINORS = (39, 38, 36, 35, 34, 32, 31, 28, 27, 24, 17, 12, 5)
#: The carry limit of the device tool is 64 MiB for the whole working tree: stay far below it.
MAX_BYTES = 16 * 2**20


@dataclasses.dataclass(frozen=True)
class Package:
    """A dependency that the lent machine lacks and that travels as a wheel."""

    dist: str              # distribution name, as in pyproject.toml
    module: str            # import name
    version: str           # pinned release (the one the development venv here has)
    fallback: str | None   # an older release with a wheel for an older glibc (manylinux2014), or None
    needed_by: str         # what fails without it


#: What the lent machine lacks, of pyproject.toml's dependencies and test extras
#: (keep in step with `ON_DEVICE`; tests/benchmarks/test_gpu_check.py checks both against pyproject.toml).
PACKAGES: tuple[Package, ...] = (
    Package("kmeans1d", "kmeans1d", "0.5.0", "0.4.0",
            "bsw_mask(method='exact') (mgid.ops.reference.kmeans1d_exact_threshold) and its tests in "
            "tests/ops/test_ops_reference.py and tests/ops/test_kmeans1d.py"),
    Package("docstring-parser", "docstring_parser", "0.18.0", None,
            "mgid.config.train_config (the config dataclasses' field help): every mgid import that reaches the config"),
)

#: Dependencies (pyproject.toml: dependencies and optional extras) that the lent machine's image
#: already has (the device tool's KINDS.md, "Python packages already there"), so nothing travels.
ON_DEVICE: dict[str, str] = {
    "torch": "2.11.0+cu130, the image's build (never carry torch)",
    "numpy": "image",
    "opencv-python-headless": "image",
    "scikit-image": "image",
    "safetensors": "image",
    "tqdm": "image",
    "tensorboard": "image",
    "pyyaml": "image",
    "pytest": "image",
    "hypothesis": "image",
    "nvidia-cuda-cuobjdump": "the CUDA toolkit's own cuobjdump is on the image (tests/ops/test_kernel_resources.py finds either)",
    "matplotlib": "image",
    "psutil": "image",
    "pillow": "image",
    "huggingface-hub": "image",
    "ruff": "not needed there: the lint runs in `make test` here and in CI, not in gpu_check.sh",
    "clang-format": "not needed there: the csrc/ style check runs in `make test` here and in CI, not in gpu_check.sh",
    "onnx": "image",
    "onnxruntime": "image",
    "onnxscript": "image",
    "flask": "not needed there: only mgid web imports it (lazily) and gpu_check.sh does not serve the page",
    "playwright": "not needed there: the browser test (tests/derain/test_web.py) runs in CI, not in gpu_check.sh",
    "av": "not needed there: only the video commands import it (lazily) and gpu_check.sh runs none; its wheel "
          "(36 MB, FFmpeg inside) would not fit the carry budget",
}


def normalize(name: str) -> str:
    """PEP 503 normalised distribution name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def platforms(old_only: bool = False) -> list[str]:
    minors = [m for m in GLIBC_MINORS if m <= 17] if old_only else list(GLIBC_MINORS)
    tags = [f"manylinux_2_{m}_x86_64" for m in minors]
    return tags + ["manylinux2014_x86_64", "manylinux1_x86_64"]


def pip_download(spec: str, dest: Path, python_version: str, old_only: bool = False) -> int:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--python-version", python_version, "--implementation", "cp", "-d", str(dest)]
    for tag in platforms(old_only):
        cmd += ["--platform", tag]
    cmd.append(spec)
    print("+", " ".join(cmd), flush=True)
    return subprocess.run(cmd, check=False).returncode


def git_commit() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("-dirty" if dirty else "")


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def run_command(dest: Path, commit: str) -> str:
    try:
        carry = dest.resolve().relative_to(REPO).as_posix()
    except ValueError:
        carry = str(dest)
    wheels = "" if carry == "tools/wheelhouse" else f" GPU_CHECK_WHEELS={carry}"
    return (f"run(command='GPU_CHECK_COMMIT={commit}{wheels} bash tools/gpu_check.sh', "
            f"carry=['{carry}'], timeout_s=570)")


def cmd_download(args: argparse.Namespace) -> int:
    dest = Path(args.dest)
    dest.mkdir(parents=True, exist_ok=True)
    failed: list[str] = []
    with tempfile.TemporaryDirectory(prefix="wheelhouse-") as tmp:
        tmpdir = Path(tmp)
        specs = [(f"{p.dist}=={p.version}", False, True) for p in PACKAGES]
        specs += [(f"{p.dist}=={p.fallback}", True, False) for p in PACKAGES if p.fallback]
        specs += [(s, False, True) for s in args.extra]
        for spec, old_only, required in specs:
            if pip_download(spec, tmpdir, args.python_version, old_only) != 0:
                if required:
                    failed.append(spec)
                print(f"{'ERROR' if required else 'note'}: no wheel for {spec} (CPython {args.python_version}, "
                      "manylinux x86_64)", file=sys.stderr)
        wheels = sorted(tmpdir.glob("*.whl"))
        if not wheels:
            print("error: nothing downloaded; the folder is left as it was", file=sys.stderr)
            return 1
        for old in dest.glob("*.whl"):  # one download's set, no stale versions
            old.unlink()
        for w in wheels:
            shutil.move(str(w), dest / w.name)
    commit = git_commit()
    (dest / "COMMIT").write_text(commit + "\n")
    lines = []
    for w in sorted(dest.glob("*.whl")):
        digest = hashlib.sha256(w.read_bytes()).hexdigest()
        lines.append(f"{w.name}  {w.stat().st_size}  sha256={digest}")
    (dest / "MANIFEST.txt").write_text("\n".join(lines) + "\n")
    size = folder_bytes(dest)
    print("\n".join(lines))
    print(f"{dest}: {len(lines)} wheels, {size / 2**20:.2f} MiB in all (carry limit 64 MiB for the whole tree)")
    if size > MAX_BYTES:
        print(f"warning: over {MAX_BYTES // 2**20} MiB: the working tree and the wheels share 64 MiB", file=sys.stderr)
    print("On the lent GPU machine (the device tool), one call:\n  " + run_command(dest, commit))
    return 1 if failed else 0


def cmd_list(args: argparse.Namespace) -> int:
    for p in PACKAGES:
        print(p.dist, p.module, p.version)
    return 0


def _imports(module: str, target: Path | None) -> tuple[bool, str]:
    """Whether ``module`` imports in a fresh interpreter (``target`` first on sys.path); its version or error."""
    code = ("import sys, importlib\n"
            "m = importlib.import_module(sys.argv[1])\n"
            "print(getattr(m, '__version__', '') or 'imported', getattr(m, '__file__', ''))\n")
    env = dict(os.environ)
    if target is not None:
        env["PYTHONPATH"] = str(target) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    proc = subprocess.run([sys.executable, "-c", code, module], capture_output=True, text=True, env=env, check=False)
    text = (proc.stdout or proc.stderr).strip().splitlines()
    return proc.returncode == 0, (text[-1] if text else f"exit {proc.returncode}")


def cmd_install(args: argparse.Namespace) -> int:
    wheels = Path(args.wheels)
    target = Path(args.target)
    have_folder = wheels.is_dir()
    found = sorted(wheels.glob("*.whl")) if have_folder else []
    print(f"wheel folder {wheels}: " + (f"{len(found)} wheels" if have_folder else
                                         "absent (make it here with `python -m tools.make_wheelhouse` "
                                         "and name it in the run's carry)"))
    for w in found:
        print(f"  {w.name} ({w.stat().st_size} bytes)")
    names = {normalize(w.name.split("-")[0]) for w in found}
    missing: list[Package] = []
    for p in PACKAGES:
        ok, info = _imports(p.module, target if target.is_dir() else None)
        if ok and not args.always:
            print(f"{p.dist}: imports already ({info}); nothing to install")
            continue
        if normalize(p.dist) not in names:
            print(f"{p.dist}: no wheel in {wheels}" + ("" if ok else "; NOT importable"))
            if not ok:
                missing.append(p)
            continue
        target.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "install", "--isolated", "--no-index", "--find-links", str(wheels), "--no-deps",
               "--no-compile", "--no-cache-dir", "--upgrade", "--disable-pip-version-check", "--target",
               str(target), p.dist]
        print("+", " ".join(cmd), flush=True)
        rc = subprocess.run(cmd, check=False).returncode
        ok_after, info = _imports(p.module, target)
        print(f"{p.dist}: pip exit {rc}; " + (f"imports from {target}: {info}" if ok_after else f"NOT importable: {info}"))
        if not ok_after and not ok:
            missing.append(p)
    # wheels of other names (NAME==VERSION extras of `download`): installed by name, reported, not checked
    extra = sorted(names - {normalize(p.dist) for p in PACKAGES})
    for name in extra:
        target.mkdir(parents=True, exist_ok=True)
        rc = subprocess.run([sys.executable, "-m", "pip", "install", "--isolated", "--no-index", "--find-links", str(wheels),
                             "--no-deps", "--no-compile", "--no-cache-dir", "--upgrade",
                             "--disable-pip-version-check", "--target", str(target), name], check=False).returncode
        print(f"{name} (extra wheel): pip exit {rc}")
    for p in missing:
        print(f"MISSING: {p.dist} does not import: {p.needed_by} will fail or skip", file=sys.stderr)
    print("wheels: " + ("every package imports" if not missing else
                        f"missing {', '.join(p.dist for p in missing)}"))
    return 1 if missing else 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ("download", "list", "install", "-h", "--help"):
        argv.insert(0, "download")  # the default subcommand
    parser = argparse.ArgumentParser(prog="python -m tools.make_wheelhouse", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    dl = sub.add_parser("download", help="fetch the wheels here (the default)")
    dl.add_argument("--dest", default=str(DEFAULT_DEST), help="wheel folder (default: tools/wheelhouse)")
    dl.add_argument("--python-version", default=TARGET_PYTHON, help="CPython of the lent machine (3.12)")
    dl.add_argument("extra", nargs="*", help="more NAME==VERSION to fetch (their own dependencies are not)")
    sub.add_parser("list", help="print the packages: distribution, import name, version")
    ins = sub.add_parser("install", help="install the folder's wheels into --target (on the lent machine)")
    ins.add_argument("--wheels", default=str(DEFAULT_DEST), help="wheel folder (default: tools/wheelhouse)")
    ins.add_argument("--target", required=True, help="folder to install into (put it on PYTHONPATH)")
    ins.add_argument("--always", action="store_true", help="install even what already imports")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.command == "list":
        return cmd_list(args)
    if args.command == "install":
        return cmd_install(args)
    return cmd_download(args)


if __name__ == "__main__":
    sys.exit(main())

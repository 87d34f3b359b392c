"""Shared test setup: the `cuda` marker skips with a reason where no GPU (or no CUDA build) exists; one torch
thread per test; `load_benchmark`, the scripts of benchmarks/ as modules."""
from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import pytest
import torch

import mgid.ops


def cuda_skip_reason() -> str | None:
    """Why CUDA tests cannot run here, or None when they can."""
    if not torch.cuda.is_available():
        return "no CUDA GPU on this machine (run `pytest -m cuda` on a GPU machine: benchmarks/gpu_check.sh)"
    from mgid.ops import build_info
    if not build_info()["cuda"]:
        return "the mgid extension was built without CUDA kernels"
    return None


def pytest_collection_modifyitems(config, items):
    reason = cuda_skip_reason()
    if reason is None:
        return
    skip = pytest.mark.skip(reason=reason)
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


def device_params() -> list:
    """``cpu`` always, ``cuda`` marked (and so skipped where unavailable)."""
    return ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]


@pytest.fixture(autouse=True)
def _one_thread_default_ops():
    """One intra-op thread per test (two shared cores: OpenMP spinning makes tiny ops 100x slower when
    another process is busy), and the ops mode back to MGID_OPS after each test."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)
    mgid.ops.set_ops_mode(None)


#: The benchmark scripts: they ship with the source tree, not with the package.
BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def load_benchmark() -> Iterator[Callable[[str], ModuleType]]:
    """``load(name)``: benchmarks/<name>.py as a module, after the sibling it imports by name (harness.py).

    Run as a file, a script finds its siblings on ``sys.path[0]``; here each file is loaded with importlib's
    recipe and registered under its name while the test module runs (as dataclasses and ``import harness``
    need), with no change to ``sys.path``; the names are removed afterwards.
    """
    loaded: list[str] = []

    def load(name: str) -> ModuleType:
        for module_name in ("harness", name):
            if module_name in loaded:
                continue
            spec = importlib.util.spec_from_file_location(module_name, BENCHMARKS / f"{module_name}.py")
            module = importlib.util.module_from_spec(spec)
            sys.modules[module_name] = module
            loaded.append(module_name)
            spec.loader.exec_module(module)
        return sys.modules[name]

    try:
        yield load
    finally:
        for module_name in loaded:
            sys.modules.pop(module_name, None)

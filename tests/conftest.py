"""Shared test setup: the `cuda` marker skips with a reason where no GPU (or no CUDA build) exists; one torch
thread per test; the `weights` of a tiny untrained model. The benchmarks are the package ``benchmarks`` of the
repository root: tests import them by name."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

import mgid.ops
from tests.derain.tiny_network import tiny_weights


def cuda_skip_reason() -> str | None:
    """Why CUDA tests cannot run here, or None when they can."""
    if not torch.cuda.is_available():
        return "no CUDA GPU on this machine (run `pytest -m cuda` on a GPU machine: tools/gpu_check.sh)"
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


@pytest.fixture
def weights(tmp_path: Path) -> Path:
    """The weights of a tiny untrained MGIDNet (tests/derain/tiny_network.py), saved in tmp_path/w, one copy per
    test. Building them seeds torch's global generator (0): a test that asks for them draws reproducible values
    from it afterwards (tests/derain/test_precision.py does)."""
    return tiny_weights(tmp_path / "w")

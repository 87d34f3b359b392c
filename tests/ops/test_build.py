"""Which extension the package loads, and what it says when it ends on the reference (issue 26 parts 1 and 3)."""
from __future__ import annotations

import importlib.machinery
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mgid import ops
from mgid.ops import _build, _dispatch
from mgid.ops._source_hash import kernel_source_sha256

REPO = Path(__file__).resolve().parents[2]


def test_fingerprint_follows_every_kernel_source_and_ignores_line_endings(tmp_path):
    (tmp_path / "a.cpp").write_bytes(b"int a;\nint b;\n")
    (tmp_path / "k.cuh").write_bytes(b"// kernel\n")
    (tmp_path / "notes.txt").write_bytes(b"not a source")
    first = kernel_source_sha256(tmp_path)
    (tmp_path / "notes.txt").write_bytes(b"changed, still not a source")
    assert kernel_source_sha256(tmp_path) == first
    (tmp_path / "a.cpp").write_bytes(b"int a;\r\nint b;\r\n")
    assert kernel_source_sha256(tmp_path) == first
    (tmp_path / "k.cuh").write_bytes(b"// kernel 2\n")
    assert kernel_source_sha256(tmp_path) != first
    (tmp_path / "k.cuh").write_bytes(b"// kernel\n")
    (tmp_path / "b.h").write_bytes(b"")
    assert kernel_source_sha256(tmp_path) != first


def test_the_built_extension_records_the_sources_it_was_built_from():
    if not ops.build_info()["extension"]:
        pytest.skip("the extension is not built here")
    assert ops.build_info()["source_sha256"] == kernel_source_sha256(REPO / "csrc")


def test_installed_copies_are_found_on_sys_path_and_the_own_package_is_not(tmp_path, monkeypatch):
    suffix = importlib.machinery.EXTENSION_SUFFIXES[0]
    site = tmp_path / "site-packages"
    (site / "mgid").mkdir(parents=True)
    (site / "mgid" / f"_C{suffix}").write_bytes(b"")
    monkeypatch.setattr(sys, "path", [str(_build.PACKAGE_DIR.parent), str(tmp_path / "absent"), str(site)])
    assert _build._installed_extension_paths() == [site / "mgid" / f"_C{suffix}"]


def test_auto_says_why_it_ends_on_the_reference_and_fused_refuses(monkeypatch):
    monkeypatch.setattr(_dispatch, "extension_loaded", lambda: False)
    monkeypatch.setattr(_dispatch, "EXTENSION_ERROR", "cannot import mgid._C (No module named 'mgid._C')")
    reason = ops.unavailable_reason("cpu")
    assert "cannot import mgid._C" in reason and "pip install ." in reason
    ops.set_ops_mode("auto")
    assert ops.op_path("cpu") == "PyTorch reference"
    ops.set_ops_mode("fused")
    with pytest.raises(RuntimeError, match=r"fused mgid ops are unavailable on cpu: cannot import mgid._C.*pip install"):
        ops.op_path("cpu")


def test_a_cpu_only_build_names_the_missing_cuda_kernels(monkeypatch):
    monkeypatch.setattr(_dispatch, "fused_available", lambda device=None: torch.device(device).type == "cpu")
    monkeypatch.setattr(_dispatch, "extension_loaded", lambda: True)
    assert ops.unavailable_reason("cpu") is None
    assert "without CUDA kernels" in ops.unavailable_reason("cuda") and "MGID_FORCE_CUDA" in ops.unavailable_reason("cuda")


def _setup_py(env_extra: dict[str, str]) -> subprocess.CompletedProcess:
    """``python setup.py --name``: runs the build configuration (which kernels, the warning) and builds nothing."""
    env = {**os.environ, "CUDA_HOME": str(REPO / "no-such-cuda-toolkit"), **env_extra}
    env.pop("CUDA_PATH", None)
    return subprocess.run([sys.executable, "setup.py", "--name"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120)


@pytest.mark.skipif(torch.version.cuda is None, reason="the installed torch has no CUDA: nothing to warn about")
def test_setup_without_nvcc_builds_the_cpu_kernels_with_a_warning_and_force_cuda_refuses():
    warned = _setup_py({})
    assert warned.returncode == 0, warned.stderr
    assert warned.stdout.strip().splitlines()[-1] == "mgid"
    assert "no nvcc was found" in warned.stderr and "building the C++ CPU kernels only" in warned.stderr
    forced = _setup_py({"MGID_FORCE_CUDA": "1"})
    assert forced.returncode != 0
    assert "MGID_FORCE_CUDA=1" in forced.stderr and "nvcc not found" in forced.stderr


def test_info_reports_the_build_the_cpu_auto_and_the_weights(capsys):
    from mgid.cli import main

    assert main(["info"]) == 0
    text = capsys.readouterr().out
    for field in ("kernels", "CPU ISA copy" if ops.build_info()["extension"] else "why", "CPU", "auto for training",
                  "auto for inference", "mgid derain --backend auto: ", "shipped weights"):
        assert field in text, field
    import json

    from mgid.derain.derainer import DEFAULT_WEIGHTS

    recorded = json.loads(DEFAULT_WEIGHTS.with_suffix(".json").read_text())["sha256"]["model"]
    assert recorded in text
    assert main(["info", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["auto"]["training"]["ops"] == ops.op_path(report["auto"]["training"]["device"])
    assert report["shipped_weights"]["sha256"] == recorded and report["shipped_weights"]["matches_record"]
    from mgid.derain.backend_choice import choose_backend

    expected = choose_backend("auto", None, report["auto"]["inference"]["device"])
    assert report["auto"]["inference"]["backend"] == f"{expected.backend} ({expected.reason})"
    assert "training" in report["auto"] and "backend" not in report["auto"]["training"]

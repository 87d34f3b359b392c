"""tools/gpu_check.sh --dry-run (CPU only) and the wheel helper tools/make_wheelhouse.py.

The dry run is what can be checked without the lent GPU machine: every stage in order, the results
folder (flat, a few files, small), the summary's fields, and that a failing stage is reported while
the later ones still run. No network: the helper's package list is checked against pyproject.toml.
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import sysconfig
import tarfile
from pathlib import Path

import pytest

import tools.make_wheelhouse as make_wheelhouse

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "tools" / "gpu_check.sh"
HELPER = REPO / "tools" / "make_wheelhouse.py"
STAGES = ["wheels", "build", "tests_cuda", "bench_ops", "bench_train", "memcheck", "racecheck", "suite"]
RESULT_FILES = {"summary.json", "summary.md", "logs.txt", "files.tar.gz"}


def _extension_built() -> bool:
    return (REPO / "mgid" / f"_C{sysconfig.get_config_var('EXT_SUFFIX')}").exists()


def _gpu_check(out: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items()  # the script's knobs come from the test alone
            if not k.startswith("GPU_CHECK_") and k not in ("BENCH_OPS_ARGS", "TRAIN_ARGS", "SUITE_ARGS")}
    full.update(OUT=str(out), PYTHON=sys.executable, OMP_NUM_THREADS="1", **env)
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=REPO, env=full, capture_output=True, text=True,
                          timeout=300, check=False)


def _results_dir(out: Path) -> Path:
    dirs = [p for p in out.iterdir() if p.is_dir()]
    assert len(dirs) == 1 and dirs[0].name.startswith("gpu-"), list(out.iterdir())
    return dirs[0]


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    if not _extension_built():
        pytest.skip("mgid/_C*.so is not built for this python: the dry run would build it (slow)")
    out = tmp_path_factory.mktemp("gpu_check_out")
    proc = _gpu_check(out, "--dry-run")
    return proc, out


def test_dry_run_passes_and_lists_every_stage_in_order(dry_run):
    proc, out = dry_run
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    res = _results_dir(out)
    summary = json.loads((res / "summary.json").read_text())
    assert summary["mode"] == "dry-run" and summary["final"] is True and summary["ok"] is True
    assert [s["name"] for s in summary["stages"]] == STAGES
    by = {s["name"]: s for s in summary["stages"]}
    for s in summary["stages"]:
        assert s["status"] in ("ok", "skipped"), s
        assert isinstance(s["seconds"], int) and s["note"], s
    for name in ("wheels", "build", "tests_cuda", "bench_ops", "bench_train"):
        assert by[name]["status"] == "ok" and by[name]["exit_code"] == 0, by[name]
        assert by[name]["limit_s"] and by[name]["limit_s"] <= summary["budget_s"], by[name]
    assert "not rebuilt" in by["build"]["note"]  # an existing extension is left alone
    assert "skipped" in by["tests_cuda"]["note"]  # the CUDA tests ran through pytest and skipped
    for name in ("memcheck", "racecheck", "suite"):
        assert by[name]["status"] == "skipped" and "dry run" in by[name]["note"], by[name]
    assert summary["failed"] == []
    assert summary["commit"] and summary["commit_source"]
    import torch
    assert summary["torch"] == torch.__version__ and summary["device"]["name"]
    assert summary["build_info"]["extension"] is True
    assert summary["started_utc"] and summary["budget_s"] >= summary["elapsed_s"]
    assert summary["results"]["bench_train"]["cases"] and summary["results"]["bench_ops"]["device"] == "cpu"

    md = (res / "summary.md").read_text()
    rows = [line for line in md.splitlines() if re.match(r"\| \d+ \| ", line)]
    assert [r.split("|")[2].strip() for r in rows] == STAGES
    assert all(r.split("|")[3].strip() in ("ok", "skipped") for r in rows)
    assert "dry-run" in md and "## bench_ops" in md and "## bench_train" in md


def test_dry_run_folder_is_flat_few_files_and_small(dry_run):
    proc, out = dry_run
    assert proc.returncode == 0, proc.stdout[-4000:]
    res = _results_dir(out)
    files = [p for p in out.rglob("*") if p.is_file()]
    assert {p.name for p in files} == RESULT_FILES  # the device tool returns at most 8 files
    assert all(len(p.relative_to(out).parts) <= 3 for p in out.rglob("*"))  # $OUT/a/b/file at most
    assert sum(p.stat().st_size for p in files) < 5 * 2**20
    with tarfile.open(res / "files.tar.gz") as tar:
        names = {Path(n).name for n in tar.getnames()}
    for name in ("env.txt", "build.log", "tests_cuda.log", "tests_cuda.xml", "bench_ops.log", "bench_train.json",
                 "bench_train.md", "build_info.json"):
        assert name in names, sorted(names)
    assert any(n.startswith("bench_ops_cpu_") and n.endswith(".json") for n in names), sorted(names)
    logs = (res / "logs.txt").read_text()
    for name in STAGES:
        assert f"===== stage {name}:" in logs


def test_a_failing_stage_is_reported_and_later_stages_still_run(tmp_path):
    if not _extension_built():
        pytest.skip("mgid/_C*.so is not built for this python")
    proc = _gpu_check(tmp_path, "--dry-run", "wheels", "build", GPU_CHECK_FAIL_STAGE="wheels")
    assert proc.returncode == 1, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "FAILED stages: wheels" in proc.stdout
    res = _results_dir(tmp_path)
    summary = json.loads((res / "summary.json").read_text())
    by = {s["name"]: s for s in summary["stages"]}
    assert [s["name"] for s in summary["stages"]] == STAGES
    assert by["wheels"]["status"] == "FAILED" and by["wheels"]["exit_code"] == 3
    assert by["build"]["status"] == "ok" and by["build"]["exit_code"] == 0  # ran after the failure
    assert all(by[n]["status"] == "skipped" and "not selected" in by[n]["note"] for n in STAGES[2:])
    assert summary["failed"] == ["wheels"] and summary["ok"] is False
    md = (res / "summary.md").read_text()
    assert "**FAILED: wheels**" in md and "forced failure" in md  # the failed stage's log tail


def test_unknown_stage_is_refused(tmp_path):
    proc = _gpu_check(tmp_path, "--dry-run", "bogus")
    assert proc.returncode == 2 and "unknown stage" in proc.stderr


def test_script_syntax_and_header_documents_the_run_command():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)
    header = SCRIPT.read_text().split("\nset -uo pipefail", 1)[0]
    assert "carry=['tools/wheelhouse']" in header and "bash tools/gpu_check.sh" in header
    assert "--dry-run" in header
    for stage in STAGES:
        assert re.search(rf"^#\s+{stage}\s", header, re.MULTILINE), stage
    helper = make_wheelhouse
    assert helper.DEFAULT_DEST == REPO / "tools" / "wheelhouse"
    assert "tools/wheelhouse/" in (REPO / ".gitignore").read_text().splitlines()


def _pyproject_requirements() -> set[str]:
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        reqs += extra
    return {re.split(r"[\s<>=!~;\[]", r, maxsplit=1)[0] for r in reqs}


def test_wheel_list_is_consistent_with_pyproject():
    helper = make_wheelhouse
    norm = helper.normalize
    declared = {norm(r) for r in _pyproject_requirements()}
    carried = [norm(p.dist) for p in helper.PACKAGES]
    on_device = {norm(n) for n in helper.ON_DEVICE}
    assert carried and len(set(carried)) == len(carried)
    assert set(carried) <= declared, set(carried) - declared  # only the project's own dependencies travel
    assert not set(carried) & on_device
    # Every dependency is decided: it travels as a wheel or the lent machine's image has it.
    assert declared <= set(carried) | on_device, declared - set(carried) - on_device
    assert on_device <= declared, on_device - declared
    for p in helper.PACKAGES:
        assert re.fullmatch(r"\d+(\.\d+)+", p.version), p
        if p.fallback:
            assert tuple(map(int, p.fallback.split("."))) < tuple(map(int, p.version.split("."))), p
        assert p.module.isidentifier() and p.needed_by
    listed = subprocess.run([sys.executable, str(HELPER), "list"], capture_output=True, text=True, check=True)
    assert listed.stdout.split("\n")[:-1] == [f"{p.dist} {p.module} {p.version}" for p in helper.PACKAGES]


def test_wheel_install_without_a_folder_reports_and_does_not_crash(tmp_path):
    """The lent machine without the carried folder: no pip call, a clear message, exit 1 only if missing."""
    helper = make_wheelhouse
    proc = subprocess.run([sys.executable, str(HELPER), "install", "--wheels", str(tmp_path / "none"),
                           "--target", str(tmp_path / "site")], capture_output=True, text=True, timeout=120, check=False)
    assert "absent" in proc.stdout
    missing = [p for p in helper.PACKAGES if importlib.util.find_spec(p.module) is None]
    assert proc.returncode == (1 if missing else 0), proc.stdout + proc.stderr
    for p in missing:
        assert f"MISSING: {p.dist}" in proc.stderr
    assert not (tmp_path / "site").exists()

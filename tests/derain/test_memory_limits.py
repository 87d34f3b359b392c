"""The memory limit that applies to this process, and retrying in smaller tiles before skipping (issue 27).

`mgid.derain.memory_budget.process_memory_limit` plans from the smallest of the available physical memory, the
cgroup limits (v2, v1) and ``RLIMIT_AS`` less the address space in use, each faked here; the budget line names
the one that binds, and it caps ``--max-memory``. An out-of-memory error while de-raining halves the tile down to
`mgid.derain.memory_budget.smallest_tile`, said once per file, before the file is skipped.
"""
from __future__ import annotations

import dataclasses
import gc
import os
import re
import subprocess
import sys
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch

import mgid
from mgid.data.imageio import read_image, write_image
from mgid.derain import memory_budget as mb
from mgid.derain.derainer import Derainer, retry_notices
from mgid.derain.files import Job, derain_files
from mgid.models import MGIDNet
from tests.derain.tiny_network import TINY, calibrated, smooth_image, tiny_weights

REPO = Path(__file__).resolve().parents[2]
GB = 1 << 30
CPU_OOM = "[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: you tried to " \
          "allocate 5754585600 bytes. Error code 12 (Cannot allocate memory)"


# ------------------------------------------------------------------------------------ the limit that applies


def _fake_cgroups(monkeypatch, tmp_path: Path, proc_lines: str, files: dict[str, str]) -> None:
    (tmp_path / "proc_cgroup").write_text(proc_lines)
    for rel, text in files.items():
        (tmp_path / "cg" / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "cg" / rel).write_text(text)
    monkeypatch.setattr(mb, "PROC_SELF_CGROUP", tmp_path / "proc_cgroup")
    monkeypatch.setattr(mb, "CGROUP_ROOT", tmp_path / "cg")


def test_cgroup_v2_room_takes_the_tightest_level(monkeypatch, tmp_path):
    """memory.max - memory.current of the process's cgroup, or of an ancestor whose limit is tighter."""
    _fake_cgroups(monkeypatch, tmp_path, "0::/jobs/job7\n", {
        "jobs/job7/memory.max": "3000000000\n", "jobs/job7/memory.current": "1000000000\n",
        "jobs/memory.max": "max\n", "jobs/memory.current": "5000000000\n"})
    assert mb._cgroup_limit() == mb.MemoryLimit(2_000_000_000, mb.CGROUP_V2)
    (tmp_path / "cg" / "jobs" / "memory.max").write_text("6000000000\n")  # the parent leaves 1 GB: it binds
    assert mb._cgroup_limit() == mb.MemoryLimit(1_000_000_000, mb.CGROUP_V2)
    (tmp_path / "cg" / "jobs" / "memory.max").write_text("max\n")
    (tmp_path / "cg" / "jobs" / "job7" / "memory.max").write_text("max\n")
    assert mb._cgroup_limit() is None  # no limit anywhere


def test_cgroup_v1_room(monkeypatch, tmp_path):
    _fake_cgroups(monkeypatch, tmp_path, "5:cpu,cpuacct:/docker/abc\n4:memory:/docker/abc\n0::/\n", {
        "memory/docker/abc/memory.limit_in_bytes": "2147483648\n",
        "memory/docker/abc/memory.usage_in_bytes": "1073741824\n",
        "memory/memory.limit_in_bytes": "9223372036854771712\n",  # v1's "no limit"
        "memory/memory.usage_in_bytes": "5000000000\n"})
    assert mb._cgroup_limit() == mb.MemoryLimit(1 << 30, mb.CGROUP_V1)


def _fake_rlimit_as(monkeypatch, tmp_path: Path, soft: int, vm_size_kb: int) -> None:
    import resource

    monkeypatch.setattr(resource, "getrlimit",
                        lambda which: (soft, resource.RLIM_INFINITY) if which == resource.RLIMIT_AS else (-1, -1))
    (tmp_path / "status").write_text(f"Name:\tpython\nVmPeak:\t {vm_size_kb + 10} kB\nVmSize:\t {vm_size_kb} kB\n")
    monkeypatch.setattr(mb, "PROC_SELF_STATUS", tmp_path / "status")


def test_rlimit_as_room_is_the_limit_less_the_address_space_in_use(monkeypatch, tmp_path):
    _fake_rlimit_as(monkeypatch, tmp_path, 6_000_000 * 1024, 4_000_000)
    assert mb._address_space_limit() == mb.MemoryLimit(2_000_000 * 1024, mb.RLIMIT_AS_SOURCE)
    assert mb._address_space_limit().counts_address_space
    import resource

    monkeypatch.setattr(resource, "getrlimit", lambda which: (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    assert mb._address_space_limit() is None  # no ulimit -v


def test_rlimit_as_is_skipped_where_there_is_no_resource_module(monkeypatch):
    """Windows has no ``resource`` module: the limit is left out, nothing fails."""
    monkeypatch.setitem(sys.modules, "resource", None)
    assert mb._address_space_limit() is None


def test_the_smallest_limit_binds_and_is_named(monkeypatch, tmp_path):
    monkeypatch.setattr(mb, "_physical_available", lambda: 20 * GB)
    monkeypatch.setattr(mb, "_cgroup_limit", lambda: None)
    monkeypatch.setattr(mb, "_address_space_limit", lambda: None)
    assert mb.process_memory_limit("cpu") == mb.MemoryLimit(20 * GB, mb.PHYSICAL_MEMORY)
    monkeypatch.setattr(mb, "_cgroup_limit", lambda: mb.MemoryLimit(3 * GB, mb.CGROUP_V2))
    assert mb.process_memory_limit("cpu") == mb.MemoryLimit(3 * GB, mb.CGROUP_V2)
    monkeypatch.setattr(mb, "_address_space_limit", lambda: mb.MemoryLimit(2 * GB, mb.RLIMIT_AS_SOURCE))
    assert mb.process_memory_limit("cpu") == mb.MemoryLimit(2 * GB, mb.RLIMIT_AS_SOURCE)
    assert mb.available_memory("cpu") == 2 * GB
    monkeypatch.setattr(mb, "_physical_available", lambda: 1 * GB)
    assert mb.process_memory_limit("cpu").source == mb.PHYSICAL_MEMORY


def test_plan_budget_counts_thread_address_space_and_caps_max_memory():
    physical = mb.MemoryLimit(10 * GB, mb.PHYSICAL_MEMORY)
    budget = mb.plan_budget(physical)
    assert budget.bytes == mb.PLANNED_SHARE * 10 * GB
    assert budget.description == "80% of the 10.0 GB of available physical memory"
    asked = mb.plan_budget(physical, 4 * GB)
    assert asked.bytes == mb.PLANNED_SHARE * 4 * GB and asked.description == "--max-memory 4.0 GB"
    ulimit = mb.MemoryLimit(2 * GB, mb.RLIMIT_AS_SOURCE)
    threads = torch.get_num_threads()
    margin = mb.ADDRESS_SPACE_PER_THREAD * (threads - 1)
    assert mb.address_space_overhead() == margin and mb.address_space_overhead(4) == 3 * mb.ADDRESS_SPACE_PER_THREAD
    capped = mb.plan_budget(ulimit, 4 * GB)  # --max-memory 4G under a 2 GB address-space room: the room binds
    assert capped.bytes == mb.PLANNED_SHARE * (2 * GB - margin)
    assert capped.description.startswith("--max-memory 4.0 GB, capped at 80% of the 2.0 GB left under RLIMIT_AS")
    cgroup = mb.plan_budget(mb.MemoryLimit(2 * GB, mb.CGROUP_V2))  # resident memory: no address-space margin
    assert cgroup.bytes == mb.PLANNED_SHARE * 2 * GB and "cgroup v2 memory.max" in cgroup.description


def test_the_budget_line_names_the_binding_limit(monkeypatch, tmp_path):
    monkeypatch.setattr(mb, "_physical_available", lambda: 20 * GB)
    monkeypatch.setattr(mb, "_cgroup_limit", lambda: None)
    _fake_rlimit_as(monkeypatch, tmp_path, 6_000_000 * 1024, 4_000_000)
    derainer = Derainer(calibrated(MGIDNet(TINY)), "cpu",
                        precision="fp32")
    line = derainer.describe_tiling()
    assert line.startswith("tiles only where needed, from a budget of 80% of the 1.9 GB left under RLIMIT_AS "
                           "(ulimit -v)"), line
    room = 2_000_000 * 1024 - mb.address_space_overhead()
    assert derainer.memory_budget() == mb.PLANNED_SHARE * room
    with pytest.raises(mb.MemoryBudgetError, match=r"budget is .* \(80% of the 1.9 GB left under RLIMIT_AS"):
        derainer.auto_tile(1, 30000, 30000)  # the image-sized buffers alone exceed the room


# ------------------------------------------------------------------ a real RLIMIT_AS, in a child process

CHILD = """
import re, resource, sys
def vm_size():
    return int(re.search(r"VmSize:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1)) * 1024
import mgid.cli as cli
weights, warm, src, dst, head = sys.argv[1:6]
common = ["--weights", weights, "--device", "cpu", "--precision", "fp32", "--quiet"]
assert cli.main(["derain", warm, dst + "_warm", *common]) == 0  # imports, model, first-call costs: paid once
resource.setrlimit(resource.RLIMIT_AS, (vm_size() + int(head), resource.RLIM_INFINITY))
print("EXIT", cli.main(["derain", src, dst, *common, *sys.argv[6:]]), flush=True)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS and /proc/self/status: Linux")
@pytest.mark.parametrize("tile", ["auto", "none"])
def test_derain_under_an_address_space_limit(tmp_path, tile):
    """Under ``ulimit -v`` leaving 400 MB beyond what the process has mapped, a 2000x2000 photo needs ~600 MB
    whole (the tiny network in fp32): before issue 27 the plan took the machine's free memory, de-rained it whole
    and skipped it out of memory. Now the plan reads RLIMIT_AS and tiles it (``--tile auto``), and a forced
    ``--tile none`` runs out of memory, says so once and finishes in tiles; the small photo after it is done
    too, and the exit code is 0."""
    weights = tiny_weights(tmp_path)
    rgb = np.random.default_rng(0).integers(0, 256, (2000, 2000, 3), dtype=np.uint8)
    write_image(tmp_path / "in" / "a_big.png", rgb)
    write_image(tmp_path / "in" / "b_small.png", rgb[:100, :150])
    write_image(tmp_path / "warm" / "w.png", rgb[:64, :64])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-c", CHILD, str(weights), str(tmp_path / "warm"), str(tmp_path / "in"),
                           str(out), str(400 << 20), "--tile", tile], capture_output=True, text=True, env=env,
                          cwd=REPO, timeout=300)
    assert "EXIT 0" in proc.stdout, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "skipped" not in proc.stderr, proc.stderr[-3000:]
    assert read_image(out / "a_big.png").shape == (2000, 2000, 3) and read_image(out / "b_small.png").shape == (
        100, 150, 3)
    retries = [line for line in proc.stderr.splitlines() if "retrying" in line]
    if tile == "auto":
        assert re.search(r"from a budget of 80% of the [\d.]+ MB left under RLIMIT_AS \(ulimit -v\)", proc.stderr), \
            proc.stderr
        assert not retries
    else:
        assert len(retries) == 1 and re.fullmatch(
            r".*a_big\.png: out of memory on the whole image; retrying at tile \d+ \(halving down to 136 pixels "
            r"if needed\)", retries[0]), proc.stderr


# ----------------------------------------------------------------------------- retrying in smaller tiles


@pytest.fixture(scope="module")
def derainer() -> Derainer:
    torch.manual_seed(0)
    return Derainer(calibrated(MGIDNet(TINY)), "cpu", precision="fp32")


def _image(h: int, w: int) -> np.ndarray:
    return np.round((smooth_image(h, w, seed=3)[0].permute(1, 2, 0).numpy() + 1) * 127.5).astype(np.uint8)


def _failing(monkeypatch, times: int | None):
    """A prediction raising the CPU allocator's error the first ``times`` attempts on an image wider than 64 pixels
    (None: always), holding an image-sized tensor when it does: ``Derainer._predict`` (whole images) and
    ``Derainer._stream`` (NumPy images in tiles, streamed). Returns (the tiles it was called with, weak references to
    those tensors)."""
    real_predict, real_stream = Derainer._predict, Derainer._stream
    calls: list[int | None] = []
    held: list[weakref.ref] = []

    def attempt(shape: tuple[int, ...], tile: int | None) -> None:
        if shape[-1] <= 64:  # small images fit
            return
        calls.append(tile)
        if times is None or len(calls) <= times:
            partial = torch.empty(shape)  # what a failed attempt leaves behind, held by its traceback
            held.append(weakref.ref(partial))
            assert all(ref() is None for ref in held[:-1]), "an earlier attempt's tensors were not freed"
            raise RuntimeError(CPU_OOM)
        assert all(ref() is None for ref in held), "the failed attempt's tensors were not freed before the retry"

    def predict(self, batch, tile, overlap):
        attempt(tuple(batch.shape), tile)
        return real_predict(self, batch, tile, overlap)

    def stream(self, source, tile, overlap, emit):
        attempt(source.shape, tile)
        return real_stream(self, source, tile, overlap, emit)

    monkeypatch.setattr(Derainer, "_predict", predict)
    monkeypatch.setattr(Derainer, "_stream", stream)
    return calls, held


def test_out_of_memory_retries_once_at_half_the_tile(derainer, monkeypatch):
    rgb = _image(200, 600)
    expected_clean, expected_rain = derainer.derain_with_rain(rgb, tile=136)  # a direct run at the retried tile
    calls, _ = _failing(monkeypatch, times=1)
    lines: list[str] = []
    with retry_notices(lines.append):
        clean, rain = derainer.derain_with_rain(rgb, tile=272)
    assert calls == [272, 136] and derainer.last_tile == 136
    assert lines == ["out of memory at tile 272; retrying at tile 136 (halving down to 136 pixels if needed)"]
    np.testing.assert_array_equal(clean, expected_clean)
    np.testing.assert_array_equal(rain, expected_rain)


def test_a_whole_image_is_retried_in_the_largest_tiles_the_plan_allows(monkeypatch):
    """The shipped weights on a rainy held-out image: the retried result is the direct 160-pixel-tile result, and
    within the tiling tolerance of the whole image (docs/DERAIN.md: 4 grey levels, under 0.2 % of the pixels by
    more than 1)."""
    from mgid.data import EmbeddedPairedSet

    rainy, _ = EmbeddedPairedSet(1, size=264, rain="streaks").images(0)
    rgb = np.ascontiguousarray(rainy[:200, :264])
    shipped = mgid.load_model(None, "cpu", tile=None, precision="fp32")
    costs = dataclasses.replace(shipped.memory_costs, tile_extra_bytes=0.0)  # as test_memory_budget's tolerance test
    budget = int(costs.tiled(200 * 264, 160 * 160) / mb.PLANNED_SHARE) + 1
    tight = Derainer(shipped.net, "cpu", precision="fp32", max_memory=budget)
    tight.memory_costs = costs
    assert tight.auto_tile(1, 200, 264) == 160
    expected, whole = tight.derain(rgb, tile=160), tight.derain(rgb, tile=None)
    calls, _ = _failing(monkeypatch, times=1)
    lines: list[str] = []
    with retry_notices(lines.append):
        clean = tight.derain(rgb, tile=None)
    assert calls == [None, 160] and lines == [
        "out of memory on the whole image; retrying at tile 160 (halving down to 136 pixels if needed)"]
    np.testing.assert_array_equal(clean, expected)
    diff = np.abs(clean.astype(int) - whole.astype(int))
    assert diff.max() <= 4 and (diff > 1).mean() < 0.002


def test_a_file_is_retried_and_said_once(derainer, monkeypatch, tmp_path):
    """Through the loop over files: one line naming the file, the result written, nothing skipped."""
    rgb = _image(200, 600)
    write_image(tmp_path / "photo.png", rgb)
    expected = derainer.derain(rgb, tile=136)
    calls, _ = _failing(monkeypatch, times=2)  # 544 and 272 fail, 136 works: still one line
    retried: list[tuple[Path, str]] = []
    skipped: list[tuple[Path, str]] = []
    derainer.tile = 544
    try:
        report = derain_files(derainer, [Job(tmp_path / "photo.png", tmp_path / "out" / "photo.png")], progress=False,
                              on_skip=lambda p, r: skipped.append((p, r)), on_retry=lambda p, m: retried.append((p, m)))
    finally:
        derainer.tile = "auto"
    assert report.ok and report.done == 1 and not skipped and calls == [544, 272, 136]
    assert retried == [(tmp_path / "photo.png",
                        "out of memory at tile 544; retrying at tile 272 (halving down to 136 pixels if needed)")]
    np.testing.assert_array_equal(read_image(tmp_path / "out" / "photo.png"), expected)


def test_out_of_memory_at_every_size_skips_naming_the_smallest_tile(derainer, monkeypatch, tmp_path):
    rgb = _image(200, 600)
    write_image(tmp_path / "big.png", rgb)
    write_image(tmp_path / "small.png", rgb[:16, :16])
    calls, held = _failing(monkeypatch, times=None)
    with pytest.raises(mb.OutOfMemoryAtSmallestTile) as caught, pytest.warns(RuntimeWarning, match="at tile 512"):
        derainer.derain(rgb, tile=512)  # outside retry_notices the line is a warning
    assert caught.value.tried == (512, 256, 136) and calls == [512, 256, 136]
    calls.clear()
    retried: list[tuple[Path, str]] = []
    derainer.tile = 512
    try:
        report = derain_files(derainer, [Job(tmp_path / n, tmp_path / "out" / n) for n in ("big.png", "small.png")],
                              progress=False, on_retry=lambda p, m: retried.append((p, m)))
    finally:
        derainer.tile = "auto"
    (path, reason), = report.skipped
    assert path.name == "big.png" and len(retried) == 1 and retried[0][0].name == "big.png"
    assert reason == ("too large for the memory (600x200): out of memory at every tiling tried (512, 256, 136); "
                      "the smallest tile tried, 136 pixels, failed too: free memory or resize the image")
    assert "--tile" not in reason  # no advice to try a size that was tried
    gc.collect()


def test_other_errors_are_not_retried(derainer, monkeypatch):
    calls: list[int | None] = []

    def predict(self, batch, tile, overlap):
        calls.append(tile)
        raise RuntimeError("the network gave NaN")

    monkeypatch.setattr(Derainer, "_predict", predict)
    with pytest.raises(RuntimeError, match="NaN"):
        derainer.derain(_image(64, 64), tile=None)
    assert calls == [None]


def test_retry_sizes_halve_down_to_the_floor():
    assert mb.smallest_tile(64) == 136 and mb.smallest_tile(32) == mb.MIN_AUTO_TILE == 128
    assert [mb.retry_tile(t, 64) for t in (2048, 1024, 272, 200, 136, 64)] == [1024, 512, 136, 136, None, None]


def test_release_memory_empties_the_cuda_cache(monkeypatch):
    """Before a retry on CUDA, torch's cached blocks of the failed attempt go back to the device."""
    emptied: list[bool] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: emptied.append(True))
    mb.release_memory("cpu")
    assert not emptied
    mb.release_memory("cuda:0")
    assert emptied == [True]

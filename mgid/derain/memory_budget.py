"""How much memory de-raining may use, what an image costs, and the tile size that fits (``--tile auto``).

* `MemoryCosts` / `load_costs`: the measured cost of de-raining, read from `MEMORY_RECORD`, which
  ``benchmarks/bench_derain_memory.py --update-record`` writes from the peak resident memory of fresh processes
  (its report is named in the record as the source). A whole image of P pixels (batch included) costs
  ``fixed_bytes + bytes_per_pixel * P``; tiled, ``tiled_image_bytes_per_pixel * P`` for the buffers kept at the
  image's size plus ``bytes_per_pixel * T^2 + tile_extra_bytes`` for a T x T tile. Tiled de-raining of a NumPy
  image streams (`mgid.derain.tiling.stream_rain`): the buffers of the image's size are only its uint8 results
  (`STREAMED_IMAGE_BYTES_PER_PIXEL`, the planned number's floor). Measured at two widths (the shipped network's and
  a narrow one) and interpolated linearly in the width of the network at hand.
* `process_memory_limit`: what this process may still allocate, and which limit says so (`MemoryLimit`): the
  smallest of the system's available physical memory, the room under the process's cgroup limit (v2
  ``memory.max``, v1 ``memory.limit_in_bytes``) and the address space left under ``RLIMIT_AS`` (``ulimit -v``);
  on CUDA the device's free memory. `available_memory` is its number alone.
* `plan_budget`: the bytes ``--tile auto`` plans with (`MemoryBudget`) from that limit and ``--max-memory``, which
  the limit caps; where the limit counts address space, less `ADDRESS_SPACE_PER_THREAD` per worker thread.
* `choose_tile`: None when the whole image fits the budget (the exact untiled result), else the largest tile
  (a multiple of 8) that does; `MemoryBudgetError` when not even the whole-image buffers fit.
* `parse_bytes`: ``"4G"``, ``"512M"``, ``"1.5GB"`` -> bytes (``--max-memory``).
* `is_out_of_memory`: whether an exception is an allocation failure (torch's CUDA ``OutOfMemoryError``, the CPU
  allocator's ``RuntimeError``, NumPy's ``MemoryError``, OpenCV's "Insufficient memory"), so de-raining can retry
  in smaller tiles (`retry_tile`, down to `smallest_tile`) and a loop over files can skip the one image that did
  not fit even then and go on.
"""
from __future__ import annotations

import gc
import hashlib
import json
import math
import re
import sys
import warnings
from dataclasses import dataclass
from functools import cache, lru_cache
from pathlib import Path

import psutil
import torch

from mgid.errors import InputError, MgidError

#: The measured memory of de-raining that ``--tile auto`` sizes tiles by (written by
#: ``benchmarks/bench_derain_memory.py --update-record``, which names its report as the source).
MEMORY_RECORD = Path(__file__).resolve().parent / "inference_memory.json"
#: Share of its budget ``--tile auto`` plans to use: of the memory available when no ``--max-memory`` is given, and
#: of an explicit ``--max-memory``; the rest is a margin for the measurement's spread and for other programs
#: (docs/DERAIN.md, "Tiles and memory").
PLANNED_SHARE = 0.8
#: Smallest tile ``--tile auto`` picks, and the floor of the retries after an out-of-memory error (`smallest_tile`:
#: also more than twice the overlap): below it the tiles' overlaps and the statistics pass cost more than the
#: tiles themselves; an image that does not fit with it is refused (`MemoryBudgetError`).
MIN_AUTO_TILE = 128
#: Address space a worker thread of torch reserves beyond what it keeps resident, counted once per thread beyond the
#: first where the binding limit is ``RLIMIT_AS``: a 64 MB glibc malloc arena plus an 8 MB stack (measured:
#: docs/DERAIN.md, "Tiles and memory").
ADDRESS_SPACE_PER_THREAD = 72 << 20

#: Bytes per image pixel that tiled de-raining keeps at the image's size beyond the input: the uint8 de-rained image
#: and the uint8 rain layer that ``mgid derain`` (`mgid.derain.derainer.BaseDerainer.derain_with_rain`) fills, 3
#: bytes each. The floor of the planned ``tiled_image_bytes_per_pixel`` (`benchmarks/bench_derain_memory.py`; why:
#: docs/DERAIN.md, "Tiles and memory").
STREAMED_IMAGE_BYTES_PER_PIXEL = 6

#: Names of the limits `process_memory_limit` reads, as the budget line prints them.
PHYSICAL_MEMORY = "available physical memory"
CGROUP_V2 = "cgroup v2 memory.max"
CGROUP_V1 = "cgroup v1 memory.limit_in_bytes"
RLIMIT_AS_SOURCE = "RLIMIT_AS (ulimit -v)"
CUDA_FREE = "free CUDA memory"
#: Where `process_memory_limit` reads the cgroup of this process and the cgroup file systems (tests point them
#: at fake folders).
PROC_SELF_CGROUP = Path("/proc/self/cgroup")
CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_SELF_STATUS = Path("/proc/self/status")

#: Fragments of the messages of allocation failures that arrive as a plain RuntimeError (the CPU allocator of
#: torch: "DefaultCPUAllocator: can't allocate memory"; CUDA before OutOfMemoryError existed; oneDNN, whose
#: convolutions say "could not create a primitive" when their buffers cannot be allocated, as under ``ulimit -v``)
#: or a cv2.error.
_OOM_MESSAGES = ("DefaultCPUAllocator", "can't allocate memory", "out of memory", "not enough memory",
                 "Insufficient memory", "Failed to allocate", "could not create a primitive",
                 "Cannot allocate memory")  # the last: NNPACK's workspace (posix_memalign, errno ENOMEM)
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


class MemoryRecordError(MgidError, RuntimeError):
    """The measured memory record `--tile auto` plans from is missing or unreadable."""


class MemoryBudgetError(MgidError, MemoryError):
    """An image that cannot be de-rained within the memory budget, not even in the smallest tiles."""


class OutOfMemoryAtSmallestTile(MemoryBudgetError):
    """De-raining ran out of memory at every tile size tried, the smallest (`smallest_tile`) included.

    Attributes:
        tried: the tile sizes tried, in order (None: the whole image).
    """

    def __init__(self, message: str, tried: tuple[int | None, ...]) -> None:
        super().__init__(message)
        self.tried = tried


@dataclass(frozen=True)
class MemoryLimit:
    """The memory this process may still allocate and the limit that bounds it.

    Attributes:
        bytes: bytes left under the limit.
        source: which limit: `PHYSICAL_MEMORY`, `CGROUP_V2`, `CGROUP_V1`, `RLIMIT_AS_SOURCE` or `CUDA_FREE`.
    """

    bytes: int
    source: str

    @property
    def counts_address_space(self) -> bool:
        """Whether the limit counts address space (reserved, not only resident, memory)."""
        return self.source == RLIMIT_AS_SOURCE

    @property
    def is_hard(self) -> bool:
        """Whether going past the limit fails (an allocation under ``RLIMIT_AS``) or kills the process (a cgroup's),
        rather than slowing the machine down (physical memory, which the system can page out)."""
        return self.source in (RLIMIT_AS_SOURCE, CGROUP_V2, CGROUP_V1)


@dataclass(frozen=True)
class MemoryBudget:
    """The bytes ``--tile auto`` plans with and, for the budget line, where they come from.

    Attributes:
        bytes: the budget.
        description: e.g. "80% of the 22.2 GB of available physical memory" or "--max-memory 4.0 GB".
    """

    bytes: float
    description: str


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether an exception is an allocation failure (the image needs more memory than there is).

    Args:
        exc: the exception.

    Returns:
        True for torch's ``OutOfMemoryError``, ``MemoryError`` and exceptions whose message names an allocation
        failure (`_OOM_MESSAGES`).
    """
    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
        return True
    return isinstance(exc, Exception) and any(m in str(exc) for m in _OOM_MESSAGES)


def parse_bytes(text: str) -> int:
    """A memory size in bytes (``--max-memory``).

    Args:
        text: ``"4G"``, ``"4GB"``, ``"4 GiB"``, ``"512M"``, ``"1.5g"``, ``"1000000"`` (binary units).

    Returns:
        Bytes.

    Raises:
        InputError: anything else, or a size that is not positive.
    """
    m = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([KMGT]?)(?:I?B)?\s*", str(text), re.IGNORECASE)
    if not m or float(m.group(1)) <= 0:
        raise InputError(f"expected a memory size such as 4G, 512M or 1.5GB, got {text!r}")
    return int(float(m.group(1)) * _UNITS[m.group(2).upper()])


def format_bytes(n: float) -> str:
    """Bytes for messages.

    Args:
        n: bytes.

    Returns:
        E.g. ``"3.2 GB"`` (binary units: TB, GB, MB, else KB).
    """
    for unit, size in (("TB", 1 << 40), ("GB", 1 << 30), ("MB", 1 << 20)):
        if abs(n) >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n / 1024:.0f} KB"


@dataclass(frozen=True)
class MemoryCosts:
    """The measured memory of de-raining with one arithmetic (see the module doc); ``source`` says where the
    numbers come from (the benchmark report, its CPU, the variant)."""

    bytes_per_pixel: float
    fixed_bytes: float
    tiled_image_bytes_per_pixel: float
    tile_extra_bytes: float
    source: str

    def whole(self, pixels: int) -> float:
        """Bytes to de-rain images in one pass.

        Args:
            pixels: batch x padded H x W.

        Returns:
            ``fixed_bytes + bytes_per_pixel * pixels``.
        """
        return self.fixed_bytes + self.bytes_per_pixel * pixels

    def tiled(self, pixels: int, tile_pixels: int) -> float:
        """Bytes to de-rain images in tiles.

        Args:
            pixels: batch x padded H x W.
            tile_pixels: batch x the pixels of one tile.

        Returns:
            ``tile_extra_bytes + tiled_image_bytes_per_pixel * pixels + bytes_per_pixel * tile_pixels``.
        """
        return self.tile_extra_bytes + self.tiled_image_bytes_per_pixel * pixels + self.bytes_per_pixel * tile_pixels


@lru_cache(maxsize=1)
def _record() -> dict:
    try:
        record = json.loads(MEMORY_RECORD.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise MemoryRecordError(f"{MEMORY_RECORD} (the measured memory --tile auto needs) is missing or unreadable "
                           f"({exc}); reinstall mgid or measure it: python -m benchmarks.bench_derain_memory "
                           f"--update-record") from exc
    _warn_if_other_code(record.get("inference_code_sha256"))
    return record


#: The modules whose code decides what de-raining allocates (the network, its frozen graph, the tiling), relative to
#: the package: the memory record is measured for one version of them (`inference_code_sha256`).
MEMORY_SOURCES = ("models/mgid.py", "models/encoder.py", "models/decoder.py", "models/memory.py",
                  "models/inference_graph.py", "derain/tiling.py")


def inference_code_sha256() -> str:
    """The fingerprint the memory record keeps of the inference code.

    Returns:
        The SHA-256 (hex) of `MEMORY_SOURCES`: their names and texts, line endings normalised.
    """
    package = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for name in MEMORY_SOURCES:
        digest.update(name.encode())
        digest.update((package / name).read_text(encoding="utf-8").replace("\r\n", "\n").encode())
    return digest.hexdigest()


@cache
def _warn_if_other_code(recorded: str | None) -> None:
    """Warn (once per process) when the memory record was measured for other inference code than this one's."""
    if recorded != inference_code_sha256():
        warnings.warn(f"{MEMORY_RECORD.name} was measured for other inference code than this mgid's ("
                      f"{'no fingerprint recorded' if recorded is None else 'fingerprint ' + recorded[:12]}): "
                      f"--tile auto may misjudge the memory a photo needs; measure it again with python -m "
                      f"benchmarks.bench_derain_memory --update-record", RuntimeWarning, stacklevel=3)


def variant_name(precision: str, channels_last: bool) -> str:
    """The benchmark's name of an arithmetic.

    Args:
        precision: ``"fp32"`` or ``"bf16"``.
        channels_last: whether channels_last.

    Returns:
        ``fp32``, ``fp32+cl``, ``bf16`` or ``bf16+cl``.
    """
    return precision + ("+cl" if channels_last else "")


_COST_FIELDS = ("bytes_per_pixel", "fixed_bytes", "tiled_image_bytes_per_pixel", "tile_extra_bytes")


def load_costs(precision: str, channels_last: bool, channels: int) -> MemoryCosts:
    """The measured costs of an arithmetic and network width, from `MEMORY_RECORD`.

    Args:
        precision: ``"fp32"`` or ``"bf16"`` (resolved).
        channels_last: whether channels_last.
        channels: the network's width.

    Returns:
        Each number interpolated (or extrapolated) linearly in the width between the two measured widths, never
        below the narrower width's. A variant the record lacks (bf16 is measured only where a CPU has it natively)
        takes the largest measured cost, which ``source`` then says.

    Raises:
        MemoryRecordError: the record is missing or unreadable.
    """
    record = _record()
    variants = record["variants"]
    name = variant_name(precision, channels_last)
    if name in variants:
        chosen, how = variants[name], name
    else:
        worst = max(variants, key=lambda v: max(w["bytes_per_pixel"] for w in variants[v].values()))
        chosen, how = variants[worst], f"{worst} (the largest measured; {name} was not measured)"
    widths = sorted(int(c) for c in chosen)
    c0, c1 = widths[0], widths[-1]
    lo, hi = chosen[str(c0)], chosen[str(c1)]
    t = (channels - c0) / (c1 - c0) if c1 > c0 else 0.0
    values = [max(lo[f] + t * (hi[f] - lo[f]), lo[f]) for f in _COST_FIELDS]
    source = f"{record['source']} ({how}, measured at {c0} and {c1} channels; {record['cpu']})"
    return MemoryCosts(*values, source)


def _cgroup_limit() -> MemoryLimit | None:
    """The room under the tightest cgroup memory limit of this process and of the cgroups above it.

    Returns:
        The smallest ``memory.max - memory.current`` (v2) or ``memory.limit_in_bytes - memory.usage_in_bytes`` (v1)
        over the process's cgroup and its ancestors, or None when none sets a limit (or none can be read).
    """
    try:
        lines = PROC_SELF_CGROUP.read_text().splitlines()
    except OSError:
        return None
    candidates: list[tuple[Path, str, str, str]] = []
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        rel = Path(path.strip().lstrip("/"))
        levels = [rel, *rel.parents]  # a limit set on an ancestor binds too
        if controllers == "":
            candidates += [(CGROUP_ROOT / level, "memory.max", "memory.current", CGROUP_V2) for level in levels]
        elif "memory" in controllers.split(","):
            candidates += [(CGROUP_ROOT / "memory" / level, "memory.limit_in_bytes", "memory.usage_in_bytes",
                            CGROUP_V1) for level in levels]
    best: MemoryLimit | None = None
    for folder, limit_name, usage_name, source in candidates:
        try:
            limit_text = (folder / limit_name).read_text().strip()
            usage = int((folder / usage_name).read_text().strip())
        except (OSError, ValueError):
            continue
        if limit_text == "max" or not limit_text.isdigit() or int(limit_text) >= 1 << 60:  # v1 writes a huge number
            continue
        room = max(int(limit_text) - usage, 0)
        if best is None or room < best.bytes:
            best = MemoryLimit(room, source)
    return best


def _address_space_in_use() -> int | None:
    """Bytes of address space this process has mapped (``VmSize``), or None when it cannot be read."""
    try:
        match = re.search(r"^VmSize:\s+(\d+)\s*kB", PROC_SELF_STATUS.read_text(), re.MULTILINE)
        if match:
            return int(match.group(1)) * 1024
    except OSError:
        pass
    try:
        return int(psutil.Process().memory_info().vms)
    except (psutil.Error, OSError):
        return None


def _address_space_limit() -> MemoryLimit | None:
    """The address space left under ``RLIMIT_AS`` (soft limit minus `_address_space_in_use`), or None when there
    is no such limit (none set, or Windows, which has no ``resource`` module)."""
    try:
        import resource
    except ImportError:
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY or soft < 0:
        return None
    in_use = _address_space_in_use()
    if in_use is None:
        return None
    return MemoryLimit(max(int(soft) - in_use, 0), RLIMIT_AS_SOURCE)


def _physical_available() -> int:
    """The system's available physical memory (``psutil.virtual_memory().available``: ``MemAvailable`` on Linux)."""
    return int(psutil.virtual_memory().available)


def process_memory_limit(device: str | torch.device = "cpu") -> MemoryLimit:
    """What this process may still allocate on ``device``, and the limit that bounds it.

    Args:
        device: ``cpu`` or a CUDA device.

    Returns:
        For the CPU the smallest of the available physical memory, the room under the cgroup limits (v2 or v1)
        and the address space left under ``RLIMIT_AS``; for CUDA the device's free memory plus what torch holds
        cached but unused.
    """
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return MemoryLimit(int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)),
                           CUDA_FREE)
    limits = [MemoryLimit(_physical_available(), PHYSICAL_MEMORY)]
    limits += [lim for lim in (_cgroup_limit(), _address_space_limit()) if lim is not None]
    return min(limits, key=lambda lim: lim.bytes)


def available_memory(device: str | torch.device = "cpu") -> int:
    """Bytes this process may still allocate on ``device`` (`process_memory_limit`'s number).

    Args:
        device: ``cpu`` or a CUDA device.

    Returns:
        The bytes of `process_memory_limit`.
    """
    return process_memory_limit(device).bytes


def address_space_overhead(threads: int | None = None) -> int:
    """Address space de-raining reserves beyond its resident memory: `ADDRESS_SPACE_PER_THREAD` per worker thread
    beyond the first.

    Args:
        threads: torch's intra-op threads (None: ``torch.get_num_threads()``).

    Returns:
        Bytes.
    """
    n = torch.get_num_threads() if threads is None else threads
    return ADDRESS_SPACE_PER_THREAD * max(n - 1, 0)


def plan_budget(limit: MemoryLimit, max_memory: int | None = None) -> MemoryBudget:
    """The budget of ``--tile auto``: `PLANNED_SHARE` of what ``limit`` leaves (less
    `address_space_overhead` where it counts address space), or `PLANNED_SHARE` of ``max_memory`` when
    that is smaller (the limit caps ``--max-memory``).

    Args:
        limit: the binding limit (`process_memory_limit`).
        max_memory: ``--max-memory`` in bytes, or None.

    Returns:
        The budget and the words of the budget line.
    """
    margin = address_space_overhead() if limit.counts_address_space else 0
    own = PLANNED_SHARE * max(limit.bytes - margin, 0)
    where = (f"{PLANNED_SHARE:.0%} of the {format_bytes(limit.bytes)} of {limit.source}"
             if limit.source == PHYSICAL_MEMORY else
             f"{PLANNED_SHARE:.0%} of the {format_bytes(limit.bytes)} left under {limit.source}")
    if margin:
        where += f" less {format_bytes(margin)} of address space for torch's threads"
    if max_memory is None:
        return MemoryBudget(own, where)
    asked = PLANNED_SHARE * max_memory
    if asked <= own:
        return MemoryBudget(asked, f"--max-memory {format_bytes(max_memory)}")
    return MemoryBudget(own, f"--max-memory {format_bytes(max_memory)}, capped at {where}")


def smallest_tile(overlap: int) -> int:
    """The smallest tile ``--tile auto`` picks and out-of-memory retries go down to.

    Args:
        overlap: the tile overlap in pixels.

    Returns:
        `MIN_AUTO_TILE`, or more where needed to exceed twice ``overlap`` (a multiple of 8).
    """
    return max(MIN_AUTO_TILE, 2 * (-(-int(overlap) // 8) * 8) + 8)


def retry_tile(failed: int, overlap: int) -> int | None:
    """The tile to retry with after ``failed`` ran out of memory: half of it (a multiple of 8), not below
    `smallest_tile`.

    Args:
        failed: the tile size that ran out of memory.
        overlap: the tile overlap in pixels.

    Returns:
        The next size, or None when ``failed`` was already the smallest.
    """
    floor = smallest_tile(overlap)
    if failed <= floor:
        return None
    return max(failed // 2 // 8 * 8, floor)


#: Size from which glibc serves an allocation from its own ``mmap`` once `mmap_large_buffers` has run: freed, it goes
#: back to the system at once instead of fragmenting the heap from tile to tile. It costs page faults, so it is set
#: only under a limit past which an allocation fails (`MemoryLimit.is_hard`; `mgid.derain.derainer.BaseDerainer`
#: checks before each NumPy image). Measured: docs/DERAIN.md, "Tiles and memory".
MMAP_THRESHOLD = 1 << 20
_M_MMAP_THRESHOLD = -3  # mallopt's parameter number (malloc.h)


@lru_cache(maxsize=1)
def mmap_large_buffers() -> bool:
    """Have glibc serve allocations of `MMAP_THRESHOLD` bytes or more by ``mmap`` from now on, for the whole
    process, so the memory of a finished tile goes back to the system instead of fragmenting the heap
    (`mgid.derain.derainer.BaseDerainer` does it before it de-rains a NumPy image under a hard limit,
    `MemoryLimit.is_hard`; set once per process).

    Returns:
        Whether it was set (False where the C library is not glibc).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        return bool(ctypes.CDLL(None).mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD))
    except (OSError, AttributeError):  # not glibc
        return False


def release_memory(device: str | torch.device = "cpu") -> None:
    """Free what a failed attempt left: collect garbage, empty torch's CUDA cache, and return freed heap to the
    system where glibc allows (``malloc_trim``), so a retry finds the memory and the address space again.

    Args:
        device: the device the attempt ran on.
    """
    gc.collect()
    if torch.device(device).type == "cuda" and torch.cuda.is_available():
        torch.cuda.empty_cache()
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL(None).malloc_trim(0)
        except (OSError, AttributeError):  # not glibc (musl has no malloc_trim)
            pass


def choose_tile(pixels: int, batch: int, height: int, width: int, budget: float, costs: MemoryCosts,
                overlap: int, budget_text: str | None = None) -> int | None:
    """The tile side for de-raining a batch of images within a memory budget.

    Args:
        pixels: batch x height x width.
        batch: images in the batch.
        height, width: their size, padded to multiples of 8.
        budget: bytes.
        costs: the measured costs.
        overlap: the tile overlap in pixels.
        budget_text: where the budget comes from, for the error's message (`MemoryBudget.description`).

    Returns:
        None when the whole images fit, else the largest multiple of 8 whose tiles do (at least `smallest_tile`).

    Raises:
        MemoryBudgetError: not even tiles of `smallest_tile` fit; the message says what would be needed.
    """
    if costs.whole(pixels) <= budget:
        return None
    room = budget - costs.tiled(pixels, 0)
    smallest = smallest_tile(overlap)
    tile = int(math.sqrt(max(room, 0.0) / (costs.bytes_per_pixel * batch)) // 8 * 8) if room > 0 else 0
    if tile >= max(height, width):
        return None  # one tile covers the image: the whole image is as cheap (the fit's noise)
    if tile < smallest:
        need = costs.tiled(pixels, batch * smallest * smallest)
        raise MemoryBudgetError(
            f"a {width}x{height} image{'' if batch == 1 else f' (x{batch})'} needs about {format_bytes(need)} "
            f"even in {smallest}-pixel tiles (its image-sized buffers alone take "
            f"{format_bytes(costs.tiled(pixels, 0))}); the budget is {format_bytes(budget)}"
            + (f" ({budget_text})" if budget_text else "")
            + ": free memory, allow more (--max-memory, ulimit -v, the container's limit), or resize the image")
    return tile

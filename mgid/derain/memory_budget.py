"""How much memory de-raining may use, what an image costs, and the tile size that fits (``--tile auto``).

* `MemoryCosts` / `load_costs`: the measured cost of de-raining, read from `MEMORY_RECORD`, which
  ``benchmarks/bench_derain_memory.py --update-record`` writes from the peak resident memory of fresh processes
  (its report is named in the record as the source). A whole image of P pixels (batch included) costs
  ``fixed_bytes + bytes_per_pixel * P``; tiled, ``tiled_image_bytes_per_pixel * P`` for the buffers kept at the
  image's size (input, output, the blend's accumulator) plus ``bytes_per_pixel * T^2 + tile_extra_bytes`` for a
  T x T tile. Measured at two widths (the shipped network's and a narrow one: the activations grow with the
  width, the image-sized buffers do not), and interpolated linearly in the width of the network at hand.
* `available_memory`: what this process may still allocate: the smaller of the system's available memory and
  the room under the process's cgroup limit (CPU), or the CUDA device's free memory.
* `choose_tile`: None when the whole image fits the budget (the exact untiled result), else the largest tile
  (a multiple of 8) that does; `MemoryBudgetError` when not even the whole-image buffers fit.
* `parse_bytes`: ``"4G"``, ``"512M"``, ``"1.5GB"`` -> bytes (``--max-memory``).
* `is_out_of_memory`: whether an exception is an allocation failure (torch's CUDA ``OutOfMemoryError``, the CPU
  allocator's ``RuntimeError``, NumPy's ``MemoryError``, OpenCV's "Insufficient memory"), so a loop over files can
  skip the one image that did not fit and go on.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import psutil
import torch

#: The measured memory of de-raining that ``--tile auto`` sizes tiles by (written by
#: ``benchmarks/bench_derain_memory.py --update-record``, which names its report as the source).
MEMORY_RECORD = Path(__file__).resolve().parent / "inference_memory.json"
#: Share of the available memory ``--tile auto`` plans to use when no ``--max-memory`` is given: the rest is a
#: margin for the measurement's spread and for other programs.
AUTO_BUDGET_FRACTION = 0.8
#: Share of an explicit ``--max-memory`` that ``--tile auto`` plans to use. The measured costs leave some of a run's
#: peak unaccounted for, and the peak spreads from run to run: a 12-megapixel photo through the tiny test network
#: (tests/derain/test_memory_budget.py) planned at the whole 700 MB peaked 632-726 MB above its baseline in six
#: runs, planned at 90 % 624-713 MB, planned at 80 % 575-616 MB. So the plan keeps 20 % of the budget back, and the
#: peak stays under the budget the user gave.
MAX_MEMORY_PLANNED_SHARE = 0.8
#: Smallest tile ``--tile auto`` picks: below it the tiles' overlaps and the statistics pass cost more than the
#: tiles themselves; an image that does not fit with it is refused (`MemoryBudgetError`).
MIN_AUTO_TILE = 128

#: Fragments of the messages of allocation failures that arrive as a plain RuntimeError (the CPU allocator of
#: torch: "DefaultCPUAllocator: can't allocate memory"; CUDA before OutOfMemoryError existed) or a cv2.error.
_OOM_MESSAGES = ("DefaultCPUAllocator", "can't allocate memory", "out of memory", "not enough memory",
                 "Insufficient memory", "Failed to allocate")
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


class MemoryBudgetError(MemoryError):
    """An image that cannot be de-rained within the memory budget, not even in the smallest tiles."""


def is_out_of_memory(exc: BaseException) -> bool:
    """True when ``exc`` says an allocation failed (the image needs more memory than there is)."""
    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
        return True
    return isinstance(exc, Exception) and any(m in str(exc) for m in _OOM_MESSAGES)


def parse_bytes(text: str) -> int:
    """``"4G"``, ``"4GB"``, ``"4 GiB"``, ``"512M"``, ``"1.5g"``, ``"1000000"`` -> bytes (binary units);
    ValueError for anything else or a size that is not positive."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([KMGT]?)(?:I?B)?\s*", str(text), re.IGNORECASE)
    if not m or float(m.group(1)) <= 0:
        raise ValueError(f"expected a memory size such as 4G, 512M or 1.5GB, got {text!r}")
    return int(float(m.group(1)) * _UNITS[m.group(2).upper()])


def format_bytes(n: float) -> str:
    """Bytes for messages: ``"3.2 GB"`` (binary units)."""
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
        """Bytes to de-rain ``pixels`` (batch x padded H x W) in one pass."""
        return self.fixed_bytes + self.bytes_per_pixel * pixels

    def tiled(self, pixels: int, tile_pixels: int) -> float:
        """Bytes to de-rain ``pixels`` in tiles of ``tile_pixels`` (batch included in both)."""
        return self.tile_extra_bytes + self.tiled_image_bytes_per_pixel * pixels + self.bytes_per_pixel * tile_pixels


@lru_cache(maxsize=1)
def _record() -> dict:
    try:
        return json.loads(MEMORY_RECORD.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise RuntimeError(f"{MEMORY_RECORD} (the measured memory --tile auto needs) is missing or unreadable "
                           f"({exc}); reinstall mgid or measure it: python -m benchmarks.bench_derain_memory "
                           f"--update-record") from exc


def variant_name(precision: str, channels_last: bool) -> str:
    """The benchmark's name of an arithmetic: ``fp32``, ``fp32+cl``, ``bf16``, ``bf16+cl``."""
    return precision + ("+cl" if channels_last else "")


_COST_FIELDS = ("bytes_per_pixel", "fixed_bytes", "tiled_image_bytes_per_pixel", "tile_extra_bytes")


def load_costs(precision: str, channels_last: bool, channels: int) -> MemoryCosts:
    """The `MemoryCosts` of a resolved arithmetic (``fp32``/``bf16``, channels_last) for a network ``channels``
    wide: each number interpolated (or extrapolated) linearly in the width between the two measured widths,
    never below the narrower width's. A variant the record lacks (bf16 is measured only where a CPU has it
    natively) takes the largest measured cost, which the source then says."""
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


def _cgroup_room() -> int | None:
    """Bytes left under this process's cgroup memory limit (v2 or v1), or None when there is no limit."""
    candidates = []
    try:
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            if controllers == "":
                candidates.append((Path("/sys/fs/cgroup") / path.lstrip("/"), "memory.max", "memory.current"))
            elif "memory" in controllers.split(","):
                for root in (Path("/sys/fs/cgroup/memory") / path.lstrip("/"), Path("/sys/fs/cgroup/memory")):
                    candidates.append((root, "memory.limit_in_bytes", "memory.usage_in_bytes"))
    except OSError:
        return None
    for folder, limit_name, usage_name in candidates:
        try:
            limit_text = (folder / limit_name).read_text().strip()
            usage = int((folder / usage_name).read_text().strip())
        except (OSError, ValueError):
            continue
        if limit_text == "max" or int(limit_text) >= 1 << 60:  # no limit (v1 writes a huge number)
            return None
        return max(int(limit_text) - usage, 0)
    return None


def available_memory(device: str | torch.device = "cpu") -> int:
    """Bytes this process may still allocate on ``device``: for the CPU the smaller of the system's available
    memory (``psutil.virtual_memory().available``: ``MemAvailable`` on Linux) and the room under its cgroup's limit; for CUDA the device's free memory plus what
    torch holds cached but unused."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))
    available = int(psutil.virtual_memory().available)  # MemAvailable on Linux; portable elsewhere
    room = _cgroup_room()
    return available if room is None else min(available, room)


def choose_tile(pixels: int, batch: int, height: int, width: int, budget: float, costs: MemoryCosts,
                overlap: int) -> int | None:
    """The tile side for de-raining a batch of ``batch`` images of ``height`` x ``width`` (padded to multiples of
    8; ``pixels`` = batch x height x width) within ``budget`` bytes: None when the whole images fit, else the
    largest multiple of 8 whose tiles do (at least `MIN_AUTO_TILE` and more than twice ``overlap``).
    Raises `MemoryBudgetError` when not even those fit, saying what would be needed."""
    if costs.whole(pixels) <= budget:
        return None
    room = budget - costs.tiled(pixels, 0)
    smallest = max(MIN_AUTO_TILE, 2 * overlap + 8)
    tile = int(math.sqrt(max(room, 0.0) / (costs.bytes_per_pixel * batch)) // 8 * 8) if room > 0 else 0
    if tile >= max(height, width):
        return None  # one tile covers the image: the whole image is as cheap (the fit's noise)
    if tile < smallest:
        need = costs.tiled(pixels, batch * smallest * smallest)
        raise MemoryBudgetError(
            f"a {width}x{height} image{'' if batch == 1 else f' (x{batch})'} needs about {format_bytes(need)} "
            f"even in {smallest}-pixel tiles (its image-sized buffers alone take "
            f"{format_bytes(costs.tiled(pixels, 0))}); the budget is {format_bytes(budget)}: free memory, give "
            f"--max-memory more, or resize the image")
    return tile

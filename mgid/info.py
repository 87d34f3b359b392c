"""What this installation is and what ``auto`` picks here: the report of ``mgid info``."""
from __future__ import annotations

import platform
import sys
from typing import Any

import psutil
import torch

import mgid
from mgid import ops
from mgid.checkpoint import file_sha256, read_meta
from mgid.devices import resolve_device
from mgid.precision import cpu_info, resolve_arithmetic


def _kernels(build: dict[str, Any]) -> str:
    if not build["extension"]:
        return "none (every op runs the PyTorch reference)"
    if build["cuda"]:
        return f"C++ CPU and CUDA (arch list {build['cuda_arch_list']})"
    note = " (this torch has CUDA: no nvcc at build time, or MGID_FORCE_CPU=1)" if torch.version.cuda else ""
    return f"C++ CPU only{note}"


def _auto_choice(purpose: str) -> dict[str, str]:
    device = resolve_device("auto")
    choice = {"device": str(device), "ops": ops.op_path(device),
              "arithmetic": resolve_arithmetic("auto", None, device, purpose).describe()}
    reason = ops.unavailable_reason(device)
    if reason is not None:
        choice["ops_note"] = reason
    if purpose == "inference":
        from mgid.derain.backend_choice import choose_backend

        backend = choose_backend("auto", None, device)
        choice["backend"] = f"{backend.backend} ({backend.reason})"
    return choice


def _shipped_weights() -> dict[str, Any]:
    from mgid.derain.derainer import DEFAULT_WEIGHTS

    if not DEFAULT_WEIGHTS.is_file():
        return {"path": str(DEFAULT_WEIGHTS), "sha256": None, "matches_record": False}
    sha = file_sha256(DEFAULT_WEIGHTS)
    recorded = read_meta(DEFAULT_WEIGHTS.with_suffix(".json")).get("sha256", {}).get("model")
    return {"path": str(DEFAULT_WEIGHTS), "sha256": sha, "matches_record": sha == recorded}


def collect() -> dict[str, Any]:
    """The report as JSON-ready data: versions, the build of the kernels, the CPU, what ``auto`` picks for
    training and inference, the memory available and the shipped weights' SHA-256 (and whether their JSON records
    the same)."""
    build = ops.build_info()
    cpu = cpu_info()
    return {
        "mgid": {"version": mgid.__version__, "package": str(mgid.__path__[0])},
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": {"version": torch.__version__, "cuda": torch.version.cuda,
                  "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]},
        "build": {**build, "kernels": _kernels(build)},
        "cpu": {**cpu.to_dict(), "describe": cpu.describe()},
        "memory_available_bytes": int(psutil.virtual_memory().available),
        "auto": {"training": _auto_choice("training"), "inference": _auto_choice("inference")},
        "shipped_weights": _shipped_weights(),
    }


def format_report(report: dict[str, Any]) -> str:
    """The report of `collect` as aligned ``name: value`` lines."""
    build = report["build"]
    lines = [
        ("mgid", f"{report['mgid']['version']} ({report['mgid']['package']})"),
        ("python / torch", f"{report['python']} / {report['torch']['version']} (CUDA {report['torch']['cuda']})"),
        ("platform", report["platform"]),
        ("GPUs", ", ".join(report["torch"]["gpus"]) or "none visible"),
        ("kernels", build["kernels"]),
    ]
    if build["extension"]:
        lines += [("extension", build["path"]), ("built against", f"torch {build['torch']}"),
                  ("CPU ISA copy", build["cpu_isa"]), ("kernel sources", build["source_sha256"] or "unrecorded"),
                  ("build", "debug (MGID_DEBUG=1: unoptimised, extra checks; not for timing)" if build.get("debug")
                   else "release")]
    else:
        lines.append(("why", build["error"]))
    lines += [("CPU", report["cpu"]["describe"]), ("cores", str(report["cpu"]["cores"])),
              ("memory available", f"{report['memory_available_bytes'] / 2**30:.1f} GiB")]
    for purpose in ("training", "inference"):
        choice = report["auto"][purpose]
        lines.append((f"auto for {purpose}", f"{choice['device']}, ops: {choice['ops']}; {choice['arithmetic']}"))
        if "ops_note" in choice:
            lines.append(("", f"(reference because {choice['ops_note']})"))
        if "backend" in choice:
            lines.append(("", f"mgid derain --backend auto: {choice['backend']}"))
    weights = report["shipped_weights"]
    state = ("missing" if weights["sha256"] is None else
             f"sha256 {weights['sha256']}{'' if weights['matches_record'] else ', NOT the hash its JSON records'}")
    lines.append(("shipped weights", f"{weights['path']} ({state})"))
    width = max(len(name) for name, _ in lines)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in lines)

"""The Python parts of ``tools/gpu_check.sh``: what no benchmark does (the benchmarks run through their own CLIs).

Subcommands, each run from the repository root as ``python -m tools.gpu_report <subcommand> ...``:

``env``
    The environment as one JSON line on stdout: python, torch, CUDA as torch sees it, the GPU's name,
    capability, memory and multiprocessors. Needs no mgid; a missing or broken torch is reported in the JSON.
``build-check INFO_JSON``
    After the build: ``mgid.ops.build_info()`` (plus the op paths) written to INFO_JSON and printed; exit 1
    when the extension did not load, and in the GPU mode (``GPU_CHECK_MODE=gpu``) when it has no CUDA
    kernels, ``fused_available('cuda')`` is False, its arch list misses ``TORCH_CUDA_ARCH_LIST`` or it was
    built against another torch.
``summary RESULTS WORK [--final]``
    ``summary.json``, ``summary.md`` and ``logs.txt`` in RESULTS from the stage table (``WORK/stages.tsv``),
    ``WORK/meta.txt``, ``WORK/env.json`` and the stage files in ``WORK/files`` (the bench_ops report,
    ``bench_train.json`` / ``.md`` of ``python -m benchmarks.bench_train``); with ``--final`` also
    ``files.tar.gz`` of ``WORK/files``. Standard library only.
``train-note BENCH_TRAIN_JSON``
    One line for the bench_train stage's note: the baseline's step time and the speed-ups (`train_speedups`).
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

#: Speed-ups of the training step read from a bench_train report: name -> (slower case id, faster case id).
SPEEDUPS = {
    "fused vs reference, fp32": ("reference_ops", "baseline"),
    "fused vs reference, bf16": ("reference_bf16", "bf16"),
    "bf16 vs fp32, fused ops": ("baseline", "bf16"),
    "bf16 vs fp32, reference ops": ("reference_ops", "reference_bf16"),
}
#: The fields of each bench_train case the summary keeps.
CASE_FIELDS = ("id", "label", "precision", "ops", "op_path", "status", "median_s", "images_per_s", "error")


def environment() -> dict[str, Any]:
    """Python, torch and the GPU as torch sees them (``torch_error`` where torch is missing or broken)."""
    info: dict[str, Any] = {"python": platform.python_version(), "python_executable": sys.executable,
                            "platform": platform.platform()}
    try:
        import torch

        info.update(torch=torch.__version__, torch_cuda=torch.version.cuda, cuda_available=torch.cuda.is_available(),
                    cudnn=torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None)
        if torch.cuda.is_available():
            p = torch.cuda.get_device_properties(0)
            info.update(gpu=p.name, capability=f"sm_{p.major}{p.minor}",
                        gpu_memory_gib=round(p.total_memory / 2**30, 1), multiprocessors=p.multi_processor_count)
    except Exception as err:  # noqa: BLE001 - torch missing or broken: the stages will say so
        info["torch_error"] = f"{type(err).__name__}: {err}"
    return info


def build_check(info_path: Path) -> int:
    """Write and print the build info; 0 when the build is usable for this mode, 1 (with the reasons) when not."""
    import torch

    import mgid.ops as o

    gpu = os.environ.get("GPU_CHECK_MODE") == "gpu"
    info = dict(o.build_info())
    info["op_path_cpu"] = o.op_path("cpu")
    if torch.cuda.is_available():
        info["op_path_cuda"] = o.op_path("cuda")
    print("build_info:", json.dumps(info))
    info_path.write_text(json.dumps(info, indent=1))
    problems = []
    if not info.get("extension"):
        problems.append("mgid._C did not load")
    if gpu:
        if not info.get("cuda"):
            problems.append("the extension was built without CUDA kernels")
        elif not (torch.cuda.is_available() and o.fused_available("cuda")):
            problems.append("fused_available('cuda') is False (or torch sees no GPU)")
        want = os.environ.get("TORCH_CUDA_ARCH_LIST", "").replace(" ", "")
        if want and want not in str(info.get("cuda_arch_list", "")).replace(" ", ""):
            problems.append(f"built for {info.get('cuda_arch_list')!r}, asked for {want!r}")
        if info.get("torch") and info.get("runtime_torch") and info["torch"] != info["runtime_torch"]:
            problems.append(f"built against torch {info['torch']}, runs {info['runtime_torch']}")
    if problems:
        print("BUILD CHECK FAILED: " + "; ".join(problems))
        return 1
    print("build check ok")
    return 0


def _load(path: Path | str) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except Exception:  # noqa: BLE001 - absent or cut short: the summary says what it has
        return None


def train_speedups(result: dict[str, Any]) -> dict[str, float]:
    """`SPEEDUPS` of a bench_train report, for the pairs of cases that both ran (> 1: the second is faster)."""
    by = {c["id"]: c for c in result.get("cases", []) if c.get("status") == "ok"}
    return {name: by[slow]["median_s"] / by[fast]["median_s"]
            for name, (slow, fast) in SPEEDUPS.items() if slow in by and fast in by}


def train_note(result: dict[str, Any]) -> str:
    """``baseline 12.3 ms/step, 1300 images/s; fused vs reference, fp32: 2.10x; ...; FAILED bf16: Error: ...``."""
    parts = []
    base = next((c for c in result.get("cases", []) if c["id"] == "baseline" and c.get("status") == "ok"), None)
    if base:
        parts.append(f"baseline {base['median_s'] * 1e3:.2f} ms/step, {base['images_per_s']:.1f} images/s")
    parts += [f"{name}: {value:.2f}x" for name, value in train_speedups(result).items()]
    parts += [f"FAILED {c['id']}: {c.get('error')}" for c in result.get("cases", []) if c.get("status") == "failed"]
    return "; ".join(parts)


def train_markdown(result: dict[str, Any]) -> list[str]:
    """The step table of a bench_train report, one row a case that ran, and the speed-ups (the whole report is
    ``files/bench_train.md``)."""
    env, st = result.get("environment", {}), result.get("settings", {})
    where = (env.get("gpu") or {}).get("name") or f"CPU: {(env.get('cpu') or {}).get('line')}"
    md = [f"### Training step ({result.get('device')}), {where}: `{st.get('config')}` config, batch {st.get('batch')}, "
          f"crop {st.get('crop')}, {st.get('warmup')} warm-up + {st.get('steps')} timed steps, median", "",
          "| case | ops path | ms/step | images/s | first step s | status |",
          "| --- | --- | ---: | ---: | ---: | --- |"]
    for c in result.get("cases", []):
        if c.get("status") == "ok":
            md.append(f"| {c['label']} | {c.get('op_path', '-')} | {c['median_s'] * 1e3:.2f} | "
                      f"{c['images_per_s']:.1f} | {c['first_step_s']:.2f} | ok |")
        elif c.get("status") != "not run":
            md.append(f"| {c['label']} | {c.get('op_path', '-')} | - | - | - | {c.get('status')}: {c.get('error')} |")
    return md + [""] + [f"- {k}: {v:.2f}x" for k, v in train_speedups(result).items()]


def _bench_train_part(bench_train: dict[str, Any]) -> dict[str, Any]:
    env, settings = bench_train.get("environment", {}), bench_train.get("settings", {})
    gpu = env.get("gpu") or {}
    return {"file": "files/bench_train.json", "device": bench_train.get("device"),
            "device_name": gpu.get("name") or (env.get("cpu") or {}).get("line"),
            "config": settings.get("config"), "batch": settings.get("batch"), "crop": settings.get("crop"),
            "speedups": train_speedups(bench_train),
            "cases": [{k: c.get(k) for k in CASE_FIELDS} for c in bench_train.get("cases", [])
                      if c.get("status") != "not run"]}


def write_summary(results: Path, work: Path, final: bool) -> None:
    """summary.json, summary.md, logs.txt (and with ``final`` files.tar.gz) in ``results``."""
    files = work / "files"
    meta: dict[str, str] = {}
    for line in (work / "meta.txt").read_text().splitlines():
        if "=" in line:
            k, v = line.split("=", 1)
            meta[k] = v
    env = _load(work / "env.json") or {}
    order = meta.get("STAGES", "").split()
    rows = {}
    for line in (work / "stages.tsv").read_text().splitlines():
        f = line.split("\t")
        if len(f) >= 7:
            rows[f[0]] = {"name": f[0], "status": f[1], "exit_code": None if f[2] == "" else int(f[2]),
                          "seconds": int(f[3]), "limit_s": None if f[4] == "" else int(f[4]), "note": f[5],
                          "command": f[6]}
    stages = [rows.get(n, {"name": n, "status": "pending" if not final else "not run", "exit_code": None,
                           "seconds": 0, "limit_s": None, "note": "", "command": ""}) for n in order]
    failed = [s["name"] for s in stages if s["status"] == "FAILED"]
    elapsed = int(time.time()) - int(meta.get("T0", "0"))

    bench_ops_json = sorted(glob.glob(str(files / "bench_ops_*.json")))
    bench_ops = _load(bench_ops_json[-1]) if bench_ops_json else None
    bench_ops_md = Path(bench_ops_json[-1]).with_suffix(".md") if bench_ops_json else None
    bench_train = _load(files / "bench_train.json")
    results_part: dict[str, Any] = {}
    if bench_ops:
        results_part["bench_ops"] = {
            "file": "files/" + Path(bench_ops_json[-1]).name, "device": bench_ops.get("device"),
            "cuda_measured": bench_ops.get("cuda_measured"), "errors": bench_ops.get("errors"),
            "targets": bench_ops.get("targets")}
    if bench_train:
        results_part["bench_train"] = _bench_train_part(bench_train)
    summary = {
        "schema": 1, "tool": "tools/gpu_check.sh", "mode": meta.get("MODE"), "final": final,
        "started_utc": meta.get("STARTED"), "written_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "elapsed_s": elapsed, "budget_s": int(meta.get("BUDGET", "0")),
        "commit": meta.get("COMMIT"), "commit_source": meta.get("COMMIT_SOURCE"),
        "device": {"name": meta.get("GPU_NAME") or env.get("gpu") or "none", "driver": meta.get("GPU_DRIVER"),
                   "memory": meta.get("GPU_MEMORY"), "capability": env.get("capability"),
                   "nvidia_smi": meta.get("NVIDIA_SMI")},
        "python": env.get("python"), "python_executable": env.get("python_executable"),
        "torch": env.get("torch"), "cuda": {"torch": env.get("torch_cuda"), "nvcc": meta.get("NVCC"),
                                           "available_to_torch": env.get("cuda_available")},
        "compute_sanitizer": meta.get("SANITIZER"), "host": meta.get("HOST"), "nproc": meta.get("NPROC"),
        "environment": env, "build_info": _load(files / "build_info.json"),
        "knobs": {k[5:]: v for k, v in meta.items() if k.startswith("KNOB_")},
        "stages": stages, "failed": failed, "ok": final and not failed,
        "results": results_part, "files": ["summary.json", "summary.md", "logs.txt", "files.tar.gz"],
    }
    (results / "summary.json").write_text(json.dumps(summary, indent=1, default=str) + "\n")

    dev = summary["device"]
    md = [f"# mgid GPU check ({summary['mode']}), {summary['written_utc']}", "",
          f"- commit: `{summary['commit']}` ({summary['commit_source']})",
          f"- device: {dev['name']}" + (f", driver {dev['driver']}, {dev['memory']}" if dev.get("driver") else "")
          + (f", {dev['capability']}" if dev.get("capability") else ""),
          f"- torch {summary['torch']}, CUDA {summary['cuda']['torch']} (torch), nvcc {summary['cuda']['nvcc']}; "
          f"python {summary['python']}",
          f"- build_info: `{json.dumps(summary['build_info'])}`",
          f"- time: {elapsed} s of a {summary['budget_s']} s budget"
          + ("" if final else " (run still going: this summary is rewritten after each stage)"),
          "- overall: " + ("**FAILED: " + ", ".join(failed) + "**" if failed else
                           ("every stage that ran passed" if final else "no failure so far")), "",
          "| # | stage | status | exit | seconds | limit s | note |", "| ---: | --- | --- | ---: | ---: | ---: | --- |"]
    for i, s in enumerate(stages, 1):
        note = s["note"].replace("|", "/")
        md.append(f"| {i} | {s['name']} | {s['status']} | {'' if s['exit_code'] is None else s['exit_code']} | "
                  f"{s['seconds']} | {s['limit_s'] or ''} | {note} |")
    if bench_ops_md and bench_ops_md.exists():
        md += ["", "## bench_ops", "", bench_ops_md.read_text()[:60000]]
    if bench_train:
        md += ["", "## bench_train", "", *train_markdown(bench_train)]
    for s in stages:
        log = files / f"{s['name']}.log"
        if s["status"] == "FAILED" and log.exists():
            tail = log.read_text(errors="replace").splitlines()[-40:]
            md += ["", f"## {s['name']}: last lines of its log", "", "```", *tail, "```"]
    (results / "summary.md").write_text("\n".join(md) + "\n")

    with open(results / "logs.txt", "w") as out:
        for name in ("env.txt", "nvidia-smi.txt"):
            if (files / name).exists():
                out.write(f"===== {name} =====\n" + (files / name).read_text(errors="replace")[:20000] + "\n")
        for s in stages:
            log = files / f"{s['name']}.log"
            out.write(f"===== stage {s['name']}: {s['status']}, exit {s['exit_code']}, {s['seconds']} s =====\n")
            out.write(log.read_text(errors="replace") if log.exists() else "(no log)\n")
            out.write("\n")
    if final:
        with tarfile.open(results / "files.tar.gz", "w:gz") as tar:
            for f in sorted(files.iterdir()):
                if f.is_file() and f.stat().st_size > 0:
                    tar.add(str(f), arcname=f"files/{f.name}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.gpu_report", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("env", help="the environment as one JSON line")
    b = sub.add_parser("build-check", help="build_info to a JSON file; exit 1 when the build is not usable")
    b.add_argument("info", type=Path)
    s = sub.add_parser("summary", help="summary.json, summary.md, logs.txt (files.tar.gz with --final)")
    s.add_argument("results", type=Path)
    s.add_argument("work", type=Path)
    s.add_argument("--final", action="store_true")
    t = sub.add_parser("train-note", help="one line from a bench_train report: step time and speed-ups")
    t.add_argument("report", type=Path)
    args = p.parse_args(argv)
    if args.command == "env":
        print(json.dumps(environment()))
        return 0
    if args.command == "build-check":
        return build_check(args.info)
    if args.command == "summary":
        write_summary(args.results, args.work, args.final)
        return 0
    result = _load(args.report)
    if not result:
        return 1
    print(train_note(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The small harness the benchmarks share: timer, environment capture, report files.

* Timing: `BenchTimer` (warm-up, interleaved samples, median and inter-quartile range, a
  ``max_seconds`` budget; on CUDA one call a sample between CUDA events after an L2 flush),
  `quantile`, `count_host_syncs`, `configure_compile`; `torch_device` turns a ``--device`` option into a
  device, with a clear error where CUDA is asked for and absent.
* Environment: `environment` (date, host, Python/torch, CPU model and flags, git commit and
  dirty flag, mgid's build_info, load average), `OtherLoad` (the share of the machine's CPU time
  other processes used while a benchmark ran) and `BUSY_SHARE`, the share above which a run is
  flagged as noisy.
* Report: `report_base` (``<prefix>_<UTC timestamp>`` under the output folder),
  `write_report` (the JSON, with the markdown in it, and the markdown) and `publish` (both, printed).

The op cases of the op-family benchmarks live in `benchmarks.op_cases`. ``benchmarks`` is a package of the
source tree, not of the installed ``mgid``: its scripts run from the repository root as modules
(``python -m benchmarks.bench_ops``) and import each other as ``benchmarks.<name>``; ``mgid`` is imported as
installed (``pip install -e .``) or from ``PYTHONPATH``. The installed package never imports this folder.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import math
import os
import platform
import re
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

import mgid.ops as ops
from mgid import precision

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
#: Where the reports go by default (committed results live there).
RESULTS = REPO / "benchmarks" / "results"
#: Share of the machine's CPU time used by other processes above which a run is flagged as noisy.
BUSY_SHARE = 0.2
L2_FLUSH_BYTES = 256 * 1024 * 1024


def torch_device(name: str) -> torch.device:
    """The device of a ``--device`` option (``cpu`` or ``cuda``); exits with a one-line error (code 2) where
    ``cuda`` is asked for and torch sees no GPU, rather than failing later inside a case."""
    if name == "cuda" and not torch.cuda.is_available():
        print(f"error: --device cuda, but torch sees no CUDA GPU (torch {torch.__version__}, CUDA build "
              f"{torch.version.cuda}): run on a GPU machine (tools/gpu_check.sh) or use --device cpu", file=sys.stderr)
        raise SystemExit(2)
    return torch.device(name)


def log(message: str) -> None:
    """Progress, on stderr (stdout carries the report)."""
    print(message, file=sys.stderr, flush=True)


def safe(fn: Callable[[], Any]) -> Any:
    """``fn()``, or ``"error: Type: message"``: an environment probe must not stop the run."""
    try:
        return fn()
    except Exception as err:  # noqa: BLE001
        return f"error: {type(err).__name__}: {err}"


# --------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Timing:
    """Statistics of one measurement, seconds per call."""

    median_s: float
    p25_s: float
    p75_s: float
    min_s: float
    max_s: float
    samples: int
    calls_per_sample: int
    first_call_s: float  # the first warm-up call (includes torch.compile's compilation)

    @property
    def rel_iqr(self) -> float:
        """Inter-quartile range relative to the median."""
        return (self.p75_s - self.p25_s) / self.median_s if self.median_s > 0 else float("nan")


def quantile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated quantile (nan for no values)."""
    s = sorted(values)
    if not s:
        return float("nan")
    pos = q * (len(s) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


class BenchTimer:
    """Times zero-argument callables with warm-up, an optional L2 flush (CUDA) and early stop.

    The callables of one case are timed *interleaved*: each round takes one sample of every
    callable in turn, so load from elsewhere on the machine (a shared CPU) hits all of them alike
    and their ratios stay meaningful.

    CUDA: one call per sample, bracketed by CUDA events after writing a 256 MB buffer (so every
    sample starts with a cold L2); the stream is synchronised after each sample. CPU: each sample
    runs enough calls to last ``cpu_sample_s`` and reports the mean per call. Sampling stops
    after ``repeats`` rounds or once ``max_seconds`` per callable have passed (after at least
    ``min_samples`` rounds).
    """

    def __init__(self, device: torch.device, repeats: int, warmup: int, max_seconds: float,
                 flush_l2: bool, min_samples: int = 3, cpu_sample_s: float = 2e-3) -> None:
        self.device = device
        self.repeats = max(1, repeats)
        self.warmup = max(1, warmup)
        self.max_seconds = max_seconds
        self.min_samples = min(min_samples, self.repeats)
        self.cpu_sample_s = cpu_sample_s
        self.is_cuda = device.type == "cuda"
        self._l2: torch.Tensor | None = None
        if self.is_cuda and flush_l2:
            self._l2 = torch.empty(L2_FLUSH_BYTES // 4, dtype=torch.int32, device=device)

    def _sync(self) -> None:
        if self.is_cuda:
            torch.cuda.synchronize(self.device)

    def _warm(self, fn: Callable[[], Any]) -> tuple[float, float]:
        """Warm-up calls; returns (first call's time, last call's time) in seconds."""
        self._sync()
        t0 = time.perf_counter()
        fn()
        self._sync()
        first = last = time.perf_counter() - t0
        for _ in range(self.warmup - 1):
            if last > self.max_seconds / 4:
                break
            t0 = time.perf_counter()
            fn()
            self._sync()
            last = time.perf_counter() - t0
        return first, last

    def _sample(self, fn: Callable[[], Any], calls: int) -> float:
        """One sample: seconds per call."""
        if self.is_cuda:
            if self._l2 is not None:
                self._l2.zero_()
            begin = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            begin.record()
            fn()
            end.record()
            end.synchronize()
            return begin.elapsed_time(end) / 1e3
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        return (time.perf_counter() - t0) / calls

    def measure_many(self, fns: dict[str, Callable[[], Any]]) -> dict[str, Timing | Exception]:
        """Time every callable of ``fns``, interleaved; a callable that raises gets its exception."""
        results: dict[str, Timing | Exception] = {}
        first: dict[str, float] = {}
        calls: dict[str, int] = {}
        for name, fn in fns.items():
            try:
                first[name], last = self._warm(fn)
            except Exception as err:  # noqa: BLE001 - reported per implementation
                results[name] = err
                continue
            calls[name] = 1 if self.is_cuda else max(1, int(self.cpu_sample_s / max(last, 1e-9)))
        live = [n for n in fns if n in calls]
        samples: dict[str, list[float]] = {n: [] for n in live}
        start = time.perf_counter()
        budget = self.max_seconds * max(1, len(live))
        for round_ in range(self.repeats):
            for name in list(live):
                try:
                    samples[name].append(self._sample(fns[name], calls[name]))
                except Exception as err:  # noqa: BLE001
                    results[name] = err
                    live.remove(name)
            if round_ + 1 >= self.min_samples and time.perf_counter() - start > budget:
                break
        for name in live:
            s = sorted(samples[name])
            results[name] = Timing(median_s=quantile(s, 0.5), p25_s=quantile(s, 0.25),
                                   p75_s=quantile(s, 0.75), min_s=s[0], max_s=s[-1], samples=len(s),
                                   calls_per_sample=calls[name], first_call_s=first[name])
        return results

    def __call__(self, fn: Callable[[], Any]) -> Timing:
        """Time one callable (raises what it raises)."""
        res = self.measure_many({"fn": fn})["fn"]
        if isinstance(res, Exception):
            raise res
        return res


def count_host_syncs(fn: Callable[[], Any], device: torch.device) -> int | None:
    """Synchronising CUDA calls made by one call of ``fn`` (``torch.cuda.set_sync_debug_mode``)."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize(device)
    return sum("synchroniz" in str(w.message).lower() for w in caught)


def configure_compile(cache_limit: int, in_process: bool = True) -> None:
    """Raise dynamo's recompilation limits to ``cache_limit`` (every shape, grad mode or case is
    its own graph).

    With ``in_process`` inductor compiles in this process (``compile_threads = 1``): its pool of
    compile workers otherwise starts in the background and, on a machine with few cores, steals
    CPU from the measurements that follow a compilation.
    """
    try:
        import torch._dynamo as dynamo
    except Exception:  # noqa: BLE001 - the compile cases then fail and say why
        return
    for name in ("cache_size_limit", "recompile_limit", "accumulated_cache_size_limit",
                 "accumulated_recompile_limit"):
        if hasattr(dynamo.config, name):
            setattr(dynamo.config, name, max(getattr(dynamo.config, name), cache_limit))
    if in_process:
        try:
            import torch._inductor.config as inductor_config
            inductor_config.compile_threads = 1
        except Exception:  # noqa: BLE001
            pass


# --------------------------------------------------------------------------------------------
# Environment
# --------------------------------------------------------------------------------------------


def run_command(cmd: list[str]) -> str | None:
    """stdout of ``cmd`` run in the repository, or None if it fails."""
    try:
        r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return r.stdout.strip() if r.returncode == 0 else None


def git_info(short: bool = True) -> dict[str, Any]:
    """The checkout's commit (``--short`` or the full hash) and whether the working tree is dirty."""
    commit = run_command(["git", "rev-parse", *(["--short"] if short else []), "HEAD"])
    status = run_command(["git", "status", "--porcelain"])
    return {"commit": commit or "unknown (git rev-parse HEAD failed: no git, or no commit yet)",
            "dirty": None if status is None else bool(status)}


def cpu_info() -> dict[str, Any]:
    """The CPU every benchmark record names, from one place (`mgid.precision.cpu_info`, what ``auto`` reads).

    Keys: ``model``; ``flags`` (those of avx2, avx512f, avx512_bf16, amx_bf16 the CPU has); ``aten_capability``
    and ``dnnl_max_isa`` (torch's vector caps, lowered by ATEN_CPU_CAPABILITY / DNNL_MAX_CPU_ISA);
    ``native_bf16``; ``cores`` / ``usable_cpus``; ``line``: the one-line form every report prints.
    """
    info = precision.cpu_info()
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        usable = os.cpu_count()
    return {**info.to_dict(), "usable_cpus": usable, "line": f"{info.describe()}, {usable} usable CPUs"}


def loadavg() -> list[float] | None:
    """1, 5 and 15-minute load averages (other work on the machine skews CPU timings)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:  # pragma: no cover - not Unix
        return None


def environment(short_commit: bool = True) -> dict[str, Any]:
    """What every report records: date, host, Python/torch, CPU (model, flags, threads), git, mgid build."""
    return {
        "date_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_capability": safe(torch.backends.cpu.get_cpu_capability),
        "mkldnn": torch.backends.mkldnn.is_available(),
        "cpu": cpu_info(),
        "torch_threads_at_start": torch.get_num_threads(),
        "omp_num_threads_env": os.environ.get("OMP_NUM_THREADS"),
        "git": git_info(short_commit),
        "build_info": safe(ops.build_info),
        "mgid_ops_env": os.environ.get("MGID_OPS"),
        "loadavg_start": loadavg(),
    }


class OtherLoad:
    """Share of the machine's CPU time that other processes used between creation and `fraction` (Linux).

    From ``/proc/stat`` (all CPUs, steal included) minus this process's own CPU time and that of
    its waited-for children (e.g. a compiler that torch.compile started): on a shared small
    machine another job's load changes the timings, so the reports record it.
    """

    def __init__(self) -> None:
        self.start = self._snapshot()

    @staticmethod
    def _snapshot() -> tuple[float, float, float, int] | None:
        try:
            lines = Path("/proc/stat").read_text().splitlines()
            fields = [int(x) for x in lines[0].split()[1:]]
            ncpu = sum(1 for line in lines if re.match(r"cpu\d+ ", line))
        except (OSError, ValueError, IndexError):
            return None
        user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
        busy = (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")
        t = os.times()
        return time.perf_counter(), busy, t.user + t.system + t.children_user + t.children_system, ncpu

    def fraction(self) -> float | None:
        """The share so far, rounded to 3 digits (None where /proc/stat cannot be read)."""
        end = self._snapshot()
        if self.start is None or end is None or end[3] == 0:
            return None
        wall = end[0] - self.start[0]
        others = (end[1] - self.start[1]) - (end[2] - self.start[2])
        return round(max(0.0, others / (wall * end[3])), 3) if wall > 0 else None


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def provenance(env: dict[str, Any]) -> str:
    """``"CPU: <model and flags>; torch <version>, commit <hash> (dirty tree), <date>"`` of an `environment` record,
    the sentence a report's markdown opens with (every number beside its CPU)."""
    return (f"CPU: {env['cpu']['line']}; torch {env['torch']}, commit {env['git']['commit']}"
            f"{' (dirty tree)' if env['git']['dirty'] else ''}, {env['date_utc']}")


def report_base(out_dir: str | Path, prefix: str) -> Path:
    """``out_dir/<prefix>_<UTC timestamp>``: the report's path without its suffix."""
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return Path(out_dir) / f"{prefix}_{stamp}"


def write_report(base: Path, result: dict[str, Any], markdown: str) -> tuple[Path, Path]:
    """Write ``base.json`` (``result`` with the markdown under ``"markdown"``) and ``base.md``, each atomically
    (a temporary file renamed over the name, so an interrupted run leaves no half-written report)."""
    result["markdown"] = markdown
    base.parent.mkdir(parents=True, exist_ok=True)
    json_path, md_path = base.with_suffix(".json"), base.with_suffix(".md")
    for path, text in ((json_path, json.dumps(result, indent=2, default=str) + "\n"), (md_path, markdown)):
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    return json_path, md_path


def publish(out_dir: str | Path, prefix: str, result: dict[str, Any], markdown: str) -> tuple[Path, Path]:
    """`write_report` under ``out_dir/<prefix>_<UTC timestamp>``, the markdown printed (stdout carries the
    report), the two paths logged (stderr); returns them."""
    json_path, md_path = write_report(report_base(out_dir, prefix), result, markdown)
    print(markdown)
    log(f"wrote {json_path} and {md_path}")
    return json_path, md_path

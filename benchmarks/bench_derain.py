#!/usr/bin/env python
"""De-raining speed on the CPU against its limit: megapixels per second, GFLOP/s and share of peak of every engine.

For each arithmetic this CPU runs natively (fp32 everywhere, bf16 where the CPU has native bf16), it de-rains the
same rainy photo (``--sizes``, default 1024x1024: the issue's measurement) with the shipped weights, uint8 in and
out, through each engine, in one interleaved run (warm-ups, then ``--repeats`` rounds of one run per engine):

* ``before <p>``: the path `mgid` ran until the frozen graph: `MGIDNet.forward` under ``torch.autocast`` (bf16) or
  in fp32, channels_last (`EagerDerainer`);
* ``mgid <p>``: ``mgid.load_model(precision=p).derain`` (the default path: `mgid.models.inference_graph`);
* ``torch.compile <p>``: `MGIDNet.forward` compiled by inductor (`CompiledDerainer`: without freezing, whose output
  is wrong in torch 2.14.1), same conversions; its compile time is the first run's;
* ``onnxruntime fp32``: the exported image filter (``mgid export``) on onnxruntime's CPU provider.

Each row gives seconds per image (best and median), MP/s, achieved GFLOP/s (the network's FLOP count from
``torch.utils.flop_counter`` at the padded size, divided by the best time) and its share of the CPU's peak
(`benchmarks.cpu_peak`: theoretical = threads x clock x FLOP/cycle of the instruction set, and a measured large
GEMM), the speed-up over ``before`` of the same arithmetic and the output's PSNR against ``before fp32``.
Video rows (``--video-sizes``, default 1280x720 and 1920x1080): frames per second of `mgid.derain.video.derain_video`
(decode, de-rain, encode) on a short synthetic clip, before vs mgid (default arithmetic) vs onnxruntime.
A profile of the ``mgid`` engine (torch.profiler, grouped by op) says where its time goes.

``--settings native avx2`` (default on a CPU with AVX512) also runs everything in a child process under
``DNNL_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2`` (what an AVX2-only CPU runs: fp32) and puts both in one record.

Writes ``bench_derain_cpu_<UTC timestamp>.json`` / ``.md`` under ``--out`` and prints the markdown. Run from the
repository root: ``python -m benchmarks.bench_derain`` (about 15 min on 2 cores), ``--quick`` for a smoke test.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks import cpu_peak, harness
from benchmarks.harness import OtherLoad, log
from mgid.data import EmbeddedPairedSet
from mgid.derain.backend_choice import SPEED_RECORD
from mgid.derain.derainer import DEFAULT_WEIGHTS, Derainer, load_network
from mgid.eval.metrics import psnr
from mgid.models import DOWNSAMPLE, MGIDNet
from mgid.precision import CpuInfo, autocast, cpu_info, resolve_precision

DEFAULT_OUT = harness.RESULTS
DEFAULT_SIZES = ("1024x1024",)
DEFAULT_VIDEO_SIZES = ("1280x720", "1920x1080")
#: The ISA settings a record may hold: name -> environment of the child process.
SETTINGS = {"native": {}, "avx2": {"DNNL_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}}
QUICK = {"sizes": ["64x48"], "video_sizes": ["64x48"], "video_frames": 2, "threads": 1, "repeats": 1, "warmup": 1,
         "settings": ["native"], "compile": False}
FULL = {"sizes": list(DEFAULT_SIZES), "video_sizes": list(DEFAULT_VIDEO_SIZES), "video_frames": 4, "threads": 2,
        "repeats": 3, "warmup": 1, "settings": None, "compile": True}
#: The engine every output is compared with.
REFERENCE = "before fp32"


def parse_size(text: str) -> tuple[int, int]:
    """``"WxH"`` -> (W, H)."""
    m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not m or int(m.group(1)) < 8 or int(m.group(2)) < 8:
        raise argparse.ArgumentTypeError(f"size must be WxH with W, H >= 8 (e.g. 1024x1024), got {text!r}")
    return int(m.group(1)), int(m.group(2))


def rainy_image(w: int, h: int) -> np.ndarray:
    """HxWx3 uint8: the first held-out scene at max(W, H) px with the held-out "streaks" rain, cropped."""
    rainy, _ = EmbeddedPairedSet(1, size=max(w, h), rain="streaks").images(0)
    return np.ascontiguousarray(rainy[:h, :w])


# ---------------------------------------------------------------------------------------------- engines


class EagerDerainer(Derainer):
    """The path mgid ran before `mgid.models.inference_graph`: `MGIDNet.forward` on whole images, under
    ``torch.autocast`` for bf16, channels_last."""

    def _predict(self, batch: torch.Tensor, tile: int | None, overlap: int) -> torch.Tensor:
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        with torch.no_grad(), autocast(self.device, self.precision):
            return self.net(batch.contiguous(memory_format=fmt), update_memory=False,
                            memory_losses=False).rain.float()


class CompiledDerainer(EagerDerainer):
    """`EagerDerainer` with `MGIDNet.forward` compiled by inductor (default settings). Not with freezing
    (``torch._inductor.config.freezing``): in torch 2.14.1 the frozen graph's outputs are wrong at the image border
    (max 0.19 on the [-1, 1] scale, 24 grey levels, at 128x128; without freezing the same compile matches eager to
    1e-7; docs/DERAIN.md)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        net = self.net
        self._compiled = torch.compile(lambda x: net(x, update_memory=False, memory_losses=False).rain,
                                       dynamic=False)

    def _predict(self, batch: torch.Tensor, tile: int | None, overlap: int) -> torch.Tensor:
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        with torch.no_grad(), autocast(self.device, self.precision):
            return self._compiled(batch.contiguous(memory_format=fmt)).float()


def freezing_error(net: MGIDNet, side: int = 128) -> float:
    """Largest |rain layer difference| of ``net`` compiled with inductor's freezing against eager, fp32, on a random
    ``side`` x ``side`` image (why `CompiledDerainer` does not freeze)."""
    import torch._inductor.config as inductor_config
    x = (torch.rand(1, 3, side, side, generator=torch.Generator().manual_seed(0)) * 2 - 1)
    x = x.contiguous(memory_format=torch.channels_last)
    fn = lambda image: net(image, update_memory=False, memory_losses=False).rain  # noqa: E731
    with torch.no_grad(), inductor_config.patch(freezing=True):
        frozen = torch.compile(fn, dynamic=False)(x)
        return float((frozen - fn(x)).abs().max())


def onnx_filter(path: Path, threads: int) -> Callable[[np.ndarray], np.ndarray]:
    """uint8 HxWx3 -> uint8 HxWx3 through the exported image filter on onnxruntime's CPU provider."""
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def run(rgb: np.ndarray) -> np.ndarray:
        x = (rgb.transpose(2, 0, 1)[None].astype(np.float32) / 255.0)
        y = session.run(None, {"image": x})[0][0]
        return np.clip(np.rint(y.transpose(1, 2, 0) * 255.0), 0, 255).astype(np.uint8)

    return run


def flops(net: MGIDNet, w: int, h: int) -> int:
    """FLOPs of one eval-mode forward pass on a WxH image, counted by ``FlopCounterMode`` on a (1, 3, 64, 64) image
    and scaled by the padded pixel count (every counted op is a convolution or matmul whose cost is per pixel; the
    memory read, under 0.1 %, is a custom op the counter does not see)."""
    side = 64
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        net(torch.zeros(1, 3, side, side), update_memory=False, memory_losses=False)
    padded = (-(-h // DOWNSAMPLE) * DOWNSAMPLE) * (-(-w // DOWNSAMPLE) * DOWNSAMPLE)
    return round(counter.get_total_flops() * padded / side ** 2)


def build_engines(net: MGIDNet, weights: Path, precisions: list[str], compile_too: bool, onnx_path: Path | None,
                  threads: int) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    """{engine name: uint8 image -> uint8 image} of the image rows, each PyTorch engine on its own copy of ``net``."""
    engines: dict[str, Callable[[np.ndarray], np.ndarray]] = {}
    for p in precisions:
        for name, cls in (("before", EagerDerainer), ("mgid", Derainer)) + (
                (("torch.compile", CompiledDerainer),) if compile_too else ()):
            engines[f"{name} {p}"] = cls(_copy(net), "cpu", tile=None, precision=p, weights=weights).derain
    if onnx_path is not None:
        engines["onnxruntime fp32"] = onnx_filter(onnx_path, threads)
    return engines


def _copy(net: MGIDNet) -> MGIDNet:
    """An independent copy of ``net`` (each engine converts its own network's memory format)."""
    fresh = MGIDNet(net.config)
    fresh.load_state_dict(net.state_dict())
    return fresh.eval()


def time_engines(engines: dict[str, Callable[[np.ndarray], np.ndarray]], image: np.ndarray, warmup: int,
                 repeats: int) -> dict[str, dict[str, Any]]:
    """Warm-ups (the first one timed apart: compile time), then ``repeats`` interleaved rounds."""
    result: dict[str, dict[str, Any]] = {name: {"times": []} for name in engines}
    load = OtherLoad()
    for name, fn in engines.items():
        for i in range(warmup):
            t0 = time.perf_counter()
            result[name]["output"] = fn(image)
            if i == 0:
                result[name]["first_s"] = round(time.perf_counter() - t0, 3)
    for _ in range(repeats):
        for name, fn in engines.items():
            t0 = time.perf_counter()
            result[name]["output"] = fn(image)
            result[name]["times"].append(time.perf_counter() - t0)
    share = load.fraction()
    for r in result.values():
        r["other_load"] = share
    return result


def profile_engine(fn: Callable[[np.ndarray], np.ndarray], image: np.ndarray, top: int = 10) -> list[dict[str, Any]]:
    """torch.profiler of one run of ``fn``: self CPU time per op name, largest first, with shares."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn(image)
    events = [(e.key, e.self_cpu_time_total / 1e3, e.count) for e in prof.key_averages()]
    total = sum(ms for _, ms, _ in events) or 1.0
    events.sort(key=lambda e: -e[1])
    rows = [{"op": k, "ms": round(ms, 1), "calls": n, "share": round(ms / total, 3)} for k, ms, n in events[:top]]
    rows.append({"op": "(all ops)", "ms": round(total, 1), "calls": sum(n for _, _, n in events), "share": 1.0})
    return rows


def video_rows(net: MGIDNet, sizes: list[tuple[int, int]], frames: int, threads: int,
               onnx_tiling: Path | None) -> list[dict[str, Any]]:
    """Frames per second of `derain_video` (decode, de-rain, encode) on a synthetic clip per size: before, mgid
    (the default arithmetic) and onnxruntime (the tiling graph, whole frames)."""
    from mgid.data.video import FrameWriter
    from mgid.derain.onnx_backend import OnnxDerainer
    from mgid.derain.video import derain_video
    auto = resolve_precision("auto", "cpu", "inference")
    derainers: dict[str, Any] = {f"before {auto}": EagerDerainer(_copy(net), "cpu", tile=None, precision=auto),
                                 f"mgid {auto}": Derainer(_copy(net), "cpu", tile=None, precision=auto)}
    if onnx_tiling is not None:
        derainers["onnxruntime fp32"] = OnnxDerainer(onnx_tiling, tile=None, threads=threads)
    rows = []
    with tempfile.TemporaryDirectory(prefix="mgid_bench_video_") as tmp:
        for w, h in sizes:
            clip = Path(tmp) / f"rain_{w}x{h}.mp4"
            frame = rainy_image(w, h)
            with FrameWriter(clip, Fraction(25)) as writer:
                for i in range(frames):
                    writer.write(np.roll(frame, 3 * i, axis=1))
            for name, d in derainers.items():
                d.derain(frame)  # warm-up
                report = derain_video(d, clip, Path(tmp) / f"out_{name.replace(' ', '_')}.mp4", overwrite=True,
                                      progress=False)
                rows.append({"size": f"{w}x{h}", "engine": name, "frames": report.frames,
                             "seconds": round(report.seconds, 3), "fps": round(report.fps, 4)})
                log(f"    video {w}x{h} {name}: {rows[-1]['fps']:.3f} fps")
    return rows


# ---------------------------------------------------------------------------------------------- one setting


def run_setting(args: argparse.Namespace, setting: str) -> dict[str, Any]:
    """Everything measured under this process's ISA setting."""
    torch.set_num_threads(args.threads)
    weights = Path(args.weights) if args.weights else DEFAULT_WEIGHTS
    info = cpu_info()
    precisions = ["bf16", "fp32"] if info.native_bf16 else ["fp32"]
    env = harness.environment()
    log(f"bench_derain [{setting}]: {env['cpu']['line']}, precisions {precisions}, {args.threads} thread(s)")
    peaks = {p: {**cpu_peak.theoretical_peak(p, args.threads), "gemm_gflops": cpu_peak.measured_gemm(p)}
             for p in precisions}
    with tempfile.TemporaryDirectory(prefix="mgid_bench_onnx_") as tmp:
        onnx_path = onnx_tiling = None
        if not args.no_onnx:
            from mgid.derain.onnx_export import export_onnx
            onnx_path, onnx_tiling = Path(tmp) / "filter.onnx", Path(tmp) / "tiling.onnx"
            export_onnx(weights, onnx_path)
            export_onnx(weights, onnx_tiling, tiling_inputs=True)
        net = load_network(weights)
        engines = build_engines(net, weights, precisions, args.compile, onnx_path, args.threads)
        rows, profiles = [], {}
        for w, h in args.sizes:
            image = rainy_image(w, h)
            mp, gflop = w * h / 1e6, flops(net, w, h) / 1e9
            log(f"  {w}x{h} ({gflop:.0f} GFLOP): {len(engines)} engines x ({args.warmup} + {args.repeats}) ...")
            group = time_engines(engines, image, args.warmup, args.repeats)
            ref = group[REFERENCE]["output"]
            for name, g in group.items():
                engine, precision = name.rsplit(" ", 1)
                best = min(g["times"])
                before = min(group[f"before {precision}"]["times"])
                peak = peaks.get(precision, {})
                achieved = gflop / best
                agreement = psnr(g["output"], ref)
                rows.append({
                    "setting": setting, "size": f"{w}x{h}", "megapixels": round(mp, 4), "engine": engine,
                    "precision": precision, "times_s": [round(t, 4) for t in g["times"]], "best_s": round(best, 4),
                    "median_s": round(statistics.median(g["times"]), 4), "first_s": g.get("first_s"),
                    "s_per_mp": round(best / mp, 4), "mp_per_s": round(mp / best, 4), "gflop": round(gflop, 4),
                    "gflops": round(achieved, 2),
                    "share_of_peak": round(achieved / peak["gflops"], 4) if peak.get("gflops") else None,
                    "share_of_gemm": round(achieved / peak["gemm_gflops"], 4) if peak.get("gemm_gflops") else None,
                    "speedup_vs_before": round(before / best, 3),
                    "psnr_vs_reference": None if math.isinf(agreement) else round(agreement, 2),
                    "max_abs_diff_vs_reference": int(np.abs(g["output"].astype(np.int16) - ref).max()),
                    "other_load": g["other_load"],
                    # MLAS picks its instruction set itself: the caps of this setting do not reach it
                    "isa_capped": setting == "native" or engine != "onnxruntime"})
                log(f"    {name:22s} {best:.3f} s ({rows[-1]['s_per_mp']:.3f} s/MP), {achieved:.0f} GFLOP/s, "
                    f"{rows[-1]['speedup_vs_before']:.2f}x before")
            if args.profile:
                for p in precisions:
                    profiles[f"{w}x{h} mgid {p}"] = profile_engine(engines[f"mgid {p}"], image)
        video = video_rows(net, args.video_sizes, args.video_frames, args.threads, onnx_tiling) \
            if args.video_sizes else []
        frozen = round(freezing_error(net), 5) if args.compile else None
    return {"setting": setting, "environment": env, "precisions": precisions, "peaks": peaks, "rows": rows,
            "profiles": profiles, "video": video, "freezing_error": frozen, "loadavg_end": harness.loadavg()}


def run_child(args: argparse.Namespace, setting: str) -> dict[str, Any]:
    """`run_setting` in a child process under ``SETTINGS[setting]``'s environment (set before torch starts)."""
    with tempfile.TemporaryDirectory(prefix="mgid_bench_child_") as tmp:
        out = Path(tmp) / "setting.json"
        cmd = [sys.executable, "-m", "benchmarks.bench_derain", *args.argv, "--child-setting", setting,
               "--child-out", str(out)]
        subprocess.run(cmd, check=True, env={**os.environ, **SETTINGS[setting]}, cwd=harness.REPO)
        return json.loads(out.read_text())


# ---------------------------------------------------------------------------------------------- report


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.0f} %"


def markdown(report: dict[str, Any]) -> str:
    lines = ["# De-raining speed on the CPU against its peak: before, mgid, torch.compile, onnxruntime", "",
             f"`{report['command']}`", ""]
    for s in report["settings"]:
        env, peaks = s["environment"], s["peaks"]
        lines += [f"## Setting `{s['setting']}`" + (" (DNNL_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2)"
                                                   if s["setting"] == "avx2" else ""), "",
                  harness.provenance(env) + f"; load average at start {env['loadavg_start']}, at end "
                  f"{s['loadavg_end']}. {report['threads']} torch thread(s); best of {report['repeats']} interleaved "
                  f"runs after {report['warmup']} warm-up(s); uint8 image in and out (conversions included).", "",
                  "Peaks: " + "; ".join(
                      f"**{p}**: theoretical {v['gflops'] if v['gflops'] is not None else '—'} GFLOP/s = "
                      f"{v['formula']} (clock from {v['clock_source']}), measured {cpu_peak.GEMM_SIZE}² GEMM "
                      f"{v['gemm_gflops']} GFLOP/s" for p, v in peaks.items()), "",
                  "| size | engine | precision | s/image (best) | median | s/MP | MP/s | GFLOP/s | share of peak "
                  "| share of GEMM | × before | first run (s) | PSNR vs before fp32 | max Δ | other load |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in s["rows"]:
            agree = "identical" if r["psnr_vs_reference"] is None else f"{r['psnr_vs_reference']:.1f} dB"
            engine = r["engine"] + ("" if r.get("isa_capped", True) else " (not capped: MLAS picks its own instruction set)")
            lines.append(f"| {r['size']} | {engine} | {r['precision']} | {r['best_s']:.3f} | {r['median_s']:.3f} "
                         f"| {r['s_per_mp']:.3f} | {r['mp_per_s']:.3f} | {r['gflops']:.0f} | {_pct(r['share_of_peak'])} "
                         f"| {_pct(r['share_of_gemm'])} | {r['speedup_vs_before']:.2f} | {r['first_s']} | {agree} "
                         f"| {r['max_abs_diff_vs_reference']} | {r['other_load']} |")
        if s["video"]:
            lines += ["", "Video (`derain_video`: decode, de-rain, encode; synthetic clip):", "",
                      "| size | engine | frames | seconds | frames/s |", "|---|---|---|---|---|"]
            lines += [f"| {v['size']} | {v['engine']} | {v['frames']} | {v['seconds']:.2f} | {v['fps']:.3f} |"
                      for v in s["video"]]
        if s.get("freezing_error") is not None:
            lines += ["", f"torch.compile with freezing (`torch._inductor.config.freezing`), fp32, 128x128: largest "
                          f"rain-layer difference from eager {s['freezing_error']:.4f} on the [-1, 1] scale "
                          f"({s['freezing_error'] * 127.5:.1f} grey levels); the torch.compile rows run without it."]
        for key, prof in s["profiles"].items():
            lines += ["", f"Profile of {key} (torch.profiler, self CPU time by op):", "",
                      "| op | ms | calls | share |", "|---|---|---|---|"]
            lines += [f"| `{r['op']}` | {r['ms']:.1f} | {r['calls']} | {_pct(r['share'])} |" for r in prof]
        lines.append("")
    lines += ["## Targets", ""] + [f"- {t}" for t in report["targets"]]
    return "\n".join(lines) + "\n"


def speed_record(report: dict[str, Any], source: str) -> dict[str, Any]:
    """The speed record `mgid.derain.backend_choice` decides ``--backend auto`` from: per CPU kind (``fp32/avx512``,
    ``fp32/avx2``), seconds per megapixel of ``mgid fp32`` and ``onnxruntime fp32`` at the largest photo size."""
    kinds: dict[str, Any] = {}
    for s in report["settings"]:
        cpu = s["environment"]["cpu"]
        info = CpuInfo(cpu["model"], tuple(cpu["flags"]), cpu["aten_capability"], cpu["dnnl_max_isa"])
        rows = {(r["engine"], r["precision"]): r for r in s["rows"] if r["megapixels"] == max(
            x["megapixels"] for x in s["rows"])}
        ours, theirs = rows.get(("mgid", "fp32")), rows.get(("onnxruntime", "fp32"))
        if ours and theirs and theirs.get("isa_capped", True):  # an uncapped onnxruntime is not this kind's speed
            kinds[f"fp32/{'avx512' if info.avx512_usable else 'avx2'}"] = {
                "torch_s_per_mp": ours["s_per_mp"], "onnxruntime_s_per_mp": theirs["s_per_mp"],
                "cpu": cpu["line"], "size": ours["size"]}
    return {"source": source, "torch": report["settings"][0]["environment"]["torch"], "kinds": kinds}


def targets(settings: list[dict[str, Any]]) -> list[str]:
    """The issue's targets, each with the measured ratio and whether it is met."""
    out = []
    for s in settings:
        rows = {(r["size"], r["engine"], r["precision"]): r for r in s["rows"]}
        for (size, engine, p), r in rows.items():
            if engine != "mgid":
                continue
            out.append(f"[{s['setting']}] {size} mgid {p}: {r['speedup_vs_before']:.2f}x before {p} (target 2x): "
                       + ("met" if r["speedup_vs_before"] >= 2 else "NOT met"))
            ort = rows.get((size, "onnxruntime", "fp32"))
            if ort and p == "fp32" and ort.get("isa_capped", True):
                ratio = ort["best_s"] / r["best_s"]
                out.append(f"[{s['setting']}] {size} mgid fp32 vs onnxruntime fp32: {ratio:.2f}x "
                           + ("(mgid faster)" if ratio >= 1 else "(onnxruntime faster)"))
    return out


# ---------------------------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_derain",
        description="Time mgid de-raining on the CPU (before / mgid / torch.compile / onnxruntime, fp32 and native "
                    "bf16) with GFLOP/s and share of the CPU's peak, video frames per second, and a profile; "
                    "optionally also under the AVX2 setting. Writes bench_derain_cpu_<timestamp>.json/.md.")
    p.add_argument("--sizes", nargs="+", type=parse_size, default=None, metavar="WxH",
                   help=f"photo sizes [{' '.join(DEFAULT_SIZES)}; --quick: 64x48]")
    p.add_argument("--video-sizes", nargs="*", type=parse_size, default=None, metavar="WxH",
                   help=f"video frame sizes, none to skip [{' '.join(DEFAULT_VIDEO_SIZES)}]")
    p.add_argument("--video-frames", type=int, default=None, metavar="N", help="frames per clip [4; --quick: 2]")
    p.add_argument("--threads", type=int, default=None, metavar="N", help="torch and onnxruntime threads [2]")
    p.add_argument("--repeats", type=int, default=None, metavar="N", help="timed rounds [3; --quick: 1]")
    p.add_argument("--warmup", type=int, default=None, metavar="N", help="untimed runs first [1]")
    p.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=None,
                   help="ISA settings [native avx2 on an AVX512 CPU, else native; --quick: native]")
    p.add_argument("--no-compile", dest="compile", action="store_false", default=None,
                   help="skip torch.compile (its compile takes minutes on 2 cores)")
    p.add_argument("--no-onnx", action="store_true", help="skip onnxruntime")
    p.add_argument("--no-profile", dest="profile", action="store_false", help="skip the profile")
    p.add_argument("--weights", default=None, metavar="FILE.safetensors", help="weights [the shipped ones]")
    p.add_argument("--out", default=str(DEFAULT_OUT), metavar="DIR", help="output folder [benchmarks/results]")
    p.add_argument("--quick", action="store_true", help="smoke test: one tiny image, one run, native only")
    p.add_argument("--write-record", nargs="?", const=str(SPEED_RECORD), default=None, metavar="JSON",
                   help=f"also write the speed record --backend auto decides from [{SPEED_RECORD.relative_to(harness.REPO)}]")
    p.add_argument("--child-setting", choices=list(SETTINGS), help=argparse.SUPPRESS)
    p.add_argument("--child-out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    preset = QUICK if args.quick else FULL
    for key, value in preset.items():
        if getattr(args, key) is None:
            setattr(args, key, [parse_size(v) for v in value] if key in ("sizes", "video_sizes") else value)
    if args.settings is None:
        args.settings = ["native", "avx2"] if "avx512f" in cpu_info().flags else ["native"]
    if args.threads < 1 or args.repeats < 1 or args.warmup < 1 or args.video_frames < 1:
        p.error("--threads, --repeats, --warmup and --video-frames must be >= 1")
    args.argv = list(sys.argv[1:] if argv is None else argv)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child_setting:
        result = run_setting(args, args.child_setting)
        Path(args.child_out).write_text(json.dumps(result, default=str))
        return 0
    threads_at_start = torch.get_num_threads()
    try:
        settings = [run_setting(args, s) if s == "native" else run_child(args, s) for s in args.settings]
    finally:
        torch.set_num_threads(threads_at_start)
    report = {"command": " ".join(["python -m benchmarks.bench_derain", *args.argv]), "threads": args.threads,
              "repeats": args.repeats, "warmup": args.warmup, "quick": args.quick, "settings": settings}
    report["targets"] = targets(settings)
    json_path, _ = harness.publish(args.out, "bench_derain_cpu", report, markdown(report))
    if args.write_record:
        record = speed_record(report, str(json_path.relative_to(harness.REPO)) if json_path.is_relative_to(
            harness.REPO) else str(json_path))
        Path(args.write_record).write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
        log(f"wrote the speed record {args.write_record}: {', '.join(record['kinds']) or 'no fp32 rows'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

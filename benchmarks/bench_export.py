#!/usr/bin/env python
"""CPU images per second of the exported ONNX network against PyTorch eager, and how far their outputs are apart.

Three ways to compute the rain layer of one image (B = 1, fp32, untiled, contiguous) with the same weights
(default: the shipped ones), each through its `Derainer` (`mgid.derain.derainer.Derainer.rain_layer` on a float tensor):

* ``torch reference``: PyTorch eager with the mgid ops on their pure-PyTorch reference (`mgid.ops.use_reference`);
* ``torch fused``: PyTorch eager with the ops mode ``auto`` (the compiled C++ CPU kernels where the extension
  is built; the report's ``ops`` column says which path ran);
* ``onnxruntime``: `mgid.derain.onnx_backend.OnnxDerainer` on a file of `mgid.derain.onnx_export.export_onnx` (exported at the
  start of the run into a temporary folder unless ``--onnx`` names one), CPUExecutionProvider.

Per size (``--sizes``, default 512x512 and 1024x1024) the three are timed interleaved (`harness.BenchTimer`:
``--warmup`` calls, then up to ``--repeats`` rounds, one sample of each per round) with ``--threads`` intra-op
threads for torch and onnxruntime alike. The report gives the median seconds per image, images per second,
the speed-up over ``torch reference`` and the largest |output - torch reference| on the [-1, 1] scale.

Writes ``bench_export_cpu_<UTC timestamp>.json`` / ``.md`` under ``--out`` (with `harness.environment` and
onnxruntime's version) and prints the markdown. Run from the repository root with the package installed and
``onnx onnxruntime onnxscript`` in the environment::

    OMP_NUM_THREADS=1 python -m benchmarks.bench_export --repeats 3
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks import harness
from benchmarks.harness import OtherLoad, log
from mgid import ops
from mgid.derain.derainer import Derainer, load_network, resolve_weights
from mgid.derain.onnx_backend import OnnxDerainer, import_onnxruntime
from mgid.derain.onnx_export import export_onnx

DEFAULT_SIZES = ("512x512", "1024x1024")
VARIANTS = ("torch reference", "torch fused", "onnxruntime")


def parse_size(text: str) -> tuple[int, int]:
    """``WxH`` -> (H, W)."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be WxH, e.g. 512x512, got {text!r}") from None
    if w < 16 or h < 16:
        raise argparse.ArgumentTypeError(f"size must be at least 16x16, got {text!r}")
    return h, w


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_export", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--sizes", nargs="+", type=parse_size, default=[parse_size(s) for s in DEFAULT_SIZES],
                   metavar="WxH", help=f"image sizes (default {' '.join(DEFAULT_SIZES)})")
    p.add_argument("--weights", default=None, help="checkpoint to time (default: the shipped weights)")
    p.add_argument("--onnx", default=None, help="an existing export of --weights to time (default: export now)")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads for torch and onnxruntime (default 1)")
    p.add_argument("--repeats", type=int, default=3, help="timed rounds per size (default 3)")
    p.add_argument("--warmup", type=int, default=1, help="warm-up calls per variant and size (default 1)")
    p.add_argument("--max-seconds", type=float, default=60.0,
                   help="stop sampling a size after this many seconds per variant (default 60)")
    p.add_argument("--out", default=str(harness.RESULTS), help="report folder (default benchmarks/results)")
    return p


def _image(h: int, w: int) -> torch.Tensor:
    """A smooth deterministic (1, 3, H, W) image in [-1, 1] (so the network sees image-like statistics)."""
    g = torch.Generator().manual_seed(0)
    return torch.nn.functional.avg_pool2d(torch.rand(1, 3, h, w, generator=g) * 2 - 1, 5, 1, 2)


def markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [
        "# ONNX export: CPU speed (bench_export.py)",
        "",
        f"Weights {meta['weights']}; {meta['threads']} intra-op thread(s); fp32, batch 1, untiled; onnxruntime "
        f"{meta['onnxruntime']} ({meta['exporter']} export, opset {meta['opset']}, {meta['export_s']:.1f} s); "
        f"torch {torch.__version__}; other load {meta['other_load']}; CPU: {meta['cpu']}.",
        "",
        "| size | variant | ops | s/image (median) | images/s | vs torch reference | max abs diff vs reference |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['size']} | {r['variant']} | {r['ops']} | error: {r['error']} | | | |")
            continue
        lines.append(f"| {r['size']} | {r['variant']} | {r['ops']} | {r['median_s']:.3f} | {r['images_per_s']:.2f} | "
                     f"{r['speedup']:.2f}x | {r['max_abs_diff']:.1e} |")
    if meta.get("noisy"):
        lines += ["", f"Note: other processes used {meta['other_load']:.0%} of the CPU: timings are noisy."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    ort = import_onnxruntime()
    torch.set_num_threads(args.threads)
    load = OtherLoad()
    weights = resolve_weights(args.weights)
    net = load_network(weights, "cpu")
    torch_d = Derainer(net, "cpu", precision="fp32", channels_last=False)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        if args.onnx is None:
            log(f"exporting {weights} to ONNX ...")
            result = export_onnx(weights, Path(tmp) / "mgid.onnx", tiling_inputs=True)  # what OnnxDerainer runs
            onnx_path, exporter, opset = result.path, result.exporter, result.opset
        else:
            onnx_path, exporter, opset = Path(args.onnx), "given", "?"
        export_s = time.perf_counter() - t0
        onnx_d = OnnxDerainer(onnx_path, threads=args.threads)
        if args.onnx is not None:
            exporter = onnx_d.metadata.get("mgid.exporter", "?")
        ops.set_ops_mode("auto")
        fused_path = ops.op_path("cpu")

        def reference(x: torch.Tensor) -> torch.Tensor:
            with ops.use_reference():
                return torch_d.rain_layer(x)

        runners = {"torch reference": reference, "torch fused": torch_d.rain_layer, "onnxruntime": onnx_d.rain_layer}
        paths = {"torch reference": "PyTorch reference", "torch fused": fused_path,
                 "onnxruntime": "ONNX (reference decomposition)"}
        timer = harness.BenchTimer(torch.device("cpu"), args.repeats, args.warmup, args.max_seconds, flush_l2=False)
        rows: list[dict[str, Any]] = []
        for h, w in args.sizes:
            size = f"{w}x{h}"
            x = _image(h, w)
            outputs = {name: fn(x) for name, fn in runners.items()}
            log(f"{size}: timing {', '.join(VARIANTS)} ...")
            timings = timer.measure_many({name: (lambda fn=fn, x=x: fn(x)) for name, fn in runners.items()})
            base = timings["torch reference"]
            for name in VARIANTS:
                t = timings[name]
                row: dict[str, Any] = {"size": size, "variant": name, "ops": paths[name]}
                if isinstance(t, Exception):
                    row["error"] = f"{type(t).__name__}: {t}"
                else:
                    row.update(median_s=t.median_s, p25_s=t.p25_s, p75_s=t.p75_s, samples=t.samples,
                               images_per_s=1.0 / t.median_s,
                               speedup=base.median_s / t.median_s if not isinstance(base, Exception) else float("nan"),
                               max_abs_diff=float((outputs[name] - outputs["torch reference"]).abs().max()))
                rows.append(row)
    other = load.fraction()
    meta = {"weights": str(weights), "threads": args.threads, "onnxruntime": ort.__version__, "exporter": exporter,
            "opset": opset, "export_s": export_s, "other_load": other, "cpu": harness.cpu_info()["line"],
            "noisy": other is not None and other > harness.BUSY_SHARE}
    text = markdown(rows, meta)
    report = {"benchmark": "bench_export", "environment": {**harness.environment(), "onnxruntime": ort.__version__},
              "args": {k: v for k, v in vars(args).items()}, "meta": meta, "rows": rows}
    harness.publish(args.out, "bench_export_cpu", report, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

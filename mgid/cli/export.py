"""``mgid export``: the network as an ONNX file that stock onnxruntime runs."""
from __future__ import annotations

import argparse

from mgid.cli import common


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``mgid export``'s parser to ``sub``."""
    from mgid.derain.onnx_export import OPSET_RANGES

    p = sub.add_parser(
        "export", help="export the network to ONNX: an image filter any ONNX runtime runs as it is",
        description="Export the inference network (memory read only, trained items baked in) to an ONNX file "
                    "that stock onnxruntime runs with no mgid code. By default an image filter: input image "
                    "(N,3,H,W) float32 RGB in [0,1] (8-bit pixels / 255), any N, any H and W >= 8; output "
                    "derained (N,3,H,W) in [0,1]; the padding to multiples of 8 is inside the graph. With "
                    "--tiling-inputs, the graph `mgid derain --backend onnxruntime --weights OUT.onnx` tiles large "
                    "photos with (image in [-1,1] with H, W multiples of 8, the instance-norm statistics as "
                    "inputs, the rain layer and the pre-norm query as outputs; mgid.derain.onnx_export documents it).")
    p.add_argument("--onnx", required=True, metavar="OUT.onnx",
                   help="the ONNX file to write (checked before the export starts; written atomically)")
    common.add_overwrite_argument(p, "an existing OUT.onnx")
    p.add_argument("--tiling-inputs", action="store_true",
                   help="write the tiling graph of mgid derain --backend onnxruntime (statistics inputs, rain layer "
                        "output) instead of the image filter")
    common.add_weights_argument(p, "weights to export")
    (dynamo_lo, dynamo_hi), script_lo = OPSET_RANGES["dynamo"], OPSET_RANGES["torchscript"][0]
    p.add_argument("--opset", type=int, default=None, metavar="N",
                   help=f"ai.onnx opset: {dynamo_lo} to {dynamo_hi} (the dynamo exporter), or {script_lo} to "
                        f"{dynamo_lo - 1} (written by the TorchScript exporter); any other is refused before the "
                        f"export [default: the dynamo exporter's own]")
    p.set_defaults(run=run, prog=p.prog)


def run(args: argparse.Namespace) -> int:
    """Export the weights ``args`` name to ``args.onnx``; the exit code.

    Raises:
        MgidError: Bad options or weights, or an export that would not run as the network does.
        common.WriteError: The file could not be written.
    """
    from mgid.derain.onnx_export import export_onnx

    try:
        result = export_onnx(args.weights, args.onnx, args.opset, overwrite=args.overwrite,
                             tiling_inputs=args.tiling_inputs)
    except FileNotFoundError:
        raise  # missing weights: their own message
    except OSError as exc:
        raise common.WriteError(f"could not write {args.onnx}: {common.os_error_text(exc)}") from exc
    print(result.describe())
    return common.EXIT_OK

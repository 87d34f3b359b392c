"""ONNX export of the inference network, for stock onnxruntime (``mgid export --onnx model.onnx``).

`export_onnx` writes the eval-mode network (memory read only) as one ONNX graph of standard ``ai.onnx`` operators
that runs with no mgid code: by default the image filter `mgid.derain.onnx_graphs.IMAGE_FILTER`, with
``tiling_inputs`` the graph `mgid.derain.onnx_graphs.TILING` that `mgid.derain.onnx_backend` tiles with. The path
is checked before any work, the file written atomically, and `ExportResult` says what was written. The graphs,
the padding, the exporters, the opsets and the metadata: docs/DEPLOY.md, "Design notes".
"""
from __future__ import annotations

import copy
import io
import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from mgid import __version__
from mgid import ops as mgid_ops
from mgid.checkpoint import file_sha256
from mgid.derain.onnx_graphs import IMAGE_FILTER, TILING, GraphSpec
from mgid.errors import InputError, MgidError, MissingDependencyError
from mgid.models import MGIDNet
from mgid.output_paths import check_output_file, write_atomic

#: ONNX operator domains allowed in the exported graph (the standard ones; no ``mgid`` custom ops).
STANDARD_DOMAINS = ("", "ai.onnx")
#: Largest |onnxruntime - PyTorch| (on the [-1, 1] scale; 1/8 of a grey level) `export_onnx` accepts when it
#: verifies the file: measured ~1e-5 for small and ~1e-7 for the shipped network; a broken graph is off by O(0.1).
VERIFY_TOLERANCE = 1e-3
Exporter = Literal["auto", "dynamo", "torchscript"]
#: The suffix an exported file must have (checked before the export starts).
ONNX_SUFFIX = ".onnx"
#: The ai.onnx opsets (lowest, highest) each exporter writes for this network (module doc, "Opsets").
OPSET_RANGES: dict[str, tuple[int, int]] = {"dynamo": (18, 25), "torchscript": (11, 20)}

_NEED_ONNX = "ONNX export needs the onnx package{extra}: pip install onnx onnxscript (and onnxruntime to run the file)"


class ExportError(MgidError, RuntimeError):
    """The exported graph would not run as the PyTorch network does (custom domains, fixed sizes, other results);
    nothing was written."""


@dataclass
class ExportResult:
    """What `export_onnx` wrote.

    path: the ONNX file. kind: ``image_filter`` or ``tiling`` (`mgid.derain.onnx_graphs`). exporter: ``dynamo`` or
    ``torchscript``. opset: the ai.onnx opset of the file.
    bytes: its size. weights, weights_sha256: the source checkpoint (None when a network was passed
    without them). max_abs_error: largest |onnxruntime - PyTorch reference| on the verification input
    (None when not verified). fallback_reason: why the dynamo exporter was not used (None when it was).
    metadata: the metadata_props written.
    """

    path: Path
    kind: str
    exporter: str
    opset: int
    bytes: int
    weights: Path | None
    weights_sha256: str | None
    max_abs_error: float | None
    fallback_reason: str | None
    metadata: dict[str, str]

    def describe(self) -> str:
        """One line for the command line."""
        src = f"weights {self.weights} (sha256 {self.weights_sha256[:12]}...)" if self.weights_sha256 else "a network"
        check = (f"; onnxruntime matches PyTorch to {self.max_abs_error:.2e}" if self.max_abs_error is not None
                 else "; not verified (onnxruntime not installed)")
        fallback = f" (instead of the dynamo exporter: {self.fallback_reason})" if self.fallback_reason else ""
        what = ("an image filter: image (N,3,H,W) in [0,1] -> derained in [0,1]" if self.kind == IMAGE_FILTER.kind
                else "the tiling graph of mgid derain --backend onnxruntime")
        return (f"wrote {self.path} ({what}; {self.bytes / 1e6:.1f} MB, ONNX opset {self.opset}, {self.exporter} "
                f"exporter{fallback}) from {src}{check}")


def _import_onnx() -> Any:
    try:
        import onnx
    except ImportError as err:
        raise MissingDependencyError(_NEED_ONNX.format(extra="")) from err
    return onnx


def _resolve_net(net_or_weights: MGIDNet | str | Path | None) -> tuple[MGIDNet, Path | None, str | None]:
    """(a CPU fp32 contiguous eval-mode copy of the network, weights file, its sha256)."""
    if isinstance(net_or_weights, MGIDNet):
        # A copy: the caller's network keeps its device, dtype, memory format and train/eval mode.
        net = copy.deepcopy(net_or_weights)
        path, sha = None, None
    elif net_or_weights is None or isinstance(net_or_weights, (str, Path)):
        from mgid.derain.derainer import load_network, resolve_weights

        path = resolve_weights(net_or_weights)
        sha = file_sha256(path)
        net = load_network(path, "cpu")
    else:
        raise TypeError(f"export_onnx takes an MGIDNet, a weights path or None (the shipped weights), got "
                        f"{type(net_or_weights).__name__}")
    net = net.to("cpu", torch.float32, memory_format=torch.contiguous_format).eval()
    return net, path, sha


def _export_dynamo(spec: GraphSpec, graph: nn.Module, example: tuple[torch.Tensor, ...], opset: int | None) -> Any:
    """The ModelProto from ``torch.onnx.export(dynamo=True)`` with ``spec``'s dynamic shapes."""
    try:
        import onnxscript  # noqa: F401  (the dynamo exporter's dependency: fail early with a clear message)
    except ImportError as err:
        raise MissingDependencyError(_NEED_ONNX.format(extra=" and onnxscript (for the dynamo exporter)")) from err
    dynamic_shapes = spec.dynamic_shapes()
    registration = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registration.level
    registration.setLevel(logging.ERROR)  # "torchvision is not installed. Skipping torchvision::nms", ...
    try:
        with warnings.catch_warnings():
            # "The axis name: batch will not be used, since it shares the same shape constraints with another
            # axis": the three inputs' batch axes are one Dim on purpose.
            warnings.filterwarnings("ignore", message=r".*axis name.*will not be used")
            program = torch.onnx.export(graph, example, None, dynamo=True, dynamic_shapes=dynamic_shapes,
                                        input_names=list(spec.inputs), output_names=list(spec.outputs),
                                        opset_version=opset, optimize=True, external_data=False, verbose=False)
    finally:
        registration.setLevel(level)
    return program.model_proto


def _export_torchscript(spec: GraphSpec, graph: nn.Module, example: tuple[torch.Tensor, ...],
                        opset: int | None) -> Any:
    """The ModelProto from the TorchScript exporter (``dynamo=False``) with dynamic B, H, W."""
    onnx = _import_onnx()
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # The tracer warns at every shape check of the model (they hold for any multiple of 8) and the
        # exporter at its own deprecation; neither concerns the user of the file.
        warnings.simplefilter("ignore")
        kwargs: dict[str, Any] = {} if opset is None else {"opset_version": opset}
        torch.onnx.export(graph, example, buffer, dynamo=False, input_names=list(spec.inputs),
                          output_names=list(spec.outputs), dynamic_axes=spec.torchscript_axes, **kwargs)
    return onnx.load_from_string(buffer.getvalue())


def custom_domains(model: Any) -> set[str]:
    """The non-standard operator domains used by the nodes (or local functions) of ModelProto ``model``."""
    domains = {n.domain for n in model.graph.node} | {f.domain for f in model.functions}
    for f in model.functions:
        domains |= {n.domain for n in f.node}
    return domains - set(STANDARD_DOMAINS)


def _ai_onnx_opset(model: Any) -> int:
    return next(int(o.version) for o in model.opset_import if o.domain in STANDARD_DOMAINS)


def _verify(data: bytes, spec: GraphSpec, net: MGIDNet, example: tuple[torch.Tensor, ...]) -> float | None:
    """Largest |onnxruntime - PyTorch| of the exported bytes at a second size (``spec.check``; None without
    onnxruntime)."""
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, torch.get_num_threads())
    session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    feeds, reference = spec.check(net, example)
    out = torch.from_numpy(session.run([spec.outputs[0]], feeds)[0])
    if out.shape != reference.shape:
        raise ExportError(f"the exported graph gives {spec.outputs[0]} of shape {tuple(out.shape)} for an input of "
                           f"{tuple(feeds['image'].shape)}: its sizes are not dynamic")
    return float((out - reference).abs().max())


def opset_exporter(opset: int | None, exporter: Exporter = "auto") -> Exporter:
    """The exporter that writes ``opset``: ``exporter`` itself, or for ``auto`` the TorchScript exporter below the
    dynamo exporter's range (`OPSET_RANGES`).

    Args:
        opset: the ai.onnx opset asked for (None: the exporter's default).
        exporter: ``auto``, ``dynamo`` or ``torchscript``.

    Returns:
        ``exporter``, or ``torchscript`` for ``auto`` with an opset below the dynamo exporter's lowest.

    Raises:
        ValueError: an opset that is not a whole number, or that ``exporter`` cannot write (the message gives the
            ranges).
    """
    if opset is None:
        return exporter
    if isinstance(opset, bool) or not isinstance(opset, int):
        raise InputError(f"the ONNX opset must be a whole number, got {opset!r}")
    (dynamo_lo, dynamo_hi), script_lo = OPSET_RANGES["dynamo"], OPSET_RANGES["torchscript"][0]
    if exporter == "auto":
        if dynamo_lo <= opset <= dynamo_hi:
            return "auto"
        if script_lo <= opset < dynamo_lo:
            return "torchscript"
        allowed = (f"the exporters write opsets {dynamo_lo} to {dynamo_hi} (dynamo) and {script_lo} to "
                   f"{dynamo_lo - 1} (TorchScript)")
    else:
        lo, hi = OPSET_RANGES[exporter]
        if lo <= opset <= hi:
            return exporter
        allowed = f"the {exporter} exporter writes opsets {lo} to {hi}"
    raise InputError(f"ONNX opset {opset} is not supported: {allowed}; pass one of those, or no opset for the "
                     f"exporter's default; nothing was written")


def export_onnx(net_or_weights: MGIDNet | str | Path | None, path: str | Path, opset: int | None = None, *,
                exporter: Exporter = "auto", weights_sha256: str | None = None, verify: bool = True,
                overwrite: bool = False, tiling_inputs: bool = False) -> ExportResult:
    """Export the inference network to ONNX file ``path`` (the graph of the module doc); returns what was written.

    Args:
        net_or_weights: an `MGIDNet` (exported from a CPU fp32 copy; the original is left as it is), a
            checkpoint (``NAME.safetensors`` / ``NAME.json`` / a training folder, as `mgid.derain.derainer.resolve_weights`
            takes) or None for the shipped weights.
        path: the ``.onnx`` file to write (its folder is created), checked before any work
            (`mgid.output_paths.check_output_file`: suffix ``.onnx``, writable, not a folder); written atomically.
        overwrite: replace an existing file (otherwise `OutputPathError`, before any work).
        tiling_inputs: write the tiling graph of `mgid.derain.onnx_backend` (`mgid.derain.onnx_graphs.TILING`) instead of
            the default image filter (`mgid.derain.onnx_graphs.IMAGE_FILTER`).
        opset: the ai.onnx opset (None: the exporter's default); `OPSET_RANGES` lists what each exporter writes,
            checked before any work (`opset_exporter`).
        exporter: ``auto`` (dynamo, falling back to TorchScript with a warning; TorchScript for an opset below
            the dynamo exporter's), ``dynamo`` or ``torchscript``.
        weights_sha256: recorded when a network is passed (for a weights file it is computed).
        verify: run the written graph in onnxruntime (when installed) on an input of another size than the
            traced one and compare with PyTorch's reference ops.

    The export runs with the mgid ops in reference mode (restored afterwards), so the graph holds only
    standard operators.

    Returns:
        What was written (`ExportResult`: the file, graph kind, exporter, opset, size, weights, verification).

    Raises:
        InputError: an opset the exporter cannot write, or an unknown exporter (before any work).
        OutputPathError: ``path`` exists (without ``overwrite``), is a folder or lacks the ``.onnx`` suffix.
        FileNotFoundError: the weights file is missing.
        CheckpointError: the weights are not a valid mgid checkpoint.
        MissingDependencyError: onnx (or, for the dynamo exporter, onnxscript) is not installed.
        ExportError: a custom-domain op remains in the graph, its sizes are not dynamic, or it differs from
            PyTorch by more than `VERIFY_TOLERANCE` in onnxruntime; nothing is written.
    """
    if exporter not in ("auto", "dynamo", "torchscript"):
        raise InputError(f"exporter must be auto, dynamo or torchscript, got {exporter!r}")
    chosen = opset_exporter(opset, exporter)
    path = check_output_file(path, overwrite=overwrite, suffixes=(ONNX_SUFFIX,), what="ONNX file")
    onnx = _import_onnx()
    spec = TILING if tiling_inputs else IMAGE_FILTER
    net, weights, sha = _resolve_net(net_or_weights)
    sha = sha or weights_sha256
    graph = spec.build(net).eval()
    example = spec.example(net)
    fallback_reason = None
    if chosen != exporter:  # auto, with an opset below the dynamo exporter's
        fallback_reason = f"opset {opset} is below its lowest, {OPSET_RANGES['dynamo'][0]}"
        exporter = chosen
    with torch.no_grad(), mgid_ops.use_reference():
        if exporter in ("auto", "dynamo"):
            try:
                model, used = _export_dynamo(spec, graph, example, opset), "dynamo"
            except Exception as err:  # noqa: BLE001  (any failure of the new exporter: try the old one)
                if exporter == "dynamo":
                    raise
                fallback_reason = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"[:300]
                warnings.warn(f"the dynamo ONNX exporter failed ({fallback_reason}); using the TorchScript exporter",
                              RuntimeWarning, stacklevel=2)
        if exporter == "torchscript" or fallback_reason is not None:
            model, used = _export_torchscript(spec, graph, example, opset), "torchscript"
    leftover = custom_domains(model)
    if leftover:
        raise ExportError(f"the exported graph uses non-standard operator domains {sorted(leftover)}: it would not "
                           f"run in stock onnxruntime (the mgid ops should have exported through their reference)")
    metadata = {
        "mgid.graph_kind": spec.kind,
        "mgid.graph_format": spec.graph_format,
        "mgid.version": __version__,
        "mgid.model_config": json.dumps(net.config.to_dict(), sort_keys=True),
        "mgid.weights_sha256": sha or "",
        "mgid.weights_file": weights.name if weights is not None else "",
        **spec.metadata,
        "mgid.exporter": used,
        "mgid.torch_version": torch.__version__,
    }
    del model.metadata_props[:]
    for key, value in metadata.items():
        model.metadata_props.add(key=key, value=value)
    model.producer_name, model.producer_version = "mgid", __version__
    model.doc_string = spec.doc
    onnx.checker.check_model(model)
    data = model.SerializeToString()
    max_err = _verify(data, spec, net, example) if verify else None
    if max_err is not None and not max_err <= VERIFY_TOLERANCE:
        raise ExportError(f"the exported graph differs from PyTorch by {max_err:.3g} (> {VERIFY_TOLERANCE}) in "
                           f"onnxruntime; nothing was written to {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, data)
    return ExportResult(path, spec.kind, used, _ai_onnx_opset(model), len(data), weights, sha or None, max_err,
                        fallback_reason, metadata)

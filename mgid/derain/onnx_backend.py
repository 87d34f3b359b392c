"""De-raining with onnxruntime: `OnnxDerainer`, a `mgid.derain.derainer.Derainer` running a file of `mgid.derain.onnx_export`.

    >>> from mgid.derain.onnx_backend import load_onnx_derainer
    >>> derainer = load_onnx_derainer("mgid.onnx", tile=512)   # by `mgid export --tiling-inputs --onnx mgid.onnx`
    >>> clean = derainer.derain(rgb)                            # HxWx3 uint8 RGB in and out, as Derainer

Same interface and the same results as the PyTorch `Derainer` in fp32 (to float rounding, ~1e-6 on the
[-1, 1] scale): `derain`, `rain_layer` and `derain_with_rain` are Derainer's own methods; only the network
pass differs. Images of any size are padded to multiples of 8 here (the graph takes multiples of 8 only,
see `mgid.derain.onnx_export`) with the model's ``pad_mode`` and cropped back, as `MGIDNet.forward` does. Tiling is
`mgid.derain.tiling.tiled_rain` itself (streamed for NumPy images: `mgid.derain.tiling.stream_tiled_rain`), given
two callables that run the session: the whole image's instance-norm
statistics are gathered from the graph's ``pre_norm_query`` output (from the encoder alone, a subgraph extracted
at load time when the ``onnx`` package is installed, see `_encoder_session`) and fed back through its
``norm_mean``/``norm_var`` inputs, so tiled results match the torch path's tiled results, not just its untiled ones.

Runs on the CPU (``CPUExecutionProvider``) in float32: ``device`` is ``cpu``, ``precision`` ``fp32``,
``channels_last`` False; tensors on another device are copied to the CPU and the result copied back.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mgid.derain.derainer import Derainer, check_max_memory, check_self_ensemble, check_tile
from mgid.derain.onnx_graphs import IMAGE_FILTER, TILING
from mgid.derain.tiling import (
    DEFAULT_OVERLAP,
    TILE_AUTO,
    PixelSource,
    RowsFn,
    cropped_rows,
    stream_tiled_rain,
    tile_geometry,
    tiled_rain,
)
from mgid.errors import MgidError
from mgid.models import DOWNSAMPLE, ModelConfig, NormStats, image_size_problem, pad_to_multiple
from mgid.precision import Arithmetic

_NO_ORT = "the onnxruntime backend needs onnxruntime, which is not installed: pip install onnxruntime"


class OnnxModelError(MgidError, ValueError):
    """The file is not an ONNX model, or not one written by `mgid.derain.onnx_export`."""


def import_onnxruntime() -> Any:
    """The ``onnxruntime`` module; ModuleNotFoundError saying ``pip install onnxruntime`` when it is missing."""
    try:
        import onnxruntime
    except ImportError as err:
        raise ModuleNotFoundError(_NO_ORT) from err
    return onnxruntime


def _check_file(path: Path) -> None:
    if not path.exists():
        raise FileNotFoundError(f"ONNX model not found: {path} (write one with `mgid export --onnx {path}`)")
    if path.is_dir():
        raise OnnxModelError(f"{path} is a folder; pass the .onnx file written by `mgid export --onnx OUT.onnx`")
    if path.suffix in (".safetensors", ".json"):
        raise OnnxModelError(f"{path} is an mgid checkpoint, not an ONNX model: export it first with "
                             f"`mgid export --weights {path} --onnx model.onnx`, or use the torch backend")
    if path.stat().st_size == 0:
        raise OnnxModelError(f"{path} is empty, not an ONNX model (an interrupted copy?); re-export it with "
                             f"`mgid export --onnx {path}`")


def open_session(path: str | Path, threads: int | None = None) -> Any:
    """An ``onnxruntime.InferenceSession`` (CPU) of ONNX file ``path``, checked to be the tiling graph of
    `mgid.derain.onnx_export` (``--tiling-inputs``; an image filter, the default export, is refused with a message saying so).

    ``threads``: intra-op threads (None: onnxruntime's default, one per physical core).
    Raises FileNotFoundError, `OnnxModelError` (not ONNX / not an mgid export) or ModuleNotFoundError.
    """
    ort = import_onnxruntime()
    path = Path(path).expanduser()
    _check_file(path)
    options = ort.SessionOptions()
    if threads is not None:
        if int(threads) < 1:
            raise ValueError(f"threads must be >= 1 (or None for onnxruntime's default), got {threads}")
        options.intra_op_num_threads = int(threads)
    options.log_severity_level = 3  # errors only: its warnings about unused initialisers are not the user's
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as err:  # noqa: BLE001  (onnxruntime raises its own pybind classes: InvalidProtobuf, Fail, ...)
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise OnnxModelError(f"{path} is not an ONNX model onnxruntime can load ({first[:300]}); write one with "
                             f"`mgid export --onnx {path.name}`") from err
    inputs = tuple(i.name for i in session.get_inputs())
    outputs = tuple(o.name for o in session.get_outputs())
    if inputs == IMAGE_FILTER.inputs and outputs == IMAGE_FILTER.outputs:
        raise OnnxModelError(f"{path} is an image filter (what `mgid export` writes by default: image in [0, 1] -> "
                             f"derained, for any ONNX runtime as it is); --backend onnxruntime tiles large photos and "
                             f"needs the tiling graph: `mgid export --tiling-inputs --onnx {path.name}`")
    if inputs != TILING.inputs or not set(TILING.outputs) <= set(outputs):
        raise OnnxModelError(f"{path} is an ONNX model but not one of `mgid export`: inputs {list(inputs)}, outputs "
                             f"{list(outputs)} (expected {list(TILING.inputs)} -> {list(TILING.outputs)})")
    fmt = session.get_modelmeta().custom_metadata_map.get("mgid.graph_format")
    if fmt != TILING.graph_format:
        raise OnnxModelError(f"{path} has mgid graph format {fmt!r}; this mgid reads format {TILING.graph_format}: "
                             f"re-export it with this version (`mgid export --tiling-inputs --onnx {path.name}`)")
    return session


def _encoder_session(path: Path, threads: int | None) -> Any:
    """A session of the file's subgraph image -> pre_norm_query (the encoder alone), or None without ``onnx``.

    Why a second session: onnxruntime 1.32 runs the whole graph even when only ``pre_norm_query`` is fetched
    (``RunOptions.only_execute_path_to_fetches`` measured no faster), so the statistics pass of tiled inference
    would cost a full network pass per tile; the extracted encoder costs ~1/4 of one (measured at 256x256 with
    the shipped weights: 0.095 s vs 0.35 s, one thread). Extracting needs the ``onnx`` package; without it the
    full graph is used (same result, slower tiling).
    """
    try:
        import onnx
        import onnx.utils
    except ImportError:
        return None
    ort = import_onnxruntime()
    model = onnx.load(str(path))
    encoder = onnx.utils.Extractor(model).extract_model(["image"], ["pre_norm_query"])
    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = int(threads)
    options.log_severity_level = 3
    return ort.InferenceSession(encoder.SerializeToString(), options, providers=["CPUExecutionProvider"])


class OnnxDerainer(Derainer):
    """A `Derainer` whose network pass is an onnxruntime session of a file of `mgid.derain.onnx_export`.

    Attributes:
        session: the ``onnxruntime.InferenceSession``.
        net: None (there is no PyTorch network).
        config: the `ModelConfig` recorded in the file (its ``pad_mode`` pads images to multiples of 8).
        metadata: the file's metadata_props (``mgid.version``, ``mgid.weights_sha256``, ...).
        device: ``torch.device("cpu")``; precision: ``"fp32"``; channels_last: False.
        tile, overlap: default tiling (``tile=None``: whole images), as `Derainer`.
        self_ensemble: default of the per-call option, as `Derainer`.
        weights: the ONNX file.
    """

    def __init__(self, path: str | Path, tile: int | str | None = TILE_AUTO, overlap: int = DEFAULT_OVERLAP,
                 threads: int | None = None, self_ensemble: bool = False, max_memory: int | None = None) -> None:
        # Derainer.__init__ moves a torch network; nothing of it applies here.
        self.session = open_session(path, threads)
        self.metadata: dict[str, str] = dict(self.session.get_modelmeta().custom_metadata_map)
        try:
            self.config = ModelConfig.from_dict(json.loads(self.metadata["mgid.model_config"]))
        except (KeyError, TypeError, ValueError) as err:
            raise OnnxModelError(f"{path} has no readable mgid.model_config metadata ({err}); re-export it") from err
        self.net = None
        self.device = torch.device("cpu")
        self.precision, self.channels_last = "fp32", False
        self.arithmetic = Arithmetic("fp32", False, "onnxruntime CPUExecutionProvider computes in fp32")
        self.tile, self.overlap, self.weights = check_tile(tile, overlap), overlap, Path(path).expanduser()
        self.max_memory = check_max_memory(max_memory)
        self.self_ensemble = check_self_ensemble(self_ensemble)
        self._encoder_session = _encoder_session(self.weights, threads)

    def _channels(self) -> int:
        """The network's width C, from the file's recorded config (`Derainer.memory_costs` scales by it)."""
        return self.config.channels

    def __repr__(self) -> str:
        return (f"OnnxDerainer(weights={str(self.weights)!r}, device='cpu', tile={self.tile}, overlap={self.overlap}, "
                f"precision='fp32', channels_last=False, self_ensemble={self.self_ensemble})")

    # ------------------------------------------------------------------------------------- the graph

    def _feeds(self, crop: torch.Tensor, stats: NormStats | None) -> dict[str, np.ndarray]:
        """Graph inputs for ``crop`` (B, 3, h, w), h and w multiples of 8, with given or own statistics."""
        b, c = crop.shape[0], self.config.channels
        image = crop.detach().to("cpu", torch.float32).contiguous().numpy()
        if stats is None:
            zeros = np.zeros((b, c, 1, 1), np.float32)
            return {"image": image, "norm_mean": zeros, "norm_var": zeros, "use_norm_stats": np.array([False])}
        mean, var = (t.detach().to("cpu", torch.float32).reshape(b, c, 1, 1).contiguous().numpy() for t in stats)
        return {"image": image, "norm_mean": mean, "norm_var": var, "use_norm_stats": np.array([True])}

    def run_tile(self, crop: torch.Tensor, stats: NormStats | None = None) -> torch.Tensor:
        """Rain layer (B, 3, h, w) float32 CPU of ``crop`` (B, 3, h, w), h and w multiples of 8 (`inference.TileFn`)."""
        return torch.from_numpy(self.session.run(["rain"], self._feeds(crop, stats))[0])

    def pre_norm_query(self, crop: torch.Tensor) -> torch.Tensor:
        """Pre-norm query (B, C, h/8, w/8) of ``crop`` (B, 3, h, w), encoder only (`inference.QueryFn`)."""
        if self._encoder_session is not None:
            image = crop.detach().to("cpu", torch.float32).contiguous().numpy()
            return torch.from_numpy(self._encoder_session.run(["pre_norm_query"], {"image": image})[0])
        return torch.from_numpy(self.session.run(["pre_norm_query"], self._feeds(crop, None))[0])

    def _check_image(self, image: torch.Tensor) -> None:
        """MGIDNet's checks: (B, 3, H, W) float, at least two query pixels after padding."""
        ch = self.config.image_channels
        if not isinstance(image, torch.Tensor) or image.dim() != 4 or not image.is_floating_point() \
                or image.shape[1] != ch:
            shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
            raise ValueError(f"expected a float tensor (B, {ch}, H, W) in [-1, 1], got {shape}")
        problem = image_size_problem(*image.shape[-2:])
        if problem is not None:
            raise ValueError(problem)

    @torch.no_grad()
    def predict_rain(self, image: torch.Tensor, tile: int | None = None, overlap: int = DEFAULT_OVERLAP,
                     global_norm: bool = True) -> torch.Tensor:
        """The rain layer R (B, 3, H, W) of ``image`` (B, 3, H, W) in [-1, 1], as `mgid.derain.tiling.predict_rain`
        (same tiling rules and arguments; fp32 on the CPU), on ``image``'s device, in its dtype."""
        self._check_image(image)
        h, w = image.shape[-2:]
        x = image.detach().to("cpu", torch.float32)
        padded = pad_to_multiple(x, DOWNSAMPLE, self.config.pad_mode)
        if tile is not None and (h > tile or w > tile):
            tile, overlap = tile_geometry(tile, overlap)
            if padded.shape[-2] > tile or padded.shape[-1] > tile:
                rain = tiled_rain(padded, tile, overlap, self.run_tile, self.pre_norm_query if global_norm else None)
                return rain[..., :h, :w].to(image.device, image.dtype)
        return self.run_tile(padded)[..., :h, :w].to(image.device, image.dtype)

    def _predict(self, batch: torch.Tensor, tile: int | None, overlap: int) -> torch.Tensor:
        """One prediction of the rain layer (`Derainer._predict`): the session, tiled or whole."""
        return self.predict_rain(batch, tile, overlap)

    def _check_weights_finite(self) -> None:
        """Nothing to check before the run: an ONNX file's NaN weights show as NaN output, which the bands are
        checked for."""

    def _pad_mode(self) -> str:
        """The file's recorded ``pad_mode`` (`Derainer._pad_mode`)."""
        return self.config.pad_mode

    def _stream(self, source: PixelSource, tile: int, overlap: int, emit: RowsFn) -> None:
        """One tiled prediction streamed to ``emit`` (`Derainer._stream`): the session's tiles, blended as
        `tiled_rain` blends them."""
        stream_tiled_rain(source, tile, overlap, self.run_tile, self.pre_norm_query,
                          cropped_rows(emit, source.height, source.width))


def load_onnx_derainer(path: str | Path, tile: int | str | None = TILE_AUTO, overlap: int = DEFAULT_OVERLAP,
                       device: str | torch.device | None = None, precision: str = "auto",
                       channels_last: bool | None = None, threads: int | None = None,
                       self_ensemble: bool = False, max_memory: int | None = None) -> OnnxDerainer:
    """An `OnnxDerainer` of ONNX file ``path`` (``mgid derain --backend onnxruntime --weights model.onnx``).

    ``tile``/``overlap``/``max_memory``: default tiling, checked here (as `mgid.load_model`; ``"auto"`` plans with
    the fp32 memory measured for PyTorch, `mgid.derain.memory_budget`). ``device`` (None, ``auto`` or
    ``cpu``), ``precision`` (``auto`` or ``fp32``) and ``channels_last`` (None or False) are accepted so the
    command line can pass its options through; anything else raises ValueError, as onnxruntime runs fp32 on
    the CPU here. ``threads``: onnxruntime's intra-op threads (None: its default). ``self_ensemble``: the default
    of `Derainer.derain`'s option (mean over the 8 flips and quarter turns, 8x the time).
    Raises FileNotFoundError, `OnnxModelError` (a ValueError) or ModuleNotFoundError (``pip install onnxruntime``).
    """
    if device is not None and str(device) not in ("auto", "cpu"):
        raise ValueError(f"the onnxruntime backend runs on the CPU only; got --device {device} (use --backend torch "
                         f"for {device})")
    if precision not in ("auto", "fp32"):
        raise ValueError(f"the onnxruntime backend computes in fp32; got precision {precision!r} (use --backend torch "
                         f"for bf16)")
    if channels_last:
        raise ValueError("channels_last applies to the torch backend only")
    return OnnxDerainer(path, tile=tile, overlap=overlap, threads=threads, self_ensemble=self_ensemble,
                        max_memory=max_memory)

"""De-raining with onnxruntime: `OnnxDerainer`, the sibling of the PyTorch `mgid.derain.derainer.Derainer`.

    >>> from mgid.derain.onnx_backend import load_onnx_derainer
    >>> derainer = load_onnx_derainer("mgid.onnx", tile=512)   # by `mgid export --tiling-inputs --onnx mgid.onnx`
    >>> clean = derainer.derain(rgb)                            # HxWx3 uint8 RGB in and out, as Derainer

Both derainers are `mgid.derain.derainer.BaseDerainer`s: `derain`, `rain_layer` and `derain_with_rain`, the tiling
settings and the memory budget are the base's; only the network pass differs, and the results equal the PyTorch
`Derainer`'s in fp32 to float rounding (~1e-6 on the [-1, 1] scale). The file must be the tiling graph of
`mgid.derain.onnx_export` (``--tiling-inputs``), which takes images (B, 3, H, W) with H and W multiples of 8: images
are padded here with the model's ``pad_mode`` and cropped back, as `MGIDNet.forward` does. Tiles are blended by
`mgid.derain.tiling.tiled_rain` / `mgid.derain.tiling.stream_tiled_rain` themselves, with the whole image's
instance-norm statistics (from the graph's ``pre_norm_query`` output, fed back through its ``norm_mean`` /
``norm_var`` inputs), so tiled results match the PyTorch path's tiled results.

Runs on the CPU (``CPUExecutionProvider``) in float32: ``device`` is ``cpu``, ``precision`` ``fp32``,
``channels_last`` False; tensors on another device are copied to the CPU and the result copied back.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mgid.derain.derainer import BaseDerainer
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
from mgid.errors import InputError, MgidError, MissingDependencyError
from mgid.models import DOWNSAMPLE, ModelConfig, NormStats, image_size_problem, pad_to_multiple
from mgid.precision import Arithmetic

_NO_ORT = "the onnxruntime backend needs onnxruntime, which is not installed: pip install onnxruntime"


class OnnxModelError(MgidError, ValueError):
    """The file is not an ONNX model, or not one written by `mgid.derain.onnx_export`."""


def import_onnxruntime() -> Any:
    """The ``onnxruntime`` module.

    Returns:
        The module.

    Raises:
        mgid.errors.MissingDependencyError: it is not installed (a ModuleNotFoundError saying
            ``pip install onnxruntime``).
    """
    try:
        import onnxruntime
    except ImportError as err:
        raise MissingDependencyError(_NO_ORT) from err
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
    """An onnxruntime session of an ONNX file, checked to be the tiling graph of `mgid.derain.onnx_export`.

    Args:
        path: the ``.onnx`` file (``mgid export --tiling-inputs``).
        threads: intra-op threads (None, the default: onnxruntime's, one per physical core).

    Returns:
        An ``onnxruntime.InferenceSession`` on the ``CPUExecutionProvider``.

    Raises:
        FileNotFoundError: no such file.
        OnnxModelError: not an ONNX model, not an mgid export, an image filter (the default export, refused with a
            message saying so) or another graph format.
        InputError: ``threads`` < 1.
        mgid.errors.MissingDependencyError: onnxruntime is not installed.
    """
    ort = import_onnxruntime()
    path = Path(path).expanduser()
    _check_file(path)
    options = ort.SessionOptions()
    if threads is not None:
        if int(threads) < 1:
            raise InputError(f"threads must be >= 1 (or None for onnxruntime's default), got {threads}")
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
    """A session of the file's subgraph ``image -> pre_norm_query`` (the encoder alone), which the statistics pass
    of tiled inference runs (why: docs/DERAIN.md, "Design notes").

    Args:
        path: the ``.onnx`` file.
        threads: intra-op threads (None: onnxruntime's default).

    Returns:
        The session, or None where the ``onnx`` package is not installed (the full graph is used then: the same
        result, slower).
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


class OnnxDerainer(BaseDerainer):
    """A derainer whose network pass is an onnxruntime session of a tiling graph of `mgid.derain.onnx_export`.

    The sibling of the PyTorch `mgid.derain.derainer.Derainer`; its calls are `BaseDerainer`'s. Runs on the CPU in
    fp32; ``"auto"`` tiling plans with the fp32 memory measured for PyTorch (`mgid.derain.memory_budget`).

    Args:
        path: the ``.onnx`` file (``mgid export --tiling-inputs --onnx FILE``).
        tile: as `BaseDerainer`.
        overlap: as `BaseDerainer`.
        threads: onnxruntime's intra-op threads (None, the default: its own choice).
        self_ensemble: as `BaseDerainer`.
        max_memory: as `BaseDerainer`.

    Raises:
        FileNotFoundError: no such file.
        OnnxModelError: not an mgid tiling graph, or one without a readable ``mgid.model_config``.
        mgid.errors.MissingDependencyError: onnxruntime is not installed.
        InputError: ``threads`` < 1, or as `BaseDerainer`.
        TypeError: as `BaseDerainer`.

    Attributes:
        session: the ``onnxruntime.InferenceSession``.
        metadata: the file's metadata_props (``mgid.version``, ``mgid.weights_sha256``, ...).
        net: None: there is no PyTorch network.
        config: the `ModelConfig` recorded in the file (its ``pad_mode`` pads images to multiples of 8).
        weights: the ONNX file.
        The other attributes of `BaseDerainer`: ``device`` is the CPU, ``precision`` ``"fp32"``, ``channels_last``
        False.
    """

    net: None = None

    def __init__(self, path: str | Path, tile: int | str | None = TILE_AUTO, overlap: int = DEFAULT_OVERLAP,
                 threads: int | None = None, self_ensemble: bool = False, max_memory: int | None = None) -> None:
        session = open_session(path, threads)
        metadata: dict[str, str] = dict(session.get_modelmeta().custom_metadata_map)
        try:
            config = ModelConfig.from_dict(json.loads(metadata["mgid.model_config"]))
        except (KeyError, TypeError, ValueError) as err:
            raise OnnxModelError(f"{path} has no readable mgid.model_config metadata ({err}); re-export it") from err
        arithmetic = Arithmetic("fp32", False, "onnxruntime CPUExecutionProvider computes in fp32", "inference")
        super().__init__(config, torch.device("cpu"), arithmetic, tile=tile, overlap=overlap,
                         weights=Path(path).expanduser(), self_ensemble=self_ensemble, max_memory=max_memory)
        self.session, self.metadata = session, metadata
        self._encoder_session = _encoder_session(self.weights, threads)

    # ------------------------------------------------------------------------------------- the graph

    def _feeds(self, crop: torch.Tensor, stats: NormStats | None) -> dict[str, np.ndarray]:
        """The graph's inputs for ``crop`` (B, 3, h, w), h and w multiples of 8, with the statistics ``stats``
        (None: the crop's own)."""
        b, c = crop.shape[0], self.config.channels
        image = crop.detach().to("cpu", torch.float32).contiguous().numpy()
        if stats is None:
            zeros = np.zeros((b, c, 1, 1), np.float32)
            return {"image": image, "norm_mean": zeros, "norm_var": zeros, "use_norm_stats": np.array([False])}
        mean, var = (t.detach().to("cpu", torch.float32).reshape(b, c, 1, 1).contiguous().numpy() for t in stats)
        return {"image": image, "norm_mean": mean, "norm_var": var, "use_norm_stats": np.array([True])}

    def run_tile(self, crop: torch.Tensor, stats: NormStats | None = None) -> torch.Tensor:
        """The rain layer of one crop (a `mgid.derain.tiling.TileFn`).

        Args:
            crop: float (B, 3, h, w) in [-1, 1], h and w multiples of 8.
            stats: the instance-norm statistics to normalise with, mean and variance (B, C, 1, 1) (None, the
                default: the crop's own).

        Returns:
            The rain layer (B, 3, h, w), float32 on the CPU.
        """
        return torch.from_numpy(self.session.run(["rain"], self._feeds(crop, stats))[0])

    def pre_norm_query(self, crop: torch.Tensor) -> torch.Tensor:
        """The pre-norm query of one crop, from the encoder alone where it was extracted (a
        `mgid.derain.tiling.QueryFn`).

        Args:
            crop: float (B, 3, h, w) in [-1, 1], h and w multiples of 8.

        Returns:
            float32 (B, C, h/8, w/8) on the CPU.
        """
        if self._encoder_session is not None:
            image = crop.detach().to("cpu", torch.float32).contiguous().numpy()
            return torch.from_numpy(self._encoder_session.run(["pre_norm_query"], {"image": image})[0])
        return torch.from_numpy(self.session.run(["pre_norm_query"], self._feeds(crop, None))[0])

    def _check_image(self, image: torch.Tensor) -> None:
        """MGIDNet's checks: (B, 3, H, W) float, at least two query pixels after padding; InputError otherwise."""
        ch = self.config.image_channels
        if not isinstance(image, torch.Tensor) or image.dim() != 4 or not image.is_floating_point() \
                or image.shape[1] != ch:
            shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
            raise InputError(f"expected a float tensor (B, {ch}, H, W) in [-1, 1], got {shape}")
        problem = image_size_problem(*image.shape[-2:])
        if problem is not None:
            raise InputError(problem)

    @torch.no_grad()
    def predict_rain(self, image: torch.Tensor, tile: int | None = None, overlap: int = DEFAULT_OVERLAP,
                     global_norm: bool = True) -> torch.Tensor:
        """The rain layer R of images, as `mgid.derain.tiling.predict_rain` computes it (fp32 on the CPU).

        Args:
            image: float (B, 3, H, W) in [-1, 1], any H and W (at least two query pixels after padding).
            tile: the tile size in pixels (None, the default: the whole image, as where one tile covers it).
            overlap: the tile overlap in pixels. Default `DEFAULT_OVERLAP`.
            global_norm: normalise the tiles with the whole image's statistics (True, the default) or each with
                its own.

        Returns:
            R (B, 3, H, W) on ``image``'s device, in its dtype.

        Raises:
            InputError: a bad image or tiling.
        """
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
        """`BaseDerainer._predict`: the session, tiled or whole (`predict_rain`)."""
        return self.predict_rain(batch, tile, overlap)

    def _stream(self, source: PixelSource, tile: int, overlap: int, emit: RowsFn) -> None:
        """`BaseDerainer._stream`: the session's tiles, blended by `mgid.derain.tiling.stream_tiled_rain`."""
        stream_tiled_rain(source, tile, overlap, self.run_tile, self.pre_norm_query,
                          cropped_rows(emit, source.height, source.width))

    def _check_weights_finite(self) -> None:
        """`BaseDerainer._check_weights_finite`: nothing to check before the run (an ONNX file's NaN weights show as
        NaN output, which is checked)."""


def load_onnx_derainer(path: str | Path, tile: int | str | None = TILE_AUTO, overlap: int = DEFAULT_OVERLAP,
                       device: str | torch.device | None = None, precision: str = "auto",
                       channels_last: bool | None = None, threads: int | None = None,
                       self_ensemble: bool = False, max_memory: int | None = None) -> OnnxDerainer:
    """An `OnnxDerainer` of an ONNX file, taking the options of `mgid.derain.derainer.load_model` (what
    ``mgid derain --backend onnxruntime --weights model.onnx`` calls).

    Args:
        path: the ``.onnx`` file (``mgid export --tiling-inputs --onnx FILE``).
        tile: the default tiling: `TILE_AUTO` (the default), None (whole images) or a tile size in pixels.
        overlap: the default tile overlap in pixels. Default `DEFAULT_OVERLAP`.
        device: None (the default), ``"auto"`` or ``"cpu"``: onnxruntime runs on the CPU here.
        precision: ``"auto"`` (the default) or ``"fp32"``: onnxruntime computes in fp32 here.
        channels_last: None (the default) or False.
        threads: onnxruntime's intra-op threads (None, the default: its own choice).
        self_ensemble: the default of `BaseDerainer.derain`'s option. Default False.
        max_memory: the budget of `TILE_AUTO` in bytes (None, the default: a share of the available memory).

    Returns:
        The `OnnxDerainer`.

    Raises:
        InputError: another ``device``, ``precision`` or ``channels_last``, or a bad tiling or ``max_memory``.
        FileNotFoundError: no such file.
        OnnxModelError: not an mgid tiling graph (a ValueError).
        mgid.errors.MissingDependencyError: onnxruntime is not installed (``pip install onnxruntime``).
    """
    if device is not None and str(device) not in ("auto", "cpu"):
        raise InputError(f"the onnxruntime backend runs on the CPU only; got --device {device} (use --backend torch "
                         f"for {device})")
    if precision not in ("auto", "fp32"):
        raise InputError(f"the onnxruntime backend computes in fp32; got precision {precision!r} (use --backend torch "
                         f"for bf16)")
    if channels_last:
        raise InputError("channels_last applies to the torch backend only")
    return OnnxDerainer(path, tile=tile, overlap=overlap, threads=threads, self_ensemble=self_ensemble,
                        max_memory=max_memory)

"""The Python API: ``mgid.load_model()`` -> a `Derainer` that de-rains NumPy images or tensors.

    >>> import mgid
    >>> derainer = mgid.load_model()                 # shipped weights, CUDA when available
    >>> clean = derainer.derain(rgb)                 # HxWx3 uint8 RGB in, HxWx3 uint8 RGB out
    >>> clean = derainer.derain(rgb, tile=512)       # 512x512 tiles (default "auto": tiles only when the image
    >>>                                              # would not fit the memory, see mgid.derain.memory_budget)
    >>> clean = derainer.derain(rgb, tile=None)      # the whole image, however large
    >>> mgid.load_model(precision="fp32")            # exact fp32 (default auto: bf16 on CPUs with bf16 units)
    >>> clean = derainer.derain(rgb, self_ensemble=True)  # mean over the 8 flips/turns: 8x the time

Classes: `BaseDerainer` (abstract) holds what every derainer shares (settings, memory budget, the calls
``derain``/``rain_layer``/``derain_with_rain``); `Derainer` runs the network with PyTorch, and its sibling
`mgid.derain.onnx_backend.OnnxDerainer` with onnxruntime.

A tiling (``tile=``) is `TILE_AUTO` (``"auto"``: from the memory budget), None (whole images) or a tile size in
pixels.

Weights are mgid checkpoints (``NAME.safetensors`` + ``NAME.json``, see `mgid.checkpoint`, which
stores and reads the files; the network is built here, `load_network`); nothing is unpickled.
"""
from __future__ import annotations

import abc
import enum
import functools
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import TypeVar, overload

import numpy as np
import torch

from mgid.checkpoint import (
    MODEL_SUFFIX,
    PRETRAINED_CONFIG,
    PRETRAINED_WEIGHTS,
    TRAINING_CHECKPOINT_DIR,
    CheckpointError,
    check_pretrained_folder,
    check_safetensors_file,
    checkpoint_paths,
    is_pretrained_weights,
    locate_checkpoint,
    pretrained_paths,
    read_weights,
)
from mgid.data.imageio import to_pixels, to_tensor
from mgid.derain.memory_budget import (
    MemoryBudget,
    MemoryBudgetError,
    MemoryCosts,
    OutOfMemoryAtSmallestTile,
    choose_tile,
    is_out_of_memory,
    load_costs,
    mmap_large_buffers,
    plan_budget,
    process_memory_limit,
    release_memory,
    retry_tile,
    smallest_tile,
)
from mgid.derain.self_ensemble import dihedral_mean
from mgid.derain.tiling import (
    DEFAULT_OVERLAP,
    TILE_AUTO,
    PixelSource,
    RowsFn,
    predict_rain,
    stream_rain,
    tile_geometry,
    tiling_of,
)
from mgid.devices import resolve_device
from mgid.errors import InputError, MgidError
from mgid.models import DOWNSAMPLE, MGIDNet, ModelConfig
from mgid.models.inference_graph import InferenceGraph
from mgid.precision import Arithmetic, resolve_arithmetic, resolve_precision

#: Folder of the weights shipped inside the package.
WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "weights"
#: The shipped weights (trained on the embedded synthetic time-lapse set), with their JSON beside.
DEFAULT_WEIGHTS = checkpoint_paths(WEIGHTS_DIR, "mgid_embedded")["model"]

_NO_WEIGHTS = ("no shipped weights at {path}: this copy of mgid was installed without them. Either reinstall a "
               "release that includes mgid/weights/mgid_embedded.safetensors (+ .json), or train your own "
               "(`mgid train --out runs/mine`, or on your data `mgid train --data DIR --out runs/mine`) and pass "
               "the checkpoint: mgid.load_model('runs/mine/checkpoints/last.safetensors') / "
               "`--weights runs/mine/checkpoints/last.safetensors`")


def resolve_weights(weights: str | Path | None = None) -> Path:
    """The ``.safetensors`` file of ``weights``, checked to be a complete safetensors file with its JSON.

    Args:
        weights: None (the shipped weights, `DEFAULT_WEIGHTS`); a checkpoint folder (``OUT`` or
            ``OUT/checkpoints`` of ``mgid train``: its ``last.safetensors``); a pretrained folder (``config.json`` +
            ``model.safetensors``, `mgid.models.pretrained.save_pretrained`: its ``model.safetensors``);
            ``NAME.safetensors``; or ``NAME.json`` (its ``NAME.safetensors``).

    Returns:
        The weights file.

    Raises:
        FileNotFoundError: missing files (the message says how to get weights; for a pretrained folder, it names
            the missing one).
        mgid.checkpoint.CheckpointError: pickled, truncated or otherwise not safetensors.
    """
    if weights is None:
        if not DEFAULT_WEIGHTS.is_file():
            raise FileNotFoundError(_NO_WEIGHTS.format(path=DEFAULT_WEIGHTS))
        path = DEFAULT_WEIGHTS
    else:
        path = Path(weights).expanduser()
        if path.is_dir():
            candidates = [checkpoint_paths(folder)["model"] for folder in (path, path / TRAINING_CHECKPOINT_DIR)]
            found = next((c for c in candidates if c.is_file()), None)
            if found is None and any(p.exists() for p in pretrained_paths(path).values()):
                found = check_pretrained_folder(path)["model"]  # names the missing file of the pair
            if found is None:
                raise FileNotFoundError(f"{candidates[0].parent} is a folder without {candidates[0].name} (nor "
                                        f"{TRAINING_CHECKPOINT_DIR}/{candidates[1].name}, nor {PRETRAINED_CONFIG} + "
                                        f"{PRETRAINED_WEIGHTS}); pass the {MODEL_SUFFIX} file of "
                                        f"the checkpoint to use, or a folder written by mgid.save_pretrained")
            path = found
        else:
            try:
                path = checkpoint_paths(*locate_checkpoint(path))["model"]  # NAME.json -> NAME.safetensors
            except CheckpointError:
                pass  # refused below, after the pickle check (which says more)
        if not path.exists():
            raise FileNotFoundError(f"weights file not found: {path} (pass a NAME.safetensors written by "
                                    f"`mgid train`, with NAME.json beside it)")
    check_safetensors_file(path)  # pickles, empty and truncated files get their own messages
    if is_pretrained_weights(path):
        return path
    meta = checkpoint_paths(*locate_checkpoint(path))["meta"]  # refuses names other than NAME.safetensors
    if not meta.is_file():
        raise FileNotFoundError(f"{path} has no {meta.name} beside it: mgid needs the checkpoint's JSON record "
                                f"(model config and hashes) written with it by `mgid train` / save_checkpoint")
    return path


def name_weights(weights: Sequence[str | Path] | None = None, names: Sequence[str] | None = None) -> dict[str, str]:
    """The weights of commands that compare several (``--weights W ... --names N ...``), named.

    Args:
        weights: weights files (None or empty: the shipped weights).
        names: one name per file (None or empty: "shipped weights" for the shipped file, else each file's stem).

    Returns:
        ``{name: weights file}``, in the order of ``weights``.

    Raises:
        InputError: the counts differ, or two names are equal.
    """
    files = [str(w) for w in weights] if weights else [str(DEFAULT_WEIGHTS)]
    labels = list(names) if names else [
        "shipped weights" if Path(w).resolve() == DEFAULT_WEIGHTS.resolve() else Path(w).stem for w in files]
    if len(labels) != len(files):
        raise InputError(f"--names gives {len(labels)} names for {len(files)} --weights files; give one per file")
    if len(set(labels)) != len(labels):
        raise InputError(f"two models share a name ({', '.join(labels)}); name them apart with --names")
    return dict(zip(labels, files))


def check_weights(config: ModelConfig, state: dict[str, torch.Tensor], source: str | Path) -> None:
    """Check that ``state`` is exactly the state dict of ``MGIDNet(config)``, before any network is built.

    The expected shapes come from the network built on the ``meta`` device: nothing is allocated.

    Args:
        config: the network of the weights' record.
        state: the weights.
        source: the weights file, for the messages.

    Raises:
        mgid.checkpoint.CheckpointError: names missing or unexpected, a shape differs, or a floating-point tensor
            holds NaN or infinite values.
    """
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in MGIDNet(config).state_dict().items()}
    missing, extra = sorted(expected.keys() - state.keys()), sorted(state.keys() - expected.keys())
    if missing or extra:
        raise CheckpointError(f"{source}: the weights do not fit the network of its record ({config}): "
                              + (f"missing {', '.join(missing[:4])}" if missing else "")
                              + ("; " if missing and extra else "")
                              + (f"unexpected {', '.join(extra[:4])}" if extra else ""))
    for key, shape in expected.items():
        if tuple(state[key].shape) != shape:
            raise CheckpointError(f"{source}: {key} has shape {tuple(state[key].shape)} but the record's network "
                                  f"(channels={config.channels}, memory_items={config.memory_items}) needs {shape}; "
                                  f"the record and the weights do not belong together")
    for key, tensor in state.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise CheckpointError(f"{source}: {key} holds NaN or infinite values; these weights are broken (a "
                                  f"training run that diverged?): use an earlier checkpoint or retrain")


def load_network(path: str | Path, device: str | torch.device = "cpu") -> MGIDNet:
    """The network of a weights file, verified against its record's hash and shapes (`check_weights`) first.

    Args:
        path: a checkpoint's ``NAME.safetensors`` or ``NAME.json`` (the network of the JSON's ``config.model``),
            or a pretrained folder's ``model.safetensors`` (the network of the ``config.json`` beside it,
            `mgid.checkpoint.read_pretrained`).
        device: where to put it. Default ``"cpu"``.

    Returns:
        An `MGIDNet` in eval mode on ``device``.

    Raises:
        mgid.checkpoint.CheckpointError: no or an invalid model config, or weights that do not fit it.
        FileNotFoundError: a missing file.
    """
    state, model_cfg, paths = read_weights(path, device="cpu")
    section = "its model config" if is_pretrained_weights(path) else "config.model"
    if model_cfg is None:
        raise CheckpointError(f"{paths['meta']} has no config.model section; cannot build the network")
    try:
        config = ModelConfig.from_dict(model_cfg)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{paths['meta']}: {section} is not a valid network ({exc})") from exc
    check_weights(config, state, paths["model"])
    net = MGIDNet(config)
    net.load_state_dict(state)
    return net.to(resolve_device(device)).eval()


class NonFiniteOutputError(MgidError, RuntimeError):
    """The network gave NaN or infinite values; the message names the weights."""


#: Where a derainer reports that it retries in smaller tiles after running out of memory (`retry_notices`).
_RETRY_NOTICE: ContextVar[Callable[[str], None] | None] = ContextVar("mgid_retry_notice", default=None)


@contextmanager
def retry_notices(callback: Callable[[str], None] | None) -> Iterator[None]:
    """Within the block, a derainer (`BaseDerainer`) that runs out of memory and retries in smaller tiles calls
    ``callback`` with one line (e.g. "out of memory at tile 2048; retrying at tile 1024"), once per image; outside
    any such block it issues a ``RuntimeWarning``. Kept in a context variable: each thread has its own.

    Args:
        callback: called with the line (None: the warning).

    Yields:
        Nothing; the callback applies until the block ends.
    """
    token = _RETRY_NOTICE.set(callback)
    try:
        yield
    finally:
        _RETRY_NOTICE.reset(token)


def _notify_retry(message: str) -> None:
    callback = _RETRY_NOTICE.get()
    if callback is None:
        warnings.warn(message, RuntimeWarning, stacklevel=4)
    else:
        callback(message)


_T = TypeVar("_T")


class _Unset(enum.Enum):
    """The type of `_UNSET`."""

    UNSET = "unset"

    def __repr__(self) -> str:
        return "<the derainer's own>"


#: Default of the per-call ``tile`` of `BaseDerainer.derain`, `BaseDerainer.rain_layer` and
#: `BaseDerainer.derain_with_rain`: the option was left out, so the derainer's `BaseDerainer.tile` applies. It is not a
#: tiling: a tiling is `TILE_AUTO`, None (whole images) or a tile size.
_UNSET = _Unset.UNSET


def _tile_text(tile: int | None) -> str:
    return "the whole image" if tile is None else str(tile)


class BaseDerainer(abc.ABC):
    """What every derainer shares, whatever runs the network: settings, memory budget and the `derain`,
    `rain_layer` and `derain_with_rain` machinery.

    The runtime is a subclass's: `Derainer` (PyTorch) and `mgid.derain.onnx_backend.OnnxDerainer` (onnxruntime) are
    siblings, each calling this ``__init__`` and implementing `_predict`, `_stream` and `_check_weights_finite`.

    A tiling (``tile``, here and per call) has one of three values: `TILE_AUTO` (``"auto"``): the whole image when
    it fits the memory budget, else the largest tiles that do (`auto_tile`); None: the whole image; an int: tiles
    of that many pixels (rounded down to a multiple of 8, at least `mgid.derain.tiling.MIN_TILE`;
    `mgid.derain.tiling.tile_geometry`).

    NumPy images in tiles (without the self-ensemble) are streamed (`mgid.derain.tiling.stream_rain`): no float
    buffer of the image's size is made; the results are bit for bit those of the float path. An out-of-memory error
    while predicting is retried in smaller tiles: a whole image in the largest tiles the budget allows, a tile at
    half its size, down to `mgid.derain.memory_budget.smallest_tile`; the first retry is reported once per image
    (`retry_notices`).

    Args:
        config: the network's configuration (its ``channels`` scale the memory costs, its ``pad_mode`` pads
            images to multiples of 8).
        device: where the network runs.
        arithmetic: the resolved arithmetic (`mgid.precision.Arithmetic`).
        tile: the default tiling: `TILE_AUTO`, None or a size in pixels. Default `TILE_AUTO`.
        overlap: the default overlap of neighbouring tiles in pixels (rounded up to a multiple of 8). Default
            `DEFAULT_OVERLAP`.
        weights: the file the weights came from (None: a network in memory).
        self_ensemble: the default of the per-call option (`mgid.derain.self_ensemble`: 8 network passes).
            Default False.
        max_memory: the budget of `TILE_AUTO` in bytes (None, the default: `mgid.derain.memory_budget.PLANNED_SHARE`
            of the memory available when each image starts; `mgid.derain.memory_budget.plan_budget`).

    Raises:
        InputError: ``tile`` is not a tiling valid with ``overlap`` (`check_tile`), or ``max_memory`` is not a
            positive int.
        TypeError: ``self_ensemble`` is not a bool.

    Attributes:
        config: as given.
        device: as given.
        arithmetic: as given.
        precision: ``"fp32"`` or ``"bf16"`` (``arithmetic.precision``).
        channels_last: ``arithmetic.channels_last``.
        tile: the default tiling.
        overlap: the default overlap.
        weights: as given.
        max_memory: as given.
        self_ensemble: the default of the per-call option.
        last_tile: the tiling the last prediction finished with (None: whole), after any out-of-memory retries.
    """

    last_tile: int | None = None

    def __init__(self, config: ModelConfig, device: torch.device, arithmetic: Arithmetic,
                 tile: int | str | None = TILE_AUTO, overlap: int = DEFAULT_OVERLAP, weights: Path | None = None,
                 self_ensemble: bool = False, max_memory: int | None = None) -> None:
        self.config = config
        self.device = device
        self.arithmetic = arithmetic
        self.precision, self.channels_last = arithmetic.precision, arithmetic.channels_last
        self.tile, self.overlap, self.weights = check_tile(tile, overlap), overlap, weights
        self.max_memory = check_max_memory(max_memory)
        self.self_ensemble = check_self_ensemble(self_ensemble)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(weights={str(self.weights) if self.weights else None!r}, "
                f"device={str(self.device)!r}, tile={self.tile}, overlap={self.overlap}, "
                f"precision={self.precision!r}, channels_last={self.channels_last}, "
                f"self_ensemble={self.self_ensemble})")

    # ------------------------------------------------------------------------------------- the runtime's

    @abc.abstractmethod
    def _predict(self, batch: torch.Tensor, tile: int | None, overlap: int) -> torch.Tensor:
        """One prediction of the rain layer, tiled or whole (as `mgid.derain.tiling.predict_rain`).

        Args:
            batch: float images (B, 3, H, W) in [-1, 1], any H and W.
            tile: the tile size (None: whole).
            overlap: the tile overlap in pixels.

        Returns:
            The rain layer (B, 3, H, W), float, on ``batch``'s device.
        """

    @abc.abstractmethod
    def _stream(self, source: PixelSource, tile: int, overlap: int, emit: RowsFn) -> None:
        """One tiled prediction of the rain layer of ``source``, its final rows handed to ``emit`` as they come (as
        `mgid.derain.tiling.stream_rain`).

        Args:
            source: the image, padded with this network's ``pad_mode``.
            tile: the tile size, as `mgid.derain.tiling.tiling_of` returns it.
            overlap: the tile overlap, likewise.
            emit: receives rows ``r0:r1`` of the rain layer, (1, 3, r1 - r0, W) float32, top to bottom.
        """

    @abc.abstractmethod
    def _check_weights_finite(self) -> None:
        """Raise `NonFiniteOutputError` (`_non_finite`) where the weights are known to give NaN, before any
        prediction; a runtime that cannot tell returns (its NaN output is caught afterwards)."""

    # ------------------------------------------------------------------------------------- memory

    @functools.cached_property
    def memory_costs(self) -> MemoryCosts:
        """The measured memory of this arithmetic and network width (`mgid.derain.memory_budget.load_costs`)."""
        return load_costs(self.precision, self.channels_last, self.config.channels)

    def memory_plan(self) -> MemoryBudget:
        """The budget ``tile="auto"`` plans with now.

        Returns:
            `mgid.derain.memory_budget.plan_budget` of this process's binding limit
            (`mgid.derain.memory_budget.process_memory_limit`) and `max_memory`.
        """
        return plan_budget(process_memory_limit(self.device), self.max_memory)

    def memory_budget(self) -> float:
        """Bytes ``tile="auto"`` plans with now (`memory_plan`'s number).

        Returns:
            Bytes.
        """
        return self.memory_plan().bytes

    def describe_tiling(self) -> str:
        """How the default tiling is chosen, for messages.

        Returns:
            The tile, or auto's budget (naming the limit that bounds it) and its numbers' source.
        """
        if self.tile != TILE_AUTO:
            return "whole images" if self.tile is None else f"{self.tile}-pixel tiles"
        return (f"tiles only where needed, from a budget of {self.memory_plan().description}; "
                f"{self.memory_costs.bytes_per_pixel:.0f} bytes per pixel measured by {self.memory_costs.source}")

    def auto_tile(self, batch: int, height: int, width: int, overlap: int | None = None,
                  held_bytes: int = 0) -> int | None:
        """The tile of ``tile="auto"`` for ``batch`` images of ``height`` x ``width``.

        Args:
            batch: images in the batch.
            height: their height in pixels.
            width: their width in pixels.
            overlap: tile overlap in pixels (None: the derainer's `overlap`).
            held_bytes: bytes of these images' buffers already allocated (the costs count them; they are added
                back to the budget, which the allocation lowered).

        Returns:
            None (whole) when they fit the budget, else the largest fitting size.

        Raises:
            mgid.derain.memory_budget.MemoryBudgetError: not even the smallest tiles fit.
        """
        hp, wp = -(-height // DOWNSAMPLE) * DOWNSAMPLE, -(-width // DOWNSAMPLE) * DOWNSAMPLE
        o = self.overlap if overlap is None else overlap
        plan = self.memory_plan()
        return choose_tile(batch * hp * wp, batch, hp, wp, plan.bytes + held_bytes, self.memory_costs, o,
                           plan.description)

    # ------------------------------------------------------------------------------------- one prediction

    def _predict_once(self, batch: torch.Tensor, tile: int | None, overlap: int, ensemble: bool) -> torch.Tensor:
        """One attempt at the rain layer (B, 3, H, W): tiled or whole, with the self-ensemble or without."""
        if ensemble:  # around the whole (tiled) prediction: each turned image is padded and tiled in its own frame
            return dihedral_mean(lambda x: self._predict(x, tile, overlap), batch)
        return self._predict(batch, tile, overlap)

    def _retry_size(self, shape: tuple[int, int, int], failed: int | None, overlap: int, held: int) -> int | None:
        """The tile to retry with after ``failed`` ran out of memory on images of ``shape`` (B, H, W) (None: none is
        left to try); ``held``: bytes of the image's buffers allocated for this call (`auto_tile`'s ``held_bytes``)."""
        b, h, w = shape
        side = max(-(-h // DOWNSAMPLE), -(-w // DOWNSAMPLE)) * DOWNSAMPLE
        if failed is not None and failed < side:
            return retry_tile(failed, overlap)
        floor = smallest_tile(overlap)
        if side <= floor:
            return None  # the whole image is no larger than the smallest tile
        planned = self.auto_tile(b, h, w, overlap, held)  # MemoryBudgetError: not even the smallest tiles fit
        return planned if planned is not None and planned < side else max(side // 2 // 8 * 8, floor)

    def _tiling(self, shape: tuple[int, int, int], tile: int | str | None | _Unset,
                overlap: int | None) -> tuple[int | None, int]:
        """(tile, overlap) of a call on images of ``shape`` (B, H, W): the per-call options, the derainer's where
        left out (``tile`` `_UNSET`, ``overlap`` None), `TILE_AUTO` planned (`auto_tile`)."""
        o = self.overlap if overlap is None else overlap
        t = self.tile if tile is _UNSET else check_tile(tile, o)
        if t == TILE_AUTO:
            t = self.auto_tile(*shape, o)
        return t, o

    def _retrying(self, attempt: Callable[[int | None], _T], shape: tuple[int, int, int], tile: int | None,
                  overlap: int, held: int) -> _T:
        """``attempt(tile)``, its out-of-memory errors retried in smaller tiles (see the class doc); sets `last_tile`.

        Args:
            attempt: one prediction at a tiling (None: whole).
            shape: (B, H, W) of the images.
            tile: the first tiling (None: whole).
            overlap: the tile overlap in pixels.
            held: bytes allocated for this call before it (`auto_tile`'s ``held_bytes``).

        Returns:
            What ``attempt`` returned.

        Raises:
            mgid.derain.memory_budget.OutOfMemoryAtSmallestTile: the smallest tile ran out of memory too.
            mgid.derain.memory_budget.MemoryBudgetError: a retry's plan found not even the smallest tiles fit.
        """
        t, o = tile, overlap
        tried: list[int | None] = []
        while True:
            tried.append(t)
            try:
                result = attempt(t)
                break
            except (RuntimeError, MemoryError) as exc:
                if isinstance(exc, MemoryBudgetError) or not is_out_of_memory(exc):
                    raise
            # Out of the except block the traceback, and with it the failed attempt's tensors, is gone.
            release_memory(self.device)
            nxt = self._retry_size(shape, t, o, held)
            if nxt is None:
                raise OutOfMemoryAtSmallestTile(_exhausted(tried, o), tuple(tried))
            if len(tried) == 1:
                _notify_retry(f"out of memory {'on' if t is None else 'at tile'} {_tile_text(t)}; retrying at tile "
                              f"{nxt} (halving down to {smallest_tile(o)} pixels if needed)")
            t = nxt
        self.last_tile = t
        return result

    def _non_finite(self) -> NonFiniteOutputError:
        return NonFiniteOutputError(
            f"the network gave NaN or infinite values with the weights {self.weights or '(a network in memory)'} "
            f"({self.arithmetic.precision}): they are broken, or overflow in this arithmetic"
            + (" (try --precision fp32)" if self.precision != "fp32" else "")
            + "; nothing was written for this image")

    def _rain(self, batch: torch.Tensor, tile: int | None, overlap: int, self_ensemble: bool | None,
              held: int = 0) -> torch.Tensor:
        """The rain layer (B, 3, H, W) of a float batch at the tiling of `_tiling`; out-of-memory errors retried in
        smaller tiles (see the class doc). ``held``: bytes allocated for this call before it (the results)."""
        ensemble = self.self_ensemble if self_ensemble is None else check_self_ensemble(self_ensemble)
        self._check_weights_finite()
        b, _, h, w = batch.shape
        rain = self._retrying(lambda t: self._predict_once(batch, t, overlap, ensemble), (b, h, w), tile, overlap,
                              held)
        if not _all_finite(rain):
            raise self._non_finite()
        return rain

    def _pixels(self, image: np.ndarray, tile: int | None, overlap: int, self_ensemble: bool | None,
                clean: np.ndarray | None, rain: np.ndarray | None) -> None:
        """Fill ``clean`` (the de-rained image, in ``image``'s dtype) and/or ``rain`` (the rain layer in uint8 pixel
        units) of the HxWx3 ``image`` at the tiling of `_tiling`, out-of-memory errors retried in smaller tiles.

        Tiled (without the self-ensemble) the prediction is streamed (`_stream`): rows are converted as they become
        final, each band checked for NaN first; whole (or with the self-ensemble) the float image and its rain layer
        are made, as in `derain` of a tensor. The pixels are those of converting the float results of `derain` of
        ``to_tensor(image)``, bit for bit.
        """
        ensemble = self.self_ensemble if self_ensemble is None else check_self_ensemble(self_ensemble)
        self._check_weights_finite()
        if self.device.type == "cpu" and process_memory_limit("cpu").is_hard:
            mmap_large_buffers()  # a finished tile's memory goes back to the system (see MMAP_THRESHOLD)
        source = PixelSource(image, self.config.pad_mode)
        h, w = source.height, source.width
        held = sum(a.nbytes for a in (clean, rain) if a is not None)

        def emit(r0: int, r1: int, layer: torch.Tensor) -> None:  # rows r0:r1 of the rain layer, (1, 3, r1 - r0, W)
            if not _all_finite(layer):
                raise self._non_finite()
            for a in range(r0, r1, _PIXEL_ROWS):
                b = min(r1, a + _PIXEL_ROWS)
                part = layer[0, :, a - r0:b - r0]
                if rain is not None:
                    rain[a:b] = to_pixels(part, np.uint8, offset=0.0)
                if clean is not None:  # -R + I, in R's rows (ours: used up here), as _background
                    clean[a:b] = to_pixels(part.neg_().add_(source.crop(a, b, 0, w)[0]), clean.dtype)

        def attempt(t: int | None) -> None:
            geometry = None if ensemble else tiling_of(h, w, t, overlap)
            if geometry is not None:
                self._stream(source, *geometry, emit)
                return
            batch = source.tensor()
            layer = self._predict_once(batch, t, overlap, ensemble)
            del batch  # the float image: the clean rows are made from the pixels
            emit(0, h, layer)

        self._retrying(attempt, (1, h, w), tile, overlap, held)

    @staticmethod
    def _input_shape(image: np.ndarray | torch.Tensor) -> tuple[int, int, int]:
        """(B, H, W) of a checked input (InputError/TypeError for anything else), before anything is allocated."""
        if isinstance(image, np.ndarray):
            if image.dtype not in (np.uint8, np.uint16) or image.ndim != 3 or image.shape[2] != 3:
                raise InputError(f"expected an HxWx3 uint8 (or uint16) RGB image, got {image.dtype} {image.shape} "
                                 f"(for a greyscale HxW image use np.repeat(img[..., None], 3, axis=2))")
            return 1, image.shape[0], image.shape[1]
        if isinstance(image, torch.Tensor):
            if not image.is_floating_point() or image.dim() not in (3, 4) or image.shape[-3] != 3:
                raise InputError(f"expected a float tensor (3, H, W) or (B, 3, H, W) in [-1, 1], got "
                                 f"{image.dtype} {tuple(image.shape)}")
            return (1 if image.dim() == 3 else image.shape[0]), image.shape[-2], image.shape[-1]
        raise TypeError(f"expected a NumPy HxWx3 uint8 image or a float tensor, got {type(image).__name__}")

    @staticmethod
    def _as_batch(image: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, str]:
        BaseDerainer._input_shape(image)
        if isinstance(image, np.ndarray):
            return to_tensor(image)[None], "numpy"
        return (image[None], "chw") if image.dim() == 3 else (image, "bchw")

    # ------------------------------------------------------------------------------------- the public calls

    @overload
    def derain(self, image: np.ndarray, tile: int | str | None | _Unset = ..., overlap: int | None = ...,
               self_ensemble: bool | None = ...) -> np.ndarray: ...
    @overload
    def derain(self, image: torch.Tensor, tile: int | str | None | _Unset = ..., overlap: int | None = ...,
               self_ensemble: bool | None = ...) -> torch.Tensor: ...

    def derain(self, image, tile=_UNSET, overlap=None, self_ensemble=None):
        """The de-rained image B = I - R.

        Args:
            image: an HxWx3 uint8 (or uint16) RGB image, or a float tensor (3, H, W) or (B, 3, H, W) in [-1, 1]; any
                H and W.
            tile: this call's tiling: `TILE_AUTO`, None (the whole image) or a tile size in pixels. Left out: the
                derainer's `tile`.
            overlap: this call's tile overlap in pixels (None: the derainer's `overlap`).
            self_ensemble: True or False for this call (None: the derainer's `self_ensemble`).

        Returns:
            For a NumPy image: HxWx3, its dtype, rounded and clipped. For a tensor: the same shape, on its device,
            not clamped.

        Raises:
            InputError: a bad image or tiling.
            TypeError: an image that is neither, or a ``self_ensemble`` that is not a bool.
            NonFiniteOutputError: the network gave NaN or infinite values.
            mgid.derain.memory_budget.MemoryBudgetError: the image does not fit the memory, not even in the smallest
                tiles (`mgid.derain.memory_budget.OutOfMemoryAtSmallestTile` when retries ran out).
        """
        t, o = self._tiling(self._input_shape(image), tile, overlap)  # planned before the image's buffers exist
        if isinstance(image, np.ndarray):
            out = np.empty(image.shape, image.dtype)  # fails before the work if it cannot
            self._pixels(image, t, o, self_ensemble, clean=out, rain=None)
            return out
        batch, kind = self._as_batch(image)
        background = _background(batch, self._rain(batch, t, o, self_ensemble))
        return background[0] if kind == "chw" else background

    def rain_layer(self, image, tile=_UNSET, overlap=None, self_ensemble=None):
        """The rain layer R, what `derain` removes.

        Args:
            image: as `derain`.
            tile: as `derain`.
            overlap: as `derain`.
            self_ensemble: as `derain`.

        Returns:
            For a NumPy image: HxWx3 uint8 in pixel units, ``round(clip(R * 127.5, 0, 255))`` (so
            ``derain(img) + rain_layer(img) ~= img`` where R >= 0; negative parts are clipped to 0). For a tensor:
            R itself, the input's shape, in (-1, 1).

        Raises:
            As `derain`.
        """
        t, o = self._tiling(self._input_shape(image), tile, overlap)
        if isinstance(image, np.ndarray):
            out = np.empty(image.shape, np.uint8)
            self._pixels(image, t, o, self_ensemble, clean=None, rain=out)
            return out
        batch, kind = self._as_batch(image)
        rain = self._rain(batch, t, o, self_ensemble)
        return rain[0] if kind == "chw" else rain

    def derain_with_rain(self, image: np.ndarray, tile: int | str | None | _Unset = _UNSET,
                         overlap: int | None = None,
                         self_ensemble: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The de-rained image and the rain layer from one prediction (`derain`, `rain_layer`).

        Args:
            image: an HxWx3 uint8 (or uint16) RGB image.
            tile: as `derain`.
            overlap: as `derain`.
            self_ensemble: as `derain`.

        Returns:
            (de-rained HxWx3 in ``image``'s dtype, rain layer HxWx3 uint8).

        Raises:
            TypeError: ``image`` is not a NumPy array.
            As `derain` otherwise.
        """
        if not isinstance(image, np.ndarray):
            raise TypeError("derain_with_rain takes an HxWx3 uint8 NumPy image")
        t, o = self._tiling(self._input_shape(image), tile, overlap)  # planned before the image's buffers exist
        # The results are allocated first: an image whose results do not fit fails before the work, not after it.
        clean, rain_pixels = np.empty(image.shape, image.dtype), np.empty(image.shape, np.uint8)
        self._pixels(image, t, o, self_ensemble, clean=clean, rain=rain_pixels)
        return clean, rain_pixels


class Derainer(BaseDerainer):
    """A derainer running an `MGIDNet` with PyTorch, frozen for inference (`mgid.models.inference_graph`).

    `load_model` builds one from a weights file; its calls are `BaseDerainer`'s.

    Args:
        net: the network; moved to ``device`` (and to channels_last memory format where that is chosen) and put in
            eval mode.
        device: where it runs (None, the default: the device of ``net``'s parameters).
        tile: as `BaseDerainer`.
        overlap: as `BaseDerainer`.
        weights: as `BaseDerainer`.
        precision: ``"auto"`` (the default: bf16 on a CPU with native bf16 instructions, fp32 elsewhere;
            `mgid.precision.resolve_precision`), ``"fp32"`` or ``"bf16"`` (the graph's weights and activations).
        channels_last: the memory format of the network and its inputs (None, the default: auto,
            `mgid.precision.resolve_channels_last`).
        self_ensemble: as `BaseDerainer`.
        max_memory: as `BaseDerainer`.

    Raises:
        InputError: a bad ``precision``, or as `BaseDerainer`.
        TypeError: as `BaseDerainer`.
        mgid.devices.DeviceError: ``device`` is unknown or not available.

    Attributes:
        net: the network (eval mode; its memory is only read).
        graph: ``net`` frozen in this arithmetic (`mgid.models.inference_graph.InferenceGraph`), which every
            prediction runs; built here, so later changes to ``net``'s weights are not seen (build a new Derainer).
        The attributes of `BaseDerainer`.
    """

    def __init__(self, net: MGIDNet, device: str | torch.device | None = None, tile: int | str | None = TILE_AUTO,
                 overlap: int = DEFAULT_OVERLAP, weights: Path | None = None, precision: str = "auto",
                 channels_last: bool | None = None, self_ensemble: bool = False, max_memory: int | None = None) -> None:
        dev = resolve_device(device) if device is not None else next(net.parameters()).device
        super().__init__(net.config, dev, resolve_arithmetic(precision, channels_last, dev, "inference"), tile=tile,
                         overlap=overlap, weights=weights, self_ensemble=self_ensemble, max_memory=max_memory)
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        self.net = net.to(self.device, memory_format=fmt).eval()
        self.graph = InferenceGraph(self.net, self.precision, self.channels_last)

    def _predict(self, batch: torch.Tensor, tile: int | None, overlap: int) -> torch.Tensor:
        """`BaseDerainer._predict`: the frozen graph (`mgid.derain.tiling.predict_rain`)."""
        return predict_rain(self.graph, batch, tile, overlap)

    def _stream(self, source: PixelSource, tile: int, overlap: int, emit: RowsFn) -> None:
        """`BaseDerainer._stream`: the frozen graph (`mgid.derain.tiling.stream_rain`)."""
        stream_rain(self.graph, source, tile, overlap, emit)

    def _check_weights_finite(self) -> None:
        """`BaseDerainer._check_weights_finite`: `NonFiniteOutputError` unless the frozen weights are finite
        (`InferenceGraph.finite`; the graph's fused ReLU would turn NaN output into 0)."""
        if not self.graph.finite:
            raise self._non_finite()


#: Rows of the results converted at a time (`BaseDerainer._pixels`: its float temporaries are this many rows).
_PIXEL_ROWS = 64


def _all_finite(tensor: torch.Tensor, rows: int = 256) -> bool:
    """Whether every value of ``tensor`` (B, C, H, W) is finite, checked a band of ``rows`` rows at a time (the
    temporary is a band of booleans, not an image of them)."""
    return all(bool(torch.isfinite(tensor[..., r0:r0 + rows, :]).all()) for r0 in range(0, tensor.shape[-2], rows))


def _exhausted(tried: Sequence[int | None], overlap: int) -> str:
    """The message of `OutOfMemoryAtSmallestTile`: every tiling tried, and the smallest tile among them."""
    sizes = [t for t in tried if t is not None]
    text = ", ".join("whole image" if t is None else f"{t}" for t in tried)
    if not sizes:
        return (f"out of memory on the whole image, which is no larger than the smallest tile retried "
                f"({smallest_tile(overlap)} pixels): free memory or resize the image")
    return (f"out of memory at every tiling tried ({text}); the smallest tile tried, {min(sizes)} pixels, failed "
            f"too: free memory or resize the image")


def check_tile(tile: int | str | None, overlap: int) -> int | str | None:
    """Check a tiling.

    Args:
        tile: `TILE_AUTO`, None (whole images) or a tile size in pixels.
        overlap: the tile overlap in pixels.

    Returns:
        ``tile``.

    Raises:
        InputError: any other value, or a size too small or not larger than ``overlap``
            (`mgid.derain.tiling.tile_geometry`).
    """
    if tile == TILE_AUTO or tile is None:
        return tile
    if isinstance(tile, str) or isinstance(tile, bool):
        raise InputError(f"tile must be {TILE_AUTO!r}, None (whole images) or a size in pixels, got {tile!r}")
    tile_geometry(tile, overlap)
    return tile


def check_max_memory(value: int | None) -> int | None:
    """Check a memory budget.

    Args:
        value: bytes, or None (the available memory).

    Returns:
        ``value``.

    Raises:
        InputError: not None and not a positive int.
    """
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
        raise InputError(f"max_memory must be a positive number of bytes (or None: the available memory), "
                         f"got {value!r}")
    return value


def check_self_ensemble(value: object) -> bool:
    """Check a self-ensemble setting (a string such as "False" would otherwise read as on).

    Args:
        value: the setting.

    Returns:
        ``value``.

    Raises:
        TypeError: not a bool.
    """
    if not isinstance(value, bool):
        raise TypeError(f"self_ensemble must be True or False, got {value!r}")
    return value


def rain_to_uint8(rain: torch.Tensor) -> np.ndarray:
    """A rain layer as pixels.

    Args:
        rain: float (3, H, W) on the [-1, 1] scale.

    Returns:
        HxWx3 uint8 in pixel units (``round(clip(R * 127.5, 0, 255))``: negatives clipped to 0).
    """
    return to_pixels(rain, np.uint8, offset=0.0)


def _background(batch: torch.Tensor, rain: torch.Tensor) -> torch.Tensor:
    """``batch - rain`` (B, 3, H, W), computed in ``rain``'s memory (a tensor of our own, used up here): an
    image-sized float buffer less at the end of a large image. ``-rain + batch`` is ``batch - rain`` exactly."""
    return rain.neg_().add_(batch)


def load_model(weights: str | Path | None = None, device: str | torch.device = "auto",
               tile: int | str | None = TILE_AUTO, overlap: int = DEFAULT_OVERLAP, precision: str = "auto",
               channels_last: bool | None = None, self_ensemble: bool = False,
               max_memory: int | None = None) -> Derainer:
    """A `Derainer` of a weights file: the Python API's entry point (``mgid.load_model``).

    Args:
        weights: ``NAME.safetensors`` (with ``NAME.json`` beside it), a training output folder, or a pretrained
            folder (``config.json`` + ``model.safetensors``, `mgid.models.pretrained.save_pretrained`); None, the
            default: the shipped weights (`resolve_weights`).
        device: ``"auto"`` (the default: CUDA if any, else the CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        tile: the default tiling of `BaseDerainer.derain`: `TILE_AUTO` (the default: whole images where they fit
            ``max_memory``, else the largest tiles that do), None (whole images) or a tile size in pixels.
        overlap: the default tile overlap in pixels. Default `DEFAULT_OVERLAP`.
        precision: ``"auto"`` (the default: bf16 on a CPU with native bf16 instructions, else fp32), ``"fp32"`` or
            ``"bf16"``.
        channels_last: None (the default: auto, `mgid.precision.resolve_channels_last`), True or False.
        self_ensemble: the default of `BaseDerainer.derain`'s option (the mean over the 8 flips and quarter turns,
            8x the time). Default False.
        max_memory: the budget of `TILE_AUTO` in bytes (None, the default: a share of the available memory).

    Returns:
        The `Derainer`.

    Raises:
        InputError: a bad tiling, ``max_memory`` or ``precision``, checked before the weights are read.
        TypeError: ``self_ensemble`` is not a bool.
        FileNotFoundError: the weights are missing (the message says how to get some).
        mgid.checkpoint.CheckpointError: pickled, truncated or inconsistent files.
        mgid.devices.DeviceError: ``device`` is unknown or not available.
    """
    check_tile(tile, overlap)  # bad tiling fails here, not on every image
    check_max_memory(max_memory)
    check_self_ensemble(self_ensemble)
    path = resolve_weights(weights)
    dev = resolve_device(device)
    resolve_precision(precision, dev, "inference")  # a bad value fails before the weights are read
    net = load_network(path, dev)
    return Derainer(net, dev, tile=tile, overlap=overlap, weights=path, precision=precision,
                    channels_last=channels_last, self_ensemble=self_ensemble, max_memory=max_memory)

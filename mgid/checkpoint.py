"""Checkpoints as safetensors + JSON, written atomically, read without pickle.

One checkpoint named ``NAME`` in a folder is three files::

    NAME.safetensors        the model state dict, memory items (``memory.items``) included
    NAME.optim.safetensors  the optimiser's tensor state, flattened ("state.<param>.<key>")
    NAME.json               config, step, epoch, RNG states, the optimiser's non-tensor state,
                            op path, versions, and the SHA-256 of the two tensor files

Each file is written to a temporary file in the same folder, flushed and fsynced, then moved over
the old one with ``os.replace`` (atomic on POSIX and Windows). All three temporaries are written
before the first is moved and the JSON is moved last, so a failure while writing leaves the previous
checkpoint untouched; the hashes in the JSON reveal a set mixed by a crash between the moves.

Nothing here unpickles: files are parsed by `safetensors` and `json` only, and anything else is
refused with a message saying what was expected.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import platform
import random
import secrets
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import torch

FORMAT = "mgid-checkpoint"
FORMAT_VERSION = 1
MODEL_SUFFIX = ".safetensors"
OPTIM_SUFFIX = ".optim.safetensors"
META_SUFFIX = ".json"
#: The first 8 bytes of a safetensors file are the little-endian length of its JSON header; a larger
#: value than this cannot be a real header (it guards against reading a pickle as safetensors).
MAX_HEADER_BYTES = 100 * 1024 * 1024
_PICKLE_MAGIC = (b"\x80", b"PK\x03\x04")  # pickle protocol >= 2; zip (torch.save's default format)
_HASH_CHUNK = 1 << 20


class CheckpointError(ValueError):
    """A checkpoint is missing, not in mgid's format, truncated or inconsistent; the message says what to do."""


# --------------------------------------------------------------------------------------------------
# atomic writes


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically: temp file in the same folder, fsync, ``os.replace``."""
    path = Path(path)
    tmp = _write_temp(path, data)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def _write_temp(path: Path, data: bytes) -> Path:
    """``data`` in a fsynced temporary file beside ``path`` (removed again if writing fails)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    # os.open with 0o666 honours the umask (tempfile.mkstemp would leave the checkpoint 0600)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def _fsync_dir(directory: Path) -> None:
    """Make a rename durable (POSIX); a no-op where folders cannot be opened (Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_set(files: Mapping[Path, bytes]) -> None:
    """Write several files so that a failure before the moves changes none of them.

    Every temporary file is written (and fsynced) first; then they are moved in the given order.
    """
    temps: list[tuple[Path, Path]] = []
    try:
        for path, data in files.items():
            temps.append((_write_temp(Path(path), data), Path(path)))
        for tmp, path in temps:
            os.replace(tmp, path)
    finally:
        for tmp, _ in temps:
            tmp.unlink(missing_ok=True)  # no-op for the ones already moved
    for directory in {p.parent for p in files}:
        _fsync_dir(Path(directory))


# --------------------------------------------------------------------------------------------------
# safetensors reading without pickle, with clear errors


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_HASH_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def check_safetensors_file(path: str | Path) -> None:
    """Raise `CheckpointError` unless ``path`` looks like a complete safetensors file.

    Checks the 8-byte header length, that the JSON header parses, and that the file holds every
    byte its header promises (so a truncated download is reported as such).
    """
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"checkpoint file not found: {p}")
    size = p.stat().st_size
    with open(p, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{p} is empty or truncated ({size} bytes): not a safetensors file; "
                                  f"use another checkpoint (e.g. a step_XXXXXX one) or re-create it")
        if head.startswith(_PICKLE_MAGIC):
            raise CheckpointError(f"{p} looks like a pickled PyTorch file (torch.save), not safetensors; mgid never "
                                  f"unpickles files. Convert it once in a trusted environment with "
                                  f"safetensors.torch.save_file(torch.load(...), 'model.safetensors')")
        (n,) = struct.unpack("<Q", head)
        if n == 0 or n > MAX_HEADER_BYTES or 8 + n > size:
            raise CheckpointError(f"{p} is not a valid safetensors file (bad or truncated header: {size} bytes); "
                                  f"mgid checkpoints are .safetensors + .json files written by `mgid train`")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CheckpointError(f"{p} is not a valid safetensors file (its header is not JSON: {exc})") from exc
    if not isinstance(header, dict):
        raise CheckpointError(f"{p} is not a valid safetensors file (header is not a mapping)")
    end = max((int(v["data_offsets"][1]) for k, v in header.items()
               if k != "__metadata__" and isinstance(v, dict) and "data_offsets" in v), default=0)
    if 8 + n + end > size:
        raise CheckpointError(f"{p} is truncated: its header promises {8 + n + end} bytes but the file has {size}; "
                              f"the copy is incomplete (re-download/copy it, or use a step_XXXXXX checkpoint)")


def load_safetensors(path: str | Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file (no pickle), after `check_safetensors_file`."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    p = Path(path)
    if p.suffix != ".safetensors":
        raise CheckpointError(f"{p}: mgid loads only .safetensors files (weights) with a .json beside them; "
                              f"pickled .pt/.pth/.ckpt files are refused because unpickling can run code")
    check_safetensors_file(p)
    try:
        return load_file(str(p), device=str(device))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{p} could not be read as safetensors ({exc}); the file is corrupt") from exc


def save_safetensors_bytes(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None) -> bytes:
    """Serialise tensors (moved to the CPU, made contiguous and unshared) to safetensors bytes."""
    from safetensors.torch import save

    plain = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    return save(plain, metadata=dict(metadata) if metadata else None)


# --------------------------------------------------------------------------------------------------
# optimiser state <-> (tensors, JSON)


def flatten_optimizer_state(state_dict: Mapping[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split ``optimizer.state_dict()`` into safetensors-ready tensors and JSON-ready rest.

    Tensors become ``"state.<param index>.<key>"``; non-tensor per-parameter values and the
    ``param_groups`` go to the JSON part.
    """
    tensors: dict[str, torch.Tensor] = {}
    extra_state: dict[str, dict[str, Any]] = {}
    for index, per_param in state_dict["state"].items():
        for key, value in per_param.items():
            if torch.is_tensor(value):
                tensors[f"state.{index}.{key}"] = value
            else:
                extra_state.setdefault(str(index), {})[key] = value
    return tensors, {"param_groups": _jsonable(state_dict["param_groups"]), "state": _jsonable(extra_state)}


def unflatten_optimizer_state(tensors: Mapping[str, torch.Tensor], rest: Mapping[str, Any]) -> dict[str, Any]:
    """Inverse of `flatten_optimizer_state`: a dict for ``optimizer.load_state_dict``."""
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        prefix, index, key = name.split(".", 2)
        if prefix != "state":
            raise CheckpointError(f"unexpected tensor {name!r} in an optimiser checkpoint")
        state.setdefault(int(index), {})[key] = value
    for index, values in rest.get("state", {}).items():
        state.setdefault(int(index), {}).update(values)
    groups = []
    for group in rest["param_groups"]:
        group = dict(group)
        if isinstance(group.get("betas"), list):  # JSON has no tuples; Adam expects one
            group["betas"] = tuple(group["betas"])
        groups.append(group)
    return {"state": state, "param_groups": groups}


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if torch.is_tensor(value):
        return value.tolist()
    return value


# --------------------------------------------------------------------------------------------------
# RNG states <-> JSON


def _b64(t: torch.Tensor) -> str:
    return base64.b64encode(t.cpu().numpy().tobytes()).decode("ascii")


def _unb64(text: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.uint8).clone()


def rng_state() -> dict[str, Any]:
    """The python, NumPy (global) and torch (CPU, and CUDA when initialised) RNG states, JSON-ready."""
    version, internal, gauss = random.getstate()
    np_state = np.random.get_state(legacy=False)
    state: dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "numpy": {"bit_generator": np_state["bit_generator"],
                  "state": {"key": np_state["state"]["key"].tolist(), "pos": int(np_state["state"]["pos"])},
                  "has_gauss": int(np_state["has_gauss"]), "gauss": float(np_state["gauss"])},
        "torch": _b64(torch.get_rng_state()),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["torch_cuda"] = [_b64(s) for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what `rng_state` returned (CUDA states only where CUDA is available)."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np_state = dict(state["numpy"])
    np_state["state"] = {"key": np.asarray(np_state["state"]["key"], dtype=np.uint32),
                         "pos": np_state["state"]["pos"]}
    np.random.set_state(np_state)
    torch.set_rng_state(_unb64(state["torch"]))
    if "torch_cuda" in state and torch.cuda.is_available():
        states = [_unb64(s) for s in state["torch_cuda"]]
        if len(states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(states)


# --------------------------------------------------------------------------------------------------
# checkpoints


def checkpoint_paths(directory: str | Path, name: str = "last") -> dict[str, Path]:
    """``{"model", "optim", "meta"}`` paths of checkpoint ``name`` in ``directory``."""
    d = Path(directory)
    return {"model": d / f"{name}{MODEL_SUFFIX}", "optim": d / f"{name}{OPTIM_SUFFIX}", "meta": d / f"{name}{META_SUFFIX}"}


def versions() -> dict[str, str]:
    """Versions of the software that wrote a checkpoint (for the JSON)."""
    import safetensors

    from mgid import __version__

    return {"mgid": __version__, "torch": torch.__version__, "numpy": np.__version__,
            "safetensors": safetensors.__version__, "python": platform.python_version()}


def save_checkpoint(directory: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None,
                    meta: Mapping[str, Any], names: Iterable[str] = ("last",)) -> dict[str, Path]:
    """Write checkpoint ``names`` (e.g. ``("last", "step_000100")``) of ``model`` and ``optimizer``.

    ``meta`` (JSON-ready: config, step, epoch, ...) is stored in the JSON with the format, the
    current RNG states, the optimiser's non-tensor state, versions and the tensor files' hashes.
    Every name gets identical contents. Returns the paths of the first name.
    """
    model_bytes = save_safetensors_bytes(model.state_dict(), {"format": FORMAT})
    record: dict[str, Any] = {"format": FORMAT, "format_version": FORMAT_VERSION, **_jsonable(dict(meta)),
                              "rng": rng_state(), "versions": versions()}
    files = {"model": hashlib.sha256(model_bytes).hexdigest()}
    optim_bytes = None
    if optimizer is not None:
        tensors, rest = flatten_optimizer_state(optimizer.state_dict())
        optim_bytes = save_safetensors_bytes(tensors, {"format": FORMAT})
        record["optimizer"] = rest
        files["optim"] = hashlib.sha256(optim_bytes).hexdigest()
    record["sha256"] = files
    meta_bytes = json.dumps(record, indent=1).encode("utf-8")
    first: dict[str, Path] | None = None
    for name in names:
        paths = checkpoint_paths(directory, name)
        batch = {paths["model"]: model_bytes}
        if optim_bytes is not None:
            batch[paths["optim"]] = optim_bytes
        batch[paths["meta"]] = meta_bytes  # last: a complete JSON implies complete tensor files
        atomic_write_set(batch)
        first = first or paths
    assert first is not None, "save_checkpoint needs at least one name"
    return first


@dataclass
class Checkpoint:
    """A checkpoint read back: the model state dict, the optimiser state (or None) and the JSON record."""

    model_state: dict[str, torch.Tensor]
    optimizer_state: dict[str, Any] | None
    meta: dict[str, Any]
    paths: dict[str, Path]


def read_meta(path: str | Path) -> dict[str, Any]:
    """The JSON record of a checkpoint (``NAME.json``), checked to be mgid's format."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"checkpoint record not found: {p}")
    try:
        meta = json.loads(p.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{p} is not valid JSON ({exc}); the checkpoint record is corrupt or truncated") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{p} is not an mgid checkpoint record (no \"format\": \"{FORMAT}\")")
    if int(meta.get("format_version", 0)) > FORMAT_VERSION:
        raise CheckpointError(f"{p} was written by a newer mgid (format {meta['format_version']}); upgrade mgid")
    return meta


def load_checkpoint(directory: str | Path, name: str = "last", *, with_optimizer: bool = True,
                    device: str | torch.device = "cpu") -> Checkpoint:
    """Read checkpoint ``name`` from ``directory``, verifying the files against the JSON's hashes."""
    paths = checkpoint_paths(directory, name)
    meta = read_meta(paths["meta"])
    hashes = meta.get("sha256", {})
    wanted = ("model", "optim") if with_optimizer and "optim" in hashes else ("model",)
    for part in wanted:
        check_safetensors_file(paths[part])
        if part in hashes and _sha256(paths[part]) != hashes[part]:
            raise CheckpointError(f"{paths[part]} does not match {paths['meta'].name} (SHA-256 differs): the files "
                                  f"come from different saves (interrupted write?); use a step_XXXXXX checkpoint")
    model_state = load_safetensors(paths["model"], device)
    optimizer_state = None
    if "optim" in wanted:
        optimizer_state = unflatten_optimizer_state(load_safetensors(paths["optim"], device), meta["optimizer"])
    return Checkpoint(model_state, optimizer_state, meta, paths)


def load_model(path: str | Path, device: str | torch.device = "cpu") -> torch.nn.Module:
    """An `MGIDNet` in eval mode from ``NAME.safetensors`` (its ``NAME.json`` gives the model config)."""
    from mgid.models import MGIDNet, ModelConfig

    p = Path(path)
    if p.suffix == ".json" or p.name.endswith(MODEL_SUFFIX):
        stem = p.name[: -len(MODEL_SUFFIX)] if p.name.endswith(MODEL_SUFFIX) else p.stem
    else:
        raise CheckpointError(f"{p}: expected a .safetensors weights file (with its .json beside it)")
    ckpt = load_checkpoint(p.parent, stem, with_optimizer=False, device="cpu")
    model_cfg = ckpt.meta.get("config", {}).get("model")
    if model_cfg is None:
        raise CheckpointError(f"{ckpt.paths['meta']} has no config.model section; cannot build the network")
    net = MGIDNet(ModelConfig.from_dict(model_cfg))
    net.load_state_dict(ckpt.model_state)
    return net.to(device).eval()

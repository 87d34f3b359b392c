"""Checkpoints as safetensors + JSON, written atomically, read without pickle.

A checkpoint ``NAME`` is ``NAME.safetensors`` (model state, memory items included), ``NAME.optim.safetensors``
and ``NAME.json`` (config, step, RNG states, hashes): `save_checkpoint`, `load_checkpoint`, `recover_checkpoint`.
A kill at any moment leaves the previous or the new checkpoint loadable; nothing is unpickled (anything else is
refused with `CheckpointError`). Weights alone in the Hugging Face Hub layout: `write_pretrained`,
`read_pretrained`; any weights file or folder: `read_weights`. The file format and commit order:
docs/SCALING.md, "Design notes".
"""
from __future__ import annotations

import base64
import glob
import hashlib
import json
import os
import platform
import random
import secrets
import struct
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mgid.errors import InputError, MgidError

FORMAT = "mgid-checkpoint"
FORMAT_VERSION = 1
MODEL_SUFFIX = ".safetensors"
OPTIM_SUFFIX = ".optim.safetensors"
META_SUFFIX = ".json"
#: The folder of a `mgid train` output (``OUT``) that holds its checkpoints (``OUT/checkpoints/last.*``).
TRAINING_CHECKPOINT_DIR = "checkpoints"
#: The first 8 bytes of a safetensors file are the little-endian length of its JSON header; a larger
#: value than this cannot be a real header (it guards against reading a pickle as safetensors).
MAX_HEADER_BYTES = 100 * 1024 * 1024
_PICKLE_MAGIC = (b"\x80", b"PK\x03\x04")  # pickle protocol >= 2; zip (torch.save's default format)
_HASH_CHUNK = 1 << 20


class CheckpointError(MgidError, ValueError):
    """A checkpoint is missing, not in mgid's format, truncated or inconsistent; the message says what to do."""


# --------------------------------------------------------------------------------------------------
# atomic writes


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


# --------------------------------------------------------------------------------------------------
# safetensors reading without pickle, with clear errors


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes."""
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
    """The tensors of a safetensors file (no pickle), after `check_safetensors_file`.

    Args:
        path: a ``.safetensors`` file.
        device: where the tensors are loaded.

    Returns:
        ``{name: tensor}``.

    Raises:
        CheckpointError: another suffix (pickled ``.pt``/``.pth``/``.ckpt`` files are refused), or a file that
            is not a complete safetensors file.
    """
    p = Path(path)
    if p.suffix != ".safetensors":
        raise CheckpointError(f"{p}: mgid loads only .safetensors files (weights) with a .json beside them; "
                              f"pickled .pt/.pth/.ckpt files are refused because unpickling can run code")
    return _read_safetensors(p, device)


def _read_safetensors(p: Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """`load_safetensors` without the suffix check (a hash-verified temporary of an interrupted save)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

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


def locate_checkpoint(path: str | Path) -> tuple[Path, str]:
    """The checkpoint a file belongs to (``checkpoint_paths(*locate_checkpoint(p))`` gives all its files).

    Args:
        path: ``NAME.safetensors`` (its weights) or ``NAME.json`` (its record).

    Returns:
        ``(folder, NAME)``.

    Raises:
        CheckpointError: any other file name.
    """
    p = Path(path)
    for suffix in (MODEL_SUFFIX, META_SUFFIX):
        if p.name.endswith(suffix) and len(p.name) > len(suffix):
            return p.parent, p.name[: -len(suffix)]
    raise CheckpointError(f"{p}: mgid loads weights only from .safetensors files (NAME.safetensors, with the "
                          f"NAME.json written beside it); rename it to NAME.safetensors if it is one")


def versions() -> dict[str, str]:
    """Versions of the software that wrote a checkpoint (for the JSON)."""
    import safetensors

    from mgid import __version__

    return {"mgid": __version__, "torch": torch.__version__, "numpy": np.__version__,
            "safetensors": safetensors.__version__, "python": platform.python_version()}


def save_checkpoint(directory: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None,
                    meta: Mapping[str, Any], names: Iterable[str] = ("last",)) -> dict[str, Path]:
    """Write a checkpoint of a model and its optimiser, atomically, under one or more names.

    Every name gets identical contents; a save a crash interrupted is completed first (`recover_checkpoint`).

    Args:
        directory: the checkpoint folder.
        model: its ``state_dict`` goes to ``NAME.safetensors`` (memory items included).
        optimizer: its tensor state goes to ``NAME.optim.safetensors``; ``None`` writes no optimiser file.
        meta: JSON-ready record (config, step, epoch, ...), stored in ``NAME.json`` with the format, the
            current RNG states, the optimiser's non-tensor state, versions and the tensor files' hashes.
        names: the names to write, e.g. ``("last", "step_000100")``; at least one.

    Returns:
        The `checkpoint_paths` of the first name.

    Raises:
        OSError: a write failed (the previous checkpoint is left intact).
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
        recover_checkpoint(directory, name)  # finish a save a crash interrupted, drop stale temporaries
        tensors_out = {paths["model"]: model_bytes}
        if optim_bytes is not None:
            tensors_out[paths["optim"]] = optim_bytes
        _commit_set(tensors_out, paths["meta"], meta_bytes)
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
    """The JSON record of a checkpoint (``NAME.json``), checked to be mgid's format.

    Args:
        path: the ``NAME.json`` file.

    Returns:
        The record.

    Raises:
        CheckpointError: missing, not valid JSON, not mgid's format, or written by a newer mgid.
    """
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
    """Read a checkpoint, verifying its files against the JSON's hashes.

    Tensor files a crash left as hash-verified temporaries are read from there.

    Args:
        directory: the checkpoint folder.
        name: the checkpoint's name (``NAME.json`` and its tensor files).
        with_optimizer: also read the optimiser state, where the checkpoint has one.
        device: where the tensors are loaded.

    Returns:
        The `Checkpoint` (``optimizer_state`` None without the optimiser).

    Raises:
        CheckpointError: a file is missing, not mgid's format, truncated, or from another save.
    """
    paths = checkpoint_paths(directory, name)
    meta = read_meta(paths["meta"])
    hashes = meta.get("sha256", {})
    wanted = ("model", "optim") if with_optimizer and "optim" in hashes else ("model",)
    sources = dict(paths)
    for part in wanted:
        if part in hashes:
            sources[part] = _matching_file(paths[part], hashes[part], paths["meta"].name)
        check_safetensors_file(sources[part])
    model_state = _read_safetensors(sources["model"], device)
    optimizer_state = None
    if "optim" in wanted:
        optimizer_state = unflatten_optimizer_state(_read_safetensors(sources["optim"], device), meta["optimizer"])
    return Checkpoint(model_state, optimizer_state, meta, paths)


def _pending_files(path: Path) -> list[Path]:
    """Temporaries `_write_temp` left beside ``path`` (a save in progress, or one a crash interrupted)."""
    return sorted(path.parent.glob(f".{glob.escape(path.name)}.*.tmp"))


def _matching_file(path: Path, sha: str, meta_name: str, advice: str = "use a step_XXXXXX checkpoint") -> Path:
    """``path`` if its SHA-256 is ``sha``; else a complete temporary of it with that hash (a save killed
    after its JSON was committed but before the tensor files were moved); else `CheckpointError` (ending in
    ``advice``)."""
    if path.is_file() and file_sha256(path) == sha:
        return path
    for candidate in _pending_files(path):
        try:
            if file_sha256(candidate) == sha:
                return candidate
        except OSError:  # removed meanwhile by a concurrent save
            continue
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}")
    raise CheckpointError(f"{path} does not match {meta_name} (SHA-256 differs): the files come from different "
                          f"saves; {advice}")


def recover_checkpoint(directory: str | Path, name: str = "last") -> bool:
    """Complete a save of checkpoint ``name`` that a crash interrupted, and delete stale temporaries.

    A save commits by moving its JSON into place and only then moves the tensor files; a kill in
    between leaves the new tensors as temporaries. Those whose hash the JSON names are moved into
    place here; every other temporary of ``name`` (an uncommitted save) is deleted. Only the process that
    writes checkpoints should call this.

    Args:
        directory: the checkpoint folder.
        name: the checkpoint's name.

    Returns:
        True when a file was moved into place.
    """
    paths = checkpoint_paths(directory, name)
    return _recover(paths, lambda: read_meta(paths["meta"]).get("sha256", {}))


def _recover(paths: Mapping[str, Path], read_hashes: Callable[[], Mapping[str, Any]]) -> bool:
    """`recover_checkpoint` of the files ``paths`` (``"meta"``: the record; the others: tensor files, whose
    hashes ``read_hashes()`` gives by the same keys from the record)."""
    pending = {part: _pending_files(path) for part, path in paths.items()}
    if not any(pending.values()):
        return False
    moved = False
    hashes: Mapping[str, Any] = {}
    try:
        hashes = read_hashes() if paths["meta"].is_file() else {}
    except CheckpointError:
        hashes = {}
    for part in (p for p in paths if p != "meta"):
        sha = hashes.get(part)
        target = paths[part]
        if sha and not (target.is_file() and file_sha256(target) == sha):
            for candidate in pending[part]:
                if file_sha256(candidate) == sha:
                    os.replace(candidate, target)
                    moved = True
                    break
    for files in pending.values():
        for f in files:
            f.unlink(missing_ok=True)
    if moved:
        _fsync_dir(paths["meta"].parent)
    return moved


def _commit_set(tensor_files: Mapping[Path, bytes], meta_path: Path, meta_bytes: bytes) -> None:
    """Write tensor files and their JSON record so that a crash at any moment leaves a loadable checkpoint.

    1. every file is written to a fsynced temporary (a failure here, e.g. disk full, deletes them and
       leaves the previous checkpoint untouched);
    2. the JSON (which names the tensor files' hashes) is moved into place: the commit point;
    3. the tensor files are moved into place.
    A kill between 2 and 3 leaves the new tensors as temporaries whose hashes the JSON names:
    `load_checkpoint` reads them from there and the next save (`recover_checkpoint`) moves them.
    """
    temps: list[tuple[Path, Path]] = []
    committed = False
    try:
        for path, data in tensor_files.items():
            temps.append((_write_temp(Path(path), data), Path(path)))
        meta_tmp = _write_temp(meta_path, meta_bytes)
        temps.append((meta_tmp, meta_path))
        os.replace(meta_tmp, meta_path)
        committed = True
        _fsync_dir(meta_path.parent)
        for tmp, path in temps[:-1]:
            os.replace(tmp, path)
    finally:
        if not committed:
            for tmp, _ in temps:
                tmp.unlink(missing_ok=True)
    _fsync_dir(meta_path.parent)



# --------------------------------------------------------------------------------------------------
# the Hugging Face Hub layout: FOLDER/model.safetensors + FOLDER/config.json

#: The two files of a network's weights in the Hugging Face Hub layout (`write_pretrained`, `read_pretrained`).
PRETRAINED_WEIGHTS = "model.safetensors"
PRETRAINED_CONFIG = "config.json"
PRETRAINED_FORMAT = "mgid-pretrained"
PRETRAINED_FORMAT_VERSION = 1
#: Top-level keys of ``config.json`` besides the model config's fields.
PRETRAINED_RESERVED = ("model_type", "architectures", "mgid")


@dataclass
class Pretrained:
    """A pretrained folder read back: the state dict, the model config (``config.json`` without
    `PRETRAINED_RESERVED`), the provenance of the weights, and the two files."""

    model_state: dict[str, torch.Tensor]
    model_config: dict[str, Any]
    provenance: dict[str, Any]
    paths: dict[str, Path]


def pretrained_paths(directory: str | Path) -> dict[str, Path]:
    """``{"model", "meta"}``: the `PRETRAINED_WEIGHTS` and `PRETRAINED_CONFIG` files of ``directory``."""
    d = Path(directory)
    return {"model": d / PRETRAINED_WEIGHTS, "meta": d / PRETRAINED_CONFIG}


def is_pretrained_weights(path: str | Path) -> bool:
    """Whether weights file ``path`` is the ``model.safetensors`` of a pretrained folder: `PRETRAINED_CONFIG`
    beside it and no ``model.json`` (a checkpoint named ``model`` keeps its own record)."""
    p = Path(path)
    return (p.name == PRETRAINED_WEIGHTS and (p.parent / PRETRAINED_CONFIG).is_file()
            and not checkpoint_paths(p.parent, "model")["meta"].is_file())


def check_pretrained_folder(directory: str | Path) -> dict[str, Path]:
    """`pretrained_paths` of ``directory``; ``FileNotFoundError`` naming what is missing unless both exist."""
    paths = pretrained_paths(directory)
    missing = [p.name for p in paths.values() if not p.is_file()]
    if missing:
        found = [p.name for p in paths.values() if p.is_file()]
        raise FileNotFoundError(f"{Path(directory)} is not a pretrained folder: missing {' and '.join(missing)}"
                                + (f" (it has {found[0]})" if found else "")
                                + f"; mgid.save_pretrained writes {PRETRAINED_CONFIG} + {PRETRAINED_WEIGHTS}")
    return paths


def write_pretrained(directory: str | Path, state: Mapping[str, torch.Tensor], model_config: Mapping[str, Any],
                     provenance: Mapping[str, Any]) -> dict[str, Path]:
    """Write ``state`` as ``directory/model.safetensors`` and ``directory/config.json`` atomically.

    ``config.json`` holds ``model_type`` "mgid", ``architectures`` ["MGIDNet"], the fields of ``model_config``
    at the top level and an ``mgid`` section: format, the SHA-256 of ``model.safetensors``, the versions
    writing it and ``provenance``. Written like a checkpoint: a crash at any moment leaves the previous or the
    new pair loadable.

    Args:
        directory: the folder (created if missing).
        state: the network's state dict.
        model_config: the `mgid.models.ModelConfig` fields.
        provenance: JSON-ready record of where the weights come from.

    Returns:
        The `pretrained_paths` of ``directory``.

    Raises:
        InputError: ``model_config`` uses a key reserved by `PRETRAINED_RESERVED` (a ``ValueError``).
        OSError: a write failed (the previous files are left intact).
    """
    clash = sorted(set(model_config) & set(PRETRAINED_RESERVED))
    if clash:
        raise InputError(f"model config fields {clash} clash with the reserved keys of {PRETRAINED_CONFIG}")
    paths = pretrained_paths(directory)
    model_bytes = save_safetensors_bytes(state, {"format": "pt"})
    record = {"model_type": "mgid", "architectures": ["MGIDNet"], **_jsonable(dict(model_config)),
              "mgid": {"format": PRETRAINED_FORMAT, "format_version": PRETRAINED_FORMAT_VERSION,
                       "sha256": {"model": hashlib.sha256(model_bytes).hexdigest()}, "versions": versions(),
                       "provenance": _jsonable(dict(provenance))}}
    _recover(paths, lambda: read_pretrained_config(paths["meta"])["mgid"]["sha256"])
    _commit_set({paths["model"]: model_bytes}, paths["meta"], json.dumps(record, indent=1).encode("utf-8"))
    return paths


def read_pretrained_config(path: str | Path) -> dict[str, Any]:
    """The record ``config.json`` at ``path``, checked to be mgid's pretrained format with a hash of its tensors
    (`CheckpointError` otherwise)."""
    path = Path(path)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path} is not valid JSON ({exc}); the config is corrupt or truncated") from exc
    section = record.get("mgid") if isinstance(record, dict) else None
    if not isinstance(section, dict) or section.get("format") != PRETRAINED_FORMAT:
        raise CheckpointError(f"{path} is not an mgid config (no \"mgid\": {{\"format\": \"{PRETRAINED_FORMAT}\"}}): "
                              f"the folder holds another library's model, or was not written by mgid.save_pretrained")
    if int(section.get("format_version", 0)) > PRETRAINED_FORMAT_VERSION:
        raise CheckpointError(f"{path} was written by a newer mgid (format {section['format_version']}); upgrade mgid")
    if not isinstance(section.get("sha256"), dict) or not isinstance(section["sha256"].get("model"), str):
        raise CheckpointError(f"{path} has no mgid.sha256.model (the hash of {PRETRAINED_WEIGHTS}); it is "
                              f"incomplete: save the folder again with save_pretrained")
    return record


def read_pretrained(directory: str | Path, device: str | torch.device = "cpu") -> Pretrained:
    """Read the pretrained folder ``directory``, verifying ``model.safetensors`` against the config's hash.

    Raises:
        FileNotFoundError: ``config.json`` or ``model.safetensors`` is missing (the message names which).
        CheckpointError: the config is not mgid's, or the tensors are not safetensors, truncated or from
            another save.
    """
    paths = check_pretrained_folder(directory)
    record = read_pretrained_config(paths["meta"])
    section = record["mgid"]
    source = _matching_file(paths["model"], section["sha256"]["model"], PRETRAINED_CONFIG,
                            "save the folder again with save_pretrained")
    state = _read_safetensors(source, device)
    model_config = {k: v for k, v in record.items() if k not in PRETRAINED_RESERVED}
    return Pretrained(state, model_config, dict(section.get("provenance", {})), paths)


def read_weights(path: str | Path, device: str | torch.device = "cpu"
                 ) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None, dict[str, Path]]:
    """The network state of weights file ``path``, the model config it was saved with and its files.

    Args:
        path: a checkpoint's ``NAME.safetensors`` or ``NAME.json``, or a pretrained folder's ``model.safetensors``.
        device: where the tensors are loaded.

    Returns:
        ``(state, model_config, paths)``: ``model_config`` is the record's ``config.model`` (a checkpoint) or the
        ``config.json`` fields (a pretrained folder), None when a checkpoint record has none; ``paths`` has
        ``"model"`` and ``"meta"``.

    Raises:
        FileNotFoundError, CheckpointError: as `load_checkpoint` and `read_pretrained`.
    """
    if is_pretrained_weights(path):
        pretrained = read_pretrained(Path(path).parent, device=device)
        return pretrained.model_state, pretrained.model_config, pretrained.paths
    folder, name = locate_checkpoint(path)
    ckpt = load_checkpoint(folder, name, with_optimizer=False, device=device)
    return ckpt.model_state, ckpt.meta.get("config", {}).get("model"), ckpt.paths

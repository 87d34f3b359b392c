"""Weights in the Hugging Face Hub layout: a folder holding ``config.json`` + ``model.safetensors``.

    >>> import mgid
    >>> mgid.save_pretrained(mgid.load_model(), "mgid-embedded")  # the shipped weights, with their provenance
    >>> net = mgid.from_pretrained("mgid-embedded")               # an MGIDNet in eval mode
    >>> net = mgid.from_pretrained("user/mgid-weights")           # a Hub repo (huggingface_hub.snapshot_download)
    >>> derainer = mgid.load_model("mgid-embedded")               # the folder as weights (mgid derain --weights)

The files are written by `mgid.checkpoint.write_pretrained` and read by `mgid.derain.derainer.load_network`,
the loader of every weights format.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from mgid.checkpoint import (
    PRETRAINED_CONFIG,
    PRETRAINED_WEIGHTS,
    CheckpointError,
    checkpoint_paths,
    is_pretrained_weights,
    locate_checkpoint,
    read_meta,
    read_pretrained_config,
    write_pretrained,
)
from mgid.derain.derainer import Derainer, load_network, resolve_weights
from mgid.errors import InputError, MissingDependencyError
from mgid.models.mgid import MGIDNet

#: Keys of a checkpoint record (``NAME.json``) left out of the provenance: the file format, the states to
#: resume training (RNG, optimiser, gradient scaler) and the hashes (replaced by the source file's hash).
_NOT_PROVENANCE = ("format", "format_version", "rng", "optimizer", "grad_scaler", "sha256", "config")


def weights_provenance(weights: str | Path) -> dict[str, Any]:
    """The provenance of weights file ``weights`` (as `mgid.derain.derainer.resolve_weights` returns) for
    ``config.json``.

    Args:
        weights: a checkpoint's ``NAME.safetensors`` (with ``NAME.json``) or a pretrained folder's
            ``model.safetensors``.

    Returns:
        A pretrained folder's own provenance; for a checkpoint: ``weights`` (its file name), ``sha256`` (of
        its tensors), ``training_config`` (the record's config without ``model``, which is the top level of
        ``config.json``) and the rest of its record (step, epoch, validation scores, versions, ...) without
        the states for resuming training.
    """
    path = Path(weights)
    if is_pretrained_weights(path):
        return dict(read_pretrained_config(path.parent / PRETRAINED_CONFIG)["mgid"].get("provenance", {}))
    meta = read_meta(checkpoint_paths(*locate_checkpoint(path))["meta"])
    training = {k: v for k, v in meta.get("config", {}).items() if k != "model"}
    return {"weights": path.name, "sha256": meta.get("sha256", {}).get("model"), "training_config": training,
            **{k: v for k, v in meta.items() if k not in _NOT_PROVENANCE}}


def save_pretrained(model_or_derainer: MGIDNet | Derainer, directory: str | Path,
                    provenance: Mapping[str, Any] | None = None) -> Path:
    """Write a network as ``directory/config.json`` + ``directory/model.safetensors`` (the Hugging Face Hub layout).

    ``config.json`` holds the `mgid.models.ModelConfig` fields at its top level (``model_type`` "mgid") and an
    ``mgid`` section: format, SHA-256 of ``model.safetensors``, versions, provenance. Both files are written
    atomically (`mgid.checkpoint.write_pretrained`): a crash leaves the previous or the new pair loadable.

    Args:
        model_or_derainer: an `MGIDNet` (any device, mode or memory format; its state dict is saved as
            contiguous CPU tensors) or a `mgid.derain.derainer.Derainer` (its ``net``).
        directory: the folder; created if missing, an earlier save there is replaced.
        provenance: JSON-ready facts on where the weights come from, stored as ``mgid.provenance``. None: those
            of the Derainer's weights file (`weights_provenance`), or ``{}`` for a network.

    Returns:
        ``directory`` as a Path.

    Raises:
        TypeError: ``model_or_derainer`` is neither an `MGIDNet` nor a `Derainer`.
    """
    if isinstance(model_or_derainer, Derainer):
        net, source = model_or_derainer.net, model_or_derainer.weights
    elif isinstance(model_or_derainer, MGIDNet):
        net, source = model_or_derainer, None
    else:
        raise TypeError(f"save_pretrained takes an MGIDNet or a Derainer, got {type(model_or_derainer).__name__}")
    if provenance is None:
        provenance = weights_provenance(source) if source is not None else {}
    write_pretrained(directory, net.state_dict(), net.config.to_dict(), provenance)
    return Path(directory)


def from_pretrained(dir_or_repo_id: str | Path, device: str | torch.device = "cpu", *, revision: str | None = None,
                    cache_dir: str | Path | None = None) -> MGIDNet:
    """An `MGIDNet` in eval mode from a pretrained folder, local or a Hugging Face Hub repo.

    Args:
        dir_or_repo_id: a local folder holding ``config.json`` + ``model.safetensors`` (or any weights
            `mgid.load_model` takes), or, when no such path exists, a Hub repo id (``"user/name"``) fetched with
            ``huggingface_hub.snapshot_download`` (those two files only, into the Hub cache; with
            ``HF_HUB_OFFLINE=1`` from the cache only).
        device: where the network goes (``"auto"``: CUDA if any, see `mgid.devices.resolve_device`).
        revision: the repo's branch, tag or commit (None: its default branch); repo ids only.
        cache_dir: the Hub cache folder (None: huggingface_hub's default, under ``HF_HOME``).

    Returns:
        The network of ``config.json`` with the weights of ``model.safetensors``, in eval mode on ``device``.

    Raises:
        FileNotFoundError: the folder lacks ``config.json`` or ``model.safetensors`` (the message names which).
        CheckpointError: the repo could not be fetched (offline and not cached, not found, no network), or the
            files are not mgid's, corrupt, or do not belong together.
        ValueError: ``revision`` given with a local path.
    """
    path = Path(dir_or_repo_id).expanduser()
    if path.exists():
        if revision is not None:
            raise InputError(f"revision={revision!r} applies to Hub repo ids; {path} is a local path")
        return load_network(resolve_weights(path), device)
    folder = _download(str(dir_or_repo_id), revision, cache_dir)
    return load_network(resolve_weights(folder), device)


def _download(repo_id: str, revision: str | None, cache_dir: str | Path | None) -> Path:
    """The snapshot folder of Hub repo ``repo_id`` (its config.json and model.safetensors); `CheckpointError`
    in one line when it cannot be had."""
    try:
        from huggingface_hub import snapshot_download
    except ModuleNotFoundError as exc:
        raise MissingDependencyError(f"{repo_id!r} is not a local folder, and loading a Hugging Face Hub repo needs "
                                  f"huggingface_hub: pip install huggingface_hub") from exc
    from mgid import __version__

    try:
        folder = snapshot_download(repo_id, revision=revision, cache_dir=cache_dir,
                                   allow_patterns=[PRETRAINED_CONFIG, PRETRAINED_WEIGHTS],
                                   library_name="mgid", library_version=__version__)
    except (OSError, ValueError) as exc:  # offline and not cached, not found, no network, an invalid id
        reason = next(iter(str(exc).strip().splitlines()), "")
        raise CheckpointError(f"{repo_id!r} is not a local folder, and the Hugging Face Hub repo of that id could "
                              f"not be fetched ({type(exc).__name__}: {reason})") from exc
    return Path(folder)

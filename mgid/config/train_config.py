"""Training settings as one typed object, named recipes (YAML files), YAML files and command-line options.

`TrainConfig` composes the settings of every part (`ModelConfig`, `LossWeights`, `EmbeddedDataConfig`,
`OptimConfig`) plus the run's own; its defaults are the paper's. `resolve_config` resolves, later winning: the
defaults, a named recipe (`NAMED_CONFIGS`, ``mgid/config/recipes/NAME.yaml``) or a YAML file (``--config``, may
start from a recipe with ``base: NAME``), then command-line overrides, one option per field (``--batch_size 4``,
``--model.memory_items 30``). A field's help is its docstring. Why the command-line layer is by hand:
docs/TRAIN.md, "Design notes".
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal, get_args

import yaml

from mgid.config import fields as _fields
from mgid.config.fields import (
    ConfigError,
    OptionSpec,
    _hints,
    _plain,
    build_dataclass,
    merge,
)
from mgid.config.literals import check_literals
from mgid.data import EmbeddedDataConfig
from mgid.data.folders import Layout, PairPreprocessing
from mgid.losses import LossWeights
from mgid.models import ModelConfig
from mgid.ops._dispatch import OpsMode
from mgid.precision import CHANNELS_LAST_SETTINGS, ChannelsLast, TrainingPrecision

Device = Literal["auto", "cpu", "cuda"]
DataLayout = Literal["auto", Layout]
Schedule = Literal["constant", "cosine"]
DistBackend = Literal["auto", "nccl", "gloo"]
DEVICES = get_args(Device)
YAML_SUFFIXES = (".yaml", ".yml")
#: Key of a recipe or YAML file naming the recipe it starts from (``base: cpu``).
BASE_KEY = "base"
#: Field metadata of a setting that ``--resume`` may change without the run differing from an uninterrupted one
#: (run length, logging, checkpointing, devices); `resume_may_change` lists the marked fields.
RESUME_MAY_CHANGE: Mapping[str, str] = {"resume": "may change"}


@dataclass
class OptimConfig:
    """Optimiser and learning-rate schedule (Adam, as the public code)."""

    lr: float = 2e-4
    """Adam learning rate (the paper: 2e-4)."""
    betas: tuple[float, float] = (0.9, 0.999)
    """Adam (beta1, beta2); the public code uses PyTorch's defaults."""
    eps: float = 1e-8
    """Adam epsilon."""
    weight_decay: float = 0.0
    """L2 weight decay of Adam."""
    schedule: Schedule = "constant"
    """Learning-rate schedule: "constant" (the public code builds a cosine schedule but never steps it) or
    "cosine" (from lr down to min_lr over the run's steps, after the warm-up)."""
    min_lr: float = 0.0
    """Final learning rate of the cosine schedule."""
    warmup_steps: int = 0
    """Linear warm-up from lr / warmup_steps to lr over the first warmup_steps steps (0 = none)."""

    def __post_init__(self) -> None:
        check_literals(self, ConfigError)
        if self.warmup_steps < 0:
            raise ConfigError(f"optim.warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.lr <= 0 or self.min_lr < 0 or self.min_lr > self.lr:
            raise ConfigError(f"optim: need lr > 0 and 0 <= min_lr <= lr, got lr={self.lr}, min_lr={self.min_lr}")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ConfigError(f"optim.betas must be two numbers in [0, 1), got {self.betas}")


@dataclass
class DistConfig:
    """Multi-process training (launch with torchrun; see docs/SCALING.md). batch_size is the global batch."""

    backend: DistBackend = field(default="auto", metadata=RESUME_MAY_CHANGE)
    """torch.distributed backend when WORLD_SIZE > 1: auto (nccl on CUDA, gloo on CPU), nccl or gloo."""
    sync_bn: bool = False
    """Compute BatchNorm statistics over the global batch (SyncBatchNorm on CUDA, an all-reducing BatchNorm
    on CPU). Off: each rank normalises over its own slice; running statistics are averaged over ranks
    before validation and checkpoints."""

    def __post_init__(self) -> None:
        check_literals(self, ConfigError)


@dataclass
class TrainConfig:
    """Everything one training run needs. The defaults are the paper's settings."""

    model: ModelConfig = field(default_factory=ModelConfig)
    """The network (`mgid.models.ModelConfig`)."""
    loss: LossWeights = field(default_factory=LossWeights)
    """The objective (`mgid.losses.LossWeights`)."""
    embedded: EmbeddedDataConfig = field(default_factory=EmbeddedDataConfig)
    """The embedded synthetic time-lapse data (used when `data` is unset) and its held-out paired set."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """Optimiser and schedule."""
    data: str | None = None
    """Time-lapse training data folder (MGID pairs, scene folders or flat <scene>_<frame> files; a folder
    with train/ uses train/); unset = the embedded synthetic set (no download)."""
    layout: DataLayout = "auto"
    """Layout of the data folder: auto, mgid, scenes or flat."""
    pair_preprocessing: PairPreprocessing = "crop"
    """How frames are cut from MGID side-by-side pair images (layout mgid): crop (the random crop and flip of every
    layout, the halves in random order) or official (the public code's loader: each image resized to 512x256, left
    half frame 1, right half frame 2, no crop or flip; needs crop_size 256). Other layouts and the embedded data crop."""
    val_data: str | None = None
    """Paired (rainy, clean) folder for validation (rain/+norain/ or input/+target/); unset = the embedded
    held-out paired set."""
    init_weights: str | None = None
    """Start from the network and memory items of this checkpoint (NAME.safetensors with NAME.json beside
    it), i.e. fine-tune it (`mgid finetune` sets it to --weights); its network must be `model`. Unset = a
    freshly initialised network."""
    out: str = "runs/mgid"
    """Output folder: checkpoints/, tb/ (TensorBoard), samples/."""
    batch_size: int = 8
    """Pairs per step (the paper: 8)."""
    crop_size: int = 256
    """Side of the random square crop cut from both frames of a pair (the paper: 256)."""
    epochs: int = field(default=200, metadata=RESUME_MAY_CHANGE)
    """Passes over the training pairs (the paper: 200); ignored when max_steps is set."""
    max_steps: int | None = field(default=None, metadata=RESUME_MAY_CHANGE)
    """Stop after this many optimiser steps in all (overrides epochs); unset = epochs x steps per epoch."""
    num_workers: int = field(default=0, metadata=RESUME_MAY_CHANGE)
    """DataLoader worker processes (0 = load in the main process). Any value gives the same batches."""
    seed: int = 0
    """Seeds the weights, the memory items, the data (scenes, rain, crops) and the batch order."""
    device: Device = field(default="auto", metadata=RESUME_MAY_CHANGE)
    """auto (CUDA when available), cpu or cuda."""
    ops: OpsMode = field(default="auto", metadata=RESUME_MAY_CHANGE)
    """Memory/whitening op implementation: auto, fused (the compiled kernels, fail if missing) or reference."""
    checkpoint_every: int = field(default=1000, metadata=RESUME_MAY_CHANGE)
    """Save OUT/checkpoints/last.* every this many steps (and always at the end); 0 = only at the end."""
    keep_step_checkpoints: bool = field(default=False, metadata=RESUME_MAY_CHANGE)
    """Also keep a step_XXXXXX.* copy of every checkpoint."""
    log_every: int = field(default=10, metadata=RESUME_MAY_CHANGE)
    """Write loss terms, lr and throughput to TensorBoard every this many steps."""
    image_every: int = field(default=500, metadata=RESUME_MAY_CHANGE)
    """Write sample image grids (input / de-rained / rain layer) to TensorBoard every this many steps; 0 = never."""
    val_every: int = field(default=1, metadata=RESUME_MAY_CHANGE)
    """Validate on the paired set every this many epochs (and always at the end); 0 = only at the end."""
    val_count: int | None = None
    """Paired images used for validation; unset = all (embedded: embedded.paired_count)."""
    bn_recalibration_batches: int = field(default=0, metadata=RESUME_MAY_CHANGE)
    """After the last step, re-estimate the BatchNorm running statistics of the final weights as a plain
    average over this many training batches (weights and memory items unchanged; `mgid.train.bn_recalibration`):
    the running averages lag behind the final weights. 0 = keep them as trained."""
    sample_rows: int = field(default=4, metadata=RESUME_MAY_CHANGE)
    """Rows (rainy | de-rained | clean) of OUT/samples/compare.png written at the end."""
    precision: TrainingPrecision = "auto"
    """Training arithmetic: fp32, bf16 (autocast) or fp16 (autocast + gradient scaling); auto = bf16 on a CPU
    whose bf16 instructions torch can use (AVX512-BF16 or AMX; `mgid.precision`), fp32 elsewhere (GPUs
    included). Measured by benchmarks/bench_train.py on both CPU kinds: with native bf16 about 2x fp32 per
    step with the same loss curve; without it bf16 is emulated and about 10x slower. The memory items,
    the weights and the loss stay fp32; the memory/whitening ops accumulate in fp32. Recipes leave it auto."""
    compile: bool = field(default=False, metadata=RESUME_MAY_CHANGE)
    """torch.compile the network (default inductor backend); the first steps are slower while it compiles."""
    channels_last: ChannelsLast = "auto"
    """channels_last memory format for the network and its inputs: on, off, or auto = on exactly when
    training in bf16 on a CPU (faster there; no gain in fp32). Recipes leave it auto."""
    dist: DistConfig = field(default_factory=DistConfig)
    """Multi-process (DDP) settings."""

    def __post_init__(self) -> None:
        check_literals(self, ConfigError)
        positive = {"batch_size": self.batch_size, "crop_size": self.crop_size, "epochs": self.epochs,
                    "log_every": self.log_every, "sample_rows": self.sample_rows}
        non_negative = {"num_workers": self.num_workers, "checkpoint_every": self.checkpoint_every,
                        "bn_recalibration_batches": self.bn_recalibration_batches,
                        "image_every": self.image_every, "val_every": self.val_every}
        for name, value in positive.items():
            if value < 1:
                raise ConfigError(f"{name} must be >= 1, got {value}")
        for name, value in non_negative.items():
            if value < 0:
                raise ConfigError(f"{name} must be >= 0, got {value}")
        for name in ("max_steps", "val_count"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"{name} must be >= 1 or unset (null), got {value}")

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (tuples as lists): YAML/JSON ready, and accepted by `from_dict`."""
        return _plain(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TrainConfig:
        """Build from a (partial) nested dict; missing fields keep their defaults, unknown ones raise.

        Checkpoints written before the memory format became a setting of its own stored ``channels_last``
        as true / false / null (auto); those values are read as on / off / auto, so such runs resume."""
        if "channels_last" in values and values["channels_last"] in (True, False, None):
            setting = {flag: name for name, flag in CHANNELS_LAST_SETTINGS.items()}[values["channels_last"]]
            values = {**values, "channels_last": setting}
        return build_dataclass(cls, values)


def resume_may_change(cls: type | None = None, prefix: str = "") -> frozenset[str]:
    """Dotted paths of the fields (of `TrainConfig` by default, nested ones included) marked `RESUME_MAY_CHANGE`."""
    cls = TrainConfig if cls is None else cls
    hints = _hints(cls)
    paths: set[str] = set()
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            paths |= resume_may_change(hints[f.name], f"{prefix}{f.name}.")
        elif f.metadata.get("resume") == RESUME_MAY_CHANGE["resume"]:
            paths.add(f"{prefix}{f.name}")
    return frozenset(paths)


# --------------------------------------------------------------------------------------------------
# named recipes (mgid/config/recipes/*.yaml) and YAML files

#: The folder of the named recipes, shipped inside the package.
RECIPE_DIR = resources.files("mgid.config") / "recipes"


def _parse_yaml(text: str, where: Any) -> dict[str, Any]:
    try:
        values = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where} is not valid YAML: {exc}") from exc
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ConfigError(f"{where} must hold a mapping of settings (like `mgid train --print-config` writes), "
                          f"got {type(values).__name__}")
    return values


def _expand_base(values: dict[str, Any], where: Any, seen: tuple[str, ...] = ()) -> dict[str, Any]:
    """``values`` on top of the recipe its ``base:`` names (recursively); without ``base:`` unchanged."""
    if BASE_KEY not in values:
        return values
    values = dict(values)
    base = values.pop(BASE_KEY)
    names = _recipe_names()
    if base not in names:
        raise ConfigError(f"{where}: {BASE_KEY}: {base!r} is not a named config; available: {', '.join(names)}")
    if base in seen:
        raise ConfigError(f"{where}: {BASE_KEY}: {base!r} leads back to itself ({' -> '.join(seen + (base,))})")
    return merge(_recipe(base, seen + (base,)), values)


@functools.cache
def _recipe_names() -> tuple[str, ...]:
    names = [p.name[: -len(".yaml")] for p in RECIPE_DIR.iterdir() if p.name.endswith(".yaml")]
    return tuple(sorted(names, key=lambda n: (n != "paper", n)))  # the paper (the defaults) first


def _recipe(name: str, seen: tuple[str, ...] = ()) -> dict[str, Any]:
    res = RECIPE_DIR / f"{name}.yaml"
    return _expand_base(_parse_yaml(res.read_text(encoding="utf-8"), f"mgid/config/recipes/{name}.yaml"),
                        f"mgid/config/recipes/{name}.yaml", seen or (name,))


#: Each named recipe (``mgid/config/recipes/NAME.yaml``, ``base:`` expanded): overrides applied on top of
#: `TrainConfig`'s defaults. ``paper`` is the defaults themselves (and its own output folder).
NAMED_CONFIGS: dict[str, dict[str, Any]] = {name: _recipe(name) for name in _recipe_names()}


def load_yaml(path: str | Path) -> dict[str, Any]:
    """The mapping in a YAML config file, with ``base: NAME`` expanded.

    Args:
        path: the YAML file.

    Returns:
        The nested settings (empty for an empty file: no overrides).

    Raises:
        ConfigError: a missing file, invalid YAML, not a mapping, or a bad ``base``.
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    return _expand_base(_parse_yaml(p.read_text(encoding="utf-8"), p), p)


def config_overrides(name_or_path: str | None) -> dict[str, Any]:
    """The overrides of a named config or of a YAML file.

    Args:
        name_or_path: a name of `NAMED_CONFIGS`, the path of a YAML file, or ``None`` (no overrides).

    Returns:
        The nested overrides (a copy).

    Raises:
        ConfigError: neither a named config nor a readable YAML file.
    """
    if name_or_path is None:
        return {}
    if name_or_path in NAMED_CONFIGS:
        return copy.deepcopy(NAMED_CONFIGS[name_or_path])
    if Path(name_or_path).suffix.lower() in YAML_SUFFIXES or Path(name_or_path).is_file():
        return load_yaml(name_or_path)
    raise ConfigError(f"unknown config {name_or_path!r}: give a named config ({', '.join(NAMED_CONFIGS)}) "
                      f"or the path of a .yaml file")


def resolve_config(config: str | None = None, overrides: Mapping[str, Any] | None = None,
                   base: Mapping[str, Any] | None = None) -> TrainConfig:
    """Resolve a configuration: ``base`` < named config or YAML file ``config`` < ``overrides``.

    Args:
        config: a name of `NAMED_CONFIGS`, the path of a YAML file, or ``None``.
        overrides: nested settings that win over the rest (e.g. ``{"model": {"memory_items": 30}}``).
        base: nested settings to start from (default: the dataclass defaults, the paper's).

    Returns:
        The checked `TrainConfig`.

    Raises:
        ConfigError: an unknown config, a bad file, an unknown key or a bad value (naming the dotted field).
    """
    values = dict(base) if base is not None else TrainConfig().to_dict()
    values = merge(values, config_overrides(config))
    values = merge(values, overrides or {})
    return TrainConfig.from_dict(values)


def to_yaml(cfg: TrainConfig) -> str:
    """``cfg`` as YAML, in field order (loadable with ``--config FILE.yaml``)."""
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False, default_flow_style=False)


def diff(a: TrainConfig, b: TrainConfig) -> dict[str, tuple[Any, Any]]:
    """Fields (dotted paths) whose values differ: ``{path: (a's, b's)}``."""
    out: dict[str, tuple[Any, Any]] = {}

    def walk(x: Any, y: Any, path: str) -> None:
        if isinstance(x, dict) and isinstance(y, dict):
            for k in x.keys() | y.keys():
                walk(x.get(k), y.get(k), f"{path}.{k}" if path else k)
        elif x != y:
            out[path] = (x, y)

    walk(a.to_dict(), b.to_dict(), "")
    return dict(sorted(out.items()))


# --------------------------------------------------------------------------------------------------
# command-line options generated from the fields (`mgid.config.fields`), with TrainConfig's defaults

#: Metavars of path fields in --help.
METAVARS: dict[str, str] = {"data": "DIR", "val_data": "DIR", "out": "DIR"}


def add_config_arguments(parser: argparse.ArgumentParser, cls: type = TrainConfig, defaults: Any = None,
                         prefix: str = "") -> list[OptionSpec]:
    """`mgid.config.fields.add_config_arguments` for ``cls`` (default `TrainConfig`), path fields shown as DIR."""
    return _fields.add_config_arguments(parser, cls, defaults, prefix, METAVARS)

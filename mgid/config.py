"""Training settings as one typed object, named recipes (YAML files), YAML files and command-line options.

`TrainConfig` composes the settings of every part (`ModelConfig`, `LossWeights`,
`EmbeddedDataConfig`, `OptimConfig`) plus the run's own (batch, crops, length, logging, paths). Its
defaults are the paper's settings. A configuration is resolved in this order, later wins:

1. the dataclass defaults (the paper),
2. a named recipe (``paper``, ``cpu``, ``quick``: ``mgid/configs/NAME.yaml``, shipped with the package, see
   `NAMED_CONFIGS`) or a YAML file (``--config``); either may start from a named recipe with ``base: NAME``,
3. command-line overrides, one option per field (``--batch_size 4``, ``--model.memory_items 30``,
   ``--embedded.rain.density_range 5 20``; top-level fields also spell with dashes: ``--max-steps``).

One source for each fact: a field's type, default and help are its annotation, its default and its
docstring (an attribute docstring or a Google ``Attributes:`` entry); the allowed values of a choice are
its ``Literal[...]`` type (`mgid.literals`), which YAML/JSON loading, the dataclass itself and ``--help``
all read.

Libraries and what stays by hand
--------------------------------
Field help comes from `docstring_parser` (the docstring reader tyro, jsonargparse and simple-parsing use).
The command-line layer stays by hand (`add_config_arguments`, `overrides_from_args`, ~80 lines): the
parsers belong to ``mgid.training`` and ``mgid.cli`` (plain `argparse` parsers with options of their own)
and the run is resolved in two stages (defaults or a resumed checkpoint's config < ``--config`` <
*the options actually given*). tyro, simple-parsing and jsonargparse each own the parser and return a
finished object, not the options given; and their flag styles differ from the documented ones (tyro:
``--model.memory-items``, ``--model.no-double-tanh``; jsonargparse: no bare ``--model.grad_through_weights``,
tuples as ``[1,2]``, no ``--max-steps`` spelling). OmegaConf structured configs reject ``Literal`` (enums
only). Building the dataclasses from nested dicts (`build_dataclass`, ~40 lines) stays by hand too, so a
bad value is a `ConfigError` that names the dotted field and the expected type or allowed values and an
unknown key lists the valid ones, and YAML lists become tuples (checked element by element, ints accepted
as floats) without a second validation library.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import functools
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal, get_args

import docstring_parser
import yaml

from mgid.data import EmbeddedDataConfig
from mgid.data.timelapse import Layout
from mgid.literals import check_choice, check_literals, literal_values
from mgid.losses import LossWeights
from mgid.models import ModelConfig
from mgid.ops._dispatch import OpsMode

Device = Literal["auto", "cpu", "cuda"]
DataLayout = Literal["auto", Layout]
Schedule = Literal["constant", "cosine"]
Precision = Literal["auto", "fp32", "bf16", "fp16"]
DistBackend = Literal["auto", "nccl", "gloo"]
DEVICES, DATA_LAYOUTS, SCHEDULES = get_args(Device), get_args(DataLayout), get_args(Schedule)
PRECISIONS, DIST_BACKENDS, OPS_MODES = get_args(Precision), get_args(DistBackend), get_args(OpsMode)
YAML_SUFFIXES = (".yaml", ".yml")
#: Key of a recipe or YAML file naming the recipe it starts from (``base: cpu``).
BASE_KEY = "base"
#: Prefix of the argparse ``dest`` of generated options, so they never clash with other options.
DEST_PREFIX = "cfg:"


class ConfigError(ValueError):
    """A setting is unknown, of the wrong type or out of range; the message says which and how to fix it."""


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
    val_data: str | None = None
    """Paired (rainy, clean) folder for validation (rain/+norain/ or input/+target/); unset = the embedded
    held-out paired set."""
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
    average over this many training batches (weights and memory items unchanged; `mgid.bn_recalibration`):
    the running averages lag behind the final weights. 0 = keep them as trained."""
    sample_rows: int = field(default=4, metadata=RESUME_MAY_CHANGE)
    """Rows (rainy | de-rained | clean) of OUT/samples/compare.png written at the end."""
    precision: Precision = "auto"
    """Training arithmetic: fp32, bf16 (autocast) or fp16 (autocast + gradient scaling); auto = bf16 on a CPU
    with native bf16 instructions (AVX512-BF16 or AMX: 2.2x faster per step, the same loss curve, see
    benchmarks/bench_train.py) and fp32 elsewhere (GPUs: unmeasured). The memory items, the weights and the
    loss stay fp32; the memory/whitening ops accumulate in fp32."""
    compile: bool = field(default=False, metadata=RESUME_MAY_CHANGE)
    """torch.compile the network (default inductor backend); the first steps are slower while it compiles."""
    channels_last: bool | None = None
    """Keep the network and its inputs in channels_last memory format (faster CPU convolutions under bf16);
    unset = on exactly when training in bf16 on a CPU."""
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
        """Build from a (partial) nested dict; missing fields keep their defaults, unknown ones raise."""
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
# building dataclasses from nested dicts, with type checks


def _plain(value: Any) -> Any:
    """Tuples -> lists, recursively (for YAML/JSON)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _is_optional(tp: Any) -> tuple[bool, Any]:
    """(True, X) for ``X | None`` / ``Optional[X]``, else (False, tp)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return True, args[0]
    return False, tp


def _type_name(tp: Any) -> str:
    optional, inner = _is_optional(tp)
    if optional:
        return f"{_type_name(inner)} or null"
    if typing.get_origin(tp) is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return f"list of {_type_name(args[0])}"
        return f"list of {len(args)} {_type_name(args[0])}"
    return getattr(tp, "__name__", str(tp))


def _coerce(tp: Any, value: Any, path: str) -> Any:
    """``value`` checked against (and converted to) type ``tp``; `ConfigError` naming ``path`` otherwise."""
    optional, inner = _is_optional(tp)
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{path} cannot be null (expected {_type_name(tp)})")
    tp = inner
    allowed = literal_values(tp)
    if allowed is not None:
        check_choice(value, allowed, path, ConfigError)
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{path} must be a mapping of {tp.__name__} fields, got {value!r}")
        return build_dataclass(tp, value, path)
    if typing.get_origin(tp) is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected {_type_name(tp)}, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v, f"{path}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{path} must have {len(args)} values, got {len(value)}: {list(value)}")
        return tuple(_coerce(a, v, f"{path}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    else:  # an annotation this module does not know: accept as is
        return value
    raise ConfigError(f"{path}: expected {_type_name(tp)}, got {value!r} ({type(value).__name__})")


def build_dataclass(cls: type, values: Mapping[str, Any], path: str = "") -> Any:
    """An instance of dataclass ``cls`` from a (partial) nested mapping, types checked.

    Unknown keys raise `ConfigError` listing the valid ones; ``Literal`` fields must hold one of their
    values; the dataclass's own checks (``__post_init__``) run too, and their ``ValueError`` is
    re-raised as `ConfigError`.
    """
    hints = _hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in values if k not in names]
    if unknown:
        where = f"{path}." if path else ""
        raise ConfigError(f"unknown setting(s) {', '.join(where + str(k) for k in unknown)}; "
                          f"valid {f'fields of {path}' if path else 'top-level fields'}: {', '.join(names)}")
    kwargs = {k: _coerce(hints[k], v, f"{path}.{k}" if path else k) for k, v in values.items()}
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{path or cls.__name__}: {exc}") from exc


def merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of nested dict ``base`` with ``override`` applied (mappings merged, other values replaced)."""
    out = copy.deepcopy(base)
    for k, v in override.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


# --------------------------------------------------------------------------------------------------
# named recipes (mgid/configs/*.yaml) and YAML files

#: The folder of the named recipes, shipped inside the package.
RECIPE_DIR = resources.files("mgid") / "configs"


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
    return _expand_base(_parse_yaml(res.read_text(encoding="utf-8"), f"mgid/configs/{name}.yaml"),
                        f"mgid/configs/{name}.yaml", seen or (name,))


#: Each named recipe (``mgid/configs/NAME.yaml``, ``base:`` expanded): overrides applied on top of
#: `TrainConfig`'s defaults. ``paper`` is the defaults themselves (and its own output folder).
NAMED_CONFIGS: dict[str, dict[str, Any]] = {name: _recipe(name) for name in _recipe_names()}


def load_yaml(path: str | Path) -> dict[str, Any]:
    """The mapping in a YAML config file (empty file = no overrides; ``base: NAME`` expanded)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    return _expand_base(_parse_yaml(p.read_text(encoding="utf-8"), p), p)


def config_overrides(name_or_path: str | None) -> dict[str, Any]:
    """The overrides of a named config (`NAMED_CONFIGS`) or of a YAML file; ``None`` = none."""
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
    """``base`` (default: the defaults) < named config / YAML file ``config`` < ``overrides`` (nested dict)."""
    values = dict(base) if base is not None else TrainConfig().to_dict()
    values = merge(values, config_overrides(config))
    values = merge(values, overrides or {})
    return TrainConfig.from_dict(values)


def named_config(name: str) -> TrainConfig:
    """The named configuration ``name`` (see `NAMED_CONFIGS`)."""
    if name not in NAMED_CONFIGS:
        raise ConfigError(f"unknown named config {name!r}; available: {', '.join(NAMED_CONFIGS)}")
    return resolve_config(name)


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
# command-line options generated from the fields


def field_docs(cls: type) -> dict[str, str]:
    """One-line documentation of each field of dataclass ``cls`` (attribute docstrings or ``Attributes:``)."""
    try:
        parsed = docstring_parser.parse_from_object(cls)
    except (OSError, TypeError, SyntaxError):  # no source (frozen app): fall back to names only
        return {}
    names = {f.name for f in dataclasses.fields(cls)}
    return {p.arg_name: " ".join((p.description or "").split()) for p in parsed.params if p.arg_name in names}


#: Metavars of path fields in --help.
METAVARS: dict[str, str] = {"data": "DIR", "val_data": "DIR", "out": "DIR"}
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def parse_bool(text: str) -> bool:
    """``true/false``, ``yes/no``, ``on/off``, ``1/0`` (any case)."""
    t = text.strip().lower()
    if t in _TRUE:
        return True
    if t in _FALSE:
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _nullable(parse: Any) -> Any:
    def convert(text: str) -> Any:
        return None if text.strip().lower() in ("none", "null", "") else parse(text)
    convert.__name__ = getattr(parse, "__name__", "value")  # argparse names the type in its errors
    return convert


@dataclass(frozen=True)
class OptionSpec:
    """One generated option: the dotted field path, its type, default and documentation."""

    path: str
    type: Any
    default: Any
    doc: str


def iter_fields(cls: type, instance: Any, prefix: str = "") -> list[OptionSpec]:
    """Every leaf field of dataclass ``cls`` (nested dataclasses flattened), with ``instance``'s values."""
    specs: list[OptionSpec] = []
    hints = _hints(cls)
    docs = field_docs(cls)
    for f in dataclasses.fields(cls):
        path = f"{prefix}{f.name}"
        value = getattr(instance, f.name)
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            specs.extend(iter_fields(tp, value, f"{path}."))
        else:
            specs.append(OptionSpec(path, tp, value, docs.get(f.name, "")))
    return specs


def _format_default(value: Any) -> str:
    if value is None:
        return "unset"
    if isinstance(value, (list, tuple)):
        return " ".join(str(v) for v in value) if value else "(empty)"
    return str(value)


def _add_option(parser: argparse._ActionsContainer, spec: OptionSpec) -> None:
    path = spec.path
    flags = [f"--{path}"]
    dashed = f"--{path.replace('_', '-')}"
    if dashed != flags[0]:
        flags.append(dashed)
    optional, tp = _is_optional(spec.type)
    kwargs: dict[str, Any] = {"dest": DEST_PREFIX + path, "default": argparse.SUPPRESS}
    choices = literal_values(tp)
    if choices is not None:  # a Literal: argparse checks the value and --help lists the choices
        kwargs.update(type=str, choices=choices, metavar="{" + ",".join(choices) + "}")
    elif typing.get_origin(tp) is tuple:
        args = typing.get_args(tp)
        variadic = len(args) == 2 and args[1] is Ellipsis
        elem = args[0]
        kwargs["nargs"] = "*" if variadic else len(args)
        kwargs["type"] = parse_bool if elem is bool else elem
        kwargs["metavar"] = elem.__name__.upper()
    elif tp is bool:
        kwargs.update(nargs="?", const=True, type=_nullable(parse_bool) if optional else parse_bool, metavar="BOOL")
    else:
        parse = tp if tp in (int, float, str) else str
        kwargs["type"] = _nullable(parse) if optional else parse
        kwargs["metavar"] = tp.__name__.upper() if tp in (int, float, str) else "VALUE"
    if path in METAVARS:
        kwargs["metavar"] = METAVARS[path]
    help_text = spec.doc.replace("%", "%%")
    extra = " (null/none to unset)" if optional else ""
    kwargs["help"] = f"{help_text} [default: {_format_default(spec.default)}]{extra}".strip()
    parser.add_argument(*flags, **kwargs)


def add_config_arguments(parser: argparse.ArgumentParser, cls: type = TrainConfig, defaults: Any = None,
                         prefix: str = "") -> list[OptionSpec]:
    """Add one option per leaf field of ``cls`` to ``parser``, grouped by section.

    Options default to "not given" (``argparse.SUPPRESS``) so `overrides_from_args` can tell an
    explicit value from a default; the help text shows each field's default (from ``defaults``,
    default ``cls()``). ``prefix`` prepends to every option and field path (``rain.`` ...). Every
    option also has a dashed spelling (``--max-steps`` for ``--max_steps``). Returns the specs added.
    """
    instance = defaults if defaults is not None else cls()
    specs = iter_fields(cls, instance, prefix)
    groups: dict[str, argparse._ArgumentGroup] = {}
    for spec in specs:
        section = spec.path[len(prefix):].split(".")[0] if "." in spec.path[len(prefix):] else ""
        if section not in groups:
            title = f"{section} settings" if section else "run settings"
            groups[section] = parser.add_argument_group(title)
        _add_option(groups[section], spec)
    return specs


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The explicitly given generated options of ``args`` as a nested dict (``{"model": {"memory_items": 30}}``)."""
    out: dict[str, Any] = {}
    for dest, value in vars(args).items():
        if not dest.startswith(DEST_PREFIX):
            continue
        keys = dest[len(DEST_PREFIX):].split(".")
        node = out
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = list(value) if isinstance(value, list) else value
    return out

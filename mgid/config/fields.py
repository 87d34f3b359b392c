"""Typed dataclasses <-> nested dicts <-> command-line options: the general layer under `mgid.config.train_config`.

Nothing here knows mgid's settings. `build_dataclass` builds a nested dataclass from a partial nested mapping,
checking each value against its annotation (`ConfigError` names the dotted field); `merge` layers nested dicts;
`add_config_arguments` adds one ``argparse`` option per leaf field and `overrides_from_args` returns only the
options given. Why by hand: docs/TRAIN.md, "Design notes".
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import docstring_parser

from mgid.config.literals import check_choice, literal_values
from mgid.errors import MgidError

#: Prefix of the argparse ``dest`` of generated options, so they never clash with other options.
DEST_PREFIX = "cfg:"


class ConfigError(MgidError, ValueError):
    """A setting is unknown, of the wrong type or out of range; the message says which and how to fix it."""

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

    Args:
        cls: the dataclass.
        values: the settings; missing fields keep their defaults, nested dataclasses take nested mappings.
        path: dotted prefix of the fields, for messages.

    Returns:
        The instance.

    Raises:
        ConfigError: an unknown key (listing the valid ones), a value of the wrong type or outside its
            ``Literal`` values, or a ``ValueError`` of the dataclass's own ``__post_init__`` checks.
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
# command-line options generated from the fields


def field_docs(cls: type) -> dict[str, str]:
    """One-line documentation of each field of dataclass ``cls`` (attribute docstrings or ``Attributes:``)."""
    try:
        parsed = docstring_parser.parse_from_object(cls)
    except (OSError, TypeError, SyntaxError):  # no source (frozen app): fall back to names only
        return {}
    names = {f.name for f in dataclasses.fields(cls)}
    return {p.arg_name: " ".join((p.description or "").split()) for p in parsed.params if p.arg_name in names}


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


def _add_option(parser: argparse._ActionsContainer, spec: OptionSpec, metavars: Mapping[str, str]) -> None:
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
    if path in metavars:
        kwargs["metavar"] = metavars[path]
    help_text = spec.doc.replace("%", "%%")
    extra = " (null/none to unset)" if optional else ""
    kwargs["help"] = f"{help_text} [default: {_format_default(spec.default)}]{extra}".strip()
    parser.add_argument(*flags, **kwargs)


def add_config_arguments(parser: argparse.ArgumentParser, cls: type, defaults: Any = None, prefix: str = "",
                         metavars: Mapping[str, str] | None = None) -> list[OptionSpec]:
    """Add one option per leaf field of ``cls`` to ``parser``, grouped by section.

    Options default to "not given" (``argparse.SUPPRESS``) so `overrides_from_args` can tell an
    explicit value from a default; the help text shows each field's default (from ``defaults``,
    default ``cls()``). ``prefix`` prepends to every option and field path (``rain.`` ...). Every
    option also has a dashed spelling (``--max-steps`` for ``--max_steps``).

    Args:
        parser: the parser to extend.
        cls: the config dataclass.
        defaults: the instance whose values ``--help`` shows (default ``cls()``).
        prefix: prepended to every option and field path (``rain.`` ...).
        metavars: maps a dotted field path to its ``--help`` metavar (``{"out": "DIR"}``).

    Returns:
        The specs added.
    """
    instance = defaults if defaults is not None else cls()
    specs = iter_fields(cls, instance, prefix)
    groups: dict[str, argparse._ArgumentGroup] = {}
    for spec in specs:
        section = spec.path[len(prefix):].split(".")[0] if "." in spec.path[len(prefix):] else ""
        if section not in groups:
            title = f"{section} settings" if section else "run settings"
            groups[section] = parser.add_argument_group(title)
        _add_option(groups[section], spec, metavars or {})
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

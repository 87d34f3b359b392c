"""Allowed values of a setting written as its type, ``Literal[...]``, and checked from that type.

A config dataclass annotates a choice field with a ``Literal`` alias (``PadMode = Literal["reflect",
"replicate"]``) and calls `check_literals` in ``__post_init__``; the tuple of allowed values other
code needs (``PAD_MODES = get_args(PadMode)``) and `mgid.config.train_config`'s loading and ``--help`` read the
same type, so the choices live in one place.
"""
from __future__ import annotations

import dataclasses
import functools
import types
import typing
from typing import Any, Literal, get_args  # noqa: F401  (re-exported for the config modules)

__all__ = ["Literal", "check_choice", "check_literals", "get_args", "literal_values"]


def literal_values(tp: Any) -> tuple[Any, ...] | None:
    """The allowed values of ``Literal[...]`` or ``Literal[...] | None`` (None included), else ``None``."""
    if typing.get_origin(tp) is Literal:
        return typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1 and len(args) == 2 and typing.get_origin(inner[0]) is Literal:
            return typing.get_args(inner[0]) + (None,)
    return None


@functools.cache
def _literal_fields(cls: type) -> tuple[tuple[str, tuple[Any, ...]], ...]:
    hints = typing.get_type_hints(cls)
    return tuple((f.name, values) for f in dataclasses.fields(cls)
                 if (values := literal_values(hints[f.name])) is not None)


def check_choice(value: Any, allowed: tuple[Any, ...], name: str, error: type[Exception] = ValueError) -> None:
    """Raise ``error`` naming ``name`` and the allowed values unless ``value`` is one of them."""
    if not any(value == a and type(value) is type(a) for a in allowed):
        shown = ", ".join("null" if a is None else str(a) for a in allowed)
        raise error(f"{name} must be one of {shown}, got {value!r}")


def check_literals(obj: Any, error: type[Exception] = ValueError) -> None:
    """Check every ``Literal``-typed field of dataclass instance ``obj`` against its type."""
    for name, allowed in _literal_fields(type(obj)):
        check_choice(getattr(obj, name), allowed, name, error)

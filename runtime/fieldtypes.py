"""The field types a wire message may declare (runtime/protocol.py `message`), and how the
codec checks a decoded value against one: a check (with the type's name, for the error) and
the exact types it accepts, for the fast path. msgpack produces exact types only; bool is
never taken for an int, an int is taken for a float."""

from __future__ import annotations

import types
import typing
from collections.abc import Callable
from typing import Any

__all__ = ["field_check", "field_types"]

_ANY_CHECK = (lambda value: True, "any msgpack value")


def field_check(annotation: Any) -> tuple[Callable[[Any], bool], str]:
    """A type check for one declared field type: bool is never accepted as an int."""
    if annotation is Any:
        return _ANY_CHECK
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        parts = [field_check(a) for a in typing.get_args(annotation)]
        return (
            lambda v: any(check(v) for check, _ in parts),
            " or ".join(name for _, name in parts),
        )
    origin = typing.get_origin(annotation) or annotation
    if annotation is type(None):
        return (lambda v: v is None, "nil")
    if origin is int:
        return (lambda v: type(v) is int, "int")
    if origin is float:
        return (lambda v: type(v) is float or type(v) is int, "float")
    if origin in (str, bytes, bool, list, dict):
        return (lambda v, t=origin: type(v) is t, origin.__name__)
    raise TypeError(f"unsupported field type in a message declaration: {annotation!r}")


def field_types(annotation: Any) -> frozenset[type] | None:
    """The exact types `field_check(annotation)` accepts (None: any value), so that `decode`
    checks a field with one set lookup."""
    if annotation is Any:
        return None
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        parts = [field_types(a) for a in typing.get_args(annotation)]
        return None if None in parts else frozenset().union(*parts)
    origin = typing.get_origin(annotation) or annotation
    if annotation is type(None):
        return frozenset([type(None)])
    return frozenset([float, int]) if origin is float else frozenset([origin])

"""The field types a wire message may declare (runtime/protocol.py `message`): for each, the
exact types a decoded value may have (msgpack produces exact types only; bool is never taken
for an int, an int is taken for a float) and the name an error gives it."""

from __future__ import annotations

import types
import typing
from typing import Any

__all__ = ["field_type"]


def field_type(annotation: Any) -> tuple[frozenset[type] | None, str]:
    """(the types a value of this declared field type may have, None for any; its name)."""
    if annotation is Any:
        return None, "any msgpack value"
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        parts = [field_type(a) for a in typing.get_args(annotation)]
        allowed = [t for t, _ in parts]
        union = None if None in allowed else frozenset().union(*allowed)
        return union, " or ".join(name for _, name in parts)
    if annotation is type(None):
        return frozenset([type(None)]), "nil"
    origin = typing.get_origin(annotation) or annotation
    if origin is float:
        return frozenset([float, int]), "float"
    if origin in (int, str, bytes, bool, list, dict):
        return frozenset([origin]), origin.__name__
    raise TypeError(f"unsupported field type in a message declaration: {annotation!r}")

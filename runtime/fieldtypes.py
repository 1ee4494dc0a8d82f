"""The field types a wire message may declare (runtime/protocol.py `message`): for each, the
exact types a decoded value may have (msgpack produces exact types only; bool is never taken
for an int, an int is taken for a float) and the name an error gives it; and
`find_unencodable`, which names the part of a value msgpack cannot carry."""

from __future__ import annotations

import types
import typing
from typing import Any

__all__ = ["field_type", "find_unencodable"]


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


def find_unencodable(value: Any, path: str) -> str | None:
    """Describe the first part of `value` msgpack cannot encode, or None if it all encodes."""
    # Iterative depth-first walk: values nested ~1,000 deep are legal msgpack, deeper than
    # Python's recursion limit allows a recursive walk to go.
    stack: list[tuple[Any, str, int]] = [(value, path, 0)]
    while stack:
        item, where, depth = stack.pop()
        if depth > _MAX_DEPTH:
            return f"{where} is nested more than {_MAX_DEPTH} levels deep (or contains itself)"
        if item is None or isinstance(item, bool | str | bytes | float):
            continue
        if isinstance(item, int):
            if -(2**63) <= item < 2**64:
                continue
            return f"{where} is an integer too large for msgpack (64 bits at most)"
        if isinstance(item, list | tuple):
            stack.extend(
                (v, f"{where}[{i}]", depth + 1) for i, v in reversed(list(enumerate(item)))
            )
            continue
        if isinstance(item, dict):
            children = []
            for key, v in item.items():
                if (
                    not isinstance(key, str | bytes | int | float | bool | tuple)
                    and key is not None
                ):
                    return f"{where} has a key of type {type(key).__name__} ({key!r})"
                children.append((key, f"{where} key {key!r}", depth + 1))
                children.append((v, f"{where}[{key!r}]", depth + 1))
            stack.extend(reversed(children))
            continue
        return (
            f"{where} is of type {type(item).__name__}, which msgpack cannot encode "
            "(use None, bool, int, float, str, bytes, list, tuple or dict)"
        )
    return None


# Below msgpack's own limits (it packs ~1,025 levels and unpacks 1,024) and Python's recursion
# limit, so a value this walk accepts for depth also decodes on the other side.
_MAX_DEPTH = 1000

"""Kept results: a task's result that stays on the executor that made it, and futures passed
as arguments to other tasks.

`client.submit(f, x, keep=True)` (or `map(..., keep=True)`) asks the executor to keep the
result: it is packed as a one-argument call (`pack_kept`, so that a big list travels in
blocks, as a partition does) into the executor's spool, and its *reference* is what the
executor reports and the scheduler forwards. The future completes with the reference;
`future.result()` fetches the value on demand over the data path (runtime/kept_futures.py).

A kept future passed to another task (`client.submit(g, fut, [fut2, 3])`, or `map` over
futures) becomes an *input*: the client packs the call with None in the future's place and
lists `[path, task_id]` for each (`find_inputs`); the scheduler runs the task once its
inputs exist, on the executor holding most of their bytes if it can, and sends each
input's reference with the launch; the executor reads each input (from its own spool, a
file on its host, or its holder's data server), a piece and a block at a time with record
boundaries between them, and puts it in place (`resolve_inputs`). A positional argument
the task gates stays packed (`payloads.Blocks`), as a big argument from the client does.

Discussion: why the packed bytes, not the Python object. A kept value is held as its
packed bytes in a RAM-backed file: it costs no decode for a remote reader, a memory
figure that is exact (the file's size), no garbage collector time, and it survives the
task's greenlet with no reference from the kernel. The price is a decode per local read,
which the task pays as it iterates (`Blocks`, ~0.3 ms a block of 8,192 ints), not up front.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from tidal.runtime import payloads
from tidal.runtime.datastore import DataUnavailable, Reference
from tidal.runtime.protocol import ProtocolError

__all__ = [
    "InputUnavailable",
    "find_inputs",
    "input_ids",
    "pack_kept",
    "resolve_inputs",
]

# How deep `find_inputs` looks for futures in an argument: lists, tuples and dict values
# nested this far (a partition of a million records is not walked: see `_walk`).
MAX_DEPTH = 4
# A sequence longer than this is not searched for futures (a partition, not a list of them).
MAX_SCAN_ITEMS = 10_000


class InputUnavailable(DataUnavailable):
    """A task's input (another task's kept result) cannot be had where the scheduler said it
    was: its executor is gone, say. The scheduler computes it again and reruns the task."""


def pack_kept(value: Any, boundary: Callable[[], None] | None = None) -> bytes:
    """A kept result's payload: the value as a call of one argument (a big list in blocks,
    `boundary()` after each block if given)."""
    return payloads.pack_call([value], {}, boundary=boundary)


# ---- the client: futures among a call's arguments ------------------------------------------


def find_inputs(
    args: list[Any], kwargs: dict[str, Any], is_future: Callable[[Any], bool]
) -> tuple[list[Any], dict[str, Any], list[list[Any]]]:
    """(args, kwargs, inputs): a call with each future (`is_future`) replaced by None, copied
    where it held one, and `[path, future]` for each. A path starts with the argument's
    index (an int) or keyword (a str), then the indices or keys into it."""
    found: list[list[Any]] = []
    new_args = [_walk(arg, [i], is_future, found, 0) for i, arg in enumerate(args)]
    new_kwargs = {k: _walk(v, [k], is_future, found, 0) for k, v in kwargs.items()}
    if not found:
        return args, kwargs, []
    return new_args, new_kwargs, found


def _walk(value: Any, path: list[Any], is_future: Callable[[Any], bool], found: list, depth: int):
    if is_future(value):
        found.append([path, value])
        return None
    if depth >= MAX_DEPTH:
        return value
    kind = type(value)
    if kind is list or kind is tuple:
        if len(value) > MAX_SCAN_ITEMS:
            return value
        before = len(found)
        items = [_walk(v, [*path, i], is_future, found, depth + 1) for i, v in enumerate(value)]
        if len(found) == before:
            return value
        return items  # a tuple goes out as an array anyway
    if kind is dict:
        if len(value) > MAX_SCAN_ITEMS:
            return value
        before = len(found)
        items = {k: _walk(v, [*path, k], is_future, found, depth + 1) for k, v in value.items()}
        return value if len(found) == before else items
    return value


def input_ids(inputs: Any) -> list[str] | None:
    """The task ids of a submitted task's `inputs` option (`[[path, task_id], ...]`), or
    None if it is not that shape (peer input: the scheduler checks it)."""
    if not isinstance(inputs, list) or not inputs:
        return None
    ids = []
    for entry in inputs:
        if not (
            isinstance(entry, list)
            and len(entry) == 2
            and isinstance(entry[0], list)
            and entry[0]
            and type(entry[0][0]) in (int, str)
            and all(type(step) in (int, str) for step in entry[0])
            and type(entry[1]) is str
        ):
            return None
        ids.append(entry[1])
    return ids


# ---- the executor: inputs put in place -------------------------------------------------------


def resolve_inputs(
    args: list[Any],
    kwargs: dict[str, Any],
    inputs: list[Any],
    fetch: Callable[[Reference], Iterable[bytes]],
    boundary: Callable[[], None],
    gated: Callable[[int], bool],
) -> None:
    """Put each input's value at its path in (args, kwargs): read where its reference says,
    a piece and a block at a time with `boundary()` after each; a positional argument that
    `gated` accepts stays packed (`payloads.Blocks`). InputUnavailable naming the input if
    it cannot be had, ProtocolError if `inputs` or a path does not fit the call."""
    for entry in inputs:
        if not (isinstance(entry, list) and len(entry) == 3 and type(entry[2]) is bytes):
            raise ProtocolError(
                f"launch.inputs must be [[path, task_id, reference], ...], got {entry!r:.80}"
            )
        path, task_id, blob = entry
        what = f"input {task_id}"
        if not payloads.is_reference(blob) or not isinstance(path, list) or not path:
            raise ProtocolError(f"{what} must be a reference at a path, got {path!r:.60}")
        lazy = len(path) == 1 and type(path[0]) is int and gated(path[0])
        try:
            value, kwargs_of_it = payloads.open_task_call(
                blob, fetch, boundary, lambda i, lazy=lazy: lazy
            )
        except DataUnavailable as exc:
            raise InputUnavailable(f"{what} (the kept result of task {task_id}): {exc}") from None
        if len(value) != 1 or kwargs_of_it:
            raise ProtocolError(f"{what} must hold one value (a kept result)")
        _place(args, kwargs, path, value[0], what)


def _place(args: list[Any], kwargs: dict[str, Any], path: list[Any], value: Any, what: str) -> None:
    head, *rest = path
    try:
        if not rest:
            if type(head) is int:
                args[head] = value
            else:
                kwargs[head] = value
            return
        holder = args[head] if type(head) is int else kwargs[head]
        for step in rest[:-1]:
            holder = holder[step]
        holder[rest[-1]] = value
    except (IndexError, KeyError, TypeError) as exc:
        raise ProtocolError(f"{what}'s path {path!r} does not fit the call: {exc}") from None

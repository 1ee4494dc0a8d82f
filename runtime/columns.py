"""Columnar bulk jobs: a chunked map's arguments as one packed array (protocol 13).

A map of tiny calls `fn(x, **kwargs)` travels as `submit.bulk` = one msgpack array of its
xs and `submit.kwargs` = their kwargs, packed once, instead of one payload per call. The
client packs the array with one `packb`; the scheduler finds where each x begins with one
scan (`scan`, in C: runtime/_columns.c) and cuts a chunk's launch out of it by position
(`Columns.launch`: `launch_chunk.columns`); the executor decodes a launch's xs a window at a
time (`LaunchColumns.window`), each window one `unpackb`.

Task i's payload, where one is needed (a task retried on its own, sent again after a
restart), is the bytes the classic path would have sent for it, `[[x], kwargs]`:
`Columns` is a sequence of those, made as they are asked for.

Discussion: for a map of 200,000 no-ops the classic path cost the client ~70 ms to pack a
payload per call and encode the list, and the scheduler ~35 ms to decode the list into
200,000 bytes objects and look at each; one array costs ~6 ms to pack and ~1 ms to scan.
"""

from __future__ import annotations

import bisect
import itertools
import operator
from collections.abc import Iterator, Sequence
from typing import Any, overload

import msgpack

from tidal.runtime import batches, payloads
from tidal.runtime import protocol as p

try:
    from tidal.runtime import _ccolumns
except ImportError:  # the extension is optional (setup.py): `_scan_slowly` does the same
    _ccolumns = None

__all__ = [
    "Columns",
    "LaunchColumns",
    "Unreadable",
    "bulk_count",
    "bulk_payloads",
    "pack_columns",
    "scan",
]

# An executor decodes a columnar launch's xs at most this many bytes at a time: one
# `unpackb` of 64 KiB of small values holds the GIL for well under a millisecond.
WINDOW_BYTES = 64 * 1024
_HEAD = payloads.ONE_ARGUMENT_CALL  # what a one-argument call's payload starts with


def scan(args: bytes) -> tuple[Sequence[int], int]:
    """Where each item of packed array `args` starts (and the last ends: one more offset than
    items), and the longest item's length. ProtocolError if `args` is not one array."""
    if type(args) is not bytes:
        kind = type(args).__name__
        raise p.ProtocolError(f"a columnar job's arguments must be bytes, not {kind}")
    if _ccolumns is None:
        return _scan_slowly(args)
    try:
        offsets, longest = _ccolumns.scan(args)
    except ValueError as exc:
        raise p.ProtocolError(f"a columnar job's arguments are {exc}") from None
    return memoryview(offsets).cast("I"), longest


def _scan_slowly(args: bytes) -> tuple[list[int], int]:
    """`scan` with msgpack's Unpacker: a Python call per item."""
    unpacker = msgpack.Unpacker(max_buffer_size=max(len(args), 1))
    unpacker.feed(args)
    try:
        count = unpacker.read_array_header()
        if count > len(args):
            raise ValueError("its array header claims more items than it has bytes")
        offsets = [unpacker.tell()]
        for _ in range(count):
            unpacker.skip()
            offsets.append(unpacker.tell())
    except Exception as exc:  # msgpack raises several types for bytes that are not one
        why = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        raise p.ProtocolError(
            f"a columnar job's arguments are not one packed array: {why}"
        ) from None
    if offsets[-1] != len(args):
        raise p.ProtocolError(
            "a columnar job's arguments are not one packed array: bytes follow the array's "
            "last item"
        )
    longest = max((b - a for a, b in itertools.pairwise(offsets)), default=0)
    return offsets, longest


def pack_columns(partitions: list[Any], packed_kwargs: bytes) -> Columns | None:
    """A map's calls `fn(x, **kwargs)` as columns (each x packed once, all in one `packb`),
    or None without the compiled scanner (scanning a Python call per item would cost more
    than it saves). Whether they may travel so is `small`; if not, `items()` are the
    packed xs for the classic path. EncodeError if msgpack cannot carry a partition (the
    caller names it)."""
    if _ccolumns is None:
        return None
    try:
        args = msgpack.packb(partitions, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as exc:
        raise p.EncodeError(f"cannot encode a partition: {exc}") from None
    return Columns(args, packed_kwargs)


class Columns(Sequence[bytes]):
    """A columnar job's calls as the scheduler (and a client sending them again) keeps them:
    the packed array of xs as it came, where each x starts, and the shared kwargs. Task i's
    payload (`[[x], kwargs]`, made when asked for) and a chunk's launch (`launch`) are cut
    out by position; nothing exists per task.

    ProtocolError if `args` is not one packed array or `kwargs` not bytes."""

    __slots__ = ("args", "kwargs", "longest", "offsets")

    def __init__(self, args: bytes, kwargs: bytes | None) -> None:
        if type(kwargs) is not bytes:
            raise p.ProtocolError("a columnar job's kwargs must be packed (bytes)")
        self.args, self.kwargs = args, kwargs
        self.offsets, self.longest = scan(args)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @overload
    def __getitem__(self, index: int) -> bytes: ...
    @overload
    def __getitem__(self, index: slice) -> list[bytes]: ...
    def __getitem__(self, index: int | slice) -> bytes | list[bytes]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        size = len(self)
        if index < 0:
            index += size
        if not 0 <= index < size:
            raise IndexError("task index out of range")
        offsets = self.offsets
        return b"".join((_HEAD, self.args[offsets[index] : offsets[index + 1]], self.kwargs))

    def __iter__(self) -> Iterator[bytes]:
        return (self[i] for i in range(len(self)))

    @property
    def payload_max(self) -> int:
        """The longest task payload `[[x], kwargs]` among them, in bytes."""
        return len(_HEAD) + self.longest + len(self.kwargs) if len(self) else 0

    @property
    def small(self) -> bool:
        """Whether each call packs under DATA_MIN_BYTES: a map travels as columns only
        then (the classic path carries bigger calls: blocked, spooled or counted as data)."""
        return self.payload_max < payloads.DATA_MIN_BYTES

    def data_bytes(self) -> int:
        """The bytes of the task payloads `[[x], kwargs]` of DATA_MIN_BYTES or more (what
        counts as task data), worked out from the offsets, no payload made (C loops)."""
        offsets, extra = self.offsets, len(_HEAD) + len(self.kwargs)
        sizes = map(extra.__add__, map(operator.sub, offsets[1:], offsets[:-1]))
        return sum(filter(payloads.DATA_MIN_BYTES.__le__, sizes))

    def items(self) -> list[memoryview]:
        """Each x's packed bytes, in order, as views of the array (cut out by C loops):
        `bulk.pack_calls` joins each into its call, so a copy here would be one more."""
        offsets, view = self.offsets, memoryview(self.args)
        return list(map(view.__getitem__, map(slice, offsets[:-1], offsets[1:])))

    def launch(self, start: int, stop: int) -> list[Any]:
        """`launch_chunk.columns` for tasks [start, stop): [count, their xs as one packed
        array, the kwargs]."""
        offsets, count = self.offsets, stop - start
        header = msgpack.Packer().pack_array_header(count)
        return [count, header + self.args[offsets[start] : offsets[stop]], self.kwargs]


def bulk_payloads(submit: p.Submit) -> Sequence[bytes]:
    """A bulk submit's task payloads: its list, or its columns (ProtocolError if they are
    not well formed)."""
    if type(submit.bulk) is bytes:
        return Columns(submit.bulk, submit.kwargs)
    return submit.bulk or []


def bulk_count(submit: p.Submit) -> int:
    """How many tasks a bulk submit names: its list's length, or its columns' array header
    (0 if that is not one)."""
    bulk = submit.bulk
    if type(bulk) is not bytes:
        return len(bulk or ())
    try:
        return batches.values_count(bulk)
    except p.ProtocolError:
        return 0


class Unreadable:
    """An x of a columnar launch that does not decode: its task fails with `error` alone."""

    __slots__ = ("error",)

    def __init__(self, error: p.ProtocolError) -> None:
        self.error = error


class LaunchColumns:
    """A columnar launch's xs as an executor reads them (`launch_chunk.columns`): tasks
    0 .. count - 1 of the launch, decoded a window at a time, never more than WINDOW_BYTES
    in one call (but for a single bigger x). Scanned at the first window, on the task
    thread, not where the launch arrives: if `args` is not an array of exactly `count`
    items, each x is `Unreadable`, saying why."""

    __slots__ = ("_args", "_broken", "_first", "_offsets", "_values", "count", "kwargs")

    def __init__(self, count: int, args: bytes, kwargs: bytes) -> None:
        self._args, self.kwargs, self.count = args, kwargs, count
        self._offsets: Sequence[int] | None = None
        self._broken: Unreadable | None = None
        self._first, self._values = 0, []  # the last window: the xs of tasks _first, ...

    def window(self, first: int, most: int) -> list[Any]:
        """The xs of tasks first, first + 1, ... (at most `most`, and as many as fit in
        WINDOW_BYTES, one at least), decoded; an x that does not decode is `Unreadable`."""
        if not self._first <= first < self._first + len(self._values):
            self._first, self._values = first, self._decode(first, most)
        return self._values[first - self._first : first - self._first + most]

    def call(self, x: Any) -> tuple[list[Any], dict[str, Any]]:
        """The (args, kwargs) of the call of one x (from `window`), kwargs decoded afresh
        for it, as a payload of its own would have been. ProtocolError if x or the kwargs
        do not decode."""
        if type(x) is Unreadable:
            raise x.error
        return [x], payloads.unpack_kwargs(self.kwargs, "the kwargs of a columnar launch")

    def _decode(self, first: int, most: int) -> list[Any]:
        offsets = self._scanned()
        if offsets is None:
            return [self._broken] * max(1, min(most, self.count - first))
        last = min(first + most, len(offsets) - 1)
        stop = bisect.bisect_right(offsets, offsets[first] + WINDOW_BYTES, first + 1, last + 1)
        stop = max(first + 1, stop - 1)
        count = stop - first
        piece = self._args[offsets[first] : offsets[stop]]
        try:
            return p.unpack_value(msgpack.Packer().pack_array_header(count) + piece)
        except Exception:  # msgpack raises many types: find the x that is wrong
            return [self._one(i) for i in range(first, stop)]

    def _scanned(self) -> Sequence[int] | None:
        """Where each x begins (None if the launch's xs are not what it says, `_broken`)."""
        if self._offsets is None and self._broken is None:
            try:
                offsets, _ = scan(self._args)
                if len(offsets) - 1 != self.count:
                    raise p.ProtocolError(
                        f"a columnar launch's arguments hold {len(offsets) - 1} items, "
                        f"not {self.count}"
                    )
                self._offsets = offsets
            except p.ProtocolError as exc:
                self._broken = Unreadable(exc)
        return self._offsets

    def _one(self, index: int) -> Any:
        offsets = self._scanned()
        try:
            return p.unpack_value(self._args[offsets[index] : offsets[index + 1]])
        except Exception as exc:
            return Unreadable(p.ProtocolError(f"argument {index} of the launch: {exc}"))

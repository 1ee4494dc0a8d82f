"""Payloads: task arguments and results, packed by one end and opened by the other.

A payload is one msgpack blob (`bytes`). The client packs a task's call (`pack_call`) and
the executor opens it when the task starts (`open_call`, then `unpack_block` for a big
argument's blocks, one at a time); the executor packs a result (`pack_payload`) and the
client unpacks it (`unpack_payload`). The scheduler only forwards the bytes
(runtime/protocol.py, docs/protocol.md "Payloads").
"""

from __future__ import annotations

import bisect
import dataclasses
import itertools
import operator
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import msgpack

from tidal.runtime import numblocks
from tidal.runtime.datastore import DATA_THRESHOLD, DataUnavailable, Reference, fetch_chunks
from tidal.runtime.protocol import (
    MAX_FRAME_BYTES,
    EncodeError,
    ProtocolError,
    find_unencodable,
    hashable_keys,
    refuse_extension,
    unpack_value,
)

__all__ = [
    "BLOCKED_MIN_BYTES",
    "BLOCKED_MIN_ITEMS",
    "DATA_MIN_BYTES",
    "Blocks",
    "is_big",
    "is_reference",
    "open_call",
    "open_reference",
    "open_task_call",
    "pack_batch",
    "pack_blocks",
    "pack_call",
    "pack_payload",
    "pack_reference",
    "pack_result",
    "packs_to_at_least",
    "unpack_block",
    "unpack_call",
    "unpack_kwargs",
    "unpack_payload",
]

# ---- payloads: task arguments and results, opened only at the ends -------------------------

# Discussion: the scheduler's one loop used to decode every submit's arguments and re-encode
# them into launches (and results the other way): ~130 ms for one 2 MB batch sweep, during
# which stream tasks waited. A payload is packed once by its sender and unpacked once by its
# receiver; everyone between moves bytes.

_CALL_HEADER = b"\x92"  # a msgpack array of two items: [args, kwargs]
# The start of a call of one argument, [[x], kwargs] (a map's): [args, kwargs], args of one.
ONE_ARGUMENT_CALL = b"\x92\x91"


def pack_payload(
    value: Any, where: str = "payload", boundary: Callable[[], None] | None = None
) -> bytes:
    """Pack one value (a task's result, say) as a payload.

    With `boundary` (the kernel's record boundary), a big list or tuple (`is_big`) is packed
    a block of items at a time with `boundary()` after each: the same bytes, but no single
    call holding the GIL for long.

    Raises EncodeError naming the part msgpack cannot carry, starting from `where`
    (`finished.result[1] is of type set, ...`).
    """
    try:
        if boundary is not None and is_big(value):
            return _pack_stepwise(value, boundary)
        return msgpack.packb(value, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as exc:
        problem = find_unencodable(value, where) or f"cannot encode {where}: {exc}"
        raise EncodeError(problem) from None


def _pack_stepwise(items: list[Any] | tuple[Any, ...], boundary: Callable[[], None]) -> bytes:
    """`msgpack.packb(items)`, packed a block at a time with `boundary()` after each.

    Discussion: msgpack arrays concatenate: the array's header, then each block's items
    packed as an array with that array's own header cut off, are the bytes `packb` makes.
    """
    items = tuple(items)  # what it held when the task returned, whatever runs between blocks
    header = msgpack.Packer(use_bin_type=True).pack_array_header(len(items))
    return header + b"".join(
        block[_array_header_size(count) :] for count, block in _blocks(items, boundary)
    )


def _array_header_size(count: int) -> int:
    """The bytes of a msgpack array header for `count` items (fixarray, array 16, array 32)."""
    return 1 if count <= 15 else 3 if count <= 0xFFFF else 5


# Payloads smaller than this are envelopes (a call that holds only futures, a sum), not data:
# the client's `Traffic` (runtime/results.py) and the scheduler's tally leave them out.
DATA_MIN_BYTES = 1024


def pack_batch(values: list[Any]) -> bytes | None:
    """A batch's result payloads as one packed array (chunk_batch's `values` as bytes), if
    each is an inline payload under DATA_MIN_BYTES; else None (send the list).

    Discussion: the scheduler forwards and journals such a batch as one bytes, where a list
    cost it a decode, a count of data bytes, a journal encode and an encode for the client
    per result: its loop's CPU per no-op task of `bench chunking` fell from ~1.8 to ~1.4 us,
    the client's IO thread's from ~0.6 to ~0.25. Failures (nil) and references need the
    list: the scheduler and the client look at those one by one. Checked with C loops
    (~0.05 us a value); the concatenation is the array's encoding.
    """
    if not values or None in values:
        return None
    sizes = list(map(len, values))
    if max(sizes) >= DATA_MIN_BYTES or min(sizes) == 0:
        return None
    if _REFERENCE_MARK[0] in bytes(map(operator.itemgetter(0), values)):
        return None
    return msgpack.Packer().pack_array_header(len(values)) + b"".join(values)


# A result travels in frames of at most MAX_FRAME_BYTES (its `finished`, then the client's
# `results`) unless it is spooled; one that would not fit fails its task with the reason
# instead of being dropped by the scheduler with its future waiting for ever.
MAX_RESULT_BYTES = MAX_FRAME_BYTES - (1 << 20)


def pack_result(
    value: Any,
    where: str,
    spool: Callable[[bytes], bytes] | None = None,
    *,
    packed: bytes | None = None,
) -> bytes:
    """A task's result as a payload (`packed`, if it was packed already); one of
    DATA_THRESHOLD bytes or more is handed to `spool` (the executor's: it returns a
    reference, runtime/datastore.py) where there is one. EncodeError if msgpack cannot carry
    it, or a frame could not (MAX_RESULT_BYTES)."""
    result = packed if packed is not None else pack_payload(value, where)
    if spool is not None and len(result) >= DATA_THRESHOLD:
        result = spool(result)
    if len(result) > MAX_RESULT_BYTES:
        raise EncodeError(
            f"{where} is {len(result):,} bytes packed, over the {MAX_RESULT_BYTES:,}-byte "
            "limit of a result that travels inline (it could not be spooled)"
        )
    return result


def pack_call(
    args: Any,
    kwargs: dict[str, Any],
    *,
    packed_kwargs: bytes | None = None,
    boundary: Callable[[], None] | None = None,
) -> bytes:
    """The payload of one task call: `[args, kwargs]`, packed; with a big sequence among the
    args (`is_big`), `[args, kwargs, blocked]` (see *Blocked arguments* below), its blocks
    packed one at a time with `boundary()` after each if `boundary` is given (an executor
    keeping a task's result packs it in the task, between record boundaries).

    `packed_kwargs`, if given, is `pack_payload(kwargs)` done once for many calls that share
    their keyword arguments (`Client.map`): msgpack values simply concatenate. It may also
    be `pack_payload(reference)`, the packed kwargs spooled once for all those calls (a bin
    where the map would be; the executor reads the map from the spool).
    """
    # Discussion: this and the unpacking below run once per task (20,000 times for a map of
    # tiny tasks), so the common case is one msgpack call and a length look per argument.
    args = args if type(args) is list else list(args)
    try:
        big = [is_big(arg) for arg in args]
        if any(big):
            return _pack_blocked_call(args, big, kwargs, packed_kwargs, boundary)
        if packed_kwargs is None:
            return msgpack.packb([args, kwargs], use_bin_type=True)
        return _CALL_HEADER + msgpack.packb(args, use_bin_type=True) + packed_kwargs
    except (TypeError, ValueError, OverflowError) as exc:
        problem = find_unencodable(args, "args") or find_unencodable(kwargs, "kwargs")
        raise EncodeError(problem or f"cannot encode a call: {exc}") from None


# ---- blocked arguments: a partition decoded a block at a time ------------------------------

# Discussion: one msgpack call decoding a 600,000-int partition holds the GIL for ~45 ms
# (3 million: ~150 ms) on this machine type, and a suspend that lands meanwhile waits it out.
# So a big argument travels as blocks of packed items, each decoding in well under a
# millisecond (8,192 ints: ~0.3-0.4 ms), and the executor's kernel decodes them one at a
# time with a record boundary between blocks (runtime/kernel.py). Blocks are sized from a
# sample of the items: ~BLOCK_TARGET_BYTES each, at most MAX_BLOCK_ITEMS items (small items
# cost per item to decode, big ones per byte).
#
# "Big" is by items (BLOCKED_MIN_ITEMS) or by packed bytes (BLOCKED_MIN_BYTES, estimated
# from a sample). Discussion: by items alone, a partition of records was never blocked: the
# demo's 1,784 documents (`[doc_id, words, topics]`, 248 KB packed) decoded in one call of
# ~4 ms, ~8-10 ms on a loaded machine, and every stream task that came meanwhile waited it
# out (the unified benchmark's stream tail, traced 2026-12-07). Nested small ints decode at
# ~17 ns a byte here, so 64 KiB is a call of ~1 ms.
BLOCKED_MIN_ITEMS = 16_384
BLOCKED_MIN_BYTES = 64 * 1024
SAMPLED_FROM_ITEMS = 32  # shorter sequences are never blocked (nor sampled)
SAMPLE_ITEMS = 16
BLOCK_TARGET_BYTES = 48 * 1024
MAX_BLOCK_ITEMS = 8_192
_BLOCKED_CALL_HEADER = b"\x93"  # a msgpack array of three items: [args, kwargs, blocked]


def is_big(arg: Any) -> bool:
    """Whether `arg` is a list or tuple that travels in blocks: BLOCKED_MIN_ITEMS items or
    more, or SAMPLED_FROM_ITEMS or more that pack (by a sample spread over them) to
    BLOCKED_MIN_BYTES or more. EncodeError-prone values raise as packing them would."""
    if type(arg) in (list, tuple) and len(arg) >= BLOCKED_MIN_ITEMS:
        return True
    return _packs_to(arg, BLOCKED_MIN_BYTES)


def packs_to_at_least(value: Any, size: int) -> bool:
    """Whether `value`, a list or tuple of SAMPLED_FROM_ITEMS items or more, packs to about
    `size` bytes or more, by a sample spread over it (one small msgpack call); False for
    anything else. EncodeError if the sample cannot be packed."""
    try:
        return _packs_to(value, size)
    except (TypeError, ValueError, OverflowError) as exc:
        raise EncodeError(f"cannot encode a partition: {exc}") from None


def _packs_to(value: Any, size: int) -> bool:
    if type(value) not in (list, tuple) or len(value) < SAMPLED_FROM_ITEMS:
        return False
    return _packed_bytes_per_item(value) * len(value) >= size


def _packed_bytes_per_item(items: list[Any] | tuple[Any, ...]) -> float:
    """The packed bytes per item of a sample of at most SAMPLE_ITEMS spread over `items`
    (at least 1): one small msgpack call, however big the items are."""
    sample = items[:: max(1, len(items) // SAMPLE_ITEMS)][:SAMPLE_ITEMS]
    return max(1.0, len(msgpack.packb(sample, use_bin_type=True)) / max(1, len(sample)))


def _pack_blocked_call(
    args: list[Any],
    big: list[bool],
    kwargs: dict[str, Any],
    packed_kwargs: bytes | None,
    boundary: Callable[[], None] | None,
) -> bytes:
    """`[args, kwargs, blocked]`: each big sequence in `args` is nil there, and its items
    travel in `blocked` as `[index, [block, ...]]`, each block a packed array of items."""
    skeleton = [None if big[index] else arg for index, arg in enumerate(args)]
    if packed_kwargs is None:
        packed_kwargs = msgpack.packb(kwargs, use_bin_type=True)
    # Discussion: joined once, headers and all (`msgpack.packb(blocked)` copied a 15 MB
    # partition's blocks as its buffer grew, and `+` copied the call again: ~20 ms).
    packer = msgpack.Packer(use_bin_type=True)
    pieces = [_BLOCKED_CALL_HEADER, packer.pack(skeleton), packed_kwargs]
    pieces.append(packer.pack_array_header(sum(big)))
    for index, arg in enumerate(args):
        if big[index]:
            blocks = pack_blocks(arg, boundary)
            pieces += (packer.pack_array_header(2), packer.pack(index))
            pieces.append(packer.pack_array_header(len(blocks)))
            for block in blocks:
                pieces += (_bin_header(len(block)), block)
    return b"".join(pieces)


def _bin_header(size: int) -> bytes:
    """The msgpack header of a bin of `size` bytes (bin 8, 16 or 32)."""
    if size <= 0xFF:
        return b"\xc4" + size.to_bytes(1, "big")
    if size <= 0xFFFF:
        return b"\xc5" + size.to_bytes(2, "big")
    return b"\xc6" + size.to_bytes(4, "big")


def _block_step(items: list[Any] | tuple[Any, ...]) -> int:
    """How many items a block of `items` holds (see the discussion above), from a sample
    spread over them (a sample of the first 256 packed all of a list of a few hundred big
    records in one call)."""
    per_item = _packed_bytes_per_item(items)
    return int(min(MAX_BLOCK_ITEMS, max(1, BLOCK_TARGET_BYTES // per_item)))


def pack_blocks(
    items: list[Any] | tuple[Any, ...], boundary: Callable[[], None] | None = None
) -> list[bytes]:
    """`items` as blocks of consecutive items, sized as the discussion above says: each a
    block of numbers (runtime/numblocks.py) where the C extension is built and its items
    are all plain ints or all floats, else a packed array; `boundary()` after each if given
    (then of the items as they were at the call)."""
    if boundary is not None:
        items = tuple(items)
    return [block for _, block in _blocks(items, boundary, numblocks.packer())]


def _blocks(
    items: list[Any] | tuple[Any, ...],
    boundary: Callable[[], None] | None,
    pack: numblocks.BlockPacker = numblocks.pack_array,
) -> Iterator[tuple[int, bytes]]:
    """(items in it, `pack(items, start, stop)`) for each block of `items`, `boundary()`
    after each."""
    step, count = _block_step(items), len(items)
    for start in range(0, count, step):
        yield min(step, count - start), pack(items, start, start + step)
        if boundary is not None:
            boundary()


def open_call(
    blob: Any, what: str = "task payload"
) -> tuple[list[Any], dict[str, Any] | bytes, Iterator[tuple[int, Iterator[bytes]]]]:
    """Unpack a task's payload into (args, kwargs, blocked) without decoding its blocks:
    `blocked` yields `(index, blocks)` for each argument still to decode (`unpack_block`),
    each `args[index]` None until then; kwargs is the map, or the reference (bytes) to a
    map's shared kwargs; ProtocolError saying what is wrong if it is not a call (for the
    blocks, as they are read).

    Discussion: a blocked call is read with a streaming Unpacker, a block at a time, so
    that opening it never holds the GIL for long: one `unpackb` of a 3 million-int call
    (15 MB, its blocks copied out as bytes) took 2-14 ms.
    """
    if isinstance(blob, bytes | bytearray | memoryview) and bytes(blob[:1]) == _BLOCKED_CALL_HEADER:
        return _open_blocked([blob], what)
    call = unpack_payload(blob, what)
    if type(call) is list and len(call) == 2:
        args, kwargs = call
        if _is_call(args, kwargs):
            return args, kwargs, iter(())
    raise ProtocolError(
        f"{what} must be [args, kwargs] (an array, and a map with str keys), got {str(call)[:60]}"
    )


def _is_call(args: Any, kwargs: Any) -> bool:
    """[args, kwargs]: kwargs a map with str keys, or (bytes) the reference to one that many
    calls share, spooled once (`pack_call`)."""
    if type(kwargs) is bytes:
        return type(args) is list and is_reference(kwargs)
    return type(args) is list and _is_kwargs(kwargs)


def _is_kwargs(kwargs: Any) -> bool:
    return type(kwargs) is dict and (not kwargs or all(type(key) is str for key in kwargs))


def unpack_kwargs(blob: Any, what: str = "kwargs") -> dict[str, Any]:
    """Unpack a call's packed kwargs (a map with str keys), or raise ProtocolError saying
    what is wrong."""
    kwargs = unpack_payload(blob, what)
    if not _is_kwargs(kwargs):
        raise ProtocolError(f"{what} must be a map with str keys, got {str(kwargs)[:60]}")
    return kwargs


def _open_pieces(
    pieces: list[Any], what: str = "task payload"
) -> tuple[list[Any], dict[str, Any], Iterator[tuple[int, Iterator[bytes]]]]:
    """`open_call` of a payload that came in pieces (`_fetched`), without joining them
    when the call is blocked."""
    if len(pieces) == 1 or bytes(pieces[0][:1]) != _BLOCKED_CALL_HEADER:
        return open_call(pieces[0] if len(pieces) == 1 else b"".join(pieces), what)
    return _open_blocked(pieces, what)


def _open_blocked(
    pieces: list[Any], what: str
) -> tuple[list[Any], dict[str, Any], Iterator[tuple[int, Iterator[bytes]]]]:
    size = sum(map(len, pieces))
    unpacker = msgpack.Unpacker(
        _Reader(pieces),
        raw=False,
        strict_map_key=False,
        ext_hook=refuse_extension,
        object_pairs_hook=hashable_keys,  # dict keys sent from tuples come back as tuples
        read_size=_READ_BYTES,
        max_buffer_size=max(size, 1 << 20),
    )
    try:
        unpacker.read_array_header()
        args, kwargs = unpacker.unpack(), unpacker.unpack()
    except ProtocolError as exc:
        raise ProtocolError(f"{what} cannot be decoded: {exc}") from None
    except Exception as exc:  # msgpack raises many types for bad input; all mean "malformed"
        raise ProtocolError(f"{what} is not valid msgpack ({type(exc).__name__}: {exc})") from None
    if not _is_call(args, kwargs):
        raise ProtocolError(
            f"{what} must be [args, kwargs] (an array, and a map with str keys), "
            f"got {str([args, kwargs])[:60]}"
        )
    return args, kwargs, _blocked_entries(unpacker, args, what)


_READ_BYTES = 256 * 1024  # what the Unpacker copies out of a blocked call at a time


class _Reader:
    """A file over a payload's pieces that copies out only what is read (io.BytesIO copies
    a bytearray whole: ~2-10 ms for a 15 MB payload, all while holding the GIL), and lets
    each piece go once it is read."""

    def __init__(self, pieces: list[Any]) -> None:
        self._pieces = pieces  # emptied as it is read
        self._index = 0
        self._at = 0

    def read(self, size: int = -1) -> bytes:
        out = []
        wanted = size if size >= 0 else 1 << 62
        while wanted and self._index < len(self._pieces):
            piece = memoryview(self._pieces[self._index])
            taken = piece[self._at : self._at + wanted]
            out.append(taken)
            self._at += len(taken)
            wanted -= len(taken)
            if self._at >= len(piece):
                self._pieces[self._index] = b""
                self._index += 1
                self._at = 0
        return b"".join(out)  # a copy of _READ_BYTES at most


def _blocked_entries(
    unpacker: msgpack.Unpacker, args: list[Any], what: str
) -> Iterator[tuple[int, Iterator[bytes]]]:
    """Each blocked argument's index and its blocks, read as they are asked for."""
    problem = (
        f"{what}'s blocked arguments must be [[index, [bytes, ...]], ...], each index an "
        "argument that is nil"
    )
    left = [0]

    def blocks() -> Iterator[bytes]:
        while left[0]:
            left[0] -= 1
            block = _read(unpacker, problem)
            if type(block) is not bytes:
                raise ProtocolError(f"{problem}: a block is {type(block).__name__}")
            yield block

    entries = _read(unpacker, problem, header=True)
    for _ in range(entries):
        index = None
        if _read(unpacker, problem, header=True) == 2:
            index = _read(unpacker, problem)
        if not (type(index) is int and 0 <= index < len(args) and args[index] is None):
            raise ProtocolError(f"{problem}: got index {str(index)[:20]}")
        left[0] = _read(unpacker, problem, header=True)
        yield index, blocks()
        for _ in range(left[0]):  # blocks the caller did not read
            _read(unpacker, problem)
        left[0] = 0


def _read(unpacker: msgpack.Unpacker, problem: str, *, header: bool = False) -> Any:
    try:
        return unpacker.read_array_header() if header else unpacker.unpack()
    except Exception as exc:  # malformed: whatever msgpack raises
        raise ProtocolError(f"{problem} ({type(exc).__name__}: {exc})") from None


def unpack_block(block: bytes, what: str = "a block of a task argument") -> list[Any]:
    """The items of one block (`pack_blocks`); ProtocolError if it is neither a packed array
    nor a block of numbers."""
    if block[:1] and block[0] == numblocks.MARK:
        return numblocks.unpack(block, what)
    items = unpack_payload(block, what)
    if type(items) is not list:
        raise ProtocolError(f"{what} must be an array, got {type(items).__name__}")
    return items


def unpack_payload(blob: Any, what: str = "payload") -> Any:
    """Unpack a payload, or raise ProtocolError saying what is wrong (`what` names it).

    As for frames: extension types are refused, and dict keys sent from tuples come back
    as tuples.
    """
    if type(blob) is not bytes and not isinstance(blob, bytes | bytearray | memoryview):
        raise ProtocolError(f"{what} must be bytes (a msgpack bin), got {type(blob).__name__}")
    try:
        return unpack_value(blob)
    except ProtocolError as exc:
        raise ProtocolError(f"{what} cannot be decoded: {exc}") from None
    except Exception as exc:  # msgpack raises many types for bad input; all mean "malformed"
        raise ProtocolError(f"{what} is not valid msgpack ({type(exc).__name__}: {exc})") from None


def unpack_call(blob: Any, what: str = "task payload") -> tuple[list[Any], dict[str, Any]]:
    """Unpack a task's payload into (args, kwargs), blocks and all (shared kwargs read from
    the spool, or fetched from their owner), or raise ProtocolError saying why not. (The
    kernel decodes blocks one at a time instead: `open_task_call`.)"""
    args, kwargs, blocked = open_call(blob, what)
    args, kwargs = _decoded(args, kwargs, blocked, lambda: None)
    return args, _shared_kwargs(kwargs, fetch_chunks, lambda: None)


def _shared_kwargs(
    kwargs: dict[str, Any] | bytes,
    fetch: Callable[[Reference], Iterable[bytes]],
    boundary: Callable[[], None],
) -> dict[str, Any]:
    """The keyword arguments of a call: as they are, or read from the spool (a map's
    shared kwargs, spooled once for all its calls)."""
    if type(kwargs) is not bytes:
        return kwargs
    what = "a call's shared keyword arguments"
    pieces = _fetched(open_reference(kwargs, what), fetch, boundary)
    return unpack_kwargs(pieces[0] if len(pieces) == 1 else b"".join(pieces), what)


# ---- references: a big payload spooled by its owner (runtime/datastore.py) -------------------

# Discussion: 0xc1 is the one byte msgpack never uses, so no packed value starts with it and
# a reference cannot be taken for a payload, nor a payload for a reference. Everyone between
# the ends forwards it as the bytes it is.
_REFERENCE_MARK = b"\xc1"


def pack_reference(reference: Reference) -> bytes:
    """The payload that stands for a spooled one: `[host, path, size, address, key,
    server_key]` (server_key: the data server's CURVE public key, "" without keys)."""
    return _REFERENCE_MARK + msgpack.packb(dataclasses.astuple(reference), use_bin_type=True)


def is_reference(blob: bytes) -> bool:
    return blob[:1] == _REFERENCE_MARK


def open_reference(blob: bytes, what: str = "task payload") -> Reference:
    """The Reference a payload packs (see `pack_reference`; server_key may be left out),
    or ProtocolError saying why not."""
    fields = unpack_payload(blob[1:], f"{what}'s reference")
    if not (
        type(fields) is list
        and len(fields) in (5, 6)
        and all(type(field) is str for i, field in enumerate(fields) if i != 2)
        and type(fields[2]) is int
        and fields[2] >= 0
        and (fields[3] == "" or fields[3].startswith("tcp://"))  # the data server's address
        and (len(fields) == 5 or fields[5] == "" or len(fields[5]) == 40)  # a z85 CURVE key
    ):
        raise ProtocolError(
            f"{what}'s reference must be [host, path, size, address, key, server_key], "
            f"got {str(fields)[:80]}"
        )
    return Reference(*fields)


def open_task_call(
    payload: bytes,
    fetch: Callable[[Reference], Iterable[bytes]],
    boundary: Callable[[], None],
    kept_packed: Callable[[int], bool] = lambda index: False,
) -> tuple[list[Any], dict[str, Any]]:
    """A task's (args, kwargs), opened on the task's own thread: a spooled payload is read
    (`fetch`, runtime/datastore.py) a piece at a time and a blocked argument decoded a block
    at a time, with `boundary()` (the kernel's record boundary) after each; a blocked
    argument at an index `kept_packed` accepts (one the task reads as a gated input) stays
    packed instead, as `Blocks` decoded as they are read. ProtocolError if it is not a
    call, DataUnavailable if a spooled payload cannot be had."""
    pieces = [payload]
    if is_reference(payload):
        pieces = _fetched(open_reference(payload), fetch, boundary)
    args, kwargs = _decoded(*_open_pieces(pieces), boundary, kept_packed)
    return args, _shared_kwargs(kwargs, fetch, boundary)


def _decoded(
    args: list[Any],
    kwargs: dict[str, Any],
    blocked: Iterator[tuple[int, Iterator[bytes]]],
    boundary: Callable[[], None],
    kept_packed: Callable[[int], bool] = lambda index: False,
) -> tuple[list[Any], dict[str, Any]]:
    """(args, kwargs) with each blocked argument decoded or kept as `Blocks`, `boundary()`
    after each block."""
    for index, blocks in blocked:
        if kept_packed(index):
            args[index] = Blocks(_each_then(blocks, boundary))
            continue
        items: list[Any] = []
        for block in blocks:  # read from the payload one at a time
            items.extend(unpack_block(block))
            boundary()
        args[index] = items
    return args, kwargs


def _each_then(blocks: Iterable[bytes], boundary: Callable[[], None]) -> Iterator[bytes]:
    for block in blocks:
        yield block
        boundary()


class Blocks(Sequence[Any]):
    """A blocked argument kept packed: its items are decoded a block at a time as they are
    read, so that a task consuming a partition never waits for all of it to be decoded,
    holds one decoded block at a time, and drops it at once when done.

    Discussion: decoding 3 million ints up front took ~100 ms (boundaries between blocks,
    but before the task's first record) and the list held ~110 MB; freeing that list when
    the task ended took ~40 ms in one go, with the GIL held, on the thread where the next
    stream task was about to start. Packed, the same partition is ~12-15 MB of bytes, and
    iterating it is all C: `chain` over `map` of a block decoder (~0.3 ms a block).
    """

    __slots__ = ("_blocks", "_cached", "_starts")

    def __init__(self, blocks: Iterable[bytes]) -> None:
        self._blocks: list[bytes] = []
        self._starts = [0]  # the index of each block's first item, then the length
        for block in blocks:
            self._blocks.append(block)
            self._starts.append(self._starts[-1] + _array_length(block))
        self._cached: tuple[int, list[Any]] = (-1, [])

    def __len__(self) -> int:
        return self._starts[-1]

    def __iter__(self) -> Iterator[Any]:
        return itertools.chain.from_iterable(map(unpack_block, self._blocks))

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            start, stop, step = index.indices(len(self))
            if step != 1:
                return [self[i] for i in range(start, stop, step)]
            if start >= stop:
                return []
            first, last = self._block_of(start), self._block_of(stop - 1)
            items = list(itertools.chain.from_iterable(map(self._block, range(first, last + 1))))
            offset = self._starts[first]
            return items[start - offset : stop - offset]
        at = operator.index(index)
        if at < 0:
            at += len(self)
        if not 0 <= at < len(self):
            raise IndexError("partition index out of range")
        number = self._block_of(at)
        return self._block(number)[at - self._starts[number]]

    def _block_of(self, at: int) -> int:
        return bisect.bisect_right(self._starts, at) - 1

    def _block(self, number: int) -> list[Any]:
        if self._cached[0] != number:  # one block kept: reads by index tend to be near
            self._cached = (number, unpack_block(self._blocks[number]))
        return self._cached[1]

    def __repr__(self) -> str:
        return f"<Blocks: {len(self):,} items in {len(self._blocks):,} packed blocks>"


def _array_length(block: bytes) -> int:
    """How many items a block (a packed array, or numbers) holds, read from its header;
    ProtocolError if it is neither, or promises more items than the block has bytes."""
    kind, count, header = block[:1], -1, 1
    if kind and kind[0] == numblocks.MARK:
        return numblocks.count(block, "a block of a task argument")
    if kind and 0x90 <= kind[0] <= 0x9F:
        count = kind[0] & 0x0F
    elif kind == b"\xdc" and len(block) >= 3:
        count, header = int.from_bytes(block[1:3], "big"), 3
    elif kind == b"\xdd" and len(block) >= 5:
        count, header = int.from_bytes(block[1:5], "big"), 5
    if not 0 <= count <= len(block) - header:  # every item packs to a byte at least
        raise ProtocolError(
            f"a block of a task argument must be a packed array, got {block[:8]!r} "
            f"({len(block):,} bytes)"
        )
    return count


def _fetched(
    reference: Reference,
    fetch: Callable[[Reference], Iterable[bytes]],
    boundary: Callable[[], None],
) -> list[bytes]:
    """A spooled payload's pieces, as fetched.

    Discussion: kept as pieces, not copied into one buffer: a 15 MB `bytearray` is zeroed
    when made, ~2-9 ms of page faults with the GIL held before the first piece (a suspend
    once waited 36 ms for it on a loaded machine); a piece is filled by `read`, which
    releases the GIL."""
    pieces, size = [], 0
    for piece in fetch(reference):
        size += len(piece)
        if size > reference.size:
            raise DataUnavailable(f"{reference.describe()}: more bytes came than that")
        if piece:
            pieces.append(piece)
        boundary()
    if size != reference.size or not pieces:
        raise DataUnavailable(f"{reference.describe()}: only {size:,} bytes were there")
    return pieces

"""Payloads: task arguments and results, packed by one end and opened by the other.

A payload is one msgpack blob (`bytes`). The client packs a task's call (`pack_call`) and
the executor opens it when the task starts (`open_call`, then `unpack_block` for a big
argument's blocks, one at a time); the executor packs a result (`pack_payload`) and the
client unpacks it (`unpack_payload`). The scheduler only forwards the bytes
(runtime/protocol.py, docs/protocol.md "Payloads").
"""

from __future__ import annotations

from typing import Any

import msgpack

from tidal.runtime.protocol import EncodeError, ProtocolError, find_unencodable, unpack_value

__all__ = [
    "BLOCKED_MIN_ITEMS",
    "open_call",
    "pack_blocks",
    "pack_call",
    "pack_payload",
    "unpack_block",
    "unpack_call",
    "unpack_payload",
]

# ---- payloads: task arguments and results, opened only at the ends -------------------------

# Discussion: the scheduler's one loop used to decode every submit's arguments and re-encode
# them into launches (and results the other way): ~130 ms for one 2 MB batch sweep, during
# which stream tasks waited. A payload is packed once by its sender and unpacked once by its
# receiver; everyone between moves bytes.

_CALL_HEADER = b"\x92"  # a msgpack array of two items: [args, kwargs]


def pack_payload(value: Any, where: str = "payload") -> bytes:
    """Pack one value (a task's result, say) as a payload.

    Raises EncodeError naming the part msgpack cannot carry, starting from `where`
    (`finished.result[1] is of type set, ...`).
    """
    try:
        return msgpack.packb(value, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as exc:
        problem = find_unencodable(value, where) or f"cannot encode {where}: {exc}"
        raise EncodeError(problem) from None


def pack_call(args: Any, kwargs: dict[str, Any], *, packed_kwargs: bytes | None = None) -> bytes:
    """The payload of one task call: `[args, kwargs]`, packed; with a big sequence among the
    args, `[args, kwargs, blocked]` (see *Blocked arguments* below).

    `packed_kwargs`, if given, is `pack_payload(kwargs)` done once for many calls that share
    their keyword arguments (`Client.map`): msgpack values simply concatenate.
    """
    # Discussion: this and the unpacking below run once per task (20,000 times for a map of
    # tiny tasks), so the common case is one msgpack call and a length look per argument.
    args = args if type(args) is list else list(args)
    try:
        for arg in args:
            if type(arg) in _SEQUENCES and len(arg) >= BLOCKED_MIN_ITEMS:
                return _pack_blocked_call(args, kwargs, packed_kwargs)
        if packed_kwargs is None:
            return msgpack.packb([args, kwargs], use_bin_type=True)
        return _CALL_HEADER + msgpack.packb(args, use_bin_type=True) + packed_kwargs
    except (TypeError, ValueError, OverflowError) as exc:
        problem = find_unencodable(args, "args") or find_unencodable(kwargs, "kwargs")
        raise EncodeError(problem or f"cannot encode a call: {exc}") from None


# ---- blocked arguments: a partition decoded a block at a time ------------------------------

# Discussion: one msgpack call decoding a 600,000-int partition holds the GIL for ~45 ms
# (3 million: ~150 ms) on this machine type, and a suspend that lands meanwhile waits it out.
# So an argument of BLOCKED_MIN_ITEMS or more items travels as blocks of packed items, each
# decoding in well under a millisecond (8,192 ints: ~0.3-0.4 ms), and the executor's kernel
# decodes them one at a time with a record boundary between blocks (runtime/kernel.py).
# Blocks are sized from a sample of the items: ~BLOCK_TARGET_BYTES each, at most
# MAX_BLOCK_ITEMS items (small items cost per item to decode, big ones per byte).
BLOCKED_MIN_ITEMS = 16_384
BLOCK_TARGET_BYTES = 48 * 1024
MAX_BLOCK_ITEMS = 8_192
_SEQUENCES = (list, tuple)
_BLOCKED_CALL_HEADER = b"\x93"  # a msgpack array of three items: [args, kwargs, blocked]


def _pack_blocked_call(
    args: list[Any], kwargs: dict[str, Any], packed_kwargs: bytes | None
) -> bytes:
    """`[args, kwargs, blocked]`: each big sequence in `args` is nil there, and its items
    travel in `blocked` as `[index, [block, ...]]`, each block a packed array of items."""
    blocked = []
    for index, arg in enumerate(args):
        if type(arg) in _SEQUENCES and len(arg) >= BLOCKED_MIN_ITEMS:
            blocked.append([index, pack_blocks(arg)])
    blocked_at = {index for index, _ in blocked}
    skeleton = [None if i in blocked_at else arg for i, arg in enumerate(args)]
    if packed_kwargs is None:
        packed_kwargs = msgpack.packb(kwargs, use_bin_type=True)
    return (
        _BLOCKED_CALL_HEADER
        + msgpack.packb(skeleton, use_bin_type=True)
        + packed_kwargs
        + msgpack.packb(blocked, use_bin_type=True)
    )


def pack_blocks(items: list[Any] | tuple[Any, ...]) -> list[bytes]:
    """`items` as packed arrays of consecutive items, sized as the discussion above says."""
    sample = msgpack.packb(items[:256], use_bin_type=True)
    per_item = max(1.0, len(sample) / min(256, len(items)))
    step = int(min(MAX_BLOCK_ITEMS, max(16, BLOCK_TARGET_BYTES // per_item)))
    return [
        msgpack.packb(items[start : start + step], use_bin_type=True)
        for start in range(0, len(items), step)
    ]


def open_call(
    blob: Any, what: str = "task payload"
) -> tuple[list[Any], dict[str, Any], list[tuple[int, list[bytes]]]]:
    """Unpack a task's payload into (args, kwargs, blocked) without decoding its blocks:
    `blocked` lists `(index, blocks)` for each argument still to decode (`unpack_block`),
    each `args[index]` None until then. ProtocolError saying what is wrong if it is not a call.
    """
    call = unpack_payload(blob, what)
    if type(call) is list and len(call) in (2, 3):
        args, kwargs, *rest = call
        if (
            type(args) is list
            and type(kwargs) is dict
            and (not kwargs or all(type(key) is str for key in kwargs))
        ):
            return args, kwargs, _blocked_entries(rest[0], args, what) if rest else []
    raise ProtocolError(
        f"{what} must be [args, kwargs] (an array, and a map with str keys), got {str(call)[:60]}"
    )


def _blocked_entries(blocked: Any, args: list[Any], what: str) -> list[tuple[int, list[bytes]]]:
    entries = []
    if type(blocked) is list:
        for entry in blocked:
            if not (type(entry) is list and len(entry) == 2):
                break
            index, blocks = entry
            if not (
                type(index) is int
                and 0 <= index < len(args)
                and args[index] is None
                and type(blocks) is list
                and all(type(block) is bytes for block in blocks)
            ):
                break
            entries.append((index, blocks))
        else:
            return entries
    raise ProtocolError(
        f"{what}'s blocked arguments must be [[index, [bytes, ...]], ...], each index an "
        f"argument that is nil, got {str(blocked)[:60]}"
    )


def unpack_block(block: bytes, what: str = "a block of a task argument") -> list[Any]:
    """The items of one block (`pack_blocks`); ProtocolError if it is not an array."""
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
    """Unpack a task's payload into (args, kwargs), blocks and all, or raise ProtocolError
    saying why not. (The kernel decodes blocks one at a time instead: `open_call`.)"""
    args, kwargs, blocked = open_call(blob, what)
    for index, blocks in blocked:
        args[index] = [item for block in blocks for item in unpack_block(block)]
    return args, kwargs

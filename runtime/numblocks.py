"""Blocks of numbers: a block of a big argument whose items are all plain ints, or all
floats, packed as the raw numbers instead of a msgpack array (protocol 14).

Discussion: a partition of numbers is the commonest big argument, and msgpack packs an int
in ~25-30 ns here: ~75-90 ms of a 3-million-int partition's submit, in the caller's thread,
while the executor that would run it may sit idle (`tidal bench bigdata`'s first task often
ended before the second was packed). Such a block is packed in C (runtime/_columns.c
`pack_numbers`, ~4-6 ns an int): 0xc1 (the one byte msgpack never uses, so no packed array
starts with it), a type code ('b', 'h', 'i': signed ints of 8, 16, 32 bits, 'B', 'H', 'I'
unsigned, 'q' int64: the narrowest that holds the block; 'd' float64), then each number,
little-endian. Exact types only, so that a bool, an IntEnum or a float subclass comes back
as msgpack would give it; ints from 2**63 up go as msgpack too (a uint64 there). A block of
ints is never bigger than msgpack would make it (one big value widens every item: such a
block goes as msgpack), a block of floats 8 bytes an item against 9. Decoding, with the
standard library's `array` so that no extension is needed, is not faster than msgpack's:
making the int objects is most of both.

The client packs its big arguments so, and an executor its kept results
(runtime/kept.py); runtime/payloads.py says where blocks go.
"""

from __future__ import annotations

import array
import sys
from collections.abc import Callable
from typing import Any

import msgpack

from tidal.runtime.protocol import ProtocolError

try:
    from tidal.runtime import _ccolumns
except ImportError:  # the extension is optional (setup.py): blocks are then all msgpack
    _ccolumns = None

__all__ = ["MARK", "BlockPacker", "count", "pack_array", "packer", "unpack"]

MARK = 0xC1

# How a block of items[start:stop] is packed (`packer()`).
BlockPacker = Callable[[list[Any] | tuple[Any, ...], int, int], bytes]


def pack_array(items: list[Any] | tuple[Any, ...], start: int, stop: int) -> bytes:
    """items[start:stop] as a msgpack array."""
    return msgpack.packb(items[start:stop], use_bin_type=True)


def _pack_numbers(items: list[Any] | tuple[Any, ...], start: int, stop: int) -> bytes:
    """items[start:stop] as a block of numbers if it is one (see above), else an array."""
    return _ccolumns.pack_numbers(items, start, stop) or pack_array(items, start, stop)


def packer() -> BlockPacker:
    """How blocks are packed here: as numbers where they are, if the extension is built."""
    return pack_array if _ccolumns is None else _pack_numbers


def _array_code(size: int, signed: bool) -> str:
    """`array`'s type code for ints of `size` bytes (its "i" and "l" vary by platform)."""
    code = next(code for code in "bhilq" if array.array(code).itemsize == size)
    return code if signed else code.upper()


_TYPES = {  # the wire's type codes -> array's
    **{ord(wire): _array_code(size, True) for wire, size in (("b", 1), ("h", 2), ("i", 4))},
    **{ord(wire): _array_code(size, False) for wire, size in (("B", 1), ("H", 2), ("I", 4))},
    ord("q"): "q",
    ord("d"): "d",
}


def _type_of(block: bytes, what: str) -> str:
    """The array type code of a block of numbers; ProtocolError if it names no type we
    write, or its length is not a whole number of them."""
    code = _TYPES.get(block[1]) if len(block) >= 2 else None
    if code is None or (len(block) - 2) % array.array(code).itemsize:
        raise ProtocolError(
            f"{what} is a block of numbers of an unknown type or length: {block[:8]!r} "
            f"({len(block):,} bytes)"
        )
    return code


def count(block: bytes, what: str) -> int:
    """How many numbers a block of numbers holds (ProtocolError as `unpack`)."""
    return (len(block) - 2) // array.array(_type_of(block, what)).itemsize


def unpack(block: bytes, what: str) -> list[Any]:
    """The numbers of a block of numbers, as a list; ProtocolError if it is malformed."""
    numbers = array.array(_type_of(block, what))
    numbers.frombytes(memoryview(block)[2:])
    if sys.byteorder == "big":
        numbers.byteswap()
    return numbers.tolist()

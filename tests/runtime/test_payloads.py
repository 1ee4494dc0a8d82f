"""Blocks of numbers: a big argument of plain ints or floats packed as raw numbers
(runtime/numblocks.py, runtime/_columns.c `pack_numbers`), and blocked calls
(runtime/payloads.py)."""

from __future__ import annotations

import enum
import math
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tidal.runtime import numblocks, payloads
from tidal.runtime.protocol import ProtocolError

BIG = payloads.BLOCKED_MIN_ITEMS

needs_c = pytest.mark.skipif(numblocks._ccolumns is None, reason="the C extension is not built")


class Level(enum.IntEnum):
    LOW = 1


def _round_trip(value: list[Any]) -> tuple[list[bytes], list[Any], list[Any]]:
    """(its blocks, the argument as `unpack_call` gives it, as a kept `Blocks` reads)."""
    blob = payloads.pack_call([value], {})
    _, _, blocked = payloads.open_call(blob)
    ((_, blocks),) = [(index, list(blocks)) for index, blocks in blocked]
    kept = payloads.Blocks(blocks)
    # Read by index as well as in order: its length and each block's start come from the
    # blocks' headers (`_array_length`), not from decoding them.
    read = list(kept)
    spots = [at for at in (0, BIG - 2, BIG - 1, BIG, len(value) - 1) if at < len(value)]
    assert len(kept) == len(read) == len(value)
    assert _same([kept[at] for at in spots], [read[at] for at in spots])
    assert _same(kept[BIG - 2 : BIG + 2], read[BIG - 2 : BIG + 2])
    return blocks, payloads.unpack_call(blob)[0][0], read


def _same(got: list[Any], want: list[Any]) -> bool:
    """Equal item by item, types included, NaN equal to NaN (and -0.0 told from 0.0)."""
    return len(got) == len(want) and all(
        type(g) is type(w) and (repr(g) == repr(w) if type(w) is float else g == w)
        for g, w in zip(got, want, strict=True)
    )


@needs_c
@pytest.mark.parametrize(
    ("value", "kind"),
    [
        ([-128, 127] * BIG, b"\xc1b"),  # the narrowest type that holds the block
        ([-(2**15), 2**15 - 1] * BIG, b"\xc1h"),
        ([-(2**31), 2**31 - 1] * BIG, b"\xc1i"),
        ([0, 255] * BIG, b"\xc1B"),  # unsigned when nothing is negative
        ([0, 2**16 - 1] * BIG, b"\xc1H"),
        ([2**31, 2**32 - 1] * BIG, b"\xc1I"),
        ([2**32] * 3 * BIG, b"\xc1q"),
        ([-(2**63), 2**63 - 1] * BIG, b"\xc1q"),
        ([0.5, -0.0, math.inf, -math.inf, math.nan, 1e308] * BIG, b"\xc1d"),
    ],
)
def test_plain_ints_and_floats_travel_as_raw_numbers_and_come_back_the_same(value, kind):
    blocks, unpacked, kept = _round_trip(value)
    assert all(block[:2] == kind for block in blocks) and len(blocks) > 1
    assert _same(unpacked, value) and _same(kept, value)


@needs_c
@pytest.mark.parametrize(
    "odd",
    [True, Level.LOW, 2**63, 1.0, "1", None],
    ids=["bool", "int subclass", "a uint64", "a float", "str", "nil"],
)
def test_a_block_with_anything_but_plain_ints_is_a_packed_array_and_keeps_its_types(odd):
    value = list(range(3 * BIG))
    at = payloads.MAX_BLOCK_ITEMS + 7
    value[at] = odd  # the second block: the others are still numbers
    blocks, unpacked, kept = _round_trip(value)
    assert blocks[0][:2] == b"\xc1H" and blocks[-1][:2] == b"\xc1H"
    assert blocks[1][:1] != b"\xc1"  # msgpack's own array
    want = msgpack.unpackb(msgpack.packb(value))  # what a packed array gives back
    assert _same(unpacked, want) and _same(kept, want)
    assert type(unpacked[at]) is type(want[at])


@needs_c
@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.one_of(st.integers(-(2**70), 2**70), st.floats(allow_nan=True), st.booleans()),
        min_size=1,
        max_size=40,
    )
)
def test_any_mix_of_numbers_comes_back_as_msgpack_would_give_it(head):
    value = head * (BIG // len(head) + 1)
    try:
        want = msgpack.unpackb(msgpack.packb(value))
    except OverflowError:  # over 64 bits: msgpack cannot carry it, nor can we
        with pytest.raises(payloads.EncodeError):
            payloads.pack_call([value], {})
        return
    _, unpacked, kept = _round_trip(value)
    assert _same(unpacked, want) and _same(kept, want)


@needs_c
def test_a_kept_result_packed_between_record_boundaries_is_numbers_too():
    # An executor packs a kept result a block at a time, from a tuple of its items
    # (runtime/kept.py): the C packer takes tuples as it takes lists.
    value = list(range(3 * BIG))
    boundaries = []
    blob = payloads.pack_call([tuple(value)], {}, boundary=lambda: boundaries.append(1))
    (blocks,) = [list(blocks) for _, blocks in payloads.open_call(blob)[2]]
    assert all(block[:1] == b"\xc1" for block in blocks) and len(boundaries) == len(blocks)
    assert payloads.unpack_call(blob)[0][0] == value


def test_without_the_extension_every_block_is_a_packed_array(monkeypatch):
    monkeypatch.setattr(numblocks, "_ccolumns", None)
    value = list(range(3 * BIG))
    blocks, unpacked, kept = _round_trip(value)
    assert all(block[:1] != b"\xc1" for block in blocks)
    assert unpacked == value and kept == value


@needs_c
@pytest.mark.parametrize(
    ("value", "ratio"),
    [
        (list(range(10**6, 10**6 + 3 * BIG)), 0.85),  # msgpack: 5 bytes an int, here 4
        ([i % 128 for i in range(3 * BIG)], 1.01),  # msgpack: 1 byte, here 1
        ([i % 256 for i in range(3 * BIG)], 1.01),  # msgpack: 1 or 2, here 1
        ([i - 100 for i in range(3 * BIG)], 1.01),  # msgpack: 1, 2 or 3, here 2
        # One big value would widen every item of its block to 8 bytes: msgpack instead.
        ([2**33 if i % 1_000 == 0 else i % 100 for i in range(3 * BIG)], 1.01),
    ],
)
def test_numbers_pack_to_about_msgpack_size_or_less(value, ratio):
    blob = payloads.pack_call([value], {})
    assert len(blob) < ratio * len(msgpack.packb([[value], {}])) + 1_000


@pytest.mark.parametrize(
    "block",
    [b"\xc1", b"\xc1x\x00\x00\x00\x00", b"\xc1i\x00\x00\x00", b"\xc1q" + bytes(12)],
    ids=["no type", "unknown type", "a partial int32", "a partial int64"],
)
def test_a_malformed_block_of_numbers_is_a_protocol_error_naming_it(block):
    with pytest.raises(ProtocolError, match="block of numbers of an unknown type or length"):
        payloads.unpack_block(block)
    with pytest.raises(ProtocolError, match="block of numbers of an unknown type or length"):
        payloads.Blocks([block])


def test_a_block_of_numbers_is_read_on_any_machine_without_the_extension(monkeypatch):
    # Packed by a client with the extension, read by an executor without it: decoding is
    # the standard library's `array`.
    block = b"\xc1i" + (7).to_bytes(4, "little") + (-2).to_bytes(4, "little", signed=True)
    monkeypatch.setattr(numblocks, "_ccolumns", None)
    assert payloads.unpack_block(block) == [7, -2]
    assert payloads.unpack_block(b"\xc1h\xff\x7f\x00\x80") == [2**15 - 1, -(2**15)]
    assert payloads.unpack_block(b"\xc1b\xff") == [-1]
    assert payloads.unpack_block(b"\xc1B\xff") == [255]
    assert payloads.unpack_block(b"\xc1d" + bytes(8)) == [0.0]


@pytest.mark.parametrize(
    "big",
    [list(range(3 * BIG)), [2**40] * BIG, ["x" * 300] * 300, [0.5] * (BIG + 1)],
    ids=["uint16 blocks", "int64 blocks (bin 32)", "a few big strs (bin 16)", "floats"],
)
def test_a_blocked_call_is_the_bytes_msgpack_makes_of_its_three_parts(big):
    blob = payloads.pack_call(["a", big, [1]], {"k": 2})
    blocked = [[1, payloads.pack_blocks(big)]]
    want = b"\x93" + b"".join(msgpack.packb(part) for part in (["a", None, [1]], {"k": 2}))
    assert blob == want + msgpack.packb(blocked, use_bin_type=True)

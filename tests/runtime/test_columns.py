"""Columnar bulk jobs (runtime/columns.py, protocol 13): where a packed array's items begin,
the payloads and launches cut out of it, and an executor's windows over a launch."""

from __future__ import annotations

import random

import msgpack
import pytest

from tidal.runtime import columns, payloads
from tidal.runtime import protocol as p
from tidal.runtime.columns import Columns, LaunchColumns, Unreadable, pack_columns

VALUES = [
    0, 1, -1, 127, 128, -33, 2**40, -(2**40), 2**64 - 1, 1.5, "", "x" * 40, "y" * 300,
    "z" * 70_000, b"", b"q" * 300, None, True, False, [], [1, [2, [3, {}]]], {"a": [1, 2]},
    {1: 2}, msgpack.ExtType(5, b"abc"), msgpack.ExtType(2, b"a" * 20), list(range(70_000)),
    {str(i): i for i in range(20)},
]  # fmt: skip


def offsets_of(items):
    """Where each packed item starts in msgpack.packb(items), and where the last ends."""
    head = len(msgpack.Packer().pack_array_header(len(items)))
    ends = [head]
    for item in items:
        ends.append(ends[-1] + len(msgpack.packb(item)))
    return ends


@pytest.fixture(params=["c", "python"])
def scanner(request, monkeypatch):
    """Each test runs with the compiled scanner and with msgpack's Unpacker."""
    if request.param == "c":
        if columns._ccolumns is None:
            pytest.skip("the compiled scanner (runtime/_columns.c) is not built")
    else:
        monkeypatch.setattr(columns, "_ccolumns", None)
    return request.param


def test_scan_finds_where_each_item_begins_and_the_longest(scanner):
    rng = random.Random(7)
    for _ in range(200):
        items = [rng.choice(VALUES) for _ in range(rng.randint(0, 40))]
        offsets, longest = columns.scan(msgpack.packb(items))
        assert list(offsets) == offsets_of(items)
        assert longest == max((len(msgpack.packb(x)) for x in items), default=0)


@pytest.mark.parametrize(
    ("blob", "problem"),
    [
        (b"", "empty"),
        (b"\x01", "not a msgpack array"),
        (b"\xdc\x00", "cut short"),
        (b"\x92\x01", "more items than it has bytes"),
        (b"\x91\x01\x01", "bytes follow the array's last item"),
        (b"\x91\xc1", "0xc1"),
        (b"\x91\xdd\xff\xff\xff\xff", "more values than it has bytes"),
        (b"\x92\xa5ab\x01", "cut short"),
    ],
)
def test_scan_names_what_is_wrong_with_bytes_that_are_not_one_array(blob, problem):
    with pytest.raises(p.ProtocolError, match=problem):
        columns.scan(blob)


@pytest.mark.parametrize(
    "blob", [b"", b"\x01", b"\x92\x01", b"\x91\x01\x01", b"\x91\xc1", b"\x92\xa5ab\x01"]
)
def test_the_slow_scan_refuses_what_the_compiled_one_refuses(blob, monkeypatch):
    monkeypatch.setattr(columns, "_ccolumns", None)
    with pytest.raises(p.ProtocolError, match="not one packed array"):
        columns.scan(blob)


def test_every_cut_of_a_packed_array_is_refused(scanner):
    blob = msgpack.packb([1, "abc", [1, 2, {"k": b"v"}], 2.5, None])
    for cut in range(len(blob)):
        with pytest.raises(p.ProtocolError):
            columns.scan(blob[:cut])


def test_columns_give_each_task_the_payload_the_classic_path_sends(scanner):
    xs = [0, "s", b"b", [1, [2]], {"k": 1.0}, None, 2**63]
    kwargs = {"record_us": 1.5, "by": {("a", 1): [None, b"x"]}}
    packed = payloads.pack_payload(kwargs)
    calls = Columns(msgpack.packb(xs, use_bin_type=True), packed)
    classic = [payloads.pack_call([x], kwargs, packed_kwargs=packed) for x in xs]
    assert len(calls) == 7 and list(calls) == classic and calls[2:4] == classic[2:4]
    assert calls[-1] == classic[-1] and calls.payload_max == max(map(len, classic))
    big = Columns(msgpack.packb([1, "x" * 2_000, b"y" * 500, "z" * 1_100]), packed)
    assert big.data_bytes() == sum(len(c) for c in big if len(c) >= payloads.DATA_MIN_BYTES)
    with pytest.raises(IndexError):
        calls[7]
    count, args, same = calls.launch(2, 5)
    assert (count, p.unpack_value(args), same) == (3, [b"b", [1, [2]], {"k": 1.0}], packed)
    with pytest.raises(p.ProtocolError, match="kwargs must be packed"):
        Columns(msgpack.packb(xs), None)


def test_a_map_is_packed_once_as_columns_small_ones_to_travel_so():
    kwargs = payloads.pack_payload({"k": 1})
    made = pack_columns([1, [2, 3], "x"], kwargs)
    if columns._ccolumns is None:
        assert made is None  # packing columns without the scanner would cost more than it saves
        return
    assert p.unpack_value(made.args) == [1, [2, 3], "x"] and made.kwargs == kwargs and made.small
    assert made.items() == [msgpack.packb(1), msgpack.packb([2, 3]), msgpack.packb("x")]
    big = pack_columns([1, "x" * payloads.DATA_MIN_BYTES], kwargs)
    assert not big.small and big.items()[1] == msgpack.packb("x" * payloads.DATA_MIN_BYTES)
    assert not pack_columns([1], payloads.pack_payload({"k": "x" * payloads.DATA_MIN_BYTES})).small
    with pytest.raises(p.EncodeError, match="cannot encode a partition"):
        pack_columns([1, {2}], kwargs)


def test_items_nested_deeper_than_msgpack_decodes_are_refused_by_both_scanners(scanner):
    deepest = b"\x91" + b"\x91" * 1024 + b"\x00"  # an item of 1,024 levels: it decodes
    assert list(columns.scan(deepest)[0]) == [1, len(deepest)]
    with pytest.raises(p.ProtocolError, match=r"nested more than 1,024 levels|StackError"):
        columns.scan(b"\x91" + b"\x91" * 1025 + b"\x00")


def test_a_launch_is_decoded_a_window_at_a_time_and_never_past_its_bytes(scanner):
    xs = [[1_000 + i] * 1_000 for i in range(200)]  # 3 KB each packed: 64 KiB holds 21
    launch = LaunchColumns(len(xs), msgpack.packb(xs), payloads.pack_payload({}))
    first = launch.window(0, 100)
    assert first == xs[: len(first)] and 15 <= len(first) < 30
    assert launch.window(3, 2) == xs[3:5]  # from the window decoded already
    assert launch.window(150, 10) == xs[150:160]
    assert launch.window(199, 10) == [xs[199]]
    huge = LaunchColumns(2, msgpack.packb([list(range(40_000)), 1]), payloads.pack_payload({}))
    assert huge.window(0, 2) == [list(range(40_000))]  # one x bigger than a window: alone


@pytest.mark.parametrize(
    ("count", "args", "problem"),
    [(3, msgpack.packb([1, 2]), "hold 2 items, not 3"), (2, b"\x92\x01", "not one packed array")],
)
def test_a_launch_whose_xs_are_not_what_it_says_makes_each_task_unreadable(
    scanner, count, args, problem
):
    launch = LaunchColumns(count, args, payloads.pack_payload({}))  # scanned when first read
    xs = launch.window(0, 5)
    assert len(xs) == count and all(type(x) is Unreadable for x in xs)
    with pytest.raises(p.ProtocolError, match=problem):
        launch.call(xs[0])


def test_an_x_that_does_not_decode_is_unreadable_and_the_others_are_read(scanner):
    args = msgpack.packb([1, msgpack.ExtType(3, b"z"), "two"])
    launch = LaunchColumns(3, args, payloads.pack_payload({"k": [1]}))
    one, bad, two = launch.window(0, 3)
    assert (one, two) == (1, "two") and type(bad) is Unreadable
    with pytest.raises(p.ProtocolError, match="extension type 3"):
        launch.call(bad)
    args_, kwargs = launch.call(one)
    assert args_ == [1] and kwargs == {"k": [1]} and launch.call(one)[1] is not kwargs
    # Kwargs that are not a map of str keys: refused as a payload's would be.
    odd = LaunchColumns(1, msgpack.packb([1]), payloads.pack_payload({1: 2}))
    with pytest.raises(p.ProtocolError, match="must be a map with str keys"):
        odd.call(1)

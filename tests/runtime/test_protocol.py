"""The wire protocol: every message round-trips, and no frame a peer sends can do worse than
raise ProtocolError.

Strategies are derived from each message's declared field types, so a new message or field
is covered as soon as it is declared (and a field type the strategies do not know fails
loudly here rather than going untested). Hypothesis runs derandomized: the same examples
every run, so a failure here is reproducible and never flaky.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tidal.runtime import batches, datastore, payloads
from tidal.runtime import protocol as p
from tidal.runtime.kept import pack_kept
from tidal.runtime.protocol import (
    MAX_FRAME_BYTES,
    MESSAGES,
    EncodeError,
    Message,
    ProtocolError,
    decode,
    encode,
)

INT64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)

# Any msgpack value the protocol carries in `Any`, `list` and `dict` fields. Floats exclude
# NaN only because NaN != NaN would make equal round trips look unequal.
PLAIN_SCALARS = (
    st.none()
    | st.booleans()
    | INT64
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.binary(max_size=20)
)
PLAIN_VALUES = st.recursive(
    PLAIN_SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)

FUZZ = settings(derandomize=True, max_examples=300, deadline=None)
ROUND_TRIP = settings(derandomize=True, max_examples=40, deadline=None)


# ---- strategies from declared field types ------------------------------------------------------


def _field_strategy(annotation: Any) -> st.SearchStrategy[Any]:
    """Values of one declared field type; tuples are never generated (they decode as lists)."""
    if annotation is Any:
        return PLAIN_VALUES
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return st.one_of([_field_strategy(a) for a in typing.get_args(annotation)])
    if annotation is type(None):
        return st.none()
    origin = typing.get_origin(annotation) or annotation
    strategies: dict[type, st.SearchStrategy[Any]] = {
        int: INT64,
        float: st.floats(allow_nan=False),
        bool: st.booleans(),
        str: st.text(max_size=40),
        bytes: st.binary(max_size=40),
        list: st.lists(PLAIN_VALUES, max_size=5),
        dict: st.dictionaries(st.text(max_size=10), PLAIN_VALUES, max_size=5),
    }
    if origin not in strategies:
        raise TypeError(f"no strategy for field type {annotation!r}: teach this test about it")
    return strategies[origin]


def _fields(cls: type[Message]) -> list[tuple[str, Any]]:
    hints = typing.get_type_hints(cls)
    return [(f.name, hints[f.name]) for f in dataclasses.fields(cls)]


def messages_of(cls: type[Message]) -> st.SearchStrategy[Message]:
    return st.builds(cls, **{name: _field_strategy(t) for name, t in _fields(cls)})


ANY_MESSAGE = st.one_of([messages_of(MESSAGES[op]) for op in sorted(MESSAGES)])


def _conforms(value: Any, annotation: Any) -> bool:
    """Whether a decoded value has its declared type (written apart from protocol's checks)."""
    if annotation is Any:
        return True
    if isinstance(annotation, types.UnionType):
        return any(_conforms(value, a) for a in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if annotation is float:  # documented: a float field also accepts an int, never a bool
        return type(value) in (float, int)
    return type(value) is annotation


def assert_well_formed(msg: object) -> None:
    """A decoded frame is an instance of the class registered for its op, fields well typed."""
    assert isinstance(msg, Message)
    assert type(msg) is MESSAGES[msg.op]
    for name, annotation in _fields(type(msg)):
        value = getattr(msg, name)
        assert _conforms(value, annotation), f"{msg.op}.{name} decoded as {value!r}"


def decode_or_protocol_error(frame: bytes) -> Message | None:
    """Decode `frame`; a ProtocolError is fine, any other exception fails the test."""
    try:
        msg = decode(frame)
    except ProtocolError as exc:
        assert str(exc), "a ProtocolError must say what is wrong"
        return None
    assert_well_formed(msg)
    return msg


def frame(*items: Any) -> bytes:
    """A raw frame, bypassing encode(), to send what a broken or hostile peer might."""
    return msgpack.packb(list(items), use_bin_type=True)


# ---- the message table ----------------------------------------------------------------------


def test_every_message_is_registered_under_its_op_with_a_direction():
    assert len(MESSAGES) >= 18
    for op, cls in MESSAGES.items():
        assert cls.op == op
        assert cls.direction in (p.E2S, p.S2E, p.C2S, p.S2C, p.C2E, p.E2C, p.EITHER)
        assert dataclasses.is_dataclass(cls)


def test_messages_are_frozen():
    msg = p.Suspend("t1", 5)
    with pytest.raises(dataclasses.FrozenInstanceError):
        msg.task_id = "t2"  # type: ignore[misc]


def test_declaring_an_op_twice_is_refused():
    with pytest.raises(TypeError, match="two messages declare op 'hello'"):

        @p.message("hello", p.E2S)
        class Impostor(Message):
            version: int

    assert MESSAGES["hello"] is p.Hello


def test_declaring_a_field_type_the_codec_cannot_check_is_refused():
    with pytest.raises(TypeError, match="unsupported field type"):

        @p.message("test_only_sets", p.E2S)
        class WithSet(Message):
            members: set

    assert "test_only_sets" not in MESSAGES


def test_a_heartbeat_carries_task_records_and_one_without_them_is_refused():
    beat = p.Heartbeat("e", "n", 1, 2, 1, 1, 0, 0, 10, 20, 30.0, 0, None, {"t": [5, 1]})
    assert decode(encode(beat)) == beat
    # A version-10 executor's heartbeat (13 fields): protocol versions must match.
    with pytest.raises(ProtocolError, match="heartbeat takes 14 fields, frame has 13"):
        decode(frame("heartbeat", "e", "n", 1, 2, 1, 1, 0, 0, 10, 20, 30.0, 0, None))


# ---- round trip ------------------------------------------------------------------------------


@pytest.mark.parametrize("op", sorted(MESSAGES))
@ROUND_TRIP
@given(data=st.data())
def test_every_message_round_trips(op, data):
    cls = MESSAGES[op]
    msg = data.draw(messages_of(cls))
    encoded = encode(msg)
    # The framing: one msgpack array, op first, then every field in declaration order.
    assert msgpack.unpackb(encoded, raw=False) == [op, *(getattr(msg, n) for n, _ in _fields(cls))]
    decoded = decode(encoded)
    assert type(decoded) is cls
    assert decoded == msg


def test_round_trip_keeps_the_64_bit_integer_boundaries():
    for value in (-(2**63), 2**63 - 1, 2**64 - 1):
        msg = p.Launch(
            "t", "m:f", None, payloads.pack_call([value], {"n": value}), 0, "batch", value
        )
        assert decode(encode(msg)) == msg
        assert payloads.unpack_call(msg.payload) == ([value], {"n": value})


def test_decode_accepts_bytearray_and_memoryview():
    encoded = encode(p.Kill("t1", 7))
    assert decode(bytearray(encoded)) == p.Kill("t1", 7)
    assert decode(memoryview(encoded)) == p.Kill("t1", 7)


def test_a_float_field_accepts_an_int_from_the_wire():
    fields = ["e", "n", 1, 2, 1, 0, 0, 0, 10, 20]
    msg = decode(frame("heartbeat", *fields, 50, 0, {}, {}))
    assert msg.mem_percent == 50


SAMPLE_VALUES = [None, True, 0, -(2**63), 1.5, "s", b"b", [1], {"k": 1}]
# The types of value each declared field type takes, written out as the protocol documents it.
TAKES = {float: {float, int}, type(None): {type(None)}}


def _takes(annotation) -> list:
    """The samples a field of `annotation` takes (the oracle for the decoder)."""
    if annotation is Any:
        return list(SAMPLE_VALUES)
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        parts = [_takes(a) for a in typing.get_args(annotation)]
        return [v for v in SAMPLE_VALUES if any(any(v is t for t in part) for part in parts)]
    origin = typing.get_origin(annotation) or annotation
    return [v for v in SAMPLE_VALUES if type(v) in TAKES.get(origin, {origin})]


@pytest.mark.parametrize("op", sorted(p.MESSAGES))
def test_decode_accepts_a_field_value_exactly_when_its_declared_type_does(op):
    """Every field of every message, given a value of every msgpack type: decoded when its
    declared type takes it (bool is no int, an int is a float), else refused naming it."""
    cls = p.MESSAGES[op]
    hints = typing.get_type_hints(cls)
    taken = [_takes(hints[name]) for name, _, _ in cls._checks]
    for i, (name, _, type_name) in enumerate(cls._checks):
        for value in SAMPLE_VALUES:
            fields = [taken[j][0] if j != i else value for j in range(len(taken))]
            if any(value is t for t in taken[i]):
                msg = decode(frame(op, *fields))
                assert getattr(msg, name) == value and type(msg) is cls
            else:
                with pytest.raises(ProtocolError, match=f"{op}.{name} must be {type_name}"):
                    decode(frame(op, *fields))


# ---- decoder robustness: fuzzing -----------------------------------------------------------


@FUZZ
@given(st.binary(max_size=200))
def test_random_bytes_decode_or_raise_protocol_error(data):
    decode_or_protocol_error(data)


@st.composite
def mutated_frames(draw: st.DrawFn) -> bytes:
    """A valid frame with a few bytes flipped, inserted, deleted, or the tail cut off."""
    data = bytearray(encode(draw(ANY_MESSAGE)))
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        kind = draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
        if kind == "insert":
            at = draw(st.integers(min_value=0, max_value=len(data)))
            data[at:at] = draw(st.binary(min_size=1, max_size=4))
        elif not data:
            continue
        elif kind == "flip":
            at = draw(st.integers(min_value=0, max_value=len(data) - 1))
            data[at] ^= draw(st.integers(min_value=1, max_value=255))
        elif kind == "delete":
            at = draw(st.integers(min_value=0, max_value=len(data) - 1))
            del data[at]
        else:
            del data[draw(st.integers(min_value=0, max_value=len(data) - 1)) :]
    return bytes(data)


@pytest.mark.slow  # about 0.8 s: a few hundred frames, each worth a look
@FUZZ
@given(mutated_frames())
def test_mutated_frames_decode_or_raise_protocol_error(data):
    decode_or_protocol_error(data)


@settings(derandomize=True, max_examples=80, deadline=None)
@given(ANY_MESSAGE, st.data())
def test_every_truncation_of_a_frame_is_a_protocol_error(msg, data):
    encoded = encode(msg)
    cut = data.draw(st.integers(min_value=0, max_value=len(encoded) - 1))
    with pytest.raises(ProtocolError, match="not valid msgpack"):
        decode(encoded[:cut])


# ---- decoder robustness: explicit cases ------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        pytest.param(b"", "not valid msgpack", id="empty frame"),
        pytest.param(b"\xc1", "not valid msgpack", id="reserved byte"),
        pytest.param(frame("reject", "x") + b"\x00", "not valid msgpack", id="trailing bytes"),
        pytest.param(
            msgpack.packb({"op": "hello"}), "non-empty msgpack array, got dict", id="map, not array"
        ),
        pytest.param(msgpack.packb("hello"), "non-empty msgpack array, got str", id="bare string"),
        pytest.param(msgpack.packb([]), "non-empty msgpack array, got list", id="empty array"),
        pytest.param(frame(1, "x"), "op must be a string, got int", id="int op"),
        pytest.param(frame(b"reject", "x"), "op must be a string, got bytes", id="bytes op"),
        pytest.param(frame("launch_all", "x"), "unknown op 'launch_all'", id="unknown op"),
        pytest.param(
            frame("suspend", "t1"), "suspend takes 2 fields, frame has 1", id="too few fields"
        ),
        pytest.param(
            frame("suspend", "t1", 5, 6),
            "suspend takes 2 fields, frame has 3",
            id="too many fields",
        ),
        pytest.param(
            frame("hello", True, "e", "n", 1, 2, "h", [], None),
            "hello.version must be int, got bool",
            id="bool for int",
        ),
        pytest.param(
            frame("hello", 1.0, "e", "n", 1, 2, "h", [], None),
            "hello.version must be int, got float",
            id="float for int",
        ),
        pytest.param(frame("reject", 5), "reject.reason must be str, got int", id="int for str"),
        pytest.param(
            frame("reject", b"no"), "reject.reason must be str, got bytes", id="bytes for str"
        ),
        pytest.param(
            frame("reject", None), "reject.reason must be str, got NoneType", id="nil for str"
        ),
        pytest.param(
            frame("launch", "t", "m:f", 5, b"\x92\x90\x80", 0, "batch", 0, False, None, None),
            "launch.main_path must be str or nil, got int",
            id="int for optional str",
        ),
        pytest.param(
            frame("launch", "t", "m:f", None, [[], {}], 0, "batch", 0, False, None, None),
            "launch.payload must be bytes, got list",
            id="array for a payload",
        ),
        pytest.param(
            frame("launch", "t", "m:f", None, "\x92\x90\x80", 0, "batch", 0, False, None, None),
            "launch.payload must be bytes, got str",
            id="str for a payload",
        ),
        pytest.param(
            frame("finished", "t", 0, 6, {}),
            "finished.result must be bytes, got int",
            id="a result that is not a payload",
        ),
        pytest.param(
            frame("status", "r", []),
            "status.snapshot must be dict, got list",
            id="array for dict",
        ),
        pytest.param(
            frame("results", {}),
            "results.items must be list, got dict",
            id="map for list",
        ),
        pytest.param(
            frame("heartbeat", "e", "n", 1, 2, 1, 0, 0, 0, 10, 20, True, 0, {}, {}),
            "heartbeat.mem_percent must be float, got bool",
            id="bool for float",
        ),
        pytest.param(b"\x92\xa6reject\xa2\xff\xfe", "not valid msgpack", id="invalid utf-8"),
        pytest.param(
            frame("status", "r", {"x": msgpack.ExtType(5, b"x")}),
            "msgpack extension type 5 is not allowed",
            id="ext type in a field",
        ),
        pytest.param(
            msgpack.packb(msgpack.ExtType(42, b"")),
            "extension type 42 is not allowed",
            id="ext type as the frame",
        ),
        pytest.param(b"\xdd\xff\xff\xff\xff", "not valid msgpack", id="array of 2**32-1 items"),
        pytest.param(b"\xdf\xff\xff\xff\xff", "not valid msgpack", id="map of 2**32-1 pairs"),
        pytest.param(b"\xdb\xff\xff\xff\xff", "not valid msgpack", id="str of 4 GiB"),
        pytest.param(b"\xc6\xff\xff\xff\xff", "not valid msgpack", id="bin of 4 GiB"),
        pytest.param(
            b"\x95\xa8finished\xa1t\x00\xdd\xff\xff\xff\xff\x80",
            "not valid msgpack",
            id="huge array inside a field",
        ),
        pytest.param(b"\x91" * 100_000 + b"\xc0", "not valid msgpack", id="deeply nested arrays"),
    ],
)
def test_malformed_frames_raise_a_protocol_error_that_says_why(data, expected):
    with pytest.raises(ProtocolError, match=re.escape(expected)):
        decode(data)


def test_an_unknown_op_is_quoted_but_cut_short():
    with pytest.raises(ProtocolError) as caught:
        decode(frame("x" * 10_000, 1))
    assert "unknown op 'xxxx" in str(caught.value)
    assert len(str(caught.value)) < 100  # the log line must not carry the peer's megabytes


def test_a_frame_that_is_not_bytes_is_refused():
    with pytest.raises(ProtocolError, match="a frame must be bytes, not str"):
        decode("hello")  # type: ignore[arg-type]


def test_frames_over_the_size_limit_are_refused_before_parsing():
    encoded = encode(p.Reject("version 2 is not spoken here"))
    assert decode(encoded, max_frame_bytes=len(encoded)) == p.Reject("version 2 is not spoken here")
    with pytest.raises(
        ProtocolError, match=f"{len(encoded)} bytes exceeds the {len(encoded) - 1}-byte limit"
    ):
        decode(encoded, max_frame_bytes=len(encoded) - 1)


def test_the_default_size_limit_is_64_mib():
    assert MAX_FRAME_BYTES == 64 * 1024 * 1024
    # Not msgpack at all: only a size check made before parsing can name the size.
    with pytest.raises(ProtocolError, match="exceeds the 67108864-byte limit"):
        decode(b"\xc1" * (MAX_FRAME_BYTES + 1))


def test_moderately_nested_values_still_decode():
    nested: list[Any] = []
    for _ in range(500):
        nested = [nested]
    msg = p.Status("r", {"nested": nested})
    assert decode(encode(msg)) == msg
    assert payloads.unpack_payload(payloads.pack_payload(nested)) == nested


# ---- encode errors name where the bad value sits ---------------------------------------------


def test_encode_names_the_path_of_a_nested_unencodable_value():
    with pytest.raises(EncodeError) as caught:
        encode(p.Status("r", {"jobs": [1, {"a": [2, {3}]}]}))
    assert "status.snapshot['jobs'][1]['a'][1] is of type set" in str(caught.value)
    with pytest.raises(EncodeError) as caught:
        payloads.pack_call([1, {"a": [2, {3}]}], {})
    assert "args[1]['a'][1] is of type set" in str(caught.value)


def test_encode_blames_the_bad_value_not_the_good_ones_beside_it():
    good = [2**64 - 1, -(2**63), b"raw", 1.5, None, True, "text", (1, 2)]
    with pytest.raises(EncodeError) as caught:
        payloads.pack_call([*good, {"k": {2}}], {})
    assert str(caught.value).startswith("args[8]['k'] is of type set")


def test_encode_names_an_unencodable_keyword_argument():
    with pytest.raises(EncodeError, match=r"kwargs\['when'\] is of type object"):
        payloads.pack_call([], {"when": object()})


def test_encode_names_an_unencodable_dict_key():
    with pytest.raises(EncodeError, match=r"finished\.result has a key of type object"):
        payloads.pack_payload({object(): 1}, "finished.result")


@pytest.mark.parametrize("value", [2**64, -(2**63) - 1, 10**30])
def test_encode_names_an_integer_beyond_64_bits(value):
    with pytest.raises(EncodeError, match=r"args\[0\] is an integer too large"):
        payloads.pack_call([value], {})


# ---- edge cases of the msgpack data model -----------------------------------------------------


def test_the_timestamp_extension_decodes_as_plain_data_and_other_extensions_are_refused():
    # msgpack decodes its predefined timestamp extension (-1) itself, without ext_hook: it is
    # data (a msgpack.Timestamp), never code. Any other extension type is refused.
    data = b"\x93\xa6status\xa1r\x81\xa1t\xd6\xff\x00\x00\x00\x01"  # snapshot {"t": ext -1}
    assert decode(data).snapshot == {"t": msgpack.Timestamp(1)}
    with pytest.raises(ProtocolError, match="extension type 5"):
        decode(b"\x93\xa6status\xa1r\x81\xa1t\xd6\x05\x00\x00\x00\x01")
    # Payloads the same way.
    assert payloads.unpack_payload(b"\xd6\xff\x00\x00\x00\x01") == msgpack.Timestamp(1)
    with pytest.raises(ProtocolError, match=r"payload cannot be decoded: .*extension type 5"):
        payloads.unpack_payload(b"\xd6\x05\x00\x00\x00\x01")


def test_tuple_dict_keys_survive_the_round_trip():
    # A result such as {(campaign, window): count} must not be lost on the way back.
    value = {(1, 2): 3, ("a", (4, 5)): [6]}
    assert payloads.unpack_payload(payloads.pack_payload(value)) == value
    assert payloads.unpack_call(payloads.pack_call([value], {"table": value})) == (
        [value],
        {"table": value},
    )
    message = p.Status("r", value)  # and in a frame's own maps
    assert decode(encode(message)) == message


def test_a_map_used_as_a_map_key_is_a_protocol_error():
    with pytest.raises(ProtocolError, match="a map key is itself a map"):
        decode(b"\x95\xa8finished\xa1t\x00\x81\x91\x81\x01\x02\x03\x80")
    with pytest.raises(ProtocolError, match="a map key is itself a map"):
        payloads.unpack_payload(b"\x81\x91\x81\x01\x02\x03")


def test_encode_reports_a_self_referential_value_as_an_encode_error():
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(EncodeError, match=r"finished\.result\[0\]\[0\].* nested more than"):
        payloads.pack_payload(loop, "finished.result")
    with pytest.raises(EncodeError, match=r"status\.snapshot\['loop'\]\[0\].* nested more"):
        encode(p.Status("r", {"loop": loop}))


# ---- nesting limits (a known gap is a strict xfail, so that a fix asks to drop the mark) ----


def _nested(levels: int) -> list[Any]:
    """A list holding a list ... `levels` lists deep in all."""
    value: list[Any] = []
    for _ in range(levels - 1):
        value = [value]
    return value


def test_encode_blames_the_set_not_a_deep_list_that_msgpack_can_carry():
    deep = _nested(600)
    assert payloads.unpack_payload(payloads.pack_payload(deep)) == deep  # encodable alone
    with pytest.raises(EncodeError) as caught:
        payloads.pack_payload([deep, {1}], "finished.result")
    assert str(caught.value).startswith("finished.result[1] is of type set")


@pytest.mark.xfail(
    strict=True,
    raises=ProtocolError,
    reason="packb accepts one more level of nesting than unpackb, so such a frame encodes and "
    "is then dropped by its receiver (task results, being payloads, are not lost this way: "
    "see the next test)",
)
def test_whatever_encodes_also_decodes_at_the_nesting_limit():
    for levels in range(1015, 1030):
        try:
            encoded = encode(p.Status("r", {"v": _nested(levels)}))
        except EncodeError:
            continue  # refusing at the sender is fine
        decode(encoded)


def test_a_payload_past_the_nesting_limit_packs_but_its_receiver_names_the_problem():
    # The gap above does not lose a task's result: a payload is opaque bytes on the way, so
    # its frames decode, and the client fails the one future with this ProtocolError.
    failures = 0
    for levels in range(1015, 1030):
        try:
            blob = payloads.pack_payload(_nested(levels))
        except EncodeError:
            continue
        try:
            payloads.unpack_payload(blob, "the result of t1")
        except ProtocolError as exc:
            assert str(exc).startswith("the result of t1 is not valid msgpack")
            failures += 1
        assert decode(encode(p.Finished("t1", 0, blob, {}))).result == blob
    assert failures >= 1


# ---- payloads ---------------------------------------------------------------------------------


def test_a_payload_is_opaque_to_the_frame_that_carries_it():
    # The codec checks only that a payload is bytes: what the scheduler forwards need not be
    # msgpack at all (the executor or client that opens it says what is wrong).
    for junk in (b"", b"\xc1", b"\xdd\xff\xff\xff\xff"):
        launch = p.Launch("t", "m:f", None, junk, 0, "batch", 0)
        assert decode(encode(launch)) == launch
        chunk = p.LaunchChunk("c", "m:f", None, [["t", junk]], 0, "batch", 0)
        assert decode(encode(chunk)) == chunk
        assert decode(encode(p.Finished("t", 0, junk, {}))).result == junk


def test_pack_call_shares_packed_kwargs_and_unpacks_to_the_same_call():
    kwargs = {"alpha": 0.1, "table": {(1, 2): [3]}}
    shared = payloads.pack_payload(kwargs)
    blob = payloads.pack_call(([1], "x"), kwargs, packed_kwargs=shared)
    assert blob == payloads.pack_call([[1], "x"], kwargs)
    assert payloads.unpack_call(blob) == (
        [[1], "x"],
        kwargs,
    )  # tuples travel as lists, keys as tuples


@pytest.mark.parametrize(
    ("blob", "expected"),
    [
        (b"\xc1", "task payload is not valid msgpack"),
        (b"", "task payload is not valid msgpack"),
        (payloads.pack_payload([1, 2]) + b"\x00", "task payload is not valid msgpack"),
        (payloads.pack_payload([[1], {}, 3]), "task payload's blocked arguments must be"),
        (payloads.pack_payload([[None], {}, [[1, [b""]]]]), "blocked arguments must be"),
        (payloads.pack_payload([[1], {}, [[0, [b""]]]]), "blocked arguments must be"),
        (payloads.pack_payload([[None], {}, [[0, ["x"]]]]), "blocked arguments must be"),
        (payloads.pack_payload([[None], {}, [[0, [b"\x01"]]]]), "must be an array, got int"),
        (payloads.pack_payload({"args": [1]}), "task payload must be [args, kwargs]"),
        (payloads.pack_payload([{}, {}]), "task payload must be [args, kwargs]"),
        (payloads.pack_payload([[], {1: 2}]), "task payload must be [args, kwargs]"),
        ("\x92\x90\x80", "task payload must be bytes (a msgpack bin), got str"),
        (None, "task payload must be bytes (a msgpack bin), got NoneType"),
    ],
)
def test_unpack_call_says_what_is_wrong_with_a_payload(blob, expected):
    with pytest.raises(ProtocolError, match=re.escape(expected)):
        payloads.unpack_call(blob)


@FUZZ
@given(st.binary(max_size=200))
def test_random_payloads_unpack_or_raise_protocol_error(data):
    try:
        payloads.unpack_call(data)
    except ProtocolError as exc:
        assert str(exc).startswith("task payload ")


@ROUND_TRIP
@given(st.lists(PLAIN_VALUES, max_size=4), st.dictionaries(st.text(max_size=8), PLAIN_VALUES))
def test_calls_round_trip_through_their_payload(args, kwargs):
    assert payloads.unpack_call(payloads.pack_call(args, kwargs)) == (args, kwargs)


# ---- batches --------------------------------------------------------------------------------


def test_a_batch_unpacks_in_order_and_a_bad_item_spoils_only_itself():
    good = [
        p.Started("t1", 0, 5),
        p.Finished("t1", 0, payloads.pack_payload([1, 2]), {"records": 2}),
    ]
    frames = [encode(good[0]), b"\xc1", encode(p.Batch([encode(good[1])])), encode(good[1])]
    items = p.unbatch(decode(encode(p.Batch(frames))))
    assert items[0] == good[0] and items[3] == good[1]
    assert isinstance(items[1], ProtocolError) and "not valid msgpack" in str(items[1])
    assert isinstance(items[2], ProtocolError) and "itself a batch" in str(items[2])


def test_a_batch_item_that_is_not_bytes_is_refused():
    (item,) = p.unbatch(p.Batch(["launch"]))
    assert isinstance(item, ProtocolError) and "not bytes" in str(item)


def test_a_big_argument_travels_in_blocks_and_unpacks_to_the_same_call():
    big = list(range(3 * payloads.BLOCKED_MIN_ITEMS))
    words = tuple(f"word-{i}" * 20 for i in range(payloads.BLOCKED_MIN_ITEMS))
    shared = payloads.pack_payload({"k": 1})
    for packed_kwargs in (None, shared):
        blob = payloads.pack_call([big, "x", words], {"k": 1}, packed_kwargs=packed_kwargs)
        args, kwargs, blocked = payloads.open_call(blob)
        assert args == [None, "x", None] and kwargs == {"k": 1}
        entries = [(index, list(blocks)) for index, blocks in blocked]
        assert [index for index, _ in entries] == [0, 2]
        for _, blocks in entries:
            parts = [payloads.unpack_block(block) for block in blocks]
            assert len(parts) > 1 and all(0 < len(part) <= 8_192 for part in parts)
            assert all(len(block) < 100 * 1024 for block in blocks)  # sized by bytes too
        # A reader that skips an argument's blocks still finds the next argument's.
        _, _, lazily = payloads.open_call(blob)
        assert [index for index, _ in lazily] == [0, 2]
        assert payloads.unpack_call(blob) == ([big, "x", list(words)], {"k": 1})
    # Below the threshold: the plain two-item shape, as before.
    small = payloads.pack_call([big[: payloads.BLOCKED_MIN_ITEMS - 1]], {})
    assert list(payloads.open_call(small)[2]) == [] and small[:1] == b"\x92"


def test_a_big_argument_kept_packed_reads_as_the_sequence_it_was():
    records = [f"r{i}" if i % 3 else i for i in range(5 * payloads.BLOCKED_MIN_ITEMS + 7)]
    boundaries = []
    args, _ = payloads.open_task_call(
        payloads.pack_call([records, records[:10]], {}),
        fetch=None,
        boundary=lambda: boundaries.append(1),
        kept_packed=lambda index: index == 0,
    )
    blocks = args[0]
    assert isinstance(blocks, payloads.Blocks) and args[1] == records[:10]
    assert len(boundaries) == len(blocks._blocks) > 1  # a record boundary after each block
    assert len(blocks) == len(records) and list(blocks) == records
    for index in (0, 1, 8_191, 8_192, 40_000, -1, -len(records)):
        assert blocks[index] == records[index]
    for cut in (slice(5, 20_000), slice(-9, None), slice(None, None, 1_000), slice(9, 3)):
        assert blocks[cut] == records[cut]
    for index in (len(records), -len(records) - 1):
        with pytest.raises(IndexError, match="partition index out of range"):
            blocks[index]
    assert sum(1 for _ in blocks) == len(records)  # read again: still all there
    with pytest.raises(ProtocolError, match="must be a packed array"):
        payloads.Blocks([b"\xc0"])


def test_a_big_argument_that_cannot_be_encoded_is_named():
    bad = [0] * payloads.BLOCKED_MIN_ITEMS + [{1, 2}]
    with pytest.raises(EncodeError, match=r"args\[0\]\[16384\] is of type set"):
        payloads.pack_call([bad], {})


def test_a_sequence_of_records_big_in_bytes_travels_in_blocks_too():
    # ~2,000 records of ~90 bytes: far fewer items than BLOCKED_MIN_ITEMS, ~180 KB packed.
    records = [[i, list(range(40)), list(range(40, 80))] for i in range(2_000)]
    assert len(records) < payloads.BLOCKED_MIN_ITEMS and payloads.is_big(records)
    blob = payloads.pack_call([records, [1, 2, 3]], {})
    args, _, blocked = payloads.open_call(blob)
    entries = [(index, list(blocks)) for index, blocks in blocked]
    assert args[1] == [1, 2, 3] and [index for index, _ in entries] == [0]
    blocks = entries[0][1]
    assert len(blocks) > 2 and all(len(b) <= 2 * payloads.BLOCK_TARGET_BYTES for b in blocks)
    assert payloads.unpack_call(blob) == ([records, [1, 2, 3]], {})
    # Small in bytes, short, or not a sequence: one msgpack call, as before.
    assert not payloads.is_big([[i, [1, 2]] for i in range(2_000)])  # ~10 KB
    assert not payloads.is_big(["x" * 10_000] * (payloads.SAMPLED_FROM_ITEMS - 1))
    assert not payloads.is_big({"k": list(range(100_000))})
    assert payloads.is_big(["x" * 10_000] * payloads.SAMPLED_FROM_ITEMS)


@pytest.mark.parametrize(
    "value",
    [
        [[i, "x" * 50] for i in range(5_000)],
        tuple(range(70_000)),  # an array 32 header; blocks of array 16
        list(range(2 * 8_192 + 5)),  # a last block of 5 items: a fixarray header
        list(range(20)),  # not big: packed in one call, no boundary
    ],
)
def test_a_big_value_packed_a_block_at_a_time_is_the_same_bytes(value):
    boundaries = []
    packed = payloads.pack_payload(value, "result", lambda: boundaries.append(1))
    assert packed == msgpack.packb(value, use_bin_type=True)
    assert (len(boundaries) > 1) == payloads.is_big(value)


def test_a_kept_result_packed_with_boundaries_is_the_same_payload():
    value = list(range(50_000))
    boundaries = []
    assert pack_kept(value, lambda: boundaries.append(1)) == pack_kept(value)
    assert len(boundaries) == len(payloads.pack_blocks(value)) > 1


# ---- a batch's values packed as one array (protocol 12) -----------------------------------------


@given(st.lists(st.one_of(st.integers(-(2**63), 2**63 - 1), st.text(max_size=40)), max_size=40))
def test_packed_batch_values_count_and_split_back_into_their_payloads(values):
    each = [payloads.pack_payload(v) for v in values]
    packed = payloads.pack_batch(each)
    if not values:
        assert packed is None  # nothing to pack: an empty batch is never sent
        return
    assert packed == msgpack.packb(values)  # the values as one array
    assert batches.values_count(packed) == len(values) and batches.batch_payloads(packed) == each
    assert batches.batch_items("j", 5, packed, [], {}) == [
        [f"j/{i}", "finished", payload, None, {}] for i, payload in enumerate(each, 5)
    ]
    assert batches.values_count(each) == len(values) and batches.batch_payloads(each) is each


def test_only_small_inline_successes_are_packed():
    small = payloads.pack_payload(1)
    assert payloads.pack_batch([small, None]) is None  # a failure: the list says which
    assert payloads.pack_batch([small, payloads.pack_payload("x" * 2000)]) is None  # data
    reference = payloads.pack_reference(datastore.Reference("h", "/p", 9, "tcp://h:1", "k"))
    assert payloads.pack_batch([small, reference]) is None  # fetched by the client alone
    assert payloads.pack_batch([small, b""]) is None  # no payload is empty
    assert payloads.pack_batch([small] * 20) == msgpack.packb([1] * 20)


@pytest.mark.parametrize(
    ("packed", "problem"),
    [
        (b"", "do not start with an array"),
        (b"\xc1", "do not start with an array"),
        (b"\x01", "do not start with an array"),
        (b"\x95\x01", "claim 5 in 2 bytes"),
        (b"\xdd\xff\xff\xff\xff", "claim 4294967295 in 5 bytes"),
    ],
)
def test_packed_values_that_are_not_an_array_say_so(packed, problem):
    with pytest.raises(p.ProtocolError, match=problem):
        batches.values_count(packed)
    with pytest.raises(p.ProtocolError):
        batches.batch_payloads(packed)


@pytest.mark.parametrize("packed", [b"\x92\x01\xc1", b"\x92\x01\x02\x03", b"\x93\x01\x02\x91"])
def test_packed_values_that_do_not_split_into_their_array_say_so(packed):
    with pytest.raises(p.ProtocolError, match=r"do not split|end at"):
        batches.batch_payloads(packed)
    with pytest.raises(p.ProtocolError):
        batches.batch_items("j", 0, packed, [], {})


def test_the_ids_of_a_submit_that_does_not_decode_are_read_as_far_as_they_can_be():
    tasks = [["j/0", b"x"], ["j/1", b"y"], "junk", ["k" * 201, b"z"]]
    frame = msgpack.unpackb(encode(p.Submit("j", "batch", 0, None, "m:f", None, [], 0)))
    frame[3], frame[7] = "not an int", tasks
    bad = msgpack.packb(frame)
    with pytest.raises(ProtocolError):
        decode(bad)
    assert batches.submit_ids(bad) == [
        ("j", ["j/0", "j/1"])
    ]  # the junk and the overlong id skipped
    bulk = encode(p.Submit("b", "batch", 0, None, "m:f", None, [], 0, {"chunksize": 2}, [b"1"] * 3))
    inner = encode(p.Batch([bulk, encode(p.Ping("r", 1)), b"\xc1", encode(p.Batch([bad]))]))
    # A bulk job's tasks are the whole job (one job_refused); one level of batch only.
    assert batches.submit_ids(inner) == [("b", None)]
    columns = msgpack.unpackb(encode(p.Submit("c", "batch", 0, None, "m:f", None, [], 0)))
    columns[9:] = [{"chunksize": 2}, msgpack.packb([1, 2]), "kwargs not bytes"]
    assert batches.submit_ids(msgpack.packb(columns)) == [("c", None)]
    assert batches.submit_ids(encode(p.Batch([inner]))) == []
    for frame in (b"\xc1", msgpack.packb(["submit", "x" * 201]), msgpack.packb(["ping", "r"])):
        assert batches.submit_ids(frame) == []


def test_reading_the_ids_of_undecodable_submits_is_bounded():
    def submit(job_id, tasks=(), bulk=None):
        return encode(p.Submit(job_id, "batch", 0, None, "m:f", None, list(tasks), 0, None, bulk))

    tasks = [[f"b/{i}", b"x"] for i in range(50_000)]
    assert [len(ids) for _, ids in batches.submit_ids(submit("b", tasks))] == [10_000]
    # A bulk job counts as one id, however many tasks it names.
    bulk = [submit(f"b{i}", bulk=[b"1"] * 50) for i in range(3)]
    assert batches.submit_ids(encode(p.Batch(bulk)), most_ids=3) == [
        (f"b{i}", None) for i in range(3)
    ]
    many = [submit(f"j{i}", [[f"j{i}/0", b"x"]]) for i in range(100)]
    assert len(batches.submit_ids(encode(p.Batch(many)))) == 64
    assert sum(len(ids) for _, ids in batches.submit_ids(encode(p.Batch(many)), most_ids=10)) == 10

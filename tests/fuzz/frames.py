"""Seeded generators of hostile frames and of well-formed nonsense, for the fuzz tests.

Everything draws from one `random.Random`, so a seed names a run exactly. Two kinds of
input:

* `nonsense(rng, cls, ids)`: a message of class `cls` whose fields have their declared
  types (so it decodes) but nasty values: edge integers, NaN and infinities, empty and
  huge strings, ids of real tasks mixed with invented ones, stats maps whose values are not
  counts, lists of the wrong shapes.
* `FrameFuzzer.frame()`: bytes that mostly do not decode: random bytes, valid frames
  truncated, bit-flipped, spliced or with bytes inserted, valid msgpack of the wrong shape
  (wrong field counts, wrong types, unknown ops, huge numbers, nesting past msgpack's
  limit, extension types, a map as a map key, declared lengths past the frame), batches of
  those, and (a share of) valid frames from the templates, which at the receiver are
  often out of place.
"""

from __future__ import annotations

import dataclasses
import functools
import random
import types
import typing
from collections.abc import Sequence
from typing import Any

import msgpack

from tidal.runtime import payloads
from tidal.runtime import protocol as p

__all__ = ["EDGE_INTS", "FrameFuzzer", "nasty_value", "nonsense"]

EDGE_INTS = (0, 1, -1, 2**31, 2**63 - 1, -(2**63), 2**64 - 1, 10**15)
EDGE_FLOATS = (0.0, -0.0, float("nan"), float("inf"), float("-inf"), 1e308, -1e-308)
STAT_KEYS = ("running_ns", "suspended_ns", "suspensions", "records", "finished_at_ns")


@functools.cache
def _fields(cls: type[p.Message]) -> list[tuple[str, Any]]:
    hints = typing.get_type_hints(cls)
    return [(f.name, hints[f.name]) for f in dataclasses.fields(cls)]


def nasty_value(rng: random.Random, depth: int = 0) -> Any:
    """Any msgpack value, biased toward edges; nested at most a few levels."""
    roll = rng.random()
    if depth < 3 and roll < 0.15:
        return [nasty_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    if depth < 3 and roll < 0.25:
        return {
            rng.choice(["a", "running_ns", "", 7, None]): nasty_value(rng, depth + 1)
            for _ in range(rng.randrange(3))
        }
    return rng.choice(
        [
            None,
            True,
            False,
            rng.choice(EDGE_INTS),
            rng.choice(EDGE_FLOATS),
            "",
            "x" * rng.randrange(1, 300),
            "\u00e9\u2603\U0001f600",
            b"",
            rng.randbytes(rng.randrange(1, 40)),
        ]
    )


def _nasty_stats(rng: random.Random) -> dict[Any, Any]:
    stats: dict[Any, Any] = {}
    for key in rng.sample(STAT_KEYS, rng.randrange(len(STAT_KEYS) + 1)):
        stats[key] = rng.choice(
            [*EDGE_INTS, *EDGE_FLOATS, "12", None, [], {}, True, rng.randrange(10**6)]
        )
    if rng.random() < 0.2:
        stats[nasty_value(rng, 3) if rng.random() < 0.5 else "x"] = nasty_value(rng)
    return stats


def _typed(rng: random.Random, name: str, annotation: Any, ids: Sequence[str]) -> Any:
    """A nasty value of the declared type `annotation` for field `name`."""
    if isinstance(annotation, types.UnionType):
        return _typed(rng, name, rng.choice(typing.get_args(annotation)), ids)
    if annotation is type(None):
        return None
    if annotation is Any:
        return nasty_value(rng)
    if annotation is int:
        return rng.choice([*EDGE_INTS, rng.randrange(-5, 5), rng.randrange(10**9)])
    if annotation is float:
        return rng.choice([*EDGE_FLOATS, 50.0, 100.0, 250.0, rng.randrange(100)])
    if annotation is bool:
        return rng.random() < 0.5
    if annotation is str:
        if name in ("priority",):
            return rng.choice(["stream", "batch", "", "STREAM", "urgent"])
        if name in ("command",):
            return rng.choice(["suspend", "resume", "kill", "launch", "steal", "x"])
        if name in ("policy",):
            return rng.choice(["lb", "fifo", "nope", "os:system", "", ":"])
        if name in ("fn",):
            return rng.choice(["tidal.workloads.synthetic:total", "no.such:fn", "x", ""])
        if ids and rng.random() < 0.7:
            return rng.choice(ids)
        return rng.choice(["", "x", "\x00", "z" * 1000, str(rng.random())])
    if annotation is bytes:
        return rng.choice(
            [b"", rng.randbytes(rng.randrange(1, 30)), payloads.pack_call([[1, 2]], {})]
        )
    if annotation is dict:
        return _nasty_stats(rng) if rng.random() < 0.7 else {"chunksize": nasty_value(rng)}
    if annotation is list:
        return _nasty_list(rng, name, ids)
    raise TypeError(f"no nasty values for field type {annotation!r}: teach tests/fuzz about it")


def _nasty_list(rng: random.Random, name: str, ids: Sequence[str]) -> list[Any]:
    """A list field: sometimes the shape its receiver expects, with wrong parts."""
    items: list[Any] = []
    for _ in range(rng.randrange(5)):
        task_id = rng.choice(ids) if ids and rng.random() < 0.7 else nasty_value(rng)
        shape = rng.random()
        if name == "holding":  # a hello's [task_id, attempt, state, detail]
            items.append(
                [
                    task_id,
                    rng.choice([0, 1, -1, 2**63 - 1, "0", None]),
                    rng.choice(["running", "queued", "resuming", "suspended", "finished"]),
                    rng.choice(
                        [
                            None,
                            [nasty_value(rng), nasty_value(rng)],
                            [payloads.pack_payload(1), None, _nasty_stats(rng)],
                            [None, ["E", "m", "t"], {}],
                            [None, "err", []],
                        ]
                    ),
                ]
            )
            if rng.random() < 0.2:
                items[-1][2] = rng.choice(["failed", "done", 7])
        elif name == "frames":  # a batch's items: bytes, mostly frames
            items.append(p.encode(p.Ping("x", 1)) if shape < 0.5 else rng.choice([b"\xc1", 3, "s"]))
        elif shape < 0.4:  # a result item, [task_id, outcome, value, error, stats]
            items.append(
                [
                    task_id,
                    rng.choice(["finished", "failed", "cancelled", "exploded", 1]),
                    rng.choice([payloads.pack_payload(7), None, "7", b"\xc1"]),
                    rng.choice([None, ["E", "m", "t"], "err", [1]]),
                    rng.choice([_nasty_stats(rng), None, []]),
                ]
            )
        elif shape < 0.7:  # a submit's task, [task_id, payload, options]
            entry = [task_id, rng.choice([payloads.pack_call([[3]], {}), b"", "x", None])]
            if rng.random() < 0.5:
                entry.append(rng.choice([{"preferred": ["n0", 3]}, {"x": 1}, [], None]))
            items.append(entry)
        else:
            items.append(task_id if rng.random() < 0.5 else nasty_value(rng))
    return items


def nonsense(rng: random.Random, cls: type[p.Message], ids: Sequence[str] = ()) -> p.Message:
    """A well-formed `cls` message (it encodes and decodes) with nasty field values."""
    values = {}
    for name, annotation in _fields(cls):
        values[name] = _typed(rng, name, annotation, ids)
    if "version" in values and rng.random() < 0.8:
        values["version"] = p.PROTOCOL_VERSION
    return cls(**values)


# ---- frames that mostly do not decode --------------------------------------------------------


def _deep(rng: random.Random) -> bytes:
    """Arrays or maps nested past msgpack's limit (about 1,000), or just under it."""
    depth = rng.choice([900, 1023, 1025, 5000])
    opener = b"\x91" if rng.random() < 0.5 else b"\x81\xa1k"
    return b"\x92\xa4ping" + opener * depth + b"\xc0"


def _raw_oddities(rng: random.Random) -> bytes:
    return rng.choice(
        [
            b"",
            b"\xc1",
            b"\xdd\xff\xff\xff\xff",  # an array claiming 2^32-1 items
            b"\xdb\xff\xff\xff\xff",  # a str claiming 4 GiB
            b"\x92\xa4ping\xc7\x01\x05x",  # an extension type
            b"\x93\xa4ping\x81\x81\xa1a\x01\x02\x03",  # a map as a map key
            b"\x91\xa4ping\x00",  # trailing bytes
            b"\xa5hello",  # a str, not an array
            b"\x90",  # an empty array
            b"\x92\x07\x01",  # an op that is not a str
            b"\x92\xa4ping\xd4\xff\x00",  # a Timestamp-like ext -1 of the wrong size
            b"\x91\xff",  # a negative fixint op
        ]
    )


class FrameFuzzer:
    """Hostile frames built from `templates` (valid messages a peer might send)."""

    STRATEGIES = (
        "random_bytes",
        "truncated",
        "bit_flipped",
        "spliced",
        "inserted",
        "wrong_fields",
        "wrong_types",
        "unknown_op",
        "huge_numbers",
        "deep",
        "oddity",
        "batch",
        "valid",
        "nonsense",
    )

    def __init__(
        self,
        rng: random.Random,
        templates: Sequence[p.Message],
        *,
        nonsense: Sequence[type[p.Message]] = (),
        ids: Sequence[str] = (),
        weights: dict[str, float] | None = None,
    ) -> None:
        if not templates:
            raise ValueError("a FrameFuzzer needs at least one template message")
        self.rng = rng
        self.nonsense_classes = list(nonsense)
        self.ids = list(ids)
        self.templates = list(templates)
        self.frames = [p.encode(msg) for msg in self.templates]
        chosen = {name: 1.0 for name in self.STRATEGIES}
        chosen["nonsense"] = 1.0 if self.nonsense_classes else 0.0
        chosen.update(weights or {})
        self._names = [name for name in self.STRATEGIES if chosen[name] > 0]
        self._weights = [chosen[name] for name in self._names]
        self.counts: dict[str, int] = dict.fromkeys(self.STRATEGIES, 0)

    def frame(self) -> bytes:
        """One frame, by a strategy drawn at random (counted in `counts`)."""
        name = self.rng.choices(self._names, self._weights)[0]
        self.counts[name] += 1
        return getattr(self, f"_{name}")()

    # ---- strategies (each returns bytes) ---------------------------------------------------

    def _valid_frame(self) -> bytes:
        return self.rng.choice(self.frames)

    def _random_bytes(self) -> bytes:
        rng = self.rng
        return rng.randbytes(rng.choice([1, 2, 5, 16, 64, rng.randrange(1, 2000)]))

    def _truncated(self) -> bytes:
        frame = self._valid_frame()
        return frame[: self.rng.randrange(len(frame))]

    def _bit_flipped(self) -> bytes:
        frame = bytearray(self._valid_frame())
        for _ in range(self.rng.choice([1, 1, 2, 4, 8])):
            frame[self.rng.randrange(len(frame))] ^= 1 << self.rng.randrange(8)
        return bytes(frame)

    def _spliced(self) -> bytes:
        a, b = self._valid_frame(), self._valid_frame()
        return a[: self.rng.randrange(len(a) + 1)] + b[self.rng.randrange(len(b)) :]

    def _inserted(self) -> bytes:
        frame = self._valid_frame()
        at = self.rng.randrange(len(frame) + 1)
        return frame[:at] + self.rng.randbytes(self.rng.randrange(1, 9)) + frame[at:]

    def _body(self) -> list[Any]:
        return msgpack.unpackb(self._valid_frame(), raw=False, strict_map_key=False)

    def _pack(self, body: Any) -> bytes:
        return msgpack.packb(body, use_bin_type=True)

    def _wrong_fields(self) -> bytes:
        body = self._body()
        if len(body) > 1 and self.rng.random() < 0.5:
            del body[self.rng.randrange(1, len(body))]
        else:
            body.insert(self.rng.randrange(1, len(body) + 1), nasty_value(self.rng))
        return self._pack(body)

    def _wrong_types(self) -> bytes:
        body = self._body()
        if len(body) > 1:
            body[self.rng.randrange(1, len(body))] = nasty_value(self.rng)
        return self._pack(body)

    def _unknown_op(self) -> bytes:
        body = self._body()
        body[0] = self.rng.choice(["", "launch_all", "PING", "x" * 200, "\x00", "batch "])
        if self.rng.random() < 0.3:  # another message's op over these fields
            body[0] = self.rng.choice(list(p.MESSAGES))
        return self._pack(body)

    def _huge_numbers(self) -> bytes:
        body = self._body()
        for i in range(1, len(body)):
            if type(body[i]) is int or (type(body[i]) is float and self.rng.random() < 0.5):
                body[i] = self.rng.choice([*EDGE_INTS, *EDGE_FLOATS])
        frame = self._pack(body)
        if self.rng.random() < 0.3:  # past 64 bits: msgpack cannot say it, so say it raw
            frame = frame[:-1] + b"\xcf\xff\xff\xff\xff\xff\xff\xff"
        return frame

    def _deep(self) -> bytes:
        return _deep(self.rng)

    def _oddity(self) -> bytes:
        return _raw_oddities(self.rng)

    def _batch(self) -> bytes:
        rng = self.rng
        items: list[Any] = []
        for _ in range(rng.randrange(1, 6)):
            roll = rng.random()
            if roll < 0.1:
                items.append(p.encode(p.Batch([self._valid_frame()])))  # nested: refused
            elif roll < 0.2:
                items.append(nasty_value(rng))  # not bytes
            elif roll < 0.5:
                items.append(self._valid_frame())
            else:
                items.append(rng.choice([self._bit_flipped, self._truncated, self._oddity])())
        return p.encode(p.Batch(items))

    def _valid(self) -> bytes:
        return self._valid_frame()

    def _nonsense(self) -> bytes:
        return p.encode(nonsense(self.rng, self.rng.choice(self.nonsense_classes), self.ids))


def decodes_to(frame: bytes, classes: tuple[type, ...]) -> bool:
    """Whether `frame` decodes to a message of one of `classes`, alone or in a batch."""
    try:
        msg = p.decode(frame)
    except p.ProtocolError:
        return False
    items = p.unbatch(msg) if isinstance(msg, p.Batch) else [msg]
    return any(isinstance(item, classes) for item in items)

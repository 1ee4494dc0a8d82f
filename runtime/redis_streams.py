"""Redis Streams as a `tidal.streams` source and sink (redis-py against a real redis-server).

`RedisSource` reads a stream through a consumer group (one per job): `XREADGROUP` for new
entries, `XACK` once a batch's result is written, and on start `XAUTOCLAIM` of the entries a
dead consumer left pending, cut into the batches they were in (each batch's first and last
ids are kept in a hash beside the stream, `<stream>:tidal:<group>:cuts`, from before its task
runs until it is acknowledged). Its lag is the group's pending and undelivered entries, and
the age of the oldest (from its id: Redis ids start with the ms they were added at).

`RedisCountSink` adds each batch's counts to Redis hashes in one Lua script that first sets
the batch's marker key (`<prefix>:done:<batch key>`, kept `marker_ttl_s`): a batch whose
marker exists adds nothing. Replayed batches are therefore counted once.

Redis going away is survived: every call is retried every RETRY_S until Redis answers, with
one warning when it goes and one line when it is back (until the driver stops:
`stop_waiting`). A batch that fails for good is set aside in `<stream>:tidal:<group>:dead`
(its key, ids and error) and acknowledged in the same transaction, so that it does not hold
the lag up for ever and is never set aside twice.

Discussion: why a consumer group per job and cuts in Redis. The group keeps the pending list
(what was delivered and not acknowledged) in Redis, so a driver that dies loses nothing and
its successor claims what it held; the cuts make the successor's batches the same as the
dead driver's, so the sink's per-batch marker is enough for exactly-once (an entry-by-entry
marker would cost a key per event).
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

import msgpack
import redis

from tidal.runtime.streams import Batch, Entry, Lag, MalformedEntry, Sink, Source

__all__ = ["RETRY_S", "RedisCountSink", "RedisSource", "decode_msgpack_field", "entry_ms"]

log = logging.getLogger("tidal.streams")

RETRY_S = 0.5
CLAIM_BATCH = 1000


def entry_ms(entry_id: str) -> int:
    """The ms a Redis stream entry was added at (its id is `<ms>-<seq>`)."""
    return int(entry_id.split("-", 1)[0])


def _order(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def decode_msgpack_field(entry: Entry, name: bytes = b"e") -> Any:
    """The record an entry holds as one msgpack field `name` (MalformedEntry if it does not)."""
    fields = entry.fields
    if not isinstance(fields, dict) or name not in fields:
        raise MalformedEntry(f"it has no field {name.decode()!r} (fields: {list(fields)[:5]})")
    try:
        return msgpack.unpackb(fields[name], raw=False, strict_map_key=False)
    except Exception as exc:
        raise MalformedEntry(f"its {name.decode()!r} is not msgpack ({exc})") from None


class _Connection:
    """A redis-py client whose calls wait for Redis to come back, saying so once."""

    def __init__(self, url: str, closed: Callable[[], bool]) -> None:
        self.url = url
        self.redis = redis.Redis.from_url(url, socket_connect_timeout=2, health_check_interval=10)
        self._closed = closed
        self._down_since: float | None = None

    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        while True:
            try:
                result = fn(*args, **kwargs)
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                if self._closed():
                    raise
                if self._down_since is None:
                    self._down_since = time.monotonic()
                    log.warning(
                        "Redis at %s went away (%s): retrying every %g s", self.url, exc, RETRY_S
                    )
                time.sleep(RETRY_S)
                continue
            if self._down_since is not None:
                log.warning(
                    "Redis at %s is back after %.1f s",
                    self.url,
                    time.monotonic() - self._down_since,
                )
                self._down_since = None
            return result


class RedisSource(Source):
    """A Redis stream read through consumer group `group` (see the module docstring).

    `decode(entry)` makes a record of an entry (MalformedEntry if it cannot); by default the
    record is the entry's one msgpack field `e`. A new group starts at `start_id` ("0": the
    whole stream; "$": what is added from now on). On start, entries pending with another
    consumer for `claim_idle_s` or more are claimed and replayed."""

    def __init__(
        self,
        url: str,
        stream: str,
        group: str,
        *,
        consumer: str | None = None,
        decode: Callable[[Entry], Any] = decode_msgpack_field,
        start_id: str = "0",
        claim_idle_s: float = 10.0,
    ) -> None:
        self.name = f"{stream} ({group})"
        self.stream, self.group = stream, group
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.cuts_key = f"{stream}:tidal:{group}:cuts"
        self.dead_key = f"{stream}:tidal:{group}:dead"
        self._decode = decode
        self._claim_idle_ms = int(claim_idle_s * 1000)
        self._closing = False
        self._conn = _Connection(url, lambda: self._closing)
        try:
            self._conn.call(
                self._conn.redis.xgroup_create, stream, group, id=start_id, mkstream=True
            )
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def read(self, count: int, block_s: float) -> list[Entry]:
        block = max(1, int(block_s * 1000))
        answer = self._conn.call(
            self._conn.redis.xreadgroup,
            self.group,
            self.consumer,
            {self.stream: ">"},
            count=max(1, count),
            block=block,
        )
        return [e for _, entries in answer or () for e in _entries(entries)]

    def decode(self, entry: Entry) -> Any:
        return self._decode(entry)

    def begin(self, batch: Batch) -> None:
        self._conn.call(
            self._conn.redis.hset, self.cuts_key, batch.entries[0].id, batch.entries[-1].id
        )

    def ack(self, batch: Batch) -> None:
        pipe = self._conn.redis.pipeline(transaction=False)
        pipe.xack(self.stream, self.group, *[e.id for e in batch.entries])
        pipe.hdel(self.cuts_key, batch.entries[0].id)
        self._conn.call(pipe.execute)

    def recover(self) -> list[Batch]:
        """Claim what consumers left pending (idle `claim_idle_s` or more), cut as recorded
        (`Batch.cut`); entries no cut names come as batches of their own, uncut."""
        claimed: dict[str, Entry] = {}
        start = "0-0"
        while True:
            next_id, entries, *_ = self._conn.call(
                self._conn.redis.xautoclaim,
                self.stream,
                self.group,
                self.consumer,
                self._claim_idle_ms,
                start_id=start,
                count=CLAIM_BATCH,
            )
            claimed.update((e.id, e) for e in _entries(entries))
            start = _text(next_id)
            if start == "0-0":
                break
        if not claimed:
            return []
        cuts = {
            _text(first): _text(last)
            for first, last in self._conn.call(self._conn.redis.hgetall, self.cuts_key).items()
        }
        return _cut(sorted(claimed.values(), key=lambda e: _order(e.id)), cuts)

    def dead_letter(self, batch: Batch, error: str) -> None:
        """Set a batch that failed for good aside, in `<stream>:tidal:<group>:dead`, and
        acknowledge it, in one transaction: a driver that dies between the two steps would
        otherwise leave it pending, and its successor would set it aside again. (The driver's
        `ack` that follows then finds nothing left to do.)"""
        fields = {"batch": batch.key, "ids": ",".join(e.id for e in batch.entries)}
        pipe = self._conn.redis.pipeline(transaction=True)
        pipe.xadd(self.dead_key, {**fields, "error": error[:1000]})
        pipe.xack(self.stream, self.group, *[e.id for e in batch.entries])
        pipe.hdel(self.cuts_key, batch.entries[0].id)
        self._conn.call(pipe.execute)

    def stop_waiting(self) -> None:
        self._closing = True

    def lag(self) -> Lag:
        info = self._conn.call(self._conn.redis.xinfo_groups, self.stream)
        group = next((g for g in info if _text(g.get("name")) == self.group), None)
        if group is None:
            return Lag(0, None)
        pending, undelivered = int(group.get("pending") or 0), group.get("lag")
        oldest = None
        if pending:
            summary = self._conn.call(self._conn.redis.xpending, self.stream, self.group)
            oldest = _text(summary.get("min")) if summary.get("min") else None
        if oldest is None and undelivered:
            last = _text(group.get("last-delivered-id") or "0-0")
            first = self._conn.call(self._conn.redis.xrange, self.stream, f"({last}", "+", 1)
            oldest = _text(first[0][0]) if first else None
        age = None if oldest is None else max(0.0, time.time() - entry_ms(oldest) / 1000)
        return Lag(pending + int(undelivered or 0), age)

    def close(self) -> None:
        self._closing = True
        self._conn.redis.close()


class RedisCountSink(Sink):
    """Adds each batch's counts to Redis hashes, once per batch key (see the module
    docstring). `counts(result)` gives `(hash key, field, increment)` for a result."""

    _SCRIPT = """
    if redis.call('SET', KEYS[1], 1, 'NX', 'EX', ARGV[1]) == false then return 0 end
    for i = 2, #ARGV, 3 do
        redis.call('HINCRBY', ARGV[i], ARGV[i + 1], ARGV[i + 2])
    end
    return 1
    """

    def __init__(
        self,
        url: str,
        prefix: str,
        counts: Callable[[Any], Iterable[tuple[str, str, int]]],
        *,
        marker_ttl_s: int = 86_400,
    ) -> None:
        self.name = f"redis counts {prefix}"
        self.prefix = prefix
        self._counts = counts
        self._ttl = marker_ttl_s
        self._closing = False
        self._conn = _Connection(url, lambda: self._closing)
        self._script = self._conn.redis.register_script(self._SCRIPT)

    def stop_waiting(self) -> None:
        self._closing = True

    def write(self, batch: Batch, result: Any) -> bool:
        args: list[Any] = [self._ttl]
        for key, name, increment in self._counts(result):
            args += [key, name, int(increment)]
        marker = f"{self.prefix}:done:{batch.key}"
        return bool(self._conn.call(self._script, keys=[marker], args=args))

    def close(self) -> None:
        self._closing = True
        self._conn.redis.close()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _entries(raw: Iterable[Any]) -> list[Entry]:
    entries = []
    for entry_id, fields in raw:
        text = _text(entry_id)
        entries.append(Entry(text, fields if fields is not None else {}, entry_ms(text)))
    return entries


def _cut(entries: list[Entry], cuts: dict[str, str]) -> list[Batch]:
    """Entries (in order) cut as `cuts` (first id -> last id) says, each such batch with its
    cut; the rest, each run of them between cuts, a batch of its own without one."""
    bounds = sorted((_order(first), _order(last), first, last) for first, last in cuts.items())
    batches: list[Batch] = []
    current: list[Entry] = []
    current_cut: tuple[str, str] | None = None
    for entry in entries:
        at = _order(entry.id)
        bound = next((b for b in bounds if b[0] <= at <= b[1]), None)
        cut = None if bound is None else (bound[2], bound[3])
        if current and cut != current_cut:
            batches.append(Batch(current, cut=current_cut))
            current = []
        current.append(entry)
        current_cut = cut
    if current:
        batches.append(Batch(current, cut=current_cut))
    return batches

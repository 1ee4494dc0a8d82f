"""Stream jobs over a real source and sink: a driver that reads micro-batches, runs one stream
task per batch, writes each result to a sink, and only then acknowledges the input.

The contract (`tidal.streams`):

* A `Source` hands out entries (`read`), each with an id that orders it in its stream, and
  takes back acknowledgements (`ack`) for the entries whose results are safely written. What
  it handed out and was never acknowledged, it hands out again to the next driver (`recover`),
  cut into the same batches as before (`begin` records each batch's cut before its task runs).
  It says how far behind its reader is (`lag`).
* A `Sink` writes a batch's result under the batch's key, idempotently: a key it wrote
  already is skipped. So a batch replayed after a crash (delivered at least once) is counted
  once: exactly-once results on at-least-once delivery.
* `StreamDriver` runs the loop: cut micro-batches by count and by time, decode their entries
  (one whose decoding raises, MalformedEntry or any other error, is logged with its id and
  why, counted, and acknowledged with its batch: it never stops the job), submit one
  stream task per batch (at most `in_flight` at once), write each result, acknowledge,
  and report the source's lag to the scheduler, where policies see it
  (`ClusterView.stream_lag()`). When the lag grows, batches grow (up to
  `max_batch`) rather than the backlog.

runtime/redis_streams.py implements both for Redis Streams; a Kafka source would implement
the same hooks (read = poll, ack = commit offsets, recover = the group's committed offsets).
"""

from __future__ import annotations

import collections
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from tidal.runtime.logs import RateLimitedLog

__all__ = [
    "Batch",
    "DriverStats",
    "Entry",
    "Lag",
    "MalformedEntry",
    "Sink",
    "Source",
    "StreamDriver",
    "latency_percentiles",
]

log = logging.getLogger("tidal.streams")


class MalformedEntry(ValueError):
    """An entry a source cannot decode into a record; the message says why."""


@dataclass(frozen=True, slots=True)
class Entry:
    """One entry of a source: its id (which orders it in its stream), its raw fields, and the
    time it was produced, in ms since the epoch (for event-time latency), if known."""

    id: str
    fields: Any
    produced_ms: int | None = None


@dataclass(eq=False, slots=True)
class Batch:
    """A micro-batch: its entries, its key (the sink's idempotence key: the first and last
    entry ids), and the records decoded from them (entries that did not decode are in
    `errors`, `[entry id, why]`)."""

    entries: list[Entry]
    records: list[Any] = field(default_factory=list)
    errors: list[list[str]] = field(default_factory=list)
    attempts: int = 0
    # The first and last ids it was cut with (`Source.begin`), when it is a replay: its key
    # stays that, whatever entries of it are left (trimmed ones are not claimed again).
    cut: tuple[str, str] | None = None

    @property
    def key(self) -> str:
        first, last = self.cut or (self.entries[0].id, self.entries[-1].id)
        return f"{first}..{last}"


@dataclass(frozen=True, slots=True)
class Lag:
    """How far behind a source's reader is: entries not yet acknowledged (delivered or not),
    and the age of the oldest of them in seconds (None if unknown or there is none)."""

    pending: int
    oldest_age_s: float | None


class Source:
    """A stream to read (see the module docstring). Subclasses implement `read`, `ack`,
    `decode` and `lag`; `begin` and `recover` too for replays cut as they were first cut."""

    name = "source"

    def read(self, count: int, block_s: float) -> list[Entry]:
        """Up to `count` new entries, waiting up to `block_s` for the first one."""
        raise NotImplementedError

    def decode(self, entry: Entry) -> Any:
        """The record an entry holds; MalformedEntry saying why if it holds none."""
        return entry.fields

    def begin(self, batch: Batch) -> None:
        """`batch` is about to run: remember its cut (for `recover`)."""

    def ack(self, batch: Batch) -> None:
        """`batch`'s result is written: its entries are done."""
        raise NotImplementedError

    def recover(self) -> list[Batch]:
        """Entries handed out before and never acknowledged (a driver died), cut into the
        batches they were in (`Batch.cut` set for those `begin` recorded). Called before
        the first `read` and then every `reclaim_every_s`."""
        return []

    def dead_letter(self, batch: Batch, error: str) -> None:
        """`batch` failed for good: set it aside with `error` for a person to look at (it
        is acknowledged next, so that it is not replayed for ever)."""

    def stop_waiting(self) -> None:
        """The driver stops: calls that wait for the source to come back give up now."""

    def lag(self) -> Lag:
        raise NotImplementedError

    def close(self) -> None:
        pass


class Sink:
    """Where results go (see the module docstring)."""

    name = "sink"

    def write(self, batch: Batch, result: Any) -> bool:
        """Write `batch`'s result under `batch.key`; False if that key was written already
        (a replayed batch: nothing is written again)."""
        raise NotImplementedError

    def stop_waiting(self) -> None:
        """The driver stops: calls that wait for the sink to come back give up now."""

    def close(self) -> None:
        pass


@dataclass
class DriverStats:
    """What a driver did: batches and entries written, replayed batches (recovered from a
    dead driver, or written already), entries that did not decode, batches whose task
    failed for good, and each written entry's latency from production to its result
    written (ms)."""

    batches: int = 0
    entries: int = 0
    replayed_batches: int = 0
    skipped_writes: int = 0
    malformed: int = 0
    failed_batches: int = 0  # set aside (`Source.dead_letter`) after `retries`
    abandoned_batches: int = 0  # still unfinished when the driver stopped: replayed later
    latencies_ms: list[float] = field(default_factory=list)
    batch_sizes: collections.Counter = field(default_factory=collections.Counter)


class StreamDriver:
    """Reads `source` in micro-batches, runs `fn(records, **kwargs)` as one stream task per
    batch on `client`, writes each result to `sink`, then acknowledges the batch.

    A batch is cut when it holds `batch_size` entries or `batch_ms` passed since its first;
    with a backlog (the source's `lag`), up to `max_batch`. At most `in_flight` batches run
    at once. A batch whose task (or write) fails is submitted again, up to `retries` times;
    after that it is set aside (`Source.dead_letter`, logged) and acknowledged. Entries a dead
    driver left are claimed and replayed at the start and every `reclaim_every_s`. The lag
    goes to the scheduler every `lag_every_s` (`Client.report_lag`). `stop()` finishes the
    batches under way within `drain_s`; what is still unfinished then stays unacknowledged
    (the next driver replays it).

    Discussion: the crash points. A batch's cut is recorded (`begin`) before its task runs;
    its result is written (one atomic write, keyed by the cut) before it is acknowledged. A
    driver that dies before the write leaves the entries pending: the next one claims them,
    cuts them the same way, runs them, writes once. One that dies between the write and the
    ack: the replay's write finds the key written and adds nothing. Either way each entry's
    result is in the sink once."""

    def __init__(
        self,
        client: Any,
        fn: Callable[..., Any],
        source: Source,
        sink: Sink,
        *,
        kwargs: dict[str, Any] | None = None,
        batch_size: int = 500,
        batch_ms: float = 50.0,
        max_batch: int = 20_000,
        in_flight: int = 4,
        retries: int = 3,
        priority: str = "stream",
        lag_every_s: float = 0.5,
        reclaim_every_s: float = 10.0,
        drain_s: float = 30.0,
        keep_latencies: int = 200_000,
    ) -> None:
        if not 1 <= batch_size <= max_batch:
            raise ValueError(f"batch_size must be 1 to max_batch ({max_batch}), not {batch_size}")
        if in_flight < 1:
            raise ValueError(f"in_flight must be at least 1, not {in_flight}")
        self.client, self.fn, self.source, self.sink = client, fn, source, sink
        self.kwargs = kwargs or {}
        self.batch_size, self.batch_ms, self.max_batch = batch_size, batch_ms, max_batch
        self.in_flight, self.retries, self.priority = in_flight, retries, priority
        self.lag_every_s, self.reclaim_every_s, self.drain_s = lag_every_s, reclaim_every_s, drain_s
        self.stats = DriverStats()
        self._keep_latencies = keep_latencies
        self._done: queue.SimpleQueue[tuple[Batch, Any]] = queue.SimpleQueue()
        self._running: set[Any] = set()
        # Batches recovered from drivers that died, waiting for a place among `in_flight`.
        self._replays: collections.deque[Batch] = collections.deque()
        self._stop = threading.Event()
        self._lag = Lag(0, None)
        self._lag_at = 0.0
        self._reclaimed_at = 0.0
        self._bad_entries = RateLimitedLog(log)

    # ---- the loop ------------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask `run` to stop: it finishes the batches under way (within `drain_s`), then
        returns; the source and sink stop waiting for a broker that went away."""
        self._stop.set()
        self.source.stop_waiting()
        self.sink.stop_waiting()

    def run(self, duration_s: float | None = None) -> DriverStats:
        """Run until `stop()` (or for `duration_s`); the batches under way are finished and
        written before it returns."""
        deadline = None if duration_s is None else time.monotonic() + duration_s
        self._reclaim()
        pending: list[Entry] = []
        first_at = 0.0
        while not self._stop.is_set() and (deadline is None or time.monotonic() < deadline):
            self._settle(block=len(self._running) >= self.in_flight)
            self._report_lag()
            if time.monotonic() - self._reclaimed_at >= self.reclaim_every_s:
                self._reclaim()
            while self._replays and len(self._running) < self.in_flight:  # first, in order
                batch = self._replays.popleft()
                self._submit(batch, replayed=batch.cut is not None)
            if len(self._running) >= self.in_flight:
                continue
            size = self._target_size()
            wait = self.batch_ms / 1000 if not pending else max(0.0, first_at - time.monotonic())
            if self._running:  # results may come meanwhile: look for them soon
                wait = min(wait, RESULT_POLL_S)
            new = self.source.read(size - len(pending), wait)
            if new and not pending:
                first_at = time.monotonic() + self.batch_ms / 1000
            pending += new
            if pending and (len(pending) >= size or time.monotonic() >= first_at):
                self._submit(Batch(pending))
                pending = []
        if pending:
            self._submit(Batch(pending))
        drained = time.monotonic() + self.drain_s
        while self._running and time.monotonic() < drained:
            self._settle(block=True)
        # Still running, or recovered and never run: the next driver replays them.
        self.stats.abandoned_batches += len(self._running) + len(self._replays)
        try:
            self._report_lag(force=True)
        except Exception as exc:  # a broker gone at the end: the next run reports it
            log.warning(
                "the last lag report of %s failed: %s: %s",
                self.source.name,
                type(exc).__name__,
                exc,
            )
        return self.stats

    def _reclaim(self) -> None:
        """Queue for replay what drivers that died left (not the batches this one runs or has
        queued already); they run before new entries, at most `in_flight` at once with the
        rest (a driver recovering a big backlog must not submit it all at once)."""
        self._reclaimed_at = time.monotonic()
        known = {batch.key for batch in self._running} | {b.key for b in self._replays}
        for batch in self.source.recover():
            if batch.key in known:
                continue
            self.stats.replayed_batches += 1
            self._replays.append(batch)

    def _target_size(self) -> int:
        """The next batch's size: `batch_size`, grown toward `max_batch` with the backlog (a
        batch takes its share of the backlog per batch in flight)."""
        backlog = self._lag.pending // max(1, self.in_flight)
        return max(self.batch_size, min(self.max_batch, backlog))

    def _submit(self, batch: Batch, replayed: bool = False) -> None:
        if batch.attempts == 0:
            self._decode(batch)
            if not replayed:
                self.source.begin(batch)
        batch.attempts += 1
        self._running.add(batch)
        if not batch.records:  # nothing decoded: nothing to run, nothing to write
            self._done.put((batch, _NOTHING))
            return
        future = self.client.submit(self.fn, batch.records, priority=self.priority, **self.kwargs)
        future.add_done_callback(lambda f, b=batch: self._done.put((b, f)))

    def _decode(self, batch: Batch) -> None:
        for entry in batch.entries:
            try:
                batch.records.append(self.source.decode(entry))
            except Exception as exc:  # a decoder's error, whatever it is, is this entry's
                why = (
                    str(exc) if isinstance(exc, MalformedEntry) else f"{type(exc).__name__}: {exc}"
                )
                batch.errors.append([entry.id, why])
                self.stats.malformed += 1
                self._bad_entries(f"entry {entry.id} of {self.source.name} is skipped: {why}")

    def _settle(self, block: bool) -> None:
        """Write the results of the batches that ended (waiting for one if `block`)."""
        while True:
            try:
                batch, future = self._done.get(timeout=0.05) if block else self._done.get_nowait()
            except queue.Empty:
                return
            block = False
            self._running.discard(batch)
            if future is not _NOTHING and (future.cancelled() or future.exception() is not None):
                self._failed(batch, "cancelled" if future.cancelled() else future.exception())
                continue
            result = None if future is _NOTHING else future.result()
            try:
                written = future is _NOTHING or self.sink.write(batch, result)
            except Exception as exc:  # the sink's: the batch failed, not the driver
                self._failed(batch, f"{self.sink.name}: {type(exc).__name__}: {exc}")
                continue
            if written:
                self.stats.batches += 1
                self.stats.entries += len(batch.entries)
                self.stats.batch_sizes[len(batch.entries)] += 1
                self._latencies(batch)
            else:
                self.stats.skipped_writes += 1
            self._acknowledge(batch)

    def _failed(self, batch: Batch, error: Any) -> None:
        if isinstance(error, BaseException):
            error = f"{type(error).__name__}: {error}"
        if batch.attempts <= self.retries and not self._stop.is_set():
            log.warning("batch %s failed (%s): submitting it again", batch.key, error)
            self._submit(batch)
            return
        if self._stop.is_set():  # stopping: the next driver tries it again
            self.stats.abandoned_batches += 1
            return
        try:
            self.source.dead_letter(batch, str(error))
        except Exception as exc:  # the source's: it stays pending, and is tried again
            self._left_pending(batch, "set aside", exc)
            return
        self.stats.failed_batches += 1
        log.error(
            "batch %s failed %d times (%s): set aside (its entries are not counted)",
            batch.key,
            batch.attempts,
            error,
        )
        self._acknowledge(batch)

    def _acknowledge(self, batch: Batch) -> None:
        """Acknowledge a batch whose result is written (or that was set aside).

        Discussion: the source's own errors are not the driver's. A broker gone while the
        driver stops raises here (its calls retry until then); the batch then stays pending
        in the source, and whoever recovers it replays it: the sink skips the write it has."""
        try:
            self.source.ack(batch)
        except Exception as exc:
            self._left_pending(batch, "acknowledged", exc)

    def _left_pending(self, batch: Batch, what: str, exc: Exception) -> None:
        self.stats.abandoned_batches += 1
        log.warning(
            "batch %s could not be %s (%s: %s): it stays pending in %s, to be replayed",
            batch.key,
            what,
            type(exc).__name__,
            exc,
            self.source.name,
        )

    def _latencies(self, batch: Batch) -> None:
        now_ms = time.time() * 1000
        latencies = self.stats.latencies_ms
        if len(latencies) < self._keep_latencies:
            latencies.extend(
                now_ms - e.produced_ms for e in batch.entries if e.produced_ms is not None
            )

    def _report_lag(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._lag_at < self.lag_every_s:
            return
        self._lag_at = now
        self._lag = self.source.lag()
        age = self._lag.oldest_age_s
        self.client.report_lag(
            self.source.name, self._lag.pending, None if age is None else age * 1000
        )


_NOTHING = object()  # a batch none of whose entries decoded: no task
# While batches run, a read waits at most this long, so that their results are written (and
# their latency ends) within this of their coming back, not after a whole batch_ms.
RESULT_POLL_S = 0.005


def latency_percentiles(latencies: Iterable[float]) -> dict[str, float | None]:
    """p50 and p99 of `latencies` (ms), nearest rank; None without any."""
    ordered = sorted(latencies)
    if not ordered:
        return {"p50": None, "p99": None}

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, max(0, int(q * len(ordered) + 0.5) - 1))]

    return {"p50": at(0.5), "p99": at(0.99)}

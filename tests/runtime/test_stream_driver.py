"""The stream driver against in-memory fakes (runtime/streams.py): a source, a sink and a
client that runs each task at once. The Redis and cluster versions are test_streams.py."""

from __future__ import annotations

import concurrent.futures
import logging

from tidal.runtime.streams import Batch, Entry, Lag, Sink, Source, StreamDriver


class InstantClient:
    """Runs each submitted task at once, on the caller's thread."""

    def submit(self, fn, records, priority, **kwargs):
        future: concurrent.futures.Future = concurrent.futures.Future()
        try:
            future.set_result(fn(records, **kwargs))
        except Exception as exc:  # the task's error is its future's
            future.set_exception(exc)
        return future

    def report_lag(self, name, pending, age_ms) -> None:
        """Lag reports are not this fake's to check."""


class GoneBroker(ConnectionError):
    pass


class MemorySource(Source):
    """Hands out `entries` once. Once the driver stops waiting (`stop_waiting`), the calls
    named in `fail_on` raise GoneBroker, as a broker's calls do once it has gone away (they
    retry until then). `stop_on_dead_letter`: setting a batch aside stops the driver first."""

    name = "memory"

    def __init__(self, entries: list[Entry], fail_on: set[str] = frozenset()) -> None:
        self.entries, self.fail_on = list(entries), fail_on
        self.acked: list[str] = []
        self.dead: list[str] = []
        self.stopping = False
        self.driver: StreamDriver | None = None

    def _call(self, what: str) -> None:
        if self.stopping and what in self.fail_on:
            raise GoneBroker(f"{what}: the broker went away")

    def read(self, count: int, block_s: float) -> list[Entry]:
        taken, self.entries = self.entries[:count], self.entries[count:]
        return taken

    def ack(self, batch: Batch) -> None:
        self._call("ack")
        self.acked.append(batch.key)

    def dead_letter(self, batch: Batch, error: str) -> None:
        self.driver.stop()  # the broker goes away just now
        self._call("dead_letter")
        self.dead.append(batch.key)

    def stop_waiting(self) -> None:
        self.stopping = True

    def lag(self) -> Lag:
        self._call("lag")
        return Lag(len(self.entries), None)


class StoppingSink(Sink):
    """Writes a batch's result, then stops the driver."""

    name = "memory-sink"

    def __init__(self) -> None:
        self.written: dict[str, object] = {}
        self.driver: StreamDriver | None = None

    def write(self, batch: Batch, result) -> bool:
        self.written[batch.key] = result
        self.driver.stop()
        return True


def total(records):
    return sum(records)


def broken(records):
    raise ValueError("this batch never computes")


def drive(source: MemorySource, sink: StoppingSink, fn=total, **options) -> StreamDriver:
    driver = StreamDriver(InstantClient(), fn, source, sink, batch_size=3, **options)
    source.driver = sink.driver = driver
    return driver


ENTRIES = [Entry(f"1-{i}", i) for i in range(3)]


def test_a_broker_gone_as_the_driver_stops_leaves_the_batch_pending_not_a_crash(caplog):
    source, sink = MemorySource(ENTRIES, fail_on={"ack", "lag"}), StoppingSink()
    driver = drive(source, sink)
    with caplog.at_level(logging.WARNING, logger="tidal.streams"):
        stats = driver.run(duration_s=60)
    assert sink.written == {"1-0..1-2": 3} and source.acked == []
    assert stats.batches == 1 and stats.abandoned_batches == 1
    assert "batch 1-0..1-2 could not be acknowledged (GoneBroker" in caplog.text
    assert "stays pending in memory, to be replayed" in caplog.text
    assert "the last lag report of memory failed: GoneBroker" in caplog.text


def test_a_batch_that_cannot_be_set_aside_stays_pending_unacknowledged(caplog):
    source, sink = MemorySource(ENTRIES, fail_on={"dead_letter", "lag"}), StoppingSink()
    driver = drive(source, sink, fn=broken, retries=0)
    with caplog.at_level(logging.WARNING, logger="tidal.streams"):
        stats = driver.run(duration_s=60)
    assert source.dead == [] and source.acked == [] and sink.written == {}
    assert stats.failed_batches == 0 and stats.abandoned_batches == 1  # not set aside
    assert "batch 1-0..1-2 could not be set aside (GoneBroker" in caplog.text


class LaterClient(InstantClient):
    """Completes the tasks submitted so far only when the driver next reports its lag (once
    a loop turn, with `lag_every_s=0`); counts the most that were ever running at once."""

    def __init__(self) -> None:
        self.waiting: list[tuple[concurrent.futures.Future, object]] = []
        self.most_at_once = 0

    def submit(self, fn, records, priority, **kwargs):
        future: concurrent.futures.Future = concurrent.futures.Future()
        self.waiting.append((future, fn(records, **kwargs)))
        self.most_at_once = max(self.most_at_once, len(self.waiting))
        return future

    def report_lag(self, name, pending, age_ms) -> None:
        waiting, self.waiting = self.waiting, []
        for future, value in waiting:
            future.set_result(value)


class BacklogSource(MemorySource):
    """Recovers `batches` left by a dead driver, and has nothing new."""

    def __init__(self, batches: list[Batch]) -> None:
        super().__init__([])
        self.left = batches

    def recover(self) -> list[Batch]:
        left, self.left = self.left, []
        return left


class CountingSink(Sink):
    """Writes results; stops the driver once `expected` are written."""

    def __init__(self, expected: int) -> None:
        self.written: list[str] = []
        self.expected = expected
        self.driver: StreamDriver | None = None

    def write(self, batch: Batch, result) -> bool:
        self.written.append(batch.key)
        if len(self.written) == self.expected:
            self.driver.stop()
        return True


def test_a_recovered_backlog_is_replayed_in_order_at_most_in_flight_at_once():
    client = LaterClient()
    left = [Batch([Entry(f"1-{i}", i)]) for i in range(10)]
    source, sink = BacklogSource(left), CountingSink(expected=10)
    driver = StreamDriver(client, total, source, sink, in_flight=3, lag_every_s=0)
    source.driver = sink.driver = driver
    stats = driver.run(duration_s=60)
    assert sink.written == [b.key for b in left]  # every one, in the order recovered
    assert client.most_at_once == 3
    assert stats.replayed_batches == 10 and stats.abandoned_batches == 0

"""The demo's stream job on a real broker: ad events produced into a Redis Stream at a fixed
rate, consumed by a `StreamDriver` (runtime/streams.py) that scores each micro-batch with the
latest topic model and adds its counts to Redis hashes, exactly once.

`run_stream_broker` is what `tidal demo --source redis://HOST:PORT` runs in place of the
in-process stream (workloads/unified.py `run_stream`): the same events, the same stream task
(`score_views`), but the events go through Redis, so each one's latency is event time: from
the moment the producer added it (its entry id's ms) to the moment its micro-batch's counts
were written. The exactly-once check: every view event produced is counted once in Redis.

Discussion: the producer runs in a process of its own, as a real event source would: in the
driver's process its ~20-50 us of Python per event (drawing the page's words) would take
the GIL from the driver's own work, latency no scheduler causes.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from tidal.runtime.streams import StreamDriver
from tidal.workloads.ads import AdSpec, decode_event, generate_events, pack_event
from tidal.workloads.topics import Corpus
from tidal.workloads.unified import score_views

__all__ = ["BrokerRun", "run_stream_broker"]

PRODUCE_EVERY_MS = 10  # the producer adds a pipeline of events this often
DRAIN_S = 30.0  # after the run, how long the driver may take to catch up


@dataclass
class BrokerRun:
    """What a stream job on a broker measured: each event's latency from production to its
    counts written (ms), micro-batches, events produced and counted, replays, bad entries."""

    latencies_ms: list[float] = field(default_factory=list)
    micro_batches: int = 0
    produced: int = 0
    views_produced: int = 0
    views_counted: int = 0
    replayed_batches: int = 0
    malformed: int = 0

    @property
    def exactly_once(self) -> bool:
        return self.views_counted == self.views_produced


def run_stream_broker(
    client: Any,
    url: str,
    ads: AdSpec,
    corpus: Corpus,
    interval_ms: int,
    latest_model: Callable[[], Sequence[int]],
    keep_going: Callable[[float, BrokerRun], bool],
) -> BrokerRun:
    """Produce events into a fresh stream at `ads.events_per_s` while `keep_going(seconds
    since start, run)`, consume them with a driver scoring each micro-batch (cut every
    `interval_ms`) with `latest_model()`, drain, and check the counts."""
    from tidal.runtime.redis_streams import RedisCountSink, RedisSource

    run = BrokerRun()
    name = f"tidal-demo-{uuid.uuid4().hex[:8]}"
    spec = dataclasses.asdict(ads)
    source = RedisSource(url, name, "demo", decode=decode_event)
    sink = RedisCountSink(url, name, _view_counts(name))
    driver = StreamDriver(
        client,
        score_views,
        source,
        sink,
        kwargs={"word_topics": latest_model(), "spec": spec},
        batch_size=max(1, ads.events_per_s * interval_ms // 1000),
        batch_ms=interval_ms,
    )
    context = multiprocessing.get_context("spawn")
    stop, produced = context.Event(), context.Queue()
    producer = context.Process(
        target=_produce, args=(url, name, ads, corpus, stop, produced), name="tidal-producer"
    )
    consumer = threading.Thread(target=driver.run, name="tidal-stream-driver")
    producer.start()
    consumer.start()
    start = time.monotonic()
    try:
        while keep_going(time.monotonic() - start, run):
            driver.kwargs = {"word_topics": latest_model(), "spec": spec}  # the latest model
            run.latencies_ms = driver.stats.latencies_ms
            time.sleep(interval_ms / 1000)
    finally:
        stop.set()
        run.produced, run.views_produced = produced.get(timeout=60)
        producer.join(timeout=30)
        deadline = time.monotonic() + DRAIN_S
        while driver.stats.entries + driver.stats.malformed < run.produced:
            if time.monotonic() > deadline or not consumer.is_alive():
                break
            time.sleep(0.05)
        driver.stop()
        consumer.join()
        stats = driver.stats
        run.latencies_ms, run.micro_batches = stats.latencies_ms, stats.batches
        run.replayed_batches, run.malformed = stats.replayed_batches, stats.malformed
        run.views_counted = _views_counted(url, name)
        _forget(url, name)
        source.close()
        sink.close()
    return run


def _view_counts(name: str) -> Callable[[Any], list[tuple[str, str, int]]]:
    """The sink's increments for a `score_views` result: a hash per window, a field per
    campaign and topic."""

    def counts(result: Any) -> list[tuple[str, str, int]]:
        return [
            (f"{name}:views:{window}", f"{campaign}:{topic}", n)
            for (campaign, window, topic), n in result.items()
        ]

    return counts


def _produce(url: str, stream: str, ads: AdSpec, corpus: Corpus, stop: Any, produced: Any) -> None:
    """The producer process: the events of each PRODUCE_EVERY_MS of wall time, added as
    that time passes (event time is wall time since the start); then how many it added, and
    how many were views."""
    import redis

    connection = redis.Redis.from_url(url)
    start, cut_ms, count, views = time.monotonic(), 0, 0, 0
    try:
        while not stop.is_set():
            events = generate_events(ads, cut_ms, cut_ms + PRODUCE_EVERY_MS, corpus.draw_document)
            cut_ms += PRODUCE_EVERY_MS
            delay = start + cut_ms / 1000 - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            pipe = connection.pipeline(transaction=False)
            for event in events:
                pipe.xadd(stream, pack_event(event))
            pipe.execute()
            count += len(events)
            views += sum(1 for event in events if event[1] == "view")
    finally:
        produced.put((count, views))
        connection.close()


def _views_counted(url: str, name: str) -> int:
    import redis

    connection = redis.Redis.from_url(url)
    try:
        return sum(
            int(n) for key in connection.scan_iter(f"{name}:views:*") for n in connection.hvals(key)
        )
    finally:
        connection.close()


def _forget(url: str, name: str) -> None:
    """Delete the run's stream, its counts and markers (the demo leaves Redis as it was)."""
    import redis

    connection = redis.Redis.from_url(url)
    try:
        keys = [name, *connection.scan_iter(f"{name}:*")]
        for start in range(0, len(keys), 500):
            connection.delete(*keys[start : start + 500])
    finally:
        connection.close()

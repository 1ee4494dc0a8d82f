"""Stream jobs over Redis Streams (runtime/streams.py, runtime/redis_streams.py), against a
real redis-server started for this module: exactly-once counts through a replay after a
driver died, malformed entries, a killed executor, and Redis going away and coming back."""

from __future__ import annotations

import threading
from collections import Counter

import pytest
import redis

from tidal.runtime.client import Client
from tidal.runtime.cluster import LocalCluster
from tidal.runtime.redis_server import RedisServer
from tidal.runtime.redis_streams import RedisCountSink, RedisSource
from tidal.runtime.streams import Batch, StreamDriver
from tidal.workloads.ads import (
    AdSpec,
    campaign_table,
    count_views,
    decode_event,
    generate_events,
    pack_event,
    window_counts,
    window_of,
)

pytestmark = pytest.mark.slow  # each test runs a real redis-server and cluster for seconds

SPEC = AdSpec(campaigns=20, ads_per_campaign=5, events_per_s=2000, window_ms=1000, seed=3)
SPEC_ARGS = {
    "campaigns": SPEC.campaigns,
    "ads_per_campaign": SPEC.ads_per_campaign,
    "window_ms": SPEC.window_ms,
    "seed": SPEC.seed,
}


@pytest.fixture(scope="module")
def server():
    with RedisServer() as server:
        yield server


@pytest.fixture
def r(server):
    connection = redis.Redis.from_url(server.url)
    connection.flushall()
    yield connection
    connection.close()


def produce(r, stream: str, events) -> None:
    pipe = r.pipeline(transaction=False)
    for event in events:
        pipe.xadd(stream, pack_event(event))
    pipe.execute()


def expected_counts(events) -> Counter:
    table = campaign_table(SPEC.campaigns, SPEC.ads_per_campaign, SPEC.seed)
    return Counter(
        (f"views:{window_of(t, SPEC.window_ms)}", str(table[ad]))
        for ad, kind, t, _ in events
        if kind == "view"
    )


def counted(r) -> Counter:
    counts = Counter()
    for key in r.scan_iter("views:*"):
        for campaign, n in r.hgetall(key).items():
            counts[(key.decode(), campaign.decode())] += int(n)
    return counts


def source_and_sink(server, group="g", **options):
    source = RedisSource(server.url, "ads", group, decode=decode_event, **options)
    return source, RedisCountSink(server.url, "demo", window_counts)


def test_a_replay_after_a_driver_died_counts_nothing_twice(server, r):
    events = generate_events(SPEC, 0, 3000)
    produce(r, "ads", events)
    # A driver that died: it cut and ran three batches, wrote two, acknowledged one.
    source, sink = source_and_sink(server)
    batches = [Batch(source.read(500, 0.1)) for _ in range(3)]
    for batch in batches:
        source.begin(batch)
        batch.records = [decode_event(e) for e in batch.entries]
    for batch in batches[:2]:
        assert sink.write(batch, count_views.fn(batch.records, SPEC_ARGS))
    source.ack(batches[0])
    # The next driver claims what the dead one left pending, cut as it was cut.
    again, sink = source_and_sink(server, claim_idle_s=0)
    recovered = again.recover()
    assert [b.key for b in recovered] == [b.key for b in batches[1:]]
    assert all(b.cut is not None for b in recovered)
    with LocalCluster(executors=1) as cluster, Client(cluster) as client:
        driver = StreamDriver(client, count_views, again, sink, kwargs={"spec": SPEC_ARGS})
        stats = driver.run(duration_s=1.5)
    assert stats.replayed_batches == 2 and stats.skipped_writes == 1
    assert counted(r) == expected_counts(events)
    assert again.lag().pending == 0


def test_malformed_entries_are_skipped_by_id_and_the_rest_is_counted(server, r, caplog):
    events = generate_events(SPEC, 0, 1000)
    produce(r, "ads", events[:300])
    bad = [r.xadd("ads", {b"e": b"\xc1 not msgpack"}), r.xadd("ads", {b"x": b"1"})]
    bad.append(r.xadd("ads", pack_event(["ad", "view", 1, []])))
    produce(r, "ads", events[300:])
    source, sink = source_and_sink(server)
    with LocalCluster(executors=1) as cluster, Client(cluster) as client:
        driver = StreamDriver(client, count_views, source, sink, kwargs={"spec": SPEC_ARGS})
        stats = driver.run(duration_s=1.5)
    assert stats.malformed == 3
    assert counted(r) == expected_counts(events)
    said = caplog.text
    assert all(f"entry {entry_id.decode()} of ads (g) is skipped" in said for entry_id in bad)
    assert "is not msgpack" in said and "has no field 'e'" in said
    assert source.lag().pending == 0  # acknowledged with their batches


def test_a_killed_executor_mid_batch_loses_nothing(server, r):
    events = generate_events(SPEC, 0, 6000)
    produce(r, "ads", events)
    source, sink = source_and_sink(server)
    with (
        LocalCluster(executors=2, heartbeat_ms=100) as cluster,
        Client(cluster) as client,
    ):
        driver = StreamDriver(
            client, count_views, source, sink, kwargs={"spec": SPEC_ARGS}, batch_size=200
        )
        killer = threading.Timer(0.3, lambda: cluster.processes[1].kill())
        killer.start()
        stats = driver.run(duration_s=4)
        killer.join()
    assert counted(r) == expected_counts(events)
    assert stats.entries == len(events)


def test_redis_going_away_and_coming_back_is_survived_with_a_clear_line(server, r, caplog):
    events = generate_events(SPEC, 0, 2000)
    produce(r, "ads", events[:1000])
    # A batch whose write met the outage stays pending until it is claimed and replayed:
    # within the run, not after the 10 s defaults (the test failed whenever one did).
    source, sink = source_and_sink(server, claim_idle_s=0.5)
    with LocalCluster(executors=1) as cluster, Client(cluster) as client:
        driver = StreamDriver(
            client, count_views, source, sink, kwargs={"spec": SPEC_ARGS}, reclaim_every_s=0.5
        )
        thread = threading.Thread(target=driver.run, kwargs={"duration_s": 5})
        thread.start()
        server.stop()
        threading.Event().wait(1.0)  # Redis stays away a while (not a synchronisation)
        server.start()
        again = redis.Redis.from_url(server.url)
        produce(again, "ads", events[1000:])
        again.close()
        thread.join()
    assert "went away" in caplog.text and "is back after" in caplog.text
    assert counted(redis.Redis.from_url(server.url)) == expected_counts(events)


def test_the_lag_reaches_the_scheduler_and_its_policies(server, r):
    produce(r, "ads", generate_events(SPEC, 0, 2000))
    source, _ = source_and_sink(server)
    assert source.lag().pending == 4000 and source.lag().oldest_age_s >= 0
    with LocalCluster(executors=1) as cluster, Client(cluster) as client:
        client.report_lag(source.name, source.lag().pending, 1500.0)
        status = client.wait_for_status(lambda s: s["streams"])
        [lag] = status["streams"]
        assert (lag["source"], lag["pending"], lag["oldest_age_s"]) == ("ads (g)", 4000, 1.5)


def test_a_driver_started_soon_after_a_crash_replays_what_it_left_once_it_is_idle(server, r):
    events = generate_events(SPEC, 0, 2000)
    produce(r, "ads", events)
    dead, sink = source_and_sink(server)
    batch = Batch(dead.read(700, 0.1))  # read, cut and written, never acknowledged
    dead.begin(batch)
    batch.records = [decode_event(e) for e in batch.entries]
    assert sink.write(batch, count_views.fn(batch.records, SPEC_ARGS))
    r.xdel("ads", batch.entries[3].id)  # trimmed meanwhile: the replay's key must not change
    again, sink = source_and_sink(server, claim_idle_s=0.3)
    with LocalCluster(executors=1) as cluster, Client(cluster) as client:
        driver = StreamDriver(
            client, count_views, again, sink, kwargs={"spec": SPEC_ARGS}, reclaim_every_s=0.2
        )
        stats = driver.run(duration_s=2.0)
    assert stats.replayed_batches == 1 and stats.skipped_writes == 1  # claimed once idle
    assert counted(r) == expected_counts(events)
    assert again.lag().pending == 0


def test_setting_a_batch_aside_acknowledges_it_in_the_same_step(server, r):
    # A driver that died right after setting a batch aside must not leave it pending: its
    # successor would claim it and set it aside a second time.
    events = generate_events(SPEC, 0, 10)
    produce(r, "ads", events)
    source, _ = source_and_sink(server)
    batch = Batch(source.read(len(events), 0.1))
    assert len(batch.entries) == len(events)
    source.begin(batch)
    source.dead_letter(batch, "KeyError: 'spec'")  # and no ack after it
    assert r.xlen(source.dead_key) == 1
    assert source.lag().pending == 0 and not r.hgetall(source.cuts_key)
    again, _ = source_and_sink(server, claim_idle_s=0)
    assert again.recover() == []


def test_a_batch_that_always_fails_is_set_aside_and_does_not_hold_the_lag_up(server, r):
    produce(r, "ads", generate_events(SPEC, 0, 200))
    source, sink = source_and_sink(server)
    with LocalCluster(executors=1) as cluster, Client(cluster) as client:
        driver = StreamDriver(
            client, count_views, source, sink, kwargs={"spec": {}}, retries=1, batch_ms=20
        )
        stats = driver.run(duration_s=1.5)
    assert stats.failed_batches >= 1 and stats.batches == 0
    [(_, fields)] = r.xrange(source.dead_key, count=1)
    assert b"KeyError" in fields[b"error"] and fields[b"batch"].count(b"..") == 1
    assert source.lag().pending == 0 and counted(r) == Counter()

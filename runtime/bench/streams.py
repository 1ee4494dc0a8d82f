"""`tidal bench streams`: a stream job over Redis Streams, alone, beside a batch job, and
through kills.

On a 2-executor LocalCluster (policy lb) with a redis-server of its own
(runtime/redis_server.py), a producer in a process of its own XADDs ad events
(workloads/ads.py, one `pack_event` entry each) into a Redis stream at a fixed rate, a
pipeline every 10 ms, and a `StreamDriver` in this process consumes it through a consumer
group: one `count_views` stream task per micro-batch, its counts added to Redis by a
`RedisCountSink`, then the batch acknowledged. Three phases:

1. alone: `rate` events/s (25,000; 10,000 with `--quick`) for `phase_s` seconds;
2. loaded: the same, into a fresh stream, while a batch pipeline (a client in a process of
   its own) keeps both executors busy with long `spin` tasks at batch priority, from before
   the first event to after the last result is written;
3. exactly-once: `once_events` events (40,000; 20,000 quick) produced at 10,000/s into a
   fresh stream. A driver in a process of its own reads it until about a third is
   acknowledged and is then killed (SIGKILL) with batches in flight; after `CLAIM_IDLE_S`
   and a margin, a second driver (a new consumer name) recovers what the first left pending
   and carries on, and an executor is killed (-9; the cluster starts it again) while it
   runs. Once everything is acknowledged, the counts in Redis are compared with the counts
   computed here from the same seeded events.

Figures:
- event_ms_p50 / _p99 (loaded), alone_event_ms_p50 / _p99: each written entry's latency
  from its production (the ms in its Redis id) to its batch's counts written (the driver's
  `latencies_ms`); event_p99_vs_alone: the loaded p99 over the alone p99;
- events_per_s (loaded; alone_events_per_s): entries written by the driver over the phase,
  from the producer's first XADD to the moment every entry was acknowledged (polled every
  20 ms); producer_events_per_s (and alone_producer_events_per_s): what the producer
  achieved, its events over its own elapsed time. events_per_s measures the driver only if
  the producer kept up (producer_kept_up: within 3% of `rate`);
- batches, batch_size_mean, batch_size_max: the loaded phase's micro-batches;
  driver_process_cores: the CPU this process used over the phase, in cores (the driver's
  loop, the client's IO thread and the watcher; one core is all its GIL allows);
  bench_cores: this process and every one it started (Redis, the producer, the cluster, the
  batch pipeline); other_cores: the rest of the machine's busy CPU (another user's work on
  a shared machine; 2 cores in all here);
- batch_tasks_run: batch tasks that finished during the loaded phase;
  batch_busy_through: both executors still had batch work when the phase ended;
  batch_suspended_tasks: batch tasks suspended at least once (by stream tasks);
- exactly_once: every count in Redis equals the expected one, and every entry was
  acknowledged; replayed_batches: the second driver's batches recovered from the first;
  replayed_written_batches: those of them the first had written already (the sink skipped
  them); pending_at_kill: entries delivered to the first driver and not acknowledged when
  it was killed; once_failed_batches: batches the second driver gave up on (0 expected).

Discussion: why processes. The producer stands for the application writing events; in
this process its pipelines would hold the GIL the driver needs (building a pipeline of 250
XADDs is ~4 ms of Python), and so would the batch pipeline's client. The first driver of
phase 3 runs in a process of its own so that SIGKILL takes it as a crash would: no `finally`,
no goodbye to the scheduler, its pending entries left in Redis.

Discussion: the driver runs with StreamDriver's defaults (`DRIVER` names them): a batch is
cut at 500 entries or 50 ms after its first entry, whichever comes first (at 25,000/s, by
count, every ~20 ms), at most 4 in flight, growing toward 20,000 with a backlog. A driver
is one process, and it spends ~40 us of CPU per entry (redis-py parsing XREADGROUP's reply
is about half of it): on this 2-core VM it tops out around 20,000-24,000 entries/s, so at
25,000/s the latencies include a backlog (`driver_process_cores` shows how busy it was).

Discussion: the bench's Redis appends its log with `appendfsync everysec`, Redis's default
for an append-only log (`RedisServer` fsyncs every write, for the tests that restart it).
An fsync takes ~2 ms on this VM and the driver makes four or five writes per batch
(XREADGROUP is one: it moves entries into the pending list); with an fsync each, a driver
reading a backlog in batches of 500 managed 18,500-19,100 entries/s, against
21,000-22,800 without. `run(fsync="always")` measures it that way.
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
import signal
import threading
import time
from collections import Counter
from typing import Any

import psutil
import redis

from tidal.runtime.client import Client
from tidal.runtime.cluster import LocalCluster
from tidal.runtime.redis_server import RedisServer
from tidal.runtime.redis_streams import RedisCountSink, RedisSource
from tidal.runtime.streams import DriverStats, StreamDriver, latency_percentiles
from tidal.workloads.ads import (
    AdSpec,
    count_views,
    decode_event,
    generate_events,
    pack_event,
    window_counts,
)
from tidal.workloads.synthetic import spin

TARGETS = {
    "exactly_once": (">=", 1),
    "event_p99_vs_alone": ("<=", 1.5),
    "events_per_s": (">=", 20_000),
}

RATE, QUICK_RATE = 25_000, 10_000
PHASE_S, QUICK_PHASE_S = 6.0, 2.5
ONCE_EVENTS, QUICK_ONCE_EVENTS = 40_000, 20_000
ONCE_RATE = 10_000
TICK_S = 0.010  # the producer's pipeline interval
KEPT_UP = 0.97  # the producer kept up: it achieved this fraction of its rate or more
POLL_S = 0.020  # how often the group's progress is read
DRAIN_S = 30.0  # the longest a driver may take to catch up after the producer ends

DRIVER = {"batch_size": 500, "batch_ms": 50.0, "in_flight": 4, "max_batch": 20_000}
SPEC = {"campaigns": 100, "ads_per_campaign": 10, "window_ms": 10_000, "seed": 0}
GROUP = "views"
SINK_PREFIX = "bench"

# The batch pipeline: tasks of ~0.5 s (20,000 records of 25 us), more than the loaded phase
# can run; what is left when it ends is cancelled.
BATCH_TASKS, BATCH_RECORDS, BATCH_RECORD_US = 64, 20_000, 25.0

# Phase 3: the first driver dies at this fraction acknowledged, the executor at this one.
KILL_DRIVER_AT, KILL_EXECUTOR_AT = 0.3, 0.6
CLAIM_IDLE_S = 0.5
CLAIM_MARGIN_S = 0.3  # waited beyond CLAIM_IDLE_S: the last entries delivered must be idle
STOP_SETTLE_S = 0.020  # after SIGSTOP, for Redis to run what the driver had sent

# The fields of psutil.cpu_times() that are busy CPU (guest time is within user time).
BUSY = ("user", "nice", "system", "irq", "softirq")


def _spec(rate: int) -> AdSpec:
    return AdSpec(events_per_s=rate, **SPEC)


def _events(rate: int, count: int) -> list[list[Any]]:
    """The phase's events: `count` of them, `rate` per second of event time from 0."""
    end_ms = -(-count * 1000 // rate)
    return generate_events(_spec(rate), 0, end_ms)[:count]


# ---- the processes -----------------------------------------------------------------------------


def _producer(url: str, conn: Any) -> None:
    """The producer, in a process of its own: for each order `(stream, rate, count)` it
    draws the events and packs their pipelines, says "ready", waits for the word, sends the
    pipelines on schedule and sends back what it did. None ends it."""
    r = redis.Redis.from_url(url)
    connection = r.connection_pool.get_connection()
    try:
        while (order := conn.recv()) is not None:
            pipelines = _pipelines(connection, *order)
            conn.send("ready")
            conn.recv()
            conn.send(_produce(connection, pipelines))
    finally:
        r.connection_pool.release(connection)
        r.close()


def _pipelines(connection: Any, stream: str, rate: int, count: int) -> list[tuple[Any, int]]:
    """One pipeline of XADDs per TICK_S (the entries due by then), packed, and its length.

    Discussion: packed before the clock starts. Packing an XADD costs redis-py ~7 us and
    parsing its reply ~4 us; at 25,000 events/s a producer packing as it goes took 0.4-0.5
    of the two cores, which the driver and Redis need; sending packed ones takes ~0.15."""
    events = _events(rate, count)
    pipelines, sent, tick = [], 0, 0
    while sent < count:
        tick += 1
        due = min(count, int(tick * TICK_S * rate))
        commands = [
            ("XADD", stream, "*", *itertools.chain(*pack_event(event).items()))
            for event in events[sent:due]
        ]
        pipelines.append((connection.pack_commands(commands) if commands else [], due - sent))
        sent = due
    return pipelines


def _produce(connection: Any, pipelines: list[tuple[Any, int]]) -> dict[str, Any]:
    """Send pipeline k at TICK_S * k from now (at once, if late), and read its replies."""
    started_at, start = time.time(), time.monotonic()
    late_ms_max, sent = 0.0, 0
    for tick, (packed, entries) in enumerate(pipelines, 1):
        due_at = start + tick * TICK_S
        time.sleep(max(0.0, due_at - time.monotonic()))
        if entries:
            connection.send_packed_command(packed)
            for _ in range(entries):
                connection.read_response()
        sent += entries
        late_ms_max = max(late_ms_max, (time.monotonic() - due_at) * 1000)
    elapsed = time.monotonic() - start
    return {
        "events": sent,
        "started_at": started_at,
        "elapsed_s": elapsed,
        "events_per_s": sent / elapsed,
        "late_ms_max": late_ms_max,
    }


def _batch_pipeline(address: str, conn: Any) -> None:
    """The batch pipeline, in a process of its own: on the word, one map of long `spin`
    tasks at batch priority; on the next, what is left is cancelled and what came of it sent
    back."""
    with Client(address) as client:
        client.ping()
        conn.send("ready")
        conn.recv()
        futures = client.map(
            spin,
            [list(range(BATCH_RECORDS))] * BATCH_TASKS,
            priority="batch",
            chunksize=1,
            record_us=BATCH_RECORD_US,
            max_suspensions=100_000,  # preemption is what is measured, not the cap
        )
        conn.send("submitted")
        conn.recv()
        left = sum(not future.done() for future in futures)
        run = sum(future.done() and not future.cancelled() for future in futures)
        suspended = sum(
            future.done() and (future.statistics().suspensions or 0) > 0 for future in futures
        )
        for future in futures:
            future.cancel()
    conn.send({"run": run, "left": left, "suspended": suspended})


def _doomed_driver(address: str, url: str, stream: str, conn: Any) -> None:
    """Phase 3's first driver, in a process of its own: it runs until it is killed."""
    with Client(address) as client:
        client.ping()
        driver = _driver(client, url, stream, "driver-1")
        conn.send("ready")
        driver.run()


# ---- helpers -----------------------------------------------------------------------------------


def _driver(client: Client, url: str, stream: str, consumer: str, **source: Any) -> StreamDriver:
    return StreamDriver(
        client,
        count_views,
        RedisSource(url, stream, GROUP, consumer=consumer, decode=decode_event, **source),
        RedisCountSink(url, SINK_PREFIX, window_counts),
        kwargs={"spec": SPEC},
        **DRIVER,
    )


def _end(process: Any) -> None:
    """Kill `process` if it still runs (it ended by itself, or something failed)."""
    if process.is_alive():
        process.kill()
    process.join()


def _close(driver: StreamDriver) -> None:
    driver.source.close()
    driver.sink.close()


def _expect(conn: Any, word: str, timeout: float, who: str) -> Any:
    """The next message on `conn`, which must be `word` (None: any); RuntimeError naming
    `who` if none comes within `timeout` (EOFError if it died)."""
    if not conn.poll(timeout):
        raise RuntimeError(f"the {who} said nothing within {timeout:.0f} s")
    message = conn.recv()
    if word is not None and message != word:
        raise RuntimeError(f"the {who} said {message!r}, not {word!r}")
    return message


def _acknowledged(r: redis.Redis, stream: str) -> tuple[int, int]:
    """The group's entries read and still pending (delivered, not acknowledged)."""
    for group in r.xinfo_groups(stream):
        if group["name"] in (GROUP, GROUP.encode()):
            return int(group.get("entries-read") or 0), int(group["pending"])
    return 0, 0


def _wait_acknowledged(r: redis.Redis, stream: str, count: int, timeout: float) -> float | None:
    """Wait until `count` entries of `stream` are acknowledged; the time (epoch s) it was
    seen, or None after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        read, pending = _acknowledged(r, stream)
        if read - pending >= count:
            return time.time()
        time.sleep(POLL_S)
    return None


def _run_beside(driver: StreamDriver, target: Any) -> tuple[DriverStats, Any]:
    """Run `driver` here while `target()` runs in a thread that stops it when it returns or
    fails: the driver's stats and what `target` returned (what it raised is raised here)."""
    out: dict[str, Any] = {}

    def watch() -> None:
        try:
            out["value"] = target()
        except BaseException as exc:
            out["error"] = exc
        finally:
            driver.stop()

    thread = threading.Thread(target=watch, name="tidal-bench-streams-watch", daemon=True)
    thread.start()
    stats = driver.run()
    thread.join()
    if "error" in out:
        raise out["error"]
    return stats, out["value"]


def _warm_up(client: Client) -> None:
    """Import the task and build the campaign table on both executors."""
    event = [[0, "view", 0, []]]
    futures = [client.submit(count_views, event, priority="stream", spec=SPEC) for _ in range(8)]
    client.gather(futures, timeout=60)


# ---- the phases --------------------------------------------------------------------------------


def _rate_phase(
    client: Client, r: redis.Redis, url: str, producer: Any, stream: str, rate: int, count: int
) -> dict[str, Any]:
    """One driver over `count` events produced at `rate`; its figures."""
    driver = _driver(client, url, stream, "driver")
    try:
        producer.send((stream, rate, count))
        _expect(producer, "ready", 120, "producer")

        def produced_and_acknowledged() -> tuple[dict, float | None]:
            producer.send("go")
            summary = _expect(producer, None, count / rate + 60, "producer")
            return summary, _wait_acknowledged(r, stream, summary["events"], DRAIN_S)

        usage = _CpuUse()
        stats, (summary, done_at) = _run_beside(driver, produced_and_acknowledged)
        cores = usage.cores()
    finally:
        _close(driver)
    if done_at is None:
        done_at = time.time()  # not caught up within DRAIN_S: the rate is what it wrote
    return {**_figures(stats, summary, done_at, rate), **cores}


class _CpuUse:
    """CPU used from its making to `cores()`, in cores: by this process (the driver), by the
    processes it started (the cluster, Redis, the producer, the batch pipeline), and by the
    rest of the machine (on a shared machine, someone else's work)."""

    def __init__(self) -> None:
        self._at = time.monotonic()
        self._driver = time.process_time()
        self._ours = self._tree()
        self._busy = self._machine()

    def cores(self) -> dict[str, float]:
        wall = time.monotonic() - self._at
        driver = time.process_time() - self._driver
        ours = self._tree() - self._ours
        other = self._machine() - self._busy - ours
        return {
            "driver_process_cores": driver / wall,
            "bench_cores": ours / wall,
            "other_cores": max(0.0, other) / wall,
        }

    @staticmethod
    def _tree() -> float:
        total = 0.0
        me = psutil.Process()
        for process in (me, *me.children(recursive=True)):
            try:
                times = process.cpu_times()
            except psutil.Error:  # ended meanwhile
                continue
            total += times.user + times.system
        return total

    @staticmethod
    def _machine() -> float:
        """The machine's busy CPU time (every core's, in seconds; not idle, not waiting)."""
        times = psutil.cpu_times()
        return sum(getattr(times, name, 0.0) for name in BUSY)


def _figures(stats: DriverStats, summary: dict, done_at: float, rate: int) -> dict[str, Any]:
    percentiles = latency_percentiles(stats.latencies_ms)
    sizes = stats.batch_sizes
    return {
        "event_ms_p50": percentiles["p50"],
        "event_ms_p99": percentiles["p99"],
        "events": stats.entries,
        "events_per_s": stats.entries / (done_at - summary["started_at"]),
        "producer_events_per_s": summary["events_per_s"],
        "producer_late_ms_max": summary["late_ms_max"],
        "producer_kept_up": summary["events_per_s"] >= KEPT_UP * rate,
        "batches": stats.batches,
        "batch_size_mean": stats.entries / stats.batches if stats.batches else None,
        "batch_size_max": max(sizes) if sizes else None,
        "failed_batches": stats.failed_batches,
    }


def _loaded_phase(
    cluster: LocalCluster,
    client: Client,
    r: redis.Redis,
    producer: Any,
    url: str,
    rate: int,
    count: int,
) -> dict[str, Any]:
    """The rate phase while the batch pipeline keeps both executors busy."""
    spawn = multiprocessing.get_context("spawn")
    ours, theirs = spawn.Pipe()
    pipeline = spawn.Process(target=_batch_pipeline, args=(cluster.address, theirs))
    pipeline.start()
    theirs.close()
    try:
        _expect(ours, "ready", 120, "batch pipeline")
        ours.send("go")
        _expect(ours, "submitted", 120, "batch pipeline")
        client.wait_for_status(
            lambda status: sum(e["running"] is not None for e in status["executors"]) >= 2,
            timeout=60,
        )
        figures = _rate_phase(client, r, url, producer, "ads:loaded", rate, count)
        ours.send("stop")
        batch = _expect(ours, None, 120, "batch pipeline")
        pipeline.join(timeout=30)
    finally:
        _end(pipeline)
    figures.update(
        batch_tasks_run=batch["run"],
        batch_busy_through=batch["left"] >= 2,
        batch_suspended_tasks=batch["suspended"],
    )
    return figures


def _expected_counts(events: list[list[Any]]) -> Counter:
    """What the sink should hold for `events`: the query run here, as the sink's increments."""
    return Counter(
        {(key, name): n for key, name, n in window_counts(count_views(events, spec=SPEC))}
    )


def _counted(r: redis.Redis) -> Counter:
    counts: Counter = Counter()
    for key in r.scan_iter("views:*"):
        for campaign, n in r.hgetall(key).items():
            counts[(key.decode(), campaign.decode())] += int(n)
    return counts


def _kill_in_flight(doomed: Any, r: redis.Redis, url: str, stream: str, count: int) -> None:
    """SIGKILL the first driver once KILL_DRIVER_AT of `count` is acknowledged, at a moment
    when a batch is in flight: its cut recorded, its task submitted (its counts perhaps
    written), not acknowledged.

    Discussion: the driver is stopped (SIGSTOP) first, then looked at, then killed, or let
    go on if no batch is in flight; a batch seen in flight by a look while it runs could be
    acknowledged before the kill lands. STOP_SETTLE_S lets Redis run what the driver sent
    just before it stopped (a pipeline is one write: all of it or none)."""
    looker = RedisSource(url, stream, GROUP, consumer="bench")  # reads nothing
    cuts = looker.cuts_key
    looker.close()
    deadline = time.monotonic() + count / ONCE_RATE + DRAIN_S
    while doomed.is_alive() and time.monotonic() < deadline:
        read, pending = _acknowledged(r, stream)
        if read - pending >= KILL_DRIVER_AT * count:
            os.kill(doomed.pid, signal.SIGSTOP)
            time.sleep(STOP_SETTLE_S)
            if r.hlen(cuts) and _acknowledged(r, stream)[1]:
                doomed.kill()
                doomed.join()
                return
            os.kill(doomed.pid, signal.SIGCONT)
        time.sleep(0.001)
    raise RuntimeError(
        "the first driver did not get a third of the stream done with a batch in flight"
    )


def _once_phase(
    cluster: LocalCluster, client: Client, r: redis.Redis, producer: Any, url: str, count: int
) -> dict[str, Any]:
    """Phase 3 (see the module docstring)."""
    stream = "ads:once"
    r.flushdb()  # the counts of the rate phases go: what is left to compare is this phase's
    spawn = multiprocessing.get_context("spawn")
    ours, theirs = spawn.Pipe()
    doomed = spawn.Process(target=_doomed_driver, args=(cluster.address, url, stream, theirs))
    doomed.start()
    theirs.close()
    try:
        _expect(ours, "ready", 120, "first driver")
        producer.send((stream, ONCE_RATE, count))
        _expect(producer, "ready", 120, "producer")
        producer.send("go")
        _kill_in_flight(doomed, r, url, stream, count)
        read, pending_at_kill = _acknowledged(r, stream)
    finally:
        _end(doomed)
    time.sleep(CLAIM_IDLE_S + CLAIM_MARGIN_S)
    driver = _driver(client, url, stream, "driver-2", claim_idle_s=CLAIM_IDLE_S)
    killed: list[bool] = []

    def kill_then_wait() -> tuple[dict, float | None]:
        if _wait_acknowledged(r, stream, int(KILL_EXECUTOR_AT * count), DRAIN_S) is not None:
            cluster.kill_executor(1)
            killed.append(True)
        summary = _expect(producer, None, count / ONCE_RATE + 60, "producer")
        return summary, _wait_acknowledged(r, stream, summary["events"], DRAIN_S)

    try:
        stats, (summary, done_at) = _run_beside(driver, kill_then_wait)
    finally:
        _close(driver)
    events = _events(ONCE_RATE, count)
    return {
        "exactly_once": done_at is not None
        and summary["events"] == count
        and _counted(r) == _expected_counts(events),
        "once_events": count,
        "acknowledged_at_kill": read - pending_at_kill,
        "pending_at_kill": pending_at_kill,
        "replayed_batches": stats.replayed_batches,
        "replayed_written_batches": stats.skipped_writes,
        "executor_killed": bool(killed),
        "once_failed_batches": stats.failed_batches,
        "once_producer_events_per_s": summary["events_per_s"],
    }


def run(
    quick: bool = False,
    *,
    rate: int | None = None,
    phase_s: float | None = None,
    once_events: int | None = None,
    fsync: str = "everysec",
) -> dict[str, Any]:
    rate = rate or (QUICK_RATE if quick else RATE)
    count = int(rate * (phase_s or (QUICK_PHASE_S if quick else PHASE_S)))
    once_events = once_events or (QUICK_ONCE_EVENTS if quick else ONCE_EVENTS)
    spawn = multiprocessing.get_context("spawn")
    with (
        RedisServer() as server,
        LocalCluster(executors=2, policy="lb") as cluster,
        Client(cluster) as client,
    ):
        r = redis.Redis.from_url(server.url)
        r.config_set("appendfsync", fsync)
        ours, theirs = spawn.Pipe()
        producer = spawn.Process(target=_producer, args=(server.url, theirs))
        producer.start()
        theirs.close()
        try:
            for _ in range(10):
                client.ping()
            _warm_up(client)
            alone = _rate_phase(client, r, server.url, ours, "ads:alone", rate, count)
            loaded = _loaded_phase(cluster, client, r, ours, server.url, rate, count)
            once = _once_phase(cluster, client, r, ours, server.url, once_events)
            ours.send(None)
            producer.join(timeout=10)
        finally:
            _end(producer)
            r.close()
    result: dict[str, Any] = {"rate": rate, "phase_events": count, "appendfsync": fsync}
    result.update({f"alone_{name}": value for name, value in alone.items()})
    result.update(loaded)
    p99, alone_p99 = result["event_ms_p99"], result["alone_event_ms_p99"]
    result["event_p99_vs_alone"] = p99 / alone_p99 if p99 and alone_p99 else None
    result.update(once)
    return result

"""`tidal bench preempt`: how fast stream tasks get a slot that batch tasks are using.

On a LocalCluster, first a stream of small stream tasks runs on idle executors (the
baseline, "alone"); then every executor is given a long CPU-bound batch task and the same
stream runs again. Each stream task is submitted after the previous one finished plus a
random gap, like requests arriving one by one.

- stream_start: client submit -> the task starts on an executor (the executor's Started
  stamp; both read CLOCK_MONOTONIC on this host);
- stream_latency: client submit -> the client has the result;
- zmq_rtt: client -> scheduler -> client, a ping, for scale.

Discussion: the batch job is submitted with a suspension cap as large as the stream, so
that what is measured is preemption; with the default cap of 3, stream tasks beyond the
third per batch task would wait for a batch task to finish (tested elsewhere).
"""

from __future__ import annotations

import random
import time
from typing import Any

from tidal.runtime.client import Client
from tidal.runtime.cluster import LocalCluster
from tidal.runtime.stats import percentile
from tidal.workloads.synthetic import spin, total

TARGETS = {
    "stream_start_ms_p99": ("<=", 1.0),
    "latency_ratio_p99": ("<=", 1.5),
}


def _stream(client: Client, count: int, rng: random.Random) -> tuple[list[float], list[float]]:
    starts, latencies = [], []
    for _ in range(count):
        time.sleep(rng.uniform(0.002, 0.010))
        submitted = time.monotonic_ns()
        future = client.submit(total, list(range(10)), priority="stream")
        done: list[int] = []
        future.add_done_callback(lambda _f, done=done: done.append(time.monotonic_ns()))
        future.result(timeout=60)
        stats = future.statistics()
        starts.append((stats.started_at_ns - submitted) / 1e6)
        latencies.append((done[0] - submitted) / 1e6)
    return starts, latencies


def run(quick: bool = False, executors: int = 2, seed: int = 1) -> dict[str, Any]:
    count = 50 if quick else 200
    rng = random.Random(seed)
    with LocalCluster(executors=executors) as cluster, Client(cluster) as client:
        for _ in range(20):  # warm up imports and connections on every process
            client.ping()
        _stream(client, 10, rng)
        rtts = [client.ping() * 1000 for _ in range(200)]
        alone_starts, alone = _stream(client, count, rng)

        records = 600_000  # ~6 s of 10 us records each: outlasts the loaded stream
        batch = client.map(
            spin,
            [list(range(records))] * executors,
            priority="batch",
            record_us=10.0,
            max_suspensions=count + 10,
        )
        client.wait_for_status(
            lambda status: sum(e["running"] is not None for e in status["executors"]) >= executors
        )
        starts, loaded = _stream(client, count, rng)
        busy_through = not any(f.done() for f in batch)
        for future in batch:
            future.cancel()
    result = {
        "stream_start_ms_p50": percentile(starts, 50),
        "stream_start_ms_p99": percentile(starts, 99),
        "stream_latency_ms_p50": percentile(loaded, 50),
        "stream_latency_ms_p99": percentile(loaded, 99),
        "alone_start_ms_p50": percentile(alone_starts, 50),
        "alone_latency_ms_p50": percentile(alone, 50),
        "alone_latency_ms_p99": percentile(alone, 99),
        "zmq_rtt_ms_p50": percentile(rtts, 50),
        "streams": count,
        "executors": executors,
        "batch_busy_throughout": busy_through,
    }
    result["latency_ratio_p99"] = result["stream_latency_ms_p99"] / result["alone_latency_ms_p99"]
    return result

"""`tidal bench liveness`: a busy executor is not a dead one, and a dead one is seen at once.

One LocalCluster of two executors, default heartbeat (500 ms), with an event log:

1. A batch task holds its executor's GIL in one C call (`sum(range(n))`, `n` calibrated here
   to take `c_call_s`: 10 s, 4 s with --quick) while stream tasks arrive every 50 ms.
   `false_losses`: how often the scheduler declared any executor lost meanwhile (target 0);
   `c_call_task_ok`: the task returned the right sum on its first attempt; `busy_marks`: how
   often the scheduler counted an executor busy (its heartbeats late, its connection up);
   `stream_during_c_call_ms_p99`: the stream tasks' latency meanwhile (they run on the other
   executor), and `stream_during_c_call_ms_max`, the slowest: the stream task sent to the
   busy executor before the scheduler counted it busy (a suspension unanswered 150 ms).
2. `kill -9` of an executor: `kill_detect_ms`, from the kill to the scheduler's
   `executor_lost` (target 100 ms).
3. SIGSTOP of an executor (the whole process stops, its I/O threads too):
   `stop_detect_s`, to `executor_lost` (target 3 heartbeat intervals), and
   `stop_detect_heartbeats` in intervals.

Times come from the event log's "t" (the scheduler's CLOCK_MONOTONIC, which this process
reads too), so they do not depend on when the log reaches the disk.
"""

from __future__ import annotations

import json
import math
import os
import signal
import tempfile
import time
from typing import Any

from tidal.runtime.client import Client
from tidal.runtime.cluster import LocalCluster
from tidal.runtime.stats import percentile
from tidal.workloads.synthetic import c_call, spin, total

TARGETS = {
    "false_losses": ("<=", 0),
    "c_call_task_ok": (">=", 1),
    "kill_detect_ms": ("<=", 100.0),
    "stop_detect_heartbeats": ("<=", 3.0),
}

HEARTBEAT_MS = 500
STREAM_EVERY_S = 0.05


def calibrate(seconds: float) -> int:
    """How many numbers `sum(range(n))` adds in about `seconds` here."""
    n = 2_000_000
    start = time.perf_counter()
    sum(range(n))
    per_number = (time.perf_counter() - start) / n
    return max(n, int(seconds / per_number))


def events(path: str) -> list[dict[str, Any]]:
    """The log's records so far (a last line the scheduler is still writing is left out)."""
    out = []
    with open(path, encoding="utf-8") as file:
        for line in file:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                break
    return out


def wait_for_event(
    path: str, event: str, executor_id: str, after: float, timeout: float
) -> float | None:
    """The scheduler's time of the first `event` about `executor_id` at or after `after`
    (None if none came within `timeout`: the log is flushed at every tick)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for record in events(path):
            if (
                record["event"] == event
                and record.get("executor") == executor_id
                and record["t"] >= after
            ):
                return record["t"]
        time.sleep(0.02)  # polling a file another process writes: no event to wait on
    return None


def wait_for_loss(path: str, executor_id: str, after: float, timeout: float) -> float | None:
    """The scheduler's time of the first `executor_lost` of `executor_id` after `after`."""
    return wait_for_event(path, "executor_lost", executor_id, after, timeout)


def executor_of_node(client: Client, node: str) -> str:
    """The id of the live executor on `node`, as the scheduler knows it now."""
    (executor_id,) = [
        e["executor_id"]
        for e in client.status()["executors"]
        if e["node"] == node and e["state"] == "alive"
    ]
    return executor_id


def c_call_phase(cluster: LocalCluster, client: Client, path: str, seconds: float) -> dict:
    n = calibrate(seconds)
    started = time.monotonic()
    busy = client.submit(c_call, n)
    # The other executor has batch work too, so stream tasks preempt there.
    other = client.map(spin, [list(range(200))] * 40, record_us=200.0)
    latencies: list[float] = []
    streams = []
    while not busy.done() and time.monotonic() - started < 4 * seconds + 30:
        submitted = time.monotonic()
        stream = client.submit(total, list(range(10)), priority="stream")
        stream.add_done_callback(
            lambda _f, at=submitted: latencies.append((time.monotonic() - at) * 1000)
        )
        streams.append(stream)
        time.sleep(STREAM_EVERY_S)  # the arrival process: one stream task per interval
    result = busy.result(timeout=60)
    client.gather(other + streams, timeout=120)
    log = [r for r in events(path) if r["t"] >= started]
    return {
        "c_call_s": time.monotonic() - started,
        "c_call_numbers": n,
        "false_losses": sum(r["event"] == "executor_lost" for r in log),
        "busy_marks": sum(r["event"] == "executor_busy" for r in log),
        "c_call_task_ok": result == n * (n - 1) // 2 and busy.statistics().attempt == 0,
        "stream_during_c_call_ms_p50": percentile(latencies, 50),
        "stream_during_c_call_ms_p99": percentile(latencies, 99),
        # The slowest: the stream task sent to the busy executor waits until the scheduler
        # counts it busy (its suspension unanswered for 150 ms), then runs elsewhere.
        "stream_during_c_call_ms_max": max(latencies, default=float("nan")),
        "stream_tasks": len(latencies),
    }


def kill_phase(cluster: LocalCluster, client: Client, path: str, index: int) -> float:
    executor_id = executor_of_node(client, f"local-{index}")
    killed_at = time.monotonic()
    cluster.kill_executor(index)
    lost_at = wait_for_loss(path, executor_id, killed_at, timeout=30)
    return float("nan") if lost_at is None else (lost_at - killed_at) * 1000


def stop_phase(cluster: LocalCluster, client: Client, path: str, index: int) -> float:
    executor_id = executor_of_node(client, f"local-{index}")
    process = cluster.processes[1 + index]
    stopped_at = time.monotonic()
    os.kill(process.pid, signal.SIGSTOP)
    try:
        lost_at = wait_for_loss(path, executor_id, stopped_at, timeout=30)
    finally:
        process.kill()  # the supervisor starts it again
        os.kill(process.pid, signal.SIGCONT)
        process.wait()
    return float("nan") if lost_at is None else lost_at - stopped_at


def run(quick: bool = False) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="tidal-bench-liveness-") as folder:
        path = os.path.join(folder, "events.jsonl")
        with (
            LocalCluster(executors=2, heartbeat_ms=HEARTBEAT_MS, event_log=path) as cluster,
            Client(cluster) as client,
        ):
            figures = c_call_phase(cluster, client, path, 4.0 if quick else 10.0)
            kills = [kill_phase(cluster, client, path, 1)]
            if not quick:
                cluster.wait_for_executors()
                kills.append(kill_phase(cluster, client, path, 1))
            cluster.wait_for_executors()
            stop_s = stop_phase(cluster, client, path, 0)
    heartbeat_s = HEARTBEAT_MS / 1000
    return {
        **figures,
        # NaN (a kill never seen) wins over any figure: max() would skip it.
        "kill_detect_ms": max(kills) if not any(math.isnan(k) for k in kills) else math.nan,
        "kill_detect_ms_each": kills,
        "stop_detect_s": stop_s,
        "stop_detect_heartbeats": stop_s / heartbeat_s,
        "heartbeat_s": heartbeat_s,
    }

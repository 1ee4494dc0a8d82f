"""Executor liveness by the connection, end to end on real processes (scheduler/liveness.py).

A task that holds its executor's GIL in one C call for many heartbeat intervals makes the
executor busy, never lost; a killed executor is lost because its connection dropped, not
because its heartbeats stopped; a stopped one (SIGSTOP) is lost when libzmq's own heartbeat
times its connection out. Waits are on futures and on the event log with deadlines.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from tidal.runtime.bench.liveness import (
    calibrate,
    events,
    executor_of_node,
    wait_for_event,
    wait_for_loss,
)
from tidal.runtime.client import Client
from tidal.runtime.cluster import LocalCluster
from tidal.workloads.synthetic import c_call, total

pytestmark = pytest.mark.slow

# Discussion: libzmq's heartbeat timeout is then 400 ms, so a loaded CI machine that stalls
# an I/O thread a moment does not lose an executor; the C call still lasts five times the
# silence after which the core counts it busy.
HEARTBEAT_MS = 200


@pytest.fixture
def cluster(tmp_path):
    path = tmp_path / "events.jsonl"
    with LocalCluster(executors=2, heartbeat_ms=HEARTBEAT_MS, event_log=path) as cluster:
        yield cluster


def test_a_long_c_call_makes_its_executor_busy_not_lost(cluster):
    path = cluster.event_log
    n = calibrate(15 * HEARTBEAT_MS / 1000)  # five times the missed-heartbeat limit
    with Client(cluster) as client:
        started = time.monotonic()
        busy = client.submit(c_call, n)
        # Stream work meanwhile runs on the other executor.
        stream = [client.submit(total, [i, 1], priority="stream") for i in range(5)]
        assert busy.result(timeout=60) == n * (n - 1) // 2
        assert [f.result(timeout=60) for f in stream] == [i + 1 for i in range(5)]
        stats = busy.statistics()
        assert stats.attempt == 0  # never requeued
    # Counted busy while the call held its GIL, back once it reported again.
    assert wait_for_event(path, "executor_back", stats.executor_id, started, 30) is not None
    log = events(path)
    assert [r for r in log if r["event"] == "executor_lost"] == []
    marks = [
        r["event"]
        for r in log
        if r["event"] in ("executor_busy", "executor_back") and r["executor"] == stats.executor_id
    ]
    assert marks[:2] == ["executor_busy", "executor_back"]


def test_a_killed_executor_is_lost_by_its_connection(cluster):
    path = cluster.event_log
    with Client(cluster) as client:
        executor_id = executor_of_node(client, "local-1")
    killed_at = time.monotonic()
    cluster.kill_executor(1)
    assert wait_for_loss(path, executor_id, killed_at, timeout=30) is not None
    (lost,) = [r for r in events(path) if r["event"] == "executor_lost"]
    assert lost["reason"] == "its connection dropped"
    with Client(cluster) as client:  # and the cluster serves on
        assert client.submit(total, [1, 2]).result(timeout=30) == 3


def test_a_stopped_executor_is_lost_when_its_connection_times_out(cluster):
    path = cluster.event_log
    with Client(cluster) as client:
        executor_id = executor_of_node(client, "local-0")
    process = cluster.processes[1]
    stopped_at = time.monotonic()
    os.kill(process.pid, signal.SIGSTOP)
    try:
        assert wait_for_loss(path, executor_id, stopped_at, timeout=30) is not None
    finally:
        os.kill(process.pid, signal.SIGCONT)
    lost = [r for r in events(path) if r["event"] == "executor_lost"]
    assert lost[0]["executor"] == executor_id and lost[0]["reason"] == "its connection dropped"

"""The memory limit for real: executor processes with `--memory-limit`, driven by the stub
scheduler, and a LocalCluster that restarts an executor that died. Limits are the
executor's own RSS before any task (measured here, once) plus a few tens of MiB. Every
process a test starts is stopped by the test."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import pytest

from tests.stub import PROGRESS, StubScheduler
from tidal.runtime import payloads
from tidal.runtime import protocol as p
from tidal.runtime.client import Client, MemoryLimitExceeded
from tidal.runtime.cluster import LocalCluster
from tidal.runtime.memory import format_size
from tidal.runtime.processes import child_env, spawn_executor, stop_process
from tidal.workloads.synthetic import hog, hog_without_boundaries

pytestmark = pytest.mark.slow

MiB = 1024 * 1024
HOG = "tidal.workloads.synthetic:hog"


def next_message(stub, kind, task_id=None, timeout=20.0):
    """The next `kind` message (for `task_id`), skipping progress reports and heartbeats."""
    deadline = time.monotonic() + timeout
    while True:
        _, msg = stub.recv(max(0.0, deadline - time.monotonic()))
        if isinstance(msg, kind) and (task_id is None or msg.task_id == task_id):
            return msg
        if not isinstance(msg, PROGRESS | p.Goodbye):
            raise AssertionError(f"expected {kind.__name__}, got {msg!r}")


def heartbeat_where(stub, condition, timeout=20.0):
    """Wait for a heartbeat that satisfies `condition`."""
    deadline = time.monotonic() + timeout
    while True:
        beat = next_message(stub, p.Heartbeat, timeout=max(0.0, deadline - time.monotonic()))
        if condition(beat):
            return beat


def launch(stub, executor_id, task_id, fn, args=(), kwargs=None):
    payload = payloads.pack_call(list(args), kwargs or {})
    stub.send(executor_id, p.Launch(task_id, fn, None, payload, 0, "batch", time.monotonic_ns()))


@pytest.fixture(scope="module")
def baseline_rss():
    """An idle executor's RSS, from its first heartbeat."""
    with StubScheduler(heartbeat_ms=50) as stub:
        proc = spawn_executor(stub.address)
        try:
            next_message(stub, p.Hello, timeout=30)
            return next_message(stub, p.Heartbeat).rss_bytes
        finally:
            stop_process(proc)


@pytest.fixture
def limited(baseline_rss):
    """An executor limited to its idle RSS + 64 MiB: (stub, executor id, process, limit)."""
    limit = baseline_rss + 64 * MiB
    with StubScheduler(heartbeat_ms=50) as stub:
        proc = spawn_executor(stub.address, extra_args=["--memory-limit", str(limit)])
        try:
            hello = next_message(stub, p.Hello, timeout=30)
            yield stub, hello.executor_id, proc, limit
        finally:
            stop_process(proc)


def test_a_task_past_the_limit_fails_clearly_and_the_executor_serves_the_next(limited):
    stub, ex, proc, limit = limited
    launch(stub, ex, "big", HOG, [list(range(200))])  # 200 MiB against 64 MiB of room
    failed = next_message(stub, p.Failed, "big")
    assert failed.error_type == "MemoryLimitExceeded"
    limit_text = format_size(limit)
    assert re.fullmatch(
        rf"task big exceeded executor {re.escape(ex)}'s memory limit of {re.escape(limit_text)} "
        r"\(rss [\d.]+ MiB, the task ~[\d.]+ MiB\)",
        failed.message,
    ), failed.message
    launch(stub, ex, "next", HOG, [list(range(8))])
    assert payloads.unpack_payload(next_message(stub, p.Finished, "next").result) == 8 * 1024
    # Its memory was given back, and the heartbeat carries the limit.
    beat = heartbeat_where(stub, lambda b: b.running == 0 and b.rss_bytes < limit)
    assert beat.memory_limit_bytes == limit and beat.task_memory == {}
    assert proc.poll() is None


def test_a_suspended_task_counts_and_the_running_task_that_grew_pays(limited):
    stub, ex, proc, _ = limited
    # "parked" grows to 40 MiB, then works on without growing (~2 s); it is suspended there.
    launch(stub, ex, "parked", HOG, [list(range(40_000))], {"grow_records": 40, "record_us": 50})
    beat = heartbeat_where(stub, lambda b: b.task_memory.get("parked", 0) >= 40 * MiB)
    stub.send(ex, p.Suspend("parked", time.monotonic_ns()))
    next_message(stub, p.Suspended, "parked")
    # 40 MiB parked + 40 MiB more is over the 64 MiB of room, though each alone is not.
    # (At 2 ms a record: a task that grows and ends between two looks is never seen.)
    launch(stub, ex, "pusher", HOG, [list(range(40))], {"record_us": 2000})
    failed = next_message(stub, p.Failed, "pusher")
    assert failed.error_type == "MemoryLimitExceeded"
    beat = heartbeat_where(stub, lambda b: b.running == 0)
    assert beat.suspended == 1 and beat.task_memory["parked"] >= 40 * MiB  # still held
    stub.send(ex, p.Resume("parked", time.monotonic_ns()))
    assert payloads.unpack_payload(next_message(stub, p.Finished, "parked").result) == 40 * 1024
    assert proc.poll() is None


def test_a_task_that_reaches_no_boundary_is_reported_failed_and_the_executor_exits(limited):
    stub, ex, proc, _ = limited
    launch(stub, ex, "stuck", "tidal.workloads.synthetic:hog_without_boundaries")
    failed = next_message(stub, p.Failed, "stuck")
    assert failed.error_type == "MemoryLimitExceeded"
    assert "reached no record boundary" in failed.message and "exits" in failed.message
    goodbye = next_message(stub, p.Goodbye)
    assert goodbye.reason == failed.message
    assert proc.wait(timeout=10) == 3


@pytest.mark.parametrize(
    ("limit", "problem"),
    [("12XB", "unknown unit 'XB'"), ("1MiB", "below this executor's own memory")],
)
def test_a_bad_memory_limit_stops_the_executor_at_once_naming_the_problem(limit, problem):
    command = [sys.executable, "-m", "tidal", "executor", "--scheduler", "tcp://127.0.0.1:9"]
    done = subprocess.run(
        [*command, "--memory-limit", limit],
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "--memory-limit" in done.stderr and problem in done.stderr


def wait_for(client, condition, timeout=30.0):
    """Wait until `condition(status)` holds; return that status."""
    deadline = time.monotonic() + timeout
    while True:
        status = client.status()
        if condition(status):
            return status
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s: {status}")
        client.ping()  # a round trip between looks, not a sleep


def test_local_cluster_enforces_the_limit_and_restarts_an_executor_that_died(baseline_rss):
    limit = baseline_rss + 64 * MiB
    with (
        LocalCluster(executors=1, heartbeat_ms=100, memory_limit=limit) as cluster,
        Client(cluster) as client,
    ):
        big = client.submit(hog, list(range(200)))
        with pytest.raises(MemoryLimitExceeded, match=r"exceeded executor .* memory limit"):
            big.result(timeout=30)
        assert client.submit(hog, list(range(4))).result(timeout=30) == 4 * 1024

        (first,) = [e["executor_id"] for e in client.status()["executors"]]
        os.kill(cluster.processes[1].pid, signal.SIGKILL)
        status = wait_for(
            client,
            lambda s: any(
                e["state"] == "alive" and e["executor_id"] != first for e in s["executors"]
            ),
        )
        assert cluster.restarts == 1
        (restarted,) = [e for e in status["executors"] if e["executor_id"] != first]
        assert restarted["memory_limit_bytes"] in (None, limit)  # None until its first beat
        assert client.submit(hog, list(range(4))).result(timeout=30) == 4 * 1024


def test_with_keys_an_executor_that_must_exit_still_reports_why(baseline_rss):
    # Its last words go on a connection of their own: with keys, a keyed one.
    limit = baseline_rss + 64 * MiB
    with (
        LocalCluster(executors=1, heartbeat_ms=100, memory_limit=limit, keys=True) as cluster,
        Client(cluster) as client,
    ):
        stuck = client.submit(hog_without_boundaries)
        with pytest.raises(MemoryLimitExceeded, match="reached no record boundary"):
            stuck.result(timeout=60)

"""Executor failures and scheduler restarts, end to end on real processes.

Executors are killed (-9), hung (SIGSTOP) and woken (SIGCONT); the scheduler is killed and
started again on its journal. Every future must complete exactly once with the right
result. Waits are on conditions (status polls, futures) with deadlines, never sleeps.
"""

from __future__ import annotations

import os
import signal

import pytest

from tidal.runtime import datastore, payloads
from tidal.runtime.client import Client, TaskError
from tidal.runtime.cluster import LocalCluster
from tidal.workloads.synthetic import crash_executor, spin, spin_copy, total

pytestmark = pytest.mark.slow


def alive(status):
    return sum(e["state"] == "alive" for e in status["executors"])


def running(status):
    return sum(e["running"] is not None for e in status["executors"] if e["state"] == "alive")


def job_counts(status):
    return {
        j["job_id"]: (j["finished"], j["failed"], j["cancelled"], j["total"])
        for j in status["jobs"]
    }


def test_a_task_that_keeps_losing_its_executor_fails_naming_them():
    with (
        LocalCluster(executors=3, heartbeat_ms=100, max_retries=1) as cluster,
        Client(cluster) as client,
    ):
        doomed = client.submit(crash_executor)
        with pytest.raises(TaskError, match="lost its executor 2 times") as caught:
            doomed.result(timeout=60)
        message = str(caught.value)
        assert "giving up (max_retries=1)" in message and doomed.task_id in message
        lost = [e["executor_id"] for e in client.status()["executors"] if e["state"] == "lost"]
        named = [executor_id for executor_id in lost if executor_id in message]
        # Two losses counted, both named. Discussion: a third executor may be lost, rarely:
        # the task kills its process at once, and the `received` that makes the loss count
        # can still be in libzmq's queue then (docs/protocol.md; seen once in ~30 runs).
        assert len(named) == 2 and len(lost) in (2, 3)
        # The executor left serves on.
        assert client.submit(total, [1, 2]).result(timeout=30) == 3


def test_a_hung_executor_is_lost_its_tasks_run_elsewhere_and_it_rejoins_when_woken():
    partitions = [list(range(i * 1_000, (i + 1) * 1_000)) for i in range(6)]
    with (
        LocalCluster(executors=2, heartbeat_ms=100) as cluster,
        Client(cluster) as client,
    ):
        futures = client.map(spin, partitions, record_us=300.0)  # ~0.3 s each
        client.wait_for_status(lambda s: running(s) >= 2)
        hung = cluster.processes[2]
        os.kill(hung.pid, signal.SIGSTOP)
        try:
            status = client.wait_for_status(lambda s: alive(s) == 1, timeout=30)
            (lost,) = [e["executor_id"] for e in status["executors"] if e["state"] == "lost"]
            assert client.gather(futures, timeout=120) == [sum(p) for p in partitions]
        finally:
            os.kill(hung.pid, signal.SIGCONT)
        # Woken, it says hello again; what it held was stale and is killed there, and its
        # late reports change nothing: every task completed once, on the attempt that ran.
        client.wait_for_status(lambda s: alive(s) == 2, timeout=30)
        moved = [f for f in futures if f.statistics().attempt >= 1]
        assert moved and all(f.statistics().executor_id != lost for f in moved)
        status = client.status()
        assert job_counts(status)[futures[0].job_id] == (6, 0, 0, 6)
        # It works again: both executors take new work.
        more = client.map(spin, [list(range(200))] * 4, record_us=500.0)
        assert client.gather(more, timeout=60) == [sum(range(200))] * 4
        assert {f.statistics().executor_id for f in more} >= {lost}


def test_a_restarted_scheduler_finds_its_jobs_executors_and_clients_again():
    batch_parts = [list(range(i * 400, (i + 1) * 400)) for i in range(8)]
    chunked_items = list(range(300))
    with (
        LocalCluster(executors=2, heartbeat_ms=100) as cluster,
        Client(cluster) as client,
    ):
        batch = client.map(spin, batch_parts, record_us=1_000.0)  # ~0.4 s each
        chunked = client.map(spin, [[i] for i in chunked_items], chunksize=30, record_us=3_000.0)
        early = client.submit(total, [1, 2, 3], priority="stream")
        assert early.result(timeout=30) == 6
        client.wait_for_status(lambda s: running(s) >= 2)
        cluster.restart_scheduler()
        stream = client.submit(total, [4, 5], priority="stream")  # sent to the new scheduler
        assert stream.result(timeout=60) == 9
        assert client.gather(batch, timeout=120) == [sum(p) for p in batch_parts]
        assert client.gather(chunked, timeout=120) == chunked_items
        assert client.reconnects >= 1
        status = client.status()
        assert status["restarts"] == 1 and alive(status) == 2
        counts = job_counts(status)
        assert counts[batch[0].job_id] == (8, 0, 0, 8)
        assert counts[chunked[0].job_id] == (300, 0, 0, 300)


def test_spooled_arguments_and_results_survive_a_killed_executor_and_a_restarted_scheduler():
    """Arguments and results over 64 KiB travel as references to their owner's spool
    (runtime/datastore.py): a task run again after its executor died, or re-launched by a
    restarted scheduler from its journal, reads the same file; a result reported before the
    restart is fetched after it; the files go once read, and with the job."""
    parts = [list(range(i * 30_000, (i + 1) * 30_000)) for i in range(1, 7)]  # ~150 KB each
    with (
        LocalCluster(executors=2, heartbeat_ms=100) as cluster,
        Client(cluster) as client,
    ):
        futures = client.map(spin_copy, parts, record_us=20.0)  # ~0.6 s each
        client.wait_for_status(lambda s: running(s) >= 2)
        os.kill(cluster.processes[1].pid, signal.SIGKILL)
        cluster.restart_scheduler()
        assert client.gather(futures, timeout=120) == parts
        packed = sum(len(payloads.pack_call([part], {})) for part in parts)
        assert client.status()["bad_input"]["bytes_in"] < 2 * packed / 10  # references only
        assert os.listdir(client._data.folder) == ["owner.pid"]
        for future in futures:  # every result read was deleted by its reader
            folder = datastore.spool_folder(future.statistics().executor_id)
            assert not os.path.exists(folder) or os.listdir(folder) == ["owner.pid"]

"""`tidal bench soak`: a scheduler that serves a million tasks and gives back what they took.

A LocalCluster of 2 executors (with its journal) serves clients that come and go: each sends
a chunked map and single submits (stream and batch), reads the results and drops its futures;
half of them say goodbye, the other half (each in a process of its own) just end, their
futures dropped first.
Then one long-lived client keeps submitting and dropping futures, and the scheduler's memory
is measured between the first third and the end of it. Then the clients are gone and the
scheduler idles until its books are empty.

Figures: `tasks`; the scheduler's RSS at the start (after a warm-up job), its peak (sampled
between jobs) and at the end (MiB); `scheduler_rss_growth_per_million_mib` while the
long-lived client works; `executor_rss_growth_mib` (the larger of the two); `journal_bytes_end`
(the journal and its write-ahead log); and what the books hold at the end (nothing: the
vanished clients' jobs go after the cluster's client timeout, CLIENT_TIMEOUT_S).
"""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import time
from typing import Any

import psutil

from tidal.runtime.client import Client
from tidal.runtime.cluster import LocalCluster
from tidal.runtime.processes import child_env
from tidal.workloads.synthetic import noop, total

TARGETS = {
    "scheduler_rss_end_over_start_mib": ("<=", 10.0),
    "scheduler_rss_growth_per_million_mib": ("<=", 10.0),
    "journal_bytes_end": ("<=", 1 << 20),
    "executor_rss_growth_mib": ("<=", 10.0),
}

MIB = 1 << 20
# How long the scheduler idles before its memory is measured at the end (it gives freed
# memory back at most every scheduler.server.TRIM_EVERY_NS while nothing runs).
IDLE_S = 6.0
# The cluster's --client-timeout: the vanished clients' last jobs go within the run.
CLIENT_TIMEOUT_S = 2.0


def _rss(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / MIB


def _one_client_round(client: Client, map_tasks: int, singles: int) -> int:
    """A chunked map and single submits, results read, every future dropped; tasks run."""
    mapped = client.map(noop, list(range(map_tasks)), chunksize="auto")
    client.gather(mapped, timeout=600)
    del mapped
    for i in range(singles):
        priority = "stream" if i % 2 else "batch"
        assert client.submit(total, [i], priority=priority).result(timeout=60) == i
    gc.collect()  # the dropped futures are finalized: their jobs are released
    return map_tasks + singles


# A client that does one round, then leaves without a goodbye (its process just ends); its
# last job's futures are dropped and released first.
_VANISHING = """
import os, sys
from tidal.runtime.bench.soak import _one_client_round
from tidal.runtime.client import Client
from tidal.workloads.synthetic import total
client = Client(sys.argv[1])
_one_client_round(client, int(sys.argv[2]), int(sys.argv[3]))
client.submit(total, [0]).result(timeout=60)  # carries the last releases
os._exit(0)
"""


def _vanishing_client(address: str, map_tasks: int, singles: int) -> None:
    subprocess.run(
        [sys.executable, "-c", _VANISHING, address, str(map_tasks), str(singles)],
        check=True,
        timeout=600,
        env=child_env(),
    )


def run(
    quick: bool = False,
    *,
    clients: int = 10,
    map_tasks: int | None = None,
    singles: int | None = None,
    long_rounds: int = 12,
    idle_s: float = IDLE_S,
) -> dict[str, Any]:
    scale = 10 if quick else 1
    map_tasks = map_tasks or 100_000 // scale
    singles = singles or 200 // scale
    with LocalCluster(executors=2, client_timeout=CLIENT_TIMEOUT_S) as cluster:
        scheduler = cluster.processes[0].pid
        executors = [p.pid for p in cluster.processes[1:]]
        tasks = 0
        with Client(cluster) as warm:
            tasks += _one_client_round(warm, 1_000, 10)
        start = _rss(scheduler)
        executors_start = [_rss(pid) for pid in executors]
        peak = start
        # -- 1. Clients that come and go: half say goodbye, half just stop.
        for n in range(clients):
            if n % 2:  # in a process of its own that exits without a goodbye
                _vanishing_client(cluster.address, map_tasks, singles)
            else:
                with Client(cluster) as client:
                    _one_client_round(client, map_tasks, singles)
            tasks += map_tasks + singles
            peak = max(peak, _rss(scheduler))
        # -- 2. One long-lived client: memory per million tasks while it works.
        with Client(cluster) as client:
            rounds_rss = []
            long_tasks = 0
            for _ in range(long_rounds):
                long_tasks += _one_client_round(client, map_tasks // 2, singles)
                rounds_rss.append((long_tasks, _rss(scheduler)))
            peak = max(peak, max(r for _, r in rounds_rss))
            tasks += long_tasks
            (t0, r0), (t1, r1) = rounds_rss[long_rounds // 3], rounds_rss[-1]
            growth = (r1 - r0) / (t1 - t0) * 1e6
        # -- 3. Everyone gone: the books empty out.
        # (A vanished client's last job goes after the client timeout: its futures were
        # held when its process ended, and no goodbye came.)
        with Client(cluster) as watcher:
            books = watcher.wait_for_status(
                lambda s: s["books"]["jobs"] == 0, timeout=CLIENT_TIMEOUT_S + 30
            )["books"]
        time.sleep(idle_s)  # it idles: what it gives back when nothing runs, it has by now
        end = _rss(scheduler)
        executors_end = [_rss(pid) for pid in executors]
        journal = cluster.journal
        db_bytes, wal_bytes = (
            os.path.getsize(path) if journal is not None and os.path.exists(path) else 0
            for path in (journal, f"{journal}-wal")
        )
    return {
        "tasks": tasks,
        "scheduler_rss_start_mib": round(start, 1),
        "scheduler_rss_peak_mib": round(peak, 1),
        "scheduler_rss_end_mib": round(end, 1),
        "scheduler_rss_end_over_start_mib": round(end - start, 1),
        "scheduler_rss_growth_per_million_mib": round(growth, 2),
        "executor_rss_growth_mib": round(
            max(e - s for s, e in zip(executors_start, executors_end, strict=True)), 1
        ),
        "journal_bytes_end": db_bytes + wal_bytes,
        "journal_wal_bytes_end": wal_bytes,
        "books_end": books,
    }

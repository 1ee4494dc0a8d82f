"""`tidal bench steal`: chunks of very different sizes, with and without stealing.

On a LocalCluster of 2 executors: one chunk of 200 tasks and three of 10 (20x apart), every
task ~5 ms of Python. Without stealing the executor that got the big chunk works alone long
after the other ran out of work; with stealing the idle one takes half of what the big chunk
has not started, again and again. `ideal_s` is the total work measured (the tasks' running
time) divided by the 2 slots.
"""

from __future__ import annotations

import time
from typing import Any

from tidal.runtime.client import Client
from tidal.runtime.cluster import LocalCluster
from tidal.workloads.synthetic import spin

TARGETS = {"steal_vs_ideal": ("<=", 1.15), "nosteal_vs_ideal": (">=", 1.5)}
SIZES = (200, 10, 10, 10)
TASK_US = 5_000.0


def _makespan(stealing: bool) -> tuple[float, float]:
    with LocalCluster(executors=2, stealing=stealing) as cluster, Client(cluster) as client:
        client.gather(client.map(spin, [[0]] * 4, chunksize=2, record_us=100.0))  # warm
        start = time.perf_counter()
        jobs = [client.map(spin, [[1]] * size, chunksize=size, record_us=TASK_US) for size in SIZES]
        futures = [f for job in jobs for f in job]
        client.gather(futures, timeout=120)
        makespan = time.perf_counter() - start
        work = sum(f.statistics().running_s or 0.0 for f in futures)
    return makespan, work


def run(quick: bool = False) -> dict[str, Any]:
    # `quick` is ignored: the CLI passes it to every benchmark, and this run is short already.
    with_steal, work_a = _makespan(stealing=True)
    without, work_b = _makespan(stealing=False)
    ideal = (work_a + work_b) / 2 / 2  # mean total work over 2 slots
    return {
        "makespan_steal_s": with_steal,
        "makespan_nosteal_s": without,
        "ideal_s": ideal,
        "steal_vs_ideal": with_steal / ideal,
        "nosteal_vs_ideal": without / ideal,
        "chunk_sizes": list(SIZES),
        "task_ms": TASK_US / 1000,
    }

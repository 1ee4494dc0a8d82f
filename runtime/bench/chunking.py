"""`tidal bench chunking`: many tiny tasks, one message each or in chunks, against a pool.

200,000 no-op tasks on a LocalCluster of 2 executors, submitted with one `client.map` with
chunksize 1 (a launch and a future per task) and with "auto" (a bulk job: its futures are
made only when asked for, and `gather` asks for none), each gathered; in the same run,
`multiprocessing.Pool(2).map` over the same items with chunksize 100. Start-up is not
counted.

The pool's map and the auto-chunked one alternate ROUNDS times, and each figure is the median
of its rounds (every round's rate is in `..._runs`): on this 2-core VM one map of either
varies by up to 1.5x from one round to the next, the pool's most (0.8-1.8 M/s), so a
single pair made the ratio a coin toss. The chunksize-1 map (~1 min) runs once.
"""

from __future__ import annotations

import multiprocessing
import statistics
import time
from typing import Any

from tidal.runtime.bench import timed_map
from tidal.runtime.client import Client
from tidal.runtime.cluster import LocalCluster
from tidal.workloads.synthetic import noop

TARGETS = {"auto_vs_pool_chunked": (">=", 0.5)}


ROUNDS = 3


def run(quick: bool = False, subtasks: int | None = None) -> dict[str, Any]:
    n = subtasks or (20_000 if quick else 200_000)
    items = list(range(n))
    pool_rates: list[float] = []
    auto_rates: list[float] = []
    with (
        multiprocessing.Pool(2) as pool,
        LocalCluster(executors=2) as cluster,
        Client(cluster) as client,
    ):
        pool.map(noop, range(1000), chunksize=100)  # warm
        timed_map(client, noop, list(range(2_000)), 900, chunksize="auto")  # warm
        for _ in range(ROUNDS):
            start = time.perf_counter()
            pool.map(noop, items, chunksize=100)
            pool_rates.append(n / (time.perf_counter() - start))
            auto_rates.append(timed_map(client, noop, items, 900, chunksize="auto"))
        one = timed_map(client, noop, items, 900, chunksize=1)
    auto, pool_rate = statistics.median(auto_rates), statistics.median(pool_rates)
    return {
        "subtasks": n,
        "subtasks_per_s_chunksize_1": one,
        "subtasks_per_s_auto": auto,
        "pool_chunked_per_s": pool_rate,
        "auto_vs_pool_chunked": auto / pool_rate,
        "auto_vs_chunksize_1": auto / one,
        "subtasks_per_s_auto_runs": auto_rates,
        "pool_chunked_per_s_runs": pool_rates,
    }

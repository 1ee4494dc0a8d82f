"""`tidal bench throughput`: no-op tasks end to end, against multiprocessing.Pool.

20,000 no-op tasks submitted with one `client.map` on a LocalCluster of 2 executors, from
submission to the last result in the client; in the same run, `multiprocessing.Pool(2).map`
over the same function and inputs with chunksize 1 (the pool's start-up is not counted, nor
is the cluster's). `tasks_per_s` is `map` as a user calls it (chunked automatically from 256
tasks up; each task still has its own future and result); `tasks_per_s_unchunked` forces
one launch per task.
"""

from __future__ import annotations

import multiprocessing
import time
from typing import Any

from runtime.client import Client
from runtime.cluster import LocalCluster
from workloads.synthetic import noop

TARGETS = {"throughput_ratio": (">=", 1.0)}


def run(quick: bool = False, tasks: int | None = None, executors: int = 2) -> dict[str, Any]:
    tasks = tasks or (5_000 if quick else 20_000)
    with multiprocessing.Pool(executors) as pool:
        pool.map(noop, range(100), chunksize=1)  # warm
        start = time.perf_counter()
        pool.map(noop, range(tasks), chunksize=1)
        pool_s = time.perf_counter() - start
    with LocalCluster(executors=executors) as cluster, Client(cluster) as client:
        client.gather(client.map(noop, list(range(500))), timeout=120)  # warm
        start = time.perf_counter()
        futures = client.map(noop, list(range(tasks)))
        client.gather(futures, timeout=600)
        tidal_s = time.perf_counter() - start
        start = time.perf_counter()
        client.gather(client.map(noop, list(range(tasks)), chunksize=1), timeout=600)
        unchunked_s = time.perf_counter() - start
    result = {
        "tasks": tasks,
        "executors": executors,
        "tasks_per_s": tasks / tidal_s,
        "tasks_per_s_unchunked": tasks / unchunked_s,
        "pool_tasks_per_s": tasks / pool_s,
    }
    result["throughput_ratio"] = result["tasks_per_s"] / result["pool_tasks_per_s"]
    return result

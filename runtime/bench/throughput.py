"""`tidal bench throughput`: no-op tasks end to end, against multiprocessing.Pool.

20,000 no-op tasks submitted with one `client.map` on a LocalCluster of 2 executors, from
submission to the last result in the client; in the same run, `multiprocessing.Pool(2).map`
over the same function and inputs with chunksize 1 (the pool's start-up is not counted, nor
is the cluster's). `tasks_per_s` is `map` as a user calls it (chunked automatically from 256
tasks up; each task still has its own future and result); `tasks_per_s_unchunked` forces
one launch per task.

With `dask[distributed]` installed, the same tasks run on a Dask LocalCluster of as many
single-thread worker processes (runtime/bench/peers.py): one `client.map(noop, items,
pure=False)` gathered, after a warm-up map; `tasks_vs_dask` is Tidal's `tasks_per_s` over
Dask's. With `ray` installed, on a Ray head with as many single-CPU slots: a remote call
per item, all submitted, then one `ray.get` of them all, after a warm-up;
`tasks_vs_ray` is Tidal's `tasks_per_s` over Ray's, `unchunked_vs_ray` Tidal's
`tasks_per_s_unchunked` over Ray's (one launch per task on both). A peer that is not
installed is skipped, and `dask_skipped` or `ray_skipped` says why.
"""

from __future__ import annotations

import multiprocessing
import time
from typing import Any

from tidal.runtime.bench import timed_map
from tidal.runtime.bench.peers import (
    dask_cluster,
    dask_missing,
    dask_versions,
    ray_cluster,
    ray_missing,
    ray_versions,
)
from tidal.runtime.client import Client
from tidal.runtime.cluster import LocalCluster
from tidal.workloads.synthetic import noop

TARGETS = {
    "throughput_ratio": (">=", 1.0),
    "tasks_vs_dask": (">=", 15.0),
    "tasks_vs_ray": (">=", 10.0),
}
WARM_TASKS = 500


def run(quick: bool = False, tasks: int | None = None, executors: int = 2) -> dict[str, Any]:
    tasks = tasks or (5_000 if quick else 20_000)
    with multiprocessing.Pool(executors) as pool:
        pool.map(noop, range(100), chunksize=1)  # warm
        start = time.perf_counter()
        pool.map(noop, range(tasks), chunksize=1)
        pool_s = time.perf_counter() - start
    with LocalCluster(executors=executors) as cluster, Client(cluster) as client:
        timed_map(client, noop, list(range(WARM_TASKS)), 120)  # warm
        tidal_rate = timed_map(client, noop, list(range(tasks)), 600)
        unchunked_rate = timed_map(client, noop, list(range(tasks)), 600, chunksize=1)
    result = {
        "tasks": tasks,
        "executors": executors,
        "tasks_per_s": tidal_rate,
        "tasks_per_s_unchunked": unchunked_rate,
        "pool_tasks_per_s": tasks / pool_s,
    }
    result["throughput_ratio"] = result["tasks_per_s"] / result["pool_tasks_per_s"]
    missing = dask_missing()
    if missing is None:
        result["dask_tasks_per_s"] = _dask_rate(tasks, executors)
        result["tasks_vs_dask"] = result["tasks_per_s"] / result["dask_tasks_per_s"]
        result["dask_versions"] = dask_versions()
    else:
        result["dask_skipped"] = missing
    missing = ray_missing()
    if missing is None:
        result["ray_tasks_per_s"] = _ray_rate(tasks, executors)
        result["tasks_vs_ray"] = result["tasks_per_s"] / result["ray_tasks_per_s"]
        result["unchunked_vs_ray"] = result["tasks_per_s_unchunked"] / result["ray_tasks_per_s"]
        result["ray_versions"] = ray_versions()
    else:
        result["ray_skipped"] = missing
    return result


def _dask_rate(tasks: int, workers: int) -> float:
    with dask_cluster(workers) as client:
        client.gather(client.map(noop, range(WARM_TASKS), pure=False))
        start = time.perf_counter()
        client.gather(client.map(noop, range(tasks), pure=False))
        return tasks / (time.perf_counter() - start)


def _ray_rate(tasks: int, workers: int) -> float:
    with ray_cluster(workers) as client:
        client.map(noop, range(WARM_TASKS))
        start = time.perf_counter()
        client.map(noop, range(tasks))
        return tasks / (time.perf_counter() - start)

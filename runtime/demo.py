"""`tidal demo`: a stream job beside a batch job on a LocalCluster, under each policy.

A batch job of CPU-bound tasks (~0.25 s each) fills every executor; meanwhile small stream
tasks arrive every 50 ms. Under FIFO each stream task waits for a batch task to finish;
under LB it suspends one, runs at once, and the batch task resumes where it stopped. The
table shows stream latency (submit -> result, as the client sees it), batch makespan and
suspensions, and every batch result is checked against a direct computation.

(The full demo, with the ad-analytics and topic-model workloads, plots and a report folder,
is a later milestone.)
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.table import Table

from runtime.bench import percentile
from runtime.client import Client
from runtime.cluster import LocalCluster
from workloads.synthetic import spin

BATCH_RECORDS = 25_000  # x 10 us = ~0.25 s per batch task
STREAM_RECORDS = 200  # x 10 us = ~2 ms per stream task
STREAM_INTERVAL_S = 0.05


def run_policy(policy: str, executors: int, streams: int) -> dict[str, Any]:
    """One run: returns stream latencies (ms), batch makespan (s) and correctness."""
    partitions = [
        list(range(i * BATCH_RECORDS, (i + 1) * BATCH_RECORDS)) for i in range(executors * 4)
    ]
    with LocalCluster(executors=executors, policy=policy) as cluster, Client(cluster) as client:
        start = time.monotonic()
        batch = client.map(spin, partitions, priority="batch", record_us=10.0)
        latencies: list[float] = []
        stream_futures = []
        time.sleep(0.1)  # let the batch job take every slot first
        for _ in range(streams):
            submitted = time.monotonic()
            future = client.submit(
                spin, list(range(STREAM_RECORDS)), priority="stream", record_us=10.0
            )
            future.add_done_callback(
                lambda _f, t=submitted: latencies.append((time.monotonic() - t) * 1000)
            )
            stream_futures.append(future)
            time.sleep(STREAM_INTERVAL_S)
        results = client.gather(batch, timeout=300)
        makespan = time.monotonic() - start
        client.gather(stream_futures, timeout=60)
        suspensions = sum(f.statistics().suspensions or 0 for f in batch)
    correct = results == [sum(p) for p in partitions]
    return {
        "stream_ms_p50": percentile(latencies, 50),
        "stream_ms_p99": percentile(latencies, 99),
        "stream_ms_max": max(latencies),
        "batch_makespan_s": makespan,
        "suspensions": suspensions,
        "batch_correct": correct,
    }


def run(
    policies: Sequence[str] = ("fifo", "lb"),
    executors: int = 2,
    streams: int = 20,
    console: Console | None = None,
) -> dict[str, Any]:
    console = console or Console()
    rows = {}
    for policy in policies:
        with console.status(f"running the {policy} policy on {executors} executors ..."):
            rows[policy] = run_policy(policy, executors, streams)
    table = Table(
        title=f"{streams} stream tasks (~2 ms) beside {executors * 4} batch tasks "
        f"(~0.25 s) on {executors} executors"
    )
    for column in (
        "policy",
        "stream p50 ms",
        "stream p99 ms",
        "batch makespan s",
        "suspensions",
        "batch results",
    ):
        table.add_column(column, justify="right")
    for policy, r in rows.items():
        table.add_row(
            policy,
            f"{r['stream_ms_p50']:.1f}",
            f"{r['stream_ms_p99']:.1f}",
            f"{r['batch_makespan_s']:.2f}",
            str(r["suspensions"]),
            "exact" if r["batch_correct"] else "[red]WRONG[/]",
        )
    console.print(table)
    return {"policies": rows, "batch_correct": all(r["batch_correct"] for r in rows.values())}

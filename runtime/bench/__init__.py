"""Benchmarks behind `tidal bench NAME [--json]`: each returns a flat dict of figures."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from tidal.workloads.synthetic import total

if TYPE_CHECKING:
    from tidal.runtime.client import Client

__all__ = ["BENCHMARKS", "stream_every", "timed_map"]

# Every benchmark, in the order `tidal bench all` runs them: a module of this package each.
BENCHMARKS = (
    "suspend",
    "preempt",
    "throughput",
    "chunking",
    "steal",
    "policies",
    "unified",
    "scale",
    "chaos",
    "liveness",
    "bigdata",
    "streams",
    "hostile",
    "soak",
)


def timed_map(
    client: Client, fn: Callable[..., Any], items: list[Any], timeout: float, **options: Any
) -> float:
    """Items per second from `client.map(fn, items, **options)` to the last result in hand."""
    start = time.perf_counter()
    client.gather(client.map(fn, items, **options), timeout=timeout)
    return len(items) / (time.perf_counter() - start)


def stream_every(
    client: Client,
    every_s: float,
    *,
    count: int = 0,
    until: Callable[[], bool] | None = None,
    tag: Callable[[], Any] | None = None,
    tags: list[Any] | None = None,
) -> list[float]:
    """Submit a small stream task every `every_s`, each once the last has its result,
    `count` of them or until `until()`; their latencies (ms, submit -> result in hand).
    With `tag`, what it says as each is submitted goes to `tags`."""
    latencies: list[float] = []
    next_at = time.monotonic()
    while (until is None and len(latencies) < count) or (until is not None and not until()):
        next_at += every_s
        if tag is not None and tags is not None:
            tags.append(tag())
        start = time.perf_counter()
        client.submit(total, list(range(10)), priority="stream").result(timeout=60)
        latencies.append((time.perf_counter() - start) * 1000)
        time.sleep(max(0.0, next_at - time.monotonic()))
    return latencies

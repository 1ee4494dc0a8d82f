"""Benchmarks behind `tidal bench NAME [--json]`: each returns a flat dict of figures."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tidal.runtime.client import Client

__all__ = ["BENCHMARKS", "timed_map"]

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
    "hostile",
)


def timed_map(
    client: Client, fn: Callable[..., Any], items: list[Any], timeout: float, **options: Any
) -> float:
    """Items per second from `client.map(fn, items, **options)` to the last result in hand."""
    start = time.perf_counter()
    client.gather(client.map(fn, items, **options), timeout=timeout)
    return len(items) / (time.perf_counter() - start)

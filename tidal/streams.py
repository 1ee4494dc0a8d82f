"""`tidal.streams`: stream jobs between a real source and a real sink.

`StreamDriver` reads a `Source` in micro-batches, runs one stream task per batch, writes each
result to a `Sink` and only then acknowledges the input (runtime/streams.py); `RedisSource`
and `RedisCountSink` are Redis Streams' (runtime/redis_streams.py, which needs `redis`:
`pip install "tidal[streams]"`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tidal.runtime.streams import (
    Batch,
    DriverStats,
    Entry,
    Lag,
    MalformedEntry,
    Sink,
    Source,
    StreamDriver,
    latency_percentiles,
)

if TYPE_CHECKING:
    from tidal.runtime.redis_streams import RedisCountSink, RedisSource

__all__ = [
    "Batch",
    "DriverStats",
    "Entry",
    "Lag",
    "MalformedEntry",
    "RedisCountSink",
    "RedisSource",
    "Sink",
    "Source",
    "StreamDriver",
    "latency_percentiles",
]


def __getattr__(name: str) -> Any:
    # The Redis pieces load on first use: redis-py is an extra (`tidal[streams]`).
    if name in ("RedisSource", "RedisCountSink"):
        from tidal.runtime import redis_streams

        return getattr(redis_streams, name)
    raise AttributeError(f"module 'tidal.streams' has no attribute {name!r}")

"""Stream workload in the spirit of the Yahoo Streaming Benchmark (YSB).

Ad events arrive at a set rate; the driver cuts them into micro-batches every few tens of
milliseconds (`generate_events(spec, t - T, t)` is the batch cut at time t) and submits each
as one stream task, which keeps the views, joins each ad with
its campaign and counts views per campaign per event-time window (YSB's query; its campaign
table lives in Redis, ours is derived from the seed and cached in each executor process).

Events are `[ad_id, event_type, event_time_ms, page]` lists (msgpack carries them as they
are); `page` is the words of the page the ad was shown on, which the unified application
scores with the topic model (workloads/unified.py). Everything is drawn from a seed.
"""

from __future__ import annotations

import functools
import random
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from tidal.runtime.task import task

__all__ = [
    "EVENT_TYPES",
    "AdSpec",
    "campaign_table",
    "count_views",
    "generate_events",
    "window_of",
]

EVENT_TYPES = ("view", "click", "purchase")
EVENT_WEIGHTS = (0.8, 0.15, 0.05)


@dataclass(frozen=True)
class AdSpec:
    """The campaigns, the event rate, and the windows counted over."""

    campaigns: int = 100
    ads_per_campaign: int = 10
    events_per_s: int = 5000
    window_ms: int = 10_000
    page_words: int = 8
    seed: int = 0

    @property
    def ads(self) -> int:
        return self.campaigns * self.ads_per_campaign


@functools.lru_cache(maxsize=8)
def campaign_table(campaigns: int, ads_per_campaign: int, seed: int) -> tuple[int, ...]:
    """`table[ad_id]` is the ad's campaign: a fixed, seeded shuffle (YSB's Redis table)."""
    table = [c for c in range(campaigns) for _ in range(ads_per_campaign)]
    random.Random(seed).shuffle(table)
    return tuple(table)


def window_of(time_ms: int, window_ms: int) -> int:
    """The start of the event-time window an event falls into."""
    return time_ms - time_ms % window_ms


def generate_events(
    spec: AdSpec,
    start_ms: int,
    end_ms: int,
    draw_page: Callable[[random.Random, int], list[int]] | None = None,
) -> list[list[Any]]:
    """The events with event times in [start_ms, end_ms), `spec.events_per_s` evenly spaced;
    each shows a page of `spec.page_words` words drawn by `draw_page` (or none).

    Seeded by the interval, so any micro-batch can be drawn on its own, in any order, and
    is the same every time."""
    rng = random.Random(spec.seed * 1_000_003 + start_ms)
    rate = spec.events_per_s
    first, stop = -(-start_ms * rate // 1000), -(-end_ms * rate // 1000)  # ceilings
    events = []
    for i in range(first, stop):
        kind = rng.choices(EVENT_TYPES, EVENT_WEIGHTS)[0]
        page = draw_page(rng, spec.page_words) if draw_page is not None else []
        events.append([rng.randrange(spec.ads), kind, i * 1000 // rate, page])
    return events


@task(inputs=["events"], priority="stream")
def count_views(events: Iterable[Sequence[Any]], spec: dict[str, int]) -> Counter:
    """YSB's query over one micro-batch: views per `(campaign, window start)`."""
    table = campaign_table(spec["campaigns"], spec["ads_per_campaign"], spec["seed"])
    window_ms = spec["window_ms"]
    return Counter(
        (table[ad_id], window_of(time_ms, window_ms))
        for ad_id, kind, time_ms, _page in events
        if kind == "view"
    )


def pack_event(event: Sequence[Any]) -> dict[bytes, bytes]:
    """An ad event as a Redis stream entry's fields: one msgpack field `e`."""
    import msgpack

    return {b"e": msgpack.packb(list(event))}


def window_counts(result: Counter | dict) -> list[tuple[str, str, int]]:
    """`count_views`'s result as Redis hash increments: (hash per window, campaign, views),
    for a `RedisCountSink` (runtime/redis_streams.py)."""
    return [
        (f"views:{window}", str(campaign), count) for (campaign, window), count in result.items()
    ]


def check_event(record: Any) -> list[Any]:
    """A decoded event, checked: `[ad_id, event_type, event_time_ms, page]` (ValueError)."""
    if not (
        isinstance(record, list)
        and len(record) == 4
        and type(record[0]) is int
        and record[1] in EVENT_TYPES
        and type(record[2]) is int
        and isinstance(record[3], list)
    ):
        raise ValueError(f"an ad event is [ad_id, type, time_ms, page], got {str(record)[:60]}")
    return record


def decode_event(entry: Any) -> list[Any]:
    """The ad event a Redis stream entry holds (`pack_event`); MalformedEntry saying why if
    it holds none (runtime/streams.py)."""
    from tidal.runtime.redis_streams import decode_msgpack_field
    from tidal.runtime.streams import MalformedEntry

    try:
        return check_event(decode_msgpack_field(entry))
    except ValueError as exc:
        raise MalformedEntry(str(exc)) from None

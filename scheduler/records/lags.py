"""Stream sources' lag, as their drivers report it (`stream_lag`, runtime/streams.py).

A driver reports every half second or so how many entries its source has not acknowledged
and how old the oldest is. The scheduler keeps the last report per (client, source) and
forgets it after LAG_FRESH_NS without another (the driver stopped) or when its client
leaves. Policies read the sum (`ClusterView.stream_lag()`); `status()["streams"]` lists them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from tidal.scheduler import events as ev

__all__ = ["LAG_FRESH_NS", "LagBook", "StreamLag"]

# A report older than this is a driver that stopped, not a lag.
LAG_FRESH_NS = 5_000_000_000
# Bounds on what a report may say (a peer's word): beyond them it is capped.
MAX_PENDING = 10**12
MAX_AGE_MS = 10**12
MAX_SOURCE_CHARS = 200
# At most this many sources are kept per client (a peer inventing names costs bounded memory).
MAX_SOURCES_PER_CLIENT = 64


@dataclass(frozen=True, slots=True)
class StreamLag:
    """Entries not yet acknowledged, summed over the sources, and the oldest one's age in
    seconds (None: unknown, or no source reported lately)."""

    pending: int = 0
    oldest_age_s: float | None = None
    sources: int = 0


class LagBook:
    """The lag reports: a part of `Records` (scheduler/records/books.py), kept in its
    `lags`: (client id, source) -> (pending, oldest age in s or None, when reported)."""

    def lag_reported(self, client_id: str, source: str, pending: int, age_ms: float) -> None:
        """A driver of `client_id` reported its source's lag (age_ms < 0: unknown)."""
        lags = self.lags
        pending = min(max(0, pending), MAX_PENDING)
        # Peer input: NaN, infinities and negative ages are "unknown", absurd ones capped.
        known = math.isfinite(age_ms) and age_ms >= 0
        age = min(age_ms, MAX_AGE_MS) / 1000 if known else None
        source = source[:MAX_SOURCE_CHARS]
        mine = [key for key in lags if key[0] == client_id]
        if (client_id, source) not in lags and len(mine) >= MAX_SOURCES_PER_CLIENT:
            del lags[min(mine, key=lambda key: lags[key][2])]  # its oldest report goes
        lags[(client_id, source)] = (pending, age, self.now)
        self.note(ev.LagReported(client_id, source, pending, age))

    def _fresh_lags(self) -> list[tuple[tuple[str, str], tuple[int, float | None, int]]]:
        lags = self.lags
        for key in [k for k, (_, _, at) in lags.items() if self.now - at > LAG_FRESH_NS]:
            del lags[key]
        return list(lags.items())

    def forget_lags(self, client_id: str) -> None:
        """Its client left: its sources' reports go."""
        for key in [key for key in self.lags if key[0] == client_id]:
            del self.lags[key]

    def stream_lag(self) -> StreamLag:
        fresh = self._fresh_lags()
        if not fresh:
            return StreamLag()
        ages = [age for _, (_, age, _) in fresh if age is not None]
        return StreamLag(sum(p for _, (p, _, _) in fresh), max(ages, default=None), len(fresh))

    def stream_lags(self) -> list[dict[str, Any]]:
        return [
            {"client": client, "source": source, "pending": pending, "oldest_age_s": age}
            for (client, source), (pending, age, _) in self._fresh_lags()
        ]

"""Summary figures of measurements (percentiles), for the benchmarks, the simulator and the
demo alike; it imports nothing of Tidal, so any of them may use it."""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["percentile"]


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) of `values`, linearly interpolated; NaN if empty."""
    # Discussion: not statistics.quantiles(n=100, method="inclusive"): it interpolates alike, but
    # raises on no values and, before Python 3.13, on one (one stream task has one latency).
    if not values:
        return math.nan
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)

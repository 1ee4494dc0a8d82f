"""`/metrics`: the scheduler's status snapshot in Prometheus's text format.

Every figure comes from one snapshot (`SchedulerCore.status()` and the shell's bad-input
counts, published at most once a second), so `/metrics` says what `tidal status` said as of
that snapshot, whose age is `tidal_status_age_seconds`. The counters are the snapshot's
`counters` (scheduler/tally.py), `steals` and `bad_input`; the gauges its task, executor and
job counts. A custom collector builds them at each scrape; nothing is kept in
prometheus-client's global registry.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["render_metrics"]

# Counters of `status()["counters"]`: (metric name without _total, its key, help).
_COUNTERS = (
    ("tidal_suspensions", "suspensions", "Suspend commands sent to executors."),
    ("tidal_resumptions", "resumptions", "Resume commands sent to executors."),
    ("tidal_kills", "kills", "Kill commands sent to executors."),
    ("tidal_executor_losses", "executor_losses", "Executors declared lost."),
    ("tidal_policy_switches", "policy_switches", "Changes of the scheduling policy."),
)
# Counters of `status()["bad_input"]`.
_BAD_INPUT = (
    ("tidal_frames_received", "frames_in", "Frames received, bad and ignored ones included."),
    ("tidal_bad_frames", "bad_frames", "Frames (or batch items) dropped as bad input."),
    ("tidal_ignored_frames", "ignored_frames", "Frames from peers in a cool-down, not read."),
    ("tidal_peer_disconnects", "disconnects", "Peers disconnected for bad input."),
    ("tidal_handler_errors", "handler_errors", "Well-formed messages whose handler raised."),
)


class _SnapshotCollector:
    def __init__(self, status: dict[str, Any] | None) -> None:
        self.status = status

    def collect(self) -> Iterator[Metric]:
        status = self.status
        up = GaugeMetricFamily("tidal_scheduler_up", "1 once the scheduler has a status.")
        up.add_metric([], 0 if status is None else 1)
        yield up
        if status is None:
            return
        if "now" in status:  # the scheduler's monotonic clock, which is this process's
            yield GaugeMetricFamily(
                "tidal_status_age_seconds",
                "How old the snapshot these figures come from is.",
                value=max(0.0, time.monotonic() - status["now"]),
            )
        yield from _tasks_and_jobs(status)
        yield from _executors(status)
        counters = status.get("counters", {})
        for name, key, text in _COUNTERS:
            yield CounterMetricFamily(name, text, value=counters.get(key, 0))
        yield CounterMetricFamily(
            "tidal_steals", "Steals of not-started subtasks.", value=status.get("steals", 0)
        )
        refused = CounterMetricFamily(
            "tidal_refused_decisions",
            "Policy decisions the core refused, per kind of reason.",
            labels=["reason"],
        )
        for reason, count in sorted(counters.get("refused", {}).items()):
            refused.add_metric([reason], count)
        yield refused
        bad = status.get("bad_input", {})
        for name, key, text in _BAD_INPUT:
            yield CounterMetricFamily(name, text, value=bad.get(key, 0))
        latency = counters.get("stream_latency")
        if latency:
            buckets = [
                (f"{bound:g}", count)
                for bound, count in zip(latency["buckets_s"], latency["cumulative"], strict=True)
            ]
            buckets.append(("+Inf", latency["total"]))
            yield HistogramMetricFamily(
                "tidal_stream_latency_seconds",
                "Stream tasks, submit to end as the scheduler saw them.",
                buckets=buckets,
                sum_value=latency["sum_s"],
            )


def _tasks_and_jobs(status: dict[str, Any]) -> Iterator[Metric]:
    tasks = GaugeMetricFamily(
        "tidal_tasks", "Tasks by priority and state.", labels=["priority", "state"]
    )
    for priority, states in sorted(status.get("tasks", {}).items()):
        for state, count in states.items():
            tasks.add_metric([priority, state], count)
    yield tasks
    jobs = GaugeMetricFamily("tidal_jobs", "Jobs listed by status().", labels=["priority"])
    by_priority: dict[str, int] = {}
    for job in status.get("jobs", []):
        by_priority[job["priority"]] = by_priority.get(job["priority"], 0) + 1
    for priority, count in sorted(by_priority.items()):
        jobs.add_metric([priority], count)
    yield jobs


def _executors(status: dict[str, Any]) -> Iterator[Metric]:
    states = GaugeMetricFamily("tidal_executors", "Executors by state.", labels=["state"])
    counts = {"alive": 0, "busy": 0, "lost": 0}
    queued = GaugeMetricFamily(
        "tidal_executor_queued_tasks", "Tasks queued behind the slot.", labels=["executor"]
    )
    suspended = GaugeMetricFamily(
        "tidal_executor_suspended_tasks", "Tasks suspended there.", labels=["executor"]
    )
    rss = GaugeMetricFamily(
        "tidal_executor_rss_bytes", "Resident memory, last heartbeat.", labels=["executor"]
    )
    for e in status.get("executors", []):
        if e["state"] != "alive":
            counts["lost"] += 1
            continue
        counts["busy" if e["busy"] else "alive"] += 1
        queued.add_metric([e["executor_id"]], e["queued"])
        suspended.add_metric([e["executor_id"]], len(e["suspended"]))
        if e.get("rss_bytes") is not None:
            rss.add_metric([e["executor_id"]], e["rss_bytes"])
    for state, count in counts.items():
        states.add_metric([state], count)
    yield from (states, queued, suspended, rss)


def render_metrics(status: dict[str, Any] | None) -> tuple[bytes, str]:
    """The exposition of `status` (None: the scheduler has published none yet), and its
    content type."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_SnapshotCollector(status))
    return generate_latest(registry), CONTENT_TYPE_LATEST

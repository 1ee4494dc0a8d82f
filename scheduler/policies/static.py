"""STATIC: a fixed share of the executors for each priority class.

The first `ceil(stream_share * n)` executors (in the order they joined) run only stream
tasks, the others only batch tasks; with two or more executors each class gets at least one.
Nothing is shared and nothing preempted: stream tasks never wait for batch work, but the
reserved executors idle when no stream work comes, which is the utilisation this policy
gives up.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

from tidal.scheduler.decisions import Decision, Launch
from tidal.scheduler.policies.base import AssignOnChange
from tidal.scheduler.views import ClusterView, ExecutorView


class StaticPolicy(AssignOnChange):
    """Reserve a fixed share of executors for stream tasks."""

    name = "static"

    def __init__(self, stream_share: float = 0.25) -> None:
        if not 0.0 <= stream_share <= 1.0:
            raise ValueError(f"stream_share must be between 0 and 1, not {stream_share}")
        self.stream_share = stream_share

    def partition(self, executors: list[ExecutorView]) -> dict[str, list[ExecutorView]]:
        """Which executors serve which class."""
        n = len(executors)
        reserved = math.ceil(self.stream_share * n)
        if n >= 2:
            reserved = min(max(reserved, 1 if self.stream_share > 0 else 0), n - 1)
        return {"stream": executors[:reserved], "batch": executors[reserved:]}

    def assign(self, view: ClusterView) -> Iterator[Decision]:
        for priority, executors in self.partition(view.executors()).items():
            free = {e.executor_id: e.free_capacity for e in executors}
            if priority == "stream":  # a stream task needs the slot itself
                free = {e.executor_id: int(e.slot_free) for e in executors}
            pending = view.pending(priority)
            while free and max(free.values()) > 0:
                task = next(pending, None)
                if task is None:
                    break
                executor_id = max(free, key=free.get)
                free[executor_id] -= 1
                yield Launch(task.task_id, executor_id)

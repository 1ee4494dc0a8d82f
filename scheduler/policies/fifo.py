"""FIFO: tasks start in arrival order, whatever their class, and run to completion."""

from __future__ import annotations

from collections.abc import Iterator

from tidal.scheduler.decisions import Decision, Launch
from tidal.scheduler.policies.base import AssignOnChange
from tidal.scheduler.views import ClusterView


class FifoPolicy(AssignOnChange):
    """Arrival order across all jobs; never suspends, never kills."""

    name = "fifo"

    def assign(self, view: ClusterView) -> Iterator[Decision]:
        """Give every unit of free capacity the oldest pending task."""
        free = {e.executor_id: e.free_capacity for e in view.executors()}
        if not any(free.values()):
            return
        pending = view.pending()
        while any(free.values()):
            # The executor with the most room first, so work spreads evenly.
            executor_id = max(free, key=free.get)
            task = next(pending, None)
            if task is None:
                return
            free[executor_id] -= 1
            yield Launch(task.task_id, executor_id)

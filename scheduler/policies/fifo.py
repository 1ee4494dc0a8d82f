"""FIFO: tasks start in arrival order, whatever their class, and run to completion."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

from scheduler.decisions import Decision, Launch
from scheduler.policies.base import Policy
from scheduler.state import ClusterView, ExecutorView, TaskView


class FifoPolicy(Policy):
    """Arrival order across all jobs; never suspends, never kills."""

    name = "fifo"

    def tasks_submitted(self, view: ClusterView, tasks: Sequence[TaskView]) -> Iterable[Decision]:
        return self._fill(view)

    def slot_freed(self, view: ClusterView, executor: ExecutorView) -> Iterable[Decision]:
        return self._fill(view)

    def tick(self, view: ClusterView) -> Iterable[Decision]:
        return self._fill(view)

    def _fill(self, view: ClusterView) -> Iterator[Decision]:
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

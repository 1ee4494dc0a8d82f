"""The Policy base class: hooks that look at the cluster and return decisions.

Every hook receives a read-only `ClusterView` and returns an iterable of decisions
(`Launch`, `Suspend`, `Resume`, `Kill`); the defaults decide nothing. The core calls the hooks
at the moments named below, validates what they return, applies the valid decisions and logs
the refused ones with the reason. A policy that raises is reported and replaced by the default
policy; the scheduler keeps running.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from tidal.scheduler.decisions import Decision
from tidal.scheduler.views import ClusterView, ExecutorView, TaskView

__all__ = ["AssignOnChange", "Policy"]


class Policy:
    """Base class of scheduling policies. Subclass it and override the hooks you need."""

    #: The name `policy="..."` and `tidal scheduler --policy` know this policy by.
    name = "base"
    #: Whether it takes slots from running batch tasks for stream tasks. The core uses it in
    #: one race only: a stream task it launched into a slot that a prefetched batch task had
    #: taken meanwhile is helped by suspending that task only if this is True.
    preempts = False
    #: Whether clients may send stream tasks straight to executors' lanes under it
    #: (runtime/lanes.py): such a task takes a free slot, or one whose batch task is
    #: suspended for it within the cap, as LB would place it, without asking the policy.
    #: Read from the policy's own class only: a subclass says it again to keep it.
    lanes = False

    def tasks_submitted(self, view: ClusterView, tasks: Sequence[TaskView]) -> Iterable[Decision]:
        """New tasks are pending (a job was submitted, or tasks were requeued)."""
        return ()

    def slot_freed(self, view: ClusterView, executor: ExecutorView) -> Iterable[Decision]:
        """An executor's slot became free (a task ended or was suspended, or it just joined)."""
        return ()

    def metrics_updated(self, view: ClusterView, executor: ExecutorView) -> Iterable[Decision]:
        """An executor's heartbeat brought new metrics."""
        return ()

    def tick(self, view: ClusterView) -> Iterable[Decision]:
        """Periodic rebalance (every heartbeat interval)."""
        return ()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} policy {self.name!r}>"


class AssignOnChange(Policy):
    """A policy that makes one decision however the cluster changed: override `assign`.

    Submissions, freed slots and the periodic tick all lead to `assign(view)`; metrics
    updates do not (override `metrics_updated` to react to them).
    """

    def assign(self, view: ClusterView) -> Iterable[Decision]:
        """Decide what should run now, given the whole view."""
        return ()

    def tasks_submitted(self, view: ClusterView, tasks: Sequence[TaskView]) -> Iterable[Decision]:
        return self.assign(view)

    def slot_freed(self, view: ClusterView, executor: ExecutorView) -> Iterable[Decision]:
        return self.assign(view)

    def tick(self, view: ClusterView) -> Iterable[Decision]:
        return self.assign(view)

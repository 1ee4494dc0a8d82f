"""KILL: LB's placement, but batch tasks are killed instead of suspended.

The baseline that loses work: a killed task restarts from scratch later, and the running
time it had is counted as work lost (`work_lost_ns` in its statistics). To keep a batch task
from being killed forever, a task is killed at most `max_suspensions` times, then runs to
completion: the core enforces that kill cap as it does the suspension cap, and this policy
does not ask past it.
"""

from __future__ import annotations

from tidal.scheduler.decisions import Decision, Kill
from tidal.scheduler.policies.lb import LbPolicy
from tidal.scheduler.views import ExecutorView, TaskView


class KillPolicy(LbPolicy):
    """Preempt batch tasks for stream tasks by killing them (they restart later)."""

    name = "kill"

    def _preemptible(self, task: TaskView) -> bool:
        return task.kills < task.max_suspensions

    def _preempt(self, task: TaskView) -> Decision:
        return Kill(task.task_id, requeue=True)

    def _cannot_park(self, executor: ExecutorView) -> bool:
        return False  # a killed task parks nothing: its memory is freed

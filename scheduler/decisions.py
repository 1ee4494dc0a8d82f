"""What a policy may decide. The core validates each decision and carries out the valid ones.

A policy never acts: it returns these, and `SchedulerCore` checks them against the cluster
(a launch needs free capacity, a suspension must respect the cap, a resumption must happen
where the task's state lives) before sending anything.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Decision", "Kill", "Launch", "Resume", "Steal", "Suspend"]


@dataclass(frozen=True, slots=True)
class Launch:
    """Start pending task `task_id` on executor `executor_id`."""

    task_id: str
    executor_id: str


@dataclass(frozen=True, slots=True)
class Suspend:
    """Park running task `task_id` at its next record boundary, freeing its slot."""

    task_id: str


@dataclass(frozen=True, slots=True)
class Resume:
    """Continue suspended task `task_id` on the executor that holds it."""

    task_id: str


@dataclass(frozen=True, slots=True)
class Kill:
    """Stop task `task_id`; with `requeue`, run it again from scratch later (work is lost)."""

    task_id: str
    requeue: bool = True


@dataclass(frozen=True, slots=True)
class Steal:
    """Move up to `count` not-started subtasks of chunk `task_id` to idle `executor_id`."""

    task_id: str
    executor_id: str
    count: int


Decision = Launch | Suspend | Resume | Kill | Steal

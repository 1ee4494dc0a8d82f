"""FAIR: a weighted share of the slots for every job, round robin, no preemption.

Like Spark's FAIR scheduler: whenever capacity frees up, the job furthest below its share
(running tasks / weight, ties to the older job) gets it. Jobs of each priority class carry
that class's weight. A running task is never interrupted: a stream task still waits for a
slot to free up, which is what FAIR cannot fix and suspension can.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

from tidal.scheduler.decisions import Decision, Launch
from tidal.scheduler.policies.base import AssignOnChange
from tidal.scheduler.views import ClusterView, TaskView


class FairPolicy(AssignOnChange):
    """Share slots across jobs by weight; never suspends, never kills."""

    name = "fair"

    def __init__(self, weights: dict[str, float] | None = None) -> None:
        self.weights = {"stream": 1.0, "batch": 1.0, **(weights or {})}

    def assign(self, view: ClusterView) -> Iterator[Decision]:
        free = {e.executor_id: e.free_capacity for e in view.executors()}
        if not any(free.values()):
            return
        # Each job's pending tasks in order, and how many of its tasks run now.
        queues: dict[str, list[TaskView]] = {}
        for task in view.pending():
            queues.setdefault(task.job_id, []).append(task)
        if not queues:
            return
        running = Counter(t.job_id for t in view.running())
        position = dict.fromkeys(queues, 0)
        while any(n > 0 for n in free.values()) and queues:
            # Furthest below its share first; the older job (lower seq) on ties.
            job_id = min(
                queues,
                key=lambda j: (
                    running[j] / self.weights.get(queues[j][0].priority, 1.0),
                    queues[j][0].seq,
                ),
            )
            task = queues[job_id][position[job_id]]
            position[job_id] += 1
            if position[job_id] == len(queues[job_id]):
                del queues[job_id]
            running[job_id] += 1
            executor_id = max(free, key=free.get)
            free[executor_id] -= 1
            yield Launch(task.task_id, executor_id)

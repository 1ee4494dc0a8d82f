"""LMA: locality- and memory-aware scheduling, after Neptune's LMA policy.

A task may name preferred nodes or executors (`preferred=[...]` at submission). LMA
honours them with delay scheduling: a batch task with preferences waits up to `delay_s`
for a slot on a preferred node before it takes any slot (Mesos' delay scheduling, at
millisecond scale). A stream task does not wait: it takes a free preferred slot, else
suspends a batch task on a preferred node, else falls back to LB's choice anywhere.
Executors are ordered by memory pressure over their heartbeat window (least first), and
executors above the pressure threshold get new batch work and new suspended tasks last.

Discussion: the delay is checked whenever the policy is consulted (every submission, freed
slot, heartbeat and the periodic tick); on a busy cluster that is every few milliseconds,
on an idle one the tick bounds it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

from tidal.scheduler.decisions import Decision, Launch
from tidal.scheduler.policies.lb import MEMORY_PRESSURE_THRESHOLD, LbPolicy
from tidal.scheduler.views import ClusterView, ExecutorView, TaskView

# Pending batch tasks looked at per free slot when searching for a local one.
SCAN_LIMIT = 256


def prefers(task: TaskView, executor: ExecutorView) -> bool:
    """Whether `executor` is one the task prefers (a task without preferences likes any)."""
    preferred = task.preferred
    return not preferred or executor.node in preferred or executor.executor_id in preferred


class LmaPolicy(LbPolicy):
    """Locality with delay scheduling, memory-pressure-aware placement and preemption."""

    name = "lma"

    def __init__(
        self, delay_s: float = 0.005, memory_pressure_threshold: float = MEMORY_PRESSURE_THRESHOLD
    ) -> None:
        super().__init__(memory_pressure_threshold)
        self.delay_ns = int(delay_s * 1e9)

    def assign(self, view: ClusterView) -> Iterator[Decision]:
        executors = sorted(view.executors(), key=lambda e: (self._pressured(e), e.memory_pressure))
        free_slots = [e for e in executors if e.slot_free]
        # 1. Stream tasks: a free preferred slot, else preempt on a preferred node, else any.
        running_per_node = Counter(
            e.node for e in executors if e.slot_task is not None and e.slot_task.priority == "batch"
        )
        victims = [
            e
            for e in executors
            if e.slot_task is not None
            and e.slot_task.priority == "batch"
            and self._preemptible(e.slot_task)
        ]
        for task in view.pending("stream"):
            local_free = [e for e in free_slots if prefers(task, e)]
            if local_free:
                chosen = local_free[0]
                free_slots.remove(chosen)
                yield Launch(task.task_id, chosen.executor_id)
                continue
            local_victims = [e for e in victims if prefers(task, e)]
            if local_victims or not free_slots:
                pool = local_victims or victims
                if not pool:
                    continue  # nothing to take: it waits for a slot
                victim = min(pool, key=lambda e: self._victim_rank(e, task, running_per_node))
                victims.remove(victim)
                running_per_node[victim.node] -= 1
                yield self._preempt(victim.slot_task)
                yield Launch(task.task_id, victim.executor_id)
            else:
                chosen = free_slots.pop(0)
                yield Launch(task.task_id, chosen.executor_id)
        # 2. Free slots resume what is suspended there, before any new batch work.
        resumed = yield from self._resume_on(free_slots)
        # 3. Batch tasks, with delay scheduling for those that prefer other nodes.
        if view.pending_count("stream"):
            return
        placed: set[str] = set()
        for executor in executors:
            room = executor.free_capacity - (executor.executor_id in resumed)
            while room > 0:
                task = self._pick_batch(view, executor, placed)
                if task is None:
                    break
                placed.add(task.task_id)
                room -= 1
                yield Launch(task.task_id, executor.executor_id)

    def _pick_batch(
        self, view: ClusterView, executor: ExecutorView, placed: set[str]
    ) -> TaskView | None:
        """A local task first; else one with no preference or whose delay ran out."""
        fallback = None
        for i, task in enumerate(view.pending("batch")):
            if i >= SCAN_LIMIT:
                break
            if task.task_id in placed:
                continue
            if task.preferred and prefers(task, executor):
                return task
            if fallback is None and (
                not task.preferred or view.now - task.submitted_at >= self.delay_ns
            ):
                fallback = task
        return fallback

    def _victim_rank(
        self, executor: ExecutorView, stream_task: TaskView, running_per_node: Counter[str]
    ) -> tuple:
        return (
            not prefers(stream_task, executor),
            *super()._victim_rank(executor, stream_task, running_per_node),
        )

    def _pressured(self, executor: ExecutorView) -> bool:
        return executor.memory_pressure >= self.memory_pressure_threshold

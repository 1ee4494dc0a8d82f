"""LB, Neptune's load-balancing policy and Tidal's default.

Stream tasks bypass batch tasks. When stream tasks are pending and no slot is free, LB
suspends running batch tasks to make room, choosing victims so that the number of running
batch tasks per node stays balanced (it takes from the node running the most) and, among
equally loaded nodes, steering away from executors under memory pressure (a suspended task
keeps its memory there). Before balance, it avoids executors with a memory limit that cannot
afford to park their task (see `_cannot_park`). A free slot
goes to a pending stream task first, then to a task suspended on that executor (its state is
there, and resumption comes before new batch work), then to the next batch task. While a
stream source lags (its oldest unacknowledged entry is `lag_reserve_s` old or more, as its
driver reports: runtime/streams.py), LB keeps one executor free of new batch work, so that
the next micro-batch finds a slot even when every batch task has spent its suspensions.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Generator, Iterator

from tidal.scheduler.decisions import Decision, Launch, Resume, Suspend
from tidal.scheduler.policies.base import AssignOnChange
from tidal.scheduler.views import ClusterView, ExecutorView, TaskView, resume_order

# Discussion: above this host memory use an executor is "under pressure": suspending there
# would pile a parked task's memory onto a host already short of it. 85% leaves headroom for
# the stream task that takes the slot. Policies only prefer other executors; when every
# candidate is under pressure LB still suspends, because the stream task must run.
MEMORY_PRESSURE_THRESHOLD = 0.85
# A stream source whose oldest unacknowledged entry is this old is behind: LB reserves a slot.
LAG_RESERVE_S = 1.0
# Pending batch tasks looked at, beyond the free capacity, for ones whose inputs are kept on
# a free executor (scheduler/records/lineage.py).
LOCALITY_SCAN = 64


class LbPolicy(AssignOnChange):
    """Suspend batch tasks for stream tasks, balancing running tasks per node."""

    name = "lb"
    preempts = True
    lanes = True  # a lane's executor suspends for a stream task as LB would

    def __init__(
        self,
        memory_pressure_threshold: float = MEMORY_PRESSURE_THRESHOLD,
        lag_reserve_s: float = LAG_RESERVE_S,
    ) -> None:
        self.memory_pressure_threshold = memory_pressure_threshold
        self.lag_reserve_s = lag_reserve_s

    def assign(self, view: ClusterView) -> Iterator[Decision]:
        # Discussion: at 1,000 executors, looking at every executor through its view costs
        # about a millisecond, and this runs whenever a slot frees. The view's
        # `free_capacities`, `free_slots` and `any_suspended` give the same answers from the
        # core's records directly; only a stream task that finds no free slot looks at every
        # executor (to choose its victim).
        if not view.pending_count("stream") and not view.any_suspended():
            # The common case in a batch burst: nothing to preempt or resume.
            yield from self._fill_batch(view, resumed=set())
            return
        streams = view.pending("stream")
        # 1. Stream tasks take free slots.
        free_slots = view.free_slots()
        for executor in sorted(free_slots, key=lambda e: e.memory_pressure):
            task = next(streams, None)
            if task is None:
                break
            free_slots.remove(executor)
            yield Launch(task.task_id, executor.executor_id)
        else:
            # 2. Still stream tasks pending: suspend batch tasks for them.
            yield from self._preempt_for(view, streams)
        # 3. Free slots resume what is suspended there, before any new batch work.
        resumed = yield from self._resume_on(free_slots)
        # 4. Batch tasks take what capacity is left (slots and prefetch queues).
        yield from self._fill_batch(view, resumed=resumed)

    def _resume_on(self, free_slots: list[ExecutorView]) -> Generator[Decision, None, set[str]]:
        """Resume the first task suspended on each free slot; return those executors' ids."""
        resumed = set()
        for executor in free_slots:
            suspended = executor.suspended
            if suspended:
                resumed.add(executor.executor_id)
                yield Resume(min(suspended, key=resume_order).task_id)
        return resumed

    def _preempt_for(self, view: ClusterView, streams: Iterator[TaskView]) -> Iterator[Decision]:
        first = next(streams, None)
        if first is None:
            return  # the free slots took every stream task
        # One pass over the executors: the batch tasks running per node, and the victims.
        victims = []
        running_per_node: Counter[str] = Counter()
        for executor in view.executors():
            task = executor.slot_task
            if task is not None and task.priority == "batch":
                running_per_node[executor.node] += 1
                if self._preemptible(task):
                    victims.append(executor)
        if not victims:
            return
        for task in itertools.chain([first], streams):
            if not victims:
                return
            # Most loaded node first, then the executor under the least memory pressure.
            victim = min(victims, key=lambda e: self._victim_rank(e, task, running_per_node))
            victims.remove(victim)
            running_per_node[victim.node] -= 1
            yield self._preempt(victim.slot_task)
            yield Launch(task.task_id, victim.executor_id)

    def _preemptible(self, task: TaskView) -> bool:
        """Whether LB may take this running batch task's slot (the cap, record boundaries)."""
        return task.suspendable

    def _preempt(self, task: TaskView) -> Decision:
        """How LB frees a slot: suspend the task, which resumes later with its progress."""
        return Suspend(task.task_id)

    def _victim_rank(
        self, executor: ExecutorView, stream_task: TaskView, running_per_node: Counter[str]
    ) -> tuple:
        """Lower is a better victim: on an executor that can afford to park it (see
        `_cannot_park`), then on the node running the most batch tasks (balance, as in
        Neptune's LB), then not under memory pressure, then the task suspended least so far,
        then the least pressure.

        Discussion: without the suspension count, executors on one host tie on everything
        but a memory reading, and one of them took nearly every stream task in `tidal
        demo`: its batch tasks spent their suspension budget first, and that executor
        finished each sweep last. Spreading suspensions evens both out."""
        pressure = executor.memory_pressure
        return (
            self._cannot_park(executor),
            -running_per_node[executor.node],
            pressure >= self.memory_pressure_threshold,
            executor.slot_task.suspensions,
            pressure,
            executor.executor_id,
        )

    def _cannot_park(self, executor: ExecutorView) -> bool:
        """Whether suspending the executor's running task would leave it short of memory:
        it has a memory limit, and less headroom under it than the task holds.

        Discussion: a parked task keeps its memory where it is while the slot runs another
        task, which needs memory of its own; where the headroom left is smaller than what
        the parked task holds, that next task is the likeliest to take the executor over
        its limit, and the executor then fails a task (runtime/memory.py). Such executors
        are chosen last, before balance: a failed task costs more than an uneven node.
        They are still chosen when every candidate is short (the stream task must run),
        and the estimate is as old as the executor's last heartbeat."""
        headroom = executor.memory_headroom
        return headroom is not None and headroom < executor.slot_task.memory_bytes

    def _fill_batch(self, view: ClusterView, resumed: set[str]) -> Iterator[Decision]:
        if view.pending_count("stream"):
            # Stream work is waiting for a slot: do not hand batch work any.
            return
        free = view.free_capacities()  # only executors with room, in the order they joined
        for executor_id in resumed & free.keys():
            free[executor_id] -= 1
        if not any(n > 0 for n in free.values()):
            return
        self._reserve_for_lag(view, free)
        batch = view.pending("batch")
        first = next(batch, None)
        if first is None:
            return
        if first.local_to is not None:  # tasks with inputs kept on executors
            yield from self._fill_local(itertools.chain([first], batch), free)
            return
        batch = itertools.chain([first], batch)
        while True:
            executor_id = max(free, key=free.get)
            if free[executor_id] <= 0:
                return
            task = next(batch, None)
            if task is None:
                return
            free[executor_id] -= 1
            yield Launch(task.task_id, executor_id)

    def _reserve_for_lag(self, view: ClusterView, free: dict[str, int]) -> None:
        """While a stream source lags, keep one idle executor out of `free` (if there is
        more than one executor): stream work that comes must not wait behind batch tasks
        that can no longer be suspended."""
        lag = view.stream_lag()
        if lag.oldest_age_s is None or lag.oldest_age_s < self.lag_reserve_s:
            return
        executors = view.executors()
        if len(executors) < 2:
            return
        idle = [e.executor_id for e in executors if e.slot_free and e.executor_id in free]
        if idle:
            free[idle[-1]] = 0

    def _fill_local(self, batch: Iterator[TaskView], free: dict[str, int]) -> Iterator[Decision]:
        """Fill free capacity with tasks whose inputs are kept there first (among the next
        LOCALITY_SCAN pending), then with the rest in order: LB never leaves a slot idle
        to wait for a local one (LMA does, a moment)."""
        window = list(itertools.islice(batch, sum(free.values()) + LOCALITY_SCAN))
        rest = []
        for task in window:
            here = task.local_to
            if here is not None and free.get(here, 0) > 0:
                free[here] -= 1
                yield Launch(task.task_id, here)
            else:
                rest.append(task)
        for task in rest:
            executor_id = max(free, key=free.get)
            if free[executor_id] <= 0:
                return
            free[executor_id] -= 1
            yield Launch(task.task_id, executor_id)

"""The scheduler's records of jobs, tasks and executors, the read-only views policies get,
the status snapshot built from them, and the check of a submitted job against them.

Records are mutated only by the core (scheduler/core.py). Policies see them through views:
thin read-only wrappers that copy nothing, so a policy can look at a cluster with a million
pending tasks without the core building a snapshot for every decision.
"""

from __future__ import annotations

import enum
import heapq
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from operator import attrgetter
from typing import TYPE_CHECKING, Any

from tidal.runtime import protocol as p

if TYPE_CHECKING:
    from tidal.scheduler.core import SchedulerCore

__all__ = [
    "ClusterView",
    "ExecutorView",
    "TaskState",
    "TaskView",
    "check_submission",
    "resume_order",
    "stat_count",
    "status_snapshot",
]

PRIORITIES = ("stream", "batch")
# Discussion: heartbeats are ~0.5 s apart, so 20 of them are the last ~10 s: long enough to
# smooth a spike, short enough to notice pressure building while a stream burst lasts.
METRICS_WINDOW = 20


class TaskState(enum.Enum):
    PENDING = "pending"  # queued at the scheduler
    LAUNCHED = "launched"  # sent to an executor, not started yet
    RUNNING = "running"
    SUSPENDING = "suspending"  # suspend sent, not confirmed
    SUSPENDED = "suspended"
    RESUMING = "resuming"  # resume sent, not confirmed
    KILLING = "killing"  # kill sent, not confirmed
    DONE = "done"
    # After a restart: known from the journal, not ended, and not yet reported by any
    # executor; queued when the reclaim grace period ends (scheduler/core.py).
    UNCLAIMED = "unclaimed"


# States in which a task occupies its executor's slot (from the scheduler's point of view).
SLOT_STATES = (TaskState.LAUNCHED, TaskState.RUNNING, TaskState.RESUMING)


@dataclass(eq=False, slots=True)
class Job:
    job_id: str
    client_id: str
    priority: str
    order: int
    max_suspensions: int
    fn: str
    main_path: str | None
    submitted_ns: int
    total: int
    finished: int = 0
    failed: int = 0
    cancelled: int = 0
    chunksize: int | str | None = None  # None: one task per launch; an int or "auto": chunks
    subtask_ns: float | None = None  # smoothed running time of its chunked tasks
    chunks: int = 0

    def count_end(self, outcome: str) -> None:
        """Count one of its tasks as ended: "finished", "failed", or else cancelled."""
        if outcome == "finished":
            self.finished += 1
        elif outcome == "failed":
            self.failed += 1
        else:
            self.cancelled += 1


@dataclass(eq=False, slots=True)
class Task:
    task_id: str
    job: Job
    # The packed [args, kwargs] as the client sent it: opaque here, forwarded in the launch
    # and dropped when the task is done. A chunk's own is empty.
    payload: bytes
    seq: int  # arrival order; requeued tasks get a smaller one
    submitted_at: int  # scheduler clock, ns
    state: TaskState = TaskState.PENDING
    executor_id: str | None = None
    attempt: int = 0
    suspensions: int = 0
    records: int = 0
    started_at_ns: int | None = None  # the executor's clock at the first start
    finished_at_ns: int | None = None  # the executor's clock when it ended
    preferred: tuple[str, ...] = ()  # node labels or executor ids it would rather run on
    first_started_at: int | None = None  # the scheduler's clock when the first start was reported
    running_ns: int = 0
    suspended_ns: int = 0
    work_lost_ns: int = 0  # running time thrown away by kills and lost executors
    running_since: int | None = None  # scheduler clock at the last start or resume report
    running_estimate_ns: int = 0  # the scheduler's own estimate of time run this attempt
    unsuspendable: bool = False  # an executor reported it reaches no record boundary
    requeue_on_kill: bool = False  # killed to make room (KILL policy, withdrawn launch)
    cancel_requested: bool = False
    chunk: Task | None = None  # a chunked task: the chunk it was launched in
    subtasks: dict[str, Task] | None = None  # a chunk: its subtasks not reported yet
    memory_bytes: int = 0  # its executor's estimate of its memory, from the last heartbeat
    lost_on: list[str] = field(default_factory=list)  # executors lost while they held it

    @property
    def priority(self) -> str:
        return self.job.priority

    @property
    def order(self) -> int:
        return self.job.order


@dataclass(eq=False, slots=True)
class Executor:
    executor_id: str
    node: str
    hostname: str
    pid: int
    last_seen: int  # scheduler clock, ns
    alive: bool = True
    slot_task: Task | None = None  # the task holding the slot
    queued: deque[Task] = field(default_factory=deque)  # launched behind the slot task
    suspended: dict[str, Task] = field(default_factory=dict)  # suspended or suspending here
    metrics: deque[p.Heartbeat] = field(default_factory=lambda: deque(maxlen=METRICS_WINDOW))
    # Mean host memory use over `metrics`, 0.0-1.0 (0.0 before any heartbeat). Kept, not
    # computed when asked: LB ranks every executor by it when it picks a victim.
    memory_pressure: float = 0.0
    view: ExecutorView | None = None  # made by ClusterView when first asked for, then kept
    memory_limit_bytes: int | None = None  # its `--memory-limit`, from its heartbeats
    rss_bytes: int | None = None  # from its last heartbeat

    def add_metrics(self, beat: p.Heartbeat) -> None:
        """A heartbeat arrived: keep it in the window, update `memory_pressure`, the limit
        and the RSS, and each task's memory estimate."""
        self.metrics.append(beat)
        window = self.metrics
        self.memory_pressure = sum(m.mem_percent for m in window) / len(window) / 100
        self.memory_limit_bytes = beat.memory_limit_bytes if beat.memory_limit_bytes > 0 else None
        self.rss_bytes = beat.rss_bytes
        estimates = beat.task_memory or {}
        for task in self.tasks():
            figure = estimates.get(task.task_id, 0)
            # Peer input: a dict's contents are not checked by decode.
            task.memory_bytes = figure if type(figure) is int and figure > 0 else 0

    @property
    def memory_headroom(self) -> int | None:
        """Bytes left under its memory limit at its last heartbeat (negative: over it);
        None without a limit or before the first heartbeat."""
        if self.memory_limit_bytes is None or self.rss_bytes is None:
            return None
        return self.memory_limit_bytes - self.rss_bytes

    def tasks(self) -> Iterator[Task]:
        """Every task whose state lives on this executor."""
        if self.slot_task is not None:
            yield self.slot_task
        yield from self.queued
        yield from self.suspended.values()

    def chunks(self) -> Iterator[Task]:
        """The chunks here, running, queued or suspended."""
        return (t for t in self.tasks() if t.subtasks is not None)


def resume_order(task: Task | TaskView) -> tuple[bool, int, int]:
    """Which suspended task to resume first: stream before batch, then order, then arrival."""
    return (task.priority != "stream", task.order, task.seq)


class PendingQueues:
    """Pending tasks per priority class, ordered by (order, arrival); lazy deletion."""

    def __init__(self) -> None:
        self._queues: dict[str, dict[int, deque[Task]]] = {name: {} for name in PRIORITIES}
        self._count = dict.fromkeys(PRIORITIES, 0)
        self._per_job: dict[str, int] = {}

    def push(self, task: Task, *, front: bool = False) -> None:
        lane = self._queues[task.priority].setdefault(task.job.order, deque())
        lane.appendleft(task) if front else lane.append(task)
        self._count[task.priority] += 1
        self._per_job[task.job.job_id] = self._per_job.get(task.job.job_id, 0) + 1

    def removed(self, task: Task) -> None:
        """Account for a task that left the pending state (it stays in its lane, skipped)."""
        self._count[task.priority] -= 1
        self._per_job[task.job.job_id] -= 1

    def count(self, priority: str | None = None) -> int:
        return sum(self._count.values()) if priority is None else self._count[priority]

    def count_of_job(self, job_id: str) -> int:
        return self._per_job.get(job_id, 0)

    def iterate(self, priority: str) -> Iterator[Task]:
        lanes = self._queues[priority]
        for order in sorted(lanes):
            lane = lanes[order]
            # Drop already-launched or cancelled tasks from the front as we go.
            while lane and lane[0].state is not TaskState.PENDING:
                lane.popleft()
            for task in lane:
                if task.state is TaskState.PENDING:
                    yield task
            if not lane:
                del lanes[order]


class TaskView:
    """Read-only view of one task."""

    __slots__ = ("_core", "_task")

    def __init__(self, task: Task, core: SchedulerCore) -> None:
        self._task = task
        self._core = core

    task_id = property(lambda self: self._task.task_id)
    job_id = property(lambda self: self._task.job.job_id)
    priority = property(lambda self: self._task.priority)
    order = property(lambda self: self._task.job.order)
    state = property(lambda self: self._task.state)
    executor_id = property(lambda self: self._task.executor_id)
    attempt = property(lambda self: self._task.attempt)
    suspensions = property(lambda self: self._task.suspensions)
    max_suspensions = property(lambda self: self._task.job.max_suspensions)
    records = property(lambda self: self._task.records)
    submitted_at = property(lambda self: self._task.submitted_at)
    seq = property(lambda self: self._task.seq)
    preferred = property(
        lambda self: self._task.preferred,
        doc="Node labels or executor ids the task would rather run on (empty: anywhere).",
    )
    memory_bytes = property(
        lambda self: self._task.memory_bytes,
        doc="Its executor's estimate of the memory it holds, in bytes, from the last "
        "heartbeat (0 when unknown: not started, or the executor has no memory limit).",
    )

    @property
    def suspendable(self) -> bool:
        """Running, under its suspension cap, and known to reach record boundaries."""
        return self._core.suspendable(self._task)

    def __repr__(self) -> str:
        return f"<task {self.task_id} {self.priority} {self.state.value}>"


class ExecutorView:
    """Read-only view of one executor."""

    __slots__ = ("_core", "_executor")

    def __init__(self, executor: Executor, core: SchedulerCore) -> None:
        self._executor = executor
        self._core = core

    executor_id = property(lambda self: self._executor.executor_id)
    node = property(lambda self: self._executor.node)
    alive = property(lambda self: self._executor.alive)
    queued = property(lambda self: len(self._executor.queued))

    @property
    def slot_task(self) -> TaskView | None:
        task = self._executor.slot_task
        return None if task is None else TaskView(task, self._core)

    @property
    def slot_free(self) -> bool:
        return self._executor.slot_task is None

    @property
    def free_capacity(self) -> int:
        """How many more tasks the core will accept launching here now (slot + prefetch)."""
        return self._core.free_capacity(self._executor)

    @property
    def suspended(self) -> tuple[TaskView, ...]:
        return tuple(
            TaskView(t, self._core)
            for t in self._executor.suspended.values()
            if t.state is TaskState.SUSPENDED
        )

    @property
    def metrics(self) -> p.Heartbeat | None:
        return self._executor.metrics[-1] if self._executor.metrics else None

    @property
    def metrics_window(self) -> tuple[p.Heartbeat, ...]:
        return tuple(self._executor.metrics)

    memory_pressure = property(
        lambda self: self._executor.memory_pressure,
        doc="Mean host memory use over the metrics window, 0.0-1.0 (0.0 before any heartbeat).",
    )
    memory_limit_bytes = property(
        lambda self: self._executor.memory_limit_bytes,
        doc="Its memory limit in bytes (None: no limit, or no heartbeat yet).",
    )
    rss_bytes = property(
        lambda self: self._executor.rss_bytes,
        doc="Its process's RSS at its last heartbeat (None before the first).",
    )
    memory_headroom = property(
        lambda self: self._executor.memory_headroom,
        doc="Bytes left under its memory limit at its last heartbeat, negative when over "
        "it (None without a limit). Suspended tasks' memory is in the RSS, so it counts.",
    )

    def __repr__(self) -> str:
        return f"<executor {self.executor_id} on {self.node}>"


class ClusterView:
    """What a policy may look at: executors, tasks, queues and the clock. Read-only."""

    __slots__ = ("_core",)

    def __init__(self, core: SchedulerCore) -> None:
        self._core = core

    @property
    def now(self) -> int:
        """The scheduler's monotonic clock, in ns."""
        return self._core.now

    @property
    def max_suspensions(self) -> int:
        """The cluster-wide suspension cap (a job may set its own)."""
        return self._core.max_suspensions

    def executors(self) -> list[ExecutorView]:
        """Live executors, in the order they joined."""
        return [e.view or self.view_of(e) for e in self._core.executors.values() if e.alive]

    def view_of(self, executor: Executor) -> ExecutorView:
        """The view of `executor` (alive or not), made when first asked for, then kept."""
        # Discussion: a view copies nothing, so one per executor serves for good; making
        # 1,000 of them for every question cost LB ~0.3 ms, and the garbage collector more.
        if executor.view is None:
            executor.view = ExecutorView(executor, self._core)
        return executor.view

    def free_capacities(self) -> dict[str, int]:
        """Live executors with room for another launch: executor id -> how many more tasks
        the core accepts there now (their `free_capacity`), in the order they joined.
        Executors without room are left out."""
        core = self._core
        depth = core.prefetch_depth()
        free = {}
        for executor in core.executors.values():
            room = 1 + depth - (executor.slot_task is not None) - len(executor.queued)
            if room > 0 and executor.alive:
                free[executor.executor_id] = room
        return free

    def free_slots(self) -> list[ExecutorView]:
        """Live executors whose slot is free, in the order they joined."""
        core = self._core
        return [
            e.view or self.view_of(e)  # `or`: no call for a view made already (hot in LB)
            for e in core.executors.values()
            if e.slot_task is None and e.alive
        ]

    def any_suspended(self) -> bool:
        """Whether some live executor holds a suspended task (one `ExecutorView.suspended`
        lists: suspending or killing ones are not)."""
        for executor in self._core.executors.values():
            if executor.suspended and executor.alive:
                for task in executor.suspended.values():
                    if task.state is TaskState.SUSPENDED:
                        return True
        return False

    def executor(self, executor_id: str) -> ExecutorView | None:
        executor = self._core.executors.get(executor_id)
        return None if executor is None else self.view_of(executor)

    def task(self, task_id: str) -> TaskView | None:
        task = self._core.tasks.get(task_id)
        return None if task is None else TaskView(task, self._core)

    def pending(self, priority: str | None = None) -> Iterator[TaskView]:
        """Pending tasks of one class in order, or of both merged in arrival order."""
        core = self._core
        if priority is not None:
            return (TaskView(t, core) for t in core.pending.iterate(priority))
        merged = _merge_by_seq(core.pending.iterate("stream"), core.pending.iterate("batch"))
        return (TaskView(t, core) for t in merged)

    def pending_count(self, priority: str | None = None) -> int:
        return self._core.pending.count(priority)

    def running(self, priority: str | None = None) -> list[TaskView]:
        """Tasks holding a slot, optionally of one class."""
        return [
            TaskView(e.slot_task, self._core)
            for e in self._core.executors.values()
            if e.alive
            and e.slot_task is not None
            and (priority is None or e.slot_task.priority == priority)
        ]


def _merge_by_seq(a: Iterator[Task], b: Iterator[Task]) -> Iterator[Task]:
    return heapq.merge(a, b, key=attrgetter("seq"))  # seqs are unique: no ties


def status_snapshot(core: SchedulerCore) -> dict[str, Any]:
    """A snapshot of the cluster for `tidal status` and `Client.status()` (msgpack-encodable)."""
    executors = []
    for e in core.executors.values():
        beat = e.metrics[-1] if e.metrics else None
        executors.append(
            {
                "executor_id": e.executor_id,
                "node": e.node,
                "hostname": e.hostname,
                "state": "alive" if e.alive else "lost",
                "running": e.slot_task.task_id if e.slot_task else None,
                "queued": len(e.queued),
                "suspended": [
                    t.task_id for t in e.suspended.values() if t.state is TaskState.SUSPENDED
                ],
                "rss_bytes": beat.rss_bytes if beat else None,
                "memory_limit_bytes": e.memory_limit_bytes,
                "mem_available_bytes": beat.mem_available_bytes if beat else None,
                "mem_percent": beat.mem_percent if beat else None,
                "last_seen_s": (core.now - e.last_seen) / 1e9,
            }
        )
    jobs = [
        {
            "job_id": j.job_id,
            "priority": j.priority,
            "order": j.order,
            "total": j.total,
            "finished": j.finished,
            "failed": j.failed,
            "cancelled": j.cancelled,
        }
        for j in core.jobs.values()
    ]
    return {
        "policy": core.policy.name,
        "max_suspensions": core.max_suspensions,
        "executors": executors,
        "jobs": jobs,
        "pending": {c: core.pending.count(c) for c in PRIORITIES},
        "unclaimed": core.unclaimed_count(),
        "restarts": core.restarts,
        "policy_failures": list(core.policy_failures),
        "policy_switches": [dict(switch) for switch in core.policy_switches],
        "steals": core.steal_count,
    }


def check_submission(msg: p.Submit, jobs: dict[str, Job], tasks: dict[str, Task]) -> str | None:
    """Why a submitted job cannot be accepted, or None if it can."""
    if msg.priority not in PRIORITIES:
        return f"unknown priority {msg.priority!r} (use {' or '.join(PRIORITIES)})"
    if msg.max_suspensions is not None and msg.max_suspensions < 0:
        return f"max_suspensions must be >= 0, not {msg.max_suspensions}"
    if msg.job_id in jobs:
        return f"a job with id {msg.job_id!r} exists already"
    if not msg.tasks:
        return "the job has no tasks"
    from tidal.scheduler.chunks import check_chunksize  # state is imported by chunks

    problem = check_chunksize(msg.options)
    if problem:
        return problem
    seen = set()
    for entry in msg.tasks:
        if not (
            isinstance(entry, list)
            and len(entry) in (2, 3)
            and type(entry[0]) is str
            and type(entry[1]) is bytes  # the payload: never opened here
            and (len(entry) == 2 or _valid_options(entry[2]))
        ):
            return (
                "each task must be [task_id, payload] or [task_id, payload, "
                "{'preferred': [node or executor ids]}], with the payload bytes"
            )
        if entry[0] in tasks or entry[0] in seen:
            return f"task id {entry[0]!r} is already in use"
        seen.add(entry[0])
    return None


def _valid_options(options: Any) -> bool:
    """Per-task options: only `preferred`, a list of node labels or executor ids."""
    if not isinstance(options, dict) or set(options) - {"preferred"}:
        return False
    preferred = options.get("preferred", [])
    return isinstance(preferred, list) and all(isinstance(x, str) for x in preferred)


def stat_count(stats: dict[str, Any], key: str, default: Any) -> Any:
    """`stats[key]` if it is a count (an int >= 0, not a bool), else `default`.

    Discussion: a report's stats are the executor's word, in a map whose values `decode`
    does not check; one that is a string, a float NaN or negative must not reach the core's
    arithmetic (an EWMA of NaN made the prefetch depth `int(nan)`, which raises).
    """
    value = stats.get(key, default)
    return value if type(value) is int and value >= 0 else default

"""The scheduler's records: jobs, tasks, executors and the pending queues, as data.

These are the tables the scheduler keeps; scheduler/records/books.py holds the only code
that changes them (`Records`). Policies never see them: they read views
(scheduler/views.py).
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from tidal.runtime import protocol as p
from tidal.runtime.columns import Columns

__all__ = [
    "PRIORITIES",
    "SLOT_STATES",
    "ExecutorRecord",
    "Job",
    "PendingQueues",
    "Piece",
    "Task",
    "TaskState",
    "lane_suspensions",
    "record_length",
    "resume_order",
    "stat_count",
]

PRIORITIES = p.PRIORITY_CLASSES
# Discussion: heartbeats are ~0.5 s apart, so 20 of them are the last ~10 s: long enough to
# smooth a spike, short enough to notice pressure building while a stream burst lasts.
METRICS_WINDOW = 20


class TaskState(enum.Enum):
    """Where a task stands, as the scheduler sees it."""

    WAITING = "waiting"  # an input (another task's kept result) is not there yet
    PENDING = "pending"  # queued at the scheduler
    LAUNCHED = "launched"  # sent to an executor, not started yet
    RUNNING = "running"
    SUSPENDING = "suspending"  # suspend sent, not confirmed
    SUSPENDED = "suspended"
    RESUMING = "resuming"  # resume sent, not confirmed
    KILLING = "killing"  # kill sent, not confirmed
    DONE = "done"
    # After a restart: known from the journal, not ended, and not yet reported by any
    # executor; queued when the reclaim grace period ends (scheduler/recovery.py).
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
    # A bulk job (submit.bulk, scheduler/records/spans.py): its tasks' payloads (a tuple, or
    # a columnar job's Columns: runtime/columns.py), a byte per task set once it ended, and
    # its span chunks on executors. Its tasks have records only where one differs
    # (cancelled, requeued, reported on its own): `Task.index` >= 0.
    payloads: tuple[bytes, ...] | Columns | None = None
    payload_max: int = 0  # the longest of them, which bounds a span chunk's size
    accepted_at: int = 0  # scheduler clock
    ended: bytearray | None = None
    spans: list[Task] = field(default_factory=list)
    pieces: list[Task] = field(default_factory=list)  # its pending pieces
    # The ids of its records in `Records.tasks` (tasks, chunks, pieces), to retire them;
    # `released`: its client holds none of its futures any more (or left); `retired`: gone
    # from the books (`Records.retire`), its records leaving as they leave their executors.
    ids: list[str] = field(default_factory=list)
    released: bool = False
    retired: bool = False
    keep: bool = False  # its results stay on their executors (scheduler/records/lineage.py)

    @property
    def done(self) -> bool:
        return self.finished + self.failed + self.cancelled >= self.total

    def count_end(self, outcome: str) -> None:
        """Count one of its tasks as ended: "finished", "failed", or else cancelled."""
        if outcome == "finished":
            self.finished += 1
        elif outcome == "failed":
            self.failed += 1
        else:
            self.cancelled += 1


@dataclass(eq=False, slots=True)
class Piece:
    """A bulk job's pending tasks start, start + 1, ..., stop - 1 (scheduler/records/spans.py)."""

    start: int
    stop: int


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
    kills: int = 0  # times a policy killed it to make room (never reset: the kill cap)
    records: int = 0
    started_at_ns: int | None = None  # the executor's clock at the first start
    finished_at_ns: int | None = None  # the executor's clock when it ended
    preferred: tuple[str, ...] = ()  # node labels or executor ids it would rather run on
    first_started_at: int | None = None  # the scheduler's clock when the first start was reported
    running_ns: int = 0
    suspended_ns: int = 0
    work_lost_ns: int = 0  # running time thrown away by kills and lost executors
    running_since: int | None = None  # scheduler clock at the last start or resume report
    suspend_sent_at: int | None = None  # scheduler clock when the last suspend was sent
    running_estimate_ns: int = 0  # the scheduler's own estimate of time run this attempt
    unsuspendable: bool = False  # an executor reported it reaches no record boundary
    requeue_on_kill: bool = False  # killed to make room (KILL policy, withdrawn launch)
    cancel_requested: bool = False
    chunk: Task | None = None  # a chunked task: the chunk it was launched in
    subtasks: dict[str, Task] | None = None  # a chunk: its subtasks not reported yet
    memory_bytes: int = 0  # its executor's estimate of its memory, from the last heartbeat
    # Its running time per record consumed, as its executor last reported both (a heartbeat's
    # `task_records`, or its end's stats); 0 before it consumed one. Kept across attempts:
    # it is its code's and its input's, not its attempt's.
    record_ns: int = 0
    # Executors lost while they held it. Discussion: this and the lists of inputs below are
    # the shared () until a record has an item of its own: four lists made for every record
    # were four objects the garbage collector walked per task (53,000 of the 69,000 that
    # survived `tidal bench scale`'s measured phase, and its full collection of ~90 ms).
    lost_on: list[str] | tuple[()] = ()
    # The executor said it has this launch (`received`, or it started): a loss counts from
    # then on. `launched_ns` tells this launch from an earlier one of the same attempt.
    received: bool = False
    launched_ns: int = 0
    # A bulk job's task with a record of its own: its index in the job (else -1). A pending
    # piece of a bulk job (tasks not launched yet, [start, stop)): `piece`.
    index: int = -1
    piece: Piece | None = None
    # Kept results and inputs (scheduler/records/lineage.py): the task's inputs as its
    # client sent them ([[path, task_id], ...]) and their tasks; the tasks that take its
    # result; where its result is kept, its size and its reference; the executor holding
    # most of its input bytes, and its input bytes per executor.
    inputs: list[Any] | tuple[()] = ()
    needs: list[Task] | tuple[()] = ()
    dependents: list[Task] | tuple[()] = ()
    kept_on: str | None = None
    kept_bytes: int = 0
    kept: bytes = b""
    recomputing: bool = False  # its kept result was lost: it runs again
    input_losses: int = 0  # times it failed because an input could not be had
    local_to: str | None = None
    input_bytes: dict[str, int] = field(default_factory=dict)

    @property
    def priority(self) -> str:
        return self.job.priority

    @property
    def order(self) -> int:
        return self.job.order


@dataclass(eq=False, slots=True)
class ExecutorRecord:
    """What the scheduler knows of one executor (the process itself is
    tidal.runtime.executor.Executor)."""

    executor_id: str
    node: str
    hostname: str
    pid: int
    last_seen: int  # scheduler clock, ns
    alive: bool = True
    busy: bool = False  # alive, but its heartbeats are late (its Python is held)
    slot_task: Task | None = None  # the task holding the slot
    queued: deque[Task] = field(default_factory=deque)  # launched behind the slot task
    suspended: dict[str, Task] = field(default_factory=dict)  # suspended or suspending here
    metrics: deque[p.Heartbeat] = field(default_factory=lambda: deque(maxlen=METRICS_WINDOW))
    # Mean host memory use over `metrics`, 0.0-1.0 (0.0 before any heartbeat). Kept, not
    # computed when asked: LB ranks every executor by it when it picks a victim.
    memory_pressure: float = 0.0
    # Its ExecutorView, made by ClusterView when first asked for, then kept (untyped here:
    # the views are built on the records, not the other way round).
    view: Any = None
    memory_limit_bytes: int | None = None  # its `--memory-limit`, from its heartbeats
    rss_bytes: int | None = None  # from its last heartbeat
    kept_bytes: int = 0  # the kept results it holds (scheduler/records/lineage.py)
    lane: str | None = None  # where clients send it stream tasks (runtime/lanes.py)

    def add_metrics(self, beat: p.Heartbeat) -> None:
        """A heartbeat arrived: keep it in the window, update `memory_pressure`, the limit
        and the RSS, and each task's memory estimate and record length."""
        self.metrics.append(beat)
        window = self.metrics
        self.memory_pressure = sum(m.mem_percent for m in window) / len(window) / 100
        self.memory_limit_bytes = beat.memory_limit_bytes if beat.memory_limit_bytes > 0 else None
        self.rss_bytes = beat.rss_bytes
        estimates = beat.task_memory or {}
        progress = beat.task_records or {}
        for task in self.tasks():
            figure = estimates.get(task.task_id, 0)
            # Peer input: a dict's contents are not checked by decode.
            task.memory_bytes = figure if type(figure) is int and figure > 0 else 0
            if progress:
                task.record_ns = record_length(progress.get(task.task_id), task.record_ns)

    @property
    def memory_headroom(self) -> int | None:
        """Bytes left under its memory limit at its last heartbeat, less the results it
        keeps (negative: over it); None without a limit or before the first heartbeat."""
        if self.memory_limit_bytes is None or self.rss_bytes is None:
            return None
        return self.memory_limit_bytes - self.rss_bytes - self.kept_bytes

    def tasks(self) -> Iterator[Task]:
        """Every task whose state lives on this executor."""
        if self.slot_task is not None:
            yield self.slot_task
        yield from self.queued
        yield from self.suspended.values()

    def chunks(self) -> Iterator[Task]:
        """The chunks here, running, queued or suspended."""
        return (t for t in self.tasks() if t.subtasks is not None)


def lane_suspensions(task: Task) -> int | None:
    """How many more times its executor may suspend `task` itself, for a stream task that
    came by its lane (`launch.suspensions_left`, runtime/lanes.py); None for a stream task."""
    if task.job.priority == "stream":
        return None
    return max(0, task.job.max_suspensions - task.suspensions)


def record_length(progress: Any, default: int) -> int:
    """A record's length in ns from a task's progress `[running_ns, records]` (a heartbeat's
    `task_records` item), or `default` when it tells none: no record consumed yet, or not
    a pair of counts (peer input: decode does not check a dict's contents).

    Discussion: the running time holds the records consumed and the part of the next one
    done so far, half a record on average (a heartbeat does not wait for a boundary): so
    running / (records + 1/2). Running / records would take 1.5 records for one at the first
    heartbeat after it, and coarse records are the ones a first heartbeat finds few of."""
    if type(progress) is not list or len(progress) != 2:
        return default
    running_ns, records = progress
    if type(running_ns) is not int or type(records) is not int or records < 1 or running_ns < 0:
        return default
    return max(1, 2 * running_ns // (2 * records + 1))


def resume_order(task: Any) -> tuple[bool, int, int]:
    """Which suspended task (a record or a view) to resume first: stream before batch, then
    order, then arrival."""
    return (task.priority != "stream", task.order, task.seq)


class PendingQueues:
    """Pending tasks per priority class, ordered by (order, arrival); lazy deletion."""

    def __init__(self) -> None:
        self._queues: dict[str, dict[int, deque[Task]]] = {name: {} for name in PRIORITIES}
        self._count = dict.fromkeys(PRIORITIES, 0)
        self._per_job: dict[str, int] = {}

    def push(self, task: Task, *, front: bool = False) -> None:
        """Queue a task, or a bulk job's piece (which counts as the tasks it holds)."""
        lane = self._queues[task.priority].setdefault(task.job.order, deque())
        lane.appendleft(task) if front else lane.append(task)
        weight = 1 if task.piece is None else task.piece.stop - task.piece.start
        self._count[task.priority] += weight
        self._per_job[task.job.job_id] = self._per_job.get(task.job.job_id, 0) + weight

    def removed(self, task: Task, count: int = 1) -> None:
        """Account for a task that left the pending state (it stays in its lane, skipped),
        or for `count` tasks taken from a piece."""
        self._count[task.priority] -= count
        self._per_job[task.job.job_id] -= count

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


def stat_count(stats: dict[str, Any], key: str, default: Any) -> Any:
    """`stats[key]` if it is a count (an int >= 0, not a bool), else `default`.

    Discussion: a report's stats are the executor's word, in a map whose values `decode`
    does not check; one that is a string, a float NaN or negative must not reach the core's
    arithmetic (an EWMA of NaN made the prefetch depth `int(nan)`, which raises).
    """
    value = stats.get(key, default)
    return value if type(value) is int and value >= 0 else default

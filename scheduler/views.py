"""What may be read of the scheduler's records: the read-only views policies get, the
status snapshot built from them, and the check of a submitted job against them.

Views are thin read-only wrappers over the records (scheduler/records.py) that copy nothing,
so a policy can look at a cluster with a million pending tasks without the core building a
snapshot for every decision. Nothing here changes a record (an executor's view is kept on
its record once made, which changes nothing the scheduler reads).
"""

from __future__ import annotations

import heapq
from collections.abc import Collection, Iterator
from operator import attrgetter
from typing import Any

from tidal.runtime import protocol as p
from tidal.runtime.columns import Columns
from tidal.scheduler.chunks import check_chunksize
from tidal.scheduler.records import (
    PRIORITIES,
    ExecutorRecord,
    Job,
    Records,
    Task,
    TaskState,
    resume_order,
)
from tidal.scheduler.records.lags import StreamLag

__all__ = [
    "ClusterView",
    "ExecutorView",
    "TaskState",
    "TaskView",
    "check_submission",
    "refused_ids",
    "resume_order",
    "status_snapshot",
]


class TaskView:
    """Read-only view of one task."""

    __slots__ = ("_records", "_task")

    def __init__(self, task: Task, records: Records) -> None:
        self._task = task
        self._records = records

    task_id = property(lambda self: self._task.task_id)
    job_id = property(lambda self: self._task.job.job_id)
    priority = property(lambda self: self._task.priority)
    order = property(lambda self: self._task.job.order)
    state = property(lambda self: self._task.state)
    executor_id = property(lambda self: self._task.executor_id)
    attempt = property(lambda self: self._task.attempt)
    suspensions = property(lambda self: self._task.suspensions)
    kills = property(
        lambda self: self._task.kills,
        doc="Times a policy killed it to make room; at its `max_suspensions` the core "
        "refuses to kill it again (the kill cap).",
    )
    max_suspensions = property(lambda self: self._task.job.max_suspensions)
    records = property(lambda self: self._task.records)
    submitted_at = property(lambda self: self._task.submitted_at)
    seq = property(lambda self: self._task.seq)

    @property
    def preferred(self) -> tuple[str, ...]:
        """Node labels or executor ids the task would rather run on (empty: anywhere): its
        own, else the executor holding most of its input bytes (`local_to`)."""
        task = self._task
        if task.preferred or task.local_to is None:
            return task.preferred
        return (task.local_to,)

    local_to = property(
        lambda self: self._task.local_to,
        doc="The executor holding most of the bytes of its inputs (other tasks' kept "
        "results), if it has any: where it runs without fetching the most.",
    )

    @property
    def input_bytes(self) -> dict[str, int]:
        """Bytes of its inputs (other tasks' kept results) per executor holding them."""
        return dict(self._task.input_bytes)

    memory_bytes = property(
        lambda self: self._task.memory_bytes,
        doc="Its executor's estimate of the memory it holds, in bytes, from the last "
        "heartbeat (0 when unknown: not started, or the executor has no memory limit).",
    )

    @property
    def record_ns(self) -> int | None:
        """Its running time per input record, as its executor last reported both (in a
        heartbeat while it runs, or with its end), so known before any suspension: a
        suspension waits for its next record boundary, on average half of this. None
        until it has consumed a record (or from an executor older than protocol 11)."""
        return self._task.record_ns or None

    @property
    def suspendable(self) -> bool:
        """Running, under its suspension cap, and known to reach record boundaries."""
        return self._records.suspendable(self._task)

    def __repr__(self) -> str:
        return f"<task {self.task_id} {self.priority} {self.state.value}>"


class ExecutorView:
    """Read-only view of one executor."""

    __slots__ = ("_executor", "_records")

    def __init__(self, executor: ExecutorRecord, records: Records) -> None:
        self._executor = executor
        self._records = records

    executor_id = property(lambda self: self._executor.executor_id)
    node = property(lambda self: self._executor.node)
    alive = property(lambda self: self._executor.alive)
    busy = property(
        lambda self: self._executor.busy,
        doc="Alive (its connection is up) but its heartbeats are late: its Python is held, by "
        "a long C call most likely. Its task cannot be suspended until it reports again.",
    )
    queued = property(lambda self: len(self._executor.queued))

    @property
    def slot_task(self) -> TaskView | None:
        task = self._executor.slot_task
        return None if task is None else TaskView(task, self._records)

    @property
    def slot_free(self) -> bool:
        return self._executor.slot_task is None

    @property
    def free_capacity(self) -> int:
        """How many more tasks to launch here now (slot + prefetch; none while a refill of
        the prefetch queue would be a small one: `Records.offered_capacity`)."""
        return self._records.offered_capacity(self._executor)

    @property
    def suspended(self) -> tuple[TaskView, ...]:
        return tuple(
            TaskView(t, self._records)
            for t in self._executor.suspended.values()
            if t.state is TaskState.SUSPENDED
        )

    @property
    def metrics(self) -> p.Heartbeat | None:
        return self._executor.metrics[-1] if self._executor.metrics else None

    @property
    def metrics_window(self) -> tuple[p.Heartbeat, ...]:
        return tuple(self._executor.metrics)

    kept_bytes = property(
        lambda self: self._executor.kept_bytes,
        doc="Bytes of the results it keeps for other tasks (`keep=True`); they count "
        "against its memory limit (`memory_headroom`).",
    )
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

    __slots__ = ("_records",)

    def __init__(self, records: Records) -> None:
        self._records = records

    @property
    def now(self) -> int:
        """The scheduler's monotonic clock, in ns."""
        return self._records.now

    @property
    def max_suspensions(self) -> int:
        """The cluster-wide suspension cap (a job may set its own)."""
        return self._records.max_suspensions

    def stream_lag(self) -> StreamLag:
        """How far behind the stream drivers' sources are (runtime/streams.py), summed over
        those that reported within LAG_FRESH_NS: entries not yet acknowledged, and the age
        of the oldest in seconds (None: unknown, or no source reported)."""
        return self._records.stream_lag()

    def executors(self) -> list[ExecutorView]:
        """Live executors, in the order they joined."""
        return [e.view or self.view_of(e) for e in self._records.executors.values() if e.alive]

    def view_of(self, executor: ExecutorRecord) -> ExecutorView:
        """The view of `executor` (alive or not), made when first asked for, then kept."""
        # Discussion: a view copies nothing, so one per executor serves for good; making
        # 1,000 of them for every question cost LB ~0.3 ms, and the garbage collector more.
        if executor.view is None:
            executor.view = ExecutorView(executor, self._records)
        return executor.view

    def free_capacities(self) -> dict[str, int]:
        """Live executors with room for another launch: executor id -> how many more tasks
        to launch there now (their `free_capacity`), in the order they joined.
        Executors without room are left out."""
        records = self._records
        capacity = 1 + records.prefetch_depth()  # once, not once per executor
        free = {}
        for executor in records.executors.values():
            room = records.offered_capacity(executor, capacity)
            if room > 0:
                free[executor.executor_id] = room
        return free

    def free_slots(self) -> list[ExecutorView]:
        """Live executors whose slot is free, in the order they joined (busy ones take no
        launch, so they are left out)."""
        records = self._records
        return [
            e.view or self.view_of(e)  # `or`: no call for a view made already (hot in LB)
            for e in records.executors.values()
            if e.slot_task is None and e.alive and not e.busy
        ]

    def any_suspended(self) -> bool:
        """Whether some live executor holds a suspended task (one `ExecutorView.suspended`
        lists: suspending or killing ones are not)."""
        for executor in self._records.executors.values():
            if executor.suspended and executor.alive:
                for task in executor.suspended.values():
                    if task.state is TaskState.SUSPENDED:
                        return True
        return False

    def executor(self, executor_id: str) -> ExecutorView | None:
        executor = self._records.executors.get(executor_id)
        return None if executor is None else self.view_of(executor)

    def task(self, task_id: str) -> TaskView | None:
        task = self._records.tasks.get(task_id)
        return None if task is None else TaskView(task, self._records)

    def pending(self, priority: str | None = None) -> Iterator[TaskView]:
        """Pending tasks of one class in order, or of both merged in arrival order."""
        records = self._records
        if priority is not None:
            return (TaskView(t, records) for t in records.pending.iterate(priority))
        merged = _merge_by_seq(records.pending.iterate("stream"), records.pending.iterate("batch"))
        return (TaskView(t, records) for t in merged)

    def pending_count(self, priority: str | None = None) -> int:
        return self._records.pending.count(priority)

    def running(self, priority: str | None = None) -> list[TaskView]:
        """Tasks holding a slot, optionally of one class."""
        return [
            TaskView(e.slot_task, self._records)
            for e in self._records.executors.values()
            if e.alive
            and e.slot_task is not None
            and (priority is None or e.slot_task.priority == priority)
        ]


def _merge_by_seq(a: Iterator[Task], b: Iterator[Task]) -> Iterator[Task]:
    return heapq.merge(a, b, key=attrgetter("seq"))  # seqs are unique: no ties


# The states `status()` counts tasks in, per priority (`queued`: launched to an executor,
# waiting behind its slot's task).
TASK_STATES = ("pending", "queued", "running", "suspended", "finished", "failed", "cancelled")
# Jobs `status()` lists one by one: those not done (the oldest this many; the rest summed up
# in `more_jobs`), then the newest this many done ones. Every done job is summed up per
# function and priority in `done_jobs`: a stream application submits a job per micro-batch.
MAX_LISTED_JOBS = 200
RECENT_DONE_JOBS = 20


def _tasks_in(task: Task) -> int:
    """How many tasks `task` stands for: a chunk, the subtasks it still runs."""
    return 1 if task.subtasks is None else len(task.subtasks)


def _job_row(j: Job, suspended: int) -> dict[str, Any]:
    return {
        "job_id": j.job_id,
        "function": j.fn,
        "client": j.client_id,
        "priority": j.priority,
        "order": j.order,
        "total": j.total,
        "finished": j.finished,
        "failed": j.failed,
        "cancelled": j.cancelled,
        "suspended": suspended,
    }


def status_snapshot(
    records: Records, policy: dict[str, Any], counters: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A snapshot of the cluster for `tidal status`, `Client.status()`, `/metrics` and the
    dashboard (msgpack-encodable); `policy` holds what the core knows of its policy (name,
    failures, switches), `counters` what it counted (scheduler/tally.py).

    Tasks are counted by priority and state, a chunk as the tasks it holds. Jobs are listed
    as MAX_LISTED_JOBS and RECENT_DONE_JOBS say; done jobs whose client has left are not
    (their tasks still count among the finished, failed and cancelled)."""
    tasks = {c: dict.fromkeys(TASK_STATES, 0) for c in PRIORITIES}
    suspended_in: dict[str, int] = {}  # job id -> its tasks suspended now
    executors = []
    for e in records.executors.values():
        beat = e.metrics[-1] if e.metrics else None
        suspended = [t for t in e.suspended.values() if t.state is TaskState.SUSPENDED]
        if e.alive:
            for t in suspended:
                tasks[t.priority]["suspended"] += _tasks_in(t)
                suspended_in[t.job.job_id] = suspended_in.get(t.job.job_id, 0) + _tasks_in(t)
            for t in e.queued:
                tasks[t.priority]["queued"] += _tasks_in(t)
            if e.slot_task is not None:
                tasks[e.slot_task.priority]["running"] += _tasks_in(e.slot_task)
        running = e.slot_task
        executors.append(
            {
                "executor_id": e.executor_id,
                "node": e.node,
                "hostname": e.hostname,
                "state": "alive" if e.alive else "lost",
                "busy": e.busy,  # alive, its heartbeats late (a long C call, most likely)
                "running": running.task_id if running else None,
                "running_priority": running.priority if running else None,
                "running_function": running.job.fn if running else None,
                "queued": len(e.queued),
                "suspended": [t.task_id for t in suspended],
                "rss_bytes": beat.rss_bytes if beat else None,
                "memory_limit_bytes": e.memory_limit_bytes,
                "kept_bytes": e.kept_bytes,
                "mem_available_bytes": beat.mem_available_bytes if beat else None,
                "mem_percent": beat.mem_percent if beat else None,
                "last_seen_s": (records.now - e.last_seen) / 1e9,
            }
        )
    listed: list[dict[str, Any]] = []
    more = {"jobs": 0, "total": 0, "ended": 0}
    done: list[Job] = []
    done_jobs: dict[tuple[str, str], dict[str, Any]] = {}
    ended_since_start = (counters or {}).get("ended", {})
    for priority, outcomes in ended_since_start.items():
        for outcome in ("finished", "failed", "cancelled"):
            tasks[priority][outcome] = outcomes.get(outcome, 0)
    for j in records.jobs.values():
        ended = j.finished + j.failed + j.cancelled
        if ended < j.total:
            if len(listed) < MAX_LISTED_JOBS:
                listed.append(_job_row(j, suspended_in.get(j.job_id, 0)))
            else:
                more["jobs"] += 1
                more["total"] += j.total
                more["ended"] += ended
            continue
        if j.client_id not in records.clients:
            continue  # done, and its client has left
        done.append(j)
        group = done_jobs.setdefault(
            (j.fn, j.priority),
            {"function": j.fn, "priority": j.priority, "jobs": 0, "tasks": 0, "failed": 0},
        )
        group["jobs"] += 1
        group["tasks"] += j.total
        group["failed"] += j.failed + j.cancelled
    listed += [_job_row(j, 0) for j in done[-RECENT_DONE_JOBS:]]
    for c in PRIORITIES:
        tasks[c]["pending"] = records.pending.count(c)
    return {
        **policy,
        "max_suspensions": records.max_suspensions,
        "executors": executors,
        "jobs": listed,
        "more_jobs": more,
        "done_jobs": list(done_jobs.values()),
        "tasks": tasks,
        "pending": {c: tasks[c]["pending"] for c in PRIORITIES},
        "unclaimed": records.unclaimed_count(),
        "restarts": records.restarts,
        "steals": records.steal_count,
        "counters": counters or {},
        # What the books hold: jobs and task records (retired ones are gone).
        "books": {"jobs": len(records.jobs), "records": len(records.tasks)},
        "streams": records.stream_lags(),
    }


def check_submission(
    msg: p.Submit, jobs: dict[str, Job], tasks: dict[str, Task], prefixes: Collection[str] = ()
) -> tuple[str | None, Columns | None]:
    """(why a submitted job cannot be accepted, or None if it can; a columnar job's columns,
    runtime/columns.py, scanned once here: the core records them as they are). `prefixes`:
    what comes before the last "/" in the ids of the tasks submitted one by one so far (a
    bulk job's tasks are f"{job_id}/{i}", so its id must not be among them)."""
    problem = _problem(msg, jobs, tasks, prefixes)
    if problem is not None or type(msg.bulk) is not bytes:
        return problem, None
    try:
        columns = Columns(msg.bulk, msg.kwargs)
    except p.ProtocolError as exc:
        return str(exc), None
    return ("the job has no tasks", None) if not len(columns) else (None, columns)


def _problem(
    msg: p.Submit, jobs: dict[str, Job], tasks: dict[str, Task], prefixes: Collection[str]
) -> str | None:
    """Why the job cannot be accepted, short of scanning its columns (the cheap checks
    first, so that a job refused for its id costs no scan of 64 MiB), or None."""
    if msg.priority not in PRIORITIES:
        return f"unknown priority {msg.priority!r} (use {' or '.join(PRIORITIES)})"
    if msg.max_suspensions is not None and msg.max_suspensions < 0:
        return f"max_suspensions must be >= 0, not {msg.max_suspensions}"
    if msg.job_id in jobs:
        return f"a job with id {msg.job_id!r} exists already"
    problem = check_chunksize(msg.options)
    if problem:
        return problem
    if msg.kwargs is not None and type(msg.bulk) is not bytes:
        return "a job's kwargs go with columns (bulk as bytes), not with tasks or payloads"
    if msg.bulk is not None:
        return _bulk_problem(msg, prefixes)
    if not msg.tasks:
        return "the job has no tasks"
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
                "{'preferred': [node or executor ids], 'inputs': [[path, task_id], ...]}], "
                "with the payload bytes"
            )
        if entry[0] in tasks or entry[0] in seen:
            return f"task id {entry[0]!r} is already in use"
        seen.add(entry[0])
    for prefix in {task_id.rpartition("/")[0] for task_id in seen}:
        job = jobs.get(prefix)
        if job is not None and job.payloads is not None:
            return f"task ids {prefix!r}/... are those of bulk job {prefix!r}"
    return None


def refused_ids(msg: p.Submit) -> list[str] | None:
    """The ids of a refused job's tasks to fail one by one: each task entry that names one.
    None for a bulk job: one `job_refused` answers for the whole job, which may name
    millions of tasks (a 64 MiB columnar submit, 64 million)."""
    if msg.bulk is not None:
        return None
    return [t[0] for t in msg.tasks if type(t) is list and t and type(t[0]) is str]


def _bulk_problem(msg: p.Submit, prefixes: Collection[str]) -> str | None:
    """Why a bulk job (submit.bulk) cannot be accepted, or None."""
    if "#" in msg.job_id or "@" in msg.job_id:
        # Its chunks and pieces are named <job_id>#<n> and <job_id>@<start>.
        return f"a bulk job's id may not hold '#' or '@' (got {msg.job_id!r})"
    if msg.tasks:
        return "a bulk job's tasks are its bulk payloads: its tasks must be empty"
    if not (msg.options or {}).get("chunksize"):
        return "a bulk job needs a chunksize option"
    if type(msg.bulk) is list:  # (columns, bytes, are scanned last: `check_submission`)
        if not msg.bulk:
            return "the job has no tasks"
        if set(map(type, msg.bulk)) != {bytes}:  # C loops: a job may hold a million
            return "each of a bulk job's payloads must be bytes"
    if msg.job_id in prefixes:
        return f"task ids {msg.job_id!r}/... are in use already"
    return None


def _valid_options(options: Any) -> bool:
    """Per-task options: `preferred`, a list of node labels or executor ids, and `inputs`,
    other tasks' kept results as [[path, task_id], ...] (checked by the core, which knows
    the tasks: scheduler/records/lineage.py)."""
    if not isinstance(options, dict) or set(options) - {"preferred", "inputs"}:
        return False
    preferred = options.get("preferred", [])
    return isinstance(preferred, list) and all(isinstance(x, str) for x in preferred)

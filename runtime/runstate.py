"""What an executor's kernel keeps about its tasks: plain data, acted on by runtime/kernel.py.

* `RunState`: where a task stands in the kernel; `TaskRecord`: the kernel's live record of
  one task (its inputs, its state, its counters).
* `ReadyQueue`: the tasks waiting for the slot, in the order they get it.
* `Command`: what `Kernel.launch`, `suspend`, ... queue, from any thread, for the hub;
  `Outcome`: how a task's greenlet ended, as it hands it back to the hub.
* `PendingSuspends`: suspend commands waiting for a record boundary, each settled once, by
  the hub or by the watchdog that gives up on it.
* `KernelStatistics`: counts of tasks by state.
* Snapshots of the task table for other threads (the listener, the memory guard):
  `holdings`, `memory_estimates`, `task_progress`, `memory_failure`, `statistics`. Each
  reads a copy of the table and each record's fields once, as the hub may change them
  meanwhile.

Discussion: nothing here decides or switches anything. The kernel's rules (which command
applies when, what a switch costs a task) stay together in runtime/kernel.py, and read there
without the bookkeeping's declarations in the way.
"""

from __future__ import annotations

import enum
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import greenlet

from tidal.runtime import kept, payloads
from tidal.runtime import protocol as p
from tidal.runtime.functions import FunctionRef
from tidal.runtime.protocol import PRIORITY_CLASSES

if TYPE_CHECKING:
    from tidal.runtime.columns import LaunchColumns

__all__ = [
    "MAX_SUSPEND_TIMEOUT_NS",
    "Command",
    "KernelStatistics",
    "Outcome",
    "PendingSuspends",
    "ReadyQueue",
    "RunState",
    "Span",
    "TaskGreenlets",
    "TaskKilled",
    "TaskRecord",
    "admit_launch",
    "end_report",
    "pack_result",
    "suspend_timeout_problem",
]


class TaskKilled(BaseException):
    """Raised inside a task at a record boundary when it is killed.

    A BaseException, like GreenletExit, so that `except Exception:` in user code does not
    swallow it.
    """


class RunState(enum.Enum):
    """Where a task stands inside one executor's kernel (the scheduler's view of the task is
    another thing: scheduler/records/tables.py's TaskState)."""

    QUEUED = "queued"  # launched, never run yet
    RUNNING = "running"  # holds the slot (running, or parked at a boundary by the hub)
    SUSPENDED = "suspended"
    RESUMING = "resuming"  # resumed, waiting in the ready queue for the slot
    DONE = "done"


@dataclass(slots=True)
class Outcome:
    """How a task's greenlet ended, as it hands it back to the hub."""

    kind: str  # "finished" | "failed" | "killed"
    value: Any = None
    error: list[str] | None = None  # [type name, message, traceback] when failed
    # The finished value already packed, in the task, between record boundaries (a kept
    # result, a big one: `Kernel._packed`); None: `end_report` packs it.
    payload: bytes | None = None


def end_report(
    record: TaskRecord,
    outcome: Outcome,
    stats: dict[str, Any],
    spool_result: Callable[[bytes], bytes] | None,
    keep_result: Callable[[str, bytes], bytes] | None = None,
) -> p.Message:
    """The report of a task's end: `finished` with its result packed (`failed` with an
    EncodeError if it cannot be sent), `failed`, or `killed` (`failed` if it was killed to
    fail it, as for its memory limit)."""
    task_id, attempt = record.task_id, record.attempt
    if outcome.kind == "finished" and record.keep:
        return _kept_report(record, outcome, stats, keep_result)
    if outcome.kind == "finished":
        try:
            result = payloads.pack_result(
                outcome.value, "finished.result", spool_result, packed=outcome.payload
            )
        except p.EncodeError as exc:
            problem = f"the task's result cannot be sent: {exc}"
            return p.Failed(task_id, attempt, "EncodeError", problem, "", stats)
        return p.Finished(task_id, attempt, result, stats)
    if outcome.kind == "killed" and record.fail_error is not None and record.chunk is None:
        return p.Failed(task_id, attempt, *record.fail_error, stats)
    if outcome.kind == "killed":
        return p.Killed(task_id, attempt, stats)
    return p.Failed(task_id, attempt, *(outcome.error or ["", "", ""]), stats)


def pack_result(record: TaskRecord, value: Any, boundary: Callable[[], None]) -> bytes | None:
    """A task's result packed in its greenlet; a big one (`payloads.is_big`) a block at a
    time with `boundary()` (a record boundary) after each; a kept one as `kept.pack_kept`
    packs it. None leaves it to the report, which names what cannot be encoded.

    Discussion: packed by the hub after the task ended, the demo's kept partition state
    (248 KB) took one call of ~4 ms, ~9 ms on a loaded machine, during which no stream
    task could start here: the task had ended, so there was nothing to suspend. Packed in
    the task, a suspend parks it between blocks like any other record boundary.
    """
    try:
        if record.keep:
            return kept.pack_kept(value, boundary)
        return payloads.pack_payload(value, "finished.result", boundary)
    except p.EncodeError:  # (both turn msgpack's errors into it)
        return None  # packed again by the report, which says what is wrong


def _kept_report(
    record: TaskRecord,
    outcome: Outcome,
    stats: dict[str, Any],
    keep_result: Callable[[str, bytes], bytes] | None,
) -> p.Message:
    """`finished` with the reference of the result kept here (runtime/kept.py), or `failed`
    saying why it cannot be kept."""
    task_id, attempt = record.task_id, record.attempt
    try:
        payload = outcome.payload if outcome.payload is not None else kept.pack_kept(outcome.value)
    except p.EncodeError as exc:
        problem = f"the task's result cannot be kept: {exc}".replace("args[0]", "result")
        return p.Failed(task_id, attempt, "EncodeError", problem, "", stats)
    if keep_result is None:
        problem = "this executor has no spool to keep results in"
        return p.Failed(task_id, attempt, "DataUnavailable", problem, "", stats)
    try:
        reference = keep_result(task_id, payload)
    except Exception as exc:  # a full spool, a data server that cannot bind: the task's
        problem = f"the task's result ({len(payload):,} bytes) could not be kept: {exc}"
        return p.Failed(task_id, attempt, type(exc).__name__, problem, "", stats)
    return p.Finished(task_id, attempt, reference, {**stats, "kept_bytes": len(payload)})


@dataclass(eq=False, slots=True)
class TaskRecord:
    """The kernel's live record of one task."""

    task_id: str
    fn: Callable[..., Any] | FunctionRef
    args: list[Any]
    kwargs: dict[str, Any]
    attempt: int
    priority: str
    payload: bytes | None = None  # the packed [args, kwargs], unpacked when it starts
    state: RunState = RunState.QUEUED
    keep: bool = False  # keep the result here (`launch.keep`, runtime/kept.py)
    inputs: list[Any] | None = None  # other tasks' kept results to put in its call
    glet: greenlet.greenlet | None = None
    suspensions: int = 0
    records: int = 0
    running_ns: int = 0
    suspended_ns: int = 0
    switched_in_at: int = 0
    gate_mark: int = 0  # gate.records when the task was last switched in
    suspended_at: int = 0
    resume_started_at: int = 0  # non-zero while a resumption is in flight
    kill_requested: bool = False
    # How many suspensions it may have here, for any reason, and still be parked for a
    # lane's stream task (`launch.suspensions_left`, runtime/lanes.py); None: never.
    suspensions_left: int | None = None
    # Set by `fail`: [error_type, message, ""] reported instead of `killed` once it unwinds.
    fail_error: list[str] | None = None
    # With a memory probe: the growth of the RSS while this task ran (its memory estimate),
    # and the RSS when it was last switched in.
    memory_bytes: int = 0
    rss_mark: int = 0
    # A chunk's subtasks not started yet: [task_id, payload] (or [task_id, args, kwargs]).
    chunk: deque[list[Any]] | None = None
    running_subtask: str | None = None  # a chunk: the subtask it is running
    # A chunk's subtasks whose results have not been emitted yet (an ordered set), for a
    # hello to a scheduler that lost track of the chunk (`Kernel.holdings`).
    unreported: dict[str, None] | None = None
    # A span chunk (a range of a bulk job): `chunk` holds bare payloads, and this where
    # they are in the job.
    span: Span | None = None

    def stats(self, executor_id: str, now: int) -> dict[str, Any]:
        """The `stats` of this task's final report."""
        return {
            "executor_id": executor_id,
            "running_ns": self.running_ns,
            "suspended_ns": self.suspended_ns,
            "suspensions": self.suspensions,
            "records": self.records,
            "finished_at_ns": now,
        }


@dataclass(slots=True)
class Command:
    """A command queued by a `Kernel` method (from any thread) for the hub to apply."""

    op: str  # "launch" | "suspend" | "resume" | "kill" | "fail" | "steal" | "stop" | "flush"
    # | "take" (a lane's stream task, runtime/lanes.py)
    task_id: str
    queued_at: int
    record: TaskRecord | None = None
    count: int = 0  # steal only: how many subtasks
    error: list[str] | None = None  # fail only: [error_type, message, traceback]
    # take only: the client's token, its submit, and whether it came by a second lane
    lane: tuple[str, bytes, bool] | None = None
    # suspend only: settled by either the hub (taken) or the watchdog (cancelled, because
    # no record boundary came in time), never both (`PendingSuspends`).
    taken: bool = False
    cancelled: bool = False


# The longest suspend timeout allowed: the scheduler counts an executor busy when a
# suspension goes unanswered for 150 ms (scheduler/records/busy.py, SUSPEND_OVERDUE_NS); the
# watchdog (`PendingSuspends`, polled every 5 ms) must answer before that, with room for a
# loaded machine.
MAX_SUSPEND_TIMEOUT_NS = 125_000_000


def suspend_timeout_problem(timeout_ns: int) -> str | None:
    """Why `timeout_ns` cannot be an executor's suspend timeout, or None."""
    if 0 < timeout_ns <= MAX_SUSPEND_TIMEOUT_NS:
        return None
    return (
        f"the suspend timeout must be > 0 and <= {MAX_SUSPEND_TIMEOUT_NS / 1e6:g} ms, not "
        f"{timeout_ns / 1e6:g} (the scheduler counts an executor busy when a suspension goes "
        "unanswered for 150 ms)"
    )


class PendingSuspends:
    """Suspend commands that wait for the running task's next record boundary, shared by
    the thread that asks, the hub that applies them and the watchdog that gives up on them
    (the executor's listener); each is settled once, by the hub (taken) or the watchdog
    (cancelled), under one lock."""

    def __init__(self, timeout_ns: int) -> None:
        self.timeout_ns = timeout_ns
        self._lock = threading.Lock()
        self._waiting: dict[str, Command] = {}

    def __bool__(self) -> bool:
        return bool(self._waiting)

    def add(self, command: Command) -> None:
        with self._lock:
            self._waiting[command.task_id] = command

    def take(self, command: Command) -> bool:
        """The hub applies `command`: False if the watchdog gave up on it already."""
        with self._lock:
            if command.cancelled:
                return False
            command.taken = True
            if self._waiting.get(command.task_id) is command:
                del self._waiting[command.task_id]
            return True

    def overdue(self, now: int, running: TaskRecord | None) -> list[p.SuspendFailed]:
        """Give up on the commands not taken within the timeout: the report of each, which
        blames the `running` task (busy without a record boundary)."""
        busy = f"task {running.task_id}" if running is not None else "the running task"
        given_up = []
        with self._lock:
            for task_id, command in list(self._waiting.items()):
                waited = now - command.queued_at
                if not command.taken and waited >= self.timeout_ns:
                    command.cancelled = True
                    del self._waiting[task_id]
                    why = (
                        f"no record boundary reached within {waited / 1e6:.1f} ms: {busy} "
                        "is busy in code that neither consumes a gated input nor yields"
                    )
                    given_up.append(p.SuspendFailed(task_id, why, waited))
        return given_up


@dataclass(frozen=True)
class KernelStatistics:
    """Counts of a kernel's tasks by state (`Kernel.statistics()`)."""

    running: int
    suspended: int
    queued: int
    finished: int


class ReadyQueue:
    """Tasks waiting for the slot, in the order they get it.

    Stream launches first (a stream task exists to take the slot at once, even when batch
    work was already queued here), then resumed tasks (a task the scheduler resumed must not
    wait behind new batch work), then batch launches; first in, first out within each.
    """

    def __init__(self) -> None:
        self._stream: deque[TaskRecord] = deque()
        self._resumed: deque[TaskRecord] = deque()
        self._batch: deque[TaskRecord] = deque()

    def __bool__(self) -> bool:
        return bool(self._stream or self._resumed or self._batch)

    def add_launch(self, record: TaskRecord) -> None:
        (self._stream if record.priority == PRIORITY_CLASSES[0] else self._batch).append(record)

    def add_resumed(self, record: TaskRecord) -> None:
        self._resumed.append(record)

    def stream_waiting(self) -> bool:
        return bool(self._stream)

    def pop(self) -> TaskRecord:
        for queue_ in (self._stream, self._resumed, self._batch):
            if queue_:
                return queue_.popleft()
        raise IndexError("no task is ready")

    def discard(self, record: TaskRecord) -> None:
        for queue_ in (self._stream, self._resumed, self._batch):
            if record in queue_:
                queue_.remove(record)
                return


def admit_launch(
    tasks: dict[str, TaskRecord], ready: ReadyQueue, record: TaskRecord
) -> tuple[str, TaskRecord | None] | None:
    """Admit launched `record`: None if the hub may queue it, else why not and the task
    here it clashes with. A newer attempt of a task queued here and not started replaces
    it (dropped from `ready` here): the scheduler gave the old one up (it may have reached
    us late, behind a reconnect)."""
    if record.priority not in PRIORITY_CLASSES:
        return f"unknown priority {record.priority!r} (use {' or '.join(PRIORITY_CLASSES)})", None
    existing = tasks.get(record.task_id)
    if (
        existing is not None
        and existing.state is RunState.QUEUED
        and record.attempt > existing.attempt
    ):
        ready.discard(existing)
        existing = None
    if existing is not None:
        return "a task with this id is already here", existing
    return None


class TaskGreenlets:
    """The greenlets tasks run in, each used again for task after task.

    A greenlet's body (`Kernel._run_tasks`) runs a task, hands its outcome to the hub, and
    waits there for the next; a task that parks keeps its greenlet until it ends. At most
    MAX_IDLE wait between tasks; more are dropped (greenlet ends a dropped one by raising
    GreenletExit at the switch where it waits).

    Discussion: making a greenlet and running it to its end cost ~13 us on this project's
    VMs, a switch into a waiting one and back ~0.9 us: a fifth of an executor's cost of a
    no-op task (docs/notes.md, eighth session). Each task still starts in an empty
    `contextvars` context, as in a greenlet of its own: what one task set is not seen by
    the next.
    """

    # Enough for the tasks that end between two that start (one, as a rule; more after a
    # run of suspended tasks ends); the rest go, ~13 us each to make again.
    MAX_IDLE = 8

    def __init__(self, body: Callable[[Any], Any]) -> None:
        self._body = body
        self._idle: list[greenlet.greenlet] = []

    def take(self, hub: greenlet.greenlet) -> greenlet.greenlet:
        """A greenlet for a task about to start, its parent `hub`."""
        if self._idle:
            glet = self._idle.pop()
            if glet.parent is hub:
                return glet
        return greenlet.greenlet(self._body, parent=hub)

    def give_back(self, glet: greenlet.greenlet | None) -> None:
        """A task's greenlet once the task ended (it waits in the body for the next),
        without the task's context: its contextvars and `tidal_context` go now."""
        if glet is not None and not glet.dead and len(self._idle) < self.MAX_IDLE:
            glet.gr_context = None  # the next task starts in an empty one
            glet.tidal_context = None
            self._idle.append(glet)


# ---- snapshots of the task table, for other threads -------------------------------------------


@dataclass(slots=True)
class Span:
    """Where a span chunk's subtasks are in their bulk job: task `f"{job_id}/{i}"` for i in
    [reported, end) not reported yet, `next` the first not started (the chunk's head)."""

    job_id: str
    next: int
    reported: int
    end: int
    # The batch being filled (results of tasks [reported, next)), and when it began.
    values: list[Any] = field(default_factory=list)
    errors: list[list[Any]] = field(default_factory=list)
    big: bool = False  # a value of DATA_MIN_BYTES or more is among `values`
    batch_started: int = 0
    # A run of calls under way (Kernel._run_calls): their results so far, from task `next`.
    run: list[Any] | None = None
    run_errors: dict[int, list[str]] = field(default_factory=dict)  # by offset in `run`
    quick: Any = None  # the run's QuickCalls (its packer)
    run_xs: list[Any] | None = None  # the run's arguments, from task `run_first`
    run_first: int = 0
    # A columnar launch's xs (runtime/columns.py); its chunk then holds the positions in
    # the launch of the tasks not started, not payloads.
    columns: LaunchColumns | None = None

    def unstarted_in_run(self) -> int:
        """How many of the run's calls have not started (the task parked between two)."""
        if self.run is None or self.run_xs is None:
            return 0
        consumed = self.next - self.run_first + len(self.run)  # the calls that ended
        return max(0, len(self.run_xs) - consumed)

    def give_up_in_run(self, count: int) -> None:
        """Drop the last `count` of the run's calls, not started (a steal): iterating a
        list stops at its current end, so the run ends before them."""
        if count > 0:
            del self.run_xs[len(self.run_xs) - count :]

    def running(self) -> int | None:
        """The index of the task running now (or last started), None if none since the
        last report."""
        run = self.run
        if run is not None:
            return self.next + len(run)
        return self.next - 1 if self.next > self.reported else None

    def ids(self, start: int, stop: int) -> list[str]:
        """The ids of its job's tasks [start, stop)."""
        return [f"{self.job_id}/{i}" for i in range(start, stop)]


def holdings(tasks: dict[str, TaskRecord]) -> list[list[Any]]:
    """The tasks not done, as `hello.holding` lists them: `[task_id, attempt, state,
    detail]`, detail the unreported subtask ids of a chunk (else None)."""
    held = []
    for record in list(tasks.values()):
        state = record.state  # read once: the hub may change it meanwhile
        if state is not RunState.DONE:
            unreported, span = record.unreported, record.span
            if span is not None:
                detail = span.ids(span.reported, span.end)
            else:
                detail = None if unreported is None else list(unreported)
            held.append([record.task_id, record.attempt, state.value, detail])
    return held


def memory_estimates(
    tasks: dict[str, TaskRecord], current: TaskRecord | None, rss: int
) -> dict[str, int]:
    """Each started task's memory estimate in bytes (task id -> bytes), the running task's
    (`current`) including its growth since it was switched in (`rss` is the RSS now). The
    figures of a task switching at that moment may be a switch out of date."""
    estimates = {}
    for record in list(tasks.values()):
        if record.glet is None:
            continue  # not started: it holds its packed payload only
        estimate = record.memory_bytes
        if record is current and record.state is RunState.RUNNING:
            estimate += rss - record.rss_mark
        estimates[record.task_id] = estimate
    return estimates


def task_progress(
    tasks: dict[str, TaskRecord], current: TaskRecord | None, gate_records: int, now: int
) -> dict[str, list[int]]:
    """Each started task's `[running_ns, records]` in this attempt so far (a heartbeat's
    `task_records`): the running task's (`current`) up to `now`, with the records the gate
    handed out since it was switched in (`gate_records`: the gate's count now). Read from
    another thread, as memory_estimates: the figures of a task switching at that moment may
    be a switch out of date (the scheduler takes their ratio, a record's length)."""
    progress = {}
    for record in list(tasks.values()):
        if record.glet is None or record.state is RunState.DONE:
            continue  # not started (no records yet), or its end reports its figures
        running_ns, records = record.running_ns, record.records
        if record is current and record.state is RunState.RUNNING:
            running_ns += max(0, now - record.switched_in_at)
            records += max(0, gate_records - record.gate_mark)
        progress[record.task_id] = [running_ns, records]
    return progress


def memory_failure(
    record: TaskRecord, error_type: str, message: str, executor_id: str, now: int
) -> p.Failed | p.ChunkResults | p.ChunkBatch | None:
    """The report that fails a task which cannot be stopped, for an executor that exits
    instead (the task keeps running until the process ends). For a chunk: the failure of
    the subtask it is running, if any (its other subtasks go back to the scheduler's queue
    when the executor leaves)."""
    error = [error_type, message, ""]
    span = record.span
    if span is not None:
        running = span.running()
        if running is None:
            return None
        return p.ChunkBatch(record.task_id, span.job_id, running, [None], [[running, error]], 0)
    if record.chunk is not None:
        subtask = record.running_subtask
        if subtask is None:
            return None
        return p.ChunkResults(record.task_id, [[subtask, "failed", None, error, {}]])
    return p.Failed(record.task_id, record.attempt, *error, record.stats(executor_id, now))


def statistics(tasks: dict[str, TaskRecord], finished: int) -> KernelStatistics:
    """Counts of tasks by state, and `finished`."""
    states = [r.state for r in list(tasks.values())]
    return KernelStatistics(
        running=states.count(RunState.RUNNING),
        suspended=states.count(RunState.SUSPENDED) + states.count(RunState.RESUMING),
        queued=states.count(RunState.QUEUED),
        finished=finished,
    )

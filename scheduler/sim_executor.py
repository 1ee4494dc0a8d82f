"""The simulation's clock and its executors: an `EventLoop` and the `SimExecutor`s it runs.

`EventLoop` is a fake clock with a heap of actions in time order; `SimExecutor` plays one
executor on it, following runtime/kernel.py's single slot, ready order and record
boundaries, and talks to the scheduler only through the messages it is handed and emits.
Neither knows the scheduler core: scheduler/sim.py builds a cluster of them around it, and
its docstring describes the model they follow.

Chunks follow the kernel's `launch_chunk`, `_run_chunk` and `steal`: a chunk is one entry in
the ready order whose work is its subtasks, run one after the other. Between two subtasks is
a suspension point: the results so far go out there when a command waits (before the hub
applies it), and in any case every CHUNK_REPORT_EVERY subtasks (SPAN_REPORT_EVERY for a span
chunk) or CHUNK_REPORT_NS; a command can also reach the hub at a record boundary inside a
subtask, which then parks half done without reporting (as in the kernel, whose record gate
parks the subtask where it is). A steal takes not-started subtasks from the end of the
chunk, in the hub, so never one that has started; a kill reports the subtasks that completed
before it reports Killed.

Record boundaries and memory. A command that arrives while a task runs waits for the
task's next record boundary (its records are `record_ns` long, its own or the executor's),
then `suspend_latency_ns` for the hub: a task of coarse records is slow to suspend. A task
holds its `memory_bytes` from its first start until it ends, suspended or not (Neptune's
and Tidal's parked tasks keep their state). With `memory_limit_bytes`, the executor guards
its limit as runtime/memory.py does: when a start takes it over (its `base_rss_bytes` plus
what its tasks hold), the task that just started pays if it holds memory, else the largest
suspended one; the chosen task fails with MemoryLimitExceeded at the running task's next
record boundary and is not retried. Chunks hold no memory here.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tidal.runtime import payloads
from tidal.runtime import protocol as p
from tidal.runtime.spanrun import CHUNK_REPORT_EVERY, CHUNK_REPORT_NS, SPAN_REPORT_EVERY

__all__ = ["EventLoop", "ExecutorTask", "SimExecutor"]

# Discussion: measured on this machine (docs/notes.md): a parked task's hub regains control
# ~50 us after the task reaches a record boundary; records take ~1 ms, so a command waits
# ~0.5 ms for the boundary on average. SimCluster takes both as what-if knobs (scheduler/
# sim.py, beside its other defaults), and a job may have records of its own length.
DEFAULT_SUSPEND_LATENCY_S = 0.00005
DEFAULT_RECORD_S = 0.001
# A simulated task computes nothing: its result, as every result travels, is a payload (the
# packed nil), which the scheduler forwards unopened.
NIL = payloads.pack_payload(None)
# The error type a task failed for the memory limit reports (runtime/executor.py's).
MEMORY_LIMIT_EXCEEDED = "MemoryLimitExceeded"


def _ns(seconds: float) -> int:
    return round(seconds * 1e9)


# ---- the event loop ---------------------------------------------------------------------


class EventLoop:
    """A fake clock and a heap of (time_ns, seq, action, args); `now` is the current time."""

    __slots__ = ("_heap", "_seq", "now")

    def __init__(self) -> None:
        self.now = 0
        self._heap: list[tuple[int, int, Callable[..., Any], tuple[Any, ...]]] = []
        self._seq = 0

    def at(self, time_ns: int, action: Callable[..., Any], *args: Any) -> None:
        """Run `action(*args)` at `time_ns` (not before now)."""
        if time_ns < self.now:
            raise ValueError(f"cannot schedule at {time_ns} ns: the clock is at {self.now} ns")
        self._seq += 1
        heapq.heappush(self._heap, (time_ns, self._seq, action, args))

    def after(self, delay_ns: int, action: Callable[..., Any], *args: Any) -> None:
        """Run `action(*args)` `delay_ns` from now."""
        self.at(self.now + delay_ns, action, *args)

    def next_time(self) -> int | None:
        """When the next action is due, or None if nothing is scheduled."""
        return self._heap[0][0] if self._heap else None

    def step(self) -> None:
        """Advance the clock to the next action and run it."""
        self.now, _, action, args = heapq.heappop(self._heap)
        action(*args)

    def run(self, until_ns: int | None = None) -> None:
        """Run actions until none is left, or until the next is due after `until_ns`."""
        while self._heap and (until_ns is None or self._heap[0][0] <= until_ns):
            self.step()


# ---- the simulated executor ---------------------------------------------------------------

# Record states, as in runtime/runstate.py (RunState values).
QUEUED, RUNNING, SUSPENDED, RESUMING = "queued", "running", "suspended", "resuming"


@dataclass(eq=False, slots=True)
class ExecutorTask:
    """A simulated executor's record of one task attempt (the kernel's TaskRecord)."""

    task_id: str
    attempt: int
    priority: str
    work_ns: int  # running time the task needs in total
    record_ns: int = 0  # its records' length (0: the executor's)
    memory_bytes: int = 0  # what it holds from its first start until it ends
    state: str = QUEUED
    started: bool = False  # has it ever run (the kernel: has it a greenlet)
    done_ns: int = 0  # running time so far in this attempt
    run_since: int = 0  # when it last took the slot
    suspended_at: int = 0
    suspended_ns: int = 0
    suspensions: int = 0
    suspend_wait_ns: int = 0  # its last suspension: command arrived -> parked
    token: int = 0  # bumped whenever it leaves the slot: its completion event goes stale
    # A chunk only (None otherwise): its subtasks not started yet, in the order they run,
    # the one started and not done (it holds its own done_ns and run_since), and the
    # results not reported yet ([task_id, outcome, value, error, stats], as on the wire).
    subtasks: NotStarted | None = None
    sub: ExecutorTask | None = None
    # Result items; a span chunk's are the subtasks' running times only.
    results: list[Any] | None = None
    flushed_at: int = 0  # when its results last went out (or it started)
    # A span chunk (a range of a bulk job): [job_id, the index of its first unreported].
    span: list[Any] | None = None


class NotStarted:
    """A chunk's subtasks not started yet, in the order they run: each gets its record only
    when it starts or is stolen (`popleft`, `pop`).

    Discussion: made all at launch, a span's 4,096 records were young objects the garbage
    collector walked at every young collection (~3 ms each in `bench scale`, on the core's
    loop, whose own young objects take a few microseconds)."""

    __slots__ = ("_head", "_ids", "_make", "_tail", "_work")

    def __init__(
        self, ids: list[str], work_ns: list[int], make: Callable[[str, int], ExecutorTask]
    ) -> None:
        self._ids, self._work, self._make = ids, work_ns, make
        self._head, self._tail = 0, len(ids)

    def __len__(self) -> int:
        return self._tail - self._head

    def ids(self) -> list[str]:
        return self._ids[self._head : self._tail]

    def popleft(self) -> ExecutorTask:
        if self._head >= self._tail:
            raise IndexError("no subtask left")
        self._head += 1
        return self._make(self._ids[self._head - 1], self._work[self._head - 1])

    def pop(self) -> ExecutorTask:
        if self._head >= self._tail:
            raise IndexError("no subtask left")
        self._tail -= 1
        return self._make(self._ids[self._tail], self._work[self._tail])


class SimExecutor:
    """One simulated executor: a single slot and the kernel's ready order, on an EventLoop.

    `emit(message)` sends a report to the scheduler; `work_ns(task_id)` is the running time a
    launched task (or a chunk's subtask) needs; `on_event(event, record)` (optional) is told
    of every "started", "suspended", "resumed", "finished" and "killed", when it happens; for
    a chunk's subtasks, with the subtask's own record, of "subtask_started",
    "subtask_finished" and "stolen"; and of "failed" (the memory guard's). `task_profile(
    task_id)` (optional) gives a task's (record_ns, memory_bytes), 0 for the defaults.
    """

    def __init__(
        self,
        executor_id: str,
        node: str,
        loop: EventLoop,
        emit: Callable[[p.Message], None],
        work_ns: Callable[[str], int],
        *,
        suspend_latency_ns: int = _ns(DEFAULT_SUSPEND_LATENCY_S),
        record_ns: int = _ns(DEFAULT_RECORD_S),
        on_event: Callable[[str, ExecutorTask], None] | None = None,
        task_profile: Callable[[str], tuple[int, int]] | None = None,
        memory_limit_bytes: int | None = None,
        base_rss_bytes: int = 0,
    ) -> None:
        self.executor_id = executor_id
        self.node = node
        self.failed = False
        self.current: ExecutorTask | None = None
        self.records: dict[str, ExecutorTask] = {}
        self._loop = loop
        self._emit = emit
        self._work_ns = work_ns
        self._suspend_latency_ns = suspend_latency_ns
        self._record_ns = max(1, record_ns)
        self._on_event = on_event or (lambda event, record: None)
        self._task_profile = task_profile or (lambda task_id: (0, 0))
        self.memory_limit_bytes = memory_limit_bytes
        self.base_rss_bytes = base_rss_bytes
        self._guard_due = False  # a memory-limit failure is on its way to a boundary
        self._stream: deque[ExecutorTask] = deque()
        self._resumed: deque[ExecutorTask] = deque()
        self._batch: deque[ExecutorTask] = deque()
        self._inbox: list[tuple[int, p.Message]] = []  # (arrived at, command) awaiting a boundary
        self._boundary_due = False
        self._boundary_gen = 0  # bumped on every drain: an older boundary event goes stale
        self._commands: dict[type, Callable[[int, Any], None]] = {
            p.Launch: self._launch,
            p.LaunchChunk: self._launch_chunk,
            p.Steal: self._steal,
            p.Suspend: self._suspend,
            p.Resume: self._resume,
            p.Kill: self._kill,
        }

    # ---- the door: commands from the scheduler ---------------------------------------------

    def receive(self, message: p.Message) -> None:
        """A command from the scheduler arrives now."""
        if self.failed:
            return
        if type(message) not in self._commands:
            raise TypeError(
                "executors take launch, launch_chunk, suspend, resume, kill and steal, "
                f"not {message!r}"
            )
        if self.current is None:
            self._apply(self._loop.now, message)
            self._run_next()
            return
        # Discussion: the kernel's hub applies commands only when it holds control; a
        # running task hands it control at its next record boundary. Every command waiting
        # then is applied in arrival order, and the task carries on unless one stopped it.
        self._inbox.append((self._loop.now, message))
        if not self._boundary_due:
            self._boundary_due = True
            wait = self._to_boundary() + self._suspend_latency_ns
            self._loop.after(wait, self._boundary, self._boundary_gen)

    def fail(self) -> list[ExecutorTask]:
        """Go silent for good; return the records of the tasks that lived here."""
        if self.current is not None:
            self._leave_slot(self.current)
        lost = list(self.records.values())
        self.failed = True
        self.records.clear()
        for waiting in (self._stream, self._resumed, self._batch, self._inbox):
            waiting.clear()
        return lost

    def memory_held(self) -> int:
        """Bytes its tasks hold now: every task that has started here and not ended."""
        return sum(r.memory_bytes for r in self.records.values() if r.started)

    def task_memory(self) -> dict[str, int]:
        """Each started task's memory (a heartbeat's `task_memory`, sent with a limit)."""
        return {r.task_id: r.memory_bytes for r in self.records.values() if r.started}

    def task_records(self) -> dict[str, list[int]]:
        """Each started task's [running_ns, records] in this attempt so far (a heartbeat's
        `task_records`), the running one's up to now: as the kernel's task records count."""
        now = self._loop.now
        progress = {}
        for record in self.records.values():
            if record.started:
                done = record.done_ns
                if record is self.current:
                    done += now - record.run_since
                progress[record.task_id] = [done, done // (record.record_ns or self._record_ns)]
        return progress

    def counts(self) -> tuple[int, int, int]:
        """(running, suspended, queued), as the kernel's statistics count them."""
        states = [record.state for record in self.records.values()]
        suspended = states.count(SUSPENDED) + states.count(RESUMING)
        return (int(self.current is not None), suspended, states.count(QUEUED))

    # ---- the hub ----------------------------------------------------------------------------

    def _to_boundary(self, after_one: bool = False) -> int:
        """Nanoseconds until the running task (a chunk: its subtask) reaches its next record
        boundary: 0 if it is at one now, unless `after_one` (then at least a record on)."""
        running = self.current
        if running is None:
            return 0
        if running.subtasks is not None:
            if running.sub is None:
                return 0  # between two subtasks: a suspension point
            running = running.sub
        record_ns = running.record_ns or self._record_ns
        done = running.done_ns + self._loop.now - running.run_since
        wait = -done % record_ns
        return record_ns if after_one and wait == 0 else wait

    def _boundary(self, gen: int) -> None:
        """The running task reached a record boundary: apply what waits, pick who runs."""
        if self.failed or gen != self._boundary_gen:
            return
        self._drain()
        self._run_next()

    def _drain(self) -> None:
        self._boundary_due = False
        self._boundary_gen += 1
        commands, self._inbox = self._inbox, []
        for arrived, message in commands:
            self._apply(arrived, message)

    def _apply(self, arrived: int, message: p.Message) -> None:
        self._commands[type(message)](arrived, message)

    def _run_next(self) -> None:
        if self.current is not None or self.failed:
            return
        for ready in (self._stream, self._resumed, self._batch):
            if ready:
                record = ready.popleft()
                break
        else:
            return
        now = self._loop.now
        if record.state == QUEUED:
            record.started = True
            record.state = RUNNING
            record.flushed_at = now
            self._emit(p.Started(record.task_id, record.attempt, now))
            self._on_event("started", record)
            grew = record.memory_bytes > 0
        else:
            record.suspended_ns += now - record.suspended_at
            record.state = RUNNING
            self._emit(p.Resumed(record.task_id, 0, now))
            self._on_event("resumed", record)
            grew = False
        record.run_since = now
        self.current = record
        if record.subtasks is None:
            self._loop.at(now + record.work_ns - record.done_ns, self._finish, record, record.token)
        else:
            self._run_chunk(record)
        if grew:
            self._check_memory()

    def _finish(self, record: ExecutorTask, token: int) -> None:
        if self.failed or record.token != token:
            return  # it left the slot since this was scheduled
        self._end(record)

    def _end(self, record: ExecutorTask) -> None:
        """The task (or chunk) in the slot has done its work: it leaves, and reports."""
        self._leave_slot(record)
        del self.records[record.task_id]
        self._on_event("finished", record)
        self._emit(p.Finished(record.task_id, record.attempt, NIL, self._stats(record)))
        # As in the kernel: the finished task reports, then the hub drains its commands.
        self._drain()
        self._run_next()

    def _leave_slot(self, record: ExecutorTask) -> None:
        now = self._loop.now
        record.done_ns += now - record.run_since
        if record.sub is not None:  # a chunk that leaves the slot inside a subtask
            record.sub.done_ns += now - record.sub.run_since
        record.token += 1
        self.current = None

    # ---- the memory guard -------------------------------------------------------------------

    def _check_memory(self) -> None:
        """A task started holding memory: if the executor is over its limit now, the guard
        fails a task at the running task's next record boundary (runtime/memory.py)."""
        limit = self.memory_limit_bytes
        if limit is None or self._guard_due or self.base_rss_bytes + self.memory_held() <= limit:
            return
        self._guard_due = True
        wait = self._to_boundary(after_one=True) + self._suspend_latency_ns
        self._loop.after(wait, self._guard)

    def _guard(self) -> None:
        self._guard_due = False
        limit = self.memory_limit_bytes
        if self.failed or limit is None:
            return
        held = self.base_rss_bytes + self.memory_held()
        if held <= limit:
            return  # a task ended meanwhile
        # The rule: the running task if it holds memory (its allocations brought the
        # executor over), else the largest suspended one. With neither, the real executor
        # collects garbage and exits if still over: not modelled (no task here holds any).
        running = self.current
        if running is not None and running.subtasks is None and running.memory_bytes > 0:
            victim = running
        else:
            parked = [r for r in self.records.values() if r.state == SUSPENDED]
            if not parked:
                return
            victim = max(parked, key=lambda r: r.memory_bytes)
        del self.records[victim.task_id]
        if victim is self.current:
            self._leave_slot(victim)
        self._on_event("failed", victim)
        message = f"the executor held {held} bytes, over its memory limit of {limit}"
        stats = self._stats(victim)
        self._emit(
            p.Failed(victim.task_id, victim.attempt, MEMORY_LIMIT_EXCEEDED, message, "", stats)
        )
        # The guard acted at a record boundary: the hub holds control, as at any boundary.
        self._drain()
        self._run_next()
        self._check_memory()

    # ---- chunks -------------------------------------------------------------------------------

    def _run_chunk(self, record: ExecutorTask) -> None:
        """The chunk holds the slot: carry on with its subtask, or start the next one."""
        now = self._loop.now
        assert record.subtasks is not None
        sub = record.sub
        if sub is None:
            if not record.subtasks:
                self._end_chunk(record)
                return
            sub = record.sub = record.subtasks.popleft()
            sub.started = True
            sub.state = RUNNING
            self._on_event("subtask_started", sub)
        sub.run_since = now
        self._loop.at(now + sub.work_ns - sub.done_ns, self._subtask_end, record, record.token)

    def _subtask_end(self, record: ExecutorTask, token: int) -> None:
        if self.failed or record.token != token:
            return  # the chunk left the slot since this was scheduled
        assert record.sub is not None and record.results is not None
        now = self._loop.now
        sub, record.sub = record.sub, None
        sub.done_ns += now - sub.run_since
        if record.span is None:
            record.results.append([sub.task_id, "finished", NIL, None, {"running_ns": sub.done_ns}])
        else:
            record.results.append(sub.done_ns)
        self._on_event("subtask_finished", sub)
        waiting = bool(self._inbox)  # the kernel's gate is raised
        if (
            waiting
            or len(record.results)
            >= (CHUNK_REPORT_EVERY if record.span is None else SPAN_REPORT_EVERY)
            or now - record.flushed_at >= CHUNK_REPORT_NS
        ):
            self._report_results(record)  # before parking too: these are done whatever comes
            record.flushed_at = now
            if waiting:  # a suspension point between subtasks: the hub applies what waits
                self._drain()
                if self.current is not record:  # suspended or killed there
                    self._run_next()
                    return
        self._run_chunk(record)

    def _end_chunk(self, record: ExecutorTask) -> None:
        """No subtask left: report what is unreported, then the chunk's end (as `_finish`)."""
        self._report_results(record)
        self._end(record)

    def _report_results(self, record: ExecutorTask) -> None:
        if record.results:
            items, record.results = record.results, []
            if record.span is None:
                self._emit(p.ChunkResults(record.task_id, items))
                return
            job_id, start = record.span
            record.span[1] += len(items)
            values = payloads.pack_batch([NIL] * len(items))  # packed, as the kernel sends it
            batch = p.ChunkBatch(record.task_id, job_id, start, values, [], sum(items))
            self._emit(batch)

    def _launch_queue(self, record: ExecutorTask) -> deque[ExecutorTask]:
        """The ready queue a launched (not resumed) task waits in: its priority class's."""
        return self._stream if record.priority == "stream" else self._batch

    def _discard(self, record: ExecutorTask) -> None:
        """Take a task that does not hold the slot out of the ready queue it waits in."""
        if record.state == RESUMING:
            self._resumed.remove(record)
        elif record.state == QUEUED:
            self._launch_queue(record).remove(record)

    def _stats(self, record: ExecutorTask) -> dict[str, Any]:
        return {
            "executor_id": self.executor_id,
            "running_ns": record.done_ns,
            "suspended_ns": record.suspended_ns,
            "suspensions": record.suspensions,
            "records": record.done_ns // (record.record_ns or self._record_ns),
            "finished_at_ns": self._loop.now,
        }

    # ---- commands ---------------------------------------------------------------------------

    def _refuse_launch(self, task_id: str, priority: str) -> bool:
        """Refuse a launch (or a chunk's) the kernel would refuse; True if it was refused."""
        if priority not in p.PRIORITY_CLASSES:
            reason = f"unknown priority {priority!r} (use stream or batch)"
        elif task_id in self.records:
            reason = f"a task with this id is already here ({self.records[task_id].state})"
        else:
            return False
        self._emit(p.Refused("launch", task_id, reason))
        return True

    def _queue_launched(self, record: ExecutorTask, sent_ns: int) -> None:
        self.records[record.task_id] = record
        self._launch_queue(record).append(record)
        self._emit(p.Received([[record.task_id, record.attempt, sent_ns]]))

    def _launch(self, arrived: int, msg: p.Launch) -> None:
        if self._refuse_launch(msg.task_id, msg.priority):
            return
        work_ns = self._work_ns(msg.task_id)
        record_ns, memory_bytes = self._task_profile(msg.task_id)
        record = ExecutorTask(msg.task_id, msg.attempt, msg.priority, work_ns, record_ns)
        record.memory_bytes = memory_bytes
        self._queue_launched(record, msg.sent_ns)

    def _launch_chunk(self, arrived: int, msg: p.LaunchChunk) -> None:
        if self._refuse_launch(msg.chunk_id, msg.priority):
            return
        if msg.span is None:
            ids = [entry[0] for entry in msg.subtasks]
        else:  # a range of a bulk job: bare payloads, or columns (their count first)
            job_id, first = msg.span
            count = len(msg.subtasks) if msg.columns is None else msg.columns[0]
            ids = [f"{job_id}/{i}" for i in range(first, first + count)]
        work = [self._work_ns(task_id) for task_id in ids]
        attempt, priority = msg.attempt, msg.priority
        profile = self._task_profile
        subtasks = NotStarted(
            ids,
            work,
            lambda task_id, work_ns: ExecutorTask(
                task_id, attempt, priority, work_ns, profile(task_id)[0]
            ),
        )
        record = ExecutorTask(msg.chunk_id, msg.attempt, msg.priority, sum(work))
        record.subtasks, record.results = subtasks, []
        if msg.span is not None:
            record.span = list(msg.span)
        self._queue_launched(record, msg.sent_ns)

    def _steal(self, arrived: int, msg: p.Steal) -> None:
        # Atomic: only the hub runs now, and the running subtask has left the deque already.
        record = self.records.get(msg.chunk_id)
        taken: list[ExecutorTask] = []
        if record is not None and record.subtasks is not None:
            for _ in range(min(msg.count, len(record.subtasks))):
                taken.append(record.subtasks.pop())
            taken.reverse()
        for sub in taken:
            self._on_event("stolen", sub)
        self._emit(p.Stolen(msg.chunk_id, [sub.task_id for sub in taken]))

    def _suspend(self, arrived: int, msg: p.Suspend) -> None:
        record = self.records.get(msg.task_id)
        if record is None or record.state == SUSPENDED:
            state = record.state if record else "unknown here"
            self._emit(p.Refused("suspend", msg.task_id, f"task cannot be suspended ({state})"))
            return
        now = self._loop.now
        if record is self.current:
            self._leave_slot(record)  # parked at the boundary where the hub got control
        else:  # queued, or resumed but not running yet: it parks where it waits
            self._discard(record)
            if record.state == RESUMING:
                record.suspended_ns += now - record.suspended_at
        record.state = SUSPENDED
        record.suspensions += 1
        record.suspended_at = now
        records = record.done_ns // (record.record_ns or self._record_ns)
        record.suspend_wait_ns = max(0, now - arrived)
        self._emit(p.Suspended(record.task_id, record.suspend_wait_ns, records, now))
        self._on_event("suspended", record)

    def _resume(self, arrived: int, msg: p.Resume) -> None:
        record = self.records.get(msg.task_id)
        if record is None or record.state != SUSPENDED:
            state = record.state if record else "unknown here"
            self._emit(p.Refused("resume", msg.task_id, f"task is not suspended ({state})"))
        elif not record.started:  # suspended before it ever ran: queue it again as a launch
            record.suspended_ns += self._loop.now - record.suspended_at
            record.state = QUEUED
            self._launch_queue(record).append(record)
        else:
            record.state = RESUMING
            self._resumed.append(record)

    def _kill(self, arrived: int, msg: p.Kill) -> None:
        record = self.records.pop(msg.task_id, None)
        if record is None:
            self._emit(p.Refused("kill", msg.task_id, "task is not alive (unknown here)"))
            return
        if record is self.current:
            self._leave_slot(record)
        else:
            self._discard(record)
        if record.subtasks is not None:
            self._report_results(record)  # the subtasks that completed did complete
        self._on_event("killed", record)
        self._emit(p.Killed(record.task_id, record.attempt, self._stats(record)))

"""The scheduler's bookkeeping: the only code that changes its records.

`Records` holds the tables (scheduler/records/tables.py: executors, jobs, tasks, pending
queues, clients) and every step the scheduler takes on them: placing a launched task,
starting, suspending, resuming, killing, ending a task exactly once, requeueing what a lost
executor held, forming and ending chunks, adopting what an executor reports after a
restart. What a step sends goes into `out` (messages and notes, scheduler/events.py),
which the core hands back from `SchedulerCore.handle`.

Who uses it: the core (scheduler/core.py) decides and calls these steps; the chunk and
recovery code (scheduler/chunks.py, scheduler/recovery.py) works on the records through
them; policies never see a record, only the read-only views over them (scheduler/views.py).
Nothing here consults a policy: where a step leaves tasks pending again, it calls
`on_pending`, which the core set to ask its policy about them.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Collection
from typing import Any

from tidal.runtime import protocol as p
from tidal.runtime.columns import Columns, bulk_payloads
from tidal.runtime.lanes import lane_address
from tidal.runtime.logs import RateLimitedLog
from tidal.scheduler import events as ev
from tidal.scheduler.records import spans
from tidal.scheduler.records.busy import BusyBooks
from tidal.scheduler.records.chunked import ChunkBooks
from tidal.scheduler.records.lags import LagBook
from tidal.scheduler.records.lineage import Lineage
from tidal.scheduler.records.retire import Retirement
from tidal.scheduler.records.tables import (
    SLOT_STATES,
    ExecutorRecord,
    Job,
    PendingQueues,
    Task,
    TaskState,
    lane_suspensions,
    record_length,
    stat_count,
)

__all__ = ["MAX_LOST_EXECUTORS", "Records"]

log = logging.getLogger("tidal.scheduler")

# Lost executors kept for `status()`, the most recently lost; older records are forgotten, so
# that executors joining under ever-new ids (restarts, or a hostile peer) cost bounded memory.
MAX_LOST_EXECUTORS = 256
# Prefetch: keep about this much work queued on an executor behind its running task, so that
# tiny tasks are not throttled by one scheduler round trip each. Long tasks get no prefetch
# (a queued long task could not move to an idle executor).
# Discussion: 20 ms, not 2. A task's measured cost is its wall time on a busy machine (a
# no-op's `running_ns` is 60-370 us on two loaded cores), so 2 ms gave tiny tasks a queue of
# 2-6: each `finished` freed one place, and one launch went out a frame, one task a pass of
# the scheduler's loop. With 10 ms, and the refill waiting for half the queue
# (`offered_capacity`), launches and reports go ~10-20 to a frame: a `chunksize=1` map of
# no-ops ran 1.7x as fast, at 0.73x the CPU. At 10 ms (and at most 64) the queue still ran
# dry every ~12 tasks (an executor's reports wait up to 2 ms, runtime/reports.py, before
# the scheduler hears that the queue is half done); at 20 ms and at most 256, every ~18,
# and the map ran 1.08x as fast at 0.89x the CPU (docs/notes.md, eighth session).
PREFETCH_TARGET_NS = 20_000_000
# What a task costs an executor besides running it (decode, switch, report), for the estimate.
TASK_OVERHEAD_NS = 40_000


class Records(spans.BulkBooks, ChunkBooks, Retirement, Lineage, LagBook, BusyBooks):
    """The scheduler's tables and the bookkeeping on them; see the module docstring.

    `now` is the core's clock at the current step (the core sets it); `out` collects what
    the step sends and notes. `on_pending(tasks)` is called with tasks that became pending
    again (requeued), for the core to ask its policy about them.
    """

    def __init__(
        self,
        *,
        max_suspensions: int,
        max_retries: int,
        max_prefetch: int,
        clock_s: Callable[[], float],
        on_pending: Callable[[list[Task]], None] = lambda tasks: None,
        overdue_makes_busy: bool = True,
    ) -> None:
        self.max_suspensions = max_suspensions
        self.max_retries = max_retries
        self.max_prefetch = max_prefetch
        self.on_pending = on_pending
        self.now = 0
        self.executors: dict[str, ExecutorRecord] = {}
        self.jobs: dict[str, Job] = {}
        self.tasks: dict[str, Task] = {}
        # What comes before the last "/" in the ids of tasks submitted one by one (their
        # job ids, from Tidal's clients): no bulk job may take one as its id.
        self.id_prefixes: set[str] = set()
        self.clients: set[str] = set()
        # An executor joined, was lost, or went busy or back: the lanes clients know of
        # change (scheduler/lanes.py).
        self.lanes_changed = False
        self.lane_graves: dict[str, int] = {}  # gone stream jobs: until when (`bury`)
        self.pending = PendingQueues()
        self.out: list[ev.Instruction] = []
        self.restarts = 0  # schedulers that used the journal before this one
        # After a restart: executors known before it that have not said hello again, and
        # until when tasks no executor reported wait for one (scheduler/recovery.py).
        self.awaited: set[str] = set()
        self.reclaim_until: int | None = None
        self.steals_in_flight: dict[str, tuple[str, int]] = {}  # chunk id -> (thief, count)
        self.steal_count = 0
        # Warnings a peer's messages cause (a refused job, a lost executor): at most a few
        # lines per period, however fast a peer sends them.
        self.peer_warning = RateLimitedLog(log, clock=clock_s)
        self._service_ns: float | None = None  # smoothed cost of one batch task
        self._seq = 0
        self._requeue_seq = 0
        self._last_launch_ns = 0  # the last launch's sent_ns (`_launch_stamp`)
        self._lost: deque[ExecutorRecord] = deque()  # lost, still in `executors`, oldest first
        # Jobs to retire, and retired jobs' records that left their executors, at the end of
        # the step (scheduler/records/retire.py).
        self.retire_due: list[Job] = []
        # Stream sources' lag, per (client, source) (scheduler/records/lags.py).
        self.lags: dict[tuple[str, str], tuple[int, float | None, int]] = {}
        self.leaving: list[Task] = []
        # Suspensions' deadlines (scheduler/records/busy.py), kept if overdue makes busy.
        self.suspend_deadlines: list[tuple[int, int, str]] = []  # a heap
        self.overdue_makes_busy = overdue_makes_busy

    # ---- facts -----------------------------------------------------------------------------------

    def suspendable(self, task: Task) -> bool:
        """Whether a suspension of `task` could be honoured now: it holds its slot, under its
        cap, reaches record boundaries, and its executor is not busy (a suspend would wait
        there for the GIL as long as the executor stays silent)."""
        if (
            task.state not in SLOT_STATES
            or task.unsuspendable
            or task.suspensions >= task.job.max_suspensions
        ):
            return False
        executor = self.executors.get(task.executor_id or "")
        return executor is not None and not executor.busy

    def free_capacity(self, executor: ExecutorRecord) -> int:
        """How many more launches the core accepts on `executor` now (slot + prefetch)."""
        if not executor.alive or executor.busy:
            return 0
        load = (executor.slot_task is not None) + len(executor.queued)
        return max(0, 1 + self.prefetch_depth() - load)

    def offered_capacity(self, executor: ExecutorRecord, capacity: int | None = None) -> int:
        """The room policies are shown on `executor`: its free capacity, but none while it
        holds more than half of what it may (`capacity`, 1 + prefetch_depth(): given by a
        caller that asks for every executor), so that a refill goes out as one batch of
        launches rather than a launch per task ended.

        Discussion: by what it holds, not by whether its slot is taken: a queued task that
        starts and ends between two reports says only that it ended (its start folded,
        runtime/reports.py), so the books show the slot free while the queue runs."""
        if not executor.alive or executor.busy:
            return 0
        if capacity is None:
            capacity = 1 + self.prefetch_depth()
        room = capacity - (executor.slot_task is not None) - len(executor.queued)
        return room if 2 * room >= capacity else 0

    def prefetch_depth(self) -> int:
        """How many launches an executor may hold queued behind its slot now."""
        if self._service_ns is None:
            return 0
        return min(self.max_prefetch, int(PREFETCH_TARGET_NS // max(self._service_ns, 1.0)))

    def task_on(
        self, executor: ExecutorRecord, task_id: str, attempt: int | None = None
    ) -> Task | None:
        """The task a report is about, if it is live, on that executor and (if given) at that
        attempt; else None (a stale report)."""
        task = self.tasks.get(task_id)
        if task is None or task.state is TaskState.DONE:
            return None
        if task.state is TaskState.UNCLAIMED:
            # After a restart, before any executor claimed it: whoever ran it may report
            # how it ended (a report that crossed the executor's hello again).
            return task
        if task.executor_id != executor.executor_id:
            return None
        if attempt is not None and task.attempt != attempt:
            return None
        return task

    def unclaimed_count(self) -> int:
        """Tasks waiting, after a restart, for an executor to report them."""
        if self.reclaim_until is None:
            return 0
        return sum(t.state is TaskState.UNCLAIMED for t in self.tasks.values())

    # ---- what a step sends and notes ---------------------------------------------------------

    def send(self, executor: ExecutorRecord, message: p.Message, by_lane: bool = False) -> None:
        self.out.append(ev.ToExecutor(executor.executor_id, message, by_lane))

    def answer(self, client_id: str, message: p.Message) -> None:
        """Send `message` to a client (results only while it is connected)."""
        if isinstance(message, p.Results):
            self.to_client(client_id, message.items)
        else:
            self.out.append(ev.ToClient(client_id, message))

    def to_client(self, client_id: str, items: list[list[Any]]) -> None:
        if client_id in self.clients:
            self.out.append(ev.ToClient(client_id, p.Results(items)))

    def note(self, note: ev.Note) -> None:
        self.out.append(note)

    # ---- jobs and tasks ----------------------------------------------------------------------

    def next_seq(self) -> int:
        """A new arrival order number (`Task.seq`)."""
        self._seq += 1
        return self._seq

    def add_job(
        self,
        client_id: str,
        msg: p.Submit,
        *,
        skip: Collection[str] = (),
        pieces: bool = False,
        columns: Columns | None = None,
    ) -> list[Task]:
        """Record an accepted job and its tasks (but those in `skip`); return the tasks. A
        bulk job's tasks are its pieces if `pieces` (scheduler/records/spans.py), else records of
        their own (as a restarted scheduler restores them). `columns`: a columnar job's, if
        they were opened already (runtime/columns.py)."""
        cap = self.max_suspensions if msg.max_suspensions is None else msg.max_suspensions
        job = Job(
            msg.job_id,
            client_id,
            msg.priority,
            msg.order,
            cap,
            msg.fn,
            msg.main_path,
            msg.sent_ns,
            len(msg.tasks),
        )
        job.chunksize = (msg.options or {}).get("chunksize")
        job.keep = (msg.options or {}).get("keep") is True
        job.accepted_at = self.now
        self.jobs[job.job_id] = job
        if msg.bulk is not None:
            payloads = bulk_payloads(msg) if columns is None else columns
            job.total = len(payloads)
            return self.add_bulk_tasks(job, payloads, skip=skip, pieces=pieces)
        tasks = []
        for entry in msg.tasks:
            task_id, payload = entry[:2]
            if task_id in skip:
                continue
            options = entry[2] if len(entry) > 2 else {}
            self.id_prefixes.add(task_id.rpartition("/")[0])
            self._seq += 1
            task = Task(task_id, job, payload, self._seq, self.now)
            task.preferred = tuple(options.get("preferred", ()))
            self.enter(task)
            inputs = options.get("inputs")
            if inputs and all(entry[1] in self.tasks for entry in inputs):
                self.link_inputs(task, inputs)
            tasks.append(task)
        return tasks

    def submit(self, client_id: str, msg: p.Submit, columns: Columns | None = None) -> list[Task]:
        """Record an accepted job, its tasks pending; return them (`columns`: as add_job)."""
        tasks = self.add_job(client_id, msg, pieces=True, columns=columns)
        for task in tasks:
            self.admit(task)
        return tasks

    def complete(self, task: Task, outcome: str, value: Any, error: list[str] | None) -> None:
        """Finish a task exactly once, count it in its job, and tell its client.

        `value` is the result's payload as the executor sent it (nil unless finished).
        """
        job = task.job
        if task.recomputing:  # a kept result computed again: counted the first time
            self.recomputed(task, outcome, value, error)
            return
        if task.index >= 0:  # a bulk job's task: it may have ended with a batch meanwhile
            if job.ended[task.index]:
                task.state = TaskState.DONE
                return
            job.ended[task.index] = 1
        task.state = TaskState.DONE
        job.count_end(outcome)
        self.ended(job)
        first_start = task.first_started_at
        stats = {
            "executor_id": task.executor_id,
            "attempt": task.attempt,
            "suspensions": task.suspensions,
            "running_ns": task.running_ns,
            "suspended_ns": task.suspended_ns,
            "records": task.records,
            "work_lost_ns": task.work_lost_ns,
            "queued_ns": None if first_start is None else first_start - task.submitted_at,
            "started_at_ns": task.started_at_ns,
            "finished_at_ns": task.finished_at_ns,
        }
        if job.keep:  # where its result is kept, for a restart (scheduler/recovery.py)
            stats["kept_bytes"] = task.kept_bytes
        if not job.keep:  # a kept result may be computed again from them
            task.payload = b""  # its arguments are no longer needed here
        item = [task.task_id, outcome, value, error, stats]
        # Journaled before the result is sent.
        self.out.append(ev.TaskEnded(job.job_id, item, task.priority == "stream"))
        self.to_client(job.client_id, [item])
        self.task_ended(task, outcome, value, error)

    def settle(
        self,
        tasks: list[Task],
        *,
        error: list[str] | None = None,
        started: bool = True,
        lost_on: str | None = None,
    ) -> None:
        """End tasks that did not finish: cancelled if their client asked, failed with `error`
        if one is given, else queued again (a new attempt if `started`). With `lost_on`, they
        were lost with that executor: past `max_retries` such losses a task fails."""
        again = []
        for task in tasks:
            if lost_on is not None:
                self.count_loss(task, lost_on)
            if task.cancel_requested:
                self.complete(task, "cancelled", None, None)
            elif error is not None:
                self.complete(task, "failed", None, error)
            elif len(task.lost_on) > self.max_retries:
                losses = len(task.lost_on)
                message = (
                    f"task {task.task_id} lost its executor {losses} times "
                    f"({', '.join(task.lost_on)}); giving up (max_retries={self.max_retries})"
                )
                self.peer_warning(message)
                self.complete(task, "failed", None, ["ExecutorLost", message, ""])
            else:
                again.append(task)
        self.requeue(again, attempt=started)

    def count_loss(self, task: Task, executor_id: str) -> None:
        """`task` was lost with `executor_id`: counted toward `max_retries`, and journaled,
        so that a restart does not reset the count."""
        task.lost_on = [*task.lost_on, executor_id]  # a few at most (max_retries)
        self.note(ev.TaskLost(task.job.job_id, task.task_id, executor_id))

    def requeue(self, tasks: list[Task], *, attempt: bool = True) -> None:
        """Queue tasks again at the front of their class (a new attempt if `attempt`)."""
        if not tasks:
            return
        pending = []
        for task in reversed(tasks):  # pushed to the front, so keep their relative order
            task.executor_id = None
            task.suspensions = 0  # it starts from scratch: the cap applies afresh
            task.running_ns = task.suspended_ns = 0
            task.running_estimate_ns, task.running_since = 0, None
            task.requeue_on_kill = False
            if attempt:
                task.attempt += 1
            self._requeue_seq -= 1
            task.seq = self._requeue_seq
            task.chunk = None
            if self.admit(task, front=True):  # or waiting for an input computed again
                pending.append(task)
        if pending:
            self.on_pending(pending[::-1])

    def account(self, task: Task, stats: dict[str, Any]) -> None:
        """Take a task's figures from the stats its executor reported with its end."""
        task.suspensions = stat_count(stats, "suspensions", task.suspensions)  # what happened
        task.running_ns = stat_count(stats, "running_ns", task.running_ns)
        task.suspended_ns = stat_count(stats, "suspended_ns", task.suspended_ns)
        task.records = stat_count(stats, "records", task.records)
        task.record_ns = record_length([task.running_ns, task.records], task.record_ns)
        task.finished_at_ns = stat_count(stats, "finished_at_ns", None)
        task.kept_bytes = stat_count(stats, "kept_bytes", 0)

    def measured(self, stats: dict[str, Any]) -> None:
        """A batch task (not a chunk) finished: smooth its cost into the prefetch estimate."""
        cost = stat_count(stats, "running_ns", 0) + TASK_OVERHEAD_NS
        self._service_ns = cost if self._service_ns is None else 0.8 * self._service_ns + 0.2 * cost

    def stop_running(self, task: Task, at: int | None = None) -> None:
        """Add the time since the task last started or resumed to its running estimate."""
        if task.running_since is not None:
            end = self.now if at is None else at
            task.running_estimate_ns += max(0, end - task.running_since)
            task.running_since = None

    # ---- tasks on executors ------------------------------------------------------------------

    def place(self, executor: ExecutorRecord, task: Task) -> None:
        """Put a launched task (or chunk) in the executor's slot, or behind it in its queue.

        A stream launch takes a free slot even when batch work is queued there, as the
        executor runs stream launches first.
        """
        task.state = TaskState.LAUNCHED
        task.executor_id = executor.executor_id
        task.received = False
        for subtask in spans.records_of(task):  # a chunk's tasks run there too
            subtask.executor_id = executor.executor_id
        if executor.slot_task is None and (task.priority == "stream" or not executor.queued):
            executor.slot_task = task
        else:
            executor.queued.append(task)

    def launch(self, executor: ExecutorRecord, task: Task, by_lane: bool = False) -> None:
        """Launch pending `task` (not chunked) on `executor` (`by_lane`: it runs there already,
        runtime/lanes.py: the command is booked, not sent)."""
        self.pending.removed(task)
        self.place(executor, task)
        job = task.job
        message = p.Launch(
            task.task_id,
            job.fn,
            job.main_path,
            task.payload,
            task.attempt,
            job.priority,
            self.launch_stamp(task),
            job.keep,
            self.launch_inputs(task),
            lane_suspensions(task),
        )
        self.send(executor, message, by_lane)

    def launch_stamp(self, task: Task) -> int:
        """A launch's `sent_ns`: now, but never the same twice, so that a late `received`
        of an earlier launch of the same attempt (one withdrawn, say) is told apart."""
        self._last_launch_ns = max(self.now, self._last_launch_ns + 1)
        task.launched_ns = self._last_launch_ns
        return self._last_launch_ns

    def suspend(self, executor: ExecutorRecord, task: Task, by_lane: bool = False) -> None:
        """Suspend `task` (`by_lane`: its executor did, for a lane's stream task)."""
        task.state = TaskState.SUSPENDING
        self.suspension_sent(task)
        task.suspensions += 1
        executor.slot_task = None
        executor.suspended[task.task_id] = task
        self.send(executor, p.Suspend(task.task_id, self.now), by_lane)

    def resume(self, executor: ExecutorRecord, task: Task) -> None:
        task.state = TaskState.RESUMING
        del executor.suspended[task.task_id]
        executor.slot_task = task
        self.send(executor, p.Resume(task.task_id, self.now))

    def kill(
        self, executor: ExecutorRecord, task: Task, *, requeue: bool, to_make_room: bool = False
    ) -> None:
        """Send Kill; the task's state stays on the executor until Killed is reported.

        `to_make_room`: a policy kills it to run again later, which counts toward the kill
        cap (for a chunk, of each task in it: they run again in other chunks)."""
        if to_make_room:
            task.kills += 1
            for subtask in spans.records_of(task):
                subtask.kills += 1
        self.detach(executor, task)
        task.state = TaskState.KILLING
        task.requeue_on_kill = requeue
        executor.suspended[task.task_id] = task
        self.send(executor, p.Kill(task.task_id, self.now))

    def detach(self, executor: ExecutorRecord, task: Task) -> None:
        """Remove `task` from wherever it sits on `executor`."""
        if executor.slot_task is task:
            executor.slot_task = None
        elif task in executor.queued:
            executor.queued.remove(task)
        executor.suspended.pop(task.task_id, None)
        if task.job.retired:
            self.leaving.append(task)

    def take_slot(self, executor: ExecutorRecord, task: Task) -> Task | None:
        """`task`, queued on `executor`, reported it runs: it holds the slot now. Returns the
        task it displaced from the slot, if any, which stays tracked first in the queue.

        Discussion: a task whose state lives on an executor leaves that executor's records
        only when it ends there or the executor is lost (which requeues it); dropped from
        them, a lost executor would take it along and its future would never complete. An
        honest executor's reports never displace a running task, but an executor that lies
        (or a bug) could; the fuzz tests send such reports.
        """
        executor.queued.remove(task)
        previous = executor.slot_task
        executor.slot_task = task
        if previous is None or previous is task:
            return None
        executor.queued.appendleft(previous)
        return previous

    def started(self, executor: ExecutorRecord, task: Task, at_ns: int) -> Task | None:
        """`task` reported it runs (first start at the executor's `at_ns`). Returns the task
        it displaced from the slot if it had been queued behind one (see `take_slot`)."""
        task.state = TaskState.RUNNING
        task.running_since = self.now
        task.received = True
        if task.started_at_ns is None:
            task.started_at_ns = at_ns
            task.first_started_at = self.now
        return self.take_slot(executor, task) if task in executor.queued else None

    def suspended(self, task: Task, records: int) -> None:
        """`task` reported it is parked, `records` records in."""
        task.state = TaskState.SUSPENDED
        task.records = records
        self.stop_running(task)

    def resumed(self, executor: ExecutorRecord, task: Task) -> None:
        task.state = TaskState.RUNNING
        task.running_since = self.now
        if task in executor.queued:  # it waited behind a task that could not be suspended
            self.take_slot(executor, task)

    def suspension_undone(self, task: Task) -> None:
        """The suspend crossed the task's end on the wire: it was no suspension."""
        task.suspensions = max(0, task.suspensions - 1)

    def suspend_failed(self, executor: ExecutorRecord, task: Task) -> None:
        """The executor could not suspend `task`: it keeps its slot and is never asked again."""
        task.state = TaskState.RUNNING
        task.suspensions -= 1
        task.unsuspendable = True
        del executor.suspended[task.task_id]
        usurper = executor.slot_task
        executor.slot_task = task
        if usurper is not None and usurper.state is TaskState.LAUNCHED:
            # It was sent to take the slot and now waits behind a task that will not yield:
            # withdraw it and let the policy place it elsewhere.
            self.kill(executor, usurper, requeue=True)
        elif usurper is not None:
            # A resumed task waits there behind it; keep track of it (its state lives there).
            executor.queued.appendleft(usurper)

    def end_on(
        self,
        executor: ExecutorRecord,
        task: Task,
        stats: dict[str, Any],
        outcome: str,
        value: Any,
        error: list[str] | None,
    ) -> None:
        """A task or chunk ended on `executor` (finished or failed): record it."""
        self.detach(executor, task)
        if task.subtasks is not None:  # a chunk: its tasks were reported one by one
            self.end_chunk(task, error=error)
        elif self.input_unavailable(task, stats, error):  # it waits for its inputs again
            pass
        else:
            self.account(task, stats)
            self.complete(task, outcome, value, error)

    def killed(self, executor: ExecutorRecord, task: Task, running_ns: int, policy: str) -> None:
        """The executor killed `task`: requeue it, or fail it if a policy killed it for good."""
        task.work_lost_ns += running_ns
        self.detach(executor, task)
        error = None
        if task.state is TaskState.KILLING and not task.requeue_on_kill:
            error = ["TaskKilled", f"killed by the {policy!r} policy", ""]
        # Otherwise killed to make room, withdrawn, or killed by a shutting-down executor:
        # it runs again from scratch (a new attempt if it had started).
        started = running_ns > 0
        if task.subtasks is not None:
            self.end_chunk(task, error=error, started=started)
        else:
            self.settle([task], error=error, started=started)

    def cancel(self, task: Task) -> ExecutorRecord | None:
        """Its client cancelled `task`: done now, or killed where it runs. Returns the
        executor whose slot the kill frees, if any."""
        task.cancel_requested = True
        if task.state is TaskState.WAITING:
            self.complete(task, "cancelled", None, None)
        elif task.state is TaskState.PENDING:
            self.pending.removed(task)
            self.complete(task, "cancelled", None, None)
        elif task.chunk is not None:
            # Inside a chunk: done for its client now; its result, if it comes, is ignored.
            task.chunk.subtasks.pop(task.task_id, None)
            self.complete(task, "cancelled", None, None)
        elif task.state is not TaskState.KILLING:
            self.note(ev.CancelRequested(task.job.job_id, task.task_id))
            if task.state is TaskState.UNCLAIMED:  # nobody reported it yet: done
                self.complete(task, "cancelled", None, None)
                return None
            executor = self.executors[task.executor_id]
            self.kill(executor, task, requeue=False)  # cancel_requested decides on Killed
            return executor
        return None

    # ---- executors ---------------------------------------------------------------------------

    def adopt(self, executor: ExecutorRecord, task: Task, state: TaskState, attempt: int) -> None:
        """Put `task` on `executor` in `state`, at `attempt`: as the executor reports it holds
        it (scheduler/recovery.py)."""
        task.attempt = attempt
        task.executor_id = executor.executor_id
        task.received = True  # it said it holds it
        for subtask in spans.records_of(task):
            subtask.executor_id = executor.executor_id
        task.state = state
        if state is TaskState.SUSPENDED:
            executor.suspended[task.task_id] = task
            return
        if state is TaskState.RUNNING:
            task.running_since = self.now
        if executor.slot_task is None:
            executor.slot_task = task
        else:
            executor.queued.append(task)

    def take_result(
        self,
        executor: ExecutorRecord,
        task: Task,
        outcome: str,
        value: Any,
        error: list[str] | None,
        stats: dict[str, Any],
    ) -> None:
        """A result `executor` kept for `task` and now reports (scheduler/recovery.py)."""
        task.executor_id = executor.executor_id
        if task.chunk is None:
            self.account(task, stats)
        self.complete(task, outcome, value, error)

    def unclaimed(self, task: Task, *, cancelled: bool) -> None:
        """After a restart: `task` is known from the journal, not reported yet by anyone."""
        task.state = TaskState.UNCLAIMED
        task.cancel_requested = cancelled

    def join(self, hello: p.Hello) -> tuple[ExecutorRecord, ExecutorRecord | None, dict[str, Task]]:
        """Record an executor that said hello: (its record, the record it replaces if it was
        alive, the tasks that record held, by id)."""
        old = self.executors.get(hello.executor_id)
        # Discussion: an executor that says hello while we count it alive thought we were
        # gone (its acks stopped coming): what it still holds of ours stays where it is
        # (recovery.reclaim); the rest is lost with its old connection.
        mine: dict[str, Task] = {}
        if old is not None and old.alive:
            self.peer_warning(f"executor {hello.executor_id} said hello again while alive")
            mine = {t.task_id: t for t in old.tasks() if t.state is not TaskState.DONE}
            old.alive = False
            old.slot_task, old.queued, old.suspended = None, deque(), {}
            self.note(ev.ExecutorLost(hello.executor_id, "it joined again"))
        else:
            old = None
        executor = ExecutorRecord(
            hello.executor_id, hello.node, hello.hostname, hello.pid, self.now
        )
        executor.lane = lane_address(hello.lane)
        self.lanes_changed = True
        self.executors[hello.executor_id] = executor
        self.note(ev.ExecutorUp(hello.executor_id))
        log.info("executor %s joined from node %s", hello.executor_id, hello.node)
        return executor, old, mine

    def lose(self, executor: ExecutorRecord, reason: str) -> None:
        """Declare `executor` lost: requeue every task whose state lived there."""
        self.peer_warning(f"executor {executor.executor_id} lost: {reason}")
        executor.alive = False
        self.lanes_changed = True
        self.note(ev.ExecutorLost(executor.executor_id, reason))
        self._lost.append(executor)
        while len(self._lost) > MAX_LOST_EXECUTORS:
            old = self._lost.popleft()
            if self.executors.get(old.executor_id) is old:  # not replaced by a new join
                del self.executors[old.executor_id]
        tasks = [t for t in executor.tasks() if t.state is not TaskState.DONE]
        executor.slot_task, executor.queued, executor.suspended = None, deque(), {}
        self.requeue_lost(executor, tasks)
        self.lose_kept(executor.executor_id)

    def requeue_lost(self, executor: ExecutorRecord, tasks: list[Task]) -> None:
        """Tasks whose state was lost with `executor`: queued again as a new attempt, or
        failed past `max_retries` losses.

        Discussion: a loss counts toward `max_retries` once the executor said it has the
        launch (`received`, sent before the task runs, or `started`), whatever was asked of
        it since: the limit is for a task that keeps taking its executors down, even before
        it could report its start. A launch the executor never acknowledged is requeued
        free: otherwise a peer that says hello as an executor and leaves with the tasks it
        was given could fail jobs (the fuzz test's fake executors did).
        """
        lost = []
        for task in tasks:
            lost_on = executor.executor_id if task.received else None
            if task.subtasks is not None:  # a chunk: requeue the subtasks it had not reported
                self.end_chunk(task, lost_on=lost_on)
                continue
            # Count work only up to the executor's last sign of life; after that, no one knows.
            self.stop_running(task, at=executor.last_seen)
            task.work_lost_ns += task.running_estimate_ns
            if lost_on is not None:
                self.count_loss(task, lost_on)  # settle() fails it past the limit
            lost.append(task)
        self.settle(lost)

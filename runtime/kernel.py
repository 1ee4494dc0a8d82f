"""The kernel: runs tasks as greenlets on one thread, one at a time, and parks them on command.

Principles, in the spirit of a small coroutine kernel:

* One door. A running task reaches the hub only through `Kernel._checkpoint()`, which the
  record gate calls at a record boundary (and the generator driver after each output, the
  chunk runner between subtasks) when the gate is raised. Nothing else in a task switches
  greenlets.
* One loop. `Kernel.run()` is the hub: drain commands, pick the task to run, switch into it,
  account for what came back. It reads top to bottom.
* Commands in, reports out. `launch/suspend/resume/kill` may be called from any thread; they
  queue a command and raise the gate. The hub applies commands only while it holds control,
  and reports what happened as protocol messages through the `emit` callable it was given
  (an in-memory list in tests; in the executor, an outbox that `flush` sends, which the
  kernel calls before it gives the thread away and when a chunk reports).
* A task's exception belongs to the task: it becomes a `Failed` report with its traceback
  (runtime/tracebacks.py). An error in the kernel itself is not caught here; it is loud.
* Rules here, records elsewhere: what the kernel keeps per task, its ready queue and its
  commands are plain data in runtime/runstate.py; this module decides and switches.
* Payloads open here. A task launched from the wire brings its arguments as one msgpack blob
  (`payload`), unpacked when the task starts, in its greenlet, a big argument one block at
  a time with a record boundary between blocks: a payload that does not unpack fails that
  task, like a function that does not import. Results leave packed
  (`Finished.result`, the values of `ChunkResults`), so the scheduler only forwards them.

Latencies: a suspension is measured from the moment the command was queued (`suspend()`
was called) to the moment the hub regains control; a resumption from the moment the hub
switches into the task to the moment the task runs again.
"""

from __future__ import annotations

import queue
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

import greenlet

from tidal.runtime import kept, payloads, runstate
from tidal.runtime import protocol as p
from tidal.runtime.columns import LaunchColumns
from tidal.runtime.datastore import Reference, fetch_chunks
from tidal.runtime.functions import FunctionRef, KnownFunctions
from tidal.runtime.gate import Gate, GatedIterator
from tidal.runtime.idlewait import IdleWait
from tidal.runtime.lanes import take_decision
from tidal.runtime.runstate import (
    Command,
    KernelStatistics,
    Outcome,
    PendingSuspends,
    ReadyQueue,
    RunState,
    Span,
    TaskGreenlets,
    TaskKilled,
    TaskRecord,
    pack_result,
)
from tidal.runtime.spanrun import SpanRunner, give_up_tail
from tidal.runtime.task import TaskContext, call_result, gate_arguments, gated_positions
from tidal.runtime.tracebacks import describe_failure

__all__ = ["Kernel", "RunState", "TaskKilled"]

# Discussion: 100 ms is long enough that a task with sane records (even 10 ms ones) always
# reaches a boundary first, and short enough that a scheduler waiting for a slot learns
# quickly that this task cannot give it one.
DEFAULT_SUSPEND_TIMEOUT_NS = 100_000_000
# How long the hub holds a task at its boundary for the listener to read what the gate's
# watcher saw arrive (see `_wait_for_listener`): the listener needs ~0.1-0.4 ms here; a
# longer wait would stall a task whose listener is slow to come (the watcher raises again
# while frames wait unread, up to every 2 ms).
LISTENER_WAIT_S = 0.0005
# Reports may wait at the switch into a batch task (runtime/reports.py) only if its
# function's tasks ran shorter than this on average (as long as the reports may wait): a
# task that holds the GIL (a long C call) keeps the reports of the tasks before it until it
# ends, the listener being unable to send them meanwhile. Running times are wall-clock, so
# a loaded machine inflates them: at 0.5 ms, a flood of no-op tasks on 2 busy cores held
# too rarely and ran ~25% slower.
SHORT_TASK_NS = 2_000_000


# Sentinels passed through greenlet switches. The hub only ever switches a task back with
# _GO (or throws TaskKilled); a task's greenlet only ever switches to the hub with
# _ATTENTION (parked at a boundary) or _ENDED (its Outcome left in `Kernel._ended`).
_GO = object()
_ATTENTION = object()
_ENDED = object()


class Kernel(SpanRunner):
    """Runs tasks as greenlets on the thread that calls `run()`."""

    def __init__(
        self,
        emit: Callable[[p.Message], None],
        flush: Callable[[], None] | None = None,
        *,
        executor_id: str = "local",
        clock: Callable[[], int] = time.monotonic_ns,
        suspend_timeout_ns: int = DEFAULT_SUSPEND_TIMEOUT_NS,
        gate_factory: Callable[[], Any] = Gate,
        gated_iterator: Callable[..., Any] = GatedIterator,
        priority_changed: Callable[[str], None] | None = None,
        payload_unpacked: Callable[[], None] | None = None,
        memory_probe: Callable[[], int] | None = None,
        read_commands: Callable[[], bool] | None = None,
        fetch: Callable[[Reference], Iterable[bytes]] = fetch_chunks,
        spool_result: Callable[[bytes], bytes] | None = None,
        keep_result: Callable[[str, bytes], bytes] | None = None,
        hurry: Callable[[], None] | None = None,
        hold: Callable[[], None] | None = None,
        idle: IdleWait | None = None,
    ) -> None:
        self.executor_id = executor_id
        self.gate = gate_factory()
        self.gate.hook = self._checkpoint
        self._emit = emit
        # Called where the hub is about to give the thread away (to a task, or to sleep), so
        # that reports `emit` may have buffered go out then: one send per switch, not per report.
        self._flush = flush or (lambda: None)
        # Called instead at the switch into a batch task with more queued behind it: the
        # reports of batch tasks may wait a moment there, to go out together (Reports.send_due).
        self._hold = hold or self._flush
        self._clock = clock
        self._gated_iterator = gated_iterator
        self._inbox: queue.SimpleQueue[Command] = queue.SimpleQueue()
        self._pending_suspends = PendingSuspends(suspend_timeout_ns)
        self._tasks: dict[str, TaskRecord] = {}
        self._ready = ReadyQueue()
        self._functions = KnownFunctions()  # resolved once, with their tasks' running times
        self._greenlets = TaskGreenlets(self._run_tasks)
        self._ended: Outcome | None = None  # a task's, from its greenlet to the hub
        self._current: TaskRecord | None = None
        self._hub: greenlet.greenlet | None = None
        self._finished = 0
        self._regained_at = 0  # when the hub last got control back from a task
        self._watch_raises = 0  # the gate watcher's raises the hub has answered
        self._awaiting_listener = False  # the hub waits for the listener (see `listened`)
        # Told the priority class of the task about to run whenever it differs from the last
        # one's (the executor gives its thread an OS priority per class).
        self._priority_changed = priority_changed
        self._running_class: str | None = None
        # Called in the task's greenlet right after its payload was unpacked (the executor
        # moves the fresh task data out of the cyclic collector's way there).
        self._payload_unpacked = payload_unpacked or (lambda: None)
        # Called on the hub's thread when the gate's watcher saw frames arrive, and after an
        # idle wait: reads them and posts their commands here, no listener needed; False if
        # the listener is reading them now (then wait for it).
        self._read_commands = read_commands or (lambda: False)
        # Reads a spooled payload's bytes, piece by piece (runtime/datastore.py).
        self._fetch = fetch
        # Given a big result's payload, keeps it off the control path and returns the
        # reference to report instead (the executor's spool; None: results go inline).
        self._spool_result = spool_result
        # Keeps a result here for later readers (`launch.keep`): (task id, kept payload) ->
        # the reference to report (runtime/kept.py). None: results cannot be kept.
        self._keep_result = keep_result
        # Called from the thread that asks for a suspend, kill or fail: the running task must
        # reach its next record boundary now (the executor lifts its thread's OS priority,
        # as the gate's watcher does; the hub's next switch sets it back).
        self._hurry = hurry or (lambda: None)
        # Returns the process's RSS; read at each switch into and out of a task to estimate
        # each task's memory (runtime/memory.py). None (the default): no reads, no estimates.
        self._memory_probe = memory_probe
        # Where the hub sleeps when idle: with `idle`, until frames come on the command
        # connection (it reads them, `read_commands`) or `_post` wakes it; else in the queue.
        self._idle = idle
        self._sleeping, self._turns = False, 0  # in `idle.wait()` (or about to be); loops

    # ---- commands: callable from any thread -----------------------------------------------

    def launch(
        self,
        task_id: str,
        fn: Callable[..., Any] | FunctionRef,
        args: list[Any] | tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
        *,
        payload: bytes | None = None,
        attempt: int = 0,
        priority: str = "batch",
        keep: bool = False,
        inputs: list[Any] | None = None,
        suspensions_left: int | None = None,
    ) -> None:
        """Queue a task to run when the slot is free.

        `fn` may be a FunctionRef: it is then imported when the task starts, and a failure to
        import becomes the task's failure report. `payload`, if given, is the task's packed
        `[args, kwargs]` from the wire (instead of `args` and `kwargs`): it is unpacked when
        the task starts, and a failure to unpack becomes the task's failure report too.
        With `keep` its result stays here (runtime/kept.py); `inputs` are other tasks' kept
        results, put in its call when it starts. `suspensions_left`: how often the hub may
        park it for a lane's stream task (`take`).
        """
        record = TaskRecord(task_id, fn, list(args), dict(kwargs or {}), attempt, priority, payload)
        record.keep, record.inputs, record.suspensions_left = keep, inputs, suspensions_left
        self._post(Command("launch", task_id, self._clock(), record))

    def take(self, task_id: str, fn: FunctionRef, payload: bytes, lane: tuple) -> None:
        """A stream task that came by the lane (runtime/lanes.py), with the client's token,
        its submit, and whether it came again by a second lane (`lane`): the hub runs it
        at once if it can, and forwards the submit."""
        record = TaskRecord(task_id, fn, [], {}, 0, p.PRIORITY_CLASSES[0], payload)
        self._post(Command("take", task_id, self._clock(), record, lane=lane))

    def suspend(self, task_id: str) -> None:
        """Ask the task to park at its next record boundary."""
        command = Command("suspend", task_id, self._clock())
        self._pending_suspends.add(command)
        self._post_urgent(command)

    def resume(self, task_id: str) -> None:
        """Let a suspended task continue where it stopped: after stream launches, before batch
        launches (see `ReadyQueue`)."""
        self._post(Command("resume", task_id, self._clock()))

    def kill(self, task_id: str) -> None:
        """Stop a task: TaskKilled is raised in it at its next record boundary."""
        self._post_urgent(Command("kill", task_id, self._clock()))

    def fail(self, task_id: str, error_type: str, message: str) -> None:
        """Stop a task as `kill` does, but report it `failed` with this error.

        The executor fails a task this way when it exceeds the memory limit. In a chunk, the
        subtask running when it is stopped fails with the error, and the chunk reports
        `killed`, so that its subtasks that did not run are placed again.
        """
        self._post_urgent(Command("fail", task_id, self._clock(), error=[error_type, message, ""]))

    def launch_chunk(
        self,
        chunk_id: str,
        fn: Callable[..., Any] | FunctionRef,
        subtasks: list[list[Any]],
        *,
        attempt: int = 0,
        priority: str = "batch",
        span: tuple[str, int] | None = None,
        columns: LaunchColumns | None = None,
        suspensions_left: int | None = None,
    ) -> None:
        """Queue a chunk: subtasks `[task_id, payload]` (as on the wire) or
        `[task_id, args, kwargs]` of one function, run in order as one task, with a
        suspension point between them; results go out in batches. A subtask whose payload
        does not unpack fails on its own.

        With `span` = (job_id, first), a range of a bulk job: `subtasks` are bare payloads
        of tasks first, first + 1, ..., and results go out as `chunk_batch` reports; or,
        with `columns` (runtime/columns.py), `subtasks` is empty and those are its xs."""
        record = TaskRecord(chunk_id, fn, [], {}, attempt, priority)
        record.suspensions_left = suspensions_left
        # A columnar span's chunk holds the positions of its tasks in the launch.
        record.chunk = deque(subtasks if columns is None else range(columns.count))
        if span is not None:
            job_id, first = span
            record.span = Span(job_id, first, first, first + len(record.chunk))
            record.span.columns = columns
        else:
            record.unreported = dict.fromkeys(subtask[0] for subtask in subtasks)
        self._post(Command("launch", chunk_id, self._clock(), record))

    def steal(self, chunk_id: str, count: int) -> None:
        """Take up to `count` subtasks that have not started from the end of a chunk."""
        self._post(Command("steal", chunk_id, self._clock(), count=count))

    def wake(self) -> None:
        """Make the hub flush its reports soon: at once when idle, else at the running
        task's next record boundary (callable from any thread)."""
        self._post(Command("flush", "", self._clock()))

    def holdings(self) -> list[list[Any]]:
        """What this kernel holds, as `hello.holding` lists it (from any thread)."""
        return runstate.holdings(self._tasks)

    def listened(self) -> None:
        """The listener read what the scheduler sent (callable from any thread): a hub that
        waits for it (`_wait_for_listener`) goes on. Nothing is queued while none waits
        (a task without record boundaries would let them pile up)."""
        if self._awaiting_listener:
            self._inbox.put(Command("listened", "", self._clock()))

    def _post(self, command: Command) -> None:
        self._inbox.put(command)
        self.gate.requested = 1  # after the put: the hub lowers the gate before draining
        if self._sleeping:  # after the put: a hub about to sleep looks at the queue after
            self._idle.wake()  # it says so, so one of the two sees the other

    def _post_urgent(self, command: Command) -> None:
        """Post a command the running task must reach a boundary for now: the thread is
        lifted first (`hurry`), so that the hub, applying it, sets the class's nice again."""
        self._hurry()
        self._post(command)

    def check_overdue(self, now: int | None = None) -> list[p.SuspendFailed]:
        """Give up on suspensions the running task has not honoured in time.

        Called from another thread (the executor's listener) while a task may be busy. A task
        that runs without reaching a record boundary cannot be suspended; rather than leave
        the requester waiting, report it. The task keeps running.
        """
        if not self._pending_suspends:  # the common case, on every listener wake-up
            return []
        return self._pending_suspends.overdue(self._clock() if now is None else now, self._current)

    def memory_estimates(self, rss: int) -> dict[str, int]:
        """Each started task's memory estimate (`rss`: the RSS now); empty without a memory
        probe. From any thread (runstate.memory_estimates)."""
        if self._memory_probe is None:
            return {}
        return runstate.memory_estimates(self._tasks, self._current, rss)

    def task_progress(self) -> dict[str, list[int]]:
        """Each started task's [running_ns, records] so far, for heartbeats (from any
        thread; runstate.task_progress)."""
        return runstate.task_progress(self._tasks, self._current, self.gate.records, self._clock())

    def running_task(self) -> str | None:
        """The id of the task holding the slot now, if any (from any thread)."""
        current = self._current
        return current.task_id if current is not None else None

    def holds_tasks(self) -> bool:
        """Whether any task is here (launched, running or suspended)."""
        return bool(self._tasks)

    def progress(self) -> tuple[int, int] | None:
        """(hub turns, gate records) while tasks are here and the hub is awake, else None:
        unchanged between two looks, a task keeps the thread without record boundaries."""
        return None if self._sleeping or not self._tasks else (self._turns, self.gate.records)

    def memory_failure(
        self, task_id: str, error_type: str, message: str
    ) -> p.Failed | p.ChunkResults | None:
        """The report that fails a task which cannot be stopped (from another thread; see
        runstate.memory_failure)."""
        record = self._tasks.get(task_id)
        if record is None:
            return None
        return runstate.memory_failure(record, error_type, message, self.executor_id, self._clock())

    def holds(self, task_id: str) -> bool:
        """Whether a task is here and not done (from any thread)."""
        record = self._tasks.get(task_id)
        return record is not None and record.state is not RunState.DONE

    def has_pending_suspensions(self) -> bool:
        """True while a suspend command waits for the running task to reach a boundary."""
        return bool(self._pending_suspends)

    def statistics(self) -> KernelStatistics:
        """Counts of tasks by state (from any thread)."""
        return runstate.statistics(self._tasks, self._finished)

    # ---- the hub ------------------------------------------------------------------------------

    def run(self, *, block: bool = False) -> None:
        """Run the hub loop on this thread.

        With `block=False` return as soon as nothing is left to run (tests drive the kernel
        this way); with `block=True` sleep until a command arrives, until `stop()`.
        """
        self._hub = greenlet.getcurrent()
        while True:
            self._turns += 1
            # -- 1. Commands. Lower the gate first, so a command posted while we drain
            #       raises it again instead of being missed. If the gate's watcher raised
            #       it (frames arrived), the task waits at its boundary while the listener,
            #       given the GIL, reads them (runtime/_gate.c): the hub says it waits
            #       before it lowers the gate, so a listener that sees the gate lowered
            #       finds it waiting.
            raises = self.gate.watch_raises  # 0 for ever on the pure-Python gate
            raised = raises != self._watch_raises
            awaiting = raised and self._current is not None
            if raised:  # it may have lifted the nice (`Gate.boost`):
                self._running_class = None  # the next switch sets the class's again
            self._watch_raises = raises
            self._awaiting_listener = awaiting
            self.gate.requested = 0
            go_on, heard = self._apply_inbox()
            if not go_on:
                return
            if awaiting and not heard:
                # Read what came on this thread if we can (no hand-over to the listener and
                # back); else wait for the listener, which is reading it.
                if self._read_commands():
                    if not self._apply_inbox()[0]:
                        return
                elif not self._wait_for_listener():
                    return
            elif raised and not heard and self._idle is not None:
                # Frames came between tasks (launches, most often): read them now, so that
                # they queue here behind the tasks ready (if the listener holds the
                # connection, the watcher raises again while they wait unread).
                self._read_commands()
                if not self._apply_inbox()[0]:
                    return
            self._awaiting_listener = False

            # -- 2. Choose. The running task keeps the slot unless it was suspended or
            #       killed; otherwise stream launches, then resumed tasks, then batch launches.
            record = self._current
            if record is None:
                if not self._ready:
                    self._flush()
                    if not block:
                        return
                    # Idle: sleep (the GIL released) until a command or a frame comes
                    # (`_sleep`; the queue alone without `idle`), at the stream class's nice:
                    # whatever comes, the thread must wake at once (at the batch nice it
                    # waited up to ~90 ms for a CPU on a busy machine before starting a
                    # stream task). "idle" is a class of its own, so that a stream task
                    # switched into next starts as one after batch work does
                    # (runtime/realtime.py `TaskThreadNice.set_class`).
                    if self._running_class != "idle" and self._priority_changed is not None:
                        self._running_class = "idle"
                        self._priority_changed("idle")
                    if self._idle is None:
                        if not self._apply(self._inbox.get()):
                            return
                    else:
                        self._sleep()
                    continue
                record = self._ready.pop()

            # -- 3. Switch into the task until it finishes or calls the hub at a boundary.
            outcome = self._switch_into(record)

            # -- 4. Account. A finished task reports; one that called the hub stays current
            #       and step 1 decides what its call was about.
            if isinstance(outcome, Outcome):
                self._report_outcome(record, outcome)

    def _sleep(self) -> None:
        """Idle, with `idle`: sleep until frames come or a command is posted, then read
        what came on this thread, its commands queued for step 1 (runtime/idlewait.py)."""
        self._sleeping = True
        try:
            if self._inbox.empty():  # a command posted after this wakes the wait
                self._idle.wait()
        finally:
            self._sleeping = False
        self._read_commands()

    def _apply_inbox(self) -> tuple[bool, bool]:
        """Apply every queued command: (False if one was stop, whether the listener said
        it read what came)."""
        heard = False
        while True:
            try:
                command = self._inbox.get_nowait()
            except queue.Empty:
                return True, heard
            heard = heard or command.op == "listened"
            if not self._apply(command):
                return False, heard

    def _wait_for_listener(self) -> bool:
        """Wait (the GIL released) until the listener says it read what came, applying the
        commands it posts meanwhile, for at most LISTENER_WAIT_S. False: stop.

        Discussion: without this wait the task would take the GIL straight back and the
        listener would wait for the interpreter's switch interval and the OS, ~0.1-1 ms on
        an idle machine and several on a busy one; with it the listener has the GIL within
        microseconds of the frame's arrival. The bound covers a wake-up that brought no
        frame for the listener (libzmq signals its descriptor for its own reasons too)."""
        deadline = time.monotonic() + LISTENER_WAIT_S
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return True
            try:
                command = self._inbox.get(timeout=remaining)
            except queue.Empty:
                return True
            if command.op == "listened":
                return True
            if not self._apply(command):
                return False

    def stop(self) -> None:
        """Make `run()` return once the hub gets control (callable from any thread)."""
        self._post(Command("stop", "", self._clock()))

    def close(self) -> None:
        """Kill every task still here, unwinding their stacks. Call after `run()` returned."""
        self._hub = greenlet.getcurrent()
        for record in list(self._tasks.values()):
            if record.state is not RunState.DONE:
                self._apply_kill(record, Command("kill", record.task_id, self._clock()))
        self._flush()

    def _switch_into(self, record: TaskRecord) -> Any:
        now = self._clock()
        if record.state is RunState.QUEUED:
            record.glet = self._greenlets.take(self._hub)
            record.glet.tidal_context = TaskContext(
                record.task_id, record.attempt, record.priority, self.executor_id, record, self.gate
            )
            self._emit(p.Started(record.task_id, record.attempt, now))
        elif record.state in (RunState.RESUMING, RunState.SUSPENDED):
            record.suspended_ns += now - record.suspended_at
            if record.state is RunState.RESUMING:
                # Its own reading, not `now`: the resumption is timed from here, next to the
                # switch (reusing `now` measured ~1.2 us more in `tidal bench suspend`).
                record.resume_started_at = self._clock()
        record.state = RunState.RUNNING
        self._current = record
        if record.priority != self._running_class and self._priority_changed is not None:
            self._running_class = record.priority
            self._priority_changed(record.priority)
        record.gate_mark = self.gate.records
        record.switched_in_at = now
        if record.priority == "batch" and self._ready and self._runs_short(record):
            self._hold()
        else:
            self._flush()
        probe = self._memory_probe
        if probe is not None:
            record.rss_mark = probe()
        if record.kill_requested:
            # Keep the gate raised: a task that catches TaskKilled and goes on is killed
            # again at its next record boundary.
            self.gate.requested = 1
            result = record.glet.throw(TaskKilled(f"task {record.task_id} was killed"))
        else:
            result = record.glet.switch(_GO)
        if result is _ENDED:  # done: its Outcome
            result, self._ended = self._ended, None
        # Back in the hub: the task is parked at a boundary (_ATTENTION) or done (Outcome).
        self._regained_at = self._clock()
        if probe is not None:
            rss = probe()
            record.memory_bytes += rss - record.rss_mark
            record.rss_mark = rss  # while it stays current, parked, it grows no further
        record.running_ns += self._regained_at - record.switched_in_at
        record.records += self.gate.records - record.gate_mark
        record.gate_mark = self.gate.records
        if result is not _ATTENTION and not isinstance(result, Outcome):
            raise RuntimeError(
                f"task {record.task_id} switched to the hub with {result!r}: "
                "only the kernel's checkpoint may switch greenlets in a task"
            )
        return result

    def _runs_short(self, record: TaskRecord) -> bool:
        """Whether `record` is a plain task whose function's tasks ran shorter than
        SHORT_TASK_NS on average (unknown: no)."""
        if record.chunk is not None or record.span is not None:
            return False
        average = self._functions.running_ns(record.fn)
        return average is not None and average < SHORT_TASK_NS

    def _apply(self, command: Command) -> bool:
        """Carry out one command; refuse (with a report) what does not apply.

        Returns False only for the stop command.
        """
        if command.op == "stop":
            return False
        if command.op in ("flush", "listened"):  # wake(); the listener read what came
            return True
        if command.op in ("suspend", "kill", "fail"):  # `hurry` may have lifted the thread
            self._running_class = None  # so the next switch sets its class's priority again
        if command.op == "take":
            self._take(command)
            return True
        if command.op == "launch":
            record = command.record
            assert record is not None  # built by launch(); not peer input
            problem = runstate.admit_launch(self._tasks, self._ready, record)
            if problem is not None:
                self._refuse("launch", record.task_id, problem[1], problem[0])
                return True
            self._tasks[record.task_id] = record
            self._ready.add_launch(record)
            return True
        record = self._tasks.get(command.task_id)
        if command.op == "suspend":
            if self._pending_suspends.take(command):  # else the watchdog reported it already
                self._apply_suspend(record, command)
        elif command.op == "resume":
            # Discussion: only SUSPENDED, so a repeated resume is refused instead of queueing
            # the task twice (the second pop would switch into a finished greenlet).
            if record is None or record.state is not RunState.SUSPENDED:
                self._refuse("resume", command.task_id, record, "task is not suspended")
            elif record.glet is None:  # suspended before it ever started: queue it again
                record.suspended_ns += self._clock() - record.suspended_at
                record.state = RunState.QUEUED
                self._ready.add_launch(record)
            else:
                record.state = RunState.RESUMING
                self._ready.add_resumed(record)
        elif command.op == "kill":
            self._apply_kill(record, command)
        elif command.op == "fail":
            # Not the scheduler's command: a task that ended meanwhile needs no report.
            if record is not None and record.state is not RunState.DONE:
                record.fail_error = command.error
                self._apply_kill(record, command)
        elif command.op == "steal":
            # Atomic by construction: only the hub runs now, and the chunk's runner takes
            # subtasks from the front, so the tail holds only subtasks that have not started.
            taken = [] if record is None else give_up_tail(record, command.count)
            self._emit(p.Stolen(command.task_id, taken))
            if record is not None and record.unreported is not None:
                for task_id in taken:
                    record.unreported.pop(task_id, None)
        return True

    def _take(self, command: Command) -> None:
        """A lane's stream task: forwarded first (before any report on it or the task it
        parks), then parked for and queued first, or left to the scheduler."""
        record = command.record
        current = self._current
        token, submit, again = command.lane
        taken, parked = take_decision(
            current, self._ready.stream_waiting(), record.task_id in self._tasks, again
        )
        self._emit(p.Forward(token, submit, taken, parked and parked.task_id))
        if parked is not None:
            self._apply_suspend(parked, Command("suspend", parked.task_id, command.queued_at))
        if taken:
            self._tasks[record.task_id] = record
            self._ready.add_launch(record)

    def _apply_suspend(self, record: TaskRecord | None, command: Command) -> None:
        if record is None or record.state in (RunState.SUSPENDED, RunState.DONE):
            self._refuse("suspend", command.task_id, record, "task cannot be suspended")
            return
        if record is self._current:
            # The task is parked at the boundary where the hub regained control; a span
            # chunk's results so far go out before its `suspended`.
            self._current = None
            now = self._regained_at
            if record.span is not None:
                self._take_run(record, drive=None, ending=False)
                self._report_span(record)
        else:  # queued, or resumed but not running again yet: it parks where it is
            self._ready.discard(record)
            now = self._clock()
            if record.state is RunState.RESUMING:  # it never left: count the time as suspended
                record.suspended_ns += now - record.suspended_at
        record.state = RunState.SUSPENDED
        record.suspensions += 1
        record.suspended_at = now
        self._emit(
            p.Suspended(record.task_id, max(0, now - command.queued_at), record.records, now)
        )

    def _apply_kill(self, record: TaskRecord | None, command: Command) -> None:
        if record is None or record.state is RunState.DONE:
            self._refuse("kill", command.task_id, record, "task is not alive")
            return
        if record.glet is None:  # never started: nothing to unwind
            self._ready.discard(record)
            self._report_outcome(record, Outcome("killed"))
            return
        # Unwind it now, so its finally blocks run and its memory is freed; TaskKilled is
        # raised at the boundary where it is parked.
        parked = None  # the task parked at a boundary while we unwind another: it stays current
        if record is self._current:
            self._current = None
        else:
            parked = self._current
            self._ready.discard(record)
        record.kill_requested = True
        outcome = self._switch_into(record)
        while not isinstance(outcome, Outcome):  # it caught TaskKilled and went on
            outcome = self._switch_into(record)
        self._report_outcome(record, outcome)
        # Discussion: _switch_into made the killed task current; without this the task that
        # was parked here (a kill for a suspended task arrived while it ran) was forgotten,
        # RUNNING for ever. The fuzz tests found it.
        self._current = parked

    def _refuse(self, command: str, task_id: str, record: TaskRecord | None, why: str) -> None:
        """Report a command that does not apply, with the task's state here."""
        state = record.state.value if record else "unknown here"
        self._emit(p.Refused(command, task_id, f"{why} ({state})"))

    def _report_outcome(self, record: TaskRecord, outcome: Outcome) -> None:
        if self._current is record:
            self._current = None
        record.state = RunState.DONE
        self._greenlets.give_back(record.glet)
        record.glet = None
        self._finished += 1
        stats = record.stats(self.executor_id, self._clock())
        self._emit(
            runstate.end_report(record, outcome, stats, self._spool_result, self._keep_result)
        )
        if record.priority == "stream":  # its client waits for it: now, not at the next switch
            self._flush()
        elif record.chunk is None and record.span is None:
            self._functions.ran(record.fn, record.running_ns)
        # Discussion: forgotten only once its report is out, so that `holdings()`, read from
        # another thread, sees it still held or already reported, never neither.
        self._tasks.pop(record.task_id, None)
        # Drop references to inputs so a long-lived executor does not keep them.
        record.args, record.kwargs, record.payload = [], {}, None

    # ---- inside the task's greenlet -------------------------------------------------------------

    def _run_tasks(self, go: object) -> None:
        """Body of every task greenlet: a task, then the next (`TaskGreenlets`). The
        outcome goes by `_ended`: a greenlet waiting for its next task holds none of it."""
        while True:
            self._ended = self._task_main(go)
            if getattr(greenlet.getcurrent(), "tidal_dropped", False):
                return  # dropped while its task was parked: it ends here
            go = self._hub.switch(_ENDED)

    def _task_main(self, go: object) -> Outcome:
        """Run the user's function and capture its outcome (in the task's greenlet)."""
        record = self._current
        assert record is not None and go is _GO  # the hub set both just before switching
        try:
            fn = record.fn
            if isinstance(fn, FunctionRef):
                fn = self._functions.resolve(fn)
            if record.span is not None:
                return Outcome("finished", self._run_span(record, fn))
            if record.chunk is not None:
                return Outcome("finished", self._run_chunk(record, fn))
            if record.payload is not None:
                record.args, record.kwargs = self._unpack(record.payload, fn, record.inputs)
                record.payload = record.inputs = None
            value = self._call_task(fn, record.args, record.kwargs)
            return Outcome("finished", value, payload=pack_result(record, value, self._boundary))
        except TaskKilled:
            return Outcome("killed")
        except BaseException as exc:  # a task's error belongs to its report
            return Outcome("failed", error=describe_failure(exc, __file__))

    def _unpack(
        self, payload: bytes, fn: Callable[..., Any], inputs: list[Any] | None = None
    ) -> tuple[list[Any], dict[str, Any]]:
        """A task's (args, kwargs) from its payload and its `inputs` (other tasks' kept
        results, runtime/kept.py), in its greenlet, read a piece or block at a time with a
        record boundary after each (runtime/payloads.py); a big gated input stays packed
        (`payloads.Blocks`). ProtocolError or DataUnavailable if it cannot be."""
        gated = gated_positions(fn)
        args, kwargs = payloads.open_task_call(payload, self._fetch, self._boundary, gated)
        if inputs:
            kept.resolve_inputs(args, kwargs, inputs, self._fetch, self._boundary, gated)
        self._payload_unpacked()
        return args, kwargs

    def _boundary(self) -> None:
        if self.gate.requested:
            self._checkpoint()

    def _call_task(self, fn: Callable[..., Any], args: list[Any], kwargs: dict[str, Any]) -> Any:
        """Call a task function with its inputs gated; a generator's outputs are its result."""
        call_args, call_kwargs = gate_arguments(fn, args, kwargs, self.gate, self._gated_iterator)
        return self._call_result(fn, fn(*call_args, **call_kwargs))

    def _call_result(self, fn: Callable[..., Any], result: Any) -> Any:
        """What a task function's call returned, as its result (`task.call_result`)."""
        return call_result(fn, result, self.gate, self._checkpoint)

    def _checkpoint(self) -> None:
        """The one door from a running task into the hub.

        Called at a record boundary when the gate is raised. Parks the task here until the
        hub switches it back with the go-ahead (or throws TaskKilled into it).
        """
        current = greenlet.getcurrent()
        record = self._current
        if record is None or record.glet is not current:
            # Discussion: the gate is per kernel; iterating a gated input outside its task
            # (say, a Partition kept in a global and read by another greenlet) must not
            # switch an unrelated greenlet into the hub.
            return
        if record.kill_requested:
            raise TaskKilled(f"task {record.task_id} was killed")
        try:
            reply = self._hub.switch(_ATTENTION)
        except greenlet.GreenletExit:  # greenlet drops a greenlet so: unwind, then end
            current.tidal_dropped = True
            raise
        # Discussion (the waiter check): only the hub may wake a parked task, and only with
        # _GO. Anything else means foreign code switched into this greenlet.
        if reply is not _GO:
            raise RuntimeError(
                f"task {record.task_id} was woken with {reply!r}; only the Tidal "
                "hub may switch into a task's greenlet"
            )
        if record.resume_started_at:
            now = self._clock()
            if record.span is not None:  # its batch's running time starts again here
                record.span.batch_started = now
            self._emit(p.Resumed(record.task_id, now - record.resume_started_at, now))
            self._flush()
            record.resume_started_at = 0

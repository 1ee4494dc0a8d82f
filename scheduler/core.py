"""The scheduler core: a pure state machine. Events in, instructions out.

No sockets, no threads, no sleeping: `SchedulerCore.handle(event)` updates the records of
jobs, tasks and executors, consults the policy where a decision is due, validates what the
policy decided, and returns the messages to send (`ToExecutor`, `ToClient`). Time comes from
the injected monotonic clock only, so tests drive the core with a fake clock and simulated
executors, and the ZeroMQ shell (scheduler/server.py) stays thin.

Invariants the core enforces, whatever the policy says:
* a task is suspended at most `max_suspensions` times (per job, else the cluster's cap);
* a suspended task resumes only on the executor that holds its state, and only into a
  free slot;
* a launch needs free capacity (the slot, or a place in the executor's prefetch queue; a
  stream launch needs the slot itself);
* each task's future completes exactly once: late or duplicate reports are ignored;
* a task whose executor was lost more than `max_retries` times fails instead of running
  again;
* task arguments and results are payloads (bytes) the core forwards and never opens: only
  the client and the executor pack and unpack them (runtime/protocol.py).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Collection, Iterable
from typing import Any

from tidal.runtime import protocol as p
from tidal.scheduler import chunks as ch
from tidal.scheduler import decisions as d
from tidal.scheduler import recovery
from tidal.scheduler.events import (
    ClientJoined,
    ClientRequest,
    Event,
    ExecutorJoined,
    ExecutorLeft,
    ExecutorReport,
    Instruction,
    Tick,
    ToClient,
    ToExecutor,
)
from tidal.scheduler.journal import NullJournal
from tidal.scheduler.policies import (
    BUILTIN_POLICIES,
    DEFAULT_POLICY,
    Policy,
    UnknownPolicy,
    known_policy_names,
    resolve_policy,
)
from tidal.scheduler.state import (
    SLOT_STATES,
    ClusterView,
    Executor,
    Job,
    PendingQueues,
    Task,
    TaskState,
    TaskView,
    check_submission,
    resume_order,
    stat_count,
    status_snapshot,
)

__all__ = [
    "ClientJoined",
    "ClientRequest",
    "ExecutorJoined",
    "ExecutorLeft",
    "ExecutorReport",
    "SchedulerCore",
    "Tick",
    "ToClient",
    "ToExecutor",
]

log = logging.getLogger("tidal.scheduler")

DEFAULT_MAX_SUSPENSIONS = 3
DEFAULT_HEARTBEAT_NS = 500_000_000
# Discussion: three missed heartbeats (1.5 s at the default rate) before an executor is
# declared lost: one late heartbeat on a loaded machine must not cost a requeue.
DEFAULT_MISSED_HEARTBEATS = 3
# A task whose executor is lost more often than this fails: a task that kills its executor
# (a crash in C code, memory exhausted) must not take down every executor in turn.
DEFAULT_MAX_RETRIES = 3
# Prefetch: keep about this much work queued on an executor behind its running task, so that
# tiny tasks are not throttled by one scheduler round trip each. Long tasks get no prefetch
# (a queued long task could not move to an idle executor).
PREFETCH_TARGET_NS = 2_000_000
MAX_PREFETCH = 64
# What a task costs an executor besides running it (decode, switch, report), for the estimate.
TASK_OVERHEAD_NS = 40_000
# Policy switches kept for `status()`: a client switching in a loop must not grow the record
# (and every status snapshot) without bound.
MAX_POLICY_SWITCHES = 100
# Lost executors kept for `status()`, the most recently lost; older records are forgotten, so
# that executors joining under ever-new ids (restarts, or a hostile peer) cost bounded memory.
MAX_LOST_EXECUTORS = 256


class SchedulerCore:
    """Tidal's scheduling state machine; see the module docstring."""

    def __init__(
        self,
        policy: Any = DEFAULT_POLICY,
        *,
        clock: Callable[[], int] = time.monotonic_ns,
        max_suspensions: int = DEFAULT_MAX_SUSPENSIONS,
        heartbeat_ns: int = DEFAULT_HEARTBEAT_NS,
        missed_heartbeats: int = DEFAULT_MISSED_HEARTBEATS,
        max_prefetch: int = MAX_PREFETCH,
        allow_policy_paths: bool = False,
        stealing: bool = True,
        steal_rule: str = "largest",
        max_retries: int = DEFAULT_MAX_RETRIES,
        journal: NullJournal | None = None,
        reclaim_grace_ns: int | None = None,
    ) -> None:
        if max_suspensions < 0:
            raise ValueError(f"max_suspensions must be >= 0, not {max_suspensions}")
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, not {max_retries}")
        if missed_heartbeats < 1:
            raise ValueError(f"missed_heartbeats must be >= 1, not {missed_heartbeats}")
        self.policy: Policy = resolve_policy(policy)
        self.max_suspensions = max_suspensions
        self.heartbeat_ns = heartbeat_ns
        self.lost_after_ns = heartbeat_ns * missed_heartbeats
        self.max_retries = max_retries
        # Where jobs and results are recorded for a restart (scheduler/journal.py).
        self.journal = journal if journal is not None else NullJournal()
        self.restarts = 0  # schedulers that used the journal before this one
        # After a restart: executors known before it that have not said hello again, and
        # until when tasks no executor reported wait for one (scheduler/recovery.py).
        # Discussion: as long as an executor may stay silent before it is declared lost.
        self.reclaim_grace_ns = self.lost_after_ns if reclaim_grace_ns is None else reclaim_grace_ns
        self.awaited: set[str] = set()
        self.reclaim_until: int | None = None
        self.max_prefetch = max_prefetch
        self.allow_policy_paths = allow_policy_paths
        self.stealer = ch.Stealer(steal_rule) if stealing else None
        self.steals_in_flight: dict[str, tuple[str, int]] = {}  # chunk id -> (thief, count)
        self.steal_count = 0
        self._clock = clock
        self.now = clock()
        self.view = ClusterView(self)
        self.executors: dict[str, Executor] = {}
        self.jobs: dict[str, Job] = {}
        self.tasks: dict[str, Task] = {}
        self.clients: set[str] = set()
        self.pending = PendingQueues()
        self.refused: list[tuple[Any, str]] = []  # recent refused decisions, for tests
        self.policy_failures: list[str] = []
        # Switches asked for by clients, oldest first (the last MAX_POLICY_SWITCHES kept).
        self.policy_switches: list[dict[str, Any]] = []
        self._seq = 0
        self._requeue_seq = 0
        self._service_ns: float | None = None  # smoothed cost of one batch task
        self._out: list[Instruction] = []
        self._lost: deque[Executor] = deque()  # lost executors still in `executors`, oldest first
        # Warnings a peer's messages cause (a refused job, a lost executor): at most a few
        # lines per period, however fast a peer sends them.
        self.peer_warning = p.RateLimitedLog(log.warning, clock=lambda: self._clock() / 1e9)
        self._reports: dict[type, Callable[[Executor, Any], None]] = {
            p.Heartbeat: self._on_heartbeat,
            p.ChunkResults: lambda e, m: ch.on_results(self, e, m),
            p.Stolen: lambda e, m: ch.on_stolen(self, e, m),
            p.Started: self._on_started,
            p.Suspended: self._on_suspended,
            p.Resumed: self._on_resumed,
            p.Finished: self._on_finished,
            p.Failed: self._on_failed,
            p.Killed: self._on_killed,
            p.SuspendFailed: self._on_suspend_failed,
            p.Refused: self._on_refused,
            p.Goodbye: self._on_goodbye,
        }
        self._requests: dict[type, Callable[[str, Any], None]] = {
            p.Submit: self._on_submit,
            p.Cancel: self._on_cancel,
            p.StatusRequest: self._on_status_request,
            p.ClientGoodbye: self._on_client_goodbye,
            p.Ping: self._on_ping,
            p.SetPolicy: self._on_set_policy,
            p.Reattach: lambda c, m: recovery.on_reattach(self, c, m),
        }
        state = getattr(self.journal, "state", None)
        if state is not None and not state.empty:
            recovery.restore(self, state)

    # ---- the one entry point ----------------------------------------------------------------

    def handle(self, event: Event) -> list[Instruction]:
        """Apply one event; return the messages to send, in order."""
        self.now = self._clock()
        self._out = []
        if isinstance(event, ExecutorReport):
            executor = self.executors.get(event.executor_id)
            if executor is None or not executor.alive:
                log.debug(
                    "ignored %s from lost or unknown executor %s",
                    event.message.op,
                    event.executor_id,
                )
            else:
                executor.last_seen = self.now
                handler = self._reports.get(type(event.message))
                if handler is None:
                    log.warning(
                        "executor %s sent %s, which executors do not send",
                        event.executor_id,
                        event.message.op,
                    )
                else:
                    handler(executor, event.message)
                    ch.consider_steals(self)
        elif isinstance(event, ClientRequest):
            handler = self._requests.get(type(event.message))
            if handler is None:
                log.warning(
                    "client %s sent %s, which clients do not send",
                    event.client_id,
                    event.message.op,
                )
            else:
                handler(event.client_id, event.message)
        elif isinstance(event, ExecutorJoined):
            self._on_executor_joined(event.hello)
        elif isinstance(event, ExecutorLeft):
            executor = self.executors.get(event.executor_id)
            if executor is not None and executor.alive:
                self._lose_executor(executor, event.reason)
        elif isinstance(event, ClientJoined):
            self.clients.add(event.client_id)
        elif isinstance(event, Tick):
            self._on_tick()
        else:
            raise TypeError(f"not a scheduler event: {event!r}")
        return self._out

    def set_policy(self, policy: Any) -> None:
        """Switch policy; running and pending work carry on under the new one."""
        self.policy = resolve_policy(policy)
        self._consult(lambda pol: pol.tick(self.view))

    # ---- facts policies and views ask for -------------------------------------------------------

    def suspendable(self, task: Task) -> bool:
        return (
            task.state in SLOT_STATES
            and not task.unsuspendable
            and task.suspensions < task.job.max_suspensions
        )

    def free_capacity(self, executor: Executor) -> int:
        if not executor.alive:
            return 0
        load = (executor.slot_task is not None) + len(executor.queued)
        return max(0, 1 + self.prefetch_depth() - load)

    def prefetch_depth(self) -> int:
        """How many launches an executor may hold queued behind its slot now."""
        if self._service_ns is None:
            return 0
        return min(self.max_prefetch, int(PREFETCH_TARGET_NS // max(self._service_ns, 1.0)))

    # ---- policy consultation -------------------------------------------------------------------

    def _consult(self, hook: Callable[[Policy], Iterable[d.Decision] | None]) -> None:
        """Ask the policy (through `hook`), then validate and apply what it decided.

        A policy that raises is reported and replaced by the default policy, which is then
        asked the same question; the scheduler itself keeps running.
        """
        try:
            decisions = list(hook(self.policy) or ())
        except Exception as exc:
            failed = self.policy
            message = f"policy {failed.name!r} raised {type(exc).__name__}: {exc}"
            log.exception("%s; replacing it with the default policy %r", message, DEFAULT_POLICY)
            self.policy_failures.append(message)
            if type(failed) is BUILTIN_POLICIES[DEFAULT_POLICY]:
                raise  # the default policy itself is broken: an internal error, loud
            self.policy = resolve_policy(DEFAULT_POLICY)
            decisions = list(hook(self.policy) or ())
        # Tasks the policy launches in this batch are not swept into an earlier launch's chunk.
        reserved = {x.task_id for x in decisions if isinstance(x, d.Launch)}
        for decision in decisions:
            reason = self.apply(decision, reserved)
            if reason is not None:
                self.refused.append((decision, reason))
                del self.refused[:-100]
                log.info("refused %r from policy %r: %s", decision, self.policy.name, reason)

    def apply(self, decision: Any, reserved: Collection[str] = ()) -> str | None:
        """Carry out `decision` if it is valid now; else return why not."""
        reason = self._validate(decision)
        if reason is None:
            self._carry_out(decision, reserved)
        return reason

    def _validate(self, decision: Any) -> str | None:
        """None if `decision` may be carried out now, else why not."""
        if not isinstance(decision, d.Decision):
            return f"not a decision: {decision!r}"
        task = self.tasks.get(decision.task_id)
        if task is None:
            return "no such task"
        if isinstance(decision, d.Steal):
            return ch.validate_steal(self, task, decision)
        if isinstance(decision, d.Launch):
            executor = self.executors.get(decision.executor_id)
            if task.state is not TaskState.PENDING:
                return f"task is {task.state.value}, not pending"
            if executor is None or not executor.alive:
                return "no such live executor"
            if task.priority == "stream" and executor.slot_task is not None:
                return "a stream launch needs the slot itself, which is busy"
            if self.free_capacity(executor) <= 0:
                return "executor has no free capacity"
            return None
        executor = self.executors.get(task.executor_id or "")
        if executor is None or not executor.alive:
            return "task is not on a live executor"
        if isinstance(decision, d.Suspend):
            if executor.slot_task is not task:
                return f"task does not hold a slot ({task.state.value})"
            if task.unsuspendable:
                return "its executor reported that it reaches no record boundary"
            if task.suspensions >= task.job.max_suspensions:
                return f"suspension cap reached ({task.suspensions} of {task.job.max_suspensions})"
            return None
        if isinstance(decision, d.Resume):
            if task.state is not TaskState.SUSPENDED:
                return f"task is {task.state.value}, not suspended"
            if executor.slot_task is not None:
                return "the executor holding the task's state has no free slot"
            return None
        if task.state in (TaskState.PENDING, TaskState.KILLING, TaskState.DONE):
            return f"task is {task.state.value}"
        return None

    def _carry_out(self, decision: d.Decision, reserved: Collection[str]) -> None:
        task = self.tasks[decision.task_id]
        if isinstance(decision, d.Steal):
            victim = self.executors[task.executor_id]
            self.steals_in_flight[task.task_id] = (decision.executor_id, decision.count)
            self.send(victim, p.Steal(task.task_id, decision.count, self.now))
        elif isinstance(decision, d.Launch):
            executor = self.executors[decision.executor_id]
            if task.job.chunksize is not None:
                chunk = ch.form_chunk(self, task, reserved)
                self.place(executor, chunk)
                self.send(executor, ch.launch_message(self, chunk))
                return
            self.pending.removed(task)
            self.place(executor, task)
            job = task.job
            self.send(
                executor,
                p.Launch(
                    task.task_id,
                    job.fn,
                    job.main_path,
                    task.payload,
                    task.attempt,
                    job.priority,
                    self.now,
                ),
            )
        elif isinstance(decision, d.Suspend):
            executor = self.executors[task.executor_id]
            task.state = TaskState.SUSPENDING
            task.suspensions += 1
            executor.slot_task = None
            executor.suspended[task.task_id] = task
            self.send(executor, p.Suspend(task.task_id, self.now))
        elif isinstance(decision, d.Resume):
            executor = self.executors[task.executor_id]
            task.state = TaskState.RESUMING
            del executor.suspended[task.task_id]
            executor.slot_task = task
            self.send(executor, p.Resume(task.task_id, self.now))
        else:
            self._kill(self.executors[task.executor_id], task, requeue=decision.requeue)

    def place(self, executor: Executor, task: Task) -> None:
        """Put a launched task (or chunk) in the executor's slot, or behind it in its queue.

        A stream launch takes a free slot even when batch work is queued there, as the
        executor runs stream launches first.
        """
        task.state = TaskState.LAUNCHED
        task.executor_id = executor.executor_id
        for subtask in (task.subtasks or {}).values():  # a chunk's tasks run there too
            subtask.executor_id = executor.executor_id
        if executor.slot_task is None and (task.priority == "stream" or not executor.queued):
            executor.slot_task = task
        else:
            executor.queued.append(task)

    def _kill(self, executor: Executor, task: Task, *, requeue: bool) -> None:
        """Send Kill; the task's state stays on the executor until Killed is reported."""
        self._detach(executor, task)
        task.state = TaskState.KILLING
        task.requeue_on_kill = requeue
        executor.suspended[task.task_id] = task
        self.send(executor, p.Kill(task.task_id, self.now))

    # ---- executors ------------------------------------------------------------------------------

    def _on_executor_joined(self, hello: p.Hello) -> None:
        old = self.executors.get(hello.executor_id)
        # Discussion: an executor that says hello while we count it alive thought we were
        # gone (its acks stopped coming): what it still holds of ours stays where it is
        # (recovery.reclaim); the rest is lost with its old connection.
        mine: dict[str, Task] = {}
        if old is not None and old.alive:
            self.peer_warning(f"executor {hello.executor_id} said hello again while alive")
            mine = {t.task_id: t for t in old.tasks() if t.state is not TaskState.DONE}
            old.alive = False
            old.slot_task, old.queued, old.suspended = None, type(old.queued)(), {}
        executor = Executor(hello.executor_id, hello.node, hello.hostname, hello.pid, self.now)
        self.executors[hello.executor_id] = executor
        self.journal.executor_joined(hello.executor_id)
        log.info("executor %s joined from node %s", hello.executor_id, hello.node)
        recovery.reclaim(self, executor, hello.holding, mine)
        if mine:  # what it no longer holds was lost with it
            self.requeue_lost(old, list(mine.values()))
        self.awaited.discard(hello.executor_id)
        self._slot_freed(executor)

    def _slot_freed(self, executor: Executor) -> None:
        self._consult(lambda pol: pol.slot_freed(self.view, self.view.view_of(executor)))

    def _on_heartbeat(self, executor: Executor, beat: p.Heartbeat) -> None:
        executor.add_metrics(beat)
        self._consult(lambda pol: pol.metrics_updated(self.view, self.view.view_of(executor)))

    def _on_started(self, executor: Executor, msg: p.Started) -> None:
        task = self._task_on(executor, msg.task_id)
        # RESUMING too: a task suspended before it ever ran reports its first start then.
        if task is None or task.state not in (TaskState.LAUNCHED, TaskState.RESUMING):
            return
        task.state = TaskState.RUNNING
        task.running_since = self.now
        if task.started_at_ns is None:
            task.started_at_ns = msg.at_ns
            task.first_started_at = self.now
        if task in executor.queued:
            # The executor started a prefetched task before our latest launch reached it: the
            # started one holds the slot now.
            executor.queued.remove(task)
            previous = executor.slot_task
            executor.slot_task = task
            if previous is not None and previous is not task:
                # It is next there (the executor runs stream launches first, then resumed
                # tasks); it must stay tracked, or a lost executor would take it along
                # unnoticed. (One that was running already cannot be, from an honest
                # executor; kept all the same: see _keep_tracked.)
                self._keep_tracked(executor, previous)
                if (
                    previous.state in (TaskState.LAUNCHED, TaskState.RESUMING)
                    and previous.priority == "stream"
                    and task.priority == "batch"
                    and self.policy.preempts
                ):
                    # A stream task could still wait behind a whole batch task: under a
                    # policy that preempts, suspend that task, as the policy meant the
                    # stream task to have the slot.
                    self.apply(d.Suspend(task.task_id))

    def _keep_tracked(self, executor: Executor, task: Task) -> None:
        """Keep a task that lost the slot in `executor`'s records, first in its queue.

        Discussion: a task whose state lives on an executor leaves that executor's records
        only when it ends there or the executor is lost (which requeues it); dropped from
        them, a lost executor would take it along and its future would never complete. An
        honest executor's reports never displace a running task, but an executor that lies
        (or a bug) could; the fuzz tests send such reports.
        """
        executor.queued.appendleft(task)

    def _on_suspended(self, executor: Executor, msg: p.Suspended) -> None:
        task = self._task_on(executor, msg.task_id)
        if task is None or task.state is not TaskState.SUSPENDING:
            return
        task.state = TaskState.SUSPENDED
        task.records = msg.records
        self._stop_running(task)

    def _on_resumed(self, executor: Executor, msg: p.Resumed) -> None:
        task = self._task_on(executor, msg.task_id)
        if task is not None and task.state is TaskState.RESUMING:
            task.state = TaskState.RUNNING
            task.running_since = self.now
            if task in executor.queued:  # it waited behind a task that could not be suspended
                executor.queued.remove(task)
                previous = executor.slot_task
                executor.slot_task = task
                if previous is not None and previous is not task:
                    self._keep_tracked(executor, previous)

    def _on_finished(self, executor: Executor, msg: p.Finished) -> None:
        task = self._task_on(executor, msg.task_id, msg.attempt)
        if task is None:
            return
        if task.subtasks is None and task.priority == "batch":
            cost = stat_count(msg.stats, "running_ns", 0) + TASK_OVERHEAD_NS
            self._service_ns = (
                cost if self._service_ns is None else 0.8 * self._service_ns + 0.2 * cost
            )
        self._end_on(executor, task, msg.stats, "finished", msg.result, None)

    def _on_failed(self, executor: Executor, msg: p.Failed) -> None:
        task = self._task_on(executor, msg.task_id, msg.attempt)
        if task is not None:
            error = [msg.error_type, msg.message, msg.traceback]
            self._end_on(executor, task, msg.stats, "failed", None, error)

    def _end_on(
        self,
        executor: Executor,
        task: Task,
        stats: dict[str, Any],
        outcome: str,
        value: Any,
        error: list[str] | None,
    ) -> None:
        """A task or chunk ended on `executor`: record it, and let the policy fill the slot."""
        self._detach(executor, task)
        if task.subtasks is not None:  # a chunk: its tasks were reported one by one
            ch.end_chunk(self, task, error=error)
        else:
            self._account(task, stats)
            self.complete(task, outcome, value, error)
        self._slot_freed(executor)

    def _on_killed(self, executor: Executor, msg: p.Killed) -> None:
        task = self._task_on(executor, msg.task_id, msg.attempt)
        if task is None:
            return
        running_ns = stat_count(msg.stats, "running_ns", 0)
        task.work_lost_ns += running_ns
        self._detach(executor, task)
        error = None
        if task.state is TaskState.KILLING and not task.requeue_on_kill:
            error = ["TaskKilled", f"killed by the {self.policy.name!r} policy", ""]
        # Otherwise killed to make room, withdrawn, or killed by a shutting-down executor:
        # it runs again from scratch (a new attempt if it had started).
        started = running_ns > 0
        if task.subtasks is not None:
            ch.end_chunk(self, task, error=error, started=started)
        else:
            self.settle([task], error=error, started=started)
        self._slot_freed(executor)

    def _on_suspend_failed(self, executor: Executor, msg: p.SuspendFailed) -> None:
        task = self._task_on(executor, msg.task_id)
        if task is None or task.state is not TaskState.SUSPENDING:
            return
        self.peer_warning(f"task {task.task_id} cannot be suspended: {msg.reason}")
        task.state = TaskState.RUNNING
        task.suspensions -= 1
        task.unsuspendable = True
        del executor.suspended[task.task_id]
        usurper = executor.slot_task
        executor.slot_task = task
        if usurper is not None and usurper.state is TaskState.LAUNCHED:
            # It was sent to take the slot and now waits behind a task that will not yield:
            # withdraw it and let the policy place it elsewhere.
            self._kill(executor, usurper, requeue=True)
        elif usurper is not None:
            # A resumed task waits there behind it; keep track of it (its state lives there).
            self._keep_tracked(executor, usurper)

    def _on_refused(self, executor: Executor, msg: p.Refused) -> None:
        task = self._task_on(executor, msg.task_id)
        if msg.command == "suspend" and task is not None and task.state is TaskState.SUSPENDING:
            # The suspend crossed the task's end on the wire (its finish report is on the way),
            # so it was no suspension: give it back to the cap.
            task.suspensions = max(0, task.suspensions - 1)
            return
        if msg.command == "suspend" or task is None:
            # Expected: the command crossed the task's end report (already handled here).
            log.debug(
                "executor %s refused %s of %s: %s",
                executor.executor_id,
                msg.command,
                msg.task_id,
                msg.reason,
            )
            return
        self.peer_warning(
            f"executor {executor.executor_id} refused {msg.command} of task {msg.task_id}: "
            f"{msg.reason}"
        )

    def _on_goodbye(self, executor: Executor, msg: p.Goodbye) -> None:
        self._lose_executor(executor, f"it said goodbye ({msg.reason})")

    def _on_tick(self) -> None:
        if self.reclaim_until is not None and (not self.awaited or self.now >= self.reclaim_until):
            recovery.end_grace(self)
        for executor in list(self.executors.values()):
            if executor.alive and self.now - executor.last_seen > self.lost_after_ns:
                silent_ms = (self.now - executor.last_seen) / 1e6
                self._lose_executor(executor, f"no heartbeat for {silent_ms:.0f} ms")
        self._consult(lambda pol: pol.tick(self.view))
        self._resume_parked()
        ch.consider_steals(self)

    def _resume_parked(self) -> None:
        """Resume a task the policy left suspended on an executor whose slot stays idle.

        Discussion: a policy that never suspends (fifo) never resumes either, so after a switch
        away from one that does (lb), tasks it suspended would wait forever and their futures
        never complete. The core keeps that liveness invariant itself, for every policy: at a
        tick, an executor with nothing in its slot or queue resumes its first suspended task.
        A policy that resumes (lb does, whenever a slot frees) never leaves such a slot, so
        this only acts where the policy has no plan for the task.
        """
        for executor in self.executors.values():
            if not executor.alive or executor.slot_task is not None or executor.queued:
                continue
            parked = [t for t in executor.suspended.values() if t.state is TaskState.SUSPENDED]
            if not parked:
                continue
            task = min(parked, key=resume_order)
            reason = self.apply(d.Resume(task.task_id))
            if reason is None:
                log.info(
                    "resumed task %s, which policy %r left suspended on idle executor %s",
                    task.task_id,
                    self.policy.name,
                    executor.executor_id,
                )
            else:  # cannot happen while the checks above match _validate's; say so if it does
                log.error("cannot resume parked task %s: %s", task.task_id, reason)

    def _lose_executor(self, executor: Executor, reason: str) -> None:
        """Declare `executor` lost: requeue every task whose state lived there."""
        self.peer_warning(f"executor {executor.executor_id} lost: {reason}")
        executor.alive = False
        self.journal.executor_lost(executor.executor_id)
        self._lost.append(executor)
        while len(self._lost) > MAX_LOST_EXECUTORS:
            old = self._lost.popleft()
            if self.executors.get(old.executor_id) is old:  # not replaced by a new join
                del self.executors[old.executor_id]
        tasks = [t for t in executor.tasks() if t.state is not TaskState.DONE]
        executor.slot_task, executor.queued, executor.suspended = None, type(executor.queued)(), {}
        self.requeue_lost(executor, tasks)

    def requeue_lost(self, executor: Executor, tasks: list[Task]) -> None:
        """Tasks whose state was lost with `executor`: queued again as a new attempt, or
        failed past `max_retries` losses.

        Discussion: only a task that had started there counts the loss toward `max_retries`
        (the limit is for a task that keeps taking its executors down); one that was only
        launched or queued there is requeued free. Otherwise any peer posing as an
        executor (no keys) could fail a job by accepting its tasks and leaving, four times:
        the fuzz test's fake executors did.
        """
        lost = []
        for task in tasks:
            lost_on = None if task.state is TaskState.LAUNCHED else executor.executor_id
            if task.subtasks is not None:  # a chunk: requeue the subtasks it had not reported
                ch.end_chunk(self, task, lost_on=lost_on)
                continue
            # Count work only up to the executor's last sign of life; after that, no one knows.
            self._stop_running(task, at=executor.last_seen)
            task.work_lost_ns += task.running_estimate_ns
            if lost_on is not None:
                task.lost_on.append(lost_on)  # settle() fails it past the limit
            lost.append(task)
        self.settle(lost)

    def unclaimed_count(self) -> int:
        """Tasks waiting, after a restart, for an executor to report them."""
        if self.reclaim_until is None:
            return 0
        return sum(t.state is TaskState.UNCLAIMED for t in self.tasks.values())

    # ---- clients --------------------------------------------------------------------------------

    def _on_submit(self, client_id: str, msg: p.Submit) -> None:
        known = self.jobs.get(msg.job_id)
        if known is not None and known.client_id == client_id:
            # Discussion: a client that reconnected submits again the jobs it could not be
            # sure we had; the same job twice from the same client is that, not a mistake.
            log.debug("job %s from client %s is known already", msg.job_id, client_id)
            return
        problem = check_submission(msg, self.jobs, self.tasks)
        task_ids = [t[0] for t in msg.tasks if isinstance(t, list) and t and isinstance(t[0], str)]
        if problem is not None:
            self.peer_warning(f"refused job {msg.job_id} from client {client_id}: {problem}")
            error = ["ValueError", f"job {msg.job_id} refused by the scheduler: {problem}", ""]
            self._to_client(client_id, [[tid, "failed", None, error, {}] for tid in task_ids])
            return
        self.journal.submitted(client_id, msg)
        new = []
        for task in self.add_job(client_id, msg):
            self.pending.push(task)
            new.append(TaskView(task, self))
        self._consult(lambda pol: pol.tasks_submitted(self.view, new))

    def add_job(self, client_id: str, msg: p.Submit, *, skip: Collection[str] = ()) -> list[Task]:
        """Record an accepted job and its tasks (but those in `skip`); return the tasks."""
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
        self.jobs[job.job_id] = job
        tasks = []
        for entry in msg.tasks:
            task_id, payload = entry[:2]
            if task_id in skip:
                continue
            options = entry[2] if len(entry) > 2 else {}
            self._seq += 1
            task = Task(task_id, job, payload, self._seq, self.now)
            task.preferred = tuple(options.get("preferred", ()))
            self.tasks[task_id] = task
            tasks.append(task)
        return tasks

    def _on_cancel(self, client_id: str, msg: p.Cancel) -> None:
        for task_id in msg.task_ids:
            task = self.tasks.get(task_id) if isinstance(task_id, str) else None
            if task is None or task.job.client_id != client_id or task.state is TaskState.DONE:
                continue
            task.cancel_requested = True
            if task.state is TaskState.PENDING:
                self.pending.removed(task)
                self.complete(task, "cancelled", None, None)
            elif task.chunk is not None:
                # Inside a chunk: done for its client now; its result, if it comes, is ignored.
                task.chunk.subtasks.pop(task.task_id, None)
                self.complete(task, "cancelled", None, None)
            elif task.state is not TaskState.KILLING:
                self.journal.cancel_requested(task.job.job_id, task_id)
                if task.state is TaskState.UNCLAIMED:  # nobody reported it yet: done
                    self.complete(task, "cancelled", None, None)
                    continue
                executor = self.executors[task.executor_id]
                self._kill(executor, task, requeue=False)  # cancel_requested decides on Killed
                self._slot_freed(executor)

    def _on_status_request(self, client_id: str, msg: p.StatusRequest) -> None:
        self._out.append(ToClient(client_id, p.Status(msg.request_id, self.status())))

    def _on_ping(self, client_id: str, msg: p.Ping) -> None:
        self._out.append(ToClient(client_id, p.Pong(msg.request_id, msg.sent_ns)))

    def _on_client_goodbye(self, client_id: str, msg: p.ClientGoodbye) -> None:
        self.clients.discard(client_id)
        self.journal.client_left(client_id)

    def _on_set_policy(self, client_id: str, msg: p.SetPolicy) -> None:
        ok, message = self._switch_policy(msg.policy, client_id)
        # str(): `name` is a class attribute a third-party policy may have set to anything.
        answer = p.PolicySet(msg.request_id, ok, str(self.policy.name), message)
        self._out.append(ToClient(client_id, answer))

    def _switch_policy(self, spec: str, client_id: str) -> tuple[bool, str]:
        """Switch to the policy a client named; (whether it worked, what to tell the client)."""
        if ":" in spec and not self.allow_policy_paths:
            # Discussion: a "module:Class" path makes this process import a module a client
            # named, in the one thread every scheduling decision goes through. Only names
            # (built-in or installed entry points) unless the operator allowed paths.
            return False, (
                f"policy {spec!r} refused: this scheduler accepts policy names only "
                f"({', '.join(known_policy_names())}); start it with --allow-policy-paths "
                "to switch to a 'module:Class' path"
            )
        try:
            policy = resolve_policy(spec)
        except (Exception, SystemExit) as exc:
            # Discussion: resolving may import a module the client named, in this process, and
            # construct a class from it; whatever that raises (SystemExit too: a script that
            # runs when imported) refuses the switch and leaves the scheduler as it was.
            problem = str(exc) if isinstance(exc, UnknownPolicy) else f"{type(exc).__name__}: {exc}"
            self.peer_warning(f"refused policy {spec!r} from client {client_id}: {problem}")
            return False, f"policy {spec!r} refused: {problem}"
        before = self.policy
        self.set_policy(policy)
        self.policy_switches.append(
            {
                "at_ns": self.now,
                "from_policy": str(before.name),  # the words of AdaptivePolicy's Switch
                "to_policy": str(policy.name),
                "reason": f"requested by client {client_id}",
            }
        )
        del self.policy_switches[:-MAX_POLICY_SWITCHES]
        log.info(
            "policy switched from %r to %r, requested by client %s",
            before.name,
            policy.name,
            client_id,
        )
        if self.policy is not policy:
            # It raised when first consulted (set_policy asks its tick hook) and _consult has
            # replaced it with the default, as it does any failing policy.
            return False, (
                f"policy {policy.name!r} failed when first consulted and was replaced by the "
                f"default policy {self.policy.name!r}: {self.policy_failures[-1]}"
            )
        return True, f"policy is now {policy.name} (was {before.name})"

    def status(self) -> dict[str, Any]:
        """A snapshot for `tidal status` and `Client.status()` (msgpack-encodable)."""
        return status_snapshot(self)

    # ---- helpers --------------------------------------------------------------------------------

    def _task_on(self, executor: Executor, task_id: str, attempt: int | None = None) -> Task | None:
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

    def _detach(self, executor: Executor, task: Task) -> None:
        """Remove `task` from wherever it sits on `executor`."""
        if executor.slot_task is task:
            executor.slot_task = None
        elif task in executor.queued:
            executor.queued.remove(task)
        executor.suspended.pop(task.task_id, None)

    def _stop_running(self, task: Task, at: int | None = None) -> None:
        """Add the time since the task last started or resumed to its running estimate."""
        if task.running_since is not None:
            end = self.now if at is None else at
            task.running_estimate_ns += max(0, end - task.running_since)
            task.running_since = None

    def _account(self, task: Task, stats: dict[str, Any]) -> None:
        task.suspensions = stat_count(stats, "suspensions", task.suspensions)  # what happened
        task.running_ns = stat_count(stats, "running_ns", task.running_ns)
        task.suspended_ns = stat_count(stats, "suspended_ns", task.suspended_ns)
        task.records = stat_count(stats, "records", task.records)
        task.finished_at_ns = stat_count(stats, "finished_at_ns", None)

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
                task.lost_on.append(lost_on)
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

    def requeue(self, tasks: list[Task], *, attempt: bool = True) -> None:
        """Queue tasks again at the front of their class (a new attempt if `attempt`)."""
        if not tasks:
            return
        views = []
        for task in reversed(tasks):  # pushed to the front, so keep their relative order
            task.state = TaskState.PENDING
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
            self.pending.push(task, front=True)
            views.append(TaskView(task, self))
        self._consult(lambda pol: pol.tasks_submitted(self.view, views))

    def complete(self, task: Task, outcome: str, value: Any, error: list[str] | None) -> None:
        """Finish a task exactly once, count it in its job, and tell its client.

        `value` is the result's payload as the executor sent it (nil unless finished).
        """
        task.state = TaskState.DONE
        job = task.job
        job.count_end(outcome)
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
        task.payload = b""  # its arguments are no longer needed here
        item = [task.task_id, outcome, value, error, stats]
        self.journal.ended(job.job_id, item)  # the shell commits before it sends the result
        self._to_client(job.client_id, [item])

    def answer(self, client_id: str, message: p.Message) -> None:
        """Send `message` to a connected client (results go through `_to_client`)."""
        if isinstance(message, p.Results):
            self._to_client(client_id, message.items)
        else:
            self._out.append(ToClient(client_id, message))

    def _to_client(self, client_id: str, items: list[list[Any]]) -> None:
        if client_id in self.clients:
            self._out.append(ToClient(client_id, p.Results(items)))

    def send(self, executor: Executor, message: p.Message) -> None:
        self._out.append(ToExecutor(executor.executor_id, message))

"""The scheduler core: a pure state machine. Events in, instructions out.

No sockets, no threads, no sleeping, no files: `SchedulerCore.handle(event)` reads the
event, consults the policy where a decision is due, validates what the policy decided, and
has the scheduler's records (scheduler/records.py) carry out the valid decisions. It returns
what the step sends (`ToExecutor`, `ToClient`) and notes (`Note`: what the journal and the
event log write). Time comes from the injected monotonic clock only, so tests drive the
core with a fake clock and simulated executors, and the ZeroMQ shell (scheduler/server.py)
stays thin.

Invariants the core enforces, whatever the policy says:
* a task is suspended at most `max_suspensions` times (per job, else the cluster's cap),
  and killed by a policy to make room at most as many times: past either cap it runs on;
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
from collections.abc import Callable, Collection, Iterable
from typing import Any

from tidal.runtime import protocol as p
from tidal.runtime.logs import RateLimitedLog
from tidal.scheduler import chunks as ch
from tidal.scheduler import decisions as d
from tidal.scheduler import events as ev
from tidal.scheduler import lanes, recovery
from tidal.scheduler.events import (
    ClientJoined,
    ClientRequest,
    Deadline,
    Event,
    ExecutorJoined,
    ExecutorLeft,
    ExecutorReport,
    Instruction,
    PassEnded,
    SubmitUnreadable,
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
from tidal.scheduler.records import (
    ExecutorRecord,
    Records,
    Task,
    TaskState,
    resume_order,
    stat_count,
)
from tidal.scheduler.records.lineage import inputs_problem
from tidal.scheduler.tally import Tally
from tidal.scheduler.views import (
    ClusterView,
    TaskView,
    check_submission,
    refused_ids,
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
# Launches queued behind an executor's slot, at most (scheduler/records/books.py, prefetch).
MAX_PREFETCH = 256
# Policy switches kept for `status()`: a client switching in a loop must not grow the record
# (and every status snapshot) without bound.
MAX_POLICY_SWITCHES = 100
# Why a decision for a busy executor is refused (scheduler/records/books.py, `busy`).
BUSY = "its executor is busy (silent, its connection up: a long C call)"


class SchedulerCore:
    """Tidal's scheduling state machine; see the module docstring.

    `lose_silent=False`: an executor whose heartbeats are late is counted busy, not lost;
    whoever drives the core then tells it of executors that are gone (`ExecutorLeft`).

    `journal` is read, never written: what it held when opened is restored, and a client
    that reconnects gets the results it kept. What to write into it comes out of `handle`
    as notes (`journal.apply(note)`).
    """

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
        lose_silent: bool = True,
        consult_per_pass: bool = False,
    ) -> None:
        if max_suspensions < 0:
            raise ValueError(f"max_suspensions must be >= 0, not {max_suspensions}")
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, not {max_retries}")
        if missed_heartbeats < 1:
            raise ValueError(f"missed_heartbeats must be >= 1, not {missed_heartbeats}")
        self.policy: Policy = resolve_policy(policy)
        self.heartbeat_ns = heartbeat_ns
        self.lost_after_ns = heartbeat_ns * missed_heartbeats
        # Whether an executor silent for `lost_after_ns` is lost (the simulation's, the
        # tests' default) or only busy: the server judges liveness by the connection
        # (scheduler/liveness.py), and a long C call makes heartbeats late, not an executor
        # dead.
        self.lose_silent = lose_silent
        self.journal = journal if journal is not None else NullJournal()
        self.allow_policy_paths = allow_policy_paths
        self.stealer = ch.Stealer(steal_rule) if stealing else None
        self._clock = clock
        self.records = Records(
            max_suspensions=max_suspensions,
            max_retries=max_retries,
            max_prefetch=max_prefetch,
            clock_s=lambda: self._clock() / 1e9,
            on_pending=self._on_pending,
            overdue_makes_busy=not lose_silent,
        )
        self.records.now = clock()
        self.view = ClusterView(self.records)
        self.refused: list[tuple[Any, str]] = []  # recent refused decisions, for tests
        # What the core did, counted (scheduler/tally.py), and refused decisions logged at
        # warning level at a bounded rate (a policy that keeps asking the impossible once
        # wrote 8,969 lines in 5 s at info level).
        self.tally = Tally()
        self._refusals_log = RateLimitedLog(
            log, burst=5, period_s=60.0, clock=lambda: self.records.now / 1e9
        )
        self.policy_failures: list[str] = []
        # Switches asked for by clients, oldest first (the last MAX_POLICY_SWITCHES kept).
        self.policy_switches: list[dict[str, Any]] = []
        self._reports: dict[type, Callable[[ExecutorRecord, Any], None]] = {
            p.Heartbeat: self._on_heartbeat,
            p.ChunkResults: lambda e, m: ch.on_results(self.records, e, m),
            p.ChunkBatch: lambda e, m: ch.on_batch(self.records, e, m),
            p.Stolen: lambda e, m: ch.on_stolen(self.records, e, m),
            p.Received: self._on_received,
            p.Started: self._on_started,
            p.Suspended: self._on_suspended,
            p.Resumed: self._on_resumed,
            p.Finished: self._on_finished,
            p.Failed: self._on_failed,
            p.Killed: self._on_killed,
            p.SuspendFailed: self._on_suspend_failed,
            p.Refused: self._on_refused,
            p.Goodbye: self._on_goodbye,
            p.Forward: lambda e, m: lanes.on_forward(self, e, m),
        }
        self.lanes = lanes.LaneTokens()  # each client's token, the lanes told (runtime/lanes.py)
        self._requests: dict[type, Callable[[str, Any], None]] = {
            p.Submit: self._on_submit,
            p.Cancel: self._on_cancel,
            p.Release: self._on_release,
            p.Missing: self._on_missing,
            p.StreamLag: self._on_stream_lag,
            p.StatusRequest: self._on_status_request,
            p.ClientGoodbye: self._on_client_goodbye,
            p.Ping: self._on_ping,
            p.SetPolicy: self._on_set_policy,
            p.Reattach: self._on_reattach,
        }
        state = getattr(self.journal, "state", None)
        if state is not None and not state.empty:
            # Discussion: as long as an executor may stay silent before it is declared lost.
            grace = self.lost_after_ns if reclaim_grace_ns is None else reclaim_grace_ns
            recovery.restore(self.records, state, grace, self.journal.path, self.journal.results)
        # What restoring did (tasks cancelled before the restart end now) comes out of the
        # first step; every step starts with nothing else.
        self._first_out, self.records.out = self.records.out, []
        # With `consult_per_pass` (the server's), the policy hears of freed slots, and the
        # stealer looks for work, once per pass of the shell's loop (`PassEnded`), not once
        # per report: a frame of 50 finished tasks from one executor is one question.
        self._per_pass = consult_per_pass
        self._freed: dict[str, ExecutorRecord] = {}
        self._steals_due = False

    # ---- the one entry point ----------------------------------------------------------------

    def handle(self, event: Event) -> list[Instruction]:
        """Apply one event; return the messages to send and the notes, in order."""
        records = self.records
        records.now = self._clock()
        records.out, self._first_out = self._first_out, []
        if isinstance(event, ExecutorReport):
            executor = records.executors.get(event.executor_id)
            if executor is None or not executor.alive:
                log.debug(
                    "ignored %s from lost or unknown executor %s",
                    event.message.op,
                    event.executor_id,
                )
            else:
                records.seen(executor)
                handler = self._reports.get(type(event.message))
                if handler is None:
                    log.warning(
                        "executor %s sent %s, which executors do not send",
                        event.executor_id,
                        event.message.op,
                    )
                else:
                    handler(executor, event.message)
                    if type(event.message) is not p.Received:  # it moves no task: no steal
                        if self._per_pass:
                            self._steals_due = True
                        else:
                            self._consider_steals()
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
            executor = records.executors.get(event.executor_id)
            if executor is not None and executor.alive:
                records.lose(executor, event.reason)
        elif isinstance(event, ClientJoined):
            records.clients.add(event.client_id)
            self.lanes.tell(records, [event.client_id], self.policy)
        elif isinstance(event, SubmitUnreadable):
            known = records.jobs.get(event.job_id)
            if known is None or known.client_id != event.client_id:  # else sent again, mangled
                self._refuse_job(event.client_id, event.job_id, event.task_ids, event.problem)
        elif isinstance(event, Tick):
            self._end_pass()
            self._on_tick()
        elif isinstance(event, PassEnded):
            self._end_pass()
        elif isinstance(event, Deadline):
            records.mark_overdue()
        else:
            raise TypeError(f"not a scheduler event: {event!r}")
        records.settle_retired()
        if records.lanes_changed:
            records.lanes_changed = False
            self.lanes.tell(records, None, self.policy)
        out, records.out = records.out, []
        self.tally.step(out, records)
        return out

    def set_policy(self, policy: Any, reason: str = "") -> None:
        """Switch policy; running and pending work carry on under the new one."""
        before, self.policy = self.policy, resolve_policy(policy)
        self.records.lanes_changed = True  # its lanes, or none (scheduler/lanes.py)
        self.records.note(ev.PolicyChanged(str(self.policy.name), str(before.name), reason))
        self._consult(lambda pol: pol.tick(self.view))

    def status(self) -> dict[str, Any]:
        """A snapshot for `tidal status` and `Client.status()` (msgpack-encodable)."""
        policy = {
            "policy": self.policy.name,
            "policy_failures": list(self.policy_failures),
            "policy_switches": [dict(switch) for switch in self.policy_switches],
        }
        return status_snapshot(self.records, policy, self.tally.as_dict(self.records.now))

    def wake_at(self) -> int | None:
        """When (on the core's clock, ns) the shell should hand it a `Deadline` if nothing
        else comes first: a suspension sent becomes overdue then (scheduler/records/busy.py).
        None: nothing is due before the next tick. (It drops the deadlines of suspensions
        answered since.)"""
        return self.records.next_overdue_at()

    @property
    def now(self) -> int:
        """The clock at the current (or last) step, in ns."""
        return self.records.now

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
            self.records.lanes_changed = True
            self.records.note(ev.PolicyChanged(str(self.policy.name), str(failed.name), message))
            decisions = list(hook(self.policy) or ())
        # Tasks the policy launches in this batch are not swept into an earlier launch's chunk.
        reserved = {x.task_id for x in decisions if isinstance(x, d.Launch)}
        for decision in decisions:
            reason = self.apply(decision, reserved)
            if reason is not None:
                self._refused(decision, reason)

    def _refused(self, decision: Any, reason: str) -> None:
        """A policy's decision that could not be carried out: noted (the event log and the
        tally count it) and logged, at a bounded rate."""
        self.refused.append((decision, reason))
        del self.refused[:-100]
        policy = str(self.policy.name)
        if isinstance(decision, d.Decision):
            kind = type(decision).__name__.lower()
            task = self.records.tasks.get(decision.task_id)
            executor_id = getattr(decision, "executor_id", None) or (task and task.executor_id)
            self.records.note(
                ev.DecisionRefused(kind, str(decision.task_id), executor_id, policy, reason)
            )
        else:
            self.records.note(ev.DecisionRefused("unknown", "", None, policy, reason))
        if self._refusals_log.would_log():
            self._refusals_log(f"refused {decision!r} from policy {policy!r}: {reason}"[:500])
        else:
            self._refusals_log.suppress()  # counted for the period's summary, not formatted

    def _on_pending(self, tasks: list[Task]) -> None:
        """Tasks became pending again (requeued): the policy hears of them as of new ones."""
        views = [TaskView(task, self.records) for task in tasks]
        self._consult(lambda pol: pol.tasks_submitted(self.view, views))

    def _slot_freed(self, executor: ExecutorRecord) -> None:
        if self._per_pass:
            self._freed[executor.executor_id] = executor
            return
        self._consult(lambda pol: pol.slot_freed(self.view, self.view.view_of(executor)))

    def _end_pass(self) -> None:
        """Ask what `consult_per_pass` put off: the slots freed, then steals."""
        freed, self._freed = self._freed, {}
        for executor in freed.values():
            if executor.alive:
                view = self.view.view_of(executor)
                self._consult(lambda pol, view=view: pol.slot_freed(self.view, view))
        if self._steals_due:
            self._steals_due = False
            self._consider_steals()

    def _consider_steals(self) -> None:
        """Let the stealer propose steals for idle executors; validate and apply them."""
        if self.stealer is None:
            return
        for decision in self.stealer.propose(self.records):
            reason = self.apply(decision)
            if reason is not None:
                log.debug("refused steal %r: %s", decision, reason)

    def apply(self, decision: Any, reserved: Collection[str] = ()) -> str | None:
        """Carry out `decision` if it is valid now; else return why not."""
        reason = self._validate(decision)
        if reason is None:
            self._carry_out(decision, reserved)
        return reason

    def _validate(self, decision: Any) -> str | None:
        """None if `decision` may be carried out now, else why not."""
        records = self.records
        if not isinstance(decision, d.Decision):
            return f"not a decision: {decision!r}"
        task = records.tasks.get(decision.task_id)
        if task is None:
            return "no such task"
        if isinstance(decision, d.Steal):
            return ch.validate_steal(records, task, decision)
        if isinstance(decision, d.Launch):
            executor = records.executors.get(decision.executor_id)
            if task.state is not TaskState.PENDING:
                return f"task is {task.state.value}, not pending"
            if executor is None or not executor.alive:
                return "no such live executor"
            if executor.busy:
                return BUSY
            if task.priority == "stream" and executor.slot_task is not None:
                return "a stream launch needs the slot itself, which is busy"
            if records.free_capacity(executor) <= 0:
                return "executor has no free capacity"
            return None
        executor = records.executors.get(task.executor_id or "")
        if executor is None or not executor.alive:
            return "task is not on a live executor"
        cap = task.job.max_suspensions
        if isinstance(decision, d.Suspend):
            if executor.slot_task is not task:
                return f"task does not hold a slot ({task.state.value})"
            if executor.busy:
                return BUSY
            if task.unsuspendable:
                return "its executor reported that it reaches no record boundary"
            if task.suspensions >= cap:
                return f"suspension cap reached ({task.suspensions} of {cap})"
            return None
        if isinstance(decision, d.Resume):
            if task.state is not TaskState.SUSPENDED:
                return f"task is {task.state.value}, not suspended"
            if executor.slot_task is not None:
                return "the executor holding the task's state has no free slot"
            return None
        if task.state in (TaskState.PENDING, TaskState.KILLING, TaskState.DONE):
            return f"task is {task.state.value}"
        if decision.requeue and task.kills >= cap:
            # The suspension cap's twin: a task killed to make room that often runs on.
            return f"kill cap reached ({task.kills} of {cap})"
        return None

    def _carry_out(self, decision: d.Decision, reserved: Collection[str]) -> None:
        records = self.records
        task = records.tasks[decision.task_id]
        if isinstance(decision, d.Steal):
            ch.start_steal(records, task, decision)
        elif isinstance(decision, d.Launch):
            executor = records.executors[decision.executor_id]
            if task.job.chunksize is None:
                records.launch(executor, task)
            else:
                size = ch.chunk_size(records, task.job)
                records.launch_chunk(executor, records.form_chunk(task, size, reserved))
        elif isinstance(decision, d.Suspend):
            records.suspend(records.executors[task.executor_id], task)
        elif isinstance(decision, d.Resume):
            records.resume(records.executors[task.executor_id], task)
        else:
            executor = records.executors[task.executor_id]
            records.kill(executor, task, requeue=decision.requeue, to_make_room=decision.requeue)

    # ---- executors ------------------------------------------------------------------------------

    def _on_executor_joined(self, hello: p.Hello) -> None:
        records = self.records
        executor, old, mine = records.join(hello)
        recovery.reclaim(records, executor, hello.holding, mine)
        if mine:  # what it no longer holds was lost with it
            records.requeue_lost(old, list(mine.values()))
        records.awaited.discard(hello.executor_id)
        records.admit_waiting()  # inputs kept on it may be there again (after a restart)
        self._slot_freed(executor)

    def _on_heartbeat(self, executor: ExecutorRecord, beat: p.Heartbeat) -> None:
        executor.add_metrics(beat)
        self._consult(lambda pol: pol.metrics_updated(self.view, self.view.view_of(executor)))

    def _on_received(self, executor: ExecutorRecord, msg: p.Received) -> None:
        # Discussion: a malformed or stale item is skipped, as stale reports are (a peer can
        # only mark its own launches, and nothing is kept per item).
        for item in msg.launches:
            if not (
                type(item) is list
                and len(item) == 3
                and type(item[0]) is str
                and type(item[1]) is int
                and type(item[2]) is int
            ):
                continue
            task = self.records.task_on(executor, item[0], item[1])
            if task is not None and task.launched_ns == item[2]:
                task.received = True

    def _on_started(self, executor: ExecutorRecord, msg: p.Started) -> None:
        task = self.records.task_on(executor, msg.task_id, msg.attempt)
        # RESUMING too: a task suspended before it ever ran reports its first start then.
        if task is None or task.state not in (TaskState.LAUNCHED, TaskState.RESUMING):
            return
        # If the executor started a prefetched task before our latest launch reached it, the
        # started one holds the slot now, and the one it displaced is next there (the
        # executor runs stream launches first, then resumed tasks).
        previous = self.records.started(executor, task, msg.at_ns)
        if (
            previous is not None
            and previous.state in (TaskState.LAUNCHED, TaskState.RESUMING)
            and previous.priority == "stream"
            and task.priority == "batch"
            and self.policy.preempts
        ):
            # A stream task could still wait behind a whole batch task: under a policy that
            # preempts, suspend that task, as the policy meant the stream task to have the slot.
            self.apply(d.Suspend(task.task_id))

    def _on_suspended(self, executor: ExecutorRecord, msg: p.Suspended) -> None:
        task = self.records.task_on(executor, msg.task_id)
        if task is None or task.state is not TaskState.SUSPENDING:
            return
        self.records.suspended(task, msg.records)

    def _on_resumed(self, executor: ExecutorRecord, msg: p.Resumed) -> None:
        task = self.records.task_on(executor, msg.task_id)
        if task is not None and task.state is TaskState.RESUMING:
            self.records.resumed(executor, task)

    def _on_finished(self, executor: ExecutorRecord, msg: p.Finished) -> None:
        task = self.records.task_on(executor, msg.task_id, msg.attempt)
        if task is None:
            self.records.stale_result(executor, msg)
            return
        self._started_by_end(executor, task, msg.stats)
        if task.subtasks is None and task.priority == "batch":
            self.records.measured(msg.stats)
        self.records.end_on(executor, task, msg.stats, "finished", msg.result, None)
        self._slot_freed(executor)

    def _on_failed(self, executor: ExecutorRecord, msg: p.Failed) -> None:
        task = self.records.task_on(executor, msg.task_id, msg.attempt)
        if task is not None:
            self._started_by_end(executor, task, msg.stats)
            error = [msg.error_type, msg.message, msg.traceback]
            self.records.end_on(executor, task, msg.stats, "failed", None, error)
            self._slot_freed(executor)

    def _started_by_end(self, executor: ExecutorRecord, task: Task, stats: dict[str, Any]) -> None:
        """A task that ended before its `started` went out reports only its end
        (runtime/reports.py): if the books still have it launched (or resuming: a task
        suspended before it ever ran sends its first `started` when resumed), it started
        `running_ns` before it finished."""
        if task.state not in (TaskState.LAUNCHED, TaskState.RESUMING):
            return
        at_ns = max(0, stat_count(stats, "finished_at_ns", 0) - stat_count(stats, "running_ns", 0))
        self.records.started(executor, task, at_ns)
        self.records.note(ev.FoldedStart(task.task_id))

    def _on_killed(self, executor: ExecutorRecord, msg: p.Killed) -> None:
        task = self.records.task_on(executor, msg.task_id, msg.attempt)
        if task is None:
            return
        running_ns = stat_count(msg.stats, "running_ns", 0)
        self.records.killed(executor, task, running_ns, str(self.policy.name))
        self._slot_freed(executor)

    def _on_suspend_failed(self, executor: ExecutorRecord, msg: p.SuspendFailed) -> None:
        task = self.records.task_on(executor, msg.task_id)
        if task is None or task.state is not TaskState.SUSPENDING:
            return
        self.records.peer_warning(f"task {task.task_id} cannot be suspended: {msg.reason}")
        self.records.suspend_failed(executor, task)

    def _on_refused(self, executor: ExecutorRecord, msg: p.Refused) -> None:
        task = self.records.task_on(executor, msg.task_id)
        if msg.command == "suspend" and task is not None and task.state is TaskState.SUSPENDING:
            # The suspend crossed the task's end on the wire (its finish report is on the way),
            # so it was no suspension: give it back to the cap.
            self.records.suspension_undone(task)
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
        self.records.peer_warning(
            f"executor {executor.executor_id} refused {msg.command} of task {msg.task_id}: "
            f"{msg.reason}"
        )

    def _on_goodbye(self, executor: ExecutorRecord, msg: p.Goodbye) -> None:
        self.records.lose(executor, f"it said goodbye ({msg.reason})")

    def _on_tick(self) -> None:
        records = self.records
        if records.reclaim_until is not None and (
            not records.awaited or self.now >= records.reclaim_until
        ):
            recovery.end_grace(records)
        for executor in list(records.executors.values()):
            if executor.alive and self.now - executor.last_seen > self.lost_after_ns:
                silent_ms = (self.now - executor.last_seen) / 1e6
                if self.lose_silent:
                    records.lose(executor, f"no heartbeat for {silent_ms:.0f} ms")
                elif not executor.busy:
                    records.busy(executor, f"no heartbeat for {silent_ms:.0f} ms")
        records.mark_overdue()  # if the shell did not wake the core for it
        self._consult(lambda pol: pol.tick(self.view))
        self._resume_parked()
        self._consider_steals()

    def _resume_parked(self) -> None:
        """Resume a task the policy left suspended on an executor whose slot stays idle.

        Discussion: a policy that never suspends (fifo) never resumes either, so after a switch
        away from one that does (lb), tasks it suspended would wait forever and their futures
        never complete. The core keeps that liveness invariant itself, for every policy: at a
        tick, an executor with nothing in its slot or queue resumes its first suspended task.
        A policy that resumes (lb does, whenever a slot frees) never leaves such a slot, so
        this only acts where the policy has no plan for the task.
        """
        for executor in self.records.executors.values():
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

    # ---- clients --------------------------------------------------------------------------------

    def _on_submit(self, client_id: str, msg: p.Submit, lane: ExecutorRecord | None = None) -> None:
        """A client's submit; with `lane`, one of one stream task that runs there already
        (scheduler/lanes.py)."""
        records = self.records
        known = records.jobs.get(msg.job_id)
        if known is not None and known.client_id == client_id:
            # Discussion: a client that reconnected submits again the jobs it could not be
            # sure we had; the same job twice from the same client is that, not a mistake.
            log.debug("job %s from client %s is known already", msg.job_id, client_id)
            return
        problem, columns = check_submission(msg, records.jobs, records.tasks, records.id_prefixes)
        if problem is None and msg.bulk is None:
            problem = inputs_problem(client_id, msg, records.tasks)
        if problem is not None:
            self._refuse_job(client_id, msg.job_id, refused_ids(msg), problem)
            return
        records.note(ev.JobAccepted(client_id, msg))
        tasks = records.submit(client_id, msg, columns)
        if lane is not None:
            lanes.take_launch(records, lane, tasks[0])
            return
        new = [TaskView(task, records) for task in tasks]
        self._consult(lambda pol: pol.tasks_submitted(self.view, new))

    def _refuse_job(
        self, client_id: str, job_id: str, task_ids: list[str] | None, problem: str
    ) -> None:
        """Fail each of a refused job's tasks at its client, with the reason: those in
        `task_ids` one by one, or (None) a bulk job's all at once (`job_refused`)."""
        records = self.records
        records.peer_warning(f"refused job {job_id} from client {client_id}: {problem}")
        reason = f"job {job_id} refused by the scheduler: {problem}"
        records.note(ev.JobRefused(client_id, job_id, reason))
        error = ["ValueError", reason, ""]
        if task_ids is not None:
            records.to_client(client_id, [[tid, "failed", None, error, {}] for tid in task_ids])
        elif client_id in records.clients:
            records.answer(client_id, p.JobRefused(job_id, error))

    def _on_cancel(self, client_id: str, msg: p.Cancel) -> None:
        records = self.records
        for task_id in msg.task_ids:
            bulk = records.bulk_task(task_id)
            if bulk is not None and bulk[0].client_id != client_id:
                continue  # another client's: no record is made for it
            task = records.find_task(task_id)
            if task is None:
                records.cancel_in_piece(client_id, task_id)
                lanes.bury_unknown(records, client_id, [str(task_id).rpartition("/")[0]])
                continue
            if task.job.client_id != client_id or task.state is TaskState.DONE:
                continue
            freed = records.cancel(task)
            if freed is not None:
                self._slot_freed(freed)

    def _on_status_request(self, client_id: str, msg: p.StatusRequest) -> None:
        self.records.answer(client_id, p.Status(msg.request_id, self.status()))

    def _on_ping(self, client_id: str, msg: p.Ping) -> None:
        self.records.answer(client_id, p.Pong(msg.request_id, msg.sent_ns))

    def _on_release(self, client_id: str, msg: p.Release) -> None:
        if isinstance(msg.job_ids, list):
            lanes.bury_unknown(self.records, client_id, msg.job_ids)  # (before: unknown now)
            self.records.release(client_id, msg.job_ids)

    def _on_missing(self, client_id: str, msg: p.Missing) -> None:
        if isinstance(msg.task_ids, list):
            self.records.missing(client_id, msg.task_ids)

    def _on_stream_lag(self, client_id: str, msg: p.StreamLag) -> None:
        self.records.lag_reported(client_id, msg.source, msg.pending, msg.oldest_age_ms)

    def _on_client_goodbye(self, client_id: str, msg: p.ClientGoodbye) -> None:
        """Its jobs go: what still runs is cancelled, and each retires when it is done."""
        self.records.clients.discard(client_id)
        self.lanes.forget(client_id)
        self.records.forget_lags(client_id)
        self.records.note(ev.ClientLeft(client_id))
        to_cancel = self.records.client_left(client_id)
        if to_cancel:
            self._on_cancel(client_id, p.Cancel(to_cancel))

    def _on_reattach(self, client_id: str, msg: p.Reattach) -> None:
        recovery.on_reattach(self.records, client_id, msg, self.journal.results)

    def _on_set_policy(self, client_id: str, msg: p.SetPolicy) -> None:
        ok, message = self._switch_policy(msg.policy, client_id)
        # str(): `name` is a class attribute a third-party policy may have set to anything.
        answer = p.PolicySet(msg.request_id, ok, str(self.policy.name), message)
        self.records.answer(client_id, answer)

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
            self.records.peer_warning(f"refused policy {spec!r} from client {client_id}: {problem}")
            return False, f"policy {spec!r} refused: {problem}"
        before = self.policy
        reason = f"requested by client {client_id}"
        self.set_policy(policy, reason)
        self.policy_switches.append(
            {
                "at_ns": self.now,
                "from_policy": str(before.name),  # the words of AdaptivePolicy's Switch
                "to_policy": str(policy.name),
                "reason": reason,
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

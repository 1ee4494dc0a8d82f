"""The scheduling event log: every decision and report, one JSON object a line.

`SchedulerServer(event_log=PATH)` (`tidal scheduler --event-log PATH`, `LocalCluster(
event_log=PATH)`, `SimCluster(event_log=PATH)`) writes a line for each thing that happened to
a task, an executor, a job or the policy: the commands the core sent to executors (launch,
suspend, resume, kill, steal), the reports executors sent back (started, suspended, resumed,
finished, failed, killed, stolen, ...), executors joining and being lost, submissions, and
policy switches. Heartbeats, pings and status requests are not logged. `tidal timeline LOG`
draws a log (runtime/timeline.py); docs/eventlog.md lists every event and its fields.

The core stays pure and knows nothing of the log: `EventRecorder` reads one step of it, the
event handed to `SchedulerCore.handle` and the instructions that came back: the commands
sent, and the notes of what the step decided (a job accepted or refused, an executor lost,
the policy changed; scheduler/events.py). Every record's "t" is the core's clock at that
step, in seconds: the monotonic clock the scheduler runs on (the fake clock, in a
simulation).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

from tidal.runtime import protocol as p
from tidal.runtime.columns import bulk_count
from tidal.scheduler import events as ev
from tidal.scheduler.events import Event, ExecutorJoined, ExecutorReport, Instruction, ToExecutor
from tidal.scheduler.policies.adaptive import AdaptivePolicy
from tidal.scheduler.records import Records


class LoggedCore(Protocol):
    """What the recorder reads of the core it logs (a SchedulerCore)."""

    policy: Any
    records: Records


__all__ = ["FORMAT", "EventLog", "EventRecorder", "read_events"]

# The log's format, in its first record (`log_started`); raised when a field changes meaning.
FORMAT = 1

Record = dict[str, Any]


class EventRecorder:
    """Turn each step of one core into log records (see the module docstring).

    It reads the core's records to name a task's job and priority, a steal's thief, the
    cap and the clock, and the adaptive
    policy's own record of its switches.
    """

    def __init__(self, core: LoggedCore) -> None:
        self.core = core
        self._opened = False
        # The adaptive policy last seen, and how many of its switches are logged: those it
        # made before this recorder began count as logged.
        policy = core.policy
        self._adaptive_policy = policy if isinstance(policy, AdaptivePolicy) else None
        self._adaptive_switches = len(policy.switches) if self._adaptive_policy else 0
        self._commands: dict[type, Callable[[str, Any], Record]] = {
            p.Launch: self._launch,
            p.LaunchChunk: self._launch_chunk,
            p.Suspend: lambda e, m: {"event": "suspend", "task": m.task_id, "executor": e},
            p.Resume: lambda e, m: {"event": "resume", "task": m.task_id, "executor": e},
            p.Kill: lambda e, m: {"event": "kill", "task": m.task_id, "executor": e},
            p.Steal: self._steal,
        }
        self._notes: dict[type, Callable[[Any], Record]] = {
            ev.JobAccepted: lambda n: {
                "event": "submitted",
                "job": n.submit.job_id,
                "priority": n.submit.priority,
                "order": n.submit.order,
                "tasks": len(n.submit.tasks) + bulk_count(n.submit),
                "client": n.client_id,
                "function": n.submit.fn,
            },
            ev.LagReported: lambda n: {
                "event": "lag",
                "client": n.client_id,
                "source": n.source,
                "pending": n.pending,
                "oldest_age_s": n.oldest_age_s,
            },
            ev.JobRefused: lambda n: {
                "event": "submit_refused",
                "job": n.job_id,
                "client": n.client_id,
                "reason": n.reason,
            },
            ev.PolicyChanged: lambda n: {
                "event": "policy",
                "policy": n.policy,
                "previous": n.previous,
                "reason": n.reason,
            },
            ev.ExecutorLost: lambda n: {
                "event": "executor_lost",
                "executor": n.executor_id,
                "reason": n.reason,
            },
            ev.DecisionRefused: lambda n: {
                "event": "decision_refused",
                "decision": n.decision,
                "task": n.task_id,
                "executor": n.executor_id,
                "policy": n.policy,
                "reason": n.reason,
            },
            ev.ExecutorBusy: lambda n: {
                "event": "executor_busy" if n.busy else "executor_back",
                "executor": n.executor_id,
                "reason": n.reason,
            },
        }
        self._reports: dict[type, Callable[[str, Any], Record]] = {
            p.Started: self._started_report,
            p.Suspended: lambda e, m: {
                "event": "suspended",
                "task": m.task_id,
                "executor": e,
                "latency_us": round(m.latency_ns / 1e3, 1),
                "records": m.records,
            },
            p.Resumed: lambda e, m: {
                "event": "resumed",
                "task": m.task_id,
                "executor": e,
                "latency_us": round(m.latency_ns / 1e3, 1),
            },
            p.Finished: lambda e, m: {
                "event": "finished",
                "task": m.task_id,
                "executor": e,
                "attempt": m.attempt,
            },
            p.Failed: lambda e, m: {
                "event": "failed",
                "task": m.task_id,
                "executor": e,
                "attempt": m.attempt,
                "error": m.error_type,
            },
            p.Killed: self._killed,
            p.Stolen: lambda e, m: {
                "event": "stolen",
                "task": m.chunk_id,
                "executor": e,
                "count": len(m.task_ids),
            },
            p.SuspendFailed: lambda e, m: {
                "event": "suspend_failed",
                "task": m.task_id,
                "executor": e,
                "reason": m.reason,
            },
            p.Refused: lambda e, m: {
                "event": "refused",
                "task": m.task_id,
                "executor": e,
                "command": m.command,
                "reason": m.reason,
            },
        }

    def records(self, event: Event, instructions: Sequence[Instruction]) -> list[Record]:
        """The records of one step: what arrived, what it changed, then the commands sent."""
        core = self.core
        out: list[Record] = []
        if not self._opened:
            self._opened = True
            out.append(
                {
                    "event": "log_started",
                    "format": FORMAT,
                    "policy": str(core.policy.name),
                    "max_suspensions": core.records.max_suspensions,
                }
            )
        # -- 1. Executors the step lost: named first, as they were lost before the executor
        #       that joined in its place, or the decisions that requeued their tasks.
        notes = [i for i in instructions if isinstance(i, ev.Note)]
        out.extend(self._notes[type(n)](n) for n in notes if isinstance(n, ev.ExecutorLost))
        # -- 2. What arrived (a goodbye is its executor's loss, named above).
        if isinstance(event, ExecutorReport):
            # A task whose end came without its start (runtime/reports.py) started first.
            for note in notes:
                if type(note) is ev.FoldedStart:
                    out.append(self._started_report(event.executor_id, note))
            report = self._reports.get(type(event.message))
            if report is not None:
                out.append(report(event.executor_id, event.message))
        elif isinstance(event, ExecutorJoined):
            hello = event.hello
            out.append(
                {
                    "event": "executor_joined",
                    "executor": hello.executor_id,
                    "node": hello.node,
                    "hostname": hello.hostname,
                }
            )
        # -- 3. What the step decided (a job accepted or refused, a policy switched), then
        #       the adaptive policy's own switches, then the commands sent.
        for note in notes:
            if not isinstance(note, ev.ExecutorLost) and type(note) in self._notes:
                out.append(self._notes[type(note)](note))
        out.extend(self._adaptive_switches_since())
        for instruction in instructions:
            if isinstance(instruction, ToExecutor):
                command = self._commands.get(type(instruction.message))
                if command is not None:
                    record = command(instruction.executor_id, instruction.message)
                    if instruction.by_lane:  # the executor did it itself (runtime/lanes.py)
                        record["lane"] = True
                    out.append(record)
        t = core.records.now / 1e9
        return [{"t": t, **record} for record in out]

    # ---- commands -------------------------------------------------------------------------------

    def _launch(self, executor_id: str, msg: p.Launch) -> Record:
        record = {
            "event": "launch",
            "task": msg.task_id,
            "job": self._job_of(msg.task_id),
            "priority": msg.priority,
            "executor": executor_id,
            "attempt": msg.attempt,
        }
        task = self.core.records.tasks.get(msg.task_id) if msg.inputs else None
        if task is not None:  # inputs kept on executors: local or remote?
            here = task.input_bytes.get(executor_id, 0)
            total = sum(task.input_bytes.values())
            # Local: on the executor holding most of its input bytes.
            record["placement"] = "local" if executor_id == task.local_to else "remote"
            record["input_bytes"], record["local_bytes"] = total, here
        return record

    def _launch_chunk(self, executor_id: str, msg: p.LaunchChunk) -> Record:
        return {
            "event": "launch",
            "task": msg.chunk_id,
            "job": self._job_of(msg.chunk_id),
            "priority": msg.priority,
            "executor": executor_id,
            "attempt": msg.attempt,
            "tasks": len(msg.subtasks),
        }

    def _steal(self, executor_id: str, msg: p.Steal) -> Record:
        thief, _ = self.core.records.steals_in_flight.get(msg.chunk_id, (None, 0))
        return {
            "event": "steal",
            "task": msg.chunk_id,
            "executor": executor_id,
            "count": msg.count,
            "thief": thief,
        }

    # ---- reports -------------------------------------------------------------------------------

    def _started_report(self, executor_id: str, msg: p.Started | ev.FoldedStart) -> Record:
        task = self.core.records.tasks.get(msg.task_id)
        if isinstance(msg, p.Started):
            attempt: int | None = msg.attempt
        else:  # a folded start: the attempt its task's end ended
            attempt = None if task is None else task.attempt
        return {
            "event": "started",
            "task": msg.task_id,
            "job": None if task is None else task.job.job_id,
            "priority": None if task is None else task.priority,
            "executor": executor_id,
            "attempt": attempt,
        }

    def _killed(self, executor_id: str, msg: p.Killed) -> Record:
        running_ns = msg.stats.get("running_ns", 0)  # the work the kill threw away
        lost = running_ns / 1e6 if isinstance(running_ns, int | float) else None
        return {
            "event": "killed",
            "task": msg.task_id,
            "executor": executor_id,
            "attempt": msg.attempt,
            "work_lost_ms": lost,
        }

    # ---- helpers --------------------------------------------------------------------------------

    def _adaptive_switches_since(self) -> list[Record]:
        """The switches the adaptive policy (if it is the policy) made since the last step."""
        policy = self.core.policy
        if not isinstance(policy, AdaptivePolicy):
            return []
        if policy is not self._adaptive_policy:  # a new one since the last step: all of its
            self._adaptive_policy, self._adaptive_switches = policy, 0
        switches = policy.switches[self._adaptive_switches :]
        self._adaptive_switches = len(policy.switches)
        return [
            {
                "event": "adaptive_switch",
                "policy": switch.to_policy,
                "previous": switch.from_policy,
                "reason": switch.reason,
            }
            for switch in switches
        ]

    def _job_of(self, task_id: str) -> str | None:
        task = self.core.records.tasks.get(task_id)
        return None if task is None else task.job.job_id


class EventLog:
    """Write records to `path`, one JSON object a line, buffered: `flush()` to make what was
    written so far readable, `close()` at the end (or use it as a context manager).

    Given the `core` it logs, `step(event, instructions)` writes one step of that core."""

    def __init__(self, path: str | os.PathLike[str], core: LoggedCore | None = None) -> None:
        self.path = os.fspath(path)
        self._recorder = None if core is None else EventRecorder(core)
        self._file = open(self.path, "w", encoding="utf-8", buffering=1 << 16)  # noqa: SIM115

    def step(self, event: Event, instructions: Sequence[Instruction]) -> None:
        """Write the records of one step of the core this log was given."""
        if self._recorder is None:
            raise TypeError("this EventLog was made without a core: use write(records)")
        self.write(self._recorder.records(event, instructions))

    def write(self, records: Iterable[Record]) -> None:
        for record in records:
            self._file.write(json.dumps(record, separators=(",", ":")) + "\n")

    def tick(self) -> None:
        """The scheduler's tick: what was written so far becomes readable."""
        self.flush()

    def flush(self) -> None:
        if not self._file.closed:
            self._file.flush()

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> EventLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_events(path: str | os.PathLike[str]) -> list[Record]:
    """The records of an event log, in order; a ValueError names the file and line of a
    malformed one (blank lines are skipped)."""
    records = []
    with open(path, encoding="utf-8") as file:
        for number, line in enumerate(file, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(
                    f"{os.fspath(path)}, line {number}: not a JSON object ({exc.msg}): "
                    f"{line.strip()[:80]!r}"
                ) from None
            if (
                not isinstance(record, dict)
                or not isinstance(record.get("t"), int | float)
                or not isinstance(record.get("event"), str)
            ):
                raise ValueError(
                    f"{os.fspath(path)}, line {number}: an event log record is a JSON object "
                    f'with a number "t" and a string "event", not {line.strip()[:80]!r}'
                )
            records.append(record)
    return records

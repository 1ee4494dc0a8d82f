"""The scheduling event log: every decision and report, one JSON object a line.

`SchedulerServer(event_log=PATH)` (`tidal scheduler --event-log PATH`, `LocalCluster(
event_log=PATH)`, `SimCluster(event_log=PATH)`) writes a line for each thing that happened to
a task, an executor, a job or the policy: the commands the core sent to executors (launch,
suspend, resume, kill, steal), the reports executors sent back (started, suspended, resumed,
finished, failed, killed, stolen, ...), executors joining and being lost, submissions, and
policy switches. Heartbeats, pings and status requests are not logged. `tidal timeline LOG`
draws a log (runtime/timeline.py); docs/eventlog.md lists every event and its fields.

The core stays pure and knows nothing of the log: `EventRecorder` reads one step of it (the
event handed to `SchedulerCore.handle` and the instructions that came back) together with the
core's records after that step. Every record's "t" is the core's clock at that step, in
seconds: the monotonic clock the scheduler runs on (the fake clock, in a simulation).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from tidal.runtime import protocol as p
from tidal.scheduler.events import (
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
from tidal.scheduler.policies.adaptive import AdaptivePolicy

if TYPE_CHECKING:
    from tidal.scheduler.core import SchedulerCore
    from tidal.scheduler.state import Executor

__all__ = ["FORMAT", "EventLog", "EventRecorder", "read_events"]

# The log's format, in its first record (`log_started`); raised when a field changes meaning.
FORMAT = 1

Record = dict[str, Any]


class EventRecorder:
    """Turn each step of one core into log records (see the module docstring).

    It keeps what it needs to tell what a step changed: the executors it saw alive (to name
    the ones a step lost), the number of jobs (to tell an accepted submission from a refused
    one) and the policy (to see a switch).
    """

    def __init__(self, core: SchedulerCore) -> None:
        self.core = core
        self._opened = False
        self._alive = self._alive_executors()
        self._jobs = len(core.jobs)
        self._policy = core.policy
        self._failures = len(core.policy_failures)
        self._adaptive_switches = self._adaptive_count()
        self._commands: dict[type, Callable[[str, Any], Record]] = {
            p.Launch: self._launch,
            p.LaunchChunk: self._launch_chunk,
            p.Suspend: lambda e, m: {"event": "suspend", "task": m.task_id, "executor": e},
            p.Resume: lambda e, m: {"event": "resume", "task": m.task_id, "executor": e},
            p.Kill: lambda e, m: {"event": "kill", "task": m.task_id, "executor": e},
            p.Steal: self._steal,
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
                    "max_suspensions": core.max_suspensions,
                }
            )
        # -- 1. What arrived (an executor lost by it is named first: it was lost before the
        #       executor that joined in its place, or the decisions that requeued its tasks).
        if isinstance(event, ExecutorReport):
            if isinstance(event.message, p.Goodbye):
                out.extend(self._losses(event))
            else:
                report = self._reports.get(type(event.message))
                if report is not None:
                    out.append(report(event.executor_id, event.message))
        elif isinstance(event, ExecutorJoined):
            out.extend(self._losses(event))
            hello = event.hello
            out.append(
                {
                    "event": "executor_joined",
                    "executor": hello.executor_id,
                    "node": hello.node,
                    "hostname": hello.hostname,
                }
            )
        elif isinstance(event, ExecutorLeft | Tick):
            out.extend(self._losses(event))
        elif isinstance(event, ClientRequest) and isinstance(event.message, p.Submit):
            out.append(self._submitted(event.client_id, event.message, instructions))
        # -- 2. A policy switch (asked for, or a failing policy replaced), then the commands.
        out.extend(self._policy_changes(event))
        for instruction in instructions:
            if isinstance(instruction, ToExecutor):
                command = self._commands.get(type(instruction.message))
                if command is not None:
                    out.append(command(instruction.executor_id, instruction.message))
        t = core.now / 1e9
        return [{"t": t, **record} for record in out]

    # ---- commands -------------------------------------------------------------------------------

    def _launch(self, executor_id: str, msg: p.Launch) -> Record:
        return {
            "event": "launch",
            "task": msg.task_id,
            "job": self._job_of(msg.task_id),
            "priority": msg.priority,
            "executor": executor_id,
            "attempt": msg.attempt,
        }

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
        thief, _ = self.core.steals_in_flight.get(msg.chunk_id, (None, 0))
        return {
            "event": "steal",
            "task": msg.chunk_id,
            "executor": executor_id,
            "count": msg.count,
            "thief": thief,
        }

    # ---- reports -------------------------------------------------------------------------------

    def _started_report(self, executor_id: str, msg: p.Started) -> Record:
        task = self.core.tasks.get(msg.task_id)
        return {
            "event": "started",
            "task": msg.task_id,
            "job": None if task is None else task.job.job_id,
            "priority": None if task is None else task.priority,
            "executor": executor_id,
            "attempt": msg.attempt,
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

    # ---- what a step changed -------------------------------------------------------------------

    def _submitted(
        self, client_id: str, msg: p.Submit, instructions: Sequence[Instruction]
    ) -> Record:
        jobs, self._jobs = self._jobs, len(self.core.jobs)
        if self._jobs > jobs:
            return {
                "event": "submitted",
                "job": msg.job_id,
                "priority": msg.priority,
                "order": msg.order,
                "tasks": len(msg.tasks),
                "client": client_id,
            }
        # Refused: the core failed every task of it at once, saying why in each error.
        reason = ""
        for instruction in instructions:
            if isinstance(instruction, ToClient) and isinstance(instruction.message, p.Results):
                error = instruction.message.items[0][3] if instruction.message.items else None
                if isinstance(error, list) and len(error) > 1:
                    reason = str(error[1])
                break
        return {"event": "submit_refused", "job": msg.job_id, "client": client_id, "reason": reason}

    def _losses(self, event: Event) -> list[Record]:
        """executor_lost for each executor alive after the last step and not after this one."""
        now_alive = self._alive_executors()
        out = []
        for executor_id, executor in self._alive.items():
            if now_alive.get(executor_id) is executor:
                continue
            if isinstance(event, ExecutorLeft):
                reason = event.reason
            elif isinstance(event, ExecutorReport):  # a goodbye
                reason = f"it said goodbye ({event.message.reason})"
            elif isinstance(event, ExecutorJoined):
                reason = "it joined again"
            else:  # the liveness check at a tick
                reason = f"no heartbeat for {(self.core.now - executor.last_seen) / 1e6:.0f} ms"
            out.append({"event": "executor_lost", "executor": executor_id, "reason": reason})
        self._alive = now_alive
        return out

    def _policy_changes(self, event: Event) -> list[Record]:
        core = self.core
        out = []
        if core.policy is not self._policy:
            if len(core.policy_failures) > self._failures:
                reason = core.policy_failures[-1]
            elif isinstance(event, ClientRequest) and isinstance(event.message, p.SetPolicy):
                reason = f"requested by client {event.client_id}"
            else:
                reason = ""
            out.append(
                {
                    "event": "policy",
                    "policy": str(core.policy.name),
                    "previous": str(self._policy.name),
                    "reason": reason,
                }
            )
            self._policy = core.policy
            self._adaptive_switches = 0
        self._failures = len(core.policy_failures)
        # The adaptive policy switches among lb, fair and fifo by itself; it keeps a record.
        if isinstance(core.policy, AdaptivePolicy):
            switches = core.policy.switches
            for switch in switches[self._adaptive_switches :]:
                out.append(
                    {
                        "event": "adaptive_switch",
                        "policy": switch.to_policy,
                        "previous": switch.from_policy,
                        "reason": switch.reason,
                    }
                )
            self._adaptive_switches = len(switches)
        return out

    # ---- helpers --------------------------------------------------------------------------------

    def _alive_executors(self) -> dict[str, Executor]:
        return {e.executor_id: e for e in self.core.executors.values() if e.alive}

    def _adaptive_count(self) -> int:
        policy = self.core.policy
        return len(policy.switches) if isinstance(policy, AdaptivePolicy) else 0

    def _job_of(self, task_id: str) -> str | None:
        task = self.core.tasks.get(task_id)
        return None if task is None else task.job.job_id


class EventLog:
    """Write records to `path`, one JSON object a line, buffered: `flush()` to make what was
    written so far readable, `close()` at the end (or use it as a context manager).

    Given the `core` it logs, `step(event, instructions)` writes one step of that core."""

    def __init__(self, path: str | os.PathLike[str], core: SchedulerCore | None = None) -> None:
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

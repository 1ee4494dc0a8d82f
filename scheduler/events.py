"""What goes into the scheduler core and what comes out of it.

Events are what happened (an executor joined or reported, a client asked, time passed);
instructions are what to do about it: messages to send (`ToExecutor`, `ToClient`) and notes
of what the step decided (`Note`: a job accepted, a task ended, an executor lost, ...).
`SchedulerCore.handle(event)` turns one into the other. The ZeroMQ shell
(scheduler/server.py) or the simulation (scheduler/sim.py) moves the messages; the journal
(`Journal.apply`) writes the notes a restart needs, and the event log (scheduler/eventlog.py)
writes the notes a reader wants. The core itself writes nothing anywhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tidal.runtime import protocol as p

__all__ = [
    "BatchEnded",
    "CancelRequested",
    "ClientJoined",
    "ClientLeft",
    "ClientRequest",
    "Deadline",
    "DecisionRefused",
    "Event",
    "ExecutorBusy",
    "ExecutorJoined",
    "ExecutorLeft",
    "ExecutorLost",
    "ExecutorReport",
    "ExecutorUp",
    "FoldedStart",
    "Instruction",
    "JobAccepted",
    "JobRefused",
    "JobRetired",
    "LagReported",
    "Note",
    "PassEnded",
    "PolicyChanged",
    "SubmitUnreadable",
    "TaskEnded",
    "TaskLost",
    "Tick",
    "ToClient",
    "ToExecutor",
]


# ---- events in ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ExecutorJoined:
    hello: p.Hello


@dataclass(frozen=True, slots=True)
class ExecutorReport:
    executor_id: str
    message: p.Message


@dataclass(frozen=True, slots=True)
class ExecutorLeft:
    executor_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class ClientJoined:
    client_id: str


@dataclass(frozen=True, slots=True)
class ClientRequest:
    client_id: str
    message: p.Message


@dataclass(frozen=True, slots=True)
class SubmitUnreadable:
    """A client's submit that did not decode (the shell dropped it as bad input): its job
    and task ids as far as they could be read (None: a bulk job, whose tasks are the whole
    job), so that their futures fail, not wait."""

    client_id: str
    job_id: str
    task_ids: list[str] | None
    problem: str


@dataclass(frozen=True, slots=True)
class Tick:
    """Time passed: check executor liveness, let the policy rebalance."""


@dataclass(frozen=True, slots=True)
class Deadline:
    """A time the core asked to be woken at (`SchedulerCore.wake_at`) has come: a suspension
    sent may be overdue."""


@dataclass(frozen=True, slots=True)
class PassEnded:
    """The shell handled what arrived at once (one pass of its loop): a core made with
    `consult_per_pass` now asks its policy about the slots freed meanwhile, once each."""


Event = (
    ExecutorJoined
    | ExecutorReport
    | ExecutorLeft
    | ClientJoined
    | ClientRequest
    | SubmitUnreadable
    | Tick
    | Deadline
    | PassEnded
)


# ---- instructions out ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ToExecutor:
    executor_id: str
    message: p.Message
    # Done there already: the executor launched a lane's stream task, or suspended a task
    # for one, itself (runtime/lanes.py). Logged and counted as a command, never sent.
    by_lane: bool = False


@dataclass(frozen=True, slots=True)
class ToClient:
    client_id: str
    message: p.Message


# ---- notes out: what a step decided, for the journal and the event log -----------------------


@dataclass(frozen=True, slots=True)
class JobAccepted:
    client_id: str
    submit: p.Submit  # as it came: the journal keeps it whole


@dataclass(frozen=True, slots=True)
class JobRefused:
    client_id: str
    job_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class TaskEnded:
    job_id: str
    item: list[Any]  # the result item its client gets: [task_id, outcome, value, error, stats]
    stream: bool = False  # a stream task's: its client must not wait for a group commit


@dataclass(frozen=True, slots=True)
class BatchEnded:
    job_id: str
    result: p.BatchResults  # as its client gets it: every task in it ended with it
    stream: bool = False  # a stream job's


@dataclass(frozen=True, slots=True)
class FoldedStart:
    """A task reported its end without its start (runtime/reports.py): it started then too."""

    task_id: str


@dataclass(frozen=True, slots=True)
class CancelRequested:
    job_id: str
    task_id: str  # still running somewhere when this is noted


@dataclass(frozen=True, slots=True)
class ExecutorUp:
    executor_id: str


@dataclass(frozen=True, slots=True)
class ExecutorLost:
    executor_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class ExecutorBusy:
    executor_id: str
    busy: bool  # False: it reported again
    reason: str


@dataclass(frozen=True, slots=True)
class ClientLeft:
    client_id: str


@dataclass(frozen=True, slots=True)
class PolicyChanged:
    policy: str
    previous: str
    reason: str  # asked for by a client, or the failure that replaced the policy


@dataclass(frozen=True, slots=True)
class TaskLost:
    """A task was lost with its executor (one more toward `max_retries`)."""

    job_id: str
    task_id: str
    executor_id: str


@dataclass(frozen=True, slots=True)
class JobRetired:
    """A job left the books: done, and its client holds none of its futures (or left)."""

    job_id: str
    task_ids: tuple[str, ...]  # its records' ids (a bulk job's: those it had)


@dataclass(frozen=True, slots=True)
class DecisionRefused:
    """The core refused a policy's decision (it was not valid when applied)."""

    decision: str  # launch, suspend, resume, kill
    task_id: str
    executor_id: str | None
    policy: str
    reason: str


@dataclass(frozen=True, slots=True)
class LagReported:
    """A stream driver reported its source's lag (scheduler/records/lags.py)."""

    client_id: str
    source: str
    pending: int
    oldest_age_s: float | None


Note = (
    JobAccepted
    | JobRefused
    | TaskEnded
    | BatchEnded
    | FoldedStart
    | CancelRequested
    | ExecutorUp
    | ExecutorLost
    | ExecutorBusy
    | ClientLeft
    | PolicyChanged
    | DecisionRefused
    | JobRetired
    | TaskLost
    | LagReported
)
Instruction = ToExecutor | ToClient | Note

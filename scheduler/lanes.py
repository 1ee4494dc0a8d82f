"""The scheduler's side of lanes (runtime/lanes.py): each client's token, the lanes clients
are told of, and what a `forward` from an executor means to the books.

A forward is a client's submit of one stream task that came by an executor's lane. The core
takes it as that client's submit (`SchedulerCore._on_submit`, journaled as one), and a taken
task as launched there: its books do what carrying out a policy's Suspend and Launch would,
but the commands are not sent, as the executor has done both. What cannot be accepted (an
unknown token, a job the scheduler has, a refused submit) has its taken task killed there;
its client learns the outcome from the scheduler as for any submit.
"""

from __future__ import annotations

import secrets
from typing import Any

from tidal.runtime import protocol as p
from tidal.runtime.lanes import lane_task
from tidal.scheduler.records.tables import ExecutorRecord, TaskState

__all__ = ["LaneTokens", "bury_unknown", "on_forward", "take_launch"]

# The states in which a task holds its executor's slot, as far as the books know.
_IN_SLOT = (TaskState.LAUNCHED, TaskState.RUNNING, TaskState.RESUMING)


class LaneTokens:
    """A token per client (its lane submits carry it), and the lanes last told."""

    def __init__(self) -> None:
        self._clients: dict[str, str] = {}  # token -> client id
        self._tokens: dict[str, str] = {}  # client id -> token
        self._told: list[list[str]] = []

    def client_of(self, token: str) -> str | None:
        return self._clients.get(token)

    def forget(self, client_id: str) -> None:
        token = self._tokens.pop(client_id, None)
        if token is not None:
            del self._clients[token]

    def tell(self, records: Any, client_ids: list[str] | None = None, policy: Any = None) -> None:
        """Send the lanes to `client_ids` (a client that just joined), or, if they changed
        since last told, to every client: none under a policy that does not take them
        (`Policy.lanes`: a lane's task bypasses the policy's choice of slot)."""
        lanes = [
            [e.executor_id, e.lane]
            for e in records.executors.values()
            if e.alive and not e.busy and e.lane is not None
        ]
        if not lanes_of(policy):
            lanes = []
        if client_ids is None:
            if lanes == self._told:
                return
            client_ids = list(records.clients)
        self._told = lanes
        if not lanes and not any(c in self._tokens for c in client_ids):
            return  # no lanes, and none told before: nothing to say
        for client_id in client_ids:
            token = self._tokens.get(client_id)
            if token is None:
                token = secrets.token_hex(8)
                self._tokens[client_id], self._clients[token] = token, client_id
            records.answer(client_id, p.Lanes(token, lanes))


def lanes_of(policy: Any) -> bool:
    """Whether `policy`'s own class says it takes lanes (`Policy.lanes`): a subclass of one
    that does says so again, as it may place stream tasks otherwise."""
    return bool(type(policy).__dict__.get("lanes", False))


def on_forward(core: Any, executor: ExecutorRecord, msg: p.Forward) -> None:
    """A lane's submit, forwarded by `executor` (see the module docstring)."""
    records = core.records
    if msg.parked is not None:
        _parked(records, executor, msg.parked)
    try:
        submit = p.decode(msg.submit)
    except p.ProtocolError:
        submit = None
    task = lane_task(submit) if type(submit) is p.Submit else None
    client_id = core.lanes.client_of(msg.token)
    if task is None or client_id is None or client_id not in records.clients:
        why = "not a stream submit of one task" if task is None else "an unknown token"
        records.peer_warning(f"executor {executor.executor_id} forwarded {why}"[:500])
        if msg.taken and task is not None:
            _kill_there(core, executor, task[0])
        return
    if submit.job_id in records.jobs or records.buried(submit.job_id):
        # The client sent it to us too (its grace ran out), or it is gone (done and
        # released, or released or cancelled before this came): ours stands, or none.
        booked = records.tasks.get(task[0])
        if not msg.taken or booked is None:
            if msg.taken:
                _kill_there(core, executor, task[0])
        elif booked.state is TaskState.PENDING and booked.attempt == 0:
            take_launch(records, executor, booked)  # not placed yet: this copy is it, running
        elif booked.executor_id != executor.executor_id or booked.state not in _IN_SLOT:
            _kill_there(core, executor, task[0])  # ours runs elsewhere, or ran
        return
    core._on_submit(client_id, submit, lane=executor if msg.taken else None)
    if msg.taken and submit.job_id not in records.jobs:  # refused: its client was told why
        _kill_there(core, executor, task[0])


def bury_unknown(records: Any, client_id: str, job_ids: list[Any]) -> None:
    """A client released or cancelled jobs the scheduler has not heard of: a lane's
    forward of one may still come (scheduler/records/retire.py `bury`)."""
    for job_id in job_ids:
        if type(job_id) is str and job_id not in records.jobs and job_id.startswith(client_id):
            records.bury(job_id)


def take_launch(records: Any, executor: ExecutorRecord, task: Any) -> None:
    """Book `task` as launched on `executor` by its lane (the command logged and counted,
    not sent) and received (the executor has it)."""
    records.launch(executor, task, by_lane=True)
    task.received = True


def _parked(records: Any, executor: ExecutorRecord, task_id: str) -> None:
    """The executor suspended `task_id` for a lane's task: as a Suspend would, unsent."""
    task = executor.slot_task  # a task, or a chunk (whose id the books may not list)
    if task is None or task.task_id != task_id or task.state not in _IN_SLOT:
        return  # the books have moved on (it ended, or we suspended it ourselves)
    records.suspend(executor, task, by_lane=True)


def _kill_there(core: Any, executor: ExecutorRecord, task_id: str) -> None:
    """Stop a lane's task the books do not hold there; its slot is free for the policy."""
    records = core.records
    records.send(executor, p.Kill(task_id, records.now))
    core._slot_freed(executor)

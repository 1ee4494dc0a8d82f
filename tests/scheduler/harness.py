"""The scripted scheduler harness: a SchedulerCore on a fake clock, no sockets, no threads.

The test plays the executors, answering the core's commands with the reports a real
executor would send; `Harness` keeps what the core sent, per executor and per client.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import msgpack

from tidal.runtime import batches, payloads
from tidal.runtime import protocol as p
from tidal.runtime.columns import Columns
from tidal.scheduler.core import (
    ClientJoined,
    ClientRequest,
    ExecutorJoined,
    ExecutorReport,
    SchedulerCore,
    ToClient,
    ToExecutor,
)
from tidal.scheduler.events import Note

__all__ = ["CLIENT_ID", "MS", "FakeClock", "Harness", "payload"]

MS = 1_000_000
CLIENT_ID = "c"
TOTAL = "tidal.workloads.synthetic:total"  # a task function the simulated executors never run


def launched_payloads(chunk: p.LaunchChunk) -> list[bytes]:
    """A launch_chunk's task payloads, whichever form it took (a columnar span's are those
    its columns make)."""
    if chunk.columns is None:
        return chunk.subtasks
    count, args, kwargs = chunk.columns
    assert chunk.subtasks == [] and chunk.span is not None
    calls = list(Columns(args, kwargs))
    assert len(calls) == count
    return calls


def payload(i: int) -> bytes:
    """The payload of the harness's task i: `[[i]], {}` packed, as a client sends it."""
    return payloads.pack_call([[i]], {})


class FakeClock:
    """A clock the test moves by hand: `clock.now += 5 * MS`."""

    def __init__(self) -> None:
        self.now = 1_000 * MS

    def __call__(self) -> int:
        return self.now


class Harness:
    """Drives a SchedulerCore for a client "c" and keeps what it sent, per executor and per
    client: commands in `to_executor`, results in `results` (by task id), answers to
    SetPolicy and Reattach in `answers` (by request id), refused bulk jobs' errors in
    `refusals` (by job id)."""

    bulk_form = "payloads"  # or "columns": how `submit(bulk=True)` sends a bulk job

    def __init__(self, policy="lb", executors=(("e0", "n0"), ("e1", "n1")), **options):
        self.clock = FakeClock()
        self.core = SchedulerCore(policy, clock=self.clock, **options)
        self.nodes: dict[str, str] = {}
        self.to_executor: dict[str, list[p.Message]] = {}
        self.results: dict[str, list[list]] = {}
        self.batches: list[p.BatchResults] = []
        self.answers: dict[str, p.PolicySet] = {}
        self.refusals: dict[str, list] = {}  # a refused bulk job's error, by job id
        self.notes: list[Note] = []  # what the core noted for the journal and the event log
        self.lanes: list[p.Lanes] = []  # the lanes the client was told of
        self.by_lane: list[tuple[str, p.Message]] = []  # commands booked, not sent (lanes)
        self._requests = 0
        self.handle(ClientJoined(CLIENT_ID))
        for executor_id, node in executors:
            self.join(executor_id, node)

    def handle(self, event) -> None:
        for instruction in self.core.handle(event):
            if isinstance(instruction, ToExecutor):
                if instruction.by_lane:  # done there already: booked, not sent
                    self.by_lane.append((instruction.executor_id, instruction.message))
                else:
                    self.keep_command(instruction.executor_id, instruction.message)
                continue
            if isinstance(instruction, Note):  # as the scheduler's shell does
                self.core.journal.apply(instruction)
                self.notes.append(instruction)
                continue
            assert isinstance(instruction, ToClient)
            message = instruction.message
            if isinstance(message, p.Results):
                for item in message.items:
                    self.results.setdefault(item[0], []).append(item)
            elif isinstance(message, p.BatchResults):  # one item per task, as in Results
                self.batches.append(message)
                for item in batches.batch_items(
                    message.job_id, message.start, message.values, message.errors, message.stats
                ):
                    self.results.setdefault(item[0], []).append(item)
            elif isinstance(message, p.JobRefused):  # a bulk job's tasks all fail
                self.refusals[message.job_id] = message.error
            elif isinstance(message, p.Lanes):  # the executors' lanes (runtime/lanes.py)
                self.lanes.append(message)
            else:
                assert isinstance(message, p.PolicySet | p.Reattached), f"unexpected: {message}"
                self.answers[message.request_id] = message

    def keep_command(self, executor_id: str, message: p.Message) -> None:
        """Keep a command the core sent, for `sent()`."""
        self.to_executor.setdefault(executor_id, []).append(message)

    def join(self, executor_id: str, node: str, holding=(), lane: str | None = None) -> None:
        """An executor says hello, holding what `holding` lists (as `hello.holding`), with
        a lane at `lane` if given."""
        self.nodes[executor_id] = node
        hello = p.Hello(1, executor_id, node, 1, 1, "host", list(holding), lane)
        self.handle(ExecutorJoined(hello))

    def submit(
        self,
        job_id: str,
        priority: str,
        n: int,
        *,
        order: int = 0,
        max_suspensions: int | None = None,
        options: dict[str, Any] | None = None,
        task_options: list[dict[str, Any]] | None = None,
        bulk: bool = False,
    ) -> list[str]:
        """Submit a job of `n` tasks f"{job_id}/{i}"; return their ids.

        `options` are the job's (the Submit's last field, e.g. {"chunksize": 4});
        `task_options`, one per task, become each task entry's third element (e.g.
        {"preferred": ["n1"]}). Task i's payload is `payload(i)`, the packed call `([i],)`.
        With `bulk`, one bulk job (submit.bulk; `options` must give a chunksize): a payload
        per task, or columns (protocol 13) if `bulk_form` is "columns".
        """
        tasks = [[f"{job_id}/{i}", payload(i)] for i in range(n)]
        if task_options is not None:
            assert len(task_options) == n, "task_options needs one entry per task"
            for task, extra in zip(tasks, task_options, strict=True):
                task.append(extra)
        submit = p.Submit(
            job_id,
            priority,
            order,
            max_suspensions,
            TOTAL,
            None,
            [] if bulk else tasks,
            0,
            options,
            [t[1] for t in tasks] if bulk else None,
        )
        if bulk and self.bulk_form == "columns":  # task i's x is [i]: its payload is payload(i)
            columns = msgpack.packb([[i] for i in range(n)])
            submit = dataclasses.replace(submit, bulk=columns, kwargs=payloads.pack_payload({}))
        self.handle(ClientRequest(CLIENT_ID, submit))
        return [t[0] for t in tasks]

    def set_policy(self, policy: str) -> p.PolicySet:
        """Ask the core to switch to `policy`; return its answer."""
        self._requests += 1
        request_id = f"r{self._requests}"
        self.handle(ClientRequest(CLIENT_ID, p.SetPolicy(request_id, policy)))
        return self.answers.pop(request_id)

    def sent(self, executor_id: str, kind: type | None = None) -> list[Any]:
        """Messages sent to an executor since the last call (optionally of one kind)."""
        messages = self.to_executor.pop(executor_id, [])
        return [m for m in messages if kind is None or isinstance(m, kind)]

    def report(self, executor_id: str, message: p.Message) -> None:
        self.handle(ExecutorReport(executor_id, message))

    def start(self, executor_id: str, task_id: str, attempt: int = 0) -> None:
        self.report(executor_id, p.Started(task_id, attempt, self.clock.now))

    def finish(self, executor_id: str, task_id: str, attempt: int = 0, result=None) -> None:
        """Report `task_id` finished with `result` packed as its payload (bytes as they are),
        after running 50 ms: long enough that the core keeps no prefetch queue for it."""
        blob = result if isinstance(result, bytes) else payloads.pack_payload(result)
        self.report(executor_id, p.Finished(task_id, attempt, blob, {"running_ns": 50 * MS}))

    def heartbeat(self, executor_id: str, task_records: dict[str, list[int]] | None = None) -> None:
        """A heartbeat from `executor_id` carrying `task_records` ({task_id: [running_ns,
        records]}, as its kernel counts them; None, as from a version-10 executor)."""
        beat = p.Heartbeat(
            executor_id, self.nodes[executor_id], 1, self.clock.now, 1, 0, 0, 0, 1, 1, 10.0
        )
        self.report(executor_id, dataclasses.replace(beat, task_records=task_records))

    def state(self, task_id: str):
        return self.core.records.tasks[task_id].state

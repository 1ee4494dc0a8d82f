"""The scheduler core against well-formed nonsense: it refuses or ignores, and never raises.

No sockets: a SchedulerCore on a fake clock, honest executors that answer its commands as a
kernel would, and liars (executors that joined properly) and a hostile client that send
messages which decode but make no sense: reports with edge numbers, NaN stats, the ids of
real tasks at wrong attempts, results of the wrong shape, requests for other clients' tasks.
Then the liars fall silent and the honest executors drain the work. Every real task must
complete exactly once, every instruction the core emits must encode, and so must a status
snapshot. Seeded: a failure names its seed and step and replays exactly.
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections import deque

import pytest

from tests.fuzz.frames import nonsense
from tests.scheduler.harness import MS, FakeClock
from tidal.runtime import payloads
from tidal.runtime import protocol as p
from tidal.scheduler.core import (
    ClientJoined,
    ClientRequest,
    ExecutorJoined,
    ExecutorReport,
    SchedulerCore,
    Tick,
    ToClient,
    ToExecutor,
)
from tidal.scheduler.events import Note

pytestmark = pytest.mark.slow

HONEST = ("e0", "e1", "e2")
LIARS = ("liar0", "liar1")
# The shell handles handshakes itself (scheduler/server.py); the core sees what follows.
HANDSHAKES = (p.Hello, p.Attach, p.ClientHello)
REPORTS = [c for c in p.MESSAGES.values() if c.direction == p.E2S and c not in HANDSHAKES]
REQUESTS = [c for c in p.MESSAGES.values() if c.direction == p.C2S and c not in HANDSHAKES]
STEPS = 10_000


class HonestExecutor:
    """Answers each command as the kernel would, one command per `step()` (no running time:
    a task started is finished at its next step)."""

    def __init__(self, executor_id: str) -> None:
        self.executor_id = executor_id
        self.inbox: deque[p.Message] = deque()
        self.tasks: dict[str, p.Launch | p.LaunchChunk] = {}
        self.seq = 0

    def step(self) -> list[p.Message]:
        if not self.inbox:
            return []
        msg = self.inbox.popleft()
        if isinstance(msg, p.Launch):
            self.tasks[msg.task_id] = msg
            return [
                p.Started(msg.task_id, msg.attempt, 0),
                p.Finished(msg.task_id, msg.attempt, payloads.pack_payload(msg.task_id), {}),
            ]
        if isinstance(msg, p.LaunchChunk):
            items = [[t, "finished", payloads.pack_payload(t), None, {}] for t, _ in msg.subtasks]
            return [
                p.Started(msg.chunk_id, msg.attempt, 0),
                p.ChunkResults(msg.chunk_id, items),
                p.Finished(msg.chunk_id, msg.attempt, payloads.pack_payload(None), {}),
            ]
        if isinstance(msg, p.Suspend | p.Resume | p.Kill):
            # Whatever it was, it has finished here already: the command crossed its report.
            return [p.Refused(msg.op, msg.task_id, "task is not alive (unknown here)")]
        if isinstance(msg, p.Steal):
            return [p.Stolen(msg.chunk_id, [])]
        raise AssertionError(f"the core sent {msg!r} to an executor")

    def heartbeat(self, clock: FakeClock) -> p.Heartbeat:
        self.seq += 1
        return p.Heartbeat(self.executor_id, "n", self.seq, clock.now, 1, 0, 0, 0, 1, 1, 10.0)


def _check_encodes(instruction) -> None:
    """Every message the core emits goes on the wire: it must encode (NaN may travel).
    Notes stay in the scheduler's process (for its journal and event log)."""
    if not isinstance(instruction, Note):
        p.encode(instruction.message)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_well_formed_nonsense_never_breaks_the_core_and_real_tasks_finish_exactly_once(seed):
    rng = random.Random(seed)
    clock = FakeClock()
    core = SchedulerCore("lb", clock=clock)
    honest = {e: HonestExecutor(e) for e in HONEST}
    results: dict[str, list[list]] = {}
    launched_to_liars: list[str] = []
    real_ids: list[str] = []

    def handle(event) -> None:
        for instruction in core.handle(event):
            _check_encodes(instruction)
            if isinstance(instruction, ToExecutor):
                msg = instruction.message
                if instruction.executor_id in honest:
                    honest[instruction.executor_id].inbox.append(msg)
                elif hasattr(msg, "task_id") or hasattr(msg, "chunk_id"):
                    task_id = getattr(msg, "task_id", None)
                    launched_to_liars.append(msg.chunk_id if task_id is None else task_id)
                    for t in getattr(msg, "subtasks", ()):
                        launched_to_liars.append(t[0])
            elif (
                isinstance(instruction, ToClient)
                and instruction.client_id == "c"
                and isinstance(instruction.message, p.Results)
            ):
                for item in instruction.message.items:
                    results.setdefault(item[0], []).append(item)

    handle(ClientJoined("c"))
    handle(ClientJoined("mallory"))
    for executor_id in (*HONEST, *LIARS):
        handle(ExecutorJoined(p.Hello(p.PROTOCOL_VERSION, executor_id, "n", 1, 1, "h")))

    jobs = 0

    def submit() -> None:
        nonlocal jobs
        jobs += 1
        n = rng.randrange(1, 12)
        ids = [f"c-{jobs}/{i}" for i in range(n)]
        options = rng.choice([None, {"chunksize": rng.randrange(1, 5)}, {"chunksize": "auto"}])
        priority = rng.choice(["stream", "batch"])
        tasks = [[t, payloads.pack_call([[i]], {})] for i, t in enumerate(ids)]
        handle(
            ClientRequest(
                "c",
                p.Submit(f"c-{jobs}", priority, 0, None, "m:f", None, tasks, 0, options),
            )
        )
        real_ids.extend(ids)

    def ids() -> list[str]:
        pool = launched_to_liars[-50:] + real_ids[-20:] + ["nope", "c-1", "c-1/0"]
        return pool

    for step in range(STEPS):
        roll = rng.random()
        try:
            if roll < 0.05:
                submit()
            elif roll < 0.35:
                executor = honest[rng.choice(HONEST)]
                for report in executor.step():
                    handle(ExecutorReport(executor.executor_id, report))
            elif roll < 0.65:
                liar = rng.choice(LIARS)
                if not core.records.executors[liar].alive or rng.random() < 0.02:
                    # It said goodbye, or fell silent, or says hello again while alive: back,
                    # claiming to hold whatever it likes (real tasks among them).
                    hello = nonsense(rng, p.Hello, ids())
                    hello = dataclasses.replace(hello, executor_id=liar)
                    handle(ExecutorJoined(hello))
                cls = rng.choice(REPORTS)
                handle(ExecutorReport(liar, nonsense(rng, cls, ids())))
            elif roll < 0.8:
                cls = rng.choice(REQUESTS)
                if cls is p.ClientGoodbye:
                    continue  # mallory stays, to keep sending
                handle(ClientRequest("mallory", nonsense(rng, cls, ids())))
            elif roll < 0.9:
                for executor in honest.values():
                    handle(ExecutorReport(executor.executor_id, executor.heartbeat(clock)))
            else:
                clock.now += rng.choice([1, 10, 100]) * MS
                handle(Tick())
        except Exception as exc:
            raise AssertionError(f"seed {seed}, step {step}: the core raised {exc!r}") from exc
        if step % 1000 == 0:
            p.encode(p.Status("s", core.status()))

    # The liars fall silent: they are lost, what they held is requeued, the honest drain it.
    for _ in range(10_000):
        if all(t in results for t in real_ids):
            break
        clock.now += 50 * MS
        handle(Tick())
        for executor in honest.values():
            handle(ExecutorReport(executor.executor_id, executor.heartbeat(clock)))
            while executor.inbox:
                for report in executor.step():
                    handle(ExecutorReport(executor.executor_id, report))
    missing = [t for t in real_ids if t not in results]
    assert not missing, f"seed {seed}: {len(missing)} tasks never completed, e.g. {missing[:3]}"
    twice = {t: r for t, r in results.items() if len(r) > 1}
    assert not twice, f"seed {seed}: completed more than once: {list(twice)[:3]}"
    clock.now += 2 * core.lost_after_ns  # the liars stay silent past the loss timeout
    handle(Tick())
    assert not any(e.alive for e in core.records.executors.values() if e.executor_id in LIARS)
    for executor in core.records.executors.values():
        assert not math.isnan(executor.memory_pressure) or executor.executor_id in LIARS
    p.encode(p.Status("s", core.status()))

"""`tidal bench scale`: the scheduler core with 1,000 executors and 1,000,000 queued subtasks.

No sockets and no processes: the real `SchedulerCore`, under policy lb (Neptune's: stream
tasks suspend batch work), is driven through `handle(event)` on a fake clock, and its
executors are the simulator's (`SimExecutor`, scheduler/sim_executor.py), which answer
launches, chunk launches, steals, suspensions and resumptions as runtime/kernel.py does. A
run, step by step:

1. Setup. One client submits the subtasks as `Client.map(fn, range(n), chunksize=10)` sends
   them: jobs of 10,000 tasks, ids "bench-J/i", each payload the packed call `([i], {})`
   (`pack_call`, the kwargs packed once per job), the Submit's options `{"chunksize": 10}`.
   No executor has joined yet, so every subtask is pending.
2. Memory. `bytes_per_pending_subtask` is what the scheduler keeps for them: the bytes
   allocated while the Submits are built and handled and still allocated afterwards (each
   Submit dropped, as the server drops a decoded frame, then `gc.collect()`), measured with
   tracemalloc, over the pending subtasks. Task ids and payloads count: the core keeps
   them. tracemalloc counts exactly what Python allocates, whatever the process did before
   (RSS misses memory the allocator reuses); it slows the setup ~3x, so it is on for the
   submissions only. `run(memory="rss")` measures the growth of the process's RSS (psutil)
   instead, as a cross-check.
3. Warm-up, not measured. The executors join over the first 100 ms of simulated time, NODE_SIZE
   to a node, and start on their first chunks.
4. Steady state, measured. Each executor runs chunks of 10 subtasks of ~10 ms (5-15 ms,
   seeded) and reports results every 20 ms (the kernel's CHUNK_REPORT_NS) and at a chunk's
   end; a heartbeat every 0.5 s; a tick every 0.25 s; a stream task of 2 ms arrives every
   STREAM_EVERY_MS on average (seeded), for which lb suspends a running chunk, and resumes
   it when the stream task is done. Every `core.handle(event)` is timed (perf_counter_ns
   around the call: the scheduler's whole reaction to one event, policy decisions, steal
   checks and result items included) until `events` have been handled. The phase uses
   up under a fifth of the queue (`pending_subtasks_at_end`).
5. Drain, measured apart. A fresh core and cluster of the same size, DRAIN_PER_EXECUTOR
   subtasks each, run to completion; the events handled once nothing is pending are timed
   (`drain_ms_p50`, `drain_ms_p99`): idle executors then steal, and the stealer looks at
   every chunk. Every task must complete exactly once (`drain_completed_once`).

Figures: `decision_ms_p50` and `decision_ms_p99` over the steady state's calls;
`events_per_s`, events handled per second of wall time spent inside `handle` (what the
core alone sustains), and `phase_events_per_s` over the phase's whole wall time, the
simulated executors included; `stream_arrival_ms_p50`/`_p99`, the calls that brought a
stream task (lb picks its victim then); `gc_full_collections` in the phase. Quick mode
runs 100 executors and 100,000 subtasks (`quick` and the sizes are in the output).

Discussion, what limits the figures (2-core machine, CPython 3.11):
* A freed slot costs lb ~0.1 ms at 1,000 executors: it asks the view which executors have
  room (one pass over the executors' records, ~60 ns each); an index kept by the core
  would make it independent of the cluster's size. Before the view answered that itself,
  lb made a view per executor per event: ~1.3 ms a freed slot, `decision_ms_p99` 2.8 ms.
* A stream task that finds no free slot costs 2-3 ms at 1,000 executors (it varies from
  run to run): lb ranks every running batch task, through views, to pick its victim
  (node balance first). It cost ~6.7 ms before the changes above.
* `decision_ms_max` is the garbage collector. A full collection walks every tracked
  object, ~0.4 s with a million task records; it runs once as many new objects as a
  quarter of the old ones have survived, so rarely once a queue is built
  (`gc_full_collections`: 0 or 1 in a full run; 7 before the changes above, when views
  made by the thousand survived into the old generation). Keeping pending subtasks out of
  per-task objects, or `gc.freeze()` in the server after a large submission, would
  shorten it.
  Young collections take up to ~15 ms here, longer than in a scheduler process: the
  simulated executors' records are young objects of the same process.
* In the drain, each report while an executor is idle costs a pass over every executor's
  chunks (~0.3 ms at 1,000 busy executors); an index of chunks would be next.
* Memory: ~400 bytes a pending subtask, most of it the task's record (a slotted object of
  24 fields, 208 bytes), its id and its payload. The core keeps the record of a task
  that is done (its payload dropped), so memory also grows with completed tasks; not
  measured here.
"""

from __future__ import annotations

import gc
import logging
import random
import time
import tracemalloc
from collections import Counter
from collections.abc import Callable
from typing import Any

from tidal.runtime import payloads
from tidal.runtime import protocol as p
from tidal.runtime.stats import percentile
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
from tidal.scheduler.events import Event
from tidal.scheduler.sim_executor import EventLoop, SimExecutor

TARGETS = {
    "decision_ms_p99": ("<=", 1.0),
    "bytes_per_pending_subtask": ("<=", 100),
    "setup_s": ("<=", 2.0),
    "gc_pause_ms_max": ("<=", 10.0),
}

POLICY = "lb"
CLIENT_ID = "bench"
FN = "tidal.workloads.synthetic:noop"  # never resolved: the simulated executors run durations
FULL = {"executors": 1_000, "subtasks": 1_000_000, "events": 100_000}
QUICK = {"executors": 100, "subtasks": 100_000, "events": 10_000}
TASKS_PER_JOB = 10_000
CHUNKSIZE = 10
NODE_SIZE = 8  # executors per node: lb balances batch work over nodes
SUBTASK_NS = 10_000_000  # mean; each subtask's is 0.5-1.5x that, seeded
STREAM_TASK_NS = 2_000_000
STREAM_EVERY_MS = 10.0  # mean gap between stream arrivals (exponential, seeded)
DRAIN_PER_EXECUTOR = 50
# As the simulator's defaults (scheduler/sim.py): a hop ~0.2 ms, heartbeats every 0.5 s,
# and the server's tick every half heartbeat.
LATENCY_NS = 200_000
HEARTBEAT_NS = 500_000_000
TICK_NS = HEARTBEAT_NS // 2
JOIN_OVER_NS = 100_000_000
WARMUP_NS = 300_000_000
MS = 1_000_000


class ScaleDriver:
    """A SchedulerCore, simulated executors on one EventLoop, and the client that submits.

    Every event goes to the core through `deliver`, which times `core.handle` while
    `measuring` (into `times_ns`, and stream arrivals into `stream_ns`) and passes what the
    core sends on, LATENCY_NS later: commands to the simulated executors, results counted
    per task id in `results`.
    """

    def __init__(
        self, executors: int, *, seed: int = 1, stream_every_ms: float = STREAM_EVERY_MS
    ) -> None:
        self.loop = EventLoop()
        self.core = SchedulerCore(POLICY, clock=lambda: self.loop.now, heartbeat_ns=HEARTBEAT_NS)
        self.rng = random.Random(seed)
        self.jitter = [0.5 + self.rng.random() for _ in range(1024)]
        self.stream_every_ms = stream_every_ms
        self.executors = {
            f"e{i}": SimExecutor(
                f"e{i}", f"n{i // NODE_SIZE}", self.loop, self._emitter(f"e{i}"), self._work_of
            )
            for i in range(executors)
        }
        self.results: Counter[str] = Counter()
        self.subtasks = 0
        self.setup_ns = 0  # the core's time handling the submissions
        self.jobs = 0
        self.stream_tasks = 0
        self.measuring = False
        self.times_ns: list[int] = []
        self.stream_ns: list[int] = []
        self.suspends = 0
        self.deliver(ClientJoined(CLIENT_ID))

    # ---- the client ---------------------------------------------------------------------------

    def submit_batch(self, subtasks: int, tasks_per_job: int = TASKS_PER_JOB) -> None:
        """Submit `subtasks` tasks in jobs of `tasks_per_job`, as `Client.map` sends them."""
        packed_kwargs = payloads.pack_payload({}, "kwargs")
        while subtasks > 0:
            n = min(tasks_per_job, subtasks)
            job_id = f"{CLIENT_ID}-{self.jobs}"
            bulk = [payloads.pack_call([i], {}, packed_kwargs=packed_kwargs) for i in range(n)]
            options = {"chunksize": CHUNKSIZE}
            submit = p.Submit(job_id, "batch", 0, None, FN, None, [], self.loop.now, options, bulk)
            del bulk  # the Submit is all that holds them, as a decoded frame would
            start = time.perf_counter_ns()
            self.deliver(ClientRequest(CLIENT_ID, submit))
            self.setup_ns += time.perf_counter_ns() - start
            self.jobs += 1
            self.subtasks += n
            subtasks -= n

    def _stream_arrival(self) -> None:
        job_id = f"stream-{self.stream_tasks}"
        payload = payloads.pack_call([self.stream_tasks], {})
        self.stream_tasks += 1
        submit = p.Submit(
            job_id, "stream", 0, None, FN, None, [[f"{job_id}/0", payload]], self.loop.now
        )
        self.deliver(ClientRequest(CLIENT_ID, submit))
        if self.measuring:
            self.stream_ns.append(self.times_ns[-1])
        self._next_stream()

    def _next_stream(self) -> None:
        if self.stream_every_ms > 0:
            gap = self.rng.expovariate(1.0 / (self.stream_every_ms * MS))
            self.loop.after(max(1, round(gap)), self._stream_arrival)

    # ---- the cluster ----------------------------------------------------------------------------

    def start(self) -> None:
        """Executors join over JOIN_OVER_NS; heartbeats, ticks and stream arrivals begin."""
        count = len(self.executors)
        for i, (executor_id, executor) in enumerate(self.executors.items()):
            at = self.loop.now + JOIN_OVER_NS * i // count
            hello = p.Hello(p.PROTOCOL_VERSION, executor_id, executor.node, 1, i, "sim")
            self.loop.at(at, self.deliver, ExecutorJoined(hello))
            self.loop.at(at + self.rng.randrange(1, HEARTBEAT_NS), self._heartbeat, executor_id, 0)
        self.loop.after(TICK_NS, self._tick)
        self._next_stream()

    def _emitter(self, executor_id: str) -> Callable[[p.Message], None]:
        def emit(message: p.Message) -> None:
            self.loop.after(LATENCY_NS, self.deliver, ExecutorReport(executor_id, message))

        return emit

    def _work_of(self, task_id: str) -> int:
        """A task's running time: stream tasks STREAM_TASK_NS, subtasks seeded from their id."""
        if task_id.startswith("stream-"):
            return STREAM_TASK_NS
        job, _, index = task_id.rpartition("/")
        i = int(index) * 7919 + int(job.rpartition("-")[2]) * 104729
        return round(SUBTASK_NS * self.jitter[i % len(self.jitter)])

    def _tick(self) -> None:
        self.deliver(Tick())
        self.loop.after(TICK_NS, self._tick)

    def _heartbeat(self, executor_id: str, seq: int) -> None:
        executor = self.executors[executor_id]
        running, suspended, queued = executor.counts()
        beat = p.Heartbeat(
            executor_id,
            executor.node,
            seq,
            self.loop.now,
            1,
            running,
            suspended,
            queued,
            200 << 20,
            8 << 30,
            50.0,
        )
        self.deliver(ExecutorReport(executor_id, beat))
        self.loop.after(HEARTBEAT_NS, self._heartbeat, executor_id, seq + 1)

    # ---- the door into the core -----------------------------------------------------------

    def deliver(self, event: Event) -> None:
        """Hand `event` to the core (timed while measuring); pass on what it sends."""
        start = time.perf_counter_ns()
        instructions = self.core.handle(event)
        elapsed = time.perf_counter_ns() - start
        if self.measuring:
            self.times_ns.append(elapsed)
        for instruction in instructions:
            if isinstance(instruction, ToExecutor):
                message = instruction.message
                self.suspends += isinstance(message, p.Suspend)
                executor = self.executors[instruction.executor_id]
                self.loop.after(LATENCY_NS, executor.receive, message)
            elif isinstance(instruction, ToClient) and isinstance(instruction.message, p.Results):
                self.results.update(item[0] for item in instruction.message.items)
            elif isinstance(instruction, ToClient) and type(instruction.message) is p.BatchResults:
                batch = instruction.message
                first, count = batch.start, len(batch.values)
                self.results.update(f"{batch.job_id}/{i}" for i in range(first, first + count))

    # ---- running ----------------------------------------------------------------------------

    def run_until(self, done: Callable[[], bool]) -> None:
        """Step the simulation until `done()`."""
        while not done():
            self.loop.step()

    def finish(self, timeout_s: float = 3600.0) -> None:
        """Stop stream arrivals; run until every task submitted has a result."""
        self.stream_every_ms = 0.0
        deadline = self.loop.now + round(timeout_s * 1e9)
        # Counted afresh each step: a stream task may still arrive after stream_every_ms is
        # set to 0 (its arrival was scheduled already).
        while len(self.results) < (expected := self.subtasks + self.stream_tasks):
            if self.loop.now > deadline:
                raise RuntimeError(
                    f"{expected - len(self.results)} tasks still have no result after "
                    f"{timeout_s} s of simulated time"
                )
            self.loop.step()

    def completed_once(self) -> bool:
        """Every task submitted has exactly one result, and no other task has any."""
        expected = self.subtasks + self.stream_tasks
        return len(self.results) == expected and set(self.results.values()) <= {1}


# ---- the benchmark ------------------------------------------------------------------------------


class GcPauses:
    """The longest garbage collection while in the `with` block (`gc.callbacks`)."""

    def __init__(self) -> None:
        self.longest_ns = 0
        self._began = 0

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._began = time.perf_counter_ns()
        else:
            self.longest_ns = max(self.longest_ns, time.perf_counter_ns() - self._began)

    def __enter__(self) -> GcPauses:
        gc.callbacks.append(self._callback)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self._callback)


def submit_measured(driver: ScaleDriver, subtasks: int, memory: str = "tracemalloc") -> int:
    """Submit `subtasks`; return the bytes the scheduler keeps for them (see the docstring)."""
    if memory not in ("tracemalloc", "rss"):
        raise ValueError(f"memory is measured with 'tracemalloc' or 'rss', not {memory!r}")
    gc.collect()
    if memory == "tracemalloc":
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            driver.submit_batch(subtasks)
            gc.collect()
            return tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
    import psutil

    process = psutil.Process()
    before = process.memory_info().rss
    driver.submit_batch(subtasks)
    gc.collect()
    return process.memory_info().rss - before


def steady_state(
    executors: int, subtasks: int, events: int, seed: int, memory: str, stream_every_ms: float
) -> dict[str, Any]:
    """Steps 1-4 of the docstring: setup, memory, warm-up, the measured steady state."""
    start = time.perf_counter()
    driver = ScaleDriver(executors, seed=seed, stream_every_ms=stream_every_ms)
    kept = submit_measured(driver, subtasks, memory)
    pending = driver.core.records.pending.count()
    setup_total_s = time.perf_counter() - start
    driver.start()
    driver.run_until(lambda: driver.loop.now >= WARMUP_NS)
    driver.measuring, driver.suspends = True, 0
    full_collections = gc.get_stats()[2]["collections"]
    pauses = GcPauses()
    start = time.perf_counter()
    with pauses:
        driver.run_until(lambda: len(driver.times_ns) >= events)
    phase_s = time.perf_counter() - start
    driver.measuring = False
    times_ms = [t / 1e6 for t in driver.times_ns]
    stream_ms = [t / 1e6 for t in driver.stream_ns]
    return {
        "subtasks": driver.subtasks,
        "jobs": driver.jobs,
        "events": len(times_ms),
        "decision_ms_p50": percentile(times_ms, 50),
        "decision_ms_p99": percentile(times_ms, 99),
        "decision_ms_max": max(times_ms),
        "stream_arrival_ms_p50": percentile(stream_ms, 50),
        "stream_arrival_ms_p99": percentile(stream_ms, 99),
        "events_per_s": len(times_ms) / (sum(driver.times_ns) / 1e9),
        "phase_events_per_s": len(times_ms) / phase_s,
        "gc_full_collections": gc.get_stats()[2]["collections"] - full_collections,
        "gc_pause_ms_max": pauses.longest_ns / 1e6,
        "bytes_per_pending_subtask": kept / pending,
        "memory_measured_with": memory,
        "pending_subtasks_measured": pending,
        "pending_subtasks_at_end": driver.core.records.pending.count(),
        "stream_tasks": len(stream_ms),
        "suspensions": driver.suspends,
        "duplicate_results": sum(n > 1 for n in driver.results.values()),
        "simulated_s": (driver.loop.now - WARMUP_NS) / 1e9,
        "setup_s": driver.setup_ns / 1e9,
        "setup_total_s": setup_total_s,
        "phase_s": phase_s,
    }


def drain(executors: int, per_executor: int, seed: int) -> dict[str, Any]:
    """Step 5 of the docstring: a short queue run to its end; the events once it is empty."""
    driver = ScaleDriver(executors, seed=seed, stream_every_ms=0.0)
    driver.submit_batch(executors * per_executor)
    driver.start()
    driver.run_until(
        lambda: driver.loop.now >= JOIN_OVER_NS and not driver.core.records.pending.count()
    )
    driver.measuring = True
    driver.finish()
    times_ms = [t / 1e6 for t in driver.times_ns]
    return {
        "drain_subtasks": driver.subtasks,
        "drain_events": len(times_ms),
        "drain_ms_p50": percentile(times_ms, 50),
        "drain_ms_p99": percentile(times_ms, 99),
        "drain_steals": driver.core.records.steal_count,
        "drain_completed_once": int(driver.completed_once()),
    }


def run(
    quick: bool = False,
    *,
    executors: int | None = None,
    subtasks: int | None = None,
    events: int | None = None,
    drain_per_executor: int = DRAIN_PER_EXECUTOR,
    seed: int = 1,
    memory: str = "tracemalloc",
    stream_every_ms: float = STREAM_EVERY_MS,
) -> dict[str, Any]:
    """The benchmark (see the module docstring); sizes default to FULL, or QUICK if `quick`."""
    sizes = dict(QUICK if quick else FULL)
    for name, value in (("executors", executors), ("subtasks", subtasks), ("events", events)):
        if value is not None:
            sizes[name] = value
    # Executors refusing commands that crossed a task's end are logged at info and debug;
    # keep the output to the figures.
    logging.getLogger("tidal.scheduler").setLevel(logging.ERROR)
    steady = steady_state(
        sizes["executors"], sizes["subtasks"], sizes["events"], seed, memory, stream_every_ms
    )
    return {
        "policy": POLICY,
        "quick": quick,
        "executors": sizes["executors"],
        "chunksize": CHUNKSIZE,
        "subtask_ms": SUBTASK_NS / MS,
        "stream_every_ms": stream_every_ms,
        **steady,
        **drain(sizes["executors"], drain_per_executor, seed),
        "seed": seed,
    }

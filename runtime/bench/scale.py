"""`tidal bench scale`: the scheduler core with 1,000 executors and 1,000,000 queued subtasks.

No sockets: the real `SchedulerCore`, under policy lb (Neptune's: stream tasks suspend batch
work), is driven through `handle(event)` on a fake clock, and its executors are the
simulator's (`SimExecutor`, scheduler/sim_executor.py), which answer launches, chunk
launches, steals, suspensions and resumptions as runtime/kernel.py does. The core runs in a
process of its own (`CoreProcess`, over a pipe), so that what its garbage collector walks is
what a scheduler's would: the core's objects, not the simulation's. A run, step by step:

1. Setup. One client submits the subtasks as `Client.map(fn, range(n), chunksize=10)` sends
   them: jobs of 10,000 tasks, ids "bench-J/i", as columns (protocol 13: the xs 0, 1, ...
   as one packed array, the kwargs `{}` packed once per job), the Submit's options
   `{"chunksize": 10}`.
   No executor has joined yet, so every subtask is pending.
2. Memory. `bytes_per_pending_subtask` is what the scheduler keeps for them: the bytes
   allocated while the Submits are built and handled and still allocated afterwards (each
   Submit dropped, as the server drops a decoded frame, then `gc.collect()`), measured with
   tracemalloc, over the pending subtasks. Task ids and arguments count: the core keeps
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
stream task (lb picks its victim then); `gc_pause_ms_max`, the longest garbage collection
in the core's process during the phase, `gc_full_collections` there, and `gc_full_ms`, a
full collection of the core's process timed at the phase's end (what one costs when it
comes). Quick mode runs 100 executors and 100,000 subtasks (`quick` and the sizes are in
the output). `run(core_process=False)` keeps the core in this process, as before.

Discussion, what limits the figures (2-core machine, CPython 3.11):
* A freed slot costs lb ~0.1 ms at 1,000 executors: it asks the view which executors have
  room (one pass over the executors' records, ~60 ns each); an index kept by the core
  would make it independent of the cluster's size. Before the view answered that itself,
  lb made a view per executor per event: ~1.3 ms a freed slot, `decision_ms_p99` 2.8 ms.
* A stream task that finds no free slot costs 2-3 ms at 1,000 executors (it varies from
  run to run): lb ranks every running batch task, through views, to pick its victim
  (node balance first). It cost ~6.7 ms before the changes above.
* Garbage collection. A full collection walks every tracked object: ~0.4 s once with a
  million task records, 22-27 ms with the bulk path's records (chunks and pieces, ~50,000
  objects in the core's process), 7.4 ms now that the scheduler's process freezes what
  exists before its server (`gc.freeze()`, service.serve: modules and functions, ~28,000
  objects) and a bulk job's payloads are a tuple (untracked by the collector once it has
  looked, where a list of a million payloads made each full collection visit them all).
  One runs once as many objects as a quarter of the old ones have survived, so rarely once
  a queue is built (`gc_full_collections`: 0 in a full run). Young collections take
  2-2.5 ms at most in the core's process; with the core in the simulation's process they
  took 5-18 ms (~20,000 young objects, most of them the simulated executors'), which is
  why it runs apart.
* In the drain, each report while an executor is idle costs a pass over every executor's
  chunks (~0.3 ms at 1,000 busy executors); an index of chunks would be next.
* Memory: ~8 bytes a pending subtask since protocol 13 (runtime/columns.py): its x in its
  job's packed array (1-3 bytes for these ints), where that begins (4) and a byte for its
  end; ~48 with a payload (a bytes object) per subtask, ~400 with a record per task (a
  slotted object of 24 fields, 208 bytes, its id and its payload) before the bulk path. A
  task that gets a record of its own (a retry, a cancel) costs that again; not measured
  here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import logging
import multiprocessing
import os
import random
import time
import tracemalloc
from collections import Counter
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

import msgpack

from tidal.runtime import batches, payloads
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
from tidal.scheduler.events import Event, Instruction
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
        self,
        executors: int,
        *,
        seed: int = 1,
        stream_every_ms: float = STREAM_EVERY_MS,
        core_process: bool = False,
    ) -> None:
        self.loop = EventLoop()
        self.side = CoreProcess(self._now) if core_process else LocalCore(self._now)
        try:
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
        except BaseException:
            self.side.close()  # a core's process started for nothing is stopped
            raise

    def _now(self) -> int:
        return self.loop.now

    @property
    def core(self) -> SchedulerCore:
        """The core, when it runs in this process."""
        if not isinstance(self.side, LocalCore):
            raise AttributeError("the core runs in a process of its own: ask `side`")
        return self.side.core

    def close(self) -> None:
        """Stop the core's process, if it has one."""
        self.side.close()

    # ---- the client ---------------------------------------------------------------------------

    def submit_batch(self, subtasks: int, tasks_per_job: int = TASKS_PER_JOB) -> None:
        """Submit `subtasks` tasks in jobs of `tasks_per_job`, as `Client.map` sends them:
        columns, one packed array of the xs (protocol 13, runtime/columns.py)."""
        packed_kwargs = payloads.pack_payload({}, "kwargs")
        while subtasks > 0:
            n = min(tasks_per_job, subtasks)
            job_id = f"{CLIENT_ID}-{self.jobs}"
            bulk = msgpack.packb(list(range(n)))
            options = {"chunksize": CHUNKSIZE}
            submit = p.Submit(job_id, "batch", 0, None, FN, None, [], self.loop.now, options, bulk)
            submit = dataclasses.replace(submit, kwargs=packed_kwargs)
            del bulk  # the Submit is all that holds them, as a decoded frame would
            self.setup_ns += self.deliver(ClientRequest(CLIENT_ID, submit))
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

    def deliver(self, event: Event) -> int:
        """Hand `event` to the core; pass on what it sends; return (and keep, while
        measuring) the nanoseconds `core.handle` took."""
        elapsed, instructions = self.side.handle_timed(event)
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
                first, count = batch.start, batches.values_count(batch.values)
                self.results.update(f"{batch.job_id}/{i}" for i in range(first, first + count))
        return elapsed

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


# ---- the core, in this process or in one of its own -------------------------------------------


def new_core(clock: Callable[[], int]) -> SchedulerCore:
    return SchedulerCore(POLICY, clock=clock, heartbeat_ns=HEARTBEAT_NS)


def handle_timed(core: SchedulerCore, event: Event) -> tuple[int, list[Instruction]]:
    """`core.handle(event)` and the nanoseconds it took; only the instructions that the
    driver passes on (messages to executors, results to the client)."""
    start = time.perf_counter_ns()
    instructions = core.handle(event)
    elapsed = time.perf_counter_ns() - start
    return elapsed, [
        instruction
        for instruction in instructions
        if isinstance(instruction, ToExecutor)
        or (isinstance(instruction, ToClient) and isinstance(instruction.message, RESULTS))
    ]


RESULTS = (p.Results, p.BatchResults)


class GcPauses:
    """The longest garbage collection, and the full ones, between `start` and `stop`
    (`gc.callbacks`)."""

    def __init__(self) -> None:
        self.longest_ns = 0
        self._began = 0
        self._full_before = 0

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._began = time.perf_counter_ns()
        else:
            self.longest_ns = max(self.longest_ns, time.perf_counter_ns() - self._began)

    def start(self) -> None:
        self._full_before = gc.get_stats()[2]["collections"]
        gc.callbacks.append(self._callback)

    def stop(self) -> tuple[int, int]:
        """The longest collection in nanoseconds, and the count of full collections."""
        gc.callbacks.remove(self._callback)
        return self.longest_ns, gc.get_stats()[2]["collections"] - self._full_before


def check_memory_how(how: str) -> None:
    if how not in ("tracemalloc", "rss"):
        raise ValueError(f"memory is measured with 'tracemalloc' or 'rss', not {how!r}")


class MemoryProbe:
    """What this process allocates and keeps between `start` and `stop`, measured with
    tracemalloc or as the growth of its RSS (see the module docstring)."""

    def __init__(self, how: str) -> None:
        check_memory_how(how)
        self.how = how
        self._before = 0

    def _now(self) -> int:
        if self.how == "tracemalloc":
            return tracemalloc.get_traced_memory()[0]
        import psutil

        return psutil.Process().memory_info().rss

    def start(self) -> None:
        gc.collect()
        if self.how == "tracemalloc":
            tracemalloc.start()
        self._before = self._now()

    def stop(self) -> int:
        gc.collect()
        kept = self._now() - self._before
        if self.how == "tracemalloc":
            tracemalloc.stop()
        return kept


class CoreProcess:
    """The SchedulerCore in a process of its own, driven over a pipe.

    `bench scale`'s garbage collection figures must be the core's: in one process with the
    simulation, every young collection also walks the simulated executors' objects (~20,000
    of them at 1,000 executors: 5-18 ms a collection, longer than the core's own). Here the
    process holds what a scheduler holds: the core, and each event decoded as it arrives (by
    pickle, where the server decodes msgpack). Its `handle_timed`, `pending` and `steals`
    are the core's; `gc_start`/`gc_stop` and `memory_start`/`memory_stop` measure in that
    process. The simulated clock's time travels with every call.

    The driver and the core take turns, one waiting while the other works, so both run on
    one CPU (the calling thread's affinity is narrowed until `close`, and the core's process
    inherits it): a hop between two CPUs cost ~0.3 ms of wake-ups per event, which made a
    full run 85 s instead of 35 and changed no figure.
    """

    def __init__(self, clock: Callable[[], int]) -> None:
        self._clock = clock
        self._affinity = os.sched_getaffinity(0)
        os.sched_setaffinity(0, {min(self._affinity)})
        try:
            context = multiprocessing.get_context("spawn")
            self._conn, theirs = context.Pipe()
            self._process = context.Process(
                target=_serve_core, args=(theirs,), name="tidal-bench-scale-core", daemon=True
            )
            self._process.start()
            theirs.close()
        except BaseException:
            os.sched_setaffinity(0, self._affinity)
            raise

    def _call(self, name: str, *args: Any) -> Any:
        try:
            self._conn.send((name, self._clock(), args))
            ok, value = self._conn.recv()
        except (EOFError, OSError) as exc:
            self._process.join(1)
            raise RuntimeError(
                f"the core's process is gone (exit code {self._process.exitcode}) "
                f"during {name}: {exc!r}"
            ) from exc
        if not ok:
            raise RuntimeError(f"the core's process failed in {name}: {value}")
        return value

    def handle_timed(self, event: Event) -> tuple[int, list[Instruction]]:
        return self._call("handle_timed", event)

    def pending(self) -> int:
        return self._call("pending")

    def steals(self) -> int:
        return self._call("steals")

    def gc_start(self) -> None:
        self._call("gc_start")

    def gc_stop(self) -> tuple[int, int]:
        return self._call("gc_stop")

    def gc_full_ms(self) -> float:
        return self._call("gc_full_ms")

    def memory_start(self, how: str) -> None:
        self._call("memory_start", how)

    def memory_stop(self) -> int:
        return self._call("memory_stop")

    def close(self) -> None:
        with contextlib.suppress(OSError):  # the process is gone already
            self._conn.send(None)
        self._process.join(10)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()
        self._conn.close()
        os.sched_setaffinity(0, self._affinity)


class LocalCore:
    """CoreProcess's calls on a SchedulerCore in this process (`core`)."""

    def __init__(self, clock: Callable[[], int]) -> None:
        self.core = new_core(clock)
        self._pauses = GcPauses()
        self._memory: MemoryProbe | None = None

    def handle_timed(self, event: Event) -> tuple[int, list[Instruction]]:
        return handle_timed(self.core, event)

    def pending(self) -> int:
        return self.core.records.pending.count()

    def steals(self) -> int:
        return self.core.records.steal_count

    def gc_start(self) -> None:
        self._pauses = GcPauses()
        self._pauses.start()

    def gc_stop(self) -> tuple[int, int]:
        return self._pauses.stop()

    def gc_full_ms(self) -> float:
        """A full collection now, timed: what one costs on the core's heap."""
        start = time.perf_counter_ns()
        gc.collect()
        return (time.perf_counter_ns() - start) / 1e6

    def memory_start(self, how: str) -> None:
        self._memory = MemoryProbe(how)
        self._memory.start()

    def memory_stop(self) -> int:
        if self._memory is None:
            raise RuntimeError("memory_stop without memory_start")
        memory, self._memory = self._memory, None
        return memory.stop()

    def close(self) -> None:
        pass


def _serve_core(conn: Connection) -> None:
    """The core process's loop: a LocalCore answering CoreProcess's calls until told to stop."""
    logging.getLogger("tidal.scheduler").setLevel(logging.ERROR)
    gc.collect()  # as the scheduler's process does before it makes its server (service.serve)
    gc.freeze()
    now = 0
    side = LocalCore(lambda: now)
    while (call := conn.recv()) is not None:
        name, now, args = call
        try:
            reply = (True, getattr(side, name)(*args))
        except Exception as exc:  # reported to the driver, which raises it
            reply = (False, f"{type(exc).__name__}: {exc}")
        conn.send(reply)
    conn.close()


# ---- the benchmark ------------------------------------------------------------------------------


def submit_measured(driver: ScaleDriver, subtasks: int, memory: str = "tracemalloc") -> int:
    """Submit `subtasks`; return the bytes the scheduler keeps for them (see the docstring)."""
    check_memory_how(memory)  # here, before the core's process is asked
    driver.side.memory_start(memory)
    driver.submit_batch(subtasks)
    return driver.side.memory_stop()


def steady_state(
    executors: int,
    subtasks: int,
    events: int,
    seed: int,
    memory: str,
    stream_every_ms: float,
    core_process: bool = True,
) -> dict[str, Any]:
    """Steps 1-4 of the docstring: setup, memory, warm-up, the measured steady state."""
    start = time.perf_counter()
    driver = ScaleDriver(
        executors, seed=seed, stream_every_ms=stream_every_ms, core_process=core_process
    )
    try:
        kept = submit_measured(driver, subtasks, memory)
        pending = driver.side.pending()
        setup_total_s = time.perf_counter() - start
        driver.start()
        driver.run_until(lambda: driver.loop.now >= WARMUP_NS)
        driver.measuring, driver.suspends = True, 0
        driver.side.gc_start()
        start = time.perf_counter()
        driver.run_until(lambda: len(driver.times_ns) >= events)
        phase_s = time.perf_counter() - start
        longest_gc_ns, full_collections = driver.side.gc_stop()
        gc_full_ms = driver.side.gc_full_ms()
        driver.measuring = False
        pending_at_end = driver.side.pending()
    finally:
        driver.close()
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
        "gc_full_collections": full_collections,
        "gc_pause_ms_max": longest_gc_ns / 1e6,
        "gc_full_ms": gc_full_ms,
        "core_process": core_process,
        "bytes_per_pending_subtask": kept / pending,
        "memory_measured_with": memory,
        "pending_subtasks_measured": pending,
        "pending_subtasks_at_end": pending_at_end,
        "stream_tasks": len(stream_ms),
        "suspensions": driver.suspends,
        "duplicate_results": sum(n > 1 for n in driver.results.values()),
        "simulated_s": (driver.loop.now - WARMUP_NS) / 1e9,
        "setup_s": driver.setup_ns / 1e9,
        "setup_total_s": setup_total_s,
        "phase_s": phase_s,
    }


def drain(
    executors: int, per_executor: int, seed: int, core_process: bool = True
) -> dict[str, Any]:
    """Step 5 of the docstring: a short queue run to its end; the events once it is empty."""
    driver = ScaleDriver(executors, seed=seed, stream_every_ms=0.0, core_process=core_process)
    try:
        driver.submit_batch(executors * per_executor)
        driver.start()
        driver.run_until(lambda: driver.loop.now >= JOIN_OVER_NS and not driver.side.pending())
        driver.measuring = True
        driver.finish()
        steals = driver.side.steals()
    finally:
        driver.close()
    times_ms = [t / 1e6 for t in driver.times_ns]
    return {
        "drain_subtasks": driver.subtasks,
        "drain_events": len(times_ms),
        "drain_ms_p50": percentile(times_ms, 50),
        "drain_ms_p99": percentile(times_ms, 99),
        "drain_steals": steals,
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
    core_process: bool = True,
) -> dict[str, Any]:
    """The benchmark (see the module docstring); sizes default to FULL, or QUICK if `quick`.
    With `core_process` (the default) the core runs in a process of its own (CoreProcess)."""
    sizes = dict(QUICK if quick else FULL)
    for name, value in (("executors", executors), ("subtasks", subtasks), ("events", events)):
        if value is not None:
            sizes[name] = value
    # Executors refusing commands that crossed a task's end are logged at info and debug;
    # keep the output to the figures.
    logging.getLogger("tidal.scheduler").setLevel(logging.ERROR)
    steady = steady_state(
        sizes["executors"],
        sizes["subtasks"],
        sizes["events"],
        seed,
        memory,
        stream_every_ms,
        core_process,
    )
    return {
        "policy": POLICY,
        "quick": quick,
        "executors": sizes["executors"],
        "chunksize": CHUNKSIZE,
        "subtask_ms": SUBTASK_NS / MS,
        "stream_every_ms": stream_every_ms,
        **steady,
        **drain(sizes["executors"], drain_per_executor, seed, core_process),
        "seed": seed,
    }

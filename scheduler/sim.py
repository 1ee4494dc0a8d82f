"""A deterministic simulation of a Tidal cluster around the real `SchedulerCore`.

Policy tests and `tidal bench policies` need thousands of tasks scheduled in a fraction of
a second, the same way every time. Here only the scheduler is real: time is a fake clock,
executors and the client are played by this module, tasks are scripted durations. No
sockets, no threads, no sleeping.

The model, and what it leaves out:

* Time is an integer count of nanoseconds from 0. `EventLoop` runs actions in time order;
  actions due at the same time run in the order they were scheduled. Nothing else decides
  an order, so a run is a pure function of its inputs and the seed.
* The scheduler is `SchedulerCore`, unchanged, driven through `handle()` with the fake clock.
  Every instruction it returns arrives `message_latency_s` later: a ToExecutor at that
  simulated executor, Results at the simulated client. Executor reports reach the core
  `message_latency_s` after they are sent. One latency for every message, so messages
  between two peers are never reordered.
* A job is sent by the client "sim" at its `arrival_s` (the Submit reaches the core one
  latency later) with one task per duration, task ids f"{job_id}/{i}". A task's latency is
  arrival -> its result reaches the client.
* A simulated executor (`SimExecutor`) follows runtime/kernel.py and runtime/runstate.py:
  one slot; ready order is stream launches, then resumed tasks, then batch launches, first
  in first out within each.
  A task is pure work: it needs its scripted duration of running in total, in one stretch or
  several, in records of `record_s` (the job's `JobSpec.record_s`, else the cluster's).
  Commands that arrive while a task runs wait for its next record boundary (the kernel's
  hub sees commands only when the running task calls it at a boundary), then
  `suspend_latency_s` for the hub; an idle executor applies them at once. So a suspension
  takes up to a record, more for a job of coarse records. A suspended task keeps its
  remaining work. A task suspended before it ever ran goes back to the launch queue when
  resumed and reports Started, not Resumed, when it runs. A kill drops the task wherever it
  is and the work of that attempt is lost. A command that does not apply gets Refused.
* Chunks and stealing. A job with a `chunksize` (an int or "auto") sends it in the Submit's
  options, and the core launches its tasks in chunks (scheduler/chunks.py). A simulated
  executor runs a chunk as the kernel does: one entry in the ready order, its subtasks one
  after the other (each its scripted duration), a suspension point between two subtasks
  (and at record boundaries inside one), results in batches of CHUNK_REPORT_EVERY or every
  CHUNK_REPORT_NS (runtime/spanrun.py) and whenever a command waits; a steal takes
  not-started subtasks from the end of the chunk, never one that has started. The timeline
  has the chunk's own events under its id and "subtask_started", "subtask_finished" and
  "stolen" under each subtask's. A chunk's suspension counts in `SimResult.suspensions`
  and, if it parked inside a subtask, in that task's; `SimCluster(stealing=False)` turns
  stealing off and `steal_rule` picks the stealer's rule ("largest" or "oldest").
* Memory. A task holds its job's `memory_mb` from its first start until it ends, suspended
  or not: a parked task keeps its state. Every `heartbeat_s` each executor sends a
  Heartbeat: counts, an rss of BASE_RSS_BYTES plus what its tasks hold, a `mem_percent`
  of what `memory` scripts for it plus what the tasks of every executor on its node hold,
  against HOST_MEMORY_BYTES per node (a node is one host), and each started task's running
  time and records so far (`task_records`, as the kernel counts them). With `memory_limit_mb`, the
  heartbeat also carries the limit and each task's memory, and the executor fails a task
  over its limit as runtime/memory.py does (scheduler/sim_executor.py): a `failed` result,
  not retried. Heartbeat phases are drawn from the seed. The core gets a Tick every
  `heartbeat_s / 2`.
* Stream sources. A stream job with a `source` is a micro-batch that a stream driver
  (runtime/streams.py's `StreamDriver`) cut from that source. The driver runs from time 0,
  as the executors do, and, as a driver does from its start (before its first
  micro-batch), reports its source's lag (`stream_lag`) every LAG_EVERY_S: its micro-batches'
  tasks submitted and not completed, and the oldest one's age.
* `fail_executor(executor_id, at_s)`: from then on the executor says nothing and ignores
  commands; the core's liveness check finds out and requeues its tasks. The work its tasks
  had done is lost.
* A task reports `records` = its work done // `record_s`. The seed decides only the
  heartbeat phases; the workload's randomness is the caller's (see scheduler/scenarios.py).
* Not modelled: switch and decode costs (a chunk's per-subtask cost too), tasks that never
  reach a record boundary (SuspendFailed), task failures other than the memory guard's,
  cancellation, memory that grows while a task runs (it holds all of it from its start),
  chunks' memory, swapping, jitter.

Preferences (`JobSpec.preferred_nodes` for every task of a job, or `preferences=` per task;
node labels or executor ids) travel as real clients send them: in the Submit, as the task
entry's options `{"preferred": [...]}`, so a policy reads them from `TaskView.preferred`.
For a policy written before preferences were on the wire, the mapping {task_id: [...]} is
also handed, at the start of `run()`, to the policy's `set_preferences(mapping)` method if
it has one.

Discussion: this was one file of ~900 lines, over STYLE.md's ~800, so it is split at the
first of its section rules: the event loop and the simulated executor, which need nothing
of the scheduler, live in scheduler/sim_executor.py (re-exported here); the cluster and its
results, and the scenarios, stay here. If this module grows again, the scenarios are the
next seam.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

from tidal.runtime import payloads
from tidal.runtime import protocol as p
from tidal.runtime.stats import percentile
from tidal.scheduler.chunks import check_chunksize
from tidal.scheduler.core import SchedulerCore
from tidal.scheduler.eventlog import EventLog
from tidal.scheduler.events import (
    ClientJoined,
    ClientRequest,
    Event,
    ExecutorJoined,
    ExecutorReport,
    Tick,
    ToClient,
    ToExecutor,
)

# EventLoop and SimExecutor are re-exported (tests import them from here); _ns is shared.
from tidal.scheduler.sim_executor import (
    DEFAULT_RECORD_S,
    DEFAULT_SUSPEND_LATENCY_S,
    SUSPENDED,
    EventLoop,
    ExecutorTask,
    SimExecutor,
    _ns,
)

__all__ = [
    "EventLoop",
    "JobSpec",
    "NodeSample",
    "SimCluster",
    "SimExecutor",
    "SimResult",
    "TaskResult",
]

CLIENT_ID = "sim"
TASK_FN = "sim:task"  # never resolved: simulated executors run scripted durations
# Every task's payload, never opened either: a simulated executor looks a task's duration up
# by its id (`SimCluster._work_of`), so the payload that travels is the empty call.
TASK_PAYLOAD = payloads.pack_call([], {})

# Discussion: the defaults are this machine's measured orders of magnitude (docs/notes.md):
# a hop through ZeroMQ ~0.2 ms, a parked task's hub regaining control ~50 us after the
# command, records of ~1 ms (those two are the simulated executor's: DEFAULT_SUSPEND_LATENCY_S
# and DEFAULT_RECORD_S in scheduler/sim_executor.py). They make preemption cheap next to batch
# tasks of 0.2-1 s, as it is in the real system; change them to ask what-if questions.
DEFAULT_MESSAGE_LATENCY_S = 0.0002
DEFAULT_HEARTBEAT_S = 0.5
DEFAULT_MEM_PERCENT = 30.0
LAG_EVERY_S = 0.5  # a stream driver's lag reports (StreamDriver's `lag_every_s` default)
# Heartbeats carry an rss: an executor's own, and what its tasks hold (`JobSpec.memory_mb`).
BASE_RSS_BYTES = 100 << 20
HOST_MEMORY_BYTES = 16 << 30  # per node
MB = 1 << 20  # `memory_mb` and `memory_limit_mb` are MiB


# ---- what is simulated, and what comes out ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class JobSpec:
    """One job: a task per duration, sent to the scheduler at `arrival_s`."""

    job_id: str
    priority: str  # "stream" or "batch"
    arrival_s: float
    durations_s: list[float]
    order: int = 0
    max_suspensions: int | None = None  # None: the cluster's cap
    preferred_nodes: list[str] | None = None  # nodes or executor ids, for each of its tasks
    chunksize: int | str | None = None  # None: a launch per task; an int or "auto": chunks
    record_s: float | None = None  # its tasks' records (None: the cluster's record_s)
    memory_mb: float = 0.0  # what each of its tasks holds from its start until it ends
    source: str | None = None  # a stream job's: the source its driver cut it from

    def __post_init__(self) -> None:
        if self.priority not in p.PRIORITY_CLASSES:
            raise ValueError(
                f"job {self.job_id}: priority must be stream or batch, not {self.priority!r}"
            )
        if not self.durations_s:
            raise ValueError(f"job {self.job_id} has no tasks: give one duration per task")
        if any(d < 0 for d in self.durations_s) or self.arrival_s < 0 or self.memory_mb < 0:
            raise ValueError(f"job {self.job_id}: durations, arrival_s and memory_mb must be >= 0")
        if self.record_s is not None and self.record_s <= 0:
            raise ValueError(f"job {self.job_id}: record_s must be > 0 (or None)")
        if self.source is not None and self.priority != "stream":
            raise ValueError(f"job {self.job_id}: only a stream job comes from a source")
        problem = check_chunksize({"chunksize": self.chunksize})
        if problem is not None:
            raise ValueError(f"job {self.job_id}: {problem}")

    def options(self) -> dict[str, Any] | None:
        """The Submit's job options."""
        return None if self.chunksize is None else {"chunksize": self.chunksize}

    def task_ids(self) -> list[str]:
        return [f"{self.job_id}/{i}" for i in range(len(self.durations_s))]


@dataclass(frozen=True, slots=True)
class TaskResult:
    """What happened to one task. Times are seconds of simulated time."""

    task_id: str
    job_id: str
    priority: str
    submitted_s: float  # the client sent the job
    first_started_s: float | None  # an executor first started it (any attempt)
    completed_s: float | None  # its result reached the client; None if it never did
    outcome: str | None  # "finished" (or "failed"/"cancelled"); None if not completed
    executor_id: str | None  # where the completing attempt ran
    node: str | None
    attempt: int | None  # the completing attempt, 0-based (as on the wire)
    suspensions: int  # over all attempts
    work_lost_s: float  # running time thrown away by kills and failed executors
    preferred_nodes: tuple[str, ...] | None

    @property
    def latency_s(self) -> float | None:
        return None if self.completed_s is None else self.completed_s - self.submitted_s


@dataclass(frozen=True, slots=True)
class NodeSample:
    """Tasks holding a slot per node, as the core sees them, after one batch of decisions."""

    time_s: float
    batch: dict[str, int]
    stream: dict[str, int]
    suspends: int  # Suspend commands in this batch of decisions

    @property
    def running(self) -> dict[str, int]:
        return {node: n + self.stream[node] for node, n in self.batch.items()}


@dataclass(frozen=True)
class SimResult:
    """A finished simulation: per-task results, aggregates, timeline and node samples."""

    policy: str  # the policy at the end (a policy that raised was replaced by the default)
    policy_failures: list[str]
    tasks: dict[str, TaskResult]
    timeline: list[tuple[float, str, str, str]]  # (time_s, executor_id, task_id, event)
    node_samples: list[NodeSample]
    lost_tasks: dict[str, tuple[str, ...]]  # failed executor -> tasks that lived there
    end_s: float
    stalled: bool  # stopped because nothing could make progress any more
    completed_once: bool  # every task's result reached the client exactly once
    stream_ms_p50: float | None
    stream_ms_p95: float | None
    stream_ms_p99: float | None
    batch_makespan_s: float | None  # first batch arrival -> last batch completion
    suspensions: int  # every suspension executors carried out (a chunk's once each)
    max_suspensions_per_task: int  # per attempt: the cap applies afresh to a requeued task
    work_lost_s: float
    # Of the tasks with preferences, the share that completed on a preferred node or
    # executor (None when no task has preferences).
    locality_hit_rate: float | None
    steals: int  # steals the core carried out (stolen subtasks relaunched on a thief)
    tasks_failed: int  # results that came back failed (the memory guard's, here)
    # A suspension's time at the executor: the command's arrival -> the task parked (its
    # record boundary, then the hub). None without suspensions.
    suspend_ms_p50: float | None
    suspend_ms_p99: float | None
    parked_mb_max: float  # the most memory suspended tasks held on one executor at once

    def summary(self) -> dict[str, Any]:
        """The aggregates as a flat dict (what a benchmark prints)."""
        figures = [f.name for f in fields(self) if f.name not in _NOT_FIGURES]
        return {"tasks": len(self.tasks)} | {name: getattr(self, name) for name in figures}


_NOT_FIGURES = {"policy_failures", "tasks", "timeline", "node_samples", "lost_tasks"}


@dataclass(eq=False, slots=True)
class _Truth:
    """The simulation's own record of a task, from what executors did."""

    job_id: str
    priority: str
    arrival_ns: int
    work_ns: int
    preferred: tuple[str, ...] | None
    record_ns: int = 0  # 0: the cluster's
    memory_bytes: int = 0
    source: str | None = None
    first_started_ns: int | None = None
    completed_ns: int | None = None
    outcome: str | None = None
    executor_id: str | None = None
    attempt: int | None = None
    results: int = 0
    suspensions: int = 0
    work_lost_ns: int = 0


# ---- the cluster ------------------------------------------------------------------------------


class SimCluster:
    """A simulated cluster around a real SchedulerCore; see the module docstring.

    `policy` is anything `resolve_policy` takes; `executors` are (executor_id, node) pairs;
    `memory` scripts each heartbeat's mem_percent, per executor or as
    `memory(executor_id, now_s)` (default 30.0), before what tasks hold; `memory_limit_mb`
    gives every executor (or those a mapping names) a memory limit. `sim.core` is the live
    core and `sim.executors` the simulated executors. A SimCluster runs once: build one per `run()`.
    `event_log=PATH` writes the core's event log (scheduler/eventlog.py), on the simulated
    clock, closed when `run()` returns.
    """

    def __init__(
        self,
        policy: Any,
        executors: Sequence[tuple[str, str]],
        *,
        max_suspensions: int = 3,
        heartbeat_s: float = DEFAULT_HEARTBEAT_S,
        message_latency_s: float = DEFAULT_MESSAGE_LATENCY_S,
        suspend_latency_s: float = DEFAULT_SUSPEND_LATENCY_S,
        record_s: float = DEFAULT_RECORD_S,
        memory: Mapping[str, float] | Callable[[str, float], float] | None = None,
        memory_limit_mb: float | Mapping[str, float] | None = None,
        preferences: Mapping[str, Sequence[str]] | None = None,
        seed: int = 0,
        stealing: bool = True,
        steal_rule: str = "largest",
        event_log: str | os.PathLike[str] | None = None,
    ) -> None:
        if not executors:
            raise ValueError("a cluster needs at least one (executor_id, node)")
        ids = [executor_id for executor_id, _ in executors]
        if len(set(ids)) != len(ids):
            raise ValueError(f"executor ids must be unique: {ids}")
        if heartbeat_s <= 0 or message_latency_s < 0 or suspend_latency_s < 0:
            raise ValueError("heartbeat_s must be > 0, latencies >= 0")
        self.loop = EventLoop()
        self._heartbeat_ns = _ns(heartbeat_s)
        self.core = SchedulerCore(
            policy,
            clock=lambda: self.loop.now,
            max_suspensions=max_suspensions,
            heartbeat_ns=self._heartbeat_ns,
            stealing=stealing,
            steal_rule=steal_rule,
        )
        self._latency_ns = _ns(message_latency_s)
        self._event_log = None if event_log is None else EventLog(event_log, self.core)
        self._memory = memory
        self._preferences = {tid: tuple(nodes) for tid, nodes in (preferences or {}).items()}
        self._rng = random.Random(seed)
        self._nodes = sorted({node for _, node in executors})
        self.executors: dict[str, SimExecutor] = {}
        if memory_limit_mb is None or isinstance(memory_limit_mb, (int, float)):
            limits = dict.fromkeys(ids, memory_limit_mb)
        else:
            limits = {e: memory_limit_mb.get(e) for e in ids}
        for executor_id, node in executors:
            limit_mb = limits[executor_id]
            self.executors[executor_id] = SimExecutor(
                executor_id,
                node,
                self.loop,
                lambda msg, e=executor_id: self._report(e, msg),
                self._work_of,
                suspend_latency_ns=_ns(suspend_latency_s),
                record_ns=_ns(record_s),
                on_event=lambda event, record, e=executor_id: self._executor_event(
                    e, event, record
                ),
                task_profile=self._profile_of,
                memory_limit_bytes=None if limit_mb is None else round(limit_mb * MB),
                base_rss_bytes=BASE_RSS_BYTES,
            )
        self._truth: dict[str, _Truth] = {}
        self._timeline: list[tuple[float, str, str, str]] = []
        self._samples: list[NodeSample] = []
        self._lost: dict[str, tuple[str, ...]] = {}
        self._max_suspensions_seen = 0
        self._suspensions = 0
        self._suspend_waits_ms: list[float] = []
        self._parked_max = 0
        self._remaining = 0
        self._last_progress_ns = 0
        self._stall_after_ns = 0
        self._submits_due = 0
        self._stalled = False
        self._ran = False
        self._to_core(ClientJoined(CLIENT_ID))
        for executor_id, node in executors:
            self._to_core(
                ExecutorJoined(p.Hello(p.PROTOCOL_VERSION, executor_id, node, 1, 0, node))
            )

    # ---- public -----------------------------------------------------------------------------

    def fail_executor(self, executor_id: str, at_s: float) -> None:
        """Make `executor_id` go silent at `at_s` (no reports, no heartbeats, commands ignored)."""
        if executor_id not in self.executors:
            raise ValueError(f"no executor {executor_id!r}; there are {sorted(self.executors)}")
        self.loop.at(_ns(at_s), self._fail, executor_id)

    def preferred_nodes(self, task_id: str) -> list[str] | None:
        """The nodes (or executor ids) `task_id` prefers, or None; jobs' after `run()`."""
        nodes = self._preferences.get(task_id)
        return None if nodes is None else list(nodes)

    def run(self, jobs: Iterable[JobSpec], until_s: float | None = None) -> SimResult:
        """Simulate until every task has completed (or until `until_s`); return what happened."""
        if self._ran:
            raise RuntimeError("a SimCluster runs once: build a new one for another run")
        self._ran = True
        self._setup(list(jobs))
        until_ns = None if until_s is None else _ns(until_s)
        loop = self.loop
        # -- The loop: one action at a time, until every task has its result.
        while self._remaining and not self._stalled:
            due = loop.next_time()
            if due is None or (until_ns is not None and due > until_ns):
                break
            loop.step()
        if until_ns is not None and self._remaining and not self._stalled:
            loop.now = max(loop.now, until_ns)
        if self._event_log is not None:
            self._event_log.close()
        return self._result()

    # ---- setting up -----------------------------------------------------------------------

    def _setup(self, jobs: list[JobSpec]) -> None:
        seen: set[str] = set()
        longest_ns = 0
        for job in jobs:
            if job.job_id in seen:
                raise ValueError(f"two jobs have the id {job.job_id!r}")
            seen.add(job.job_id)
            arrival_ns = _ns(job.arrival_s)
            tasks = []
            for task_id, duration in zip(job.task_ids(), job.durations_s, strict=True):
                if job.preferred_nodes is not None:
                    self._preferences.setdefault(task_id, tuple(job.preferred_nodes))
                work_ns = _ns(duration)
                longest_ns = max(longest_ns, work_ns)
                preferred = self._preferences.get(task_id)
                self._truth[task_id] = _Truth(
                    job.job_id,
                    job.priority,
                    arrival_ns,
                    work_ns,
                    preferred,
                    0 if job.record_s is None else max(1, _ns(job.record_s)),
                    round(job.memory_mb * MB),
                    job.source,
                )
                options = [{"preferred": list(preferred)}] if preferred else []
                tasks.append([task_id, TASK_PAYLOAD, *options])
            submit = p.Submit(
                job.job_id,
                job.priority,
                job.order,
                job.max_suspensions,
                TASK_FN,
                None,
                tasks,
                arrival_ns,
                job.options(),
            )
            self.loop.at(arrival_ns + self._latency_ns, self._submit, submit)
            self._submits_due += 1
        self._remaining = len(self._truth)
        hand_over = getattr(self.core.policy, "set_preferences", None)
        if callable(hand_over):
            hand_over({tid: list(nodes) for tid, nodes in self._preferences.items()})
        # Discussion: with nothing running and nothing in flight, only the liveness check
        # can still change anything (a lost executor's tasks are requeued after
        # `lost_after_ns`). Past that, and past the longest task, the run is stuck.
        self._stall_after_ns = longest_ns + 2 * self.core.lost_after_ns + self._heartbeat_ns
        for executor_id in self.executors:
            phase = self._rng.randrange(1, self._heartbeat_ns + 1)
            self.loop.at(phase, self._heartbeat, executor_id, 0)
        self.loop.at(self._heartbeat_ns // 2, self._tick)
        for source in sorted({t.source for t in self._truth.values() if t.source is not None}):
            self.loop.at(0, self._report_lag, source)

    def _submit(self, submit: p.Submit) -> None:
        self._last_progress_ns = self.loop.now
        self._submits_due -= 1
        self._to_core(ClientRequest(CLIENT_ID, submit))

    def _work_of(self, task_id: str) -> int:
        return self._truth[task_id].work_ns

    def _profile_of(self, task_id: str) -> tuple[int, int]:
        truth = self._truth[task_id]
        return truth.record_ns, truth.memory_bytes

    # ---- periodic events ---------------------------------------------------------------------

    def _tick(self) -> None:
        self._to_core(Tick())
        # A run waiting for its next job is not stuck, however long the gap.
        quiet_ns = self.loop.now - self._last_progress_ns
        if self._remaining and not self._submits_due and quiet_ns > self._stall_after_ns:
            self._stalled = True
        self.loop.after(self._heartbeat_ns // 2, self._tick)

    def _heartbeat(self, executor_id: str, seq: int) -> None:
        executor = self.executors[executor_id]
        if executor.failed:
            return
        now = self.loop.now
        running, suspended, queued = executor.counts()
        memory = self._memory
        if callable(memory):
            mem_percent = memory(executor_id, now / 1e9)
        else:
            mem_percent = (memory or {}).get(executor_id, DEFAULT_MEM_PERCENT)
        # The host's memory use: the scripted share, and what every executor there holds.
        on_node = sum(e.memory_held() for e in self.executors.values() if e.node == executor.node)
        mem_percent = min(100.0, mem_percent + 100 * on_node / HOST_MEMORY_BYTES)
        limit = executor.memory_limit_bytes
        beat = p.Heartbeat(
            executor_id,
            executor.node,
            seq,
            now,
            1,
            running,
            suspended,
            queued,
            BASE_RSS_BYTES + executor.memory_held(),
            round(HOST_MEMORY_BYTES * (1 - mem_percent / 100)),
            float(mem_percent),
            0 if limit is None else limit,
            None if limit is None else executor.task_memory(),
            executor.task_records(),
        )
        self._report(executor_id, beat)
        self.loop.after(self._heartbeat_ns, self._heartbeat, executor_id, seq + 1)

    def _report_lag(self, source: str) -> None:
        """The stream driver of `source` reports its lag: its micro-batches' tasks submitted
        and not completed (entries not acknowledged), and the oldest one's age."""
        now = self.loop.now
        waiting = [
            t.arrival_ns
            for t in self._truth.values()
            if t.source == source and t.arrival_ns <= now and t.completed_ns is None
        ]
        age_ms = (now - min(waiting)) / 1e6 if waiting else -1.0
        lag = p.StreamLag(source, len(waiting), age_ms)
        self.loop.after(self._latency_ns, self._to_core, ClientRequest(CLIENT_ID, lag))
        self.loop.after(_ns(LAG_EVERY_S), self._report_lag, source)

    def _fail(self, executor_id: str) -> None:
        lost_ids = []
        for record in self.executors[executor_id].fail():
            if record.subtasks is None:
                lost = [(record.task_id, record.done_ns)]
            else:  # a chunk: the results it had not sent, the subtask it was in, the rest
                assert record.results is not None
                if record.span is None:
                    lost = [(item[0], item[4]["running_ns"]) for item in record.results]
                else:  # a span's unreported results are its running times, from span[1] on
                    job_id, first = record.span
                    lost = [(f"{job_id}/{first + i}", ns) for i, ns in enumerate(record.results)]
                if record.sub is not None:
                    lost.append((record.sub.task_id, record.sub.done_ns))
                lost.extend((task_id, 0) for task_id in record.subtasks.ids())
            for task_id, work_ns in lost:
                self._truth[task_id].work_lost_ns += work_ns
                lost_ids.append(task_id)
        self._lost[executor_id] = tuple(lost_ids)

    # ---- messages ----------------------------------------------------------------------------

    def _to_core(self, event: Event) -> None:
        instructions = self.core.handle(event)
        if self._event_log is not None:
            self._event_log.step(event, instructions)
        if not instructions:
            return
        deliver_at = self.loop.now + self._latency_ns
        commands = suspends = 0
        for instruction in instructions:
            if isinstance(instruction, ToExecutor) and not instruction.by_lane:
                executor = self.executors[instruction.executor_id]
                commands += 1
                suspends += isinstance(instruction.message, p.Suspend)
                self.loop.at(deliver_at, executor.receive, instruction.message)
            elif isinstance(instruction, ToClient):
                self.loop.at(deliver_at, self._to_client, instruction.message)
            # Notes are for a journal (there is none here) and the event log (written above).
        if commands:
            self._sample(suspends)

    def _sample(self, suspends: int) -> None:
        batch = dict.fromkeys(self._nodes, 0)
        stream = dict.fromkeys(self._nodes, 0)
        for executor in self.core.records.executors.values():
            task = executor.slot_task
            if executor.alive and task is not None:
                (stream if task.priority == "stream" else batch)[executor.node] += 1
        self._samples.append(NodeSample(self.loop.now / 1e9, batch, stream, suspends))

    def _report(self, executor_id: str, message: p.Message) -> None:
        self.loop.after(self._latency_ns, self._to_core, ExecutorReport(executor_id, message))

    def _to_client(self, message: p.Message) -> None:
        if not isinstance(message, p.Results):
            return
        now = self.loop.now
        for task_id, outcome, _value, _error, stats in message.items:
            truth = self._truth.get(task_id)
            if truth is None:
                continue
            truth.results += 1
            if truth.results == 1:
                truth.completed_ns = now
                truth.outcome = outcome
                truth.executor_id = stats.get("executor_id")
                truth.attempt = stats.get("attempt")
                self._remaining -= 1
                self._last_progress_ns = now

    def _executor_event(self, executor_id: str, event: str, record: ExecutorTask) -> None:
        now = self.loop.now
        self._last_progress_ns = now
        self._timeline.append((now / 1e9, executor_id, record.task_id, event))
        if event == "suspended":
            self._suspensions += 1
            self._max_suspensions_seen = max(self._max_suspensions_seen, record.suspensions)
            self._suspend_waits_ms.append(record.suspend_wait_ns / 1e6)
            parked = sum(
                r.memory_bytes
                for r in self.executors[executor_id].records.values()
                if r.state == SUSPENDED
            )
            self._parked_max = max(self._parked_max, parked)
        if record.subtasks is not None:
            # A chunk's own event: a suspension or a kill concerns the subtask it was in.
            if record.sub is None or event not in ("suspended", "killed"):
                return
            record = record.sub
        truth = self._truth[record.task_id]
        if event in ("started", "subtask_started"):
            if truth.first_started_ns is None:
                truth.first_started_ns = now
        elif event == "suspended":
            truth.suspensions += 1
        elif event == "killed":
            truth.work_lost_ns += record.done_ns

    # ---- the result ------------------------------------------------------------------------

    def _result(self) -> SimResult:
        tasks = {}
        stream_ms = []
        batch_arrival = batch_done = None
        batch_complete = True
        hits = with_preferences = 0
        for task_id, t in self._truth.items():
            executor = None if t.executor_id is None else self.executors.get(t.executor_id)
            node = None if executor is None else executor.node
            tasks[task_id] = TaskResult(
                task_id,
                t.job_id,
                t.priority,
                t.arrival_ns / 1e9,
                None if t.first_started_ns is None else t.first_started_ns / 1e9,
                None if t.completed_ns is None else t.completed_ns / 1e9,
                t.outcome,
                t.executor_id,
                node,
                t.attempt,
                t.suspensions,
                t.work_lost_ns / 1e9,
                t.preferred,
            )
            if t.priority == "stream":
                if t.completed_ns is not None:
                    stream_ms.append((t.completed_ns - t.arrival_ns) / 1e6)
            else:
                if batch_arrival is None or t.arrival_ns < batch_arrival:
                    batch_arrival = t.arrival_ns
                if t.completed_ns is None:
                    batch_complete = False
                elif batch_done is None or t.completed_ns > batch_done:
                    batch_done = t.completed_ns
            if t.preferred:
                with_preferences += 1
                hits += node in t.preferred or t.executor_id in t.preferred
        if batch_arrival is None or batch_done is None or not batch_complete:
            makespan = None
        else:
            makespan = (batch_done - batch_arrival) / 1e9

        def pct(q: float, values: list[float] = stream_ms) -> float | None:
            return percentile(values, q) if values else None

        return SimResult(
            policy=self.core.policy.name,
            policy_failures=list(self.core.policy_failures),
            tasks=tasks,
            timeline=self._timeline,
            node_samples=self._samples,
            lost_tasks=dict(self._lost),
            end_s=self.loop.now / 1e9,
            stalled=self._stalled,
            completed_once=all(t.results == 1 for t in self._truth.values()),
            stream_ms_p50=pct(50),
            stream_ms_p95=pct(95),
            stream_ms_p99=pct(99),
            batch_makespan_s=makespan,
            suspensions=self._suspensions,
            max_suspensions_per_task=self._max_suspensions_seen,
            work_lost_s=sum(t.work_lost_ns for t in self._truth.values()) / 1e9,
            locality_hit_rate=hits / with_preferences if with_preferences else None,
            steals=self.core.records.steal_count,
            tasks_failed=sum(t.outcome == "failed" for t in self._truth.values()),
            suspend_ms_p50=pct(50, self._suspend_waits_ms),
            suspend_ms_p99=pct(99, self._suspend_waits_ms),
            parked_mb_max=self._parked_max / MB,
        )

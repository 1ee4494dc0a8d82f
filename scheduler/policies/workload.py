"""What the adaptive policy (scheduler/policies/adaptive.py) measures, and the figures it
chooses a regime from.

`Workload` is updated from the policy's hooks: stream arrivals, task lengths from the
policy's own launches to their ends, the suspension budget and its spending, how long a
suspension waits (half a record: the record lengths executors report for their running
tasks in heartbeats, and for ended ones with their end, so known before any suspension),
tasks' memory and executors' limits. `figures` turns them into a `Figures`, at most once
per scan (SAMPLE_NS). Nothing here decides: the policy does, from the figures.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from tidal.scheduler.decisions import Decision, Kill, Launch, Suspend
from tidal.scheduler.policies.lb import MEMORY_PRESSURE_THRESHOLD
from tidal.scheduler.views import ClusterView, ExecutorView, TaskState, TaskView

__all__ = ["Decayed", "Figures", "Workload"]

# Discussion: the prior batch task length is the benchmark workloads' middle (0.2-1 s
# tasks); it matters only until the first batch task ends. A reserved executor is kept at
# most half busy with stream work: above that, stream tasks queue behind each other on it
# (micro-batches of 2-4 tasks arrive at once).
BATCH_TASK_PRIOR_S = 0.5
RESERVE_LOAD = 0.5
# Discussion: the scan of every executor (streams running, the budget, the oldest batch
# task, running and parked tasks' records) and the figures made from it run at most this
# often: at 1,000 executors they cost ~1 ms (measured), a tenth of a loop consulted without
# pause. Launches, ends, arrivals and suspensions are counted as they happen.
SAMPLE_NS = 10_000_000
# Task sizes are learned from heartbeats, which catch few stream tasks (they last
# milliseconds): the largest seen so far is seldom the largest, so estimates get this margin.
MEMORY_MARGIN = 1.5


@dataclass(slots=True)
class Decayed:
    """An exponentially decayed sum over time constant `tau_ns`: `add` amounts as they come;
    `value` is the sum now, `per_s` the rate."""

    tau_ns: int
    total: float = 0.0
    at_ns: int | None = None  # when `total` was last decayed
    since_ns: int | None = None  # when the first amount came
    first: float = 0.0  # and how much it was

    def add(self, now: int, amount: float) -> None:
        if self.since_ns is None:
            self.since_ns, self.first = now, amount
        self._decay(now)
        self.total += amount

    def value(self, now: int) -> float:
        """The decayed sum as of `now`."""
        self._decay(now)
        return self.total

    def per_s(self, now: int) -> float:
        """The rate: what came after the first amount, over the time since it came (a rate
        needs two events; a history shorter than `tau_ns` is corrected for)."""
        if self.since_ns is None or now <= self.since_ns:
            return 0.0
        self._decay(now)
        age = now - self.since_ns
        later = self.total - self.first * math.exp(-age / self.tau_ns)
        covered = 1 - math.exp(-age / self.tau_ns)
        return max(0.0, later) / (self.tau_ns / 1e9) / covered

    def _decay(self, now: int) -> None:
        if self.at_ns is None:
            self.at_ns = now
        elif now > self.at_ns:
            self.total *= math.exp(-(now - self.at_ns) / self.tau_ns)
            self.at_ns = now


@dataclass(frozen=True, slots=True)
class Figures:
    """What the regime is chosen from; `Switch.figures` holds them as a dict."""

    stream_per_s: float  # stream tasks submitted per second
    stream_task_s: float  # mean, launch to end, of those launched into a free slot (0: none)
    stream_load: float  # executors busy with stream tasks: rate x length (Little's law)
    stream_wait_s: float  # mean wait of a stream task at the scheduler for a slot
    batch_task_s: float  # mean, launch to end (at least the oldest running one's time)
    oldest_batch_s: float  # how long the oldest running batch task has run
    executors: int
    cap: int
    budget_left: int  # suspensions the running batch tasks may still take
    capped: int  # executors whose batch task is at its cap
    spend_per_s: float  # suspensions decided per second
    suspend_s: float  # a suspension's wait for a record boundary: half a record
    suspend_known: bool  # some batch task's records were timed (reported, or by a suspension)
    cannot_park: int  # executors where a parked batch task and a stream task may not fit
    pressured: int  # executors whose host is over LB's memory-pressure threshold
    demand: float  # R, suspension demand over supply (see the module docstring)
    batch_measured: bool  # a batch task has ended, so `batch_task_s` is more than an age
    reserve: int  # k, the executors a reserve would keep for the stream load
    micro_batch: int  # the most stream tasks submitted at once

    def as_dict(self) -> dict[str, Any]:
        return {name: _rounded(getattr(self, name)) for name in self.__slots__}

    @property
    def budget_s(self) -> float:
        """How long the running batch tasks' suspensions last at the rate they are spent."""
        return self.budget_left / self.spend_per_s if self.spend_per_s > 0 else math.inf

    @property
    def quick(self) -> bool:
        """Whether a suspension is known to free a slot sooner than a reserved executor
        would (within a stream task's time)."""
        return self.suspend_known and 0 < self.suspend_s <= self.stream_task_s

    @property
    def slow(self) -> bool:
        """Whether a suspension is known to take longer than a stream task."""
        return self.suspend_known and self.suspend_s > self.stream_task_s > 0


def _rounded(value: Any) -> Any:
    return round(value, 4) if isinstance(value, float) else value


@dataclass
class Workload:
    """The measurements behind the adaptive policy's choice, updated from its hooks.

    Task lengths come from the policy's own launches: a task launched at t whose slot frees
    (or which is seen done) at t' took t' - t, its wait at the executor and its suspended
    time included. A stream task's length is taken from those launched into a free slot;
    one launched into a preempted slot also waited for the suspension. A suspension waits
    for the running task's next record boundary, half a record on average. A record's
    length is what executors report (`TaskView.record_ns`: a task's running time over the
    records it consumed) for the running batch tasks, from their heartbeats, so it is known
    before any suspension; failing that (no running one has reported a record), the mean
    over the batch tasks that ended or were suspended, from what they reported then (from
    an executor older than protocol 11, their time since launch over their records)."""

    window_ns: int
    arrivals: Decayed = field(init=False)  # stream tasks submitted
    spends: Decayed = field(init=False)  # suspensions decided
    # Seconds and counts of what ended: stream tasks launched into a free slot, into a
    # preempted slot, batch tasks; and seconds and records of timed batch tasks.
    free_s: Decayed = field(init=False)
    free_n: Decayed = field(init=False)
    preempting_s: Decayed = field(init=False)
    preempting_n: Decayed = field(init=False)
    batch_s: Decayed = field(init=False)
    batch_n: Decayed = field(init=False)
    records_s: Decayed = field(init=False)
    records_n: Decayed = field(init=False)
    # Seconds stream tasks waited at the scheduler for a slot (submitted -> launched).
    waited_s: Decayed = field(init=False)
    waited_n: Decayed = field(init=False)
    # Memory, from heartbeats: the largest a batch and a stream task was seen to hold, and
    # whether any was seen at all; an executor's rss without its tasks (the least seen);
    # the smallest memory limit an executor reported.
    batch_memory: int = 0
    stream_memory: int = 0
    batch_sized: bool = False
    stream_sized: bool = False
    base_rss: int | None = None
    limit: int | None = None
    # Tasks launched and not seen to end: task id -> (executor id, priority, launched at,
    # whether it preempted a batch task there); the batch tasks whose records were timed.
    launched: dict[str, tuple[str, str, int, bool]] = field(default_factory=dict)
    on_executor: dict[str, set[str]] = field(default_factory=dict)  # executor id -> task ids
    timed: set[str] = field(default_factory=set)
    # The last scan of the executors and what it found.
    scanned_ns: int | None = None
    streaming: int = 0  # executors running a stream task
    oldest_batch_ns: int = 0
    budget_left: int = 0
    capped: int = 0
    record_s: float = 0.0  # the running batch tasks' mean record, as reported (0.0: none)
    micro_batch: int = 1  # the most stream tasks submitted at once (a micro-batch's)
    last_figures: Figures | None = None
    _figured_ns: int | None = None

    def __post_init__(self) -> None:
        for name in (
            "arrivals",
            "spends",
            "free_s",
            "free_n",
            "preempting_s",
            "preempting_n",
            "batch_s",
            "batch_n",
            "records_s",
            "records_n",
            "waited_s",
            "waited_n",
        ):
            setattr(self, name, Decayed(self.window_ns))

    def stream_submitted(self, now: int, count: int) -> None:
        self.arrivals.add(now, count)
        if count > self.micro_batch:  # seldom: taken at once, as the reserve may grow for it
            self.micro_batch = count
            self._figured_ns = None

    def decided(self, view: ClusterView, decisions: list[Decision]) -> None:
        """Note the launches and suspensions the current policy decided."""
        now = view.now
        preempted = set()
        for decision in decisions:
            if isinstance(decision, Suspend | Kill):
                task = view.task(decision.task_id)
                if task is not None and task.executor_id is not None:
                    preempted.add(task.executor_id)
            elif isinstance(decision, Launch):
                task = view.task(decision.task_id)
                if task is not None:
                    if task.priority == "stream":
                        self.waited_s.add(now, max(0, now - task.submitted_at) / 1e9)
                        self.waited_n.add(now, 1)
                    where = decision.executor_id
                    self.on_executor.setdefault(where, set()).add(decision.task_id)
                    self.launched[decision.task_id] = (
                        where,
                        task.priority,
                        now,
                        task.priority == "stream" and where in preempted,
                    )
        if preempted:
            self.spends.add(now, len(preempted))

    def slot_freed(self, view: ClusterView, executor_id: str) -> None:
        """A slot freed: a task launched there may have ended."""
        for task_id in list(self.on_executor.get(executor_id, ())):
            self._ended(view, task_id)

    def sweep(self, view: ClusterView) -> None:
        """Look for ends no freed slot told of (a lost executor's tasks): at ticks."""
        for task_id in list(self.launched):
            self._ended(view, task_id)

    def _ended(self, view: ClusterView, task_id: str) -> None:
        task = view.task(task_id)
        if task is None or task.state is TaskState.DONE:
            _, priority, launched_ns, preempting = self._forget(task_id)
            now = view.now
            took = (now - launched_ns) / 1e9
            if priority == "batch":
                seconds, count = self.batch_s, self.batch_n
                if task is not None:
                    self._time_records(now, task, launched_ns)
                self.timed.discard(task_id)
            elif preempting:
                seconds, count = self.preempting_s, self.preempting_n
            else:
                seconds, count = self.free_s, self.free_n
            seconds.add(now, took)
            count.add(now, 1)
        elif task.state in (TaskState.PENDING, TaskState.WAITING):
            self._forget(task_id)  # requeued: its next launch starts afresh
            self.timed.discard(task_id)

    def _forget(self, task_id: str) -> tuple[str, str, int, bool]:
        launch = self.launched.pop(task_id)
        there = self.on_executor.get(launch[0])
        if there is not None:
            there.discard(task_id)
            if not there:
                del self.on_executor[launch[0]]
        return launch

    def running_s(self, task_id: str, now: int) -> float | None:
        """Seconds since the task was launched (at most what it has run), if it was."""
        launch = self.launched.get(task_id)
        return None if launch is None else (now - launch[2]) / 1e9

    def preempting(self, task_id: str) -> bool:
        """Whether a stream task was launched into the slot of a batch task it preempted."""
        launch = self.launched.get(task_id)
        return launch is not None and launch[3]

    def _time_records(self, now: int, task: TaskView, launched_ns: int) -> None:
        """A batch task's records are known (it was suspended, or it ended): time them once,
        by its executor's report if there is one, else by its time since launch."""
        if task.records >= 1 and task.task_id not in self.timed:
            self.timed.add(task.task_id)
            reported = task.record_ns
            took_ns = now - launched_ns if reported is None else reported * task.records
            self.records_s.add(now, took_ns / 1e9)
            self.records_n.add(now, task.records)

    def reported(self, executor: ExecutorView) -> None:
        """A heartbeat came: learn what tasks hold, what the executor holds without, and
        (if none was known) how long its batch task's records take."""
        running = executor.slot_task
        if not self.record_s and running is not None and running.priority == "batch":
            record_ns = running.record_ns
            if record_ns is not None:
                # Discussion: the scan takes every running task's records, but at most every
                # SAMPLE_NS; the first that is known is taken at once, as it may end a
                # reserve kept for want of it (the figures are made again for it).
                self.record_s = record_ns / 1e9
                self._figured_ns = None
        tasks = [t for t in (running, *executor.suspended) if t is not None]
        sized = executor.memory_limit_bytes is not None  # estimates come with a limit only
        for task in tasks:
            if task.priority == "stream":
                self.stream_memory = max(self.stream_memory, task.memory_bytes)
                self.stream_sized |= sized
            else:
                self.batch_memory = max(self.batch_memory, task.memory_bytes)
                self.batch_sized |= sized
        rss, limit = executor.rss_bytes, executor.memory_limit_bytes
        if rss is not None and limit is not None:
            self.limit = limit if self.limit is None else min(self.limit, limit)
            base = max(0, rss - sum(t.memory_bytes for t in tasks))
            self.base_rss = base if self.base_rss is None else min(self.base_rss, base)

    def observe(self, view: ClusterView) -> None:
        """Scan the executors (at most every SAMPLE_NS): stream tasks running, the batch
        tasks' suspension budget and capped ones, the oldest batch task, the running batch
        tasks' reported records and the parked ones'."""
        now = view.now
        if self.scanned_ns is not None and now - self.scanned_ns < SAMPLE_NS:
            return
        streaming, budget, capped, oldest = 0, 0, 0, 0
        records_ns = []
        for executor in view.executors():
            for parked in executor.suspended:
                launch = self.launched.get(parked.task_id)
                if launch is not None:
                    self._time_records(now, parked, launch[2])
            task = executor.slot_task
            if task is None:
                continue
            if task.priority == "stream":
                streaming += 1
                continue
            left = max(0, task.max_suspensions - task.suspensions)
            budget += left
            capped += left == 0
            if task.record_ns is not None:
                records_ns.append(task.record_ns)
            launch = self.launched.get(task.task_id)
            if launch is not None:
                oldest = max(oldest, now - launch[2])
        self.scanned_ns, self.oldest_batch_ns = now, oldest
        self.record_s = sum(records_ns) / len(records_ns) / 1e9 if records_ns else 0.0
        self.streaming, self.budget_left, self.capped = streaming, budget, capped

    @staticmethod
    def _mean(seconds: Decayed, count: Decayed, now: int) -> float:
        n = count.value(now)
        return seconds.value(now) / n if n > 0 else 0.0

    def can_park(self, executor: ExecutorView) -> bool:
        """Whether suspending the executor's batch task (an idle one's: a batch task of
        the largest size seen), then running a stream task in its slot, keeps it under its
        memory limit (always, without one). Sizes not reported yet are taken as the
        largest seen: an executor not heard from since it joined has the smallest limit
        another reported; a task not yet in a heartbeat, the largest batch task seen; a
        stream task, the largest stream task seen (both with MEMORY_MARGIN), or before any
        was seen, as much as the largest batch task. Before any batch task's size was
        reported, no executor with a limit can park: what it would cost is not known."""
        limit = executor.memory_limit_bytes or self.limit
        if limit is None:
            return True
        task = executor.slot_task
        if task is not None and task.priority == "stream":
            task = None  # what matters is the batch task that will run here
        own = 0 if task is None else task.memory_bytes
        if not self.batch_sized and not own:
            return False
        parked = own or round(self.batch_memory * MEMORY_MARGIN)
        if self.stream_sized:
            stream = round(self.stream_memory * MEMORY_MARGIN)
        else:
            stream = max(self.batch_memory, parked)
        held = sum(t.memory_bytes for t in executor.suspended) + executor.kept_bytes
        return (self.base_rss or 0) + parked + stream + held <= limit

    def figures(self, view: ClusterView) -> Figures:
        """The figures as of the last scan (made once per scan)."""
        last = self.last_figures
        if last is None or self._figured_ns != self.scanned_ns:
            last = self.last_figures = self._figures(view)
            self._figured_ns = self.scanned_ns
        return last

    def _figures(self, view: ClusterView) -> Figures:
        now = view.now
        executors = view.executors()
        count = max(1, len(executors))
        cap = max(1, view.max_suspensions)
        stream_per_s = self.arrivals.per_s(now)
        # The tasks a suspension would stop now are the running ones: their records first.
        suspend_s = (self.record_s or self._mean(self.records_s, self.records_n, now)) / 2
        stream_task_s = self._mean(self.free_s, self.free_n, now)
        if not stream_task_s:  # only preempting ones so far: less what they waited
            preempting = self._mean(self.preempting_s, self.preempting_n, now)
            stream_task_s = max(0.0, preempting - suspend_s)
        oldest = self.oldest_batch_ns / 1e9
        if self.batch_n.total > 0:
            batch_task_s = max(self._mean(self.batch_s, self.batch_n, now), oldest)
        else:
            batch_task_s = max(BATCH_TASK_PRIOR_S, oldest)
        stream_load = stream_per_s * stream_task_s
        return Figures(
            stream_per_s=stream_per_s,
            stream_task_s=stream_task_s,
            stream_load=stream_load,
            stream_wait_s=self._mean(self.waited_s, self.waited_n, now),
            batch_task_s=batch_task_s,
            oldest_batch_s=oldest,
            executors=len(executors),
            cap=cap,
            budget_left=self.budget_left,
            capped=self.capped,
            spend_per_s=self.spends.per_s(now),
            suspend_s=suspend_s,
            suspend_known=self.record_s > 0 or self.records_n.total > 0,
            cannot_park=sum(not self.can_park(e) for e in executors),
            pressured=sum(e.memory_pressure >= MEMORY_PRESSURE_THRESHOLD for e in executors),
            demand=stream_per_s * batch_task_s / (cap * count),
            batch_measured=self.batch_n.total > 0,
            reserve=min(max(1, math.ceil(stream_load / RESERVE_LOAD)), max(1, count - 1)),
            micro_batch=self.micro_batch,
        )

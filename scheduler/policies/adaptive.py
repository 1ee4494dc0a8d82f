"""ADAPTIVE: choose a regime at run time from what the workload is measured to be.

No fixed policy wins every mix. LB suspends batch tasks for stream tasks, which is best while
the suspensions last; but each batch task may be suspended only `max_suspensions` times, and
when stream tasks come faster than batch tasks bring fresh suspensions, every running batch
task reaches its cap and stream work waits for one to end (up to its whole length). A
suspension also waits for the running task's next record boundary (long for coarse records),
and a parked task keeps its memory (too much beside a stream task, under a memory limit). A
fixed reserve of executors (STATIC) has none of these problems, but idles when no stream
work comes. So this policy measures, and picks among four regimes:

- `lb` while stream work is about (seen within `window_s`, pending or running, or a stream
  source's driver reports a backlog) and suspension covers it;
- `reserve`, LB that keeps `k` executors free of batch work (`ReservingLb`), while stream
  work is about and suspension does not cover it (`_short_of_suspensions`): the demand
  for suspensions exceeds the supply (R >= R_ENTER, below); stream tasks wait for a slot
  longer than they run; a suspension is known to take longer than a stream task; parking
  a batch task beside a stream task may exceed an executor's memory limit; most hosts are
  short of memory; or, where the budget is tight (R >= R_LEAVE, or before any batch task
  has ended), half the executors hold capped batch tasks or the suspensions left will
  run out before the running batch tasks do;
- `fair` when two or more batch jobs compete for slots and no stream work is about;
- `fifo` otherwise (one batch job: nothing to balance).

What it measures (`Workload`): the stream arrival rate; stream and batch task lengths, from
its own launches to their ends; the executor count and the suspension cap; the budget left
in the running batch tasks and the rate it is spent; the record length, hence what a
suspension waits; tasks' memory and executors' limits, from heartbeats; hosts' pressure.

    R = stream tasks/s x batch task s / (cap x executors)

is the demand for suspensions over their supply: each batch task brings `cap` suspensions
over its length, and with batch work on every executor each stream task needs one. Before
any batch task has ended, the batch task length is BATCH_TASK_PRIOR_S (or the oldest
running one's time, if longer). The reserve is `k = ceil(stream load / RESERVE_LOAD)`
executors, at least one, at most all but one (the stream load is rate x length).

Anti-flapping: a switch into `lb` or `reserve` from fifo or fair, into `reserve`, or to a
larger reserve, is made at once (stream work must not wait); leaving `reserve` needs R
down to R_LEAVE and every other reason gone or eased (hysteresis), and every switch but
the urgent ones waits `min_dwell_s` since the last. Every switch (a change of `k` too) is
recorded in `switches` with the reason and the figures behind it (`Figures`), and logged.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from tidal.scheduler.decisions import Decision, Kill, Launch, Resume, Suspend
from tidal.scheduler.policies.base import Policy
from tidal.scheduler.policies.fair import FairPolicy
from tidal.scheduler.policies.fifo import FifoPolicy
from tidal.scheduler.policies.lb import MEMORY_PRESSURE_THRESHOLD, LbPolicy
from tidal.scheduler.views import ClusterView, ExecutorView, TaskState, TaskView, resume_order

log = logging.getLogger("tidal.scheduler")

# Discussion: the thresholds. At R = 1 the supply of suspensions just meets the demand when
# batch work fills the cluster; it seldom does all the time (stream tasks that find a free
# slot need no suspension), so LB still copes a little above 1 (the "mixed" mix runs near
# R = 1 and LB serves it well), and a reserve costs batch work a k-th of the cluster. So:
# a reserve from R = 1.5, back to LB below R = 1, and between them the regime stays. The
# prior batch task length is the benchmark workloads' middle (0.2-1 s tasks); it matters only
# until the first batch task ends. A reserved executor is kept at most half busy with
# stream work: above that, stream tasks queue behind each other on it (micro-batches of
# 2-4 tasks arrive at once). Half the executors capped is the early sign of a budget spent.
R_ENTER = 1.5
R_LEAVE = 1.0
BATCH_TASK_PRIOR_S = 0.5
RESERVE_LOAD = 0.5
CAPPED_ENTER = 0.5
# A task parked on an executor kept as the reserve is killed (requeued) at a tick, rather
# than left for the core to resume, if it has run at most this many mean batch task
# lengths (see ReservingLb._resume_on).
KILL_FRACTION = 1.0
# Discussion: the scan of every executor (streams running, the budget, the oldest batch
# task, parked tasks' records) and the figures made from it run at most this often: at
# 1,000 executors they cost ~1 ms (measured), a tenth of a loop consulted without pause.
# Launches, ends, arrivals and suspensions are counted as they happen.
SAMPLE_NS = 10_000_000
# Task sizes are learned from heartbeats, which catch few stream tasks (they last
# milliseconds): the largest seen so far is seldom the largest, so estimates get this margin.
MEMORY_MARGIN = 1.5


@dataclass(frozen=True, slots=True)
class Switch:
    """One change of regime: when, from and to what, why, and the figures behind it."""

    at_ns: int
    from_policy: str
    to_policy: str
    reason: str
    figures: dict[str, Any] = field(default_factory=dict)


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
    suspend_known: bool  # some batch task's records were timed
    cannot_park: int  # executors where a parked batch task and a stream task may not fit
    pressured: int  # executors whose host is over LB's memory-pressure threshold
    demand: float  # R, suspension demand over supply (see the module docstring)
    batch_measured: bool  # a batch task has ended, so `batch_task_s` is more than an age
    reserve: int  # k, the executors a reserve would keep

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
    for the running task's next record boundary, half a record on average: records are
    measured as a batch task's time since its launch over the records it reports having
    done (at its first suspension, or its end)."""

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
        """A batch task's records are known (it was suspended, or it ended): time them once."""
        if task.records >= 1 and task.task_id not in self.timed:
            self.timed.add(task.task_id)
            self.records_s.add(now, (now - launched_ns) / 1e9)
            self.records_n.add(now, task.records)

    def memory_reported(self, executor: ExecutorView) -> None:
        """A heartbeat came: learn what tasks hold, and what the executor holds without."""
        tasks = [t for t in (executor.slot_task, *executor.suspended) if t is not None]
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
        tasks' suspension budget and capped ones, the oldest batch task, parked tasks'
        records."""
        now = view.now
        if self.scanned_ns is not None and now - self.scanned_ns < SAMPLE_NS:
            return
        streaming, budget, capped, oldest = 0, 0, 0, 0
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
            launch = self.launched.get(task.task_id)
            if launch is not None:
                oldest = max(oldest, now - launch[2])
        self.scanned_ns, self.oldest_batch_ns = now, oldest
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
        suspend_s = self._mean(self.records_s, self.records_n, now) / 2
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
            suspend_known=self.records_n.total > 0,
            cannot_park=sum(not self.can_park(e) for e in executors),
            pressured=sum(e.memory_pressure >= MEMORY_PRESSURE_THRESHOLD for e in executors),
            demand=stream_per_s * batch_task_s / (cap * count),
            batch_measured=self.batch_n.total > 0,
            reserve=min(max(1, math.ceil(stream_load / RESERVE_LOAD)), max(1, count - 1)),
        )


class ReservingLb(LbPolicy):
    """LB that keeps `stream_reserve` executors free of batch work for stream tasks (none:
    LB's placement), and suspends only where that is quick and affordable.

    An executor serves the reserve while it holds no batch task (idle, or running a stream
    task that did not preempt one) and none parked. The reserve is made of executors as
    they free up: no new batch work goes to them, and a task parked on one stays parked
    when its slot frees unless the reserve is met elsewhere (it resumes when it is). The
    core resumes a task parked on an idle executor at its tick (its liveness rule), so at
    a tick a held task is killed and requeued if it has run little (`_cheap_to_redo`), and
    else left to the core. With a reserve, it suspends for stream tasks only where that is
    known to be quick (`suspend_quickly`: a suspension takes less time than a stream task,
    which is how long a reserved executor takes to free) or no executor serves the reserve
    (then any suspension beats waiting for a batch task to end); and, always, only where it
    is affordable (the executor stays under its memory limit with the stream task beside
    the parked one, `Workload.can_park`)."""

    name = "reserve"

    def __init__(self, workload: Workload, stream_reserve: int = 0) -> None:
        super().__init__()
        self.stream_reserve = stream_reserve
        self.workload = workload
        self.suspend_quickly = True
        self._view: ClusterView | None = None
        self._held: list[str] = []  # executors kept as reserve with a task parked there
        self._spare_now: int | None = None  # executors serving the reserve, once counted
        self._ticking = False  # consulted at a tick (after which the core resumes parked tasks)

    def assign(self, view: ClusterView) -> Iterator[Decision]:
        self._view, self._held, self._spare_now = view, [], None
        return super().assign(view)

    def tick(self, view: ClusterView) -> Iterator[Decision]:
        self._ticking = True
        try:
            yield from self.assign(view)
        finally:
            self._ticking = False

    def _preemptible(self, task: TaskView) -> bool:
        view = self._view
        if not task.suspendable or view is None:
            return False
        if self.stream_reserve and not self.suspend_quickly:
            # With a reserve, suspend only where that is known to be quicker than waiting
            # for a reserved executor; but any suspension beats waiting for a batch task
            # to end: suspend anyway when no executor serves the reserve now.
            if self._spare_now is None:
                self._spare_now = self._spare(view.executors())
            if self._spare_now:
                return False
        executor = view.executor(task.executor_id or "")
        return executor is not None and self.workload.can_park(executor)

    def _spare(self, executors: list[ExecutorView]) -> int:
        """Executors serving the reserve now (see `_serves`)."""
        return sum(self._serves(e) for e in executors)

    def _serves(self, executor: ExecutorView) -> bool:
        """Whether an executor serves the reserve: no batch task in its slot, none parked,
        and not running a stream task that preempted one (its batch task may still be on
        its way to parking: the view lists parked tasks once they are)."""
        task = executor.slot_task
        if executor.suspended or (task is not None and task.priority != "stream"):
            return False
        return task is None or not self.workload.preempting(task.task_id)

    def _resume_on(self, free_slots: list[ExecutorView]) -> Generator[Decision, None, set[str]]:
        """Resume what is parked on free slots, but keep as many parked as the reserve
        lacks: those executors are the reserve until it is met elsewhere."""
        if not self.stream_reserve or self._view is None:
            return (yield from super()._resume_on(free_slots))
        lacking = self.stream_reserve - self._spare(self._view.executors())
        resumed = set()
        for executor in reversed(free_slots):  # the last to join are held first
            suspended = executor.suspended
            if not suspended:
                continue
            if lacking > 0:
                lacking -= 1
                self._held.append(executor.executor_id)
                parked = min(suspended, key=resume_order)
                if self._ticking and self._cheap_to_redo(parked):
                    # Discussion: after a tick the core resumes a task parked on an idle
                    # executor (its liveness rule: `SchedulerCore._resume_parked`), which
                    # would end this reserve. A task that has done little loses little by
                    # running again from the start elsewhere: kill it (requeued), and the
                    # executor stays free for stream work.
                    yield Kill(parked.task_id, requeue=True)
                continue
            resumed.add(executor.executor_id)
            yield Resume(min(suspended, key=resume_order).task_id)
        return resumed

    def _cheap_to_redo(self, task: TaskView) -> bool:
        """Whether a parked batch task has run at most KILL_FRACTION of a batch task's
        mean length (measured from its launch), and may be killed (the kill cap)."""
        if task.kills >= task.max_suspensions or self._view is None:
            return False
        ran_s = self.workload.running_s(task.task_id, self._view.now)
        figures = self.workload.last_figures
        return (
            ran_s is not None
            and figures is not None
            and ran_s <= KILL_FRACTION * figures.batch_task_s
        )

    def _reserve_for_lag(self, view: ClusterView, free: dict[str, int]) -> None:
        """LB's hook for the executors kept out of a batch fill (LB keeps one while a
        stream source lags): with no reserve, LB's; with one, the reserve: the executors
        held with a task parked, then idle ones (the last to join first), beyond those
        serving it already; one executor always stays open to batch work."""
        if not self.stream_reserve:
            super()._reserve_for_lag(view, free)
            return
        executors = view.executors()
        for executor_id in self._held:
            free[executor_id] = 0
        wanted = self.stream_reserve - len(self._held)
        wanted -= sum(1 for e in executors if e.slot_task is not None and self._serves(e))
        idle = [
            e.executor_id
            for e in executors
            if e.slot_free and not e.suspended and free.get(e.executor_id, 0) > 0
        ]
        for executor_id in idle[::-1][: max(0, min(wanted, len(executors) - 1))]:
            free[executor_id] = 0


class AdaptivePolicy(Policy):
    """Pick lb, reserve, fair or fifo from the measured workload (see the module docstring)."""

    name = "adaptive"

    @property
    def preempts(self) -> bool:  # as the policy it currently uses
        return self.policies[self.current].preempts

    def __init__(self, window_s: float = 2.0, min_dwell_s: float = 1.0) -> None:
        self.window_ns = int(window_s * 1e9)
        self.min_dwell_ns = int(min_dwell_s * 1e9)
        self.workload = Workload(self.window_ns)
        # One LB for both regimes: `lb` is it with no reserve, `reserve` with one.
        self.reserving = ReservingLb(self.workload)
        self.policies: dict[str, Policy] = {
            "lb": self.reserving,
            "reserve": self.reserving,
            "fair": FairPolicy(),
            "fifo": FifoPolicy(),
        }
        self.current = "fifo"
        self.switches: list[Switch] = []
        self._last_stream_ns: int | None = None
        self._last_switch_ns: int | None = None

    # Every hook: measure, maybe switch, then ask the current policy (and note its suspensions).

    def tasks_submitted(self, view: ClusterView, tasks: Sequence[TaskView]) -> Iterable[Decision]:
        streams = sum(t.priority == "stream" for t in tasks)
        if streams:
            self._last_stream_ns = view.now
            self.workload.stream_submitted(view.now, streams)
        return self._decided(view, self._active(view).tasks_submitted(view, tasks))

    def slot_freed(self, view: ClusterView, executor: ExecutorView) -> Iterable[Decision]:
        self.workload.slot_freed(view, executor.executor_id)
        return self._decided(view, self._active(view).slot_freed(view, executor))

    def metrics_updated(self, view: ClusterView, executor: ExecutorView) -> Iterable[Decision]:
        self.workload.memory_reported(executor)
        return self._decided(view, self._active(view).metrics_updated(view, executor))

    def tick(self, view: ClusterView) -> Iterable[Decision]:
        self.workload.sweep(view)
        return self._decided(view, self._active(view).tick(view))

    def _decided(self, view: ClusterView, decisions: Iterable[Decision]) -> list[Decision]:
        out = list(decisions)
        self.workload.decided(view, out)
        return out

    def _active(self, view: ClusterView) -> Policy:
        self.workload.observe(view)
        wanted, reason, figures = self._choose(view)
        dwelt = self._last_switch_ns is None or view.now - self._last_switch_ns >= self.min_dwell_ns
        reserve = figures.reserve if wanted == "reserve" else 0
        changed = wanted != self.current or (
            wanted == "reserve" and reserve != self.reserving.stream_reserve
        )
        urgent = (wanted in ("lb", "reserve") and self.current in ("fair", "fifo")) or (
            wanted == "reserve"
            and (self.current != "reserve" or reserve > self.reserving.stream_reserve)
        )
        if changed and (urgent or dwelt):
            self._switch(view.now, wanted, reason, figures, reserve)
        return self.policies[self.current]

    def _switch(self, now: int, wanted: str, reason: str, figures: Figures, reserve: int) -> None:
        to = wanted if wanted != "reserve" else f"reserve of {reserve}"
        was = self.current
        if was == "reserve":
            was = f"reserve of {self.reserving.stream_reserve}"
        self.switches.append(Switch(now, self.current, wanted, reason, figures.as_dict()))
        log.info("adaptive policy: %s -> %s (%s)", was, to, reason)
        self.current = wanted
        self.reserving.stream_reserve = reserve if wanted == "reserve" else 0
        self.reserving.suspend_quickly = figures.quick
        self._last_switch_ns = now

    def _choose(self, view: ClusterView) -> tuple[str, str, Figures]:
        f = self.workload.figures(view)
        lag = view.stream_lag()
        recent = (
            self._last_stream_ns is not None and view.now - self._last_stream_ns < self.window_ns
        )
        if lag.pending and lag.sources:
            # A stream source is behind (its driver says so): stream work is about, even
            # between its micro-batches; LB also keeps a slot for it when the lag is old.
            why = f"stream sources are {lag.pending} entries behind"
        elif view.pending_count("stream") or self.workload.streaming or recent:
            why = f"stream work seen in the last {self.window_ns / 1e9:g} s"
        elif view.any_suspended():
            # fifo and fair never resume: leaving lb now would strand the suspended tasks.
            return "lb", "suspended tasks are waiting to resume", f
        else:
            jobs = {t.job_id for t in view.pending("batch")}
            if len(jobs) >= 2:
                return "fair", f"{len(jobs)} batch jobs compete for slots, no stream work", f
            return "fifo", "batch work only, nothing to balance", f
        short = self._short_of_suspensions(f)
        self.reserving.suspend_quickly = f.quick
        if short:
            return "reserve", f"{why}; {short}: keep {f.reserve} executors for it", f
        return "lb", f"{why}: suspension covers it (R={f.demand:.2f})", f

    def _short_of_suspensions(self, f: Figures) -> str:
        """Why suspension will not serve the stream work ('' if it will)."""
        reasons = []
        staying = self.current == "reserve"
        if f.demand >= (R_LEAVE if staying else R_ENTER):
            reasons.append(
                f"{f.stream_per_s:.0f} stream tasks/s against {f.cap} suspensions per "
                f"{f.batch_task_s:.2f} s batch task on {f.executors} executors (R={f.demand:.2f})"
            )
        if f.stream_task_s and f.stream_wait_s > f.stream_task_s * (0.5 if staying else 1.0):
            reasons.append(
                f"stream tasks wait {f.stream_wait_s * 1e3:.1f} ms for a slot, longer than "
                f"one runs ({f.stream_task_s * 1e3:.1f} ms)"
            )
        # The budget's early warnings count only where it is tight (R at least R_LEAVE), or
        # where R rests on the prior (no batch task has ended yet).
        tight = f.demand >= R_LEAVE or not f.batch_measured
        if tight and f.capped and (staying or f.capped >= CAPPED_ENTER * f.executors):
            reasons.append(f"{f.capped} of {f.executors} executors hold capped batch tasks")
        if tight and f.budget_s < f.oldest_batch_s:
            reasons.append(
                f"{f.budget_left} suspensions left, spent at {f.spend_per_s:.0f}/s, run out "
                f"before the batch tasks do ({f.oldest_batch_s:.2f} s in)"
            )
        if f.slow:
            reasons.append(
                f"a suspension takes {f.suspend_s * 1e3:.1f} ms, a stream task "
                f"{f.stream_task_s * 1e3:.1f} ms"
            )
        if f.cannot_park:
            reasons.append(f"{f.cannot_park} executors cannot park a batch task (memory limit)")
        if f.pressured * 2 > f.executors:
            reasons.append(f"{f.pressured} of {f.executors} hosts are short of memory")
        return "; ".join(reasons)

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
  source's driver reports, a backlog or none: a live source) and suspension covers it;
- `reserve`, LB that keeps `k` executors free of batch work (`ReservingLb`), while stream
  work is about and a suspension's cost is not known yet (`_not_known`: no batch task has
  reported a record), or suspension does not cover it (`_short_of_suspensions`): the demand
  for suspensions exceeds the supply (R >= R_ENTER, below); stream tasks wait for a slot
  longer than they run; a suspension is known to take longer than a stream task; parking
  a batch task beside a stream task may exceed an executor's memory limit; most hosts are
  short of memory; or, where the budget is tight (R >= R_LEAVE, or before any batch task
  has ended), half the executors hold capped batch tasks or the suspensions left will
  run out before the running batch tasks do;
- `fair` when two or more batch jobs compete for slots and no stream work is about;
- `fifo` otherwise (one batch job: nothing to balance).

What it measures (`Workload`, scheduler/policies/workload.py): the stream arrival rate;
stream and batch task lengths, from its own launches to their ends; the executor count and
the suspension cap; the budget left in the running batch tasks and the rate it is spent;
the record length, hence what a suspension waits, as executors report it for their running
tasks in every heartbeat (`TaskView.record_ns`), so before any suspension; tasks' memory and
executors' limits, from heartbeats; hosts' pressure.

    R = stream tasks/s x batch task s / (cap x executors)

is the demand for suspensions over their supply: each batch task brings `cap` suspensions
over its length, and with batch work on every executor each stream task needs one. Before
any batch task has ended, the batch task length is BATCH_TASK_PRIOR_S (or the oldest
running one's time, if longer). The reserve is `k = ceil(stream load / RESERVE_LOAD)`
executors, at least one, at most all but one (the stream load is rate x length); one kept
only until a suspension's cost is known (provisional) has at least an executor for each
task of the largest micro-batch seen.

Anti-flapping: a switch into `lb` or `reserve` from fifo or fair, into `reserve`, or to a
larger reserve, is made at once (stream work must not wait); leaving `reserve` needs R
down to R_LEAVE and every other reason gone or eased (hysteresis), and every switch but
the urgent ones waits `min_dwell_s` since the last. A provisional reserve is left at once
when the figures come, on the thresholds for entering one; if they call for it, it stays,
recorded as a switch from then on. Every switch (a change of `k` too) is recorded in
`switches` with the reason and the figures behind it (`Figures`), and logged.
"""

from __future__ import annotations

import logging
from collections.abc import Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from tidal.scheduler.decisions import Decision, Kill, Resume
from tidal.scheduler.policies.base import Policy
from tidal.scheduler.policies.fair import FairPolicy
from tidal.scheduler.policies.fifo import FifoPolicy
from tidal.scheduler.policies.lb import LbPolicy
from tidal.scheduler.policies.workload import Decayed, Figures, Workload
from tidal.scheduler.views import ClusterView, ExecutorView, TaskView, resume_order

__all__ = ["AdaptivePolicy", "Decayed", "Figures", "ReservingLb", "Switch", "Workload"]

log = logging.getLogger("tidal.scheduler")

# Discussion: the thresholds. At R = 1 the supply of suspensions just meets the demand when
# batch work fills the cluster; it seldom does all the time (stream tasks that find a free
# slot need no suspension), so LB still copes a little above 1 (the "mixed" mix runs near
# R = 1 and LB serves it well), and a reserve costs batch work a k-th of the cluster. So:
# a reserve from R = 1.5, back to LB below R = 1, and between them the regime stays. Half
# the executors capped is the early sign of a budget spent.
R_ENTER = 1.5
R_LEAVE = 1.0
CAPPED_ENTER = 0.5
# A task parked on an executor kept as the reserve is killed (requeued) at a tick, rather
# than left for the core to resume, if it has run at most this many mean batch task
# lengths (see ReservingLb._resume_on).
KILL_FRACTION = 1.0


@dataclass(frozen=True, slots=True)
class Switch:
    """One change of regime: when, from and to what, why, and the figures behind it."""

    at_ns: int
    from_policy: str
    to_policy: str
    reason: str
    figures: dict[str, Any] = field(default_factory=dict)
    reserve: int = 0  # the executors kept free of batch work from then on (0: none)
    provisional: bool = False  # a reserve kept only until a suspension's cost is known


class ReservingLb(LbPolicy):
    """LB that keeps `stream_reserve` executors free of batch work for stream tasks (none:
    LB's placement), and suspends only where that is quick and affordable (so no lanes).

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
            parked = min(suspended, key=resume_order)
            if lacking > 0:
                lacking -= 1
                self._held.append(executor.executor_id)
                if self._ticking and self._cheap_to_redo(parked):
                    # Discussion: after a tick the core resumes a task parked on an idle
                    # executor (its liveness rule: `SchedulerCore._resume_parked`), which
                    # would end this reserve. A task that has done little loses little by
                    # running again from the start elsewhere: kill it (requeued), and the
                    # executor stays free for stream work.
                    yield Kill(parked.task_id, requeue=True)
                continue
            resumed.add(executor.executor_id)
            yield Resume(parked.task_id)
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
        # The reserve is held only for want of figures (`_not_known`), since it began: it
        # ends as soon as they come, on the entering thresholds (see `_active`).
        self._provisional = False
        self._wanted_provisional = False  # what `_choose` found last

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
        self.workload.reported(executor)
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
        wanted, reason, figures, reserve = self._choose(view)
        dwelt = self._last_switch_ns is None or view.now - self._last_switch_ns >= self.min_dwell_ns
        changed = wanted != self.current or (
            wanted == "reserve" and reserve != self.reserving.stream_reserve
        )
        urgent = (
            (wanted in ("lb", "reserve") and self.current in ("fair", "fifo"))
            or (
                wanted == "reserve"
                and (self.current != "reserve" or reserve > self.reserving.stream_reserve)
            )
            # Discussion: the dwell and the hysteresis keep measured figures that swing
            # from flapping the regime; a reserve kept only until the figures came is not
            # a regime they chose, and waiting to leave it costs batch work for nothing.
            or (self.current == "reserve" and self._provisional)
        )
        # A reserve kept for want of figures that the figures now call for: the same
        # regime, on a new footing, recorded as a switch (and the dwell counts from it).
        confirmed = (
            self.current == wanted == "reserve"
            and self._provisional
            and not self._wanted_provisional
        )
        if (changed and (urgent or dwelt)) or confirmed:
            entering = self.current != "reserve"
            self._switch(view.now, wanted, reason, figures, reserve)
            if wanted == "reserve" and entering:
                self._provisional = self._wanted_provisional
        if self.current == "reserve":
            self._provisional = self._provisional and self._wanted_provisional
        return self.policies[self.current]

    def _switch(self, now: int, wanted: str, reason: str, figures: Figures, reserve: int) -> None:
        to = wanted if wanted != "reserve" else f"reserve of {reserve}"
        was = self.current
        if was == "reserve":
            was = f"reserve of {self.reserving.stream_reserve}"
        provisional = wanted == "reserve" and self._wanted_provisional
        self.switches.append(
            Switch(now, self.current, wanted, reason, figures.as_dict(), reserve, provisional)
        )
        log.info("adaptive policy: %s -> %s (%s)", was, to, reason)
        self.current = wanted
        # (`suspend_quickly` is `_choose`'s to set: it follows the figures, switch or not.)
        self.reserving.stream_reserve = reserve if wanted == "reserve" else 0
        self._last_switch_ns = now

    def _choose(self, view: ClusterView) -> tuple[str, str, Figures, int]:
        """The regime wanted now, why, the figures, and the reserve's size (0 without)."""
        f = self.workload.figures(view)
        lag = view.stream_lag()
        recent = (
            self._last_stream_ns is not None and view.now - self._last_stream_ns < self.window_ns
        )
        if lag.pending and lag.sources:
            # A stream source is behind (its driver says so): stream work is about, even
            # between its micro-batches; LB also keeps a slot for it when the lag is old.
            why = f"stream sources are {lag.pending} entries behind"
        elif lag.sources:
            # Discussion: a driver reports from its start, before its first micro-batch, and
            # then every half second or so: its source is live, and stream work may come at
            # any moment, so the batch work that fills the cluster meanwhile is placed as
            # for stream work (a reserve from the first fill, if suspending is not known to
            # be quick), not as for batch work alone.
            why = f"{lag.sources} stream sources are live (their drivers report)"
        elif view.pending_count("stream") or self.workload.streaming or recent:
            why = f"stream work seen in the last {self.window_ns / 1e9:g} s"
        elif view.any_suspended():
            # fifo and fair never resume: leaving lb now would strand the suspended tasks.
            return "lb", "suspended tasks are waiting to resume", f, 0
        else:
            jobs = {t.job_id for t in view.pending("batch")}
            if len(jobs) >= 2:
                return "fair", f"{len(jobs)} batch jobs compete for slots, no stream work", f, 0
            return "fifo", "batch work only, nothing to balance", f, 0
        short = self._short_of_suspensions(f)
        unknown = self._not_known(f)
        self.reserving.suspend_quickly = f.quick
        self._wanted_provisional = bool(unknown) and not short
        if short or unknown:
            reasons = "; ".join([*short, unknown] if unknown else short)
            k = f.reserve
            if not short:
                # Discussion: while it is not known whether suspending is quick, a stream
                # task that finds the reserve busy waits for it rather than for a record
                # boundary (`ReservingLb._preemptible`): the tasks of a micro-batch come
                # at once, and each would queue behind the one before. So a reserve kept
                # for want of figures has an executor for each task of the largest
                # micro-batch seen (all but one executor at most), not only for the load.
                k = max(k, min(f.micro_batch, f.executors - 1))
            return "reserve", f"{why}; {reasons}: keep {k} executors for it", f, k
        return "lb", f"{why}: suspension covers it (R={f.demand:.2f})", f, 0

    def _short_of_suspensions(self, f: Figures) -> list[str]:
        """Why suspension will not serve the stream work, as measured (none if it will)."""
        reasons = []
        # A reserve kept only for want of figures is left on the thresholds for entering one.
        staying = self.current == "reserve" and not self._provisional
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
        return reasons

    @staticmethod
    def _not_known(f: Figures) -> str:
        """Why a suspension's cost is not known yet ('' if it is).

        Discussion: not knowing is not the same as quick. Betting on suspension costs stream
        tasks a record's wait, and a record may take any time (a partition, a file) or never
        end (a task that reaches no boundary); betting on a reserve costs a stream task that
        finds it busy the wait for the stream task before it, and batch work a k-th of the
        cluster until the figure comes, which is soon: executors report their running
        tasks' records in every heartbeat (`TaskView.record_ns`). So, until it is known, a
        reserve (left as soon as it is). Once a suspension's cost is known, its worst is
        known, while a stream task not timed yet may take any time: suspending is then the
        bet with the bounded loss, as when it is known quick (`_short_of_suspensions`)."""
        if f.suspend_known:
            return ""
        return "no batch task's records are timed yet: a suspension's wait is unknown"

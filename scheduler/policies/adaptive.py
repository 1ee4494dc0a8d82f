"""ADAPTIVE: switch between the built-in policies at run time, from the observed workload.

No single policy wins every mix. This one watches what arrives and what waits, and at each
consultation picks:

- `lb` while stream work was seen within the last `window_s`, or a stream source's driver
  reports a backlog (suspension is what keeps stream latency low, and LB costs batch work
  nothing when no stream task comes);
- `fair` when two or more batch jobs compete for slots and no stream work is about (a job
  submitted later is not starved behind a long one);
- `fifo` otherwise (one batch job: nothing to balance).

It switches to `lb` at once when stream work appears; other switches wait `min_dwell_s`
since the last one, so the policy does not flap. Every switch is recorded with its time
and reason in `switches` (and logged).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from tidal.scheduler.decisions import Decision
from tidal.scheduler.policies.base import Policy
from tidal.scheduler.policies.fair import FairPolicy
from tidal.scheduler.policies.fifo import FifoPolicy
from tidal.scheduler.policies.lb import LbPolicy
from tidal.scheduler.views import ClusterView, ExecutorView, TaskView

log = logging.getLogger("tidal.scheduler")


@dataclass(frozen=True, slots=True)
class Switch:
    at_ns: int
    from_policy: str
    to_policy: str
    reason: str


class AdaptivePolicy(Policy):
    """Pick lb, fair or fifo from the observed mix of stream and batch work."""

    name = "adaptive"

    @property
    def preempts(self) -> bool:  # as the policy it currently uses
        return self.policies[self.current].preempts

    def __init__(self, window_s: float = 2.0, min_dwell_s: float = 1.0) -> None:
        self.window_ns = int(window_s * 1e9)
        self.min_dwell_ns = int(min_dwell_s * 1e9)
        self.policies: dict[str, Policy] = {
            "lb": LbPolicy(),
            "fair": FairPolicy(),
            "fifo": FifoPolicy(),
        }
        self.current = "fifo"
        self.switches: list[Switch] = []
        self._last_stream_ns: int | None = None
        self._last_switch_ns: int | None = None

    # Every hook: look at the workload, maybe switch, then ask the current policy.

    def tasks_submitted(self, view: ClusterView, tasks: Sequence[TaskView]) -> Iterable[Decision]:
        if any(t.priority == "stream" for t in tasks):
            self._last_stream_ns = view.now
        return self._active(view).tasks_submitted(view, tasks)

    def slot_freed(self, view: ClusterView, executor: ExecutorView) -> Iterable[Decision]:
        return self._active(view).slot_freed(view, executor)

    def metrics_updated(self, view: ClusterView, executor: ExecutorView) -> Iterable[Decision]:
        return self._active(view).metrics_updated(view, executor)

    def tick(self, view: ClusterView) -> Iterable[Decision]:
        return self._active(view).tick(view)

    def _active(self, view: ClusterView) -> Policy:
        wanted, reason = self._choose(view)
        if wanted != self.current:
            dwelt = (
                self._last_switch_ns is None or view.now - self._last_switch_ns >= self.min_dwell_ns
            )
            if wanted == "lb" or dwelt:
                self.switches.append(Switch(view.now, self.current, wanted, reason))
                log.info("adaptive policy: %s -> %s (%s)", self.current, wanted, reason)
                self.current = wanted
                self._last_switch_ns = view.now
        return self.policies[self.current]

    def _choose(self, view: ClusterView) -> tuple[str, str]:
        stream_now = view.pending_count("stream") or view.running("stream")
        recent = (
            self._last_stream_ns is not None and view.now - self._last_stream_ns < self.window_ns
        )
        if any(e.suspended for e in view.executors()):
            # fifo and fair never resume: leaving lb now would strand the suspended tasks.
            return "lb", "suspended tasks are waiting to resume"
        lag = view.stream_lag()
        if lag.pending and lag.sources:
            # A stream source is behind (its driver says so): stream work is about, even
            # between its micro-batches; LB also keeps a slot for it when the lag is old.
            return "lb", f"stream sources are {lag.pending} entries behind"
        if stream_now or recent:
            return (
                "lb",
                "stream work seen in the last "
                f"{self.window_ns / 1e9:g} s: suspend batch tasks for it",
            )
        jobs = {t.job_id for t in view.pending("batch")}
        if len(jobs) >= 2:
            return "fair", f"{len(jobs)} batch jobs compete for slots, no stream work"
        return "fifo", "batch work only, nothing to balance"

"""Busy executors: alive (their connection is up) but silent, their Python held.

An executor's heartbeats come from Python; a task in one long C call (`sorted` of millions,
a big `json.loads`) holds the GIL and they stop, while libzmq's own pings keep the
connection up (scheduler/liveness.py). The scheduler then counts the executor busy, not
lost: when its heartbeats are late (`SchedulerCore._on_tick`), or sooner, when a suspension
sent to it goes unanswered past SUSPEND_OVERDUE_NS (`overdue`), since its watchdog answers
`suspend_failed` within 100 ms unless its Python is held (runtime/kernel.py). A busy
executor takes no launch, its stream tasks that have not started run elsewhere, and it
counts busy until it reports again (`seen`).

The deadlines of the suspensions sent are kept in a heap, so that the shell can wake the
core at the first one (`next_overdue_at`, through `SchedulerCore.wake_at`): checked only at
the core's tick, the first stream task sent to a busy executor waited up to a tick (a
quarter of a second at the default heartbeat) beyond the 150 ms.
"""

from __future__ import annotations

import heapq

from tidal.runtime import protocol as p
from tidal.scheduler import events as ev
from tidal.scheduler.records.tables import ExecutorRecord, Task, TaskState

__all__ = ["SUSPEND_OVERDUE_NS", "BusyBooks"]

# A suspension unanswered this long (the executor's own watchdog answers within 100 ms,
# runtime/kernel.py) means its Python is held: the executor counts as busy.
SUSPEND_OVERDUE_NS = 150_000_000


class BusyBooks:
    """Busy executors: a part of `Records` (scheduler/records/books.py), which keeps the
    suspensions' deadlines in its `suspend_deadlines`, a heap of (deadline ns, when sent,
    task id), if its `overdue_makes_busy` (a core that loses silent executors does not:
    the simulator's)."""

    def suspension_sent(self, task: Task) -> None:
        """A suspend for `task` goes out now (or is read only now): it is overdue after
        SUSPEND_OVERDUE_NS."""
        task.suspend_sent_at = self.now
        if self.overdue_makes_busy:
            deadline = self.now + SUSPEND_OVERDUE_NS + 1  # past it, not at it
            heapq.heappush(self.suspend_deadlines, (deadline, self.now, task.task_id))

    def next_overdue_at(self) -> int | None:
        """When the first suspension still unanswered becomes overdue (None: none is
        waiting). Drops the deadlines of suspensions answered since, on the way."""
        deadlines = self.suspend_deadlines
        while deadlines:
            at, sent, task_id = deadlines[0]
            if self._unanswered(task_id, sent) is not None:
                return at
            heapq.heappop(deadlines)
        return None

    def mark_overdue(self) -> None:
        """Count busy each executor with a suspension whose deadline has come unanswered;
        drop the deadlines that have come."""
        deadlines = self.suspend_deadlines
        while deadlines and deadlines[0][0] <= self.now:
            _, sent, task_id = heapq.heappop(deadlines)
            task = self._unanswered(task_id, sent)
            executor = None if task is None else self.executors.get(task.executor_id or "")
            if executor is not None and executor.alive and not executor.busy:
                waited_ms = (self.now - sent) / 1e6
                self.busy(executor, f"a suspension unanswered for {waited_ms:.0f} ms")

    def _unanswered(self, task_id: str, sent: int) -> Task | None:
        """The task, if its suspension sent at `sent` is still unanswered (not answered,
        nor sent again since)."""
        task = self.tasks.get(task_id)
        if task is None or task.state is not TaskState.SUSPENDING:
            return None
        return task if task.suspend_sent_at == sent else None

    def seen(self, executor: ExecutorRecord) -> None:
        executor.last_seen = self.now
        if executor.busy:
            executor.busy = False
            self.lanes_changed = True
            self.note(ev.ExecutorBusy(executor.executor_id, False, "it reported again"))
            # Its watchdog starts now on the suspensions it reads only now: they are not
            # overdue before its own timeout has passed (else it would flap back to busy).
            for task in executor.suspended.values():
                if task.state is TaskState.SUSPENDING:
                    self.suspension_sent(task)

    def busy(self, executor: ExecutorRecord, reason: str) -> None:
        """`executor` is alive (its connection is up) but silent: its Python is held, by a
        long C call most likely. Until it reports again its tasks count as unsuspendable,
        it takes no launch, and the stream tasks sent there that have not started go
        elsewhere.

        Discussion: a withdrawn stream task runs again as a new attempt at once; the busy
        executor gets a kill for it, which it reads after the call, behind the launch, and
        whatever it reports of the old attempt is stale (reports name their attempt). "Not
        started" is as far as the scheduler knows: if its `started` is on the way, the old
        attempt may run there too before the kill lands, so a stream task's code can run
        twice (its future still completes once)."""
        executor.busy = True
        self.lanes_changed = True
        self.note(ev.ExecutorBusy(executor.executor_id, True, reason))
        waiting = [
            t
            for t in executor.tasks()
            if t.state is TaskState.LAUNCHED and t.priority == "stream" and t.subtasks is None
        ]
        for task in waiting:
            self.detach(executor, task)
            self.send(executor, p.Kill(task.task_id, self.now))
        self.requeue(waiting)

"""Busy executors and the suspensions' deadlines (scheduler/records/busy.py): the core asks
the shell to wake it when a suspension becomes overdue, rather than waiting for its tick."""

from __future__ import annotations

from tests.scheduler.harness import MS, Harness
from tidal.runtime import protocol as p
from tidal.scheduler.events import Deadline, Tick
from tidal.scheduler.records.busy import SUSPEND_OVERDUE_NS


def _loaded(h: Harness) -> tuple[list[str], str, str, str]:
    """Both executors run a batch task; a stream task arrives and suspends one of them.
    (batch ids, the stream task's id, the executor told to suspend, the other one)."""
    batch = h.submit("b", "batch", 2)
    for executor_id in ("e0", "e1"):
        (launch,) = h.sent(executor_id, p.Launch)
        h.start(executor_id, launch.task_id)
    (stream,) = h.submit("s", "stream", 1)
    victim = next(e for e in ("e0", "e1") if h.to_executor.get(e))
    assert [type(m) for m in h.sent(victim)] == [p.Suspend, p.Launch]
    return batch, stream, victim, "e1" if victim == "e0" else "e0"


def test_a_stream_task_stuck_behind_a_busy_executor_moves_and_completes_once():
    # As the server runs it: liveness by the connection, silence only makes busy.
    h = Harness(lose_silent=False)
    batch, stream, victim, other = _loaded(h)
    # The victim holds its GIL in a C call: no answer. Past the overdue time, at the tick
    # (if the shell did not wake the core at the deadline), it is busy.
    h.clock.now += 200 * MS
    h.handle(Tick())
    assert [type(m) for m in h.sent(victim)] == [p.Kill]  # the stream launch withdrawn
    assert [(type(m), m.task_id) for m in h.sent(other)] == [
        (p.Suspend, next(t for t in batch if h.core.records.tasks[t].executor_id == other)),
        (p.Launch, stream),
    ]
    assert h.core.status()["executors"][0 if victim == "e0" else 1]["busy"]
    # The victim's late reports of the old attempt are stale; the new one completes it.
    h.report(victim, p.Killed(stream, 0, {}))
    h.start(other, stream, attempt=1)
    h.finish(other, stream, attempt=1)
    assert [item[1] for item in h.results[stream]] == ["finished"]
    assert h.results[stream][0][4]["attempt"] == 1


def test_an_unanswered_suspension_wakes_the_core_at_its_deadline_not_its_tick():
    h = Harness(lose_silent=False, heartbeat_ns=500 * MS)
    assert h.core.wake_at() is None  # nothing sent, nothing due
    h.clock.now = 1_000 * MS
    _, stream, victim, other = _loaded(h)
    due = h.core.wake_at()
    assert due == 1_000 * MS + SUSPEND_OVERDUE_NS + 1
    h.clock.now = due - 1
    h.handle(Deadline())  # early (a stale wake): nothing happens
    assert h.sent(victim) == [] and h.sent(other) == []
    assert not h.core.records.executors[victim].busy
    h.clock.now = due
    h.handle(Deadline())
    assert h.core.records.executors[victim].busy
    assert [type(m) for m in h.sent(victim)] == [p.Kill]  # its stream launch withdrawn
    assert [type(m) for m in h.sent(other)] == [p.Suspend, p.Launch]
    # The other executor's suspension is the next deadline; the victim's is gone.
    assert h.core.wake_at() == due + SUSPEND_OVERDUE_NS + 1
    h.start(other, stream, attempt=1)
    h.finish(other, stream, attempt=1)
    assert [item[1] for item in h.results[stream]] == ["finished"]


def test_an_answered_suspension_leaves_no_deadline_and_no_busy_executor():
    h = Harness(lose_silent=False)
    batch, _, victim, _ = _loaded(h)
    (suspended,) = [t for t in batch if h.core.records.tasks[t].executor_id == victim]
    h.report(victim, p.Suspended(suspended, 10, 100, h.clock.now))
    assert h.core.wake_at() is None
    h.clock.now += SUSPEND_OVERDUE_NS + 1
    h.handle(Deadline())
    h.handle(Tick())
    assert not h.core.records.executors[victim].busy
    assert h.core.records.suspend_deadlines == []  # dropped once due, not kept for ever


def test_a_busy_executor_that_reports_again_gets_a_new_deadline_for_what_it_reads_now():
    h = Harness(lose_silent=False)
    batch, _, victim, other = _loaded(h)
    h.clock.now += SUSPEND_OVERDUE_NS + 1
    h.handle(Deadline())
    assert h.core.records.executors[victim].busy
    (moved,) = [t for t in batch if h.core.records.tasks[t].executor_id == other]
    h.report(other, p.Suspended(moved, 10, 100, h.clock.now))  # for the stream task, there
    h.clock.now += 2_000 * MS  # its C call ends; it reports
    h.heartbeat(victim)
    assert not h.core.records.executors[victim].busy
    # The suspension it reads only now has its watchdog's time again before it is overdue.
    assert h.core.wake_at() == h.clock.now + SUSPEND_OVERDUE_NS + 1


def test_a_core_that_loses_silent_executors_asks_for_no_wake():
    h = Harness()  # lose_silent=True: the simulator's core, say
    _, _, victim, _ = _loaded(h)
    assert h.core.wake_at() is None
    h.clock.now += SUSPEND_OVERDUE_NS + 1
    h.handle(Tick())
    assert not h.core.records.executors[victim].busy
    assert h.core.records.suspend_deadlines == []

"""The scheduler's side of lanes (scheduler/lanes.py), on the scripted harness: clients are
told of lanes; a forwarded submit is the client's submit, a taken task launched where it
runs, its parked task suspended there, no command sent; what cannot be accepted is killed
there."""

from __future__ import annotations

from tidal.runtime import payloads
from tidal.runtime import protocol as p
from tidal.scheduler.core import ClientJoined, ClientRequest, PassEnded
from tidal.scheduler.records import TaskState

from .harness import CLIENT_ID, MS, TOTAL, Harness


def lane_harness() -> Harness:
    h = Harness("lb", executors=())
    h.join("e0", "n0", lane="tcp://127.0.0.1:5001")
    h.join("e1", "n1", lane="tcp://127.0.0.1:5002")
    return h


def forward(h: Harness, executor_id: str, job_id: str, *, taken: bool, parked=None, token=None):
    submit = p.Submit(
        job_id, "stream", 0, None, TOTAL, None, [[f"{job_id}/0", payloads.pack_call([[1]], {})]], 0
    )
    token = h.lanes[-1].token if token is None else token
    h.report(executor_id, p.Forward(token, p.encode(submit), taken, parked))
    return f"{job_id}/0"


def running_batch(h: Harness) -> dict[str, str]:
    """Two batch tasks, one running on each executor: {executor id: task id}."""
    h.submit("b", "batch", 2, max_suspensions=3)
    where = {}
    for executor_id in ("e0", "e1"):
        (launch,) = h.sent(executor_id, p.Launch)
        assert launch.suspensions_left == 3  # the cap travels with a batch launch
        h.start(executor_id, launch.task_id)
        where[executor_id] = launch.task_id
    return where


def test_clients_are_told_of_the_lanes_of_live_executors_not_busy():
    h = lane_harness()
    assert [m.lanes for m in h.lanes] == [
        [["e0", "tcp://127.0.0.1:5001"]],
        [["e0", "tcp://127.0.0.1:5001"], ["e1", "tcp://127.0.0.1:5002"]],
    ]
    token = h.lanes[-1].token
    assert len({m.token for m in h.lanes}) == 1 and len(token) == 16
    h.join("e2", "n2", lane="ipc:///somewhere")  # not one a client can use: not told
    h.join("e3", "n3", lane="tcp://" + "x" * 300)
    assert len(h.lanes) == 2
    h.core.records.lose(h.core.records.executors["e0"], "test")
    h.heartbeat("e1")  # any step after the change tells
    assert h.lanes[-1].lanes == [["e1", "tcp://127.0.0.1:5002"]]
    h.handle(ClientJoined("other"))  # a client that joins is told at once, with its token
    assert h.lanes[-1].token != token and h.lanes[-1].lanes == [["e1", "tcp://127.0.0.1:5002"]]


def test_a_taken_lane_task_is_booked_where_it_runs_and_its_parked_task_suspended_there():
    h = lane_harness()
    where = running_batch(h)
    task_id = forward(h, "e0", "c-1", taken=True, parked=where["e0"])
    assert h.sent("e0") == [] and h.sent("e1") == []  # the executor did both: nothing sent
    # ...but booked as commands, for the event log and the counts, in a policy's order.
    assert [(e, type(m).__name__, m.task_id) for e, m in h.by_lane] == [
        ("e0", "Suspend", where["e0"]),
        ("e0", "Launch", task_id),
    ]
    assert h.core.tally.counts["suspensions"] == 1
    records = h.core.records
    task, parked = records.tasks[task_id], records.tasks[where["e0"]]
    assert task.state is TaskState.LAUNCHED and task.executor_id == "e0" and task.received
    assert parked.state is TaskState.SUSPENDING and parked.suspensions == 1
    assert any(type(n).__name__ == "JobAccepted" for n in h.notes)  # journaled as a submit
    h.report("e0", p.Suspended(where["e0"], 1000, 5, h.clock.now))
    h.start("e0", task_id)
    h.clock.now += MS
    h.finish("e0", task_id, result=1)
    assert h.results[task_id][0][1] == "finished"
    (resume,) = h.sent("e0", p.Resume)  # the slot is free again: its batch task resumes
    assert resume.task_id == where["e0"]


def test_an_untaken_lane_task_is_placed_as_any_submit():
    h = lane_harness()
    where = running_batch(h)
    task_id = forward(h, "e0", "c-1", taken=False)
    commands = h.sent("e0") + h.sent("e1")
    # LB suspends a batch task for it and launches it there.
    assert sorted(type(c).__name__ for c in commands) == ["Launch", "Suspend"]
    (launch,) = [c for c in commands if isinstance(c, p.Launch)]
    assert launch.task_id == task_id and launch.suspensions_left is None  # a stream launch
    assert set(where.values()) >= {c.task_id for c in commands if isinstance(c, p.Suspend)}


def test_a_forward_with_an_unknown_token_is_killed_there_and_its_parked_task_booked():
    h = lane_harness()
    where = running_batch(h)
    task_id = forward(h, "e0", "c-1", taken=True, parked=where["e0"], token="forged")
    assert [(type(m), m.task_id) for m in h.sent("e0")] == [(p.Kill, task_id)]
    assert "c-1" not in h.core.records.jobs
    assert h.core.records.tasks[where["e0"]].state is TaskState.SUSPENDING


def test_a_job_the_scheduler_has_is_killed_where_a_late_lane_copy_runs():
    h = lane_harness()
    running_batch(h)
    # The client's grace ran out: it sent the job to the scheduler, which placed it.
    h.submit("c-1", "stream", 1)
    placed = h.core.records.tasks["c-1/0"].executor_id
    other = "e1" if placed == "e0" else "e0"
    h.sent("e0"), h.sent("e1")
    forward(h, other, "c-1", taken=True)
    assert [(type(m), m.task_id) for m in h.sent(other)] == [(p.Kill, "c-1/0")]
    # The same copy forwarded by the executor the scheduler placed it on is that launch.
    forward(h, placed, "c-1", taken=True)
    assert h.sent(placed) == []


def test_a_lane_copy_of_a_job_waiting_at_the_scheduler_is_that_job_s_launch():
    # (A review's trace.) Killing such a copy and launching the same attempt there again
    # would let the copy's `killed` requeue that launch, which the executor then refuses:
    # the task booked there for ever, its future waiting for ever.
    h = Harness("lb", executors=(), consult_per_pass=True)
    h.join("e0", "n0", lane="tcp://127.0.0.1:5001")
    h.join("e1", "n1", lane="tcp://127.0.0.1:5002")
    h.submit("b", "batch", 1, max_suspensions=0)  # never suspended: no room made by LB
    h.handle(PassEnded())
    (batch,) = h.sent("e0", p.Launch) + h.sent("e1", p.Launch)
    busy = h.core.records.tasks[batch.task_id].executor_id
    other = "e1" if busy == "e0" else "e0"
    h.start(busy, batch.task_id)
    h.submit("s", "stream", 1)  # a stream task runs on the other executor
    h.handle(PassEnded())
    h.start(other, "s/0")
    h.sent(other)
    # The first lane could not take it (its batch task has no suspension left): pending.
    task_id = forward(h, busy, "c-1", taken=False)
    h.handle(PassEnded())
    assert h.core.records.tasks[task_id].state is TaskState.PENDING
    # In one pass: the other's stream task ends, and its lane takes the task sent again.
    h.finish(other, "s/0")
    forward(h, other, "c-1", taken=True)
    h.handle(PassEnded())
    task = h.core.records.tasks[task_id]
    assert task.state is TaskState.LAUNCHED and task.executor_id == other and task.attempt == 0
    assert not [m for m in h.sent(other) if isinstance(m, p.Kill | p.Launch)]
    h.start(other, task_id)
    h.finish(other, task_id, result=1)
    assert h.results[task_id][0][1] == "finished"


def test_a_late_forward_of_a_job_that_is_gone_is_killed_and_not_taken_for_a_new_one():
    h = lane_harness()
    running_batch(h)
    # Done and released while the lane frame waited unread (its executor stalled).
    h.submit("c-1", "stream", 1)
    placed = h.core.records.tasks["c-1/0"].executor_id
    h.start(placed, "c-1/0")
    h.finish(placed, "c-1/0", result=1)
    h.handle(ClientRequest(CLIENT_ID, p.Release(["c-1"])))
    assert "c-1" not in h.core.records.jobs  # retired
    h.sent("e0"), h.sent("e1")
    forward(h, placed, "c-1", taken=True)  # even on the executor it ran on: it ended there
    assert [(type(m), m.task_id) for m in h.sent(placed)] == [(p.Kill, "c-1/0")]
    assert "c-1" not in h.core.records.jobs and len(h.results["c-1/0"]) == 1
    # Released, or cancelled, before the scheduler heard of it: the same.
    h.handle(ClientRequest(CLIENT_ID, p.Release(["c-2"])))
    h.handle(ClientRequest(CLIENT_ID, p.Cancel(["c-3/0"])))
    h.handle(ClientRequest(CLIENT_ID, p.Release(["other-4"])))  # not its own: not buried
    for job in ("c-2", "c-3"):
        forward(h, "e1", job, taken=True)
        assert [(type(m), m.task_id) for m in h.sent("e1")] == [(p.Kill, f"{job}/0")]
        assert job not in h.core.records.jobs
    assert not h.core.records.buried("other-4")
    h.clock.now += 61_000 * MS  # a minute on: forgotten
    h.heartbeat("e1")
    assert not h.core.records.buried("c-2")


def test_a_refused_lane_submit_fails_at_its_client_and_is_killed_where_it_runs():
    h = lane_harness()
    submit = p.Submit("c-9", "stream", 0, -1, TOTAL, None, [["c-9/0", b"\xc0"]], 0)
    h.report("e0", p.Forward(h.lanes[-1].token, p.encode(submit), True, None))
    (result,) = h.results["c-9/0"]
    assert result[1] == "failed" and "max_suspensions must be >= 0" in result[3][1]
    assert [(type(m), m.task_id) for m in h.sent("e0")] == [(p.Kill, "c-9/0")]
    assert CLIENT_ID in h.core.records.clients  # nothing else changed

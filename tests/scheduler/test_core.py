"""The scheduler core as a state machine: events in, instructions out. No sockets, no
threads, a fake clock; executors are played by the test, which answers the core's commands
with the reports a real executor would send."""

from __future__ import annotations

import gc
import logging

import pytest

# tests/test_readme.py imports Harness from here: keep this import.
from tests.scheduler.harness import CLIENT_ID, MS, TOTAL, Harness, payload
from tidal.runtime import payloads
from tidal.runtime import protocol as p
from tidal.scheduler import decisions as d
from tidal.scheduler import events as ev
from tidal.scheduler.core import (
    ClientJoined,
    ClientRequest,
    ExecutorLeft,
    ExecutorReport,
    SchedulerCore,
    Tick,
    ToClient,
)
from tidal.scheduler.events import SubmitUnreadable
from tidal.scheduler.policies import Policy, UnknownPolicy, resolve_policy
from tidal.scheduler.records import MAX_LOST_EXECUTORS, TaskState


def test_stream_arrival_suspends_batch_tasks_and_takes_their_slots():
    h = Harness()
    batch = h.submit("b", "batch", 4)
    launched = {e: [m.task_id for m in h.sent(e, p.Launch)] for e in ("e0", "e1")}
    assert launched == {"e0": [batch[0]], "e1": [batch[1]]}  # no prefetch for unknown tasks
    h.start("e0", batch[0])
    h.start("e1", batch[1])

    stream = h.submit("s", "stream", 2)

    for executor_id, victim, newcomer in (("e0", batch[0], stream[0]), ("e1", batch[1], stream[1])):
        sent = h.sent(executor_id)
        # Suspend and launch go out together: the stream task runs the moment the batch
        # task parks, with no further round trip.
        assert [(type(m), m.task_id) for m in sent] == [(p.Suspend, victim), (p.Launch, newcomer)]
        assert sent[1].priority == "stream"
        assert h.state(victim) is TaskState.SUSPENDING


def test_suspended_tasks_resume_where_their_state_is_before_new_batch_work():
    h = Harness(executors=[("e0", "n0")])
    batch = h.submit("b", "batch", 3)
    h.start("e0", batch[0])
    (stream,) = h.submit("s", "stream", 1)
    h.sent("e0")
    h.report("e0", p.Suspended(batch[0], 500_000, 10, h.clock.now))
    h.start("e0", stream)
    h.finish("e0", stream, result=7)

    sent = h.sent("e0")
    assert [(type(m), m.task_id) for m in sent] == [(p.Resume, batch[0])]
    assert [item[:4] for item in h.results[stream]] == [
        [stream, "finished", payloads.pack_payload(7), None]
    ]
    h.report("e0", p.Resumed(batch[0], 900, h.clock.now))
    h.finish("e0", batch[0])
    assert [m.task_id for m in h.sent("e0", p.Launch)] == [batch[1]]


def test_the_suspension_cap_holds_and_the_task_then_runs_uninterrupted():
    h = Harness(executors=[("e0", "n0")], max_suspensions=2)
    (batch,) = h.submit("b", "batch", 1)
    h.start("e0", batch)
    h.sent("e0")
    for round_ in range(4):
        (stream,) = h.submit(f"s{round_}", "stream", 1)
        sent = h.sent("e0")
        if round_ < 2:
            assert [type(m) for m in sent] == [p.Suspend, p.Launch]
            h.report("e0", p.Suspended(batch, 1000, 1, h.clock.now))
            h.start("e0", stream)
            h.finish("e0", stream)
            assert [type(m) for m in h.sent("e0")] == [p.Resume]
            h.report("e0", p.Resumed(batch, 1000, h.clock.now))
        else:
            assert sent == []  # capped: the stream task waits for the slot
    assert h.core.records.tasks[batch].suspensions == 2
    h.finish("e0", batch)
    assert [m.task_id for m in h.sent("e0", p.Launch)] == ["s2/0"]


def test_no_policy_can_break_the_cap_or_resume_elsewhere():
    class Rogue(Policy):
        name = "rogue"

        def tasks_submitted(self, view, tasks):
            for executor in view.executors():
                task = executor.slot_task
                if task is None:
                    pending = next(view.pending(), None)
                    if pending is not None:
                        yield d.Launch(pending.task_id, executor.executor_id)
                else:
                    yield d.Suspend(task.task_id)  # past the cap
                    yield d.Resume(task.task_id)  # running, not suspended
                    yield d.Launch("b/0", "e1")  # not pending

    h = Harness(policy=Rogue(), max_suspensions=0)
    h.submit("b", "batch", 2)
    h.start("e0", "b/0")
    h.submit("s", "stream", 1)
    reasons = [reason for _, reason in h.core.refused]
    assert any("suspension cap reached" in r for r in reasons)
    assert any("not suspended" in r for r in reasons)
    assert any("not pending" in r for r in reasons)
    assert all(not isinstance(m, p.Suspend) for m in h.sent("e0") + h.sent("e1"))


def test_a_policy_that_raises_is_replaced_by_the_default_and_nothing_is_lost():
    class Broken(Policy):
        name = "broken"

        def tasks_submitted(self, view, tasks):
            raise ZeroDivisionError("oops")

    h = Harness(policy=Broken())
    h.submit("b", "batch", 2)
    assert h.core.policy.name == "lb"
    assert (
        "broken" in h.core.policy_failures[0] and "ZeroDivisionError" in h.core.policy_failures[0]
    )
    assert len(h.sent("e0", p.Launch)) + len(h.sent("e1", p.Launch)) == 2


def test_lost_executors_past_the_cap_are_forgotten_so_new_ids_cost_bounded_memory():
    h = Harness(executors=())
    for i in range(MAX_LOST_EXECUTORS + 50):
        h.join(f"x{i}", "n")
        h.handle(ExecutorLeft(f"x{i}", "it said goodbye"))
    h.join("alive", "n")
    states = [e["state"] for e in h.core.status()["executors"]]
    assert states.count("lost") == MAX_LOST_EXECUTORS and states.count("alive") == 1
    assert (
        "x0" not in h.core.records.executors
        and f"x{MAX_LOST_EXECUTORS + 49}" in h.core.records.executors
    )
    # One that comes back under a forgotten id joins as new.
    h.join("x0", "n")
    assert h.core.records.executors["x0"].alive


def test_stats_that_are_not_counts_do_not_reach_the_cores_arithmetic():
    h = Harness()
    (task,) = h.submit("b", "batch", 1)
    executor = next(e for e in ("e0", "e1") if h.sent(e, p.Launch))
    h.start(executor, task)
    stats = {"running_ns": float("nan"), "suspensions": "3", "records": -1, "finished_at_ns": []}
    h.report(executor, p.Finished(task, 0, payloads.pack_payload(1), stats))
    result_stats = h.results[task][0][4]
    assert result_stats["suspensions"] == 0 and result_stats["records"] == 0
    assert result_stats["finished_at_ns"] is None
    h.submit("c", "batch", 1)  # the prefetch estimate stayed a number: no int(nan) here


def test_unknown_job_options_of_mixed_key_types_are_refused_not_raised_on():
    h = Harness()
    submit = p.Submit("j", "batch", 0, None, "m:f", None, [["j/0", payload(0)]], 0, {b"k": 1, 2: 3})
    h.handle(ClientRequest("c", submit))
    [[_, outcome, _, error, _]] = h.results["j/0"]
    assert outcome == "failed" and "unknown job options" in error[1]


def test_a_task_record_holds_no_container_of_its_own_until_it_has_something_to_keep():
    # The collector walks every container a record holds, for every task in the books: a
    # record's empty lists are the shared (), and a record gets a list with its first item.
    h = Harness(max_retries=3, executors=())
    first, second = h.submit("b", "batch", 2)
    records = h.core.records.tasks
    for task_id in (first, second):
        task = records[task_id]
        shared = (task.job, task.state, type(task))
        own = [x for x in gc.get_referents(task) if gc.is_tracked(x) and x not in shared]
        assert own == [], f"{task_id} holds {own}"
    h.join("e0", "n0")
    h.start("e0", first)
    h.handle(ExecutorLeft("e0", "it crashed"))
    assert records[first].lost_on == ["e0"] and records[second].lost_on == ()


def test_a_task_lost_before_it_started_does_not_count_toward_max_retries():
    # Executors that take tasks and vanish before starting them (a peer posing as one, with
    # no keys configured) must not fail a job: only losses of a started task count.
    h = Harness(max_retries=1, executors=())
    (task,) = h.submit("b", "batch", 1)
    for i in range(5):
        h.join(f"hole{i}", "n")
        assert [m.task_id for m in h.sent(f"hole{i}", p.Launch)] == [task]
        h.handle(ExecutorLeft(f"hole{i}", "it said goodbye"))
        assert h.state(task) is TaskState.PENDING
    assert h.core.records.tasks[task].lost_on == ()
    h.join("e0", "n0")
    h.start("e0", task, attempt=5)
    h.finish("e0", task, attempt=5, result=7)
    assert h.results[task][0][1] == "finished"


def test_a_lost_executor_requeues_its_tasks_and_each_completes_exactly_once():
    h = Harness(heartbeat_ns=100 * MS, missed_heartbeats=3)
    batch = h.submit("b", "batch", 2)
    h.start("e0", batch[0])
    h.start("e1", batch[1])
    (stream,) = h.submit("s", "stream", 1)
    suspended_on = "e0" if h.sent("e0", p.Suspend) else "e1"
    other = "e1" if suspended_on == "e0" else "e0"
    h.sent(other)
    victim = batch[0] if suspended_on == "e0" else batch[1]
    h.report(suspended_on, p.Suspended(victim, 1000, 3, h.clock.now))
    h.start(suspended_on, stream)

    # The executor holding the suspended task and the stream task goes silent.
    h.clock.now += 250 * MS
    h.report(other, p.Heartbeat(other, "n", 1, 0, 1, 1, 0, 0, 1, 1, 1.0))
    h.clock.now += 100 * MS
    h.handle(Tick())
    assert not h.core.records.executors[suspended_on].alive
    assert h.state(stream) is not TaskState.DONE and h.core.records.tasks[stream].attempt == 1
    # The stream task comes first: it takes the surviving executor's slot from its batch task.
    sent = h.sent(other)
    assert [(type(m), m.task_id) for m in sent[:2]] == [
        (p.Suspend, batch[1] if other == "e1" else batch[0]),
        (p.Launch, stream),
    ]
    assert sent[1].attempt == 1

    # A late report from the lost executor changes nothing.
    h.report(suspended_on, p.Finished(stream, 0, payloads.pack_payload("late"), {}))
    assert stream not in h.results
    h.report(other, p.Suspended(sent[0].task_id, 1000, 1, h.clock.now))
    h.start(other, stream, attempt=1)
    h.finish(other, stream, attempt=1, result="ok")
    h.finish(other, stream, attempt=1, result="duplicate")
    assert [item[2] for item in h.results[stream]] == [payloads.pack_payload("ok")]


def test_stream_tasks_go_before_batch_and_order_sorts_within_a_class():
    h = Harness(executors=[("e0", "n0")])
    h.submit("b-late", "batch", 1, order=5)
    h.sent("e0")  # took the free slot
    h.submit("b-early", "batch", 1, order=1)
    h.submit("s", "stream", 1)
    h.report("e0", p.Suspended("b-late/0", 1, 1, 1))
    h.start("e0", "s/0")
    h.sent("e0")
    h.finish("e0", "s/0")
    assert [type(m) for m in h.sent("e0")] == [p.Resume]  # resumption before new batch work
    h.report("e0", p.Resumed("b-late/0", 1, 1))
    h.finish("e0", "b-late/0")
    assert [m.task_id for m in h.sent("e0", p.Launch)] == ["b-early/0"]


def test_lb_suspends_on_the_most_loaded_node_and_avoids_memory_pressure():
    h = Harness(executors=[("a1", "A"), ("a2", "A"), ("b1", "B")])
    batch = h.submit("b", "batch", 3)
    for executor_id, task_id in zip(("a1", "a2", "b1"), batch, strict=True):
        h.start(executor_id, task_id)
    for executor_id in ("a1", "a2", "b1"):
        h.sent(executor_id)
    # a1 is under memory pressure: a2 (same, most loaded node) is the victim.
    h.report("a1", p.Heartbeat("a1", "A", 1, 0, 1, 1, 0, 0, 1, 1, 95.0))
    h.submit("s", "stream", 1)
    assert h.sent("a2", p.Suspend) and not h.sent("a1") and not h.sent("b1")
    # Next one balances: node A now runs 1, node B 1; a1 is still under pressure, so b1.
    h.submit("s2", "stream", 1)
    assert h.sent("b1", p.Suspend) and not h.sent("a1")


def test_fifo_never_suspends_and_keeps_arrival_order():
    h = Harness(policy="fifo", executors=[("e0", "n0")])
    h.submit("b", "batch", 2)
    h.start("e0", "b/0")
    h.submit("s", "stream", 1)
    assert h.sent("e0") == [
        p.Launch(
            "b/0",
            "tidal.workloads.synthetic:total",
            None,
            payload(0),
            0,
            "batch",
            h.clock.now,
            suspensions_left=3,  # the cluster's cap, none used (runtime/lanes.py)
        )
    ]
    h.finish("e0", "b/0")
    assert [m.task_id for m in h.sent("e0", p.Launch)] == ["b/1"]
    h.start("e0", "b/1")
    h.finish("e0", "b/1")
    assert [m.task_id for m in h.sent("e0", p.Launch)] == ["s/0"]


def test_an_unsuspendable_task_keeps_its_slot_and_the_stream_task_is_withdrawn():
    h = Harness(executors=[("e0", "n0"), ("e1", "n1")])
    batch = h.submit("b", "batch", 2)
    h.start("e0", batch[0])
    h.start("e1", batch[1])
    h.sent("e0"), h.sent("e1")
    (stream,) = h.submit("s", "stream", 1)
    target = "e0" if h.sent("e0", p.Suspend) else "e1"
    other = "e1" if target == "e0" else "e0"
    victim = batch[0] if target == "e0" else batch[1]
    h.report(target, p.SuspendFailed(victim, "no record boundary", 100 * MS))
    assert [(type(m), m.task_id) for m in h.sent(target)] == [(p.Kill, stream)]
    assert h.core.records.tasks[victim].unsuspendable
    h.report(target, p.Killed(stream, 0, {"running_ns": 0}))
    # Withdrawn without having run: requeued, not a new attempt, placed on the other executor.
    sent = h.sent(other)
    assert [(type(m), m.task_id) for m in sent] == [
        (p.Suspend, batch[1] if other == "e1" else batch[0]),
        (p.Launch, stream),
    ]
    assert sent[1].attempt == 0


def test_cancel_pending_and_running_tasks():
    h = Harness(executors=[("e0", "n0")])
    batch = h.submit("b", "batch", 2)
    h.start("e0", batch[0])
    h.handle(ClientRequest("c", p.Cancel([batch[1], batch[0], "unknown"])))
    assert h.results[batch[1]][0][1] == "cancelled"
    assert [(type(m), m.task_id) for m in h.sent("e0")][-1] == (p.Kill, batch[0])
    h.report("e0", p.Killed(batch[0], 0, {"running_ns": 3 * MS}))
    assert h.results[batch[0]][0][1] == "cancelled"


def test_bad_submissions_fail_their_tasks_with_the_reason():
    h = Harness()
    h.handle(ClientRequest("c", p.Submit("j", "urgent", 0, None, "m:f", None, [["j/0", b""]], 0)))
    (item,) = h.results["j/0"]
    assert item[1] == "failed" and "unknown priority 'urgent'" in item[3][1]
    h.submit("dup", "batch", 1)
    h.handle(ClientJoined("c2"))
    h.handle(ClientRequest("c2", p.Submit("dup", "batch", 0, None, "m:f", None, [["x/0", b""]], 0)))
    assert "exists already" in h.results["x/0"][0][3][1]
    # The same job again from its own client is one that reconnected and could not be sure
    # we had it: nothing changes, and nothing fails.
    h.handle(
        ClientRequest("c", p.Submit("dup", "batch", 0, None, "m:f", None, [["dup/0", b""]], 0))
    )
    assert h.core.records.jobs["dup"].total == 1 and "dup/0" not in h.results


@pytest.mark.parametrize(
    "entry",
    [
        ["j/0", [[1]], {}],  # protocol 2's [task_id, args, kwargs]
        ["j/0", [[1]]],  # arguments, not their payload
        ["j/0", "\x92\x90\x80"],  # a str is not a payload
        ["j/0", b"", {"preferred": "n0"}],
        ["j/0"],
    ],
)
def test_a_task_entry_that_is_not_an_id_and_a_payload_refuses_the_job(entry):
    h = Harness()
    h.handle(ClientRequest("c", p.Submit("j", "batch", 0, None, "m:f", None, [entry], 0)))
    (item,) = h.results["j/0"]
    assert item[1] == "failed" and "each task must be [task_id, payload]" in item[3][1]
    assert "j" not in h.core.records.jobs


# ---- payloads are opaque: moved, never opened --------------------------------------------------

NOT_MSGPACK = b"\xc1\xc1 not msgpack \xff"  # 0xc1 is a byte msgpack never uses


def test_the_core_forwards_payloads_it_cannot_decode_unchanged():
    h = Harness(executors=[("e0", "n0")])
    submit = p.Submit("j", "batch", 0, None, "m:f", None, [["j/0", NOT_MSGPACK], ["j/1", b""]], 0)
    h.handle(ClientRequest("c", submit))
    (launch,) = h.sent("e0", p.Launch)
    assert launch.task_id == "j/0" and launch.payload is NOT_MSGPACK  # the very same bytes
    h.start("e0", "j/0")
    h.finish("e0", "j/0", result=NOT_MSGPACK[::-1])  # a result that is no payload either
    assert h.results["j/0"][0][1:3] == ["finished", NOT_MSGPACK[::-1]]
    (launch,) = h.sent("e0", p.Launch)
    assert launch.payload == b""


def test_a_chunk_carries_its_subtasks_payloads_unchanged_and_forwards_their_results():
    h = Harness(executors=[("e0", "n0")])
    blobs = [NOT_MSGPACK + bytes([i]) for i in range(3)]
    tasks = [[f"j/{i}", blob] for i, blob in enumerate(blobs)]
    h.handle(
        ClientRequest("c", p.Submit("j", "batch", 0, None, "m:f", None, tasks, 0, {"chunksize": 3}))
    )
    (chunk,) = h.sent("e0", p.LaunchChunk)
    assert chunk.subtasks == tasks
    items = [
        [f"j/{i}", "finished", blob[::-1], None, {"running_ns": 1}] for i, blob in enumerate(blobs)
    ]
    h.report("e0", p.ChunkResults(chunk.chunk_id, items))
    assert [h.results[f"j/{i}"][0][2] for i in range(3)] == [b[::-1] for b in blobs]


def test_a_done_task_lets_go_of_its_payload():
    h = Harness(executors=[("e0", "n0")])
    (task,) = h.submit("b", "batch", 1)
    assert h.core.records.tasks[task].payload == payload(0)
    h.start("e0", task)
    h.finish("e0", task)
    assert h.core.records.tasks[task].payload == b""


def test_prefetch_grows_for_tiny_tasks_only():
    h = Harness(executors=[("e0", "n0")])
    h.submit("tiny", "batch", 200)
    (first,) = h.sent("e0", p.Launch)  # nothing known about the tasks yet: one at a time
    h.start("e0", first.task_id)
    h.report(
        "e0", p.Finished(first.task_id, 0, payloads.pack_payload(None), {"running_ns": 10_000})
    )
    # Tasks of ~10 us: the core now keeps a queue of them on the executor.
    assert 10 < len(h.sent("e0", p.Launch)) <= 1 + h.core.records.max_prefetch

    h = Harness(executors=[("e0", "n0")])
    h.submit("long", "batch", 5)
    (first,) = h.sent("e0", p.Launch)
    h.start("e0", first.task_id)
    h.report(
        "e0", p.Finished(first.task_id, 0, payloads.pack_payload(None), {"running_ns": 500 * MS})
    )
    assert len(h.sent("e0", p.Launch)) == 1  # long tasks: no prefetch


def test_a_prefetch_queue_is_refilled_in_batches_not_a_launch_per_task_ended():
    h = Harness(executors=[("e0", "n0")])
    h.submit("tiny", "batch", 2_000)
    (first,) = h.sent("e0", p.Launch)
    tiny = {"running_ns": 10_000}
    h.start("e0", first.task_id)
    h.report("e0", p.Finished(first.task_id, 0, payloads.pack_payload(None), tiny))
    queue = [m.task_id for m in h.sent("e0", p.Launch)]
    depth = h.core.records.prefetch_depth()
    assert len(queue) == depth + 1 > 10
    refills = []
    for task_id in queue:  # each takes the slot as it ends (its start folded into its end)
        h.report("e0", p.Finished(task_id, 0, payloads.pack_payload(None), tiny))
        refills.append(len(h.sent("e0", p.Launch)))
    # Nothing while the executor holds more than half its room, then a refill of half.
    room = depth + 1
    ended = room - room // 2
    assert refills == [0] * (ended - 1) + [ended] + [0] * (room - ended)


def test_unknown_policy_names_the_known_ones():
    with pytest.raises(
        UnknownPolicy, match="known policies are adaptive, fair, fifo, kill, lb, lma, static"
    ):
        SchedulerCore("nope")


def suspended_before_it_ran_then_resumed(h: Harness) -> str:
    """A batch task launched on e0, suspended there before it started (a stream task took
    its slot, and ended), and sent a resume: its id."""
    (batch,) = h.submit("b", "batch", 1)
    h.sent("e0")  # launched, not started yet
    (stream,) = h.submit("s", "stream", 1)
    assert [type(m) for m in h.sent("e0")] == [p.Suspend, p.Launch]
    h.report("e0", p.Suspended(batch, 1000, 0, h.clock.now))
    h.start("e0", stream)
    h.finish("e0", stream)
    assert [type(m) for m in h.sent("e0")] == [p.Resume]
    return batch


def test_a_task_suspended_before_it_ran_is_running_once_it_starts():
    h = Harness(executors=[("e0", "n0")])
    batch = suspended_before_it_ran_then_resumed(h)
    h.start("e0", batch)  # the kernel reports a first start, not a resumption
    assert h.state(batch) is TaskState.RUNNING
    h.finish("e0", batch)
    assert h.results[batch][0][4]["started_at_ns"] is not None


def test_a_kill_without_requeue_fails_the_task_with_the_reason():
    class KillOnce(Policy):
        name = "kill-once"

        def tasks_submitted(self, view, tasks):
            for t in tasks:
                yield d.Launch(t.task_id, "e0")

        def tick(self, view):
            for t in view.running():
                yield d.Kill(t.task_id, requeue=False)

    h = Harness(policy=KillOnce(), executors=[("e0", "n0")])
    (task,) = h.submit("b", "batch", 1)
    h.start("e0", task)
    h.handle(Tick())
    assert [type(m) for m in h.sent("e0")][-1] is p.Kill
    h.report("e0", p.Killed(task, 0, {"running_ns": 5 * MS}))
    (item,) = h.results[task]
    assert item[1] == "failed" and item[3][0] == "TaskKilled" and "kill-once" in item[3][1]


class ScriptedTicks(Policy):
    """Makes, at the next tick, exactly the decisions a test put in `next`."""

    name = "scripted"

    def __init__(self):
        self.next = []

    def tick(self, view):
        decisions, self.next = self.next, []
        return decisions


def test_a_resumed_task_behind_an_unsuspendable_one_stays_tracked():
    policy = ScriptedTicks()
    h = Harness(policy=policy, executors=[("e0", "n0")], heartbeat_ns=100 * MS)
    h.submit("b", "batch", 2)
    for decisions, reports in [
        ([d.Launch("b/0", "e0")], [p.Started("b/0", 0, 1)]),
        ([d.Suspend("b/0")], [p.Suspended("b/0", 1, 1, 1)]),
        ([d.Launch("b/1", "e0")], [p.Started("b/1", 0, 1)]),
        # The suspend frees the slot at once in the core's view, so the resume is valid ...
        ([d.Suspend("b/1"), d.Resume("b/0")], [p.SuspendFailed("b/1", "no boundary", 1)]),
    ]:
        policy.next = decisions
        h.handle(Tick())
        for report in reports:
            h.report("e0", report)
    # ... but b/1 could not be suspended: b/0 waits behind it on e0, and must stay tracked.
    assert h.state("b/1") is TaskState.RUNNING and h.state("b/0") is TaskState.RESUMING
    h.finish("e0", "b/1")
    h.report("e0", p.Resumed("b/0", 1, 1))
    assert h.core.records.executors["e0"].slot_task.task_id == "b/0"
    h.clock.now += 1_000 * MS  # e0 goes silent: b/0's state is lost with it, so it reruns
    h.handle(Tick())
    assert h.state("b/0") is not TaskState.DONE and h.core.records.tasks["b/0"].attempt == 1


def test_a_resumed_task_overtaken_by_a_prefetched_one_stays_tracked():
    policy = ScriptedTicks()
    h = Harness(policy=policy, executors=[("e0", "n0")], heartbeat_ns=100 * MS)
    h.submit("b", "batch", 3)
    for decisions, reports in [
        # A tiny task first, so that the core keeps a prefetch queue on e0.
        ([d.Launch("b/2", "e0")], [p.Started("b/2", 0, 1)]),
        ([], [p.Finished("b/2", 0, payloads.pack_payload(None), {"running_ns": 10_000})]),
        ([d.Launch("b/0", "e0")], [p.Started("b/0", 0, 1)]),
        ([d.Suspend("b/0")], [p.Suspended("b/0", 1, 1, 1)]),
        # The resume and a prefetched launch go out together; e0 starts the launch before
        # the resume reaches it, then runs b/0 next.
        ([d.Resume("b/0"), d.Launch("b/1", "e0")], [p.Started("b/1", 0, 1)]),
    ]:
        policy.next = decisions
        h.handle(Tick())
        for report in reports:
            h.report("e0", report)
    executor = h.core.records.executors["e0"]
    assert executor.slot_task.task_id == "b/1" and [t.task_id for t in executor.queued] == ["b/0"]
    h.clock.now += 1_000 * MS  # e0 goes silent: b/0's state is lost with it, so it reruns
    h.handle(Tick())
    assert h.state("b/0") is TaskState.PENDING and h.core.records.tasks["b/0"].attempt == 1


def test_a_kill_that_crossed_the_tasks_finish_is_expected_not_warned_about(caplog):
    h = Harness(policy="kill", executors=[("e0", "n0")])
    (batch,) = h.submit("b", "batch", 1)
    h.start("e0", batch)
    h.submit("s", "stream", 1)
    assert [type(m) for m in h.sent("e0")][:2] == [p.Launch, p.Kill]
    h.finish("e0", batch)  # it finished before the kill arrived

    with caplog.at_level(logging.DEBUG, logger="tidal.scheduler"):
        h.report("e0", p.Refused("kill", batch, "task is not alive (unknown here)"))

    assert [r.levelno for r in caplog.records] == [logging.DEBUG]
    assert h.results[batch][-1][1] == "finished"


class KillsWhateverRuns(Policy):
    """Launches onto free slots and kills every running batch task at each tick, asking
    to requeue it: a policy that would starve a task without the core's kill cap."""

    name = "kills-whatever-runs"

    def tasks_submitted(self, view, tasks):
        for executor, task in zip(view.free_slots(), view.pending(), strict=False):
            yield d.Launch(task.task_id, executor.executor_id)

    slot_freed = tasks_submitted

    def tick(self, view):
        for task in view.running("batch"):
            yield d.Kill(task.task_id, requeue=True)


def test_the_core_caps_kills_as_it_caps_suspensions():
    h = Harness(policy=KillsWhateverRuns(), executors=[("e0", "n0")], max_suspensions=2)
    (task,) = h.submit("b", "batch", 1)
    for attempt in range(3):
        (launch,) = h.sent("e0", p.Launch)
        assert launch.attempt == attempt
        h.start("e0", task, attempt)
        h.handle(Tick())
        if attempt == 2:
            break
        assert [type(m) for m in h.sent("e0")] == [p.Kill]
        h.report("e0", p.Killed(task, attempt, {"running_ns": 1_000}))
    # Killed twice, the cap: the third attempt runs to its end, however the policy asks.
    assert h.sent("e0") == []
    assert h.core.refused[-1][1] == "kill cap reached (2 of 2)"
    h.finish("e0", task, attempt=2)
    assert h.results[task][0][1] == "finished"


def test_journal_writes_and_log_entries_leave_the_core_as_notes():
    h = Harness(executors=[("e0", "n0")])
    submitted = h.core.handle(
        ClientRequest(
            CLIENT_ID, p.Submit("j", "batch", 0, None, TOTAL, None, [["j/0", payload(0)]], 0, None)
        )
    )
    (accepted,) = [n for n in submitted if isinstance(n, ev.JobAccepted)]
    assert accepted.client_id == CLIENT_ID and accepted.submit.job_id == "j"
    h.start("e0", "j/0")
    out = h.core.handle(ExecutorReport("e0", p.Finished("j/0", 0, payload(1), {})))
    (ended,) = [n for n in out if isinstance(n, ev.TaskEnded)]
    assert ended.job_id == "j" and ended.item[:2] == ["j/0", "finished"]
    # The note comes before the result it makes safe (the shell commits in between).
    assert out.index(ended) < next(i for i, x in enumerate(out) if isinstance(x, ToClient))
    lost = h.core.handle(ExecutorLeft("e0", "its connection closed"))
    assert ev.ExecutorLost("e0", "its connection closed") in lost


def test_the_kill_cap_follows_the_tasks_of_a_chunk_into_their_next_chunks():
    h = Harness(policy=KillsWhateverRuns(), executors=[("e0", "n0")], max_suspensions=2)
    h.submit("b", "batch", 4, options={"chunksize": 4})
    for attempt in range(3):
        (launch,) = h.sent("e0", p.LaunchChunk)
        assert len(launch.subtasks) == 4 and launch.chunk_id == f"b#{attempt + 1}"
        h.start("e0", launch.chunk_id)
        h.handle(Tick())
        if attempt == 2:
            break
        assert [type(m) for m in h.sent("e0")] == [p.Kill]
        h.report("e0", p.Killed(launch.chunk_id, 0, {"running_ns": 1_000}))
    # Each of its tasks was killed twice, in two chunks: the third chunk runs on.
    assert h.sent("e0") == []
    assert h.core.refused[-1][1] == "kill cap reached (2 of 2)"


def test_an_end_reported_without_its_start_counts_as_both():
    # An executor's task that ended before its started went out reports only its end
    # (runtime/reports.py): the task counts as started then, its slot is free again, and
    # the step notes the folded start (for the event log).
    h = Harness(executors=(("e0", "n0"),))
    first, second = h.submit("b", "batch", 2)
    assert [m.task_id for m in h.sent("e0", p.Launch)] == [first]
    assert h.state(first) is TaskState.LAUNCHED
    stats = {"running_ns": 3 * MS, "finished_at_ns": 20 * MS}
    h.report("e0", p.Finished(first, 0, payloads.pack_payload(1), stats))
    (item,) = h.results[first]
    assert item[1] == "finished" and item[4]["started_at_ns"] == 17 * MS
    assert ev.FoldedStart(first) in h.notes
    assert [m.task_id for m in h.sent("e0", p.Launch)] == [second]
    h.report("e0", p.Failed(second, 0, "ValueError", "no", "", stats))
    assert h.results[second][0][1] == "failed"
    assert h.core.records.executors["e0"].slot_task is None


def test_per_pass_the_policy_hears_once_of_an_executor_whose_tasks_ended():
    class Counting(Policy):
        name = "counting"

        def __init__(self):
            self.freed = []
            self.fifo = resolve_policy("fifo")

        def tasks_submitted(self, view, tasks):
            return self.fifo.tasks_submitted(view, tasks)

        def slot_freed(self, view, executor):
            self.freed.append(executor.executor_id)
            return self.fifo.slot_freed(view, executor)

    policy = Counting()
    h = Harness(policy, executors=(("e0", "n0"),), consult_per_pass=True)
    tasks = h.submit("b", "batch", 50)
    (first,) = [m.task_id for m in h.sent("e0", p.Launch)]
    quick = {"running_ns": 10_000}  # tiny tasks: the core queues more behind the slot
    h.report("e0", p.Finished(first, 0, payloads.pack_payload(1), quick))
    assert h.sent("e0", p.Launch) == [] and policy.freed == []  # until the pass ends
    h.handle(ev.PassEnded())
    launched = [m.task_id for m in h.sent("e0", p.Launch)]
    assert len(launched) > 3 and policy.freed == ["e0"]
    for task_id in launched[:3]:
        h.report("e0", p.Finished(task_id, 0, payloads.pack_payload(1), quick))
    h.handle(ev.PassEnded())
    assert policy.freed == ["e0", "e0"]
    assert [m.task_id for m in h.sent("e0", p.Launch)] == tasks[len(launched) + 1 :][:3]


def test_an_end_without_its_start_after_a_suspension_before_it_ran_counts_as_both():
    # A task suspended before it ever ran sends its first `started` when resumed, and that
    # one can be folded too: its end then comes while the scheduler has it resuming.
    h = Harness(executors=(("e0", "n0"),))
    batch = suspended_before_it_ran_then_resumed(h)
    assert h.state(batch) is TaskState.RESUMING
    stats = {"running_ns": 3 * MS, "finished_at_ns": 20 * MS, "suspensions": 1}
    h.report("e0", p.Finished(batch, 0, payloads.pack_payload(1), stats))
    (item,) = h.results[batch]
    assert item[1] == "finished" and item[4]["started_at_ns"] == 17 * MS
    assert item[4]["queued_ns"] is not None and ev.FoldedStart(batch) in h.notes


def test_an_unreadable_submit_fails_its_tasks_unless_its_client_sent_that_job_before():
    h = Harness(executors=[("e0", "n0")])
    (task_id,) = h.submit("j", "batch", 1)  # CLIENT_ID's, running
    h.handle(SubmitUnreadable(CLIENT_ID, "j", [task_id], "its submit did not decode: x"))
    assert task_id not in h.results  # its own job sent again, mangled: nothing changes
    h.handle(ClientJoined("other"))
    h.handle(SubmitUnreadable("other", "j", ["j/7"], "its submit did not decode: y"))
    ((_, outcome, _, error, _),) = h.results["j/7"]  # another client's job id: refused
    assert outcome == "failed" and "did not decode: y" in error[1]
    assert task_id not in h.results  # and the first client's job goes on
    h.handle(SubmitUnreadable(CLIENT_ID, "b", None, "its submit did not decode: z"))
    assert "did not decode: z" in h.refusals["b"][1]  # a bulk job: one answer for all its tasks

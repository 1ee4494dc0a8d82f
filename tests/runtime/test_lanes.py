"""Lanes (runtime/lanes.py): the kernel's take of a lane's stream task, the executor's lane
socket, the client's lanes, and stream tasks sent by lanes on a LocalCluster."""

from __future__ import annotations

import gc
import os
import signal
import threading
import time

import pytest
import zmq

from tidal.runtime import payloads
from tidal.runtime import protocol as p
from tidal.runtime.client import Client
from tidal.runtime.cluster import LocalCluster
from tidal.runtime.functions import FunctionRef
from tidal.runtime.kernel import Kernel
from tidal.runtime.lanes import (
    LANE_GRACE_S,
    LANE_MAX_FRAME_BYTES,
    ClientLanes,
    ExecutorLane,
    take_decision,
)
from tidal.runtime.runstate import RunState, TaskRecord
from tidal.scheduler.eventlog import read_events
from tidal.workloads.synthetic import spin, total

from .test_kernel import Transport  # the kernel tests' in-memory reports

TOTAL = FunctionRef("tidal.workloads.synthetic:total")


@pytest.fixture
def make_kernel():
    def make():
        transport = Transport()
        return Kernel(transport), transport

    return make


def submit_frame(job_id: str, values: list[int], priority: str = "stream", tasks: int = 1) -> bytes:
    calls = [[f"{job_id}/{i}", payloads.pack_call([values], {})] for i in range(tasks)]
    return p.encode(p.Submit(job_id, priority, 0, None, TOTAL.ref, None, calls, 0))


# ---- the take decision ------------------------------------------------------------------------


def record(priority: str = "batch", left: int | None = 2, state=RunState.RUNNING) -> TaskRecord:
    r = TaskRecord("b", sum, [], {}, 0, priority)
    r.state, r.suspensions_left = state, left
    return r


def test_a_lane_task_takes_a_free_slot_or_a_batch_task_s_with_suspensions_left():
    assert take_decision(None, stream_ahead=False, known=False) == (True, None)
    batch = record()
    assert take_decision(batch, stream_ahead=False, known=False) == (True, batch)
    # Not: no suspension left (or none allowed), a stream task there or waiting, a task of
    # the same id here, a task being killed.
    assert take_decision(record(left=0), False, False) == (False, None)
    assert take_decision(record(left=None), False, False) == (False, None)
    assert take_decision(record("stream", left=None), False, False) == (False, None)
    assert take_decision(None, stream_ahead=True, known=False) == (False, None)
    assert take_decision(None, stream_ahead=False, known=True) == (False, None)
    # Sent again by a second lane: a free slot only (its first lane may be running it).
    assert take_decision(None, False, False, again=True) == (True, None)
    assert take_decision(batch, False, False, again=True) == (False, None)
    killed = record()
    killed.kill_requested = True
    assert take_decision(killed, False, False) == (False, None)


# ---- the kernel -------------------------------------------------------------------------------


def taking_at(kernel, at: int, n: int, lane_job: str):
    """Records 0..n-1; at record `at`, a lane's stream task comes (as the hub reads it)."""
    for i in range(n):
        if i == at:
            frame = submit_frame(lane_job, [1, 2, 3])
            payload = p.decode(frame).tasks[0][1]
            kernel.take(f"{lane_job}/0", TOTAL, payload, ("tok", frame, False))
        yield i


def test_the_kernel_parks_a_batch_task_for_a_lane_task_and_forwards_first(make_kernel):
    kernel, transport = make_kernel()
    kernel.launch("b", sum, [taking_at(kernel, 10, 100, "c-1")], suspensions_left=1)
    kernel.run()
    ops = [(m.op, getattr(m, "task_id", None)) for m in transport.sent]
    # The forward comes before any report on either task; the batch task is parked there.
    assert ops == [
        ("started", "b"),
        ("forward", None),
        ("suspended", "b"),
        ("started", "c-1/0"),
        ("finished", "c-1/0"),
    ]
    (forward,) = transport.of(p.Forward)
    assert forward.taken and forward.parked == "b" and forward.token == "tok"
    assert p.decode(forward.submit).job_id == "c-1"
    assert transport.outcome("c-1/0").result == 6
    assert transport.of(p.Suspended, "b")[0].records == 11  # parked with record 10 read
    kernel.resume("b")  # the scheduler resumes it: it goes on where it stopped
    kernel.run()
    assert transport.outcome("b").result == sum(range(100))


def test_a_batch_task_without_suspensions_left_keeps_its_slot(make_kernel):
    kernel, transport = make_kernel()
    kernel.launch("b", sum, [taking_at(kernel, 10, 100, "c-1")], suspensions_left=0)
    kernel.run()
    (forward,) = transport.of(p.Forward)
    assert not forward.taken and forward.parked is None  # the scheduler places it
    assert not transport.of(p.Suspended) and not transport.of(p.Started, "c-1/0")
    assert transport.outcome("b").result == sum(range(100))


def test_the_second_lane_task_waits_for_no_stream_task_and_the_cap_counts_down(make_kernel):
    kernel, transport = make_kernel()

    def two_takes():
        for i in range(100):
            if i in (10, 20):
                frame = submit_frame(f"c-{i}", [i])
                kernel.take(f"c-{i}/0", TOTAL, p.decode(frame).tasks[0][1], ("tok", frame, False))
            yield i

    kernel.launch("b", sum, [two_takes()], suspensions_left=1)
    kernel.run()  # the first takes the slot and ends; b stays parked
    kernel.resume("b")
    kernel.run()
    forwards = transport.of(p.Forward)
    assert [(f.taken, f.parked) for f in forwards] == [(True, "b"), (False, None)]
    assert transport.outcome("c-10/0").result == 10
    assert not transport.of(p.Started, "c-20/0")  # left to the scheduler
    assert transport.outcome("b").result == sum(range(100))


def test_a_lane_task_already_launched_here_by_the_scheduler_is_not_taken_again(make_kernel):
    kernel, transport = make_kernel()
    frame = submit_frame("c-1", [4, 5])
    payload = p.decode(frame).tasks[0][1]
    kernel.launch("c-1/0", TOTAL, payload=payload, priority="stream")  # its grace ran out
    kernel.take("c-1/0", TOTAL, payload, ("tok", frame, False))
    kernel.run()
    (forward,) = transport.of(p.Forward)
    assert not forward.taken  # the scheduler has it; the one launch runs, once
    assert len(transport.of(p.Started, "c-1/0")) == 1 and transport.outcome("c-1/0").result == 9


def test_a_lane_task_sent_again_parks_nothing(make_kernel):
    kernel, transport = make_kernel()

    def again_at_10():
        for i in range(100):
            if i == 10:
                frame = submit_frame("c-1", [1])
                kernel.take("c-1/0", TOTAL, p.decode(frame).tasks[0][1], ("tok", frame, True))
            yield i

    kernel.launch("b", sum, [again_at_10()], suspensions_left=5)
    kernel.run()
    (forward,) = transport.of(p.Forward)
    assert not forward.taken and not transport.of(p.Suspended)
    assert transport.outcome("b").result == sum(range(100))


def test_an_idle_kernel_runs_a_lane_task_at_once(make_kernel):
    kernel, transport = make_kernel()
    frame = submit_frame("c-1", [4, 5])
    kernel.take("c-1/0", TOTAL, p.decode(frame).tasks[0][1], ("tok", frame, False))
    kernel.run()
    (forward,) = transport.of(p.Forward)
    assert forward.taken and forward.parked is None
    assert transport.outcome("c-1/0").result == 9


# ---- the executor's lane and the client's lanes -----------------------------------------------


@pytest.fixture
def context():
    ctx = zmq.Context()
    yield ctx
    ctx.term()


def wait_for(predicate, timeout=5.0):
    """Poll `predicate` (a socket's state, not time) until true; fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.001)


@pytest.fixture
def lane_and_peer(context):
    """An executor's lane, and a DEALER connected to it."""
    lane = ExecutorLane(context, "127.0.0.1")
    peer = context.socket(zmq.DEALER)
    peer.linger = 0
    peer.connect(lane.address)
    yield lane, peer
    peer.close()
    lane.close()


def test_a_lane_reads_lane_submits_and_names_what_is_wrong_with_the_rest(lane_and_peer):
    lane, peer = lane_and_peer
    good = submit_frame("c-1", [1])
    frames = [
        p.encode(p.LaneSubmit("tok", good, time.monotonic_ns())),
        b"\x93junk",
        p.encode(p.Ping("x", 1)),
        p.encode(p.LaneSubmit("tok", b"not msgpack", time.monotonic_ns())),
        p.encode(
            p.LaneSubmit("tok", submit_frame("c-2", [1], priority="batch"), time.monotonic_ns())
        ),
        p.encode(p.LaneSubmit("tok", submit_frame("c-3", [1], tasks=2), time.monotonic_ns())),
        # Sent longer ago than its grace (by this host's clock): its client has sent it
        # elsewhere; skipped, unread, and counted.
        p.encode(p.LaneSubmit("tok", submit_frame("c-4", [1]), 1)),
    ]
    for frame in frames:
        peer.send(frame)
    items = []
    wait_for(lambda: items.extend(lane.read()) or len(items) + lane.stale == len(frames))
    msg, submit, task_id, payload = items[0]
    assert msg.token == "tok" and submit.job_id == "c-1" and task_id == "c-1/0"
    assert payloads.unpack_call(payload) == ([[1]], {})
    errors = [str(e) for e in items[1:]]
    assert all(isinstance(e, p.ProtocolError) for e in items[1:])
    assert "not valid msgpack" in errors[0]
    assert "ping is not sent to a lane" in errors[1]
    assert "not valid msgpack" in errors[2]
    assert errors[3] == errors[4] == "a lane takes a submit of one stream task only"
    assert lane.bad_frames == 5 and lane.stale == 1


def test_a_frame_over_the_lane_s_limit_drops_its_sender_and_nothing_else(context):
    lane = ExecutorLane(context, "127.0.0.1")
    big, small = context.socket(zmq.DEALER), context.socket(zmq.DEALER)
    try:
        for s in (big, small):
            s.linger = 0
            s.connect(lane.address)
        big.send(b"x" * (LANE_MAX_FRAME_BYTES + 4096))
        small.send(p.encode(p.LaneSubmit("tok", submit_frame("c-1", [1]), time.monotonic_ns())))
        items = []
        wait_for(lambda: items.extend(lane.read()) or items)
        assert len(items) == 1 and items[0][1].job_id == "c-1"
    finally:
        big.close()
        small.close()
        lane.close()


def finished(task_id: str, attempt: int = 0, result: bytes = b"\x01", end_ns: int = 0):
    stats = {"executor_id": "e0", "running_ns": 300, "suspended_ns": 0, "suspensions": 0}
    return p.Finished(task_id, attempt, result, {**stats, "records": 2, "finished_at_ns": end_ns})


def test_a_lane_sends_a_lane_task_s_end_to_the_client_that_sent_it_and_nothing_else(context):
    lane = ExecutorLane(context, "127.0.0.1")
    peers = [context.socket(zmq.DEALER) for _ in range(2)]
    try:
        for peer in peers:
            peer.linger = 0
            peer.connect(lane.address)
        sent_ns = time.monotonic_ns()
        end_ns = sent_ns + 10**6  # the tasks' end, as the kernel stamps it
        for job_id, peer in (("a-1", peers[0]), ("a-2", peers[0]), ("b-1", peers[1])):
            peer.send(p.encode(p.LaneSubmit("tok", submit_frame(job_id, [1]), sent_ns)))
        items = []
        wait_for(lambda: items.extend(lane.read()) or len(items) == 3)
        reports, reads = [], []
        emit = lane.answering(reports.append, lambda: reads.append(lane.read()))
        failed = p.Failed("b-1/0", 0, "ValueError", "bad", "tb", finished("x").stats)
        # Not a lane task, a later attempt, a start: reported, not answered.
        for msg in (finished("other/0"), finished("a-2/0", attempt=1), p.Started("a-1/0", 0, 5)):
            emit(msg)
        emit(failed)
        assert reads == []  # nothing waits on the lane
        # A lane submit comes before the next answer: that send may take the signal the
        # gate's watcher waits for, so the lane is read at once.
        peers[1].send(p.encode(p.LaneSubmit("tok", submit_frame("b-2", [1]), sent_ns)))
        wait_for(lane.waiting)
        emit(finished("a-1/0", end_ns=end_ns))
        assert [[i[1].job_id for i in items] for items in reads] == [["b-2"]]
        emit(finished("a-1/0"))  # a second end of it (cannot be): answered once
        kinds = [p.Finished, p.Finished, p.Started, p.Failed, p.Finished, p.Finished]
        assert [type(m) for m in reports] == kinds  # every report still goes to the scheduler
        got = [p.decode(peer.recv()) for peer in peers]
        assert lane.answered == 2
    finally:
        for peer in peers:
            peer.close()
        lane.close()
    assert all(type(m) is p.LaneResults and len(m.items) == 1 for m in got)
    mine, theirs = got[0].items[0], got[1].items[0]
    assert mine[:4] == ["a-1/0", "finished", b"\x01", None]
    assert theirs[:4] == ["b-1/0", "failed", None, ["ValueError", "bad", "tb"]]
    stats = mine[4]
    assert stats["executor_id"] == "e0" and stats["attempt"] == 0 and stats["work_lost_ns"] == 0
    assert stats["started_at_ns"] == end_ns - 300  # its end less its running time
    assert stats["queued_ns"] == 10**6 - 300  # its start less its lane submit's sent_ns


def test_a_lane_result_too_big_for_the_lane_is_left_to_the_scheduler(lane_and_peer):
    lane, peer = lane_and_peer
    peer.send(p.encode(p.LaneSubmit("tok", submit_frame("a-1", [1]), time.monotonic_ns())))
    wait_for(lane.read)
    lane.answer(finished("a-1/0", result=b"x" * LANE_MAX_FRAME_BYTES))
    assert lane.answered == 0


def test_client_lanes_take_results_only_by_the_lane_a_task_went_by_and_drop_the_copy(context):
    lanes_ = [ExecutorLane(context, "127.0.0.1") for _ in range(2)]
    client = ClientLanes(context)
    try:
        client.update(p.Lanes("tok", [["e0", lanes_[0].address], ["e1", lanes_[1].address]]))
        assert client.generation == 2 and len(client.descriptors()) == 2
        assert client.send("a-1/0", submit_frame("a-1", [1]))  # by e0 (round robin)
        assert client.send("a-2/0", submit_frame("a-2", [1]))  # by e1
        got = [[], []]
        wait_for(lambda: [got[i].extend(lane.read()) for i, lane in enumerate(lanes_)] and all(got))
        assert [g[0][1].job_id for g in got] == ["a-1", "a-2"]
        lanes_[0].answer(finished("a-1/0"))
        # e1 answers for a task that did not go by it, and sends junk: neither is taken.
        to_client = lanes_[1]._asked["a-2/0"][0]
        stray = [["a-1/0", "finished", b"\x02", None, {}]]
        lanes_[1].socket.send_multipart([to_client, p.encode(p.LaneResults(stray))])
        lanes_[1].socket.send_multipart([to_client, b"junk"])
        items, problems = [], []

        def read():
            new_items, new_problems = client.read()
            items.extend(new_items)
            problems.extend(new_problems)
            return items and problems

        wait_for(lambda: client.waiting() or items)
        wait_for(read)
        assert [item[:3] for item in items] == [["a-1/0", "finished", b"\x01"]]
        assert len(problems) == 1 and "from the lane of e1" in problems[0]
        # As the IO thread does: the item is handled as a result (`done`), then `took`.
        assert client.done("a-1/0", "e0") is False
        client.took(items)
        assert client.results_by_lane == 1
        assert client.done("a-1/0", "e0") is True  # the scheduler's copy: dropped
        assert client.done("a-1/0", "e0") is False  # and forgotten
        assert client.done("a-2/0", "e1") is False  # came by the scheduler only
    finally:
        client.close()
        for lane in lanes_:
            lane.close()


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_client_lanes_spread_submits_and_give_back_what_is_overdue_or_orphaned(context):
    lanes_ = [ExecutorLane(context, "127.0.0.1") for _ in range(2)]
    clock = Clock()
    client = ClientLanes(context, clock=clock)
    try:
        assert not client.send("t0", b"x")  # no lanes yet: the scheduler takes it
        client.update(p.Lanes("tok", [["e0", lanes_[0].address], ["e1", lanes_[1].address]]))
        frame = submit_frame("c-1", [1])
        assert client.send("c-1/0", frame) and client.send("c-2/0", frame)
        got = [[], []]
        wait_for(lambda: [got[i].extend(lane.read()) for i, lane in enumerate(lanes_)] and all(got))
        assert [len(v) for v in got] == [1, 1]  # one each: neither lane had two at once
        assert got[0][0][0].token == "tok"
        assert not client.send("big", b"x" * (LANE_MAX_FRAME_BYTES + 1))
        assert client.overdue() == [] and client.next_due_s() == pytest.approx(LANE_GRACE_S)
        clock.now += LANE_GRACE_S
        # Overdue: the first goes by the other lane once; the second finds that lane silent
        # too (its own submit went overdue), so it goes to the scheduler at once.
        assert client.overdue() == ["c-2/0"]
        again = []
        wait_for(lambda: again.extend(lanes_[1].read()) or again)
        assert again[0][1].job_id == "c-1" and again[0][0].again  # e0's went by e1, again
        clock.now += LANE_GRACE_S
        assert client.overdue() == ["c-1/0"]  # tried twice: the scheduler's now
        assert client.next_due_s() is None
        # A lane gone: what went by it is given back at once.
        assert client.send("c-3/0", frame)
        assert client.update(p.Lanes("tok", [["e9", lanes_[1].address]])) == ["c-3/0"]
        # A lane submit cancelled meanwhile is neither sent again nor given back.
        assert client.send("gone/0", frame)
        client.done("gone/0", None)
        clock.now += LANE_GRACE_S
        assert client.overdue() == [] and client.next_due_s() is None
        # A lane whose submits keep going overdue is not used again until the next list.
        for i in range(3):
            assert client.send(f"late-{i}", frame)
            clock.now += LANE_GRACE_S
            assert client.overdue() == [f"late-{i}"]
        assert not client.send("c-5/0", frame)
        # A late result of its own makes a lane good again.
        client.update(p.Lanes("tok", [["e0", lanes_[0].address]]))
        for i in range(2):
            assert client.send(f"slow-{i}", frame)
            clock.now += LANE_GRACE_S
            assert client.overdue() == [f"slow-{i}"]
        client.done("slow-0", "e0")  # it ran long, and its result came from there
        assert client.send("slow-2", frame)
        clock.now += LANE_GRACE_S
        assert client.overdue() == ["slow-2"] and client.send("c-6/0", frame)
        # Junk in the list (peer input) is skipped.
        client.update(p.Lanes("tok", [["e1", "ipc:///x"], "junk", ["e2", 5]]))
        assert not client.send("c-4/0", frame)
    finally:
        client.close()
        for lane in lanes_:
            lane.close()


# ---- on a LocalCluster ------------------------------------------------------------------------


def lane_events(path, event: str) -> list[dict]:
    """The event log's records of `event` booked for a lane (`"lane": true`), so far."""
    return [r for r in read_events(path) if r.get("event") == event and r.get("lane")]


def test_stream_tasks_go_by_lanes_and_suspend_the_batch_tasks_there(tmp_path):
    log = tmp_path / "events.jsonl"
    with LocalCluster(executors=2, event_log=log) as cluster, Client(cluster) as client:
        wait_for(lambda: len(client._io.lanes._order) == 2, timeout=30)
        parts = [list(range(300_000))] * 2  # ~1.5 s each at 5 us a record
        batch = client.map(spin, parts, priority="batch", record_us=5.0, max_suspensions=50)
        client.wait_for_status(
            lambda s: sum(e["running"] is not None for e in s["executors"]) == 2, timeout=30
        )
        streams = []
        for i in range(20):  # one after another, as a stream's micro-batches come
            streams.append(client.submit(total, list(range(i)), priority="stream"))
            assert streams[-1].result(timeout=30) == sum(range(i))
        lanes = client._io.lanes
        assert lanes.sent_by_lane == 20
        # Their results came by the lanes too (a few may lose the race to the scheduler's
        # copy, handled first when both wait), and every copy that followed was dropped
        # quietly: none counts as a result for no future.
        assert lanes.results_by_lane >= 10
        wait_for(lambda: not lanes._answered, timeout=30)
        assert client.dropped_results == 0
        streams.append(client.submit(total, ["a", 1], priority="stream"))  # fails, by a lane
        with pytest.raises(TypeError, match="unsupported operand"):
            streams[-1].result(timeout=30)
        assert client.gather(batch, timeout=60) == [sum(parts[0])] * 2  # exact, once parked
        suspensions = sum(f.statistics().suspensions for f in batch)
        assert suspensions >= 1
        assert {f.statistics().attempt for f in streams} == {0}
    # Each ran where it was sent, taken there (no launch sent), and each suspension was one
    # an executor made for a lane's task (the scheduler sent none).
    launches = lane_events(log, "launch")
    assert sorted(r["task"] for r in launches) == sorted(f.task_id for f in streams)
    assert len(lane_events(log, "suspend")) == suspensions
    assert not [r for r in read_events(log) if r.get("event") == "suspend" and not r.get("lane")]


def test_jobs_released_with_a_lane_submit_reach_the_scheduler():
    with LocalCluster(executors=1) as cluster, Client(cluster) as client:
        wait_for(lambda: len(client._io.lanes._order) == 1, timeout=30)
        batch = [client.submit(total, [i]) for i in range(3)]  # three jobs, by the scheduler
        assert [f.result(timeout=30) for f in batch] == [0, 1, 2]
        assert client.status()["books"]["jobs"] == 3
        del batch  # released with the next job: a stream task, which goes by a lane
        gc.collect()
        assert client.submit(total, [5], priority="stream").result(timeout=30) == 5
        assert client._io.lanes.sent_by_lane == 1
        # The releases went at the IO thread's next pass (within 50 ms), not with it.
        wait_for(lambda: client.status()["books"]["jobs"] == 1, timeout=30)  # the stream job


def test_lane_tasks_never_take_a_batch_task_past_its_cap():
    with LocalCluster(executors=1) as cluster, Client(cluster) as client:
        wait_for(lambda: len(client._io.lanes._order) == 1, timeout=30)
        (batch,) = client.map(spin, [list(range(100_000))], record_us=10.0, max_suspensions=2)
        client.wait_for_status(lambda s: s["executors"][0]["running"] is not None, timeout=30)
        for i in range(12):  # one after another: each finds the batch task running again
            assert client.submit(total, [i], priority="stream").result(timeout=60) == i
        assert batch.result(timeout=60) == sum(range(100_000))
        assert batch.statistics().suspensions <= 2
        assert client._io.lanes.sent_by_lane >= 1


def test_client_lanes_take_results_on_one_thread_while_callers_send_on_others(context):
    lane = ExecutorLane(context, "127.0.0.1")
    client = ClientLanes(context)
    errors = []
    try:
        client.update(p.Lanes("tok", [["e0", lane.address]]))
        frame = submit_frame("c-1", [1])

        def sender(k):
            try:
                for i in range(3_000):
                    client.send(f"{k}-{i}", frame)
            except Exception as exc:
                errors.append(exc)

        threads = [threading.Thread(target=sender, args=(k,)) for k in range(2)]
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads):
            for task_id in list(client._sent):
                client.done(task_id, "e0")  # as results arrive on the IO thread
            lane.read()
        for t in threads:
            t.join()
    finally:
        client.close()
        lane.close()
    assert errors == []


def test_an_executor_on_the_pure_python_gate_opens_no_lane(monkeypatch):
    from tidal.runtime import executor as executor_module

    monkeypatch.setattr(executor_module, "GATE_IMPLEMENTATION", "python")
    ex = executor_module.Executor("tcp://127.0.0.1:9", realtime=False)
    try:
        assert ex._lane is None  # no watcher: a busy task thread would not hear of it
    finally:
        ex._reports.close(linger=0)
        ex._to_listener.close(linger=0)
        ex._context.term()
        ex._idle.close()
        ex._rss.close()


def test_without_lanes_stream_tasks_take_the_scheduler_s_path(monkeypatch):
    monkeypatch.setenv("TIDAL_LANES", "0")
    with LocalCluster(executors=1) as cluster, Client(cluster) as client:
        assert client.submit(total, [1, 2], priority="stream").result(timeout=30) == 3
        assert client._io.lanes.sent_by_lane == 0


def test_a_lane_task_whose_executor_stops_is_sent_to_the_scheduler_and_completes(tmp_path):
    log = tmp_path / "events.jsonl"
    with LocalCluster(executors=2, event_log=log) as cluster, Client(cluster) as client:
        wait_for(lambda: len(client._io.lanes._order) == 2, timeout=30)
        lanes = client._io.lanes
        # Stop the executor the next lane submit goes to: the frame waits there, unread.
        target = lanes._order[lanes._next % len(lanes._order)]
        (process,) = [q for q in cluster.processes[1:] if f"-{q.pid}-" in target]
        os.kill(process.pid, signal.SIGSTOP)
        try:
            future = client.submit(total, [5, 6], priority="stream")
            assert lanes._sent[future.task_id][0] == target
            # Its grace over, the client sends it to the scheduler, which runs it elsewhere.
            assert future.result(timeout=30) == 11
            assert future.statistics().executor_id != target
        finally:
            os.kill(process.pid, signal.SIGCONT)
        # Woken, the executor skips its stale copy (older than its grace, by this host's
        # clock): it neither runs it nor parks anything for it; lane tasks run there again.
        for i in range(4):
            later = client.submit(total, [i], priority="stream")
            assert later.result(timeout=30) == i

        def logged(task_id):
            return [r for r in read_events(log) if r.get("task") == task_id]

        wait_for(lambda: logged(later.task_id), timeout=30)  # (written at each tick)
        assert [r["executor"] for r in logged(future.task_id) if r["event"] == "started"] != [
            target
        ]
        assert all(r["executor"] != target for r in logged(future.task_id))

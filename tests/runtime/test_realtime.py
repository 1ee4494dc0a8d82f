"""A stream task's caller at real-time priority for its submit, and for a lane's task until
it waits or its result comes (runtime/realtime.py `CallerBoosts`), alone (a fake clock)
and on a LocalCluster."""

from __future__ import annotations

import os
import threading

import pytest

from tidal.runtime import realtime
from tidal.runtime.client import Client
from tidal.runtime.cluster import LocalCluster
from tidal.runtime.futures import TaskFuture
from tidal.runtime.lanes import LANE_MAX_FRAME_BYTES
from tidal.runtime.realtime import STREAM_REALTIME_NS, CallerBoosts, end_held, realtime_permitted
from tidal.workloads.synthetic import burn, total

from .test_lanes import Clock, wait_for  # a fake clock; polling a condition, not time

pytestmark = pytest.mark.skipif(
    not realtime_permitted(), reason="SCHED_FIFO needs root or CAP_SYS_NICE"
)

RESET = os.SCHED_RESET_ON_FORK


def policy() -> tuple[int, int]:
    return os.sched_getscheduler(0), os.sched_getparam(0).sched_priority


@pytest.fixture
def normal():
    """The test's thread at SCHED_OTHER before and after, whatever the test did."""
    os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
    yield
    os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))


def test_a_boost_puts_the_thread_at_fifo_without_its_children_and_back(normal):
    boosts = CallerBoosts(enabled=True)
    assert boosts.boost() is True
    assert policy() == (os.SCHED_FIFO | RESET, 1)  # a process started now runs normally
    boosts.end(True)
    assert policy() == (os.SCHED_OTHER, 0)
    boosts.end(False)  # not boosted: nothing
    assert policy() == (os.SCHED_OTHER, 0)


def test_a_thread_at_another_policy_keeps_it(normal):
    boosts = CallerBoosts(enabled=True)
    os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(5))
    assert boosts.boost() is False and policy() == (os.SCHED_FIFO, 5)
    os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
    # Moved during its boost (by the program): left where the program put it.
    assert boosts.boost() is True
    os.sched_setscheduler(0, os.SCHED_RR, os.sched_param(3))
    boosts.end(True)
    assert policy() == (os.SCHED_RR, 3)


def test_turned_off_it_boosts_nothing(monkeypatch, normal):
    monkeypatch.setenv(realtime.REALTIME_CALLERS_ENV, "0")
    assert CallerBoosts().boost() is False and policy() == (os.SCHED_OTHER, 0)


def test_a_stream_submit_is_sent_at_fifo_and_returns_at_normal_priority(normal):
    with LocalCluster(executors=1) as cluster, Client(cluster) as client:
        seen = []
        lanes, send_all = client._io.lanes, client._to_io.send_all

        def lane_send(*args):
            seen.append(("lane", policy()[0]))
            return lanes.__class__.send(lanes, *args)

        def queue_send(*args, **kwargs):
            seen.append(("queue", policy()[0]))
            return send_all(*args, **kwargs)

        lanes.send = lane_send
        client._to_io.send_all = queue_send
        assert client.submit(total, [1, 2], priority="stream").result(timeout=30) == 3
        assert seen and all(p == os.SCHED_FIFO | RESET for _, p in seen)
        assert policy() == (os.SCHED_OTHER, 0)
        seen.clear()
        assert client.submit(total, [3]).result(timeout=30) == 3  # a batch task's: not
        assert seen == [("queue", os.SCHED_OTHER)]
        # A big argument is packed (and spooled) before the boost, however long it takes.
        seen.clear()
        spool = client._spool

        def spooling(*args):
            seen.append(("spool", policy()[0]))
            return spool(*args)

        client._spool = spooling
        big = list(range(LANE_MAX_FRAME_BYTES))  # spooled
        assert client.submit(total, big, priority="stream").result(timeout=30) == sum(big)
        assert seen[0] == ("spool", os.SCHED_OTHER) and seen[-1][1] == os.SCHED_FIFO | RESET
        assert policy() == (os.SCHED_OTHER, 0)


def test_a_held_boost_ends_when_its_thread_waits_and_only_then(normal):
    boosts = CallerBoosts(enabled=True, clock=Clock())
    assert boosts.boost()
    tid, token = boosts.hold()
    assert policy() == (os.SCHED_FIFO | RESET, 1) and boosts.holding() == [tid]
    boosts.release(tid, object())  # not its token: nothing
    assert policy() == (os.SCHED_FIFO | RESET, 1)
    end_held()  # as TaskFuture.result does
    assert policy() == (os.SCHED_OTHER, 0) and boosts.holding() == []
    boosts.release(tid, token)  # its result, later: nothing more
    end_held()
    assert policy() == (os.SCHED_OTHER, 0)


def test_a_held_boost_ends_when_its_result_comes_or_its_time_is_up(normal):
    clock = Clock()
    boosts = CallerBoosts(enabled=True, clock=clock)
    done = threading.Event()
    held = []

    def submitter():  # a thread that submits and goes on without waiting
        boosts.boost()
        held.append(boosts.hold())
        done.wait(10)
        held.append(policy())

    thread = threading.Thread(target=submitter)
    thread.start()
    wait_for(lambda: held)
    tid, token = held[0]
    assert os.sched_getscheduler(tid) == os.SCHED_FIFO | RESET
    assert boosts.expire() == pytest.approx(STREAM_REALTIME_NS / 1e9)
    boosts.release(tid, token)  # its result came (on the IO thread)
    assert os.sched_getscheduler(tid) == os.SCHED_OTHER
    done.set()
    thread.join()
    assert held[1] == (os.SCHED_OTHER, 0)
    # Its time up: the IO thread's next pass ends it.
    assert boosts.boost()
    boosts.hold()
    clock.now += STREAM_REALTIME_NS
    assert boosts.expire() is None and policy() == (os.SCHED_OTHER, 0)


def test_a_held_boost_of_a_thread_gone_or_moved_is_left_alone(normal):
    boosts = CallerBoosts(enabled=True, clock=Clock())
    held = []

    def submitter():
        boosts.boost()
        held.append(boosts.hold())

    thread = threading.Thread(target=submitter)
    thread.start()
    thread.join()
    boosts.release(*held[0])  # no such thread now: nothing, no error
    assert boosts.holding() == []
    # Moved by the program while held: its policy stands, at its result and its time.
    assert boosts.boost()
    tid, token = boosts.hold()
    os.sched_setscheduler(0, os.SCHED_RR, os.sched_param(3))
    boosts.release(tid, token)
    assert policy() == (os.SCHED_RR, 3)
    os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
    assert boosts.boost() is True
    boosts.hold()
    assert boosts.boost() is True  # its next submit takes the held boost over
    boosts.hold()
    assert boosts.expire(everyone=True) is None and policy() == (os.SCHED_OTHER, 0)
    # The IO thread has stopped: nothing is held past a submit any more.
    assert boosts.boost() and boosts.hold() is None
    boosts.end(True)
    assert policy() == (os.SCHED_OTHER, 0)


def test_a_lane_task_s_caller_stays_boosted_until_it_waits_or_the_result_comes(monkeypatch, normal):
    monkeypatch.setattr(realtime, "STREAM_REALTIME_NS", 60 * 10**9)  # only those end it
    with LocalCluster(executors=1) as cluster, Client(cluster) as client:
        lanes, boosts = client._io.lanes, client._io.boosts
        wait_for(lambda: lanes.active, timeout=30)
        future = client.submit(burn, 300_000.0, priority="stream")  # 0.3 s, by a lane
        assert lanes.sent_by_lane == 1 and policy() == (os.SCHED_FIFO | RESET, 1)
        future.result(timeout=30)  # waits: its boost ends at once
        assert policy() == (os.SCHED_OTHER, 0) and boosts.holding() == []
        future = client.submit(burn, 100_000.0, priority="stream")
        assert policy()[0] == os.SCHED_FIFO | RESET
        wait_for(lambda: future.done() and not boosts.holding(), timeout=30)  # its result
        assert policy() == (os.SCHED_OTHER, 0)


def test_waiting_on_a_task_future_ends_the_boost_its_thread_holds(normal):
    boosts = CallerBoosts(enabled=True, clock=Clock())
    future = TaskFuture("t/0", "t", 0)
    future.set_result(5)
    for wait in (future.result, future.exception):
        assert boosts.boost()
        boosts.hold()
        wait()
        assert policy() == (os.SCHED_OTHER, 0) and boosts.holding() == []


def test_a_thread_that_keeps_submitting_without_waiting_is_not_boosted_for_good(normal):
    clock = Clock()
    boosts = CallerBoosts(enabled=True, clock=clock)
    assert boosts.boost()
    boosts.hold()
    clock.now += STREAM_REALTIME_NS // 2
    assert boosts.boost()  # its next submit takes the boost over, and keeps its start
    boosts.hold()
    clock.now += STREAM_REALTIME_NS // 2
    assert boosts.expire() is None and policy() == (os.SCHED_OTHER, 0)
    # Cooling: a submit is boosted for itself, but nothing is held past it.
    assert boosts.boost() and boosts.hold() is None
    boosts.end(True)
    assert policy() == (os.SCHED_OTHER, 0)
    clock.now += 3 * STREAM_REALTIME_NS
    boosts.expire()
    assert boosts.boost() and boosts.hold() is not None
    boosts.expire(everyone=True)
    assert policy() == (os.SCHED_OTHER, 0)


def test_a_release_on_the_held_thread_itself_puts_it_back(normal):
    boosts = CallerBoosts(enabled=True, clock=Clock())
    assert boosts.boost()
    tid, token = boosts.hold()
    boosts.release(tid, token)  # a done callback run at once: the result came first
    assert policy() == (os.SCHED_OTHER, 0) and boosts.holding() == []

"""A stream task's caller at real-time priority for its submit (runtime/realtime.py
`CallerBoosts`), alone and on a LocalCluster."""

from __future__ import annotations

import os

import pytest

from tidal.runtime import realtime
from tidal.runtime.client import Client
from tidal.runtime.cluster import LocalCluster
from tidal.runtime.lanes import LANE_MAX_FRAME_BYTES
from tidal.runtime.realtime import CallerBoosts, realtime_permitted
from tidal.workloads.synthetic import total

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

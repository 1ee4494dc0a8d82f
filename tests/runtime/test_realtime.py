"""A stream task's caller at real-time priority until its result comes (runtime/realtime.py
`CallerBoosts`), with a fake clock, and on a LocalCluster."""

from __future__ import annotations

import os
import threading
import time

import pytest

from tidal.runtime import realtime
from tidal.runtime.client import Client
from tidal.runtime.cluster import LocalCluster
from tidal.runtime.realtime import STREAM_REALTIME_NS, CallerBoosts, realtime_permitted
from tidal.workloads.synthetic import burn, total

pytestmark = pytest.mark.skipif(
    not realtime_permitted(), reason="SCHED_FIFO needs root or CAP_SYS_NICE"
)


class Clock:
    def __init__(self):
        self.now = 1_000

    def __call__(self):
        return self.now


def policy() -> int:
    return os.sched_getscheduler(0)


def test_a_boost_lasts_until_the_thread_s_last_stream_task_is_done():
    clock = Clock()
    boosts = CallerBoosts(enabled=True, clock=clock)
    try:
        tid = boosts.boost()
        assert tid == threading.get_native_id() and policy() == os.SCHED_FIFO
        assert boosts.boost() == tid  # a second stream task of the same thread
        boosts.release(tid)
        assert policy() == os.SCHED_FIFO and boosts.boosted() == [tid]
        boosts.release(tid)
        assert policy() == os.SCHED_OTHER and boosts.boosted() == []
        boosts.release(tid)  # a late release (its boost expired, say): nothing
        boosts.release(None)
        assert policy() == os.SCHED_OTHER
    finally:
        boosts.expire(everyone=True)


def test_a_boost_expires_after_the_stream_realtime_budget():
    clock = Clock()
    boosts = CallerBoosts(enabled=True, clock=clock)
    try:
        tid = boosts.boost()
        assert boosts.expire() == pytest.approx(STREAM_REALTIME_NS / 1e9)
        clock.now += STREAM_REALTIME_NS - 1
        assert boosts.expire() == pytest.approx(1e-9) and policy() == os.SCHED_FIFO
        clock.now += 1
        assert boosts.expire() is None and policy() == os.SCHED_OTHER
        boosts.release(tid)  # its result, later: nothing more
        assert policy() == os.SCHED_OTHER
    finally:
        boosts.expire(everyone=True)


def test_a_thread_the_program_put_at_another_policy_keeps_it():
    boosts = CallerBoosts(enabled=True, clock=Clock())
    os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(5))
    try:
        assert boosts.boost() is None
        assert os.sched_getparam(0).sched_priority == 5
    finally:
        os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))


def test_turned_off_it_boosts_nothing(monkeypatch):
    monkeypatch.setenv(realtime.REALTIME_CALLERS_ENV, "0")
    boosts = CallerBoosts()
    assert boosts.boost() is None and policy() == os.SCHED_OTHER


def test_a_stream_submit_s_thread_is_real_time_until_its_result_comes(monkeypatch):
    # A budget longer than the task, so that only its result ends the boost here.
    monkeypatch.setattr(realtime, "STREAM_REALTIME_NS", 60 * 10**9)
    with LocalCluster(executors=1) as cluster, Client(cluster) as client:
        tid = threading.get_native_id()
        batch = client.submit(total, [1, 2])  # a batch task's caller is left alone
        assert policy() == os.SCHED_OTHER and batch.result(timeout=30) == 3
        future = client.submit(burn, 300_000.0, priority="stream")  # 0.3 s of work
        assert policy() == os.SCHED_FIFO and client._io.boosts.boosted() == [tid]
        future.result(timeout=30)
        deadline = time.monotonic() + 10  # its done callback runs on the IO thread
        while client._io.boosts.boosted():
            assert time.monotonic() < deadline, "the boost outlived the result"
            time.sleep(0.001)
        assert policy() == os.SCHED_OTHER

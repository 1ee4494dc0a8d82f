"""Big results (runtime/results.py): kept by their executor until read, fetched by the client
on threads of its own, and every future completes whatever happens to the fetch."""

from __future__ import annotations

import concurrent.futures
import os
import threading
import time

import pytest

from tidal.runtime import datastore as ds
from tidal.runtime import payloads, results
from tidal.runtime.datastore import DataUnavailable
from tidal.runtime.futures import TaskFuture
from tidal.runtime.results import ResultFetcher, ResultSpool


@pytest.fixture
def spool(tmp_path, monkeypatch):
    monkeypatch.setattr(ds, "spool_root", lambda: str(tmp_path))
    kept = ResultSpool("executor-1", lambda: "127.0.0.1")
    yield kept
    monkeypatch.setattr(ResultSpool, "DRAIN_S", 0.0)
    kept.close()


def future(task_id: str = "t/0") -> TaskFuture:
    return TaskFuture(task_id, "t", 0, lambda f: None)


def test_a_result_spool_deletes_what_no_one_read_but_looks_only_now_and_then(spool):
    read, unread = spool.keep(b"r" * 100), spool.keep(b"u" * 100)
    assert ds.read_and_release(read) == b"r" * 100 and not os.path.exists(read.path)
    an_hour_ago = time.time() - 3600
    os.utime(unread.path, (an_hour_ago, an_hour_ago))
    spool.expire()  # old enough, but the last look was just now: not yet
    assert os.path.exists(unread.path)
    spool._expired_at -= ResultSpool.EXPIRE_EVERY_S
    spool.expire()
    assert not os.path.exists(unread.path)


def test_the_fetcher_completes_a_future_and_fails_it_on_any_error(spool, monkeypatch):
    fetcher = ResultFetcher("client-1")
    try:
        good, bad = future("good/0"), future("bad/0")
        blob = payloads.pack_reference(spool.keep(payloads.pack_payload([1, 2, 3])))
        fetcher.fetch(good, blob, {})
        assert good.result(timeout=10) == [1, 2, 3]

        def broken(*args, **kwargs):
            raise RuntimeError("boom")

        monkeypatch.setattr(results, "read_and_release", broken)
        fetcher.fetch(bad, blob, {"running_ns": 7})
        with pytest.raises(DataUnavailable, match="bad/0 could not be fetched: RuntimeError: boom"):
            bad.result(timeout=10)
        assert bad.statistics().running_s == 7e-9
    finally:
        fetcher.close()


def test_closing_the_fetcher_fails_its_futures_and_stops_a_fetch_under_way(spool, monkeypatch):
    fetcher = ResultFetcher("client-1")
    started, ended = threading.Event(), threading.Event()

    def slow(reference, *, stopped, keep_folder):
        started.set()
        try:
            while not stopped():  # as between pieces
                time.sleep(0.001)
            raise DataUnavailable("its reader stopped")
        finally:
            ended.set()

    monkeypatch.setattr(results, "read_and_release", slow)
    waiting = future()
    fetcher.fetch(waiting, payloads.pack_reference(spool.keep(b"x" * 10)), {})
    assert started.wait(10)
    fetcher.close()
    with pytest.raises(ConnectionError, match="client closed before task t/0 finished"):
        waiting.result(timeout=10)
    assert ended.wait(10)  # the fetch stopped too
    late = future("late/0")
    fetcher.fetch(late, b"\xc1", {})
    with pytest.raises(ConnectionError):
        late.result(timeout=0)


def test_a_result_no_future_waits_for_is_released_at_once(spool):
    fetcher = ResultFetcher("client-1")
    try:
        reference = spool.keep(b"z" * 100)
        fetcher.release(payloads.pack_reference(reference))
        deadline = time.monotonic() + 10
        while os.path.exists(reference.path) and time.monotonic() < deadline:
            time.sleep(0.001)  # released on a fetch thread: nothing else to wait on
        assert not os.path.exists(reference.path)
    finally:
        fetcher.close()


def test_a_done_callback_of_a_fetched_result_runs_on_a_fetch_thread(spool):
    fetcher = ResultFetcher("client-1")
    try:
        where: concurrent.futures.Future = concurrent.futures.Future()
        done = future()
        done.add_done_callback(lambda f: where.set_result(threading.current_thread().name))
        fetcher.fetch(done, payloads.pack_reference(spool.keep(payloads.pack_payload(1))), {})
        assert where.result(timeout=10).startswith("tidal-fetch")
    finally:
        fetcher.close()


def test_a_result_that_cannot_be_spooled_is_reported_inline(spool, monkeypatch):
    blob = spool.reference_for(b"r" * 100)
    assert payloads.is_reference(blob)
    assert ds.read_and_release(payloads.open_reference(blob)) == b"r" * 100

    def full(payload):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(spool, "keep", full)
    assert spool.reference_for(b"r" * 100) == b"r" * 100

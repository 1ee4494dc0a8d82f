"""A bulk map's futures (runtime/futures.py: BulkJob, MapFutures), with no client and no
sockets: outcomes are fed to the job as the client's IO thread would, and the futures, made
before or after, must behave as any TaskFuture does."""

from __future__ import annotations

import asyncio
import concurrent.futures
import random
import threading

import pytest

from tidal.runtime.futures import (
    BulkJob,
    MapFutures,
    TaskFuture,
    TaskStatistics,
    as_completed,
    gather,
)

STATS = {"executor_id": "e-1", "attempt": 1, "running_ns": 2_000, "queued_ns": 5_000}


class Hooks:
    """What the client hears from a job: the Cancels it would send, the job's end."""

    def __init__(self) -> None:
        self.cancelled: list[str] = []
        self.done: list[str] = []

    def job(self, size: int, job_id: str = "c-1") -> BulkJob:
        return BulkJob(
            job_id,
            size,
            123,
            cancel_remote=self.cancelled.append,
            on_done=lambda job: self.done.append(job.job_id),
        )


@pytest.fixture
def hooks():
    return Hooks()


def made(job: BulkJob) -> int:
    """How many of the job's futures exist."""
    return 0 if job._futures is None else sum(f is not None for f in job._futures)


# ---- the sequence ------------------------------------------------------------------------------


def test_futures_are_made_only_when_asked_for_and_once_each(hooks):
    job = hooks.job(5)
    futures = MapFutures(job)
    assert len(futures) == 5 and futures.job_id == "c-1" and made(job) == 0
    third = futures[2]
    assert isinstance(third, TaskFuture) and isinstance(third, concurrent.futures.Future)
    assert (third.task_id, third.job_id, third.submitted_ns) == ("c-1/2", "c-1", 123)
    assert futures[2] is third and futures[-3] is third and made(job) == 1
    assert [f.task_id for f in futures[1:4]] == ["c-1/1", "c-1/2", "c-1/3"]
    assert futures[::-2] == [futures[4], futures[2], futures[0]]
    with pytest.raises(IndexError):
        futures[5]
    with pytest.raises(IndexError):
        futures[-6]
    with pytest.raises(TypeError):
        futures["1"]
    assert [f.task_id for f in futures] == [f"c-1/{i}" for i in range(5)]
    assert list(futures) == [futures[i] for i in range(5)] and made(job) == 5
    assert futures.index(third) == 2 and third in futures
    assert [*futures[:1], *futures[1:]] == list(futures)
    # `+` makes a list, as it would with the list of futures a classic map returns.
    assert ([None] + futures)[1:] == list(futures)  # noqa: RUF005
    assert (futures + (None,))[:5] == list(futures)  # noqa: RUF005
    assert not hooks.done


def test_a_batch_completes_its_futures_made_before_and_after(hooks):
    job = hooks.job(6)
    futures = MapFutures(job)
    early = futures[1]
    assert job.finish(0, ["a", "b", "c"], STATS) == 0
    assert early.done() and early.result() == "b"
    late = futures[2]
    assert late.done() and late.result() == "c" and made(job) == 2  # made done, not pending
    assert late.statistics() == TaskStatistics("e-1", 1, None, 2e-6, None, 5e-6)
    assert not futures[3].done() and not job.done()
    assert job.finish(3, ["d", "e", "f"], {}) == 0
    assert futures[3].result() == "d" and futures[5].statistics() == TaskStatistics()
    assert job.done() and hooks.done == ["c-1"]
    assert gather(futures) == ["a", "b", "c", "d", "e", "f"]


def test_each_task_completes_once_later_outcomes_are_counted_and_ignored(hooks):
    job = hooks.job(4)
    futures = MapFutures(job)
    callbacks = []
    futures[1].add_done_callback(callbacks.append)
    assert job.finish(0, [0, 1], STATS) == 0
    assert job.finish(1, [99, 2], STATS) == 1  # task 1 came before: only task 2 counts
    assert job.complete(2, "failed", ValueError("late"), {}) is False
    assert job.complete(3, "finished", 3, {}) is True
    assert job.complete(3, "cancelled", None, {}) is False
    assert job.finish(0, [7, 7, 7, 7], STATS) == 4
    assert gather(futures) == [0, 1, 2, 3] and callbacks == [futures[1]]
    assert hooks.done == ["c-1"]  # once


def test_gather_raises_the_first_failure_in_order_without_waiting(hooks):
    job = hooks.job(6)
    futures = MapFutures(job)
    job.complete(4, "failed", KeyError("four"), {})
    job.complete(2, "failed", ValueError("two"), {})
    with pytest.raises(ValueError, match="two") as info:
        gather(futures, timeout=5)  # tasks 0, 1, 3 and 5 still pending
    assert futures[2].exception() is info.value  # the future's own exception
    assert isinstance(futures[4].exception(), KeyError) and not futures[0].done()
    job.complete(0, "cancelled", None, {})
    with pytest.raises(concurrent.futures.CancelledError, match="c-1/0 was cancelled"):
        gather(futures)
    assert futures[0].cancelled() and futures[0].cancel() is True
    assert concurrent.futures.wait([futures[0]], timeout=5).done == {futures[0]}
    assert hooks.cancelled == []  # cancelled by the scheduler: no Cancel to send back


def test_gather_times_out_like_the_classic_one(hooks):
    job = hooks.job(4)
    job.finish(0, [0], STATS)
    with pytest.raises(TimeoutError, match=r"3 of 4 futures still pending after 0 s"):
        gather(MapFutures(job), timeout=0)
    with pytest.raises(TimeoutError, match=r"3 of 4 futures still pending after 0\.01 s"):
        gather(MapFutures(job), timeout=0.01)
    assert made(job) == 0  # the fast path makes no future


def test_gather_waits_for_the_last_batch_from_another_thread(hooks):
    job = hooks.job(2_000)
    futures = MapFutures(job)
    started = threading.Event()

    def fill():
        started.wait()
        for start in range(0, 2_000, 100):
            job.finish(start, list(range(start, start + 100)), STATS)

    filler = threading.Thread(target=fill)
    filler.start()
    started.set()
    try:
        assert gather(futures, timeout=10) == list(range(2_000))
    finally:
        filler.join()
    assert made(job) == 0


def test_only_a_whole_map_takes_the_fast_path(hooks):
    one, two = hooks.job(2, "c-1"), hooks.job(2, "c-2")
    one.finish(0, [1, 2], STATS)
    two.finish(0, [3, 4], STATS)
    assert gather(MapFutures(one)[1:] + MapFutures(two)) == [2, 3, 4]
    assert made(one) == 1 and made(two) == 2


def test_cancel_cancels_the_task_here_and_remotely_and_a_late_result_is_ignored(hooks):
    job = hooks.job(3)
    futures = MapFutures(job)
    assert futures[1].cancel() is True and futures[1].cancelled()
    assert hooks.cancelled == ["c-1/1"]
    assert job.finish(0, [0, 1, 2], STATS) == 1
    assert futures[1].cancelled() and futures[1].cancel() is True
    assert futures[0].cancel() is False and futures[0].result() == 0
    assert hooks.cancelled == ["c-1/1"] and hooks.done == ["c-1"]
    with pytest.raises(concurrent.futures.CancelledError, match="c-1/1 was cancelled"):
        gather(futures)


def test_the_last_task_cancelled_ends_the_job(hooks):
    job = hooks.job(2)
    job.finish(0, [0], STATS)
    MapFutures(job)[1].cancel()
    assert job.done() and hooks.done == ["c-1"]


def test_a_failed_connection_fails_every_task_not_done_made_or_not(hooks):
    job = hooks.job(4)
    futures = MapFutures(job)
    waiting = futures[2]
    job.finish(0, ["done"], STATS)
    job.fail(lambda what: ConnectionError(f"client closed before {what} finished"))
    assert job.done() and hooks.done == ["c-1"]
    with pytest.raises(ConnectionError, match="client closed before task c-1/2 finished"):
        waiting.result(timeout=0)
    with pytest.raises(ConnectionError, match="client closed before task c-1/1 finished") as info:
        gather(futures)
    assert futures[1].exception() is info.value  # made failed, with the error gather raised
    assert futures[0].result() == "done"
    assert job.finish(1, [1, 2, 3], STATS) == 3  # nothing completes after
    assert futures[3].cancel() is False and hooks.cancelled == []
    job.fail(lambda what: ConnectionError("again"))  # a job that is done stays as it is
    assert str(futures[3].exception()) == "client closed before task c-1/3 finished"


def test_a_fetched_result_completes_through_its_future(hooks):
    job = hooks.job(3)
    futures = MapFutures(job)
    fetched = job.fetching(1, STATS)
    assert fetched is futures[1] and not fetched.done()
    assert job.fetching(1, STATS) is None  # its result is on its way: a duplicate is not
    assert job.finish(0, [0, "dup", 2], STATS) == 1
    assert job.waiting_for() == [] and not job.done()
    fetched._complete("finished", "big", None, {"running_ns": 7})  # as the fetcher does
    assert job.done() and gather(futures) == [0, "big", 2]
    assert futures[1].statistics().running_s == 7e-9


def test_a_fetch_that_fails_or_is_cancelled_fails_its_task(hooks):
    job = hooks.job(2)
    failing, cancelled = job.fetching(0, {}), job.fetching(1, {})
    failing.set_exception(OSError("gone"))  # as ResultFetcher._fail does
    assert cancelled.cancel() is True
    assert hooks.cancelled == ["c-1/1"] and job.done() and hooks.done == ["c-1"]
    with pytest.raises(OSError, match="gone"):
        gather(MapFutures(job))


def test_what_the_client_waits_for_and_what_is_still_pending(hooks):
    job = hooks.job(5)
    job.finish(0, [0, 1], STATS)
    job.fetching(3, STATS)
    assert job.waiting_for() == ["c-1/2", "c-1/4"]
    assert job.pending([0, 2, 3, 4]) == [2, 4]
    job.fail(lambda what: ConnectionError("gone"))
    assert job.waiting_for() == [] and job.pending([2]) == []


def test_as_completed_wait_and_await_work_on_bulk_futures(hooks):
    job = hooks.job(3)
    futures = MapFutures(job)
    job.finish(2, ["two"], STATS)
    completed = as_completed(futures, timeout=5)
    assert next(completed) is futures[2]
    job.complete(0, "finished", "zero", STATS)
    assert next(completed) is futures[0]
    job.complete(1, "failed", ZeroDivisionError("no"), STATS)
    assert next(completed) is futures[1]
    assert list(concurrent.futures.as_completed(futures, timeout=5)) != []
    assert concurrent.futures.wait(futures, timeout=5).not_done == set()

    async def main():
        return await futures[0], await asyncio.gather(futures[2])

    assert asyncio.run(main()) == ("zero", ["two"])


def test_futures_made_while_batches_arrive_each_complete_once_with_their_value(hooks):
    # Two threads race: one fills the job a batch at a time, the other makes futures in a
    # random order; every future ends with its own value, and its callback ran once.
    size = 5_000
    job = hooks.job(size)
    futures = MapFutures(job)
    calls = [0] * size
    order = list(range(size))
    random.Random(17).shuffle(order)

    def fill():
        for start in range(0, size, 50):
            job.finish(start, list(range(start, start + 50)), STATS)

    def count(future):
        calls[int(future.task_id.rpartition("/")[2])] += 1

    filler = threading.Thread(target=fill)
    filler.start()
    try:
        for index in order:
            futures[index].add_done_callback(count)
    finally:
        filler.join()
    assert [f.result(timeout=0) for f in futures] == list(range(size))
    assert calls == [1] * size and hooks.done == ["c-1"]

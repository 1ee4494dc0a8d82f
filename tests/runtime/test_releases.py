"""The client tells the scheduler which jobs the program dropped every future of
(runtime/releases.py): with the next job it sends, one frame for all of them."""

from __future__ import annotations

import gc

import pytest

from tidal import Client, LocalCluster
from tidal.runtime import protocol as p
from tidal.runtime.releases import Releases
from tidal.workloads.synthetic import noop, total


def test_a_job_is_released_when_its_last_future_is_dropped_not_before():
    releases = Releases()
    releases.track("a", 3)
    releases.track("b", 1)
    releases.dropped("a")
    releases.dropped("a")
    assert releases.take() == []
    releases.dropped("b")
    releases.dropped("unknown")  # a job it forgot: ignored
    assert releases.take() == ["b"]
    releases.dropped("a")
    assert releases.take() == ["a"]
    assert releases.take() == []


def test_dropped_futures_are_released_with_the_next_job(fake, client):
    futures = client.map(total, [[1], [2]])
    bulk = client.map(noop, list(range(100)), chunksize=10)
    for future in futures:
        fake.finish(future, 1)
    assert [f.result(timeout=5) for f in futures] == [1, 1]
    job_id, bulk_id = futures[0].job_id, bulk.job_id
    kept = client.submit(total, [3])
    del futures, future, bulk
    gc.collect()
    client.submit(total, [4])
    (release,) = fake.wait_for(p.Release)
    assert sorted(release.job_ids) == sorted([job_id, bulk_id])
    assert kept.job_id not in release.job_ids  # still held


@pytest.mark.parametrize("chunksize", [1, 10], ids=["sent task by task", "in bulk"])
def test_futures_taken_out_of_a_map_hold_its_job_after_the_map_itself_is_dropped(
    fake, client, chunksize
):
    futures = []
    futures += client.map(total, [[i] for i in range(20)], chunksize=chunksize)
    job_id = futures[0].job_id
    gc.collect()  # the map's MapFutures is gone; its futures are not
    client.submit(total, [1])
    fake.wait_for(p.Submit, 2)
    assert not fake.received(p.Release)  # (the bench's `futures += client.map(...)`)
    for future in futures:
        fake.finish(future, 1)
    assert [f.result(timeout=5) for f in futures] == [1] * 20
    del futures, future  # (the job, done, no longer holds them)
    gc.collect()
    client.submit(total, [2])
    (release,) = fake.wait_for(p.Release)
    assert release.job_ids == [job_id]


@pytest.mark.slow
def test_a_scheduler_keeps_only_the_jobs_whose_futures_are_held_and_none_after_goodbye():
    with LocalCluster(executors=2) as cluster:
        with Client(cluster) as client:
            held = client.map(total, [[i] for i in range(50)])
            for i in range(300):  # single submits, dropped as they are read
                assert (
                    client.submit(total, [i], priority="stream" if i % 3 else "batch").result(
                        timeout=30
                    )
                    == i
                )
            mapped = client.map(noop, list(range(20_000)), chunksize=500)
            assert client.gather(mapped) == [None] * 20_000
            del mapped
            gc.collect()
            client.submit(total, [1]).result(timeout=30)  # carries the releases
            books = client.status()["books"]
            # The held map (50 tasks), the last submit: nothing else.
            assert books == {"jobs": 2, "records": 51}, books
            assert [f.result(timeout=30) for f in held] == list(range(50))
        with Client(cluster) as other:
            assert other.wait_for_status(lambda s: s["books"]["jobs"] == 0)["books"] == {
                "jobs": 0,
                "records": 0,
            }

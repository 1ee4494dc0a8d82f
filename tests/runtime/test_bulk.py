"""The client's side of the bulk path (runtime/bulk.py) against the fake scheduler of
tests/stub.py: what a chunked map sends, and how batch_results and results for its tasks
complete its futures. Tests synchronise on messages and futures, never on sleeps."""

from __future__ import annotations

import collections
import concurrent.futures
import logging
import threading

import pytest

from tests.stub import REMOTE_TB
from tidal.runtime import client as client_module
from tidal.runtime import datastore, payloads
from tidal.runtime import protocol as p
from tidal.runtime.bulk import pack_calls
from tidal.runtime.client import Client, MapFutures, TaskError, TaskStatistics, gather
from tidal.runtime.columns import bulk_payloads
from tidal.workloads.synthetic import spin, total

STATS = {"executor_id": "e-1", "attempt": 1, "running_ns": 3_000, "queued_ns": 1_000}


pytestmark = pytest.mark.usefixtures("no_thread_left_behind")


def batch(futures, start, values, errors=(), stats=None) -> p.BatchResults:
    """A scheduler's batch_results for a bulk map's tasks start, start + 1, ..."""
    values = [None if v is None else payloads.pack_payload(v) for v in values]
    return p.BatchResults(futures.job_id, start, values, list(errors), stats or STATS)


def error(index, error_type, message):
    return [index, [error_type, message, REMOTE_TB + f"{error_type}: {message}\n"]]


def synced(fake, client):
    """Wait until the client has handled everything pushed so far (frames are handled in
    order, so a sentinel result's arrival means the rest arrived before it)."""
    sentinel = client.submit(total, [0])
    fake.finish(sentinel, 0)
    sentinel.result(timeout=5)


def made(futures: MapFutures) -> int:
    job = futures._job
    return 0 if job._futures is None else sum(f is not None for f in job._futures)


# ---- what goes out -----------------------------------------------------------------------------


def test_a_chunked_map_is_one_submit_carrying_its_calls_in_bulk(fake, client):
    partitions = [[1, 2], [3], [], [4, 5, 6], (7,)]
    futures = client.map(spin, partitions, chunksize=2, record_us=0.5, order=3)
    [msg] = fake.wait_for(p.Submit)
    assert type(futures) is MapFutures and futures.job_id == msg.job_id and len(futures) == 5
    assert msg.tasks == [] and msg.options == {"chunksize": 2} and msg.order == 3
    # Tiny calls go as columns (protocol 13): one packed array of the partitions, and the
    # kwargs packed once; task i's payload is what the classic path sends for it.
    assert type(msg.bulk) is bytes and p.unpack_value(msg.bulk) == [[1, 2], [3], [], [4, 5, 6], [7]]
    assert p.unpack_value(msg.kwargs) == {"record_us": 0.5}
    calls = bulk_payloads(msg)
    assert list(calls) == [payloads.pack_call([part], {"record_us": 0.5}) for part in partitions]
    assert payloads.unpack_call(calls[3]) == ([[4, 5, 6]], {"record_us": 0.5})
    assert made(futures) == 0  # no future per task at submit
    assert futures[4].task_id == f"{msg.job_id}/4" and futures[4].submitted_ns == msg.sent_ns
    assert made(futures) == 1
    many = client.map(total, [[i] for i in range(300)])  # auto-chunked from 256 partitions
    auto = fake.wait_for(p.Submit, 2)[1]
    assert type(many) is MapFutures and auto.options == {"chunksize": "auto"}
    assert len(bulk_payloads(auto)) == 300 and auto.tasks == []


def test_pack_calls_makes_what_pack_call_makes():
    kwargs = {"record_us": 1.5, "by": {("a", 1): [None, b"x", 2**63]}}
    packed = payloads.pack_payload(kwargs)
    partitions = [0, "s", b"b", [1, [2]], {"k": 1.0}, (3, 4), [0] * payloads.BLOCKED_MIN_ITEMS]
    calls = pack_calls(partitions, packed, spool=None)
    assert calls == [payloads.pack_call([x], kwargs, packed_kwargs=packed) for x in partitions]
    assert calls[-1][:1] == b"\x93"  # a big partition travels in blocks
    assert pack_calls([b"x" * datastore.DATA_THRESHOLD], packed, spool=None) is None
    with pytest.raises(p.EncodeError):
        pack_calls([1, {2}], packed, spool=None)


def test_maps_that_cannot_go_in_bulk_take_the_classic_path(fake, client):
    big = list(range(70_000, 90_000))  # ~80 KB packed: a spooled call
    classic = [
        client.map(total, [[1], [2]], chunksize=1),
        client.map(total, [[1], [2]], chunksize=2, preferred=["rack-a"]),
        client.map(total, [[1], big, [2]], chunksize=2, extra=list(range(3_000))),
        client.map(total, [[1]], chunksize=2, model=list(range(30_000))),  # one call: spooled
    ]
    submits = fake.wait_for(p.Submit, 4)
    assert [len(futures) for futures in classic] == [2, 2, 3, 1]
    assert [len(msg.tasks) for msg in submits] == [2, 2, 3, 1]
    assert all(msg.bulk is None for msg in submits)
    assert submits[1].tasks[0][2] == {"preferred": ["rack-a"]}
    assert payloads.is_reference(submits[2].tasks[1][1]) and payloads.is_reference(
        submits[3].tasks[0][1]
    )
    assert submits[2].options == {"chunksize": 2} and submits[0].options is None
    assert client.map(total, [], chunksize=2) == []  # no partitions: no job


def test_a_chunked_map_of_big_partitions_goes_classic_without_packing_them_as_columns(
    fake, client, monkeypatch
):
    # Each call would be spooled on its own (64 KiB or more): packing the partitions as
    # columns first, then as calls, was thrown away (map() 4-5x slower).
    def refuse(*_):
        raise AssertionError("big partitions packed as columns")

    monkeypatch.setattr(client_module, "pack_columns", refuse)
    parts = [list(range(i, i + 30_000)) for i in range(0, 90_000, 30_000)]
    futures = client.map(total, parts, chunksize=2)
    [msg] = fake.wait_for(p.Submit)
    assert len(futures) == 3 and msg.bulk is None and len(msg.tasks) == 3


@pytest.mark.parametrize("count", [3, 4], ids=["sampled", "not sampled"])
def test_a_chunked_map_names_the_partition_msgpack_cannot_carry(fake, client, count):
    # Partition 1 is sampled for its size among 3 (first, middle, last), not among 4.
    parts = [[0]] * count
    parts[1] = [{1, 2}] * 40
    with pytest.raises(TypeError, match=r"partition 1\[0\] is of type set"):
        client.map(total, parts, chunksize=2)


def test_a_bulk_maps_big_shared_keyword_arguments_are_spooled_once(fake, client):
    model = {"weights": list(range(100_000, 130_000))}  # ~150 KB packed
    futures = client.map(total, [[1], [2], [3]], chunksize=2, model=model)
    [msg] = fake.wait_for(p.Submit)
    assert type(futures) is MapFutures and len(client._spooled[msg.job_id]) == 1
    for i, payload in enumerate(msg.bulk, 1):
        assert len(payload) < 1_000  # the call and a reference to its kwargs
        assert payloads.unpack_call(payload) == ([[i]], {"model": model})
    fake.push(batch(futures, 0, [1, 2, 3]))
    assert gather(futures, timeout=5) == [1, 2, 3]
    synced(fake, client)
    assert msg.job_id not in client._spooled  # the job is done: its spooled kwargs go


def test_each_mistake_in_a_bulk_map_is_refused_before_anything_is_sent(fake, client, monkeypatch):
    with pytest.raises(TypeError, match=r"partition 3\[1\] is of type object"):
        client.map(total, [[1], [2], [3], [4, object()]], chunksize=2)
    with pytest.raises(TypeError, match=r"keyword argument 'by'\[0\] is of type set"):
        client.map(spin, [[1], [2]], chunksize=2, by=[{1}])
    with pytest.raises(TypeError, match="integer too large"):
        client.map(total, [[1]], chunksize=2, order=2**70)
    with pytest.raises(ValueError, match="max_suspensions"):
        client.map(total, [[1]], chunksize=2, max_suspensions=-1)
    monkeypatch.setattr(p, "MAX_FRAME_BYTES", 2_000)
    with pytest.raises(ValueError, match="over the 2,000-byte limit of a frame"):
        client.map(total, [[i] for i in range(1_000)], chunksize=10)
    monkeypatch.undo()
    assert client._spooled == {} and not client._bulk
    client.map(total, [["the only one sent"]], chunksize=2)
    [msg] = fake.wait_for(p.Submit)
    assert payloads.unpack_call(bulk_payloads(msg)[0]) == ([["the only one sent"]], {})


# ---- what comes back ---------------------------------------------------------------------------


def test_batches_complete_the_futures_and_gather_returns_the_values_in_order(fake, client):
    futures = client.map(total, [[i] for i in range(6)], chunksize=3)
    fake.wait_for(p.Submit)
    early = futures[4]
    fake.push(batch(futures, 3, [30, {"four": (4,)}, 50]))
    assert early.result(timeout=5) == {"four": [4]}
    assert early.statistics() == TaskStatistics("e-1", 1, None, 3e-6, None, 1e-6)
    assert not futures[0].done()
    fake.push(batch(futures, 0, [0, 10, 20], stats={"executor_id": "e-2"}))
    assert gather(futures, timeout=5) == [0, 10, 20, 30, {"four": [4]}, 50]
    assert client.gather(futures) == gather(futures)
    assert futures[1].result(timeout=0) == 10 and futures[1].statistics().executor_id == "e-2"
    synced(fake, client)
    assert not client._bulk and client.dropped_results == 0


def test_classic_results_complete_a_bulk_jobs_tasks(fake, client):
    futures = client.map(total, [[i] for i in range(4)], chunksize=2)
    fake.wait_for(p.Submit)
    job = futures.job_id
    fake.push(
        p.Results(
            [
                [f"{job}/1", "finished", payloads.pack_payload("one"), None, STATS],
                [f"{job}/2", "failed", None, error(2, "mylib.Bad", "no")[1], {}],
                [f"{job}/3", "cancelled", None, None, {}],
            ]
        )
    )
    assert futures[1].result(timeout=5) == "one"
    assert futures[1].statistics().running_s == 3e-6
    failed = futures[2].exception(timeout=5)
    assert type(failed) is TaskError and failed.error_type == "mylib.Bad"
    assert futures[3].cancelled()
    fake.push(batch(futures, 0, [0]))
    assert futures[0].result(timeout=5) == 0
    synced(fake, client)
    assert not client._bulk and fake.received(p.Cancel) == []


def test_duplicates_and_results_for_no_live_job_are_dropped_and_counted(fake, client):
    futures = client.map(total, [[i] for i in range(4)], chunksize=2)
    fake.wait_for(p.Submit)
    job = futures.job_id
    fake.push(batch(futures, 0, [0, 1]))
    fake.push(batch(futures, 1, [99, 2]))  # task 1 again: dropped, task 2 counts
    fake.push(p.Results([[f"{job}/0", "finished", payloads.pack_payload(99), None, {}]]))
    fake.push(p.BatchResults("someone-else-1", 0, [payloads.pack_payload(1)] * 3, [], {}))
    fake.push(p.Results([[f"{job}/4", "finished", payloads.pack_payload(4), None, {}]]))
    fake.push(p.Results([[f"{job}/01", "finished", payloads.pack_payload(1), None, {}]]))
    fake.push(batch(futures, 3, [3]))
    assert gather(futures, timeout=5) == [0, 1, 2, 3]
    synced(fake, client)
    assert client.dropped_results == 1 + 1 + 3 + 1 + 1
    fake.push(batch(futures, 0, [5, 5]))  # the job is done and forgotten
    synced(fake, client)
    assert client.dropped_results == 9 and gather(futures) == [0, 1, 2, 3]


def test_gather_raises_the_first_failure_in_order_at_once(fake, client):
    futures = client.map(total, [[i] for i in range(8)], chunksize=4)
    fake.wait_for(p.Submit)
    failures = [error(6, "ValueError", "six"), error(5, "ZeroDivisionError", "five")]
    fake.push(batch(futures, 4, [4, None, None, 7], failures))
    with pytest.raises(ZeroDivisionError, match=r"^five$") as info:
        gather(futures, timeout=5)  # tasks 0 to 3 are still pending
    assert "remote.py" in str(info.value.__cause__)
    assert futures[5].exception() is info.value and not futures[0].done()
    assert isinstance(futures[6].exception(), ValueError) and futures[7].result() == 7
    fake.push(p.Results([[f"{futures.job_id}/2", "cancelled", None, None, {}]]))
    assert concurrent.futures.wait([futures[2]], timeout=5).done == {futures[2]}
    with pytest.raises(concurrent.futures.CancelledError, match=r"/2 was cancelled"):
        gather(futures)  # the first in order now


def test_a_bad_value_fails_only_its_task_and_a_bad_batch_is_dropped(fake, client, caplog):
    caplog.set_level(logging.WARNING, logger="tidal.client")
    futures = client.map(total, [[i] for i in range(4)], chunksize=4)
    fake.wait_for(p.Submit)
    job = futures.job_id
    good = payloads.pack_payload(0)
    fake.push(p.BatchResults(job, 2, [good, good, good], [], {}))  # past the job's end
    fake.push(p.BatchResults(job, 0, [good, b"\x92 not msgpack", None, 7], [[9, "x"]], STATS))
    assert futures[0].result(timeout=5) == 0
    with pytest.raises(p.ProtocolError, match=f"the result of {job}/1 is not valid msgpack"):
        futures[1].result(timeout=5)
    assert futures[1].statistics().running_s == 3e-6  # the batch's stats still count
    with pytest.raises(p.ProtocolError, match="failed without an error"):
        futures[2].result(timeout=5)
    with pytest.raises(p.ProtocolError, match="must be bytes"):
        futures[3].result(timeout=5)
    fake.push(p.Results([[f"{job}/0", "exploded", None, None, {}]]))
    synced(fake, client)
    messages = [r.getMessage() for r in caplog.records]
    assert sum("tasks 2 to 4 of job" in m and "which has 4" in m for m in messages) == 1
    assert sum("dropped a bad" in m for m in messages) == 6


def test_a_result_its_executor_kept_is_fetched_for_a_bulk_task(fake, client, tmp_path, monkeypatch):
    monkeypatch.setattr(datastore, "spool_root", lambda: str(tmp_path))
    store = datastore.DataStore("executor-1", root=str(tmp_path))
    try:
        released = []  # what the client lets its executor delete, unread
        monkeypatch.setattr(client._fetcher, "release", released.append)
        futures = client.map(total, [[1], [2], [3]], chunksize=3)
        fake.wait_for(p.Submit)
        value = list(range(50_000))
        kept = payloads.pack_reference(store.put(payloads.pack_payload(value)))
        again = payloads.pack_reference(store.put(payloads.pack_payload([2])))
        values = [payloads.pack_payload(1), kept, payloads.pack_payload(3)]
        fake.push(p.BatchResults(futures.job_id, 0, values, [], STATS))
        fake.push(p.BatchResults(futures.job_id, 1, [again], [], STATS))  # a duplicate
        assert gather(futures, timeout=10) == [1, value, 3]
        assert futures[1].statistics().executor_id == "e-1"
        synced(fake, client)
        assert client.dropped_results == 1 and released == [again]
        assert len(store.held()) == 1  # the kept result was read and deleted
    finally:
        store.close()


def test_a_refused_bulk_job_fails_every_task_at_once(fake, client, caplog):
    futures = client.map(total, [[i] for i in range(5)], chunksize=2)
    fake.wait_for(p.Submit)
    fake.push(p.BatchResults(futures.job_id, 0, [payloads.pack_payload(0)], [], STATS))
    first = futures[3]  # made before the refusal; the others after it
    reason = f"job {futures.job_id} refused by the scheduler: a bulk job needs a chunksize option"
    fake.push(p.JobRefused(futures.job_id, ["ValueError", reason, ""]))
    with pytest.raises(ValueError, match="needs a chunksize option"):
        gather(futures, timeout=5)
    assert futures[0].result(timeout=0) == 0  # done before: kept
    assert isinstance(first.exception(timeout=5), ValueError)
    assert all(isinstance(futures[i].exception(timeout=0), ValueError) for i in (1, 2, 4))
    assert not client._bulk
    fake.push(p.JobRefused(futures.job_id, ["ValueError", reason, ""]))  # no live job: dropped
    fake.push(p.JobRefused("someone-1", ["ValueError", "?", ""]))
    fake.push(p.JobRefused("someone-2", ["ValueError"]))  # malformed: dropped, said once
    synced(fake, client)
    assert client.dropped_results == 3
    assert sum("dropped a bad job_refused" in r.getMessage() for r in caplog.records) == 1


# ---- cancelling, reconnecting, closing ---------------------------------------------------------


def test_cancel_sends_cancel_and_a_late_batch_value_is_ignored(fake, client):
    futures = client.map(total, [[i] for i in range(3)], chunksize=3)
    fake.wait_for(p.Submit)
    assert futures[1].cancel() is True
    [cancel] = fake.wait_for(p.Cancel)
    assert cancel.task_ids == [f"{futures.job_id}/1"]
    fake.push(batch(futures, 0, [0, 1, 2]))
    assert futures[2].result(timeout=5) == 2
    synced(fake, client)
    assert futures[1].cancelled() and client.dropped_results == 1
    assert futures[0].cancel() is False and len(fake.received(p.Cancel)) == 1
    assert not client._bulk


def test_a_map_sent_task_by_task_has_light_futures_and_is_submitted_again_task_by_task(
    fake, client
):
    futures = client.map(total, [[i] for i in range(5)], chunksize=1)
    [msg] = fake.wait_for(p.Submit)
    job = futures.job_id
    assert isinstance(futures, MapFutures) and msg.bulk is None and len(msg.tasks) == 5
    fake.finish(futures[0], 10)
    fake.fail(futures[3], "KeyError", "three")
    assert futures[0].result(timeout=5) == 10
    with pytest.raises(KeyError, match="three"):
        futures[3].result(timeout=5)
    with pytest.raises(KeyError, match="three"):
        gather(futures, timeout=5)  # the first failure in order, without waiting for the rest
    waiting, _ = client._waiting_for()
    assert sorted(waiting) == [f"{job}/{i}" for i in (1, 2, 4)]
    [frame] = client._resubmissions({f"{job}/4", f"{job}/0", f"{job}/1"})
    again = p.decode(frame)
    assert again.tasks == [msg.tasks[1], msg.tasks[4]] and again.job_id == msg.job_id
    for i in (1, 2, 4):
        fake.finish(futures[i], i)
    assert [f.result(timeout=5) for f in futures if f is not futures[3]] == [10, 1, 2, 4]
    assert futures.counts() == (5, 1) and not client._bulk


def test_a_map_s_inline_results_count_in_the_client_s_traffic(fake, client):
    futures = client.map(total, [[1], [2]], chunksize=1)
    fake.wait_for(p.Submit)
    big = "x" * 5_000  # inline, and big enough to count (DATA_MIN_BYTES)
    for future in futures:
        fake.finish(future, big)
    assert gather(futures, timeout=5) == [big, big]
    assert client.traffic.as_dict()["received_bytes"] >= 2 * 5_000


def test_what_a_reconnecting_client_waits_for_and_submits_again(fake, client):
    futures = client.map(spin, [[i] for i in range(6)], chunksize=2, record_us=1.0)
    [msg] = fake.wait_for(p.Submit)
    job = futures.job_id
    fake.push(batch(futures, 0, [0, 1]))
    futures[5].cancel()
    assert futures[1].result(timeout=5) == 1
    waiting, requests = client._waiting_for()
    assert sorted(waiting) == [f"{job}/{i}" for i in (2, 3, 4)] and requests == []
    unknown = {f"{job}/4", f"{job}/2", f"{job}/0", f"{job}/5", "someone-1/0", f"{job}/9"}
    [frame] = client._resubmissions(unknown)
    again = p.decode(frame)
    assert again.bulk is None and again.tasks == [
        [f"{job}/2", bulk_payloads(msg)[2]],
        [f"{job}/4", bulk_payloads(msg)[4]],
    ]
    assert (again.job_id, again.fn, again.options, again.sent_ns) == (
        msg.job_id,
        msg.fn,
        msg.options,
        msg.sent_ns,
    )
    assert client._resubmissions({"nobody/1"}) == []


def test_close_fails_every_bulk_task_not_done_its_future_made_or_not(fake):
    client = Client(fake, timeout=5)
    futures = client.map(total, [[i] for i in range(4)], chunksize=2)
    fake.wait_for(p.Submit)
    waiting = futures[3]
    fake.push(batch(futures, 0, [0]))
    assert futures[0].result(timeout=5) == 0
    client.close()
    with pytest.raises(ConnectionError, match=rf"client closed before task {futures.job_id}/3"):
        waiting.result(timeout=0)
    with pytest.raises(ConnectionError, match=rf"before task {futures.job_id}/1 finished"):
        gather(futures, timeout=0)
    assert isinstance(futures[2].exception(timeout=0), ConnectionError)
    assert futures[0].result() == 0 and not client._bulk and not client._expecting()


def test_a_live_bulk_job_keeps_the_connection_expecting(fake, client):
    futures = client.map(total, [[1], [2]], chunksize=2)
    fake.wait_for(p.Submit)
    assert client._expecting()
    fake.push(batch(futures, 0, [1, 2]))
    gather(futures, timeout=5)
    synced(fake, client)
    assert not client._expecting()


def test_a_batch_arriving_while_the_caller_gathers_wakes_it(fake, client):
    futures = client.map(total, [[i] for i in range(1_000)], chunksize=100)
    fake.wait_for(p.Submit)
    frames = [
        p.encode(batch(futures, start, list(range(start, start + 100))))
        for start in range(0, 1_000, 100)
    ]
    pusher = threading.Thread(target=lambda: [fake.push_frame(f) for f in frames])
    pusher.start()
    try:
        assert gather(futures, timeout=10) == list(range(1_000))
    finally:
        pusher.join()
    assert made(futures) == 0


def test_a_malformed_classic_result_for_a_bulk_task_fails_it(fake, client):
    futures = client.map(total, [[1], [2]], chunksize=2)
    fake.wait_for(p.Submit)
    fake.push(p.Results([[f"{futures.job_id}/1", "finished", 3, None, {}]]))
    with pytest.raises(p.ProtocolError, match=r"unreadable result for .*/1"):
        futures[1].result(timeout=5)
    assert not futures[0].done()


def test_tasks_named_unknown_over_several_reattach_answers_are_submitted_again_once(fake, client):
    # A job's unknown tasks spread over two answers (10,000 ids each in life) go back in one
    # submit: the scheduler takes a job id once, and a second submit of it was ignored.
    futures = client.map(total, [[i] for i in range(6)], chunksize=2)
    fake.wait_for(p.Submit)
    job = futures.job_id
    io = client._io
    io._reattaching = {"r1", "r2"}  # as a welcome after a reconnection leaves it
    io._outbox = sent = collections.deque()  # the IO thread keeps flushing its own
    io._on_reattached(p.Reattached("r1", [f"{job}/0", f"{job}/1"]))
    assert not sent  # the other answer may name more of the job's tasks
    io._on_reattached(p.Reattached("r2", [f"{job}/4"]))
    (frame,) = sent
    again = p.decode(frame)
    assert [t[0] for t in again.tasks] == [f"{job}/0", f"{job}/1", f"{job}/4"]


def test_a_packed_batch_completes_its_futures_and_an_unreadable_one_fails_each(fake, client):
    futures = client.map(total, [[i] for i in range(6)], chunksize=3)
    fake.wait_for(p.Submit)
    packed = payloads.pack_batch([payloads.pack_payload(v) for v in (0, "one", [2])])
    assert packed == payloads.pack_payload([0, "one", [2]])  # the values as one array
    fake.push(p.BatchResults(futures.job_id, 0, packed, [], STATS))
    assert [futures[i].result(timeout=5) for i in range(3)] == [0, "one", [2]]
    assert futures[2].statistics().executor_id == "e-1"
    # Unreadable (0xc1 is no msgpack value): no telling which, so each task fails.
    fake.push(p.BatchResults(futures.job_id, 3, b"\x93\x03\x04\xc1", [], STATS))
    for i in (3, 4, 5):
        with pytest.raises(p.ProtocolError, match=f"{futures.job_id}/3 to 5 unreadable"):
            futures[i].result(timeout=5)
    synced(fake, client)
    assert not client._bulk


def test_a_packed_batch_that_lists_failures_or_does_not_hold_its_array_fails_or_is_dropped(
    fake, client
):
    futures = client.map(total, [[i] for i in range(3)], chunksize=3)
    fake.wait_for(p.Submit)
    packed = payloads.pack_payload([0, 1, 2])
    fake.push(p.BatchResults(futures.job_id, 0, packed, [[1, ["E", "m", ""]]], STATS))
    for i in range(3):
        with pytest.raises(p.ProtocolError, match="lists failures"):
            futures[i].result(timeout=5)
    again = client.map(total, [[i] for i in range(3)], chunksize=3)
    fake.push(p.BatchResults(again.job_id, 0, b"\x93\x01", [], STATS))  # claims 3 in 2 bytes
    fake.push(p.BatchResults(again.job_id, 1, payloads.pack_payload([1, 2]) + b"\x09", [], STATS))
    fake.push(p.BatchResults(again.job_id, 0, payloads.pack_payload([0]), [], STATS))
    assert again[0].result(timeout=5) == 0  # the first was dropped: it said nothing usable
    for i in (1, 2):  # the second had one value more than its array: both its tasks fail
        with pytest.raises(p.ProtocolError, match="do not decode"):
            again[i].result(timeout=5)
    synced(fake, client)

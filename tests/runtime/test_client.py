"""The client against a fake scheduler: a real ROUTER socket on loopback, served by a thread.

Tests synchronise on messages, never on sleeps: the fake records what the client sends and
lets a test wait (on a condition) for a message of a given kind; results go out only when a
test pushes them. Every client, fake and thread a test starts is stopped by its fixture, and
an autouse fixture checks that no client IO thread outlives its test.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import dataclasses
import logging
import os
import re
import socket
import threading
import traceback

import msgpack
import pytest

from tests.stub import REMOTE_TB, FakeScheduler
from tidal.runtime import client_io, datastore, payloads
from tidal.runtime import protocol as p
from tidal.runtime.client import (
    Client,
    RemoteTraceback,
    TaskError,
    TaskFuture,
    TaskStatistics,
    as_completed,
    gather,
)
from tidal.runtime.functions import FunctionNotFound
from tidal.runtime.task import task
from tidal.workloads.synthetic import noop, spin, total

pytestmark = pytest.mark.usefixtures("no_thread_left_behind")


@task(priority="stream", max_suspensions=1)
def streaming(part):
    """A task whose @task options are the defaults of its submissions."""
    return list(part)


# ---- connecting --------------------------------------------------------------------------------


def test_handshake_sends_identity_and_stores_the_welcome(fake):
    with Client(fake.address, timeout=5) as client:
        [hello] = fake.wait_for(p.ClientHello)
        assert hello.version == p.PROTOCOL_VERSION and hello.client_id == client.client_id
        assert hello.pid == os.getpid() and hello.hostname == socket.gethostname()
        assert (client.scheduler_id, client.policy, client.max_suspensions) == (
            "fake-scheduler",
            "stream-first",
            3,
        )
        assert client.address == fake.address


def test_reject_raises_connection_error_with_the_reason():
    with (
        FakeScheduler(reject="too many clients") as fake,
        pytest.raises(ConnectionError, match="refused this client: too many clients"),
    ):
        Client(fake, timeout=5)


def test_a_welcome_in_another_protocol_version_is_refused():
    with (
        FakeScheduler(version=p.PROTOCOL_VERSION + 1) as fake,
        pytest.raises(ConnectionError, match=f"speaks protocol {p.PROTOCOL_VERSION + 1}"),
    ):
        Client(fake, timeout=5)


def test_no_scheduler_raises_connection_error_naming_the_address():
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        address = f"tcp://127.0.0.1:{probe.getsockname()[1]}"
    with pytest.raises(ConnectionError, match=f"no Tidal scheduler answered at {address} within"):
        Client(address, timeout=0.1)


def test_an_address_that_is_not_one_is_a_clear_error():
    with pytest.raises(TypeError, match="ZeroMQ address"):
        Client(8786)
    with pytest.raises(ValueError, match="tcp://host:port"):
        Client("localhost:8786")


def test_without_an_address_the_client_connects_where_the_environment_says(fake, monkeypatch):
    monkeypatch.setenv("TIDAL_SCHEDULER_ADDRESS", fake.address)
    monkeypatch.delenv("TIDAL_KEYS", raising=False)
    with Client(timeout=5) as client:
        assert client.address == fake.address and client.keys is None
        [hello] = fake.wait_for(p.ClientHello)
        assert hello.client_id == client.client_id
    monkeypatch.delenv("TIDAL_SCHEDULER_ADDRESS")
    with pytest.raises(TypeError, match=r"needs a scheduler address .* TIDAL_SCHEDULER_ADDRESS"):
        Client()
    monkeypatch.setenv("TIDAL_SCHEDULER_ADDRESS", "localhost:8786")
    with pytest.raises(ValueError, match="TIDAL_SCHEDULER_ADDRESS='localhost:8786': expected"):
        Client()


# ---- submitting --------------------------------------------------------------------------------


def test_submit_sends_one_job_with_function_arguments_and_options(fake, client):
    future = client.submit(spin, [1, 2], record_us=1.0, priority="stream", order=5)
    [msg] = fake.wait_for(p.Submit)
    assert msg.job_id == f"{client.client_id}-1" and future.job_id == msg.job_id
    assert (msg.fn, msg.main_path) == ("tidal.workloads.synthetic:spin", None)
    assert (msg.priority, msg.order, msg.max_suspensions) == ("stream", 5, None)
    assert msg.tasks == [[f"{msg.job_id}/0", payloads.pack_call([[1, 2]], {"record_us": 1.0})]]
    assert payloads.unpack_call(msg.tasks[0][1]) == ([[1, 2]], {"record_us": 1.0})
    assert future.task_id == f"{msg.job_id}/0" and future.submitted_ns == msg.sent_ns
    second = client.submit(noop, max_suspensions=0)
    msg = fake.wait_for(p.Submit, 2)[1]
    assert msg.job_id == f"{client.client_id}-2" and second.task_id == f"{msg.job_id}/0"
    assert (msg.priority, msg.order, msg.max_suspensions) == ("batch", 0, 0)
    assert msg.tasks == [[f"{msg.job_id}/0", payloads.pack_call([], {})]]


def test_task_defaults_apply_unless_the_submission_overrides_them(fake, client):
    client.submit(streaming, [1])
    client.submit(streaming, [1], priority="batch", max_suspensions=4)
    first, second = fake.wait_for(p.Submit, 2)
    assert (first.priority, first.max_suspensions) == ("stream", 1)
    assert (second.priority, second.max_suspensions) == ("batch", 4)
    assert first.fn == f"{__name__}:streaming"


def test_map_sends_one_job_with_a_task_per_partition(fake, client):
    partitions = [[1, 2], [3], [], [4, 5, 6]]
    futures = client.map(spin, partitions, record_us=0.5, order=2)
    [msg] = fake.wait_for(p.Submit)
    assert msg.tasks == [
        [f"{msg.job_id}/{i}", payloads.pack_call([part], {"record_us": 0.5})]
        for i, part in enumerate(partitions)
    ]
    assert [f.task_id for f in futures] == [task[0] for task in msg.tasks]
    assert {f.job_id for f in futures} == {msg.job_id} and msg.order == 2
    assert client.map(total, []) == []


def test_submissions_from_many_threads_all_arrive_with_unique_ids(fake, client):
    def submit_many():
        for i in range(25):
            client.submit(total, [i])

    threads = [threading.Thread(target=submit_many) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    jobs = fake.wait_for(p.Submit, 100)
    assert len({msg.job_id for msg in jobs}) == 100


def test_each_mistake_is_refused_before_anything_is_sent(fake, client):
    with pytest.raises(
        ValueError, match=r"unknown priority 'urgent': use one of 'stream', 'batch'$"
    ):
        client.submit(total, [1], priority="urgent")
    with pytest.raises(TypeError, match="order must be an int"):
        client.submit(total, [1], order="1")
    with pytest.raises(TypeError, match="order must be an int"):
        client.submit(total, [1], order=True)
    with pytest.raises(
        ValueError, match=r"max_suspensions must be None \(the cluster's cap\) or an int >= 0"
    ):
        client.submit(total, [1], max_suspensions=-1)
    with pytest.raises(ValueError, match="max_suspensions"):
        client.map(total, [[1]], max_suspensions="3")
    with pytest.raises(FunctionNotFound, match="lambda"):
        client.submit(lambda part: part, [1])
    with pytest.raises(TypeError, match="argument 1 is of type set"):
        client.submit(total, {1, 2})
    with pytest.raises(TypeError, match=r"keyword argument 'record_us'\[0\] is of type set"):
        client.submit(spin, [1], record_us=[{1}])
    with pytest.raises(TypeError, match=r"partition 3\[1\] is of type object"):
        client.map(total, [[1], [2], [3], [4, object()]])
    with pytest.raises(TypeError, match="integer too large"):
        client.submit(total, [1], order=2**70)
    client.submit(total, ["the only one sent"])
    [msg] = fake.wait_for(p.Submit)
    assert payloads.unpack_call(msg.tasks[0][1]) == ([["the only one sent"]], {})


# ---- results -----------------------------------------------------------------------------------


def test_a_finished_result_completes_the_future(fake, client):
    future = client.submit(total, [1, 2, 3])
    fake.wait_for(p.Submit)
    fake.finish(future, 6)
    assert future.result(timeout=5) == 6 and future.exception() is None


def test_a_builtin_error_is_rebuilt_with_the_remote_traceback_as_its_cause(fake, client):
    future = client.submit(total, [1])
    fake.wait_for(p.Submit)
    fake.fail(future, "ValueError", "bad record 7")
    with pytest.raises(ValueError, match=r"^bad record 7$") as info:
        future.result(timeout=5)
    cause = info.value.__cause__
    assert isinstance(cause, RemoteTraceback) and str(cause).startswith(REMOTE_TB)
    printed = "".join(traceback.format_exception(info.value))
    assert 'File "remote.py", line 7' in printed and "direct cause" in printed


def test_other_errors_become_task_errors_naming_their_type(fake, client):
    futures = client.map(total, [[1], [2], [3]])
    fake.wait_for(p.Submit)
    fake.fail(futures[0], "mylib.errors.BadInput", "no good")
    fake.fail(futures[1], "KeyboardInterrupt", "")  # a BaseException stays remote
    fake.fail(futures[2], "StopIteration", "done")  # asyncio could not carry it
    errors = [f.exception(timeout=5) for f in futures]
    assert all(type(e) is TaskError for e in errors)
    assert errors[0].error_type == "mylib.errors.BadInput" and errors[0].message == "no good"
    assert str(errors[0]) == "mylib.errors.BadInput: no good"
    assert [e.error_type for e in errors[1:]] == ["KeyboardInterrupt", "StopIteration"]
    assert all(REMOTE_TB in str(e.__cause__) for e in errors)


def test_a_cancelled_result_cancels_the_future(fake, client):
    future = client.submit(total, [1])
    fake.wait_for(p.Submit)
    fake.push(p.Results([[future.task_id, "cancelled", None, None, {}]]))
    done, _ = concurrent.futures.wait([future], timeout=5)  # the stdlib sees it as done
    assert done == {future} and future.cancelled()
    assert future.cancel() is True  # already cancelled: nothing more to do
    client.submit(total, [2])  # a sentinel: frames arrive in order, so a Cancel would be first
    fake.wait_for(p.Submit, 2)
    assert fake.received(p.Cancel) == []


def test_duplicate_and_unknown_results_are_ignored(fake, client):
    first, second = client.map(total, [[1], [2]])
    fake.wait_for(p.Submit)
    fake.push(
        p.Results(
            [
                [first.task_id, "finished", payloads.pack_payload(1), None, {}],
                [first.task_id, "finished", payloads.pack_payload(99), None, {}],
                ["nobody/0", "finished", payloads.pack_payload(5), None, {}],
            ]
        )
    )
    fake.fail(first, "ValueError", "late")
    fake.finish(second, 2)
    assert second.result(timeout=5) == 2  # results are handled in order: all seen by now
    assert first.result(timeout=0) == 1


def test_bad_frames_from_the_scheduler_are_dropped_and_the_client_keeps_working(
    fake, client, caplog
):
    caplog.set_level(logging.WARNING, logger="tidal.client")
    good, unreadable = client.map(total, [[1], [2]])
    fake.wait_for(p.Submit)
    fake.push_frame(b"\xc1 not msgpack")
    fake.push_frame(msgpack.packb(["results"]))  # a field short
    fake.push_frame(msgpack.packb({"op": "results"}))
    fake.push(p.Welcome(1, "x", 10, ""))  # an executor's message
    fake.push(p.ClientWelcome(1, "again", "fifo", 1))  # the handshake is over
    fake.push(p.Results(["not an item", [7, "finished", 1, None, {}]]))
    fake.push(p.Results([[unreadable.task_id, "exploded", None, None, {}]]))
    fake.finish(good, 1)
    assert good.result(timeout=5) == 1
    with pytest.raises(p.ProtocolError, match="unknown outcome 'exploded'"):
        unreadable.result(timeout=0)
    dropped = [r.getMessage() for r in caplog.records if "dropped a bad" in r.getMessage()]
    assert len(dropped) == 8
    assert any("client_welcome is not sent to a connected client" in d for d in dropped)
    later = client.submit(total, [3])
    fake.wait_for(p.Submit, 2)
    fake.finish(later, 3)
    assert later.result(timeout=5) == 3


def test_a_reject_after_the_welcome_fails_pending_futures_and_further_use(fake, client, caplog):
    caplog.set_level(logging.ERROR, logger="tidal.client")
    pending = client.submit(total, [1])
    fake.wait_for(p.Submit)
    fake.push(p.Reject("disconnected: 20 bad frames within 10 s"))
    with pytest.raises(ConnectionError, match=r"disconnected this client before task .*20 bad"):
        pending.result(timeout=5)
    with pytest.raises(RuntimeError, match="was disconnected by the scheduler: disconnected: 20"):
        client.submit(total, [2])
    assert "disconnected this client" in caplog.text


def test_a_maps_big_shared_keyword_arguments_are_spooled_once(fake, client):
    model = {"weights": list(range(100_000, 130_000))}  # ~150 KB packed
    client.map(total, [[1], [2], [3]], model=model)
    [msg] = fake.wait_for(p.Submit)
    assert len(client._spooled[msg.job_id]) == 1  # one file for the three calls
    for i, (_, payload, *_) in enumerate(msg.tasks, 1):
        assert len(payload) < 1_000  # the call and a reference to its kwargs
        assert payloads.unpack_call(payload) == ([[i]], {"model": model})
    client.submit(total, [1], model=model)  # one call: its whole payload is spooled once
    msg = fake.wait_for(p.Submit, 2)[1]
    assert len(client._spooled[msg.job_id]) == 1 and payloads.is_reference(msg.tasks[0][1])
    call = payloads.open_task_call(msg.tasks[0][1], datastore.fetch_chunks, lambda: None)
    assert call == ([[1]], {"model": model})


def test_tuple_keys_come_back_as_tuples_in_arguments_and_results(fake, client):
    table = {("ad", 1): 2, ("ad", (3, 4)): 5}
    future = client.submit(total, table, by=table)
    [msg] = fake.wait_for(p.Submit)
    assert payloads.unpack_call(msg.tasks[0][1]) == ([table], {"by": table})
    fake.finish(future, table)
    assert future.result(timeout=5) == table


def test_a_result_payload_that_does_not_decode_fails_only_its_own_future(fake, client, caplog):
    caplog.set_level(logging.WARNING, logger="tidal.client")
    bad, good, wrong = client.map(total, [[1], [2], [3]])
    fake.wait_for(p.Submit)
    fake.push(
        p.Results(
            [
                [bad.task_id, "finished", b"\x92 not msgpack", None, {"running_ns": 5}],
                [good.task_id, "finished", payloads.pack_payload(2), None, {}],
                [wrong.task_id, "finished", 3, None, {}],  # a value, not its payload
            ]
        )
    )
    assert good.result(timeout=5) == 2
    with pytest.raises(p.ProtocolError, match=f"the result of {bad.task_id} is not valid msgpack"):
        bad.result(timeout=0)
    assert bad.statistics().running_s == 5e-9  # the stats that came with it still count
    with pytest.raises(p.ProtocolError, match="a finished value must be a payload"):
        wrong.result(timeout=5)  # set after good's, by the client's I/O thread
    dropped = [r.getMessage() for r in caplog.records if "dropped a bad result" in r.getMessage()]
    assert len(dropped) == 2


def test_a_result_its_executor_kept_is_fetched_released_and_completes_its_future(
    fake, client, tmp_path, monkeypatch
):
    monkeypatch.setattr(datastore, "spool_root", lambda: str(tmp_path))
    store = datastore.DataStore("executor-1", root=str(tmp_path))
    try:
        kept, lost = client.map(total, [[1], [2]])
        fake.wait_for(p.Submit)
        value = list(range(50_000))
        reference = store.put(payloads.pack_payload(value))
        gone = store.put(payloads.pack_payload([2]))
        store.drop([gone])  # its file went (the executor's host was wiped, say)
        fake.push(
            p.Results(
                [
                    [kept.task_id, "finished", payloads.pack_reference(reference), None, {}],
                    [lost.task_id, "finished", payloads.pack_reference(gone), None, {}],
                ]
            )
        )
        assert kept.result(timeout=10) == value
        assert store.held() == []  # read here, so deleted here
        with pytest.raises(
            datastore.DataUnavailable,
            match=f"the result of {lost.task_id}, kept by its executor, cannot be had",
        ):
            lost.result(timeout=10)
    finally:
        store.close()


# ---- waiting -----------------------------------------------------------------------------------


def test_as_completed_yields_futures_in_the_order_they_complete(fake, client):
    futures = client.map(total, [[0], [1], [2]])
    fake.wait_for(p.Submit)
    fake.finish(futures[0], 0)
    futures[0].result(timeout=5)
    completed = client.as_completed([*futures, futures[0]], timeout=5)
    assert next(completed) is futures[0]  # already done: first
    for index in (2, 1):
        fake.finish(futures[index], index)
        assert next(completed) is futures[index]
    assert list(completed) == []


def test_as_completed_times_out_with_futures_pending(fake, client):
    futures = client.map(total, [[0], [1]])
    fake.finish(futures[0], 0)
    futures[0].result(timeout=5)
    completed = as_completed(futures, timeout=0.05)
    assert next(completed) is futures[0]
    with pytest.raises(TimeoutError, match="1 of 2 futures still pending"):
        next(completed)


def test_gather_returns_results_in_order(fake, client):
    futures = client.map(total, [[1], [2], [3]])
    fake.wait_for(p.Submit)
    for future in reversed(futures):
        fake.finish(future, int(future.task_id[-1]))
    assert client.gather(futures, timeout=5) == [0, 1, 2]


def test_gather_raises_the_first_error_without_waiting_for_the_rest(fake, client):
    pending, failing = client.map(total, [[1], [2]])
    fake.wait_for(p.Submit)
    fake.fail(failing, "ZeroDivisionError", "division by zero")
    with pytest.raises(ZeroDivisionError, match="division by zero"):
        gather([pending, failing], timeout=5)
    assert not pending.done()
    pending.cancel()
    with pytest.raises(concurrent.futures.CancelledError):
        gather([pending])


def test_await_a_future_in_asyncio(fake, client):
    future = client.submit(total, [1, 2])
    fake.wait_for(p.Submit)

    async def main():
        fake.finish(future, 3)  # the result arrives while the coroutine awaits
        return await future

    assert asyncio.run(main()) == 3


def test_statistics_describe_a_done_task_in_seconds(fake, client):
    future = client.submit(total, [1])
    with pytest.raises(RuntimeError, match="not done yet"):
        future.statistics()
    fake.finish(
        future,
        1,
        {
            "executor_id": "node-a-1",
            "attempt": 1,
            "suspensions": 2,
            "running_ns": 1_500_000_000,
            "suspended_ns": 250_000_000,
            "queued_ns": 0,
            "records": 10,
            "started_at_ns": 100,
            "finished_at_ns": 200,
            "something_new": True,
        },
    )
    future.result(timeout=5)
    stats = future.statistics()
    assert stats == TaskStatistics("node-a-1", 1, 2, 1.5, 0.25, 0.0, 10, 100, 200)
    with pytest.raises(dataclasses.FrozenInstanceError):
        stats.records = 0
    assert TaskStatistics.from_stats({"records": "ten"}) == TaskStatistics()


def test_cancel_sends_cancel_and_a_late_result_is_ignored(fake, client):
    future, other = client.map(total, [[1], [2]])
    fake.wait_for(p.Submit)
    assert future.cancel() is True and future.cancelled()
    [cancel] = fake.wait_for(p.Cancel)
    assert cancel.task_ids == [future.task_id]
    fake.finish(future, 1)
    fake.finish(other, 2)
    assert other.result(timeout=5) == 2
    assert future.cancelled()
    assert other.cancel() is False  # finished: too late
    client.submit(total, [3])  # a sentinel: frames arrive in order, so a Cancel would be first
    fake.wait_for(p.Submit, 2)
    assert len(fake.received(p.Cancel)) == 1


def test_a_plain_task_future_works_without_a_client():
    future = TaskFuture("j/0", "j", 0)
    assert future.cancel() is True and repr(future) == "<TaskFuture j/0 cancelled>"


def test_status_returns_the_schedulers_snapshot():
    snapshot = {"executors": 2, "queued": {"stream": 0, "batch": 4}}
    with FakeScheduler(snapshot=snapshot) as fake, Client(fake, timeout=5) as client:
        assert client.status(timeout=5) == snapshot
        assert len(fake.received(p.StatusRequest)) == 1


def test_status_times_out_without_an_answer(fake, client):
    with pytest.raises(TimeoutError, match=r"sent no status within 0\.05 s"):
        client.status(timeout=0.05)


# ---- keeping the connection alive (runtime/link.py decides, tests/runtime/test_link.py) -------


@pytest.mark.slow
def test_a_silent_scheduler_is_reconnected_to_and_told_what_the_client_waits_for(fake, client):
    # The fake never answers a ping: with a future pending the client pings, hears nothing
    # for SILENT_S, and says hello again on a new connection, which the fake welcomes.
    future = client.submit(total, [1, 2])
    assert fake.wait_for(p.Ping)[0].request_id == "keepalive"
    fake.wait_for(p.ClientHello, count=2)
    (reattach,) = fake.wait_for(p.Reattach)
    assert reattach.task_ids == [future.task_id] and client.reconnects >= 1
    fake.finish(future, 3)  # on the new connection
    assert future.result(timeout=5) == 3


def test_a_stream_submit_during_a_reattach_waits_behind_it(fake, monkeypatch):
    # After a reconnect the client asks the new scheduler what it knows (reattach) and
    # submits again what it does not: until that is answered, a stream submit must not go
    # around it on the caller's thread (it may take a resubmitted job's kept results).
    refused = []
    send_urgent = client_io.ClientConnection.send_urgent

    def recording(self, frame):
        sent, look = send_urgent(self, frame)
        refused.append(not sent)
        return sent, look

    monkeypatch.setattr(client_io.ClientConnection, "send_urgent", recording)
    with Client(fake, timeout=5) as client:
        waiting = client.submit(total, [1, 2])  # pending: the client pings, hears nothing
        fake.wait_for(p.ClientHello, count=2)  # and reconnects
        fake.wait_for(p.Reattach)  # which the fake never answers
        stream = client.submit(total, [3], priority="stream")
        fake.wait_for(p.Submit, count=2)
        received = fake.received((p.Reattach, p.Submit))
        fake.finish(waiting, 3)
        fake.finish(stream, 3)
        assert waiting.result(timeout=5) == stream.result(timeout=5) == 3
    assert refused == [True]  # the stream submit was not sent on the caller's thread
    assert [type(m) for m in received] == [p.Submit, p.Reattach, p.Submit]


@pytest.mark.slow
def test_a_scheduler_that_does_not_come_back_fails_what_waits():
    fake = FakeScheduler()
    client = Client(fake, timeout=5, reconnect_timeout=0.5)
    try:
        future = client.submit(total, [1])
        fake.close()  # gone for good: nobody answers the pings, nor the hello again
        gone = rf"at {re.escape(fake.address)} did not come back within 0\.5 s"
        lost = gone + "; task .* is lost with it"
        with pytest.raises(ConnectionError, match=lost):
            future.result(timeout=10)
        with pytest.raises(RuntimeError, match=gone):
            client.submit(total, [1])
    finally:
        client.close()


# ---- the Executor adapter ----------------------------------------------------------------------


def test_executor_submit_and_map(fake, client):
    executor = client.executor()
    future = executor.submit(total, [1, 2, 3])
    results = executor.map(total, [[1], [2, 3]])
    submits = fake.wait_for(p.Submit, 3)  # map: one task per call
    assert [len(msg.tasks) for msg in submits] == [1, 1, 1]
    for msg, value in zip(submits, (6, 1, 5), strict=True):
        fake.push(
            p.Results([[msg.tasks[0][0], "finished", payloads.pack_payload(value), None, {}]])
        )
    assert future.result(timeout=5) == 6 and list(results) == [1, 5]
    executor.shutdown(wait=True)
    with pytest.raises(RuntimeError, match="after shutdown"):
        executor.submit(total, [1])


def test_executor_shutdown_can_cancel_pending_tasks(fake, client):
    with client.executor() as executor:
        future = executor.submit(total, [1])
        executor.shutdown(wait=False, cancel_futures=True)
    assert future.cancelled()
    assert fake.wait_for(p.Cancel)[0].task_ids == [future.task_id]


# ---- closing -----------------------------------------------------------------------------------


def test_close_says_goodbye_and_fails_pending_futures(fake):
    client = Client(fake, timeout=5)
    future = client.submit(total, [1])
    client.close()
    client.close()  # idempotent
    assert fake.wait_for(p.ClientGoodbye)
    with pytest.raises(ConnectionError, match="client closed before task"):
        future.result(timeout=0)
    with pytest.raises(RuntimeError, match="is closed"):
        client.submit(total, [1])
    assert future.cancel() is False


def test_an_internal_error_in_the_io_thread_is_loud_and_fails_what_waits(
    fake, client, caplog, monkeypatch
):
    def broken(self, *args):
        raise RuntimeError("a bug in the client")

    monkeypatch.setattr(TaskFuture, "_complete", broken)
    victim, waiting = client.submit(total, [1]), client.submit(total, [2])
    fake.finish(victim, 1)
    with pytest.raises(ConnectionError, match=r"IO thread crashed .*a bug in the client"):
        waiting.result(timeout=5)
    assert "IO thread crashed" in caplog.text
    with pytest.raises(RuntimeError, match="IO thread stopped after an internal error"):
        client.submit(total, [1])
    client.close()  # still closes cleanly


def test_gather_and_as_completed_take_any_futures():
    futures = [concurrent.futures.Future() for _ in range(3)]
    for value, future in zip((2, 0, 1), reversed(futures), strict=True):
        future.set_result(value)
    assert gather(futures) == [1, 0, 2]
    assert list(as_completed(futures)) == futures


def test_gather_over_plain_futures_fails_first_arrived_first_and_times_out_by_count():
    futures = [concurrent.futures.Future() for _ in range(4)]
    futures[3].set_exception(KeyError("three"))  # done before the wait: first
    with pytest.raises(KeyError, match="three"):
        gather(futures, timeout=5)
    waiting = [concurrent.futures.Future() for _ in range(3)]
    waiting[1].set_result(1)
    with pytest.raises(TimeoutError, match=r"2 of 3 futures still pending after 0\.01 s"):
        gather(waiting, timeout=0.01)

    class FailsOnceWaitedFor(concurrent.futures.Future):
        """Fails from another thread once `gather` waits on it: the failure comes while
        it waits, never before."""

        def add_done_callback(self, fn):
            super().add_done_callback(fn)
            self.late = threading.Thread(target=self.set_exception, args=(ValueError("late"),))
            self.late.start()

    waiting[2] = FailsOnceWaitedFor()
    with pytest.raises(ValueError, match="late"):  # while waiting[0] never completes
        gather(waiting, timeout=30)
    waiting[2].late.join(30)
    waiting[0].cancel()
    with pytest.raises(concurrent.futures.CancelledError):
        gather(waiting[:2])
    assert gather([]) == []


def test_preferred_nodes_travel_with_each_task(fake, client):
    client.submit(total, [1], preferred=["rack-b"])
    [one] = fake.wait_for(p.Submit)
    assert one.tasks[0][2] == {"preferred": ["rack-b"]}
    client.map(total, [[1], [2]], preferred=[["rack-a"], ["rack-b", "e7"]])
    client.map(total, [[3], [4]], preferred=["rack-c"])
    per_partition, shared = fake.wait_for(p.Submit, count=3)[1:]
    assert [t[2] for t in per_partition.tasks] == [
        {"preferred": ["rack-a"]},
        {"preferred": ["rack-b", "e7"]},
    ]
    assert [t[2] for t in shared.tasks] == [{"preferred": ["rack-c"]}] * 2
    client.submit(total, [5])
    assert len(fake.wait_for(p.Submit, count=4)[3].tasks[0]) == 2  # no preference: 2 fields
    with pytest.raises(ValueError, match="2 preferred lists for 3 partitions"):
        client.map(total, [[1], [2], [3]], preferred=[["a"], ["b"]])
    with pytest.raises(TypeError, match="node labels or executor ids"):
        client.submit(total, [1], preferred="rack-a")


class Wake:
    """The IO thread's end of the callers' wake-ups: counts them."""

    def __init__(self):
        self.sent = 0

    def send(self, frame, flags=0):
        self.sent += 1


def test_callers_frames_wake_the_io_thread_once_per_burst_and_go_out_batched():
    wake = Wake()
    queue = client_io.CallerQueue(wake, send_urgent=lambda frame: (False, False))
    for i in range(3):
        queue.send(p.encode(p.Ping(str(i), i)))
    assert wake.sent == 1  # one wake-up for the burst
    frames = queue.take()
    queue.send(b"")  # after a take, the next frame wakes it again
    assert wake.sent == 2 and queue.take() == [b""]

    class Dealer:
        def __init__(self):
            self.frames = []

        def send(self, frame, flags=0):
            self.frames.append(frame)

    big = p.encode(p.Ping("x" * (client_io.BATCH_ITEM_MAX_BYTES + 1), 0))
    outbox = collections.deque([*frames, big, frames[0]])
    dealer = Dealer()
    client_io._flush(dealer, outbox)
    assert not outbox
    first, second, third = (p.decode(frame) for frame in dealer.frames)
    assert isinstance(first, p.Batch) and first.frames == frames  # small ones, in order
    assert second.request_id == "x" * (client_io.BATCH_ITEM_MAX_BYTES + 1)  # a big one alone
    assert third == p.Ping("0", 0)


def test_an_urgent_frame_goes_out_on_the_callers_thread_only_with_nothing_queued_before_it():
    sent_now, answers = [], []

    def send_urgent(frame):
        sent_now.append(frame)
        return answers.pop(0)

    wake = Wake()
    queue = client_io.CallerQueue(wake, send_urgent)
    answers.append((True, False))
    queue.send_all([b"a"], urgent=True)  # nothing queued: sent now, the IO thread left asleep
    assert sent_now == [b"a"] and wake.sent == 0 and queue.take() == []
    answers.append((True, True))
    queue.send_all([b"b"], urgent=True)  # sent, but a frame came meanwhile: the IO thread looks
    assert sent_now == [b"a", b"b"] and wake.sent == 1 and queue.take() == []
    answers.append((False, False))
    release, submit = p.encode(p.Release(["j"])), p.encode(p.Ping("s", 1))
    queue.send_all([release, submit], urgent=True)  # not taken now: queued, one by one
    assert p.decode(sent_now[-1]) == p.Batch([release, submit]) and wake.sent == 2
    queue.send_all([b"d"], urgent=True)  # those wait: "d" goes behind them, not around them
    assert len(sent_now) == 3 and queue.take() == [release, submit, b"d"]
    queue.send(b"e")  # not urgent: queued as ever
    assert len(sent_now) == 3 and queue.take() == [b"e"]
    big = b"x" * (client_io.BATCH_ITEM_MAX_BYTES + 1)
    queue.send_all([release, big], urgent=True)  # too big to batch: queued, for the IO thread
    assert len(sent_now) == 3 and queue.take() == [release, big]
    answers.append((True, False))
    queue.send_all([big], urgent=True)  # alone, any size the frame check let through
    assert sent_now[-1] == big and queue.take() == []


def test_a_stream_submit_is_sent_by_its_caller_with_the_releases_after_it(fake, monkeypatch):
    senders, batched = [], []
    send_urgent = client_io.ClientConnection.send_urgent

    def recording(self, frame):
        sent, look = send_urgent(self, frame)
        msg = p.decode(frame)
        senders.append((threading.current_thread(), sent, msg.op))
        if isinstance(msg, p.Batch):
            batched.append([p.decode(item).op for item in msg.frames])
        return sent, look

    monkeypatch.setattr(client_io.ClientConnection, "send_urgent", recording)
    with Client(fake, timeout=5) as client:
        first = client.submit(total, [1, 2], priority="stream")
        fake.wait_for(p.Submit)
        fake.finish(first, 3)
        assert first.result(timeout=5) == 3
        client.submit(noop, priority="batch")  # batch submissions stay with the IO thread
        fake.wait_for(p.Submit, 2)
        job = first.job_id
        del first  # its job is released, told with the next submission
        client.submit(total, [3], priority="stream")
        submits = fake.wait_for(p.Submit, 3)
        [release] = fake.wait_for(p.Release)
    assert [s.priority for s in submits] == ["stream", "batch", "stream"]
    assert release.job_ids == [job]
    me = threading.current_thread()
    assert [(who is me, ok) for who, ok, _ in senders] == [(True, True), (True, True)]
    assert [op for _, _, op in senders] == ["submit", "batch"]  # the release rode along
    assert batched == [["submit", "release"]]  # behind the submit: its launch goes first

"""A real executor process over ZeroMQ, driven by the stub scheduler. Every process a test
starts is stopped by the fixture, also when the test fails."""

from __future__ import annotations

import textwrap
import time

import pytest
import zmq

from tests.stub import StubScheduler
from tidal.runtime import payloads
from tidal.runtime import protocol as p
from tidal.runtime.executor import Executor
from tidal.runtime.frames import FrameReader
from tidal.runtime.processes import spawn_executor, stop_process

pytestmark = pytest.mark.slow


@pytest.fixture
def executor():
    with StubScheduler(heartbeat_ms=50) as stub:
        proc = spawn_executor(
            stub.address, node="node-a", extra_args=["--suspend-timeout-ms", "50"]
        )
        try:
            hello = stub.expect(p.Hello, timeout=30)
            yield stub, hello, proc
        finally:
            stop_process(proc)


def launch(stub, executor_id, task_id, fn, args=(), kwargs=None, main_path=None, payload=None):
    """Launch `fn(*args, **kwargs)`, or with `payload` given, with that payload as it is."""
    if payload is None:
        payload = payloads.pack_call(args, kwargs or {})
    stub.send(
        executor_id,
        p.Launch(task_id, fn, main_path, payload, 0, "batch", time.monotonic_ns()),
    )


def result(finished):
    """The value a Finished report carries, unpacked from its payload."""
    return payloads.unpack_payload(finished.result)


def test_handshake_and_heartbeats_carry_identity_and_metrics(executor):
    stub, hello, proc = executor
    assert hello.version == p.PROTOCOL_VERSION and hello.node == "node-a"
    assert hello.slots == 1 and hello.pid == proc.pid
    beat = stub.expect(p.Heartbeat)
    assert beat.executor_id == hello.executor_id and beat.node == "node-a"
    assert beat.rss_bytes > 1_000_000 and beat.mem_available_bytes > 0
    assert (beat.running, beat.suspended, beat.queued) == (0, 0, 0)


def test_runs_a_task_and_reports_its_result(executor):
    stub, hello, _ = executor
    launch(stub, hello.executor_id, "t1", "tidal.workloads.synthetic:total", [list(range(1000))])
    started = stub.expect(p.Started, task_id="t1")
    finished = stub.expect(p.Finished, task_id="t1")
    assert result(finished) == sum(range(1000)) and started.attempt == 0
    assert finished.stats["records"] == 1000 and finished.stats["executor_id"] == hello.executor_id


def test_launches_are_acknowledged_before_they_run_even_one_that_kills_the_process(executor):
    """`received` names what reached the kernel, once per read: a task that takes its
    executor down has been acknowledged, so the loss counts toward max_retries."""
    stub, hello, proc = executor
    ex = hello.executor_id
    busy = p.Launch(
        "busy",
        "tidal.workloads.synthetic:spin",
        None,
        payloads.pack_call([list(range(2000))], {"record_us": 50.0}),
        3,
        "batch",
        0,
    )
    queued = p.Launch(
        "queued",
        "tidal.workloads.synthetic:total",
        None,
        payloads.pack_call([[1, 2]], {}),
        0,
        "batch",
        0,
    )
    bad_chunk = p.LaunchChunk(
        "c#1", "tidal.workloads.synthetic:total", None, [["x", 1]], 0, "batch", 0
    )  # a subtask's payload must be bytes: dropped
    stub.send_frame(ex, p.encode(p.Batch([p.encode(busy), p.encode(bad_chunk), p.encode(queued)])))
    received = stub.expect(p.Received)
    assert received.launches == [["busy", 3, 0], ["queued", 0, 0]]  # not the dropped chunk
    stub.send(ex, p.Kill("busy", time.monotonic_ns()))
    stub.expect(p.Killed, task_id="busy")
    stub.expect(p.Finished, task_id="queued")
    # Discussion: a task that kills its process within microseconds can beat the `received`
    # out of it (libzmq's I/O thread sends it; docs/notes.md): 0.2 s is far more than that.
    launch(stub, ex, "doomed", "tidal.workloads.synthetic:crash_executor", [70, 0.2])
    (doomed,) = stub.expect(p.Received).launches
    assert doomed[:2] == ["doomed", 0]
    assert proc.wait(timeout=30) == 70


def test_suspends_a_busy_task_over_the_socket_and_resumes_it_exactly(executor):
    stub, hello, _ = executor
    ex = hello.executor_id
    data = list(range(3000))
    launch(stub, ex, "busy", "tidal.workloads.synthetic:spin", [data], {"record_us": 50.0})
    stub.expect(p.Started, task_id="busy")
    progress = []
    for _ in range(3):
        stub.send(ex, p.Suspend("busy", time.monotonic_ns()))
        suspended = stub.expect(p.Suspended, task_id="busy")
        progress.append(suspended.records)
        deadline = time.monotonic() + 10.0
        beat = stub.expect(p.Heartbeat)
        while beat.suspended != 1:  # metrics follow the state
            if time.monotonic() > deadline:
                raise AssertionError(f"heartbeats never showed the suspended task: {beat!r}")
            beat = stub.expect(p.Heartbeat)
        # Its running time and records, as the kernel counted them when it parked.
        running_ns, records = beat.task_records["busy"]
        assert records == suspended.records and running_ns > 0
        stub.send(ex, p.Resume("busy", time.monotonic_ns()))
        stub.expect(p.Resumed, task_id="busy")
    finished = stub.expect(p.Finished, task_id="busy", timeout=30)
    assert result(finished) == sum(data) and finished.stats["suspensions"] == 3
    assert progress == sorted(progress) and progress[-1] < len(data)


def test_commands_read_by_the_busy_task_thread_leave_the_rest_to_the_listener(executor):
    """A busy task's thread reads the frames the gate's watcher saw (runtime/executor.py,
    `_read_commands`): it applies task commands itself and leaves a rejoin and a bad item
    to the listener, which handles them as ever."""
    stub, hello, _ = executor
    ex = hello.executor_id
    data = list(range(10_000))
    launch(stub, ex, "busy", "tidal.workloads.synthetic:spin", [data], {"record_us": 50.0})
    stub.expect(p.Started, task_id="busy")
    frames = [p.encode(p.Suspend("busy", time.monotonic_ns())), b"\xc1", p.encode(p.Rejoin("x"))]
    stub.send_frame(ex, p.encode(p.Batch(frames)))
    seen: dict[type, p.Message] = {}
    deadline = time.monotonic() + 10.0
    while not (p.Hello in seen and p.Suspended in seen):  # in either order
        if time.monotonic() > deadline:
            raise AssertionError(f"within 10 s only these arrived: {list(seen)}")
        _, msg = stub.recv(max(0.0, deadline - time.monotonic()))
        if isinstance(msg, p.Hello | p.Suspended):
            seen[type(msg)] = msg
    again, suspended = seen[p.Hello], seen[p.Suspended]
    # The listener said hello again (the rejoin), holding the task; the task parked.
    assert again.executor_id == ex and again.holding[0][0] == "busy"
    assert suspended.task_id == "busy" and suspended.records < len(data)
    stub.send(ex, p.Resume("busy", time.monotonic_ns()))
    stub.expect(p.Resumed, task_id="busy")
    stub.send(ex, p.Kill("busy", time.monotonic_ns()))
    stub.expect(p.Killed, task_id="busy")


def test_a_stream_task_takes_the_slot_of_a_suspended_batch_task(executor):
    stub, hello, _ = executor
    ex = hello.executor_id
    launch(
        stub,
        ex,
        "batch",
        "tidal.workloads.synthetic:spin",
        [list(range(2000))],
        {"record_us": 50.0},
    )
    stub.expect(p.Started, task_id="batch")
    stub.send(ex, p.Suspend("batch", time.monotonic_ns()))
    launch(stub, ex, "stream", "tidal.workloads.synthetic:total", [[1, 2, 3]])
    order = []
    deadline = time.monotonic() + 10.0
    while len(order) < 3:
        if time.monotonic() > deadline:
            raise AssertionError(f"only these reports arrived within 10 s: {order}")
        _, msg = stub.recv(max(0.0, deadline - time.monotonic()))
        if isinstance(msg, p.Suspended | p.Started | p.Finished):
            order.append((type(msg).__name__, msg.task_id))
    assert order == [("Suspended", "batch"), ("Started", "stream"), ("Finished", "stream")]
    stub.send(ex, p.Resume("batch", time.monotonic_ns()))
    assert result(stub.expect(p.Finished, task_id="batch", timeout=30)) == sum(range(2000))


def test_task_errors_and_missing_functions_fail_the_task_not_the_executor(executor):
    stub, hello, _ = executor
    ex = hello.executor_id
    launch(stub, ex, "nomod", "no_such_module_xyz:f")
    failed = stub.expect(p.Failed, task_id="nomod")
    assert failed.error_type == "tidal.runtime.functions.FunctionNotFound"
    assert "no_such_module_xyz" in failed.message
    launch(stub, ex, "noattr", "tidal.workloads.synthetic:nope")
    assert "has no attribute 'nope'" in stub.expect(p.Failed, task_id="noattr").message
    launch(stub, ex, "raises", "tidal.workloads.synthetic:total", [["a", "b"]])
    failed = stub.expect(p.Failed, task_id="raises")
    assert failed.error_type == "TypeError" and "in total" in failed.traceback
    launch(stub, ex, "fine", "tidal.workloads.synthetic:total", [[5]])
    assert result(stub.expect(p.Finished, task_id="fine")) == 5


def test_a_payload_that_does_not_decode_fails_that_task_not_the_executor(executor):
    stub, hello, proc = executor
    ex = hello.executor_id
    launch(stub, ex, "junk", "tidal.workloads.synthetic:total", payload=b"\x92\x91 truncated")
    failed = stub.expect(p.Failed, task_id="junk")
    assert failed.error_type == "tidal.runtime.protocol.ProtocolError"
    assert failed.message.startswith("task payload is not valid msgpack")
    # 0xc1 (never used by msgpack) marks a reference to a spooled payload: not one either.
    launch(stub, ex, "ref", "tidal.workloads.synthetic:total", payload=b"\xc1 not msgpack")
    failed = stub.expect(p.Failed, task_id="ref")
    assert failed.message.startswith("task payload's reference is not valid msgpack")
    launch(
        stub,
        ex,
        "shape",
        "tidal.workloads.synthetic:total",
        payload=payloads.pack_payload({"a": 1}),
    )
    assert "must be [args, kwargs]" in stub.expect(p.Failed, task_id="shape").message
    launch(stub, ex, "after", "tidal.workloads.synthetic:total", [[1, 2]])
    assert result(stub.expect(p.Finished, task_id="after")) == 3
    assert proc.poll() is None


def test_malformed_frames_are_dropped_and_the_executor_keeps_working(executor):
    stub, hello, proc = executor
    ex = hello.executor_id
    for frame in [
        b"",
        b"\xc1",
        b"\x93\xa6launch\x01\x02",
        b"\x91\xa7unknown",
        p.encode(p.Hello(1, "x", "y", 1, 1, "h")),  # right codec, wrong direction
        b"\xdd\xff\xff\xff\xff",
        b"\x91" * 10_000,
    ]:
        stub.send_frame(ex, frame)
    launch(stub, ex, "after", "tidal.workloads.synthetic:total", [[1, 2]])
    assert result(stub.expect(p.Finished, task_id="after")) == 3
    assert proc.poll() is None


def test_well_formed_commands_it_cannot_use_are_dropped_and_the_executor_keeps_working(executor):
    stub, hello, proc = executor
    ex = hello.executor_id
    now = time.monotonic_ns()
    # A chunk whose subtasks are not [task_id, payload]: dropped whole, so a steal from it
    # (which takes ids from its tail, on the task thread) never meets a malformed one.
    for subtasks in (
        [7],
        [[]],
        [{"a": 1}],
        [["ok", payloads.pack_call([[1]], {})], ["no payload"]],
    ):
        stub.send(
            ex, p.LaunchChunk("c", "tidal.workloads.synthetic:total", None, subtasks, 0, "batch", 0)
        )
    # A span chunk (a bulk job's range) with a bad span or a subtask that is not a payload.
    call = payloads.pack_call([[1]], {})
    for span, subtasks in ((["j", -1], [call]), (["j"], [call]), ([3, 0], [call]), (["j", 0], [7])):
        stub.send(
            ex,
            p.LaunchChunk(
                "c", "tidal.workloads.synthetic:total", None, subtasks, 0, "batch", 0, span
            ),
        )
    stub.send(ex, p.Steal("c", 1, now))
    assert stub.expect(p.Stolen).task_ids == []  # no chunk "c" here: nothing to give
    # A second welcome (with another version, which before the handshake would end it).
    stub.send(ex, p.Welcome(p.PROTOCOL_VERSION + 1, "impostor", 1, ""))
    launch(stub, ex, "after", "tidal.workloads.synthetic:total", [[1, 2]])
    assert result(stub.expect(p.Finished, task_id="after")) == 3
    assert proc.poll() is None


def test_a_task_without_record_boundaries_is_reported_unsuspendable(executor, tmp_path):
    stub, hello, _ = executor
    ex = hello.executor_id
    script = tmp_path / "stuck.py"
    script.write_text(
        textwrap.dedent("""
        import time

        def stuck(seconds):
            end = time.perf_counter() + seconds
            n = 0
            while time.perf_counter() < end:  # busy in Python, no gated input, no yield
                n += 1
            return "done"
    """)
    )
    launch(stub, ex, "stuck", "__main__:stuck", [0.5], main_path=str(script))
    stub.expect(p.Started, task_id="stuck")
    stub.send(ex, p.Suspend("stuck", time.monotonic_ns()))
    failure = stub.expect(p.SuspendFailed, task_id="stuck")
    assert "no record boundary" in failure.reason and failure.waited_ns >= 50_000_000
    assert result(stub.expect(p.Finished, task_id="stuck")) == "done"


def test_a_task_that_keeps_the_thread_after_an_idle_spell_still_has_its_commands_read(
    tmp_path,
):
    """An idle executor's task thread reads its commands itself; the first task after that
    sleeps (no record boundary, the GIL free). A suspend sent meanwhile is still read, and
    answered as unsuspendable, while it sleeps: not at its end, nor at the next heartbeat
    (5 s here)."""
    script = tmp_path / "sleepy.py"
    script.write_text("import time\n\ndef nap(seconds):\n    time.sleep(seconds)\n    return 1\n")
    with StubScheduler(heartbeat_ms=5_000) as stub:
        proc = spawn_executor(stub.address, extra_args=["--suspend-timeout-ms", "50"])
        try:
            ex = stub.expect(p.Hello, timeout=30).executor_id
            launch(stub, ex, "warm", "__main__:nap", [0], main_path=str(script))
            stub.expect(p.Finished, task_id="warm")  # then idle, asleep on the connection
            launch(stub, ex, "nap", "__main__:nap", [3.0], main_path=str(script))
            stub.expect(p.Started, task_id="nap")
            stub.send(ex, p.Suspend("nap", time.monotonic_ns()))
            # (Before the nap's Finished, or `expect` fails on it.)
            assert "no record boundary" in stub.expect(p.SuspendFailed, task_id="nap").reason
            stub.expect(p.Finished, task_id="nap")
        finally:
            stop_process(proc)


def test_functions_from_the_users_main_script_resolve_on_the_executor(executor, tmp_path):
    stub, hello, _ = executor
    script = tmp_path / "user_script.py"
    script.write_text(
        textwrap.dedent("""
        from tidal.runtime.task import task

        @task
        def double(part):
            return [2 * x for x in part]

        if __name__ == "__main__":
            raise SystemExit("the main block must not run on the executor")
    """)
    )
    launch(stub, hello.executor_id, "m", "__main__:double", [[1, 2]], main_path=str(script))
    assert result(stub.expect(p.Finished, task_id="m")) == [2, 4]


def test_shutdown_kills_leftover_tasks_says_goodbye_and_exits_cleanly(executor):
    stub, hello, proc = executor
    ex = hello.executor_id
    launch(
        stub,
        ex,
        "long",
        "tidal.workloads.synthetic:spin",
        [list(range(100_000))],
        {"record_us": 50.0},
    )
    stub.expect(p.Started, task_id="long")
    stub.send(ex, p.Shutdown("test over"))
    killed = stub.expect(p.Killed, task_id="long")
    assert killed.stats["running_ns"] > 0
    stub.expect(p.Goodbye)
    assert proc.wait(10) == 0


def test_an_executor_that_gets_no_welcome_gives_up_with_an_error():
    with StubScheduler() as stub:
        address = stub.address
    # Nobody listens there any more: the executor must not hang forever.
    proc = spawn_executor(address, extra_args=["--connect-timeout", "0.5"])
    try:
        assert proc.wait(20) == 2
    finally:
        stop_process(proc)


def test_an_absurd_heartbeat_interval_from_the_scheduler_cannot_wedge_the_executor():
    with StubScheduler(heartbeat_ms=2**62) as stub:
        proc = spawn_executor(stub.address)
        try:
            hello = stub.expect(p.Hello, timeout=30)
            launch(stub, hello.executor_id, "t", "tidal.workloads.synthetic:total", [[1, 2, 3]])
            assert result(stub.expect(p.Finished, task_id="t")) == 6
            stub.send(hello.executor_id, p.Shutdown("test over"))
            stub.expect(p.Goodbye)
            assert proc.wait(10) == 0
        finally:
            stop_process(proc)


def test_the_task_thread_hands_commands_on_in_order_and_the_rest_to_the_listener():
    """`_read_commands` on its own: task commands up to the first other message go to the
    kernel, that message and everything after it to the listener, in order."""
    ex = Executor("tcp://127.0.0.1:9", realtime=False)  # nothing there: never connects
    router = ex._context.socket(zmq.ROUTER)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    dealer = ex._context.socket(zmq.DEALER)
    try:
        dealer.connect(f"tcp://127.0.0.1:{port}")
        dealer.send(b"hi")
        routing_id, _ = router.recv_multipart()
        ex._dealer, ex._dealer_reader = dealer, FrameReader(dealer)
        ex._link.hello_sent()
        ex._link.welcomed()
        frames = [
            p.encode(p.Suspend("a", 1)),
            p.encode(p.Resume("a", 2)),
            p.encode(p.Rejoin("x")),
            p.encode(p.Kill("a", 3)),
        ]
        router.send_multipart([routing_id, p.encode(p.Batch(frames))])
        assert dealer.poll(10_000)
        assert ex._read_commands()
        commands = []
        while not ex.kernel._inbox.empty():
            commands.append(ex.kernel._inbox.get_nowait().op)
        assert commands == ["suspend", "resume"]
        assert [type(m).__name__ for m in ex._for_listener] == ["Rejoin", "Kill"]
        # Before the handshake completes nothing is the task thread's to handle.
        ex._for_listener.clear()
        ex._link = type(ex._link)(ping_s=1, silent_s=3, connect_timeout_s=9, reconnect_timeout_s=9)
        router.send_multipart([routing_id, p.encode(p.Kill("a", 4))])
        assert dealer.poll(10_000) and ex._read_commands()
        assert ex.kernel._inbox.empty() and [type(m) for m in ex._for_listener] == [p.Kill]
    finally:
        dealer.close(linger=0)
        router.close(linger=0)
        ex._reports.close(linger=0)
        ex._to_listener.close(linger=0)
        if ex._lane is not None:
            ex._lane.close()
        ex._context.term()
        ex._idle.close()
        ex._rss.close()


def test_a_span_chunk_runs_and_reports_its_results_by_index(executor):
    stub, hello, _ = executor
    ex = hello.executor_id
    calls = [payloads.pack_call([[i, i]], {}) for i in range(5)]
    calls[3] = payloads.pack_call([["x"]], {})  # total(["x"]) fails
    stub.send(
        ex,
        p.LaunchChunk(
            "j#1", "tidal.workloads.synthetic:total", None, calls, 0, "batch", 0, ["j", 40]
        ),
    )
    batch = stub.expect(p.ChunkBatch)  # five tiny tasks: one batch
    stub.expect(p.Finished, task_id="j#1")
    assert (batch.chunk_id, batch.job_id, batch.start) == ("j#1", "j", 40)
    errors = dict(batch.errors)
    assert list(errors) == [43] and errors[43][0] == "TypeError"
    values = [None if v is None else payloads.unpack_payload(v) for v in batch.values]
    assert values == [0, 2, 4, None, 8]


def test_an_executor_refuses_a_suspend_timeout_past_the_schedulers_overdue_time():
    # Its watchdog must answer before the scheduler counts it busy (150 ms), or every
    # suspension without a boundary would make it busy; refused before anything opens.
    with pytest.raises(ValueError, match=r"must be > 0 and <= 125 ms, not 200"):
        Executor("tcp://127.0.0.1:1", suspend_timeout_ns=200_000_000)

"""The C gate's watcher (runtime/_gate.c) and the hub's hand-off to the listener
(runtime/kernel.py): a descriptor that becomes readable raises the gate from a thread that
takes no GIL, and the task waits at its boundary until the listener says it read."""

from __future__ import annotations

import os
import threading
import time

import pytest

from tests.runtime.test_kernel import Transport
from tidal.runtime import kernel as kernel_module
from tidal.runtime import protocol as p
from tidal.runtime import realtime
from tidal.runtime.gate import IMPLEMENTATION, Gate, PyGate, py_gated_iterator
from tidal.runtime.kernel import Kernel

needs_c = pytest.mark.skipif(IMPLEMENTATION != "c", reason="the C gate is not built")


def wait_until(condition, timeout: float = 5.0) -> bool:
    """Poll `condition` (another thread changes it) until true or `timeout` passes."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.0005)  # the watcher is a C thread: nothing to wait on but the flag
    return True


@pytest.fixture
def pipe():
    read_end, write_end = os.pipe()
    yield read_end, write_end
    os.close(read_end)
    os.close(write_end)


@needs_c
def test_a_readable_descriptor_raises_the_gate_and_reading_it_quiets_the_watcher(pipe):
    read_end, write_end = pipe
    gate = Gate()
    gate.watch(read_end)
    try:
        assert gate.requested == 0 and gate.watch_raises == 0
        os.write(write_end, b"x")
        assert wait_until(lambda: gate.requested == 1)
        assert gate.watch_raises >= 1
        os.read(read_end, 1)  # as the listener would: nothing left to read
        time.sleep(0.01)  # a raise under way when it was read may still land
        gate.requested = 0
        raises = gate.watch_raises
        time.sleep(0.01)  # long enough for a watcher that had not quieted to raise again
        assert gate.requested == 0 and gate.watch_raises == raises
        os.write(write_end, b"y")  # a new arrival is seen again
        assert wait_until(lambda: gate.requested == 1)
    finally:
        gate.unwatch()


@needs_c
def test_the_watcher_lifts_a_boosted_threads_nice_as_it_raises(pipe):
    read_end, write_end = pipe
    tid: list[int] = []
    done = threading.Event()

    def batch_thread() -> None:
        tid.append(threading.get_native_id())
        os.setpriority(os.PRIO_PROCESS, tid[0], 10)  # as a batch task's thread runs
        done.wait(10)

    worker = threading.Thread(target=batch_thread)
    worker.start()
    gate = Gate()
    try:
        assert wait_until(lambda: tid and os.getpriority(os.PRIO_PROCESS, tid[0]) == 10)
        try:
            os.setpriority(os.PRIO_PROCESS, tid[0], 9)
        except PermissionError:
            pytest.skip("raising a thread's priority is not permitted here")
        gate.boost(tid[0], 2)
        gate.watch(read_end)
        os.write(write_end, b"x")  # a command arrives
        assert wait_until(lambda: os.getpriority(os.PRIO_PROCESS, tid[0]) == 2)
        assert gate.requested == 1
    finally:
        gate.unwatch()
        done.set()
        worker.join(10)


def _policy(tid: int) -> int:
    return os.sched_getscheduler(tid)


@needs_c
def test_the_watcher_puts_a_boosted_thread_at_sched_fifo_as_it_raises_and_back_after(pipe):
    read_end, write_end = pipe
    tid: list[int] = []
    done = threading.Event()

    def batch_thread() -> None:
        tid.append(threading.get_native_id())
        done.wait(10)

    worker = threading.Thread(target=batch_thread)
    worker.start()
    gate = Gate()
    try:
        assert wait_until(lambda: bool(tid))
        try:  # as the executor checks (runtime/realtime.py `realtime_permitted`)
            os.sched_setscheduler(tid[0], os.SCHED_FIFO, os.sched_param(1))
            os.sched_setscheduler(tid[0], os.SCHED_OTHER, os.sched_param(0))
        except PermissionError:
            pytest.skip("SCHED_FIFO is not permitted here")
        gate.boost(tid[0], 0, realtime=True)
        gate.watch(read_end)
        os.write(write_end, b"x")  # a command arrives
        assert wait_until(lambda: gate.requested == 1)
        assert _policy(tid[0]) == os.SCHED_FIFO and gate.boost_realtime
        os.read(read_end, 1)  # read: the watcher only has the boost's end left to do
        assert wait_until(lambda: _policy(tid[0]) == os.SCHED_OTHER)  # after ~2 ms
        assert os.getpriority(os.PRIO_PROCESS, tid[0]) == 0  # its nice is kept
        gate.boost_now(1_000_000)  # the listener's hurry, or a stream task's start
        assert _policy(tid[0]) == os.SCHED_FIFO
        assert wait_until(lambda: _policy(tid[0]) == os.SCHED_OTHER)
        with pytest.raises(ValueError, match="duration > 0"):
            gate.boost_now(0)
    finally:
        gate.unwatch()
        done.set()
        worker.join(10)


def test_a_task_thread_runs_stream_tasks_boosted_and_batch_tasks_at_sched_other(monkeypatch):
    calls = []
    monkeypatch.setattr(realtime, "set_thread_nice", lambda tid, nice: calls.append(nice) or True)
    monkeypatch.setattr(
        realtime.os, "sched_setscheduler", lambda tid, policy, _: calls.append(policy)
    )
    nice = realtime.TaskThreadNice(task_nice=10, stream_nice=0)
    nice.tid = 1234
    nice.set_class("stream")
    nice.set_class("batch")
    assert calls == [0, 10]  # no boost asked for: the nice only
    calls.clear()
    nice.realtime_boost = lambda ns: calls.append(("boost", ns))
    nice.set_class("stream")
    nice.set_class("batch")
    assert calls == [0, ("boost", realtime.STREAM_REALTIME_NS), 10, os.SCHED_OTHER]


@needs_c
def test_watch_follows_a_new_descriptor_and_unwatch_stops(pipe):
    read_end, write_end = pipe
    other_read, other_write = os.pipe()
    gate = Gate()
    try:
        gate.watch(read_end)
        gate.watch(other_read)  # a reconnect: the new connection's descriptor
        os.write(other_write, b"x")
        assert wait_until(lambda: gate.requested == 1)
        gate.unwatch()
        gate.requested = 0
        os.write(write_end, b"y")
        time.sleep(0.01)
        assert gate.requested == 0  # stopped: nothing raises it any more
    finally:
        gate.unwatch()
        os.close(other_read)
        os.close(other_write)


def test_the_pure_python_gate_has_no_watcher():
    gate = PyGate()
    gate.watch(0)
    gate.unwatch()
    assert gate.watch_raises == 0


@pytest.mark.parametrize(
    "read_commands", [None, lambda: False], ids=["no reader", "a reader that cannot read now"]
)
def test_a_task_waits_at_its_boundary_until_the_listener_has_read(monkeypatch, read_commands):
    """The executor's order: frames arrive (the watcher raises the gate), the task enters
    the hub, the listener reads them and posts a suspend, then says it read. The watcher is
    played by the task's own input here (a pure-Python gate whose raise count it bumps), so
    the order is the same every run."""
    # The bound on the wait is not under test: a loaded machine may take this test's
    # listener thread longer than the real one's 0.5 ms to come.
    monkeypatch.setattr(kernel_module, "LISTENER_WAIT_S", 30.0)
    transport = Transport()
    kernel = Kernel(
        transport,
        gate_factory=PyGate,
        gated_iterator=py_gated_iterator,
        read_commands=read_commands,  # the executor's when the listener holds the connection
    )

    def listener():
        # Like the real one, it can act only once the hub has taken the raise (it lowers
        # the gate first) and let go of the GIL.
        assert wait_until(lambda: kernel.gate.requested == 0)
        kernel.suspend("spin")
        kernel.listened()

    threads = []

    kernel.launch("spin", sum, [watched_records(kernel, lambda: start(threads, listener))])
    kernel.run()  # returns when nothing can run: the task is suspended
    (suspended,) = transport.of(p.Suspended, "spin")
    # Applied while the task waited at its boundary: the hub had control already.
    assert suspended.latency_ns == 0 and suspended.records == 1_001
    threads[0].join(30)
    kernel.kill("spin")
    kernel.run()
    kernel.close()


def test_the_hub_reads_what_the_watcher_saw_itself_when_it_can():
    """With a `read_commands` hook (the executor's: it reads the command connection on the
    task thread), the hub applies what that read at the same boundary, with no listener."""
    transport = Transport()
    reads = []

    def read_commands():
        reads.append(kernel.gate.requested)
        kernel.suspend("spin")  # what the frames said
        return True

    kernel = Kernel(
        transport,
        gate_factory=PyGate,
        gated_iterator=py_gated_iterator,
        read_commands=read_commands,
    )

    kernel.launch("spin", sum, [watched_records(kernel)])
    kernel.run()
    (suspended,) = transport.of(p.Suspended, "spin")
    assert reads == [0] and suspended.records == 1_001  # parked at that very boundary
    kernel.kill("spin")
    kernel.run()
    kernel.close()


def watched_records(kernel, arrived=lambda: None):
    """A task's input of 1,000,000 records; at the 1,000th, frames "arrive": the gate's
    watcher is played by bumping its raise count and raising the gate, then `arrived()`."""
    for i in range(1_000_000):
        if i == 1_000:
            kernel.gate.watch_raises += 1
            kernel.gate.requested = 1
            arrived()
        yield i


def start(threads, target):
    threads.append(threading.Thread(target=target))
    threads[-1].start()

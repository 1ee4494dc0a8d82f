"""The C gate's watcher (runtime/_gate.c) and the hub's hand-off to the listener
(runtime/kernel.py): a descriptor that becomes readable raises the gate from a thread that
takes no GIL, and the task waits at its boundary until the listener says it read."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterator

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


@contextlib.contextmanager
def batch_thread(nice: int, then: Callable[[], None] = lambda: None) -> Iterator[int]:
    """A thread at `nice`, as a batch task's thread runs, that runs `then()` and waits for
    the block to end; its native id."""
    tid: list[int] = []
    done = threading.Event()

    def run() -> None:
        tid.append(threading.get_native_id())
        os.setpriority(os.PRIO_PROCESS, tid[0], nice)
        then()
        done.wait(10)

    worker = threading.Thread(target=run)
    worker.start()
    try:
        assert wait_until(lambda: tid and os.getpriority(os.PRIO_PROCESS, tid[0]) == nice)
        yield tid[0]
    finally:
        done.set()
        worker.join(10)


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
def test_a_second_descriptor_raises_the_gate_as_the_first_does(pipe):
    read_end, write_end = pipe
    lane_read, lane_write = os.pipe()  # an executor's lane (runtime/lanes.py)
    gate = Gate()
    gate.watch(read_end, also=lane_read)
    try:
        os.write(lane_write, b"x")
        assert wait_until(lambda: gate.requested == 1)
        os.read(lane_read, 1)
        time.sleep(0.01)  # a raise under way when it was read may still land
        gate.requested = 0
        os.write(write_end, b"y")  # the first is still watched
        assert wait_until(lambda: gate.requested == 1)
        os.read(read_end, 1)
        gate.watch(read_end)  # watched again without it: the lane is not watched any more
        time.sleep(0.01)
        gate.requested = 0
        raises = gate.watch_raises
        os.write(lane_write, b"z")
        time.sleep(0.01)  # long enough for a watcher that still watched it to raise
        assert gate.requested == 0 and gate.watch_raises == raises
    finally:
        gate.unwatch()
        os.close(lane_read)
        os.close(lane_write)


@needs_c
def test_the_watcher_lifts_a_boosted_threads_nice_as_it_raises(pipe):
    read_end, write_end = pipe
    gate = Gate()
    with batch_thread(10) as tid:
        try:
            try:
                os.setpriority(os.PRIO_PROCESS, tid, 9)
            except PermissionError:
                pytest.skip("raising a thread's priority is not permitted here")
            gate.boost(tid, 2)
            gate.watch(read_end)
            os.write(write_end, b"x")  # a command arrives
            assert wait_until(lambda: os.getpriority(os.PRIO_PROCESS, tid) == 2)
            assert gate.requested == 1
        finally:
            gate.unwatch()


def _policy(tid: int) -> int:
    """A thread's scheduling policy, without the reset-on-fork flag a boost sets."""
    return os.sched_getscheduler(tid) & ~os.SCHED_RESET_ON_FORK


@needs_c
def test_a_boosted_thread_is_at_sched_fifo_for_a_bounded_while_and_its_children_are_not(pipe):
    read_end, write_end = pipe
    spawn, spawned = threading.Event(), threading.Event()
    child_policy: list[int] = []

    def start_a_thread() -> None:  # a task that starts a thread while it is boosted
        spawn.wait(10)
        child = threading.Thread(target=lambda: child_policy.append(_policy(0)))
        child.start()
        child.join(10)
        spawned.set()

    gate = Gate()
    with batch_thread(5, start_a_thread) as tid:
        try:
            try:  # as the executor checks (runtime/realtime.py `realtime_permitted`)
                os.sched_setscheduler(tid, os.SCHED_FIFO, os.sched_param(1))
                os.sched_setscheduler(tid, os.SCHED_OTHER, os.sched_param(0))
                os.setpriority(os.PRIO_PROCESS, tid, 5)
            except PermissionError:
                pytest.skip("SCHED_FIFO is not permitted here")
            gate.boost(tid, 3, realtime=True)
            gate.boost_now(10**9)
            assert _policy(tid) == os.SCHED_OTHER  # no watcher: nobody would end a boost
            gate.watch(read_end)
            gate.boost_now(10**9)  # the listener's hurry, or a stream task's start
            assert _policy(tid) == os.SCHED_FIFO and gate.boost_realtime
            spawn.set()
            assert spawned.wait(10) and child_policy == [os.SCHED_OTHER]  # reset on fork
            gate.unboost()  # the hub switches into a batch task
            assert _policy(tid) == os.SCHED_OTHER
            assert os.getpriority(os.PRIO_PROCESS, tid) == 5  # its nice is its own
            gate.boost_now(1_000_000)
            assert wait_until(lambda: _policy(tid) == os.SCHED_OTHER)  # the watcher ends it
            # Frames arrive and stay unread (a task in one long C call): the first raise
            # boosts it for 2 ms at most, and the raises that follow do not boost it again.
            os.write(write_end, b"x")
            assert wait_until(lambda: gate.requested == 1)
            assert os.getpriority(os.PRIO_PROCESS, tid) == 3  # lifted, as before
            assert wait_until(lambda: _policy(tid) == os.SCHED_OTHER)
            raises = gate.watch_raises
            assert wait_until(lambda: gate.watch_raises >= raises + 5)  # still raising...
            assert _policy(tid) == os.SCHED_OTHER  # ...and no boost again
            gate.boost_now(10**9)
            gate.unwatch()
            assert _policy(tid) == os.SCHED_OTHER  # a boost in force ends with the watcher
        finally:
            gate.unwatch()
            spawn.set()  # (if skipped before it was: the thread goes on to its end)


class FakeGate:
    def __init__(self) -> None:
        self.calls: list[object] = []

    def boost_now(self, for_ns: int) -> None:
        self.calls.append(("boost", for_ns))

    def unboost(self) -> None:
        self.calls.append("unboost")


def test_a_task_thread_boosts_stream_work_once_and_runs_batch_work_unboosted(monkeypatch):
    nices = []
    monkeypatch.setattr(realtime, "set_thread_nice", lambda tid, nice: nices.append(nice) or True)
    nice = realtime.TaskThreadNice(task_nice=10, stream_nice=0)
    nice.tid = 1234
    nice.set_class("stream")
    nice.set_class("batch")
    assert nices == [0, 10]  # no gate to boost with: the nice only
    gate = nice.realtime_gate = FakeGate()
    for priority in ("stream", "stream", "batch", "batch", "stream"):
        nice.set_class(priority)  # the second: switched back in after a command came
    boost = ("boost", realtime.STREAM_REALTIME_NS)
    assert gate.calls == [boost, "unboost", "unboost", boost]
    # Waiting for work: at the stream nice, unboosted; a stream task started next is boosted
    # as one that follows batch work is.
    gate.calls.clear()
    nices.clear()
    for priority in ("idle", "stream", "idle", "batch"):
        nice.set_class(priority)
    assert gate.calls == ["unboost", boost, "unboost", "unboost"]
    assert nices == [0, 0, 0, 10]


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

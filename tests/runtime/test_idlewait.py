"""An idle hub's sleep (runtime/idlewait.py, `Kernel(idle=...)`): it sleeps on the command
connection and reads what comes itself, and a command posted from another thread wakes it."""

from __future__ import annotations

import threading

import pytest
import zmq

from tests.runtime.test_kernel import Transport
from tidal.runtime.idlewait import CommandWait
from tidal.runtime.kernel import Kernel

FOREVER_MS = 60_000  # a guard no test waits out: a wait that ends was ended


class ScriptedIdle:
    """An idle wait that plays what happens while the hub sleeps: `during[i]()` runs in
    the i-th wait (frames "come", a command is posted)."""

    def __init__(self, *during) -> None:
        self.during = list(during)
        self.events: list[str] = []

    def wait(self) -> None:
        self.events.append("wait")
        self.during.pop(0)()

    def wake(self) -> None:
        self.events.append("wake")


def test_an_idle_hub_sleeps_in_its_wait_and_reads_what_came_itself():
    transport = Transport()
    reads = []

    def read_commands():  # the executor's: what came on the connection, posted here
        reads.append(len(idle.events))
        if len(reads) == 1:
            kernel.launch("t1", lambda: 42)
        return True

    idle = ScriptedIdle(lambda: None, lambda: kernel.stop())
    kernel = Kernel(transport, read_commands=read_commands, idle=idle)
    kernel.run(block=True)  # returns at the stop, posted during the second wait
    assert transport.outcome("t1").result == 42
    # Each wait is followed by a read on the hub's own thread; the stop, posted while the
    # hub slept, woke it.
    assert idle.events == ["wait", "wait", "wake"]
    assert reads[:2] == [1, 3]
    kernel.close()


def test_the_hub_does_not_sleep_while_a_command_waits_in_its_queue():
    transport = Transport()
    ran_first = []

    def first_wait():  # the only one scripted: the launch ran before the hub slept
        ran_first.append(transport.outcome("t1").result)
        kernel.stop()

    idle = ScriptedIdle(first_wait)
    kernel = Kernel(transport, read_commands=lambda: True, idle=idle)
    kernel.launch("t1", lambda: 1)
    kernel.run(block=True)
    assert ran_first == [1] and idle.events == ["wait", "wake"]
    kernel.close()


@pytest.fixture
def connection():
    """A DEALER (the executor's command connection) and the ROUTER that feeds it."""
    context = zmq.Context()
    router = context.socket(zmq.ROUTER)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    dealer = context.socket(zmq.DEALER)
    dealer.connect(f"tcp://127.0.0.1:{port}")
    dealer.send(b"hello")
    peer, _ = router.recv_multipart()
    yield dealer, lambda frame: router.send_multipart([peer, frame])
    dealer.close(linger=0)
    router.close(linger=0)
    context.term()


def test_the_wait_ends_when_a_frame_comes_and_at_once_while_one_waits(connection):
    dealer, send = connection
    lock = threading.RLock()
    waiting = CommandWait(lock, lambda: (dealer, dealer.getsockopt(zmq.FD)), FOREVER_MS)
    try:
        sleeper = threading.Thread(target=waiting.wait)
        sleeper.start()
        send(b"launch")
        sleeper.join(30)
        assert not sleeper.is_alive()
        waiting.wait()  # the frame is still unread: no sleep, though no edge comes again
        with lock:
            assert dealer.recv(zmq.NOBLOCK) == b"launch"
    finally:
        waiting.close()


def test_a_command_posted_from_another_thread_wakes_the_sleeping_hub(connection):
    dealer, _ = connection
    lock = threading.RLock()
    asleep = threading.Event()

    class Watched(CommandWait):
        def wait(self) -> None:
            asleep.set()
            super().wait()

    idle = Watched(lock, lambda: (dealer, dealer.getsockopt(zmq.FD)), FOREVER_MS)
    transport = Transport()
    kernel = Kernel(transport, read_commands=lambda: True, idle=idle)
    hub = threading.Thread(target=kernel.run, kwargs={"block": True})
    hub.start()
    try:
        assert asleep.wait(30)
        ran = threading.Event()
        kernel.launch("t1", lambda: ran.set() or "woken")  # nothing on the connection
        assert ran.wait(30)  # the guard is a minute: only the wake could have done this
        kernel.stop()
        hub.join(30)
        assert not hub.is_alive()
        assert transport.outcome("t1").result == "woken"
    finally:
        kernel.stop()
        hub.join(30)
        idle.close()
        kernel.close()

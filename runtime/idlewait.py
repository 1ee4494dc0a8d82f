"""Where an idle executor's task thread sleeps: on its command connection, and a wake-up.

An executor's hub (runtime/kernel.py) that has nothing to run sleeps here until frames come
on the command connection, which it then reads itself, or until a command is posted from
another thread (`wake`). Before, it slept in its command queue, and the listener thread read
every frame and queued its commands: under a flood of tiny tasks, a wake-up of the listener
and two GIL hand-overs per frame.

Discussion: a ZeroMQ socket's descriptor (ZMQ_FD) is edge-triggered: it says that the socket's
state changed, not that frames wait, and any call on the socket (a send, a look at
ZMQ_EVENTS) may take in the arrival it would have signalled. So the wait looks at
ZMQ_EVENTS first (under the connection's lock, as every use of the socket is) and sleeps on
the descriptor only if nothing waits; whatever touches the socket later is followed by a
read or a look of its own (the listener's loop, `Executor._read_commands`).
"""

from __future__ import annotations

import contextlib
import os
import select
import threading
from collections.abc import Callable
from typing import Any, Protocol

import zmq

__all__ = ["CommandWait", "IdleWait"]

# A wait ends after this long even if nothing came: a guard, not a clock (the command
# connection may be replaced while the hub sleeps; the executor then calls `wake()`).
WAIT_MS = 100


class IdleWait(Protocol):
    """Where an idle hub sleeps (`Kernel(idle=...)`)."""

    def wait(self) -> None:
        """Sleep until frames may wait to be read, `wake()` is called, or a while passed."""

    def wake(self) -> None:
        """End a `wait()` in progress, or the next one at once (any thread)."""


class CommandWait:
    """The executor's `IdleWait`: sleep on the command connection's descriptor and an
    eventfd. `connection()` gives the socket and its descriptor (None while there is none),
    under `lock`."""

    def __init__(
        self,
        lock: threading.RLock,
        connection: Callable[[], tuple[zmq.Socket, int] | None],
        guard_ms: int = WAIT_MS,
        lane: Any = None,
    ) -> None:
        self._lock = lock
        self._connection = connection
        self._lane = lane  # an ExecutorLane (runtime/lanes.py), read by the waiting thread
        self._guard_ms = guard_ms
        self._wake_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)

    def wait(self) -> None:
        with self._lock:
            current = self._connection()
            if current is not None and current[0].getsockopt(zmq.EVENTS) & zmq.POLLIN:
                return  # frames wait already: the descriptor would not say so again
        lane = self._lane
        if lane is not None and lane.waiting():
            return
        poller = select.poll()
        poller.register(self._wake_fd, select.POLLIN)
        if current is not None:
            poller.register(current[1], select.POLLIN)
        if lane is not None:
            poller.register(lane.fd, select.POLLIN)
        poller.poll(self._guard_ms)
        with contextlib.suppress(BlockingIOError):  # not woken: frames came, or time passed
            os.eventfd_read(self._wake_fd)

    def wake(self) -> None:
        os.eventfd_write(self._wake_fd, 1)

    def close(self) -> None:
        os.close(self._wake_fd)

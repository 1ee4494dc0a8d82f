"""A stand-in scheduler for tests: a ROUTER socket that speaks the protocol.

In the spirit of an in-memory stub broker, it lets the executor be exercised for real (its
own process, real ZeroMQ) without the whole scheduler. Executor processes are started and
stopped with tidal.runtime.processes, so every process a test starts is stopped by the
same helper.
"""

from __future__ import annotations

import time
from collections import deque

import pytest
import zmq

from tidal.runtime import datastore
from tidal.runtime import protocol as p
from tidal.runtime.realtime import realtime_io_threads

__all__ = ["PROGRESS", "StubScheduler", "routable_host"]

# What an executor reports as it goes, which `expect` skips on the way to what it waits for.
PROGRESS = p.Heartbeat | p.Hello | p.Received | p.Resumed | p.Started


class StubScheduler:
    """Bind a ROUTER on loopback; welcome executors; send commands; wait for reports."""

    def __init__(self, bind: str = "tcp://127.0.0.1:*", heartbeat_ms: int = 200) -> None:
        self._context = zmq.Context()
        realtime_io_threads(self._context)  # as the real scheduler does
        self._socket = self._context.socket(zmq.ROUTER)
        self._socket.linger = 0
        self._socket.bind(bind)
        self.address = self._socket.getsockopt_string(zmq.LAST_ENDPOINT)
        self.heartbeat_ms = heartbeat_ms
        self.executors: dict[str, bytes] = {}  # executor id -> routing id
        self.heartbeats: list[p.Heartbeat] = []
        self._inbox: deque[tuple[bytes, p.Message]] = deque()

    def __enter__(self) -> StubScheduler:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._socket.close(linger=0)
        self._context.term()

    def send(self, executor_id: str, msg: p.Message) -> None:
        self.send_frame(executor_id, p.encode(msg))

    def send_frame(self, executor_id: str, frame: bytes) -> None:
        """Send raw bytes (tests use this to send malformed frames)."""
        self._socket.send_multipart([self.executors[executor_id], frame])

    def recv(self, timeout: float = 10.0) -> tuple[str, p.Message]:
        """Next message from any executor (batches unpacked), hello answered, heartbeats kept."""
        deadline = time.monotonic() + timeout
        while not self._inbox:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self._socket.poll(remaining * 1000):
                raise TimeoutError(f"no message from an executor within {timeout} s")
            routing_id, frame = self._socket.recv_multipart()
            msg = p.decode(frame)
            for item in p.unbatch(msg) if isinstance(msg, p.Batch) else [msg]:
                if isinstance(item, p.ProtocolError):
                    raise item
                if not isinstance(item, p.Attach):  # the executor's report connection
                    self._inbox.append((routing_id, item))
        routing_id, msg = self._inbox.popleft()
        if isinstance(msg, p.Hello):
            self.executors[msg.executor_id] = routing_id
            self._socket.send_multipart(
                [routing_id, p.encode(p.Welcome(p.PROTOCOL_VERSION, "stub", self.heartbeat_ms, ""))]
            )
        elif isinstance(msg, p.Heartbeat):
            self.heartbeats.append(msg)
            # As the real scheduler does: an executor that hears nothing back says hello
            # again, taking the stub for a scheduler that went away.
            self._socket.send_multipart([routing_id, p.encode(p.Ack([]))])
        executor_id = getattr(msg, "executor_id", None) or self._id_of(routing_id)
        return executor_id, msg

    def expect(
        self, kind: type[p.Message], timeout: float = 10.0, *, task_id: str | None = None
    ) -> p.Message:
        """Wait for the next message of `kind` (for `task_id`), skipping heartbeats.

        Raises AssertionError on anything else that arrives first (bar progress reports:
        hello, heartbeat, received, started, resumed), including a `kind` message for another task,
        so that a lost or duplicated report cannot go unnoticed.
        """
        deadline = time.monotonic() + timeout
        while True:
            _, msg = self.recv(max(0.0, deadline - time.monotonic()))
            if isinstance(msg, kind) and (task_id is None or msg.task_id == task_id):
                return msg
            if isinstance(msg, PROGRESS) and not isinstance(msg, kind):
                continue
            raise AssertionError(
                f"expected {kind.__name__}{f' for {task_id}' if task_id else ''}, got {msg!r}"
            )

    def wait_for_executor(self, timeout: float = 30.0) -> str:
        """Wait for one executor's hello; return its id."""
        hello = self.expect(p.Hello, timeout)
        return hello.executor_id

    def _id_of(self, routing_id: bytes) -> str:
        for executor_id, rid in self.executors.items():
            if rid == routing_id:
                return executor_id
        return routing_id.hex()


def routable_host() -> str:
    """This host's address on the interface that routes off it: tests that play "another
    host" (`host="elsewhere"`) fetch from it, as a real other host would."""
    host = datastore.bind_host_for("tcp://192.0.2.1:9")
    if host == "127.0.0.1":
        pytest.skip("this machine has no interface but loopback")
    return host

"""Stand-in schedulers for tests: ROUTER sockets that speak the protocol.

In the spirit of an in-memory stub broker, it lets the executor be exercised for real (its
own process, real ZeroMQ) without the whole scheduler. Executor processes are started and
stopped with tidal.runtime.processes, so every process a test starts is stopped by the
same helper. `FakeScheduler` does the same for a client (tests/runtime/conftest.py gives
it and a client of it as fixtures).
"""

from __future__ import annotations

import threading
import time
from collections import deque

import pytest
import zmq

from tidal.runtime import datastore, payloads
from tidal.runtime import protocol as p
from tidal.runtime.realtime import realtime_io_threads

__all__ = ["PROGRESS", "REMOTE_TB", "FakeScheduler", "StubScheduler", "routable_host"]

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


# ---- a client's scheduler ----------------------------------------------------------------

REMOTE_TB = 'Traceback (most recent call last):\n  File "remote.py", line 7, in work\n'


class FakeScheduler:
    """A ROUTER on loopback whose own thread welcomes (or rejects) a client, records what it
    sends, answers status requests with `snapshot` (if set), and sends what tests push."""

    def __init__(
        self,
        *,
        reject: str | None = None,
        version: int = p.PROTOCOL_VERSION,
        snapshot: dict | None = None,
    ) -> None:
        self.reject, self.version, self.snapshot = reject, version, snapshot
        self._context = zmq.Context()
        self._router = self._context.socket(zmq.ROUTER)
        self._router.linger = 0
        self._router.bind("tcp://127.0.0.1:*")
        self.address = self._router.getsockopt_string(zmq.LAST_ENDPOINT)
        inproc = f"inproc://fake-scheduler-{id(self)}"
        self._push_lock = threading.Lock()
        self._to_thread = self._context.socket(zmq.PAIR)
        self._to_thread.bind(inproc)
        from_tests = self._context.socket(zmq.PAIR)
        from_tests.connect(inproc)
        self._received: list[p.Message] = []
        self._changed = threading.Condition()
        self._client: bytes | None = None
        self._thread = threading.Thread(
            target=self._serve, args=(from_tests,), name="fake-scheduler", daemon=True
        )
        self._thread.start()

    def __enter__(self) -> FakeScheduler:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.push_frame(b"")
        self._thread.join(5)
        self._to_thread.close(linger=0)
        self._context.term()

    def push(self, msg: p.Message) -> None:
        self.push_frame(p.encode(msg))

    def push_frame(self, frame: bytes) -> None:
        """Send raw bytes to the client (tests use this for malformed frames)."""
        with self._push_lock:
            self._to_thread.send(frame)

    def finish(self, future, value, stats=None) -> None:
        """Send `value` as `future`'s result, packed as its payload, as executors do."""
        self.finish_payload(future, payloads.pack_payload(value), stats)

    def finish_payload(self, future, payload, stats=None) -> None:
        """Send `payload` (any bytes, or not even bytes) as `future`'s result, as it is."""
        self.push(p.Results([[future.task_id, "finished", payload, None, stats or {}]]))

    def fail(self, future, error_type, message) -> None:
        error = [error_type, message, REMOTE_TB + f"{error_type}: {message}\n"]
        self.push(p.Results([[future.task_id, "failed", None, error, {}]]))

    def wait_for(self, kind: type[p.Message], count: int = 1, timeout: float = 5.0) -> list:
        """All messages of `kind` received so far, once there are at least `count`."""
        with self._changed:
            if not self._changed.wait_for(lambda: len(self.received(kind)) >= count, timeout):
                raise AssertionError(f"fewer than {count} {kind.__name__} within {timeout} s")
            return self.received(kind)

    def received(self, kind: type[p.Message]) -> list:
        with self._changed:
            return [msg for msg in self._received if isinstance(msg, kind)]

    def _serve(self, from_tests: zmq.Socket) -> None:
        poller = zmq.Poller()
        poller.register(self._router, zmq.POLLIN)
        poller.register(from_tests, zmq.POLLIN)
        try:
            while True:
                ready = dict(poller.poll())
                if self._router in ready:
                    routing_id, frame = self._router.recv_multipart()
                    msg = p.decode(frame)  # a client sends several waiting frames as a batch
                    for item in p.unbatch(msg) if isinstance(msg, p.Batch) else [msg]:
                        self._on_message(routing_id, item)
                if from_tests in ready:
                    frame = from_tests.recv()
                    if not frame:
                        return
                    self._router.send_multipart([self._client, frame])
        finally:
            self._router.close(linger=0)
            from_tests.close(linger=0)

    def _on_message(self, routing_id: bytes, msg: p.Message) -> None:
        # Recorded before it is answered: a test that got the answer finds it received.
        with self._changed:
            self._received.append(msg)
            self._changed.notify_all()
        if isinstance(msg, p.ClientHello):
            self._client = routing_id
            answer = (
                p.Reject(self.reject)
                if self.reject
                else p.ClientWelcome(self.version, "fake-scheduler", "stream-first", 3)
            )
            self._router.send_multipart([routing_id, p.encode(answer)])
        elif isinstance(msg, p.StatusRequest) and self.snapshot is not None:
            self._router.send_multipart(
                [routing_id, p.encode(p.Status(msg.request_id, self.snapshot))]
            )

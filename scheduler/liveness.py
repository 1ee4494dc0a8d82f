"""Executor liveness that needs no GIL: ZeroMQ's own heartbeats and the socket monitor.

An executor busy in one long C call (`sorted()` of millions of items, a big `json.loads`)
holds its GIL: its Python threads, the one that sends heartbeats included, stand still for
as long as the call lasts. Its libzmq I/O threads do not: they never take the GIL. So the
scheduler judges liveness by the connection, not by the application's heartbeats:

* ZMTP heartbeats (`ZMQ_HEARTBEAT_IVL`, `ZMQ_HEARTBEAT_TIMEOUT`) on the scheduler's ROUTER:
  libzmq pings every connection each heartbeat interval and closes one whose peer sends
  nothing back within the timeout. A busy executor's I/O thread answers (it is alive); a
  stopped one (SIGSTOP) or a host that vanished does not, and its connection closes.
* The ROUTER's monitor reports `EVENT_DISCONNECTED` the moment a connection closes: at once
  for a killed process (its kernel closes the socket), after the timeout for a stopped one.
* A disconnection event names a file descriptor, not a peer (libzmq's peer notification is a
  draft API this build lacks), so the shell then *probes* its executors' command
  connections: a send with `ZMQ_ROUTER_MANDATORY` fails with EHOSTUNREACH for a routing id
  whose connection is gone. A fresh connection gets a fresh routing id, so a reused file
  descriptor cannot make a dead executor look alive.

The application heartbeat stays: it carries the executor's metrics, and while it is late
the core counts the executor busy (scheduler/records/books.py), not lost. What this module
cannot tell: an executor whose Python is wedged for ever (a deadlock) while its process and
I/O threads live looks busy for as long, as a long C call does.

Discussion: the probe waits PROBE_DELAY_NS after the event. The event and the end of the
connection's pipe reach the socket through different queues, so a probe could come before
the socket knows the route is gone (measured here, even a probe at once found it gone); it
is repeated twice more, at 50 and 500 ms (PROBE_SCHEDULE_NS). Probes are never sent on a
timer: each is a message a busy executor cannot read, and a thousand unread ones (the
DEALER's receive limit) would stop its libzmq reading the connection at all, pings
included, which would lose it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import zmq
from zmq.utils.monitor import parse_monitor_message

from tidal.runtime import protocol as p

__all__ = ["PROBE_DELAY_NS", "PROBE_SCHEDULE_NS", "ConnectionWatch"]

# See the module docstring. Measured here: a probe 0-100 ms after the event found the
# killed peer's route gone every time; 2 ms leaves room on a loaded machine, and the later
# probes of the schedule catch a slower teardown.
PROBE_DELAY_NS = 2_000_000
PROBE_SCHEDULE_NS = (PROBE_DELAY_NS, 50_000_000, 500_000_000)
HANDSHAKE_FAILURES = zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
# What a probe sends to a live executor: an empty ack, which it takes as a sign that the
# scheduler lives (as it does the answer to a heartbeat).
PROBE = p.encode(p.Ack([]))
# ... and to a live client: results of no task, which it reads as nothing.
CLIENT_PROBE = p.encode(p.Results([]))


class ConnectionWatch:
    """ZMTP heartbeats and the one monitor of a scheduler's ROUTER; see the module docstring.

    `heartbeat_ms`: how often libzmq pings each connection; `timeout_ms`: how long a peer may
    stay silent after a ping before its connection is closed.
    """

    def __init__(self, router: zmq.Socket, heartbeat_ms: int, timeout_ms: int) -> None:
        self._router = router
        router.setsockopt(zmq.HEARTBEAT_IVL, max(1, heartbeat_ms))
        router.setsockopt(zmq.HEARTBEAT_TIMEOUT, max(1, timeout_ms))
        self.socket = router.get_monitor_socket(zmq.EVENT_DISCONNECTED | HANDSHAKE_FAILURES)
        self._schedule: list[int] = []  # the probes still due after the last disconnection
        self._probed_from = 0

    def events(self) -> Iterator[dict]:
        """The monitor's events so far (disconnections, and handshake failures for the log
        of refused connections)."""
        while True:
            try:
                frames = self.socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            yield parse_monitor_message(frames)

    def first_probe(self, now: int) -> int:
        """A connection closed at `now`: when to probe first (the schedule starts again)."""
        self._schedule = list(PROBE_SCHEDULE_NS)
        self._probed_from = now
        return now + self._schedule.pop(0)

    def next_probe(self, now: int) -> int | None:
        """After a probe: when to probe again for the last disconnection, if at all."""
        if not self._schedule:
            return None
        return self._probed_from + self._schedule.pop(0)

    def unreachable(self, routing_ids: Iterable[bytes], probe: bytes = PROBE) -> list[bytes]:
        """Those of `routing_ids` whose connection is gone (each live one gets `probe`)."""
        gone = []
        self._router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        try:
            for routing_id in routing_ids:
                try:
                    self._router.send_multipart([routing_id, probe], zmq.NOBLOCK)
                except zmq.ZMQError as exc:
                    if exc.errno == zmq.EHOSTUNREACH:
                        gone.append(routing_id)
                    # EAGAIN: its queue is full, so its connection is there.
        finally:
            self._router.setsockopt(zmq.ROUTER_MANDATORY, 0)
        return gone

    def close(self) -> None:
        self._router.disable_monitor()
        self.socket.close(linger=0)

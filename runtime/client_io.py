"""A client's connection to the scheduler: the handshake, then the IO thread that owns it.

The user API and the futures' bookkeeping are the Client's (runtime/client.py); this module
is the connection's life cycle: connect and say hello, relay frames both ways, keep the
connection alive, reconnect and reattach after a scheduler restart, say goodbye.

Threads and why:

* The handshake runs on the thread that constructs the Client, before the IO thread exists,
  so its errors are raised straight to the caller; the DEALER is then shared under a socket
  lock (ZeroMQ asks that one thread use a socket at a time, with a full memory barrier in
  between: the lock is both).
* The IO thread runs the connection. In one loop it forwards the callers' frames (they come
  through a `CallerQueue`, in order; several waiting go out as one `batch` frame), hands
  each frame from the scheduler by its op to the client's bookkeeping (results complete
  futures, answers complete requests) or to the connection's own handlers, and drops (with a
  rate-limited log line) any frame that breaks the protocol. It never blocks on the network:
  frames the DEALER cannot take yet wait in an outbox until it can.
* A caller sends a stream task's submit itself (`send_urgent`), on the DEALER, under the
  lock, when nothing is queued before it and the IO thread has nothing waiting to go out;
  it waits for the lock at most while the IO thread reads a few hundred frames or sends.
* Under LB, a caller sends a stream task of one plain task to an executor's lane instead
  (runtime/lanes.py), and its result comes back by that lane: the IO thread polls the
  lanes beside the DEALER and hands their results to the same bookkeeping.

When the scheduler goes away. The connection's liveness is a `Link` (runtime/link.py), as
the executor's is. While futures or requests are pending, the IO thread pings the scheduler
every KEEPALIVE_S; silence for SILENT_S, or a `rejoin` from a scheduler that does not know
this connection (it restarted), makes it reconnect: a new DEALER and a new `client_hello`,
again every SILENT_S, for up to `reconnect_timeout` seconds. On the welcome it sends
`reattach` with the ids of every pending future: the scheduler answers the results it has
and names the tasks it never heard of, whose jobs the client submits again (it keeps each
job's submit frame until the job's last future completes). Requests waiting for an answer
are sent again. Each future still completes once: a result for a future that is done
already is ignored.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging
import math
import os
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

import zmq

from tidal.runtime import protocol as p
from tidal.runtime.auth import AuthenticationFailed, HandshakeWatch, PeerKeys, secure_peer
from tidal.runtime.frames import FrameReader
from tidal.runtime.lanes import LANE_GRACE_S, ClientLanes
from tidal.runtime.link import KEEPALIVE_S, SILENT_S, GiveUp, Keepalive, Link, Reconnect
from tidal.runtime.realtime import CallerBoosts, realtime_io_threads, realtime_this_thread

__all__ = ["Bookkeeping", "CallerQueue", "ClientConnection"]

# The client's logger: what this module logs is about the client.
log = logging.getLogger("tidal.client")

# Frames of callers merged into one `batch` frame at most: small ones (a `submit` of one task
# is ~100 bytes), up to BATCH_FLUSH_BYTES in all; a bigger frame goes alone.
BATCH_ITEM_MAX_BYTES = 64 * 1024

# Discussion: on close, the goodbye (and any submission still queued) gets this long to reach
# the scheduler; after that ZeroMQ drops it, so close() never hangs on a scheduler that left.
CLOSE_LINGER_MS = 1000
# Frames read from the scheduler per loop turn before callers' frames get a look in, so a
# flood of results cannot starve submissions.
RECV_BATCH = 256
# Task ids per `reattach` message, so that a client waiting on a million tasks stays far
# below the frame limit.
REATTACH_IDS_PER_MESSAGE = 10_000


@dataclasses.dataclass(frozen=True)
class Bookkeeping:
    """What the IO thread asks of the client it serves; each is called on the IO thread."""

    # Handlers by op for what the bookkeeping completes (`results`, `status`, `pong`, ...).
    handlers: dict[type[p.Message], Callable[[Any], None]]
    # True while futures or requests wait for the scheduler (silence then means it is gone).
    expecting: Callable[[], bool]
    # The pending futures' task ids, and the frames of the requests waiting for answers.
    waiting_for: Callable[[], tuple[list[str], list[bytes]]]
    # The submit frames to send again for the tasks a restarted scheduler never heard of.
    resubmissions: Callable[[set[str]], list[bytes]]
    # The scheduler welcomed us again after a reconnect (perhaps a new scheduler).
    welcomed_again: Callable[[p.ClientWelcome], None]
    # The connection is gone for good: refuse further use with the first argument's reason,
    # fail what waits with ConnectionError(describe(what)).
    lost: Callable[[str, Callable[[str], str]], None]


class CallerQueue:
    """The callers' end of the IO thread's queue: `send(frame)` queues a frame (an empty one
    says "close"), in order, under the client's lock; the IO thread `take`s them.

    Discussion: each caller frame used to go through an inproc socket, and every such send
    gave the IO thread the GIL, which the caller then waited for (~140 us a `submit` in a
    loop of 5,000). Now the IO thread is woken once per burst: a caller sends a wake-up only
    when none is on its way, and the IO thread clears that mark before it takes what waits,
    so a frame queued meanwhile is either taken now or followed by a wake-up. An urgent
    frame with nothing queued before it goes out on the caller's thread instead
    (`ClientConnection.send_urgent`).
    """

    def __init__(self, wake: zmq.Socket, send_urgent: Callable[[bytes], tuple[bool, bool]]) -> None:
        self._frames: deque[bytes] = deque()
        self._wake = wake
        self._woken = False
        self._send_urgent = send_urgent

    def send(self, frame: bytes) -> None:
        """Queue `frame`; zmq.Again if the IO thread is gone (its end of the wake-ups)."""
        self.send_all([frame])

    def send_all(self, frames: list[bytes], urgent: bool = False) -> None:
        """Queue `frames`, in order; or, if `urgent`, nothing is queued before them and they
        fit one `batch` as the IO thread makes them (`_batch_size`), send them now, from
        this thread, in one send: the first send may hand this thread's CPU to ZeroMQ's
        I/O thread, and a busy machine may not give it back for a scheduler tick."""
        if urgent and not self._frames and (len(frames) == 1 or _batch_size(frames) == len(frames)):
            frame = frames[0] if len(frames) == 1 else p.encode(p.Batch(frames))
            sent, look = self._send_urgent(frame)
            if sent:
                if look:
                    self._wake_io()
                return
        self._frames.extend(frames)
        self._wake_io()

    def send_later(self, frames: list[bytes]) -> None:
        """Queue `frames` without waking the IO thread: they go out at its next pass (within
        LANE_GRACE_S / 2 while lanes are in use; see `ClientConnection._loop`)."""
        self._frames.extend(frames)

    def queued(self) -> bool:
        """Whether frames wait for the IO thread (`send_later`'s, if it was not woken)."""
        return bool(self._frames)

    def wake(self) -> None:
        """Make the IO thread look at its sockets (a caller's send on a lane may have
        taken the signal of a result that came by it)."""
        self._wake_io()

    def _wake_io(self) -> None:
        if not self._woken:
            self._woken = True
            try:
                self._wake.send(b"w", zmq.NOBLOCK)
            except zmq.Again:
                self._woken = False
                raise

    def take(self) -> list[bytes]:
        """What the callers queued, in order (the IO thread, woken)."""
        self._woken = False
        frames = []
        with contextlib.suppress(IndexError):
            while True:
                frames.append(self._frames.popleft())
        return frames

    def close(self, linger: int | None = None) -> None:
        self._wake.close(linger=linger)


class ClientConnection:
    """One client's connection to the scheduler at `address` (see the module doc).

    `connect()` performs the handshake on the calling thread; `start()` hands the connection
    to its IO thread; the client stops that thread with an empty frame on the queue that
    `start()` returned, then calls `join()` and `close()`.
    """

    def __init__(
        self,
        address: str,
        client_id: str,
        keys: PeerKeys | None,
        *,
        connect_timeout: float,
        reconnect_timeout: float,
        bad_frames: Callable[[str], None],
    ) -> None:
        self.address = address
        self.client_id = client_id
        self.keys = keys
        self.reconnects = 0  # welcomes again after a reconnect (a restarted scheduler)
        self._bad_frames = bad_frames
        self._link = Link(
            ping_s=KEEPALIVE_S,
            silent_s=SILENT_S,
            connect_timeout_s=connect_timeout,
            reconnect_timeout_s=reconnect_timeout,
        )
        self._context = zmq.Context()
        realtime_io_threads(self._context)
        # Executors' lanes, which stream submits may take instead (runtime/lanes.py).
        self.lanes = ClientLanes(self._context)
        # A stream task's caller at real-time priority for its submit (and, for a lane's
        # task, until it waits or the result comes).
        self.boosts = CallerBoosts()
        self._dealer: zmq.Socket | None = None
        # Once the IO thread runs, every use of the DEALER is under this lock: the IO thread's,
        # and a caller's urgent send (`send_urgent`), allowed while `_urgent_ok` (set under
        # the lock by the IO thread: connected, nothing of its own waiting to go out).
        self._socket_lock = threading.Lock()
        self._urgent_ok = False
        self._thread: threading.Thread | None = None
        self._book: Bookkeeping | None = None
        self._outbox: deque[bytes] = deque()
        # The reattach requests of the last welcome not answered yet, and the unknown ids
        # their answers named so far: submitted again once all are in (see _on_reattached).
        self._reattaching: set[str] = set()
        self._unknown: set[str] = set()

    # ---- the handshake (the constructing thread) ---------------------------------------------

    def connect(self) -> p.ClientWelcome:
        """Say hello and wait for the welcome; return it.

        Raises ValueError for an address ZeroMQ cannot connect to, AuthenticationFailed if
        the scheduler refuses our key, ConnectionError if it refuses this client, speaks
        another protocol version or does not answer within the connect timeout. After an
        error the connection is closed.
        """
        dealer = self._context.socket(zmq.DEALER)
        secure_peer(dealer, self.keys)
        watch = HandshakeWatch(dealer, self.address, self.keys)
        try:
            dealer.connect(self.address)
        except zmq.ZMQError as exc:
            watch.close()
            dealer.close(linger=0)
            self._context.term()
            raise ValueError(
                f"{self.address!r} is not a ZeroMQ address this client can connect to ({exc}); "
                "expected something like 'tcp://host:port'"
            ) from None
        try:
            welcome = self._handshake(dealer, watch)
        except BaseException:
            watch.close()
            dealer.close(linger=0)
            self._context.term()
            raise
        watch.close()  # the handshake is behind us
        self._dealer = dealer
        return welcome

    def _handshake(self, dealer: zmq.Socket, watch: HandshakeWatch) -> p.ClientWelcome:
        # Discussion: never a blocking send here. A scheduler that refuses our key ends the
        # connection's pipe; a hello sent after that would block for ever, and the refusal
        # the watch reports would never be read (seen once in CI, on a loaded machine).
        hello = p.encode(self._hello())
        said = _send_nowait(dealer, hello)
        self._link.hello_sent()
        poller = zmq.Poller()
        poller.register(dealer, zmq.POLLIN)
        poller.register(watch.socket, zmq.POLLIN)
        while True:
            if not said:
                said = _send_nowait(dealer, hello)
            if isinstance(self._link.due(), GiveUp):
                raise ConnectionError(
                    f"no Tidal scheduler answered at {self.address} within "
                    f"{self._link.connect_timeout_s:g} s (is it running, and is the address right?)"
                )
            # Rounded up, so that the poll wakes past the deadline rather than spin up to it.
            remaining_ms = math.ceil((self._link.next_due() - time.monotonic()) * 1000)
            if not said:  # try the hello again soon
                remaining_ms = min(remaining_ms, 50)
            ready = dict(poller.poll(max(0, remaining_ms)))
            if watch.socket in ready and (refusal := watch.refusal()):
                raise AuthenticationFailed(refusal)
            if dealer not in ready:
                continue  # the deadline, or a handshake event that was no refusal
            frames = dealer.recv_multipart()
            try:
                msg = p.decode_parts(frames)
            except p.ProtocolError as exc:
                self._bad_frames(f"dropped a bad frame from the scheduler: {exc}")
                continue
            if isinstance(msg, p.Reject):
                raise ConnectionError(
                    f"the Tidal scheduler at {self.address} refused this client: {msg.reason}"
                )
            if not isinstance(msg, p.ClientWelcome):
                self._bad_frames(f"dropped {msg.op} from the scheduler before its welcome")
                continue
            if msg.version != p.PROTOCOL_VERSION:
                raise ConnectionError(
                    f"the Tidal scheduler at {self.address} speaks protocol {msg.version}, "
                    f"this client {p.PROTOCOL_VERSION}"
                )
            self._link.welcomed()
            return msg

    def _hello(self) -> p.ClientHello:
        return p.ClientHello(p.PROTOCOL_VERSION, self.client_id, os.getpid(), socket.gethostname())

    # ---- the IO thread's life -----------------------------------------------------------------

    def start(self, book: Bookkeeping) -> CallerQueue:
        """Start the IO thread, serving `book`; return the callers' end of its queue.

        That queue is not thread-safe: the client guards it with a lock. Sending on it never
        blocks on the network (an urgent send waits for the socket lock, see the module
        doc). An empty frame tells the IO thread to say goodbye and stop.
        """
        self._book = book
        inproc = f"inproc://tidal-client-{uuid.uuid4().hex}"
        to_io = self._context.socket(zmq.PAIR)
        to_io.sndhwm = 0
        to_io.bind(inproc)
        from_callers = self._context.socket(zmq.PAIR)
        from_callers.rcvhwm = 0
        from_callers.connect(inproc)
        self._callers = CallerQueue(to_io, self.send_urgent)
        self._urgent_ok = self._link.connected  # welcomed, and nothing waits to go out
        self._thread = threading.Thread(
            target=self._run, args=(from_callers,), name="tidal-client-io", daemon=True
        )
        self._thread.start()
        return self._callers

    @property
    def connected(self) -> bool:
        """True while the connection is up (False while it reconnects, and once it is gone)."""
        return self._link.connected

    def on_io_thread(self) -> bool:
        """True when called on the IO thread (where done callbacks run)."""
        return threading.current_thread() is self._thread

    def join(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds for the IO thread to stop; True if it has."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def close(self) -> None:
        """Release the context, once the IO thread has stopped and the callers' end is closed."""
        self._context.term()

    def _run(self, from_callers: zmq.Socket) -> None:
        # A relay thread that sleeps between messages: where permitted it runs at real-time
        # priority so results reach the caller without waiting for a CPU (runtime/realtime.py).
        realtime_this_thread()
        try:
            self._loop(from_callers)
        except Exception as exc:  # an internal error: loud, and every waiter learns of it
            log.exception("the Tidal client's IO thread crashed")
            problem = f"{type(exc).__name__}: {exc}"
            self._book.lost(
                f"this Tidal client's IO thread stopped after an internal error: {problem}",
                lambda what: f"the client's IO thread crashed ({problem}) before {what} ended",
            )
        finally:
            with self._socket_lock:
                self._urgent_ok = False
                self._dealer.close(linger=CLOSE_LINGER_MS)
            self.lanes.close()
            self.boosts.expire(everyone=True)
            from_callers.close(linger=0)

    def _loop(self, from_callers: zmq.Socket) -> None:
        """The IO loop: poll, handle scheduler frames by op, queue caller frames, keep the
        connection alive, send.

        Discussion: callers send urgent frames on the DEALER themselves (`send_urgent`), so
        this thread never polls the DEALER with ZeroMQ (a socket is used by one thread at a
        time): it sleeps on the DEALER's descriptor, which says only "look again", and looks
        at the DEALER's events under the socket lock. A caller whose send may have taken
        that signal looks too, and wakes this thread if something came."""
        handlers: dict[type[p.Message], Callable[[Any], None]] = {
            **self._book.handlers,
            p.Rejoin: self._on_rejoin,
            p.ClientWelcome: self._on_welcome_again,
            p.Reattached: self._on_reattached,
            p.Reject: self._on_reject,
            p.Lanes: lambda msg: self._resend(self.lanes.update(msg)),
        }
        link, outbox, lock, lanes = self._link, self._outbox, self._socket_lock, self.lanes
        poller = zmq.Poller()
        poller.register(from_callers, zmq.POLLIN)
        dealer: zmq.Socket | None = None
        descriptor = -1
        lane_generation, lane_descriptors = -1, []
        while True:
            # Results come by lanes too (runtime/lanes.py): their descriptors are polled.
            if lanes.generation != lane_generation:
                for fd in lane_descriptors:
                    poller.unregister(fd)
                lane_generation, lane_descriptors = lanes.generation, lanes.descriptors()
                for fd in lane_descriptors:
                    poller.register(fd, zmq.POLLIN)
            # -- 1. Sleep until the callers or the DEALER have something, unless it has now.
            with lock:
                if self._dealer is not dealer:  # the first turn, or reconnected
                    if dealer is not None:
                        poller.unregister(descriptor)
                    dealer = self._dealer
                    descriptor = dealer.getsockopt(zmq.FD)
                    reader = FrameReader(dealer)
                    poller.register(descriptor, zmq.POLLIN)
                events = dealer.getsockopt(zmq.EVENTS)
            sending = bool(outbox) and link.connected
            due = events & zmq.POLLIN or (sending and events & zmq.POLLOUT)
            lanes_waiting = bool(lane_descriptors) and lanes.waiting()
            due = due or lanes_waiting
            # Lane submits go to the scheduler too once their grace is over: while lanes are
            # in use, look at least every half grace (a lane send does not wake this thread).
            lanes_due = self.lanes.next_due_s()
            timeout_s = min(KEEPALIVE_S, LANE_GRACE_S / 2) if self.lanes.active else KEEPALIVE_S
            timeout_s = timeout_s if lanes_due is None else min(timeout_s, lanes_due)
            boosts_due = self.boosts.expire()  # callers' boosts held too long end first
            timeout_s = timeout_s if boosts_due is None else min(timeout_s, boosts_due)
            ready = dict(poller.poll(0 if due else math.ceil(timeout_s * 1000)))

            # -- 2. Frames from the scheduler, each handled by its op; bad ones dropped.
            #       (A handler that queues frames of its own stops urgent sends: `_queue`.)
            with lock:
                received, _, _ = reader.read(RECV_BATCH, {}, 0.0)
                if from_callers in ready:  # callers' frames to take: none go around them
                    self._urgent_ok = False  # until step 5 has sent them
            for frames in received:
                try:
                    msg = p.decode_parts(frames)
                    handler = handlers.get(type(msg))
                    if handler is None:
                        raise p.ProtocolError(f"{msg.op} is not sent to a connected client")
                except p.ProtocolError as exc:
                    self._bad_frames(f"dropped a bad frame from the scheduler: {exc}")
                    continue
                link.heard()
                handler(msg)
                if self._dealer is not dealer:
                    break  # a reconnect: the rest of this connection is the old scheduler's

            # -- 2b. Results that came by lanes, each handled as the scheduler's would be
            #        (read only when a lane said so: not on every pass of a batch's results).
            if lanes_waiting or any(fd in ready for fd in lane_descriptors):
                results, problems = lanes.read()
                for problem in problems:
                    self._bad_frames(f"dropped a bad frame: {problem}")
                if results:
                    handlers[p.Results](p.Results(results))
                    lanes.took(results)

            # -- 3. Frames from callers, in the order they came; an empty one means "close".
            if from_callers in ready or self._callers.queued():
                if from_callers in ready:
                    _drain(from_callers)  # the wake-ups
                else:  # `send_later`'s: no urgent send may overtake them (step 2 did not stop them)
                    with lock:
                        self._urgent_ok = False  # until step 5 has sent them
                for frame in self._callers.take():
                    if not frame:
                        self._say_goodbye()
                        return
                    outbox.append(frame)

            self._resend(self.lanes.overdue())  # lane submits past their grace go here too

            # -- 4. Keep the connection alive: ping while something is pending, reconnect to
            #       a scheduler that went silent, give up on one that does not come back.
            match link.due(expecting=self._book.expecting()):
                case Keepalive():
                    ping = p.encode(p.Ping("keepalive", time.monotonic_ns()))
                    with lock:
                        _send_nowait(self._dealer, ping)
                case Reconnect(reason):
                    with lock:
                        spoke = self._dealer.getsockopt(zmq.EVENTS) & zmq.POLLIN
                    if self._link.connected and spoke:
                        continue  # it spoke while a long C call held this process's GIL
                    self._reconnect(reason)
                case GiveUp(why):
                    self._give_up(f"the Tidal scheduler at {self.address} {why}")
                    return

            # -- 5. Send what the DEALER takes now; the rest waits for it to be writable.
            #       Callers may send urgent frames themselves only while nothing waits here
            #       (and no reattach is answered yet), so that nothing overtakes.
            with lock:
                if link.connected:
                    _flush(self._dealer, outbox)
                self._urgent_ok = link.connected and not outbox and not self._reattaching

    def send_urgent(self, frame: bytes) -> tuple[bool, bool]:
        """Send `frame` on the DEALER from the calling thread, if the IO thread has nothing
        waiting to go out first: (sent, the IO thread must look at the DEALER).

        Discussion: a stream task's submit used to wake this connection's IO thread, which
        must take the GIL from the caller to send it. Traced in `tidal bench preempt` under
        full batch load, that hand-over was the start's whole tail: the IO thread (real-time)
        preempted the caller on its CPU, and the caller, holding the GIL, then waited up to
        a scheduler tick (4 ms at HZ 250) behind a batch task's thread. Sent here, the frame
        is with ZeroMQ before anything else has to run."""
        with self._socket_lock:
            if not self._urgent_ok or not _send_nowait(self._dealer, frame):
                return False, False
            # The send may have taken the descriptor's signal of a frame that came meanwhile.
            return True, bool(self._dealer.getsockopt(zmq.EVENTS) & zmq.POLLIN)

    # ---- the connection's own handlers (IO thread) --------------------------------------------

    def _reconnect(self, reason: str) -> None:
        """A new connection and hello; the welcome's handler reattaches."""
        log.warning(
            "the Tidal client %s reconnects to %s: %s", self.client_id, self.address, reason
        )
        dealer = self._context.socket(zmq.DEALER)
        secure_peer(dealer, self.keys)
        dealer.connect(self.address)
        # Before it is shared, and never blocking (a scheduler that refuses our key ends the
        # pipe, and a blocking send would wait for ever, under the lock): if it cannot go
        # now, the link's next reconnect says hello again.
        _send_nowait(dealer, p.encode(self._hello()))
        self.lanes.update(None)  # the reattach asks about what went by them
        with self._socket_lock:
            self._urgent_ok = False  # until welcomed again and reattached
            self._dealer.close(linger=0)  # what it still queued was for the old scheduler
            self._dealer = dealer
        self._link.hello_sent()

    def _give_up(self, reason: str) -> None:
        """The scheduler did not come back: fail what waits, and refuse further use."""
        log.error("%s", reason)
        self._book.lost(reason, lambda what: f"{reason}; {what} is lost with it")

    def _resend(self, task_ids: list[str]) -> None:
        """Send the scheduler the submits of these tasks, sent by lanes (runtime/lanes.py)
        and not done yet: it ignores a job it has."""
        if task_ids:
            self._outbox.extend(self._book.resubmissions(set(task_ids)))
            with self._socket_lock:
                self._urgent_ok = False  # until step 5 has sent them

    def _on_rejoin(self, msg: p.Rejoin) -> None:
        if self._link.connected:
            self._reconnect(f"the scheduler asked: {msg.reason}")

    def _on_welcome_again(self, msg: p.ClientWelcome) -> None:
        if self._link.connected:
            problem = "client_welcome is not sent to a connected client"
            self._bad_frames(f"dropped a bad frame from the scheduler: {problem}")
            return
        if msg.version != p.PROTOCOL_VERSION:
            self._bad_frames(f"the scheduler at {self.address} now speaks protocol {msg.version}")
            return
        self._link.welcomed()
        self.reconnects += 1
        self._book.welcomed_again(msg)
        waiting, requests = self._book.waiting_for()
        # Ahead of everything queued: first what we wait for, then the questions asked.
        asks = [
            p.Reattach(uuid.uuid4().hex, waiting[i : i + REATTACH_IDS_PER_MESSAGE])
            for i in range(0, len(waiting), REATTACH_IDS_PER_MESSAGE)
        ]
        self._reattaching, self._unknown = {ask.request_id for ask in asks}, set()
        frames = [p.encode(ask) for ask in asks]
        self._queue(frames + requests, first=True)

    def _on_reattached(self, msg: p.Reattached) -> None:
        """Submit again the jobs the scheduler never heard of (their pending tasks), once
        every reattach of this welcome is answered.

        Discussion: a job's tasks may be named in several answers (10,000 ids each), and the
        scheduler takes a job id once: submitted again per answer, the tasks of the later
        answers were ignored as a known job's, and their futures never completed."""
        unknown = {t for t in msg.unknown if type(t) is str}
        if msg.request_id not in self._reattaching:  # an earlier connection's question
            self._queue(self._book.resubmissions(unknown))
            return
        self._reattaching.discard(msg.request_id)
        self._unknown |= unknown
        if not self._reattaching:
            unknown, self._unknown = self._unknown, set()
            self._queue(self._book.resubmissions(unknown))

    def _queue(self, frames: list[bytes], first: bool = False) -> None:
        """Frames of the connection's own to send after what waits (before it, if `first`);
        no urgent frame goes ahead of them (a resubmitted job may hold a later submission's
        kept inputs)."""
        if frames:
            with self._socket_lock:
                self._urgent_ok = False  # until step 5 has sent them
            if first:
                self._outbox.extendleft(reversed(frames))
            else:
                self._outbox.extend(frames)

    def _on_reject(self, msg: p.Reject) -> None:
        # The scheduler disconnected this client (docs/protocol.md, "Limits"): it has
        # forgotten the session, so nothing more will come for the futures still pending.
        log.error(
            "the Tidal scheduler at %s disconnected this client: %s", self.address, msg.reason
        )
        self._book.lost(
            f"this Tidal client was disconnected by the scheduler: {msg.reason}",
            lambda what: (
                f"the scheduler at {self.address} disconnected this client before "
                f"{what} finished: {msg.reason}"
            ),
        )

    def _say_goodbye(self) -> None:
        outbox = self._outbox
        outbox.append(p.encode(p.ClientGoodbye("client closed")))
        with self._socket_lock:
            self._urgent_ok = False
            _flush(self._dealer, outbox)
        if outbox:
            log.warning(
                "closing with %d frames the scheduler at %s could not take (goodbye included)",
                len(outbox),
                self.address,
            )


def _batch_size(frames: Iterable[bytes]) -> int:
    """How many frames at the head of `frames` go in one `batch`: small ones, together
    within the batch limits (so that no batch comes near a receiver's frame limit)."""
    count = size = 0
    for frame in frames:
        if len(frame) > BATCH_ITEM_MAX_BYTES or count == p.MAX_BATCH_ITEMS:
            break
        if size + len(frame) > p.BATCH_FLUSH_BYTES:
            break
        count += 1
        size += len(frame)
    return count


def _flush(dealer: zmq.Socket, outbox: deque[bytes]) -> None:
    """Send what the outbox holds, in order, small frames several to a `batch`, until the
    DEALER takes no more."""
    while outbox:
        count = _batch_size(outbox)
        if count > 1:
            frame = p.encode(p.Batch(list(itertools.islice(outbox, count))))
        else:
            frame, count = outbox[0], 1
        try:
            dealer.send(frame, zmq.NOBLOCK)
        except zmq.Again:
            return
        for _ in range(count):
            outbox.popleft()


def _drain(socket: zmq.Socket) -> None:
    with contextlib.suppress(zmq.Again):
        while True:
            socket.recv(zmq.NOBLOCK)


def _send_nowait(dealer: zmq.Socket, frame: bytes) -> bool:
    """Send `frame` if the DEALER takes it now; False if it has no connection to queue it on."""
    try:
        dealer.send(frame, zmq.NOBLOCK)
    except zmq.Again:
        return False
    return True

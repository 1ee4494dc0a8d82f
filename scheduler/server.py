"""The scheduler process: a thin ZeroMQ shell (one ROUTER socket) around SchedulerCore.

Frames in become events, the core's instructions become frames out; everything that
decides anything lives in the core. The shell's own work is the handshake (who a routing id
belongs to, and whether it speaks our protocol version), bad input (below), executor
liveness by the connection (scheduler/liveness.py: ZeroMQ's own heartbeats and the socket's
monitor, which need no GIL on either side), and the timer that lets the core notice
executors whose heartbeats are late (busy, not lost). With `event_log=PATH` it also writes
every step of the core as a line of JSON (scheduler/eventlog.py), flushed at each tick.

Bad input. Every frame that does not decode, or is out of place, is dropped, counted per
routing id and logged at a bounded rate (runtime/guard.py). A peer that sends
BAD_FRAME_LIMIT of them within BAD_FRAME_WINDOW_S is disconnected. A ROUTER cannot close one
peer's connection, so here "disconnected" means: the peer gets a `reject` naming the reason;
the shell forgets its routing ids and everything registered to them (an executor is
declared lost and its tasks are requeued; a client's session ends as if it had said
goodbye); and frames from those routing ids are ignored, without being decoded, for a
cool-down. To come back, a peer connects again and says hello. A handler that raises on a
well-formed message (a bug the message exposed) is logged loudly, and its sender is
disconnected; the scheduler keeps serving everyone else.

With `journal=PATH` (scheduler/journal.py) the shell records there what the core's notes say
(jobs and results) and hands them once per pass to a writer thread (`JournalWriter`), which
commits them while the loop goes on; that pass's results to clients and acks to executors
wait for the commit: whatever a peer was told is safe is on disk. A scheduler started on a
journal that holds jobs rebuilds them (scheduler/recovery.py); executors and clients that
speak on connections it does not know (they were the old scheduler's) are told to `rejoin`.

Discussion: results for one client are merged into one `results` frame per pass over the
socket, so a client waiting on 20,000 tiny tasks gets hundreds of frames, not 20,000. Commands
to executors are never held back: a suspend must go out at once.
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
import socket
import threading
import time
import uuid
from collections import OrderedDict
from typing import Any

import zmq

from tidal.runtime import protocol as p
from tidal.runtime.auth import SchedulerAuth, is_loopback
from tidal.runtime.frames import FrameReader
from tidal.runtime.guard import BAD_FRAME_LIMIT, COOLDOWN_S, PeerGuard
from tidal.runtime.logs import RateLimitedLog
from tidal.runtime.realtime import realtime_io_threads, realtime_this_thread
from tidal.scheduler.admission import (
    BatchBeforeHello,
    OutOfPlace,
    UnreadableSubmits,
    check_attach,
    check_id,
    refusal_before_decoding,
)
from tidal.scheduler.core import (
    DEFAULT_HEARTBEAT_NS,
    DEFAULT_MAX_RETRIES,
    DEFAULT_MAX_SUSPENSIONS,
    DEFAULT_MISSED_HEARTBEATS,
    SchedulerCore,
)
from tidal.scheduler.delivery import Delivery, HeldLaunches
from tidal.scheduler.eventlog import EventLog
from tidal.scheduler.events import (
    ClientJoined,
    ClientRequest,
    Deadline,
    Event,
    ExecutorJoined,
    ExecutorLeft,
    ExecutorReport,
    Instruction,
    JobAccepted,
    PassEnded,
    Tick,
    ToClient,
    ToExecutor,
)
from tidal.scheduler.journal import Journal, JournalWriter
from tidal.scheduler.liveness import CLIENT_PROBE, ConnectionWatch
from tidal.scheduler.peers import PeerTable
from tidal.scheduler.upkeep import (
    DEFAULT_CLIENT_TIMEOUT_NS,
    TRIM_EVERY_NS,
    ClientLeases,
    MemoryTrim,
)

__all__ = ["DEFAULT_BIND", "SchedulerServer"]

_NO_SUBMIT = (None, b"")

log = logging.getLogger("tidal.scheduler")

# Loopback only unless told otherwise: without keys (`keys=DIR`, runtime/auth.py) anyone who
# can reach the port can run code on the executors.
DEFAULT_BIND = "tcp://127.0.0.1:5555"
# Frames handled per pass before results are flushed and the timer is checked, and the time
# a pass may take: results and batch launches held in a pass wait for its end, so a flood of
# frames from anyone (100,000 pings over 300 connections) must not hold a stream task's
# result for more than about this long.
MAX_FRAMES_PER_PASS = 2000
PASS_BUDGET_NS = 2_000_000
# Messages read from the socket at once, then handled (the pass's time is checked after each
# such read: at ~10-30 us a handled message, 16 stay well within the budget's grain).
READ_AT_ONCE = 16
# A hello may list at most this many tasks held (each gets an answer: a kill, say).
MAX_HOLDINGS = 10_000
# Connections told to rejoin, remembered so that each is told once per REJOIN_EVERY_NS (a
# peer that queued many frames while we were away sends them all at once), at most this
# many: a peer sending from ever new connections cannot grow the record.
REJOIN_MEMORY = 4096


class SchedulerServer:
    """Bind a ROUTER at `bind` and schedule for whoever connects, until `stop()`."""

    def __init__(
        self,
        bind: str = DEFAULT_BIND,
        *,
        policy: Any = "lb",
        max_suspensions: int = DEFAULT_MAX_SUSPENSIONS,
        heartbeat_ns: int = DEFAULT_HEARTBEAT_NS,
        missed_heartbeats: int = DEFAULT_MISSED_HEARTBEATS,
        max_frame_bytes: int = p.MAX_FRAME_BYTES,
        realtime: bool = True,
        allow_policy_paths: bool = False,
        stealing: bool = True,
        event_log: str | os.PathLike[str] | None = None,
        max_retries: int = DEFAULT_MAX_RETRIES,
        journal: str | os.PathLike[str] | None = None,
        journal_sync: str = "NORMAL",
        keys: str | os.PathLike[str] | None = None,
        bad_frame_limit: int | None = BAD_FRAME_LIMIT,
        bad_frame_cooldown_s: float = COOLDOWN_S,
        dashboard: str | None = None,
        dashboard_fall_back: bool = False,
        client_timeout_ns: int = DEFAULT_CLIENT_TIMEOUT_NS,
    ) -> None:
        self.scheduler_id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        # Opened first: a journal another scheduler holds stops us before anything binds.
        self.journal = None if journal is None else Journal(journal, synchronous=journal_sync)
        # Commits on a thread of its own: the loop never waits for the disk.
        self._writer = None if self.journal is None else JournalWriter(self.journal)
        self.core = SchedulerCore(
            policy,
            max_suspensions=max_suspensions,
            heartbeat_ns=heartbeat_ns,
            missed_heartbeats=missed_heartbeats,
            allow_policy_paths=allow_policy_paths,
            stealing=stealing,
            max_retries=max_retries,
            journal=self.journal,
            # The connection tells whether an executor lives (scheduler/liveness.py); its
            # heartbeats may be late without consequence (a long C call holds its GIL).
            lose_silent=False,
            consult_per_pass=True,  # the policy hears of freed slots at `_flush_held`
        )
        self.heartbeat_ns = heartbeat_ns
        self.max_frame_bytes = max_frame_bytes
        self.realtime = realtime
        # Who is shown every step of the core: the event log (JSON lines,
        # scheduler/eventlog.py; opened before the socket, so that a path it cannot write
        # leaves nothing bound) and the dashboard (scheduler/dashboard/).
        self._observers: list[Any] = []
        self.dashboard_link: str | None = None
        if event_log is not None:
            self._observers.append(EventLog(event_log, self.core))
        self._context = zmq.Context()
        realtime_io_threads(self._context, realtime)
        self._socket = self._context.socket(zmq.ROUTER)
        self._socket.linger = 1000
        self._reader = FrameReader(self._socket)
        if not self._reader.native:
            log.info("frames are read with pyzmq: the C frame reader is not available")
        # With keys, only peers whose public key is authorised complete a handshake.
        self._auth = None
        # Discussion: libzmq pings each connection every half heartbeat and closes one that
        # stays silent for `missed_heartbeats - 1` intervals after a ping, so a stopped
        # executor is lost within `missed_heartbeats - 0.5` intervals (plus the probe's
        # PROBE_DELAY_NS): inside the `missed_heartbeats` a silent one took before.
        heartbeat_ms = max(1, heartbeat_ns // 1_000_000)
        self._watch = ConnectionWatch(
            self._socket, max(1, heartbeat_ms // 2), heartbeat_ms * max(1, missed_heartbeats - 1)
        )
        self._probe_at: int | None = None  # when to probe executors after a disconnection
        try:
            if keys is not None:
                self._auth = SchedulerAuth(self._context, self._socket, keys)
            self._socket.bind(bind)
        except BaseException:
            self.close()
            raise
        self.address = self._socket.getsockopt_string(zmq.LAST_ENDPOINT)
        if keys is None and not is_loopback(self.address):
            log.warning(
                "listening on %s without keys: traffic is unauthenticated and unencrypted, "
                "and anyone who can reach it can run code on the executors (use --keys DIR; "
                "`tidal keys generate DIR` creates them)",
                self.address,
            )
        self._stop = threading.Event()
        self._table = PeerTable()  # who is on which connection (scheduler/peers.py)
        # Well-formed messages on connections we do not know: after a restart, the old
        # scheduler's peers' queued frames; told to rejoin, not worth a warning each.
        self._strangers = RateLimitedLog(log, level=logging.INFO)
        # Bad frames per routing id, their log lines, and who is in a cool-down.
        self._guard = PeerGuard(log, limit=bad_frame_limit, cooldown_s=bad_frame_cooldown_s)
        self.frames_in = 0  # frames received, bad ones and ignored ones included
        self.bytes_in = 0  # their bytes (big arguments travel apart: runtime/datastore.py)
        self._held = HeldLaunches()  # batch launches, sent at the end of the pass
        self._commit_at: int | None = None  # when records held for a group commit go
        # The last submit decoded, with its frame (the journal keeps that, not a re-encoding).
        self._submit_frame: tuple[Any, Any] = _NO_SUBMIT
        self._unreadable = UnreadableSubmits(self.max_frame_bytes)
        # Results and acks, sent once the journal has them (scheduler/delivery.py).
        self._delivery = Delivery(
            self._writer, self._send, lambda e: e in self.core.records.executors
        )
        self._told_rejoin: OrderedDict[bytes, int] = OrderedDict()  # routing id -> when
        # Clients gone without a goodbye: their jobs go after `client_timeout_ns` (those of
        # jobs a journal restored count as gone from the start); and freed memory given
        # back while nothing runs (scheduler/upkeep.py).
        now = time.monotonic_ns()
        records = self.core.records
        gone = {j.client_id for j in records.jobs.values()} - records.clients
        self._leases = ClientLeases(client_timeout_ns, gone, now)
        self._trim = MemoryTrim(TRIM_EVERY_NS, now)
        if dashboard is not None:
            from tidal.scheduler.dashboard import LiveDashboard

            try:
                live = LiveDashboard(
                    self.core,
                    dashboard,
                    lambda: {**self.core.status(), "bad_input": self.bad_input()},
                    scheduler={"scheduler_id": self.scheduler_id, "address": self.address},
                    keyed=keys is not None,
                    fall_back=dashboard_fall_back,
                )
            except BaseException:
                self.close()
                raise
            self._observers.append(live)
            self.dashboard_link = live.link

    def stop(self) -> None:
        """Make `serve()` return within one timer period (callable from any thread)."""
        self._stop.set()

    def serve(self, *, install_signal_handlers: bool = False) -> None:
        """The scheduler's main loop: poll, handle each frame, flush results, tick."""
        # Every scheduling decision passes through this thread: where permitted it runs at
        # real-time priority, like the I/O threads (see runtime/realtime.py).
        realtime_this_thread(self.realtime)
        if install_signal_handlers:
            for signum in (signal.SIGTERM, signal.SIGINT):
                signal.signal(signum, lambda *_: self.stop())
        tick_ns = max(1_000_000, self.heartbeat_ns // 2)
        next_tick = time.monotonic_ns() + tick_ns
        poller = zmq.Poller()
        poller.register(self._socket, zmq.POLLIN)
        poller.register(self._watch.socket, zmq.POLLIN)
        if self._writer is not None:
            poller.register(self._writer.fd, zmq.POLLIN)
        try:
            while not self._stop.is_set():
                # -- 1. Poll until a frame or connection event, or a tick, probe, commit or wake.
                wake = self.core.wake_at()
                times = (next_tick, self._probe_at, self._commit_at, wake)
                due = min(t for t in times if t is not None)
                # (Whole milliseconds, rounded up: zmq_poll truncates, 0.9 ms would spin.)
                timeout_ms = max(0, -(-(due - time.monotonic_ns()) // 1_000_000))
                ready = dict(poller.poll(timeout_ms))
                if self._watch.socket in ready:
                    self._on_connection_events()
                if self._writer is not None and self._writer.fd in ready:
                    self._delivery.written(self._writer.committed())
                if self._socket in ready:
                    # -- 2. Handle what arrived, each frame as one event; results and batch
                    #       launches are held back and sent together at the end of the pass.
                    self._read_pass(time.monotonic_ns() + PASS_BUDGET_NS)
                    # -- 3. Flush what was held back.
                    self._flush_held()
                # -- 4. A connection closed a moment ago: whose? (scheduler/liveness.py)
                now = time.monotonic_ns()
                if self._commit_at is not None and now >= self._commit_at:
                    self._flush_held()  # a group commit is due
                if self._probe_at is not None and now >= self._probe_at:
                    self._probe_at = self._watch.next_probe(now)
                    self._lose_unreachable(self._table.executor_routes(self.core.records.executors))
                    self._note_vanished_clients(now)
                if wake is not None and now >= wake:  # -- 4b. A suspension is overdue.
                    self._dispatch(self._handle(Deadline()))
                    self._flush_held()
                # -- 5. Tick: the core counts late executors busy, the policy may rebalance.
                if now >= next_tick:
                    self._guard.tick()  # the periodic summary of suppressed log lines
                    self._dispatch(self._handle(Tick()))
                    self._flush_held()
                    self._delivery.send_due_acks()
                    for observer in self._observers:  # the log readable up to here
                        observer.tick()
                    self._trim.tick(self.core.records, now)
                    self._forget_vanished_clients(now)
                    next_tick = now + tick_ns
        finally:
            self._shutdown_executors("scheduler stopping")

    def bad_input(self) -> dict[str, int]:
        """Counts of bad input so far (for status): frames in all, bad, ignored in cool-downs,
        disconnections, handler errors, log lines; table sizes; frames read in C or not."""
        return {
            "frames_in": self.frames_in,
            "bytes_in": self.bytes_in,
            **self._guard.statistics().as_dict(),
            "connections": len(self._table.peers),
            "native_frame_reader": int(self._reader.native),
        }

    def close(self) -> None:
        self._watch.close()
        self._socket.close(linger=1000)
        if self._auth is not None:  # after the socket: it watches the socket's handshakes
            self._auth.close()
        self._context.term()
        for observer in self._observers:
            observer.close()
        self._observers = []
        if self._writer is not None:  # writes what it was handed, then closes the journal
            self._writer.close()
            self._writer = None

    # ---- connections ----------------------------------------------------------------------

    def _on_connection_events(self) -> None:
        for event in self._watch.events():
            if event["event"] == zmq.EVENT_DISCONNECTED:
                self._probe_at = self._watch.first_probe(time.monotonic_ns())
            elif self._auth is not None:  # a handshake that failed: a refused connection
                self._auth.refused_connection(event)

    def _lose_unreachable(self, routes: dict[bytes, str]) -> None:
        """Declare lost each executor whose command connection is gone."""
        if not routes:
            return
        for routing_id in self._watch.unreachable(routes):
            peer = ("executor", routes[routing_id])
            for rid in list(self._table.connections.get(peer, {routing_id})):
                self._table.forget(rid)
            self._dispatch(self._handle(ExecutorLeft(peer[1], "its connection dropped")))

    def _note_vanished_clients(self, now: int) -> None:
        """After a disconnection: the clients whose connection is gone, from now on."""
        routes = self._table.client_routes()
        if routes:
            gone = self._watch.unreachable(routes, CLIENT_PROBE)
            self._leases.disconnected((routes[rid] for rid in gone), now)

    def _forget_vanished_clients(self, now: int) -> None:
        """Say goodbye for each client gone `--client-timeout` without coming back."""
        for client_id in self._leases.expired(now):
            route = self._table.routes.get(("client", client_id))
            if route is not None:
                self._table.forget(route)
            self._delivery.forget_client(client_id)
            reason = f"no word for {self._leases.timeout_ns / 1e9:g} s (--client-timeout)"
            self._dispatch(self._handle(ClientRequest(client_id, p.ClientGoodbye(reason))))

    def _handle(self, event: Event) -> list[Instruction]:
        """One event through the core; the step is logged when there is an event log."""
        instructions = self.core.handle(event)
        for observer in self._observers:
            observer.step(event, instructions)
        return instructions

    # ---- frames -> events ---------------------------------------------------------------------

    def _read_pass(self, pass_ends: int) -> None:
        """Read and handle frames until none waits, MAX_FRAMES_PER_PASS were read or the
        pass's time is up (the rest after this pass's flush: the socket stays ready).

        Discussion: read READ_AT_ONCE messages at a time, in C where built
        (runtime/frames.py): one costs ~0.5 us there against ~4 us in pyzmq, and one from a
        peer in its cool-down is dropped there, undecoded (a flood of 100,000 from 300 such
        connections held the loop, at real-time priority, for a third of a second)."""
        read = 0
        while read < MAX_FRAMES_PER_PASS:
            ignored, now = self._guard.cooling_table()
            messages, dropped, size = self._reader.read(READ_AT_ONCE, ignored, now)
            count = len(messages) + dropped
            if not count:
                return
            read += count
            self.frames_in += count
            self.bytes_in += size
            if dropped:
                self._guard.ignored(dropped)
            for frames in messages:
                self._handle_frames(frames)
            if time.monotonic_ns() >= pass_ends:
                return

    def _handle_frames(self, frames: list[bytes]) -> None:
        routing_id = frames[0]
        if self._guard.cooling_down(routing_id):
            return  # a disconnected peer: ignored, undecoded, until its cool-down ends
        self._unreadable.new_frame()
        # Discussion: what a frame may cost is decided before it is decoded: a peer that has
        # not said who it is sends small frames and no batches (a stranger's 500 KB batch of
        # 100,000 junk items once held the loop for 2.5 s).
        peer = self._table.peers.get(routing_id)
        refusal = refusal_before_decoding(frames, peer)
        if refusal is not None:
            self._drop(routing_id, refusal)
            if type(refusal) is BatchBeforeHello:
                # A client's (or executor's) batch of a scheduler that ran here before: as
                # for its single frames, ask it to say hello again (at most once a heartbeat
                # interval; unread, it does not count toward the strangers' cool-down).
                self._ask_to_rejoin(routing_id, "the scheduler does not know this connection")
            return
        try:
            msg = p.decode_parts(
                frames[1:], max_frame_bytes=self.max_frame_bytes, after="the routing id"
            )
        except p.ProtocolError as exc:
            if not self._drop(routing_id, exc) and len(frames) == 2:
                self._fail_unreadable_submits(routing_id, frames[1], exc)
            return
        if isinstance(msg, p.Batch) and peer is None:  # one packed unlike `encode` packs it
            self._drop(routing_id, p.ProtocolError("batch before hello"))
            return
        if isinstance(msg, p.Batch) and len(msg.frames) > p.MAX_BATCH_ITEMS:
            self._drop(
                routing_id,
                p.ProtocolError(
                    f"a batch of {len(msg.frames):,} messages (at most {p.MAX_BATCH_ITEMS:,})"
                ),
            )
            return
        if isinstance(msg, p.Batch):
            items = p.iter_batch(msg, max_frame_bytes=self.max_frame_bytes)
            raws: list[bytes] = msg.frames
        else:
            items, raws = [msg], [frames[1] if len(frames) == 2 else b""]
        bad_item = False
        try:
            for raw, item in zip(raws, items, strict=False):
                if type(item) is p.Submit and raw:  # the journal keeps it as it came
                    self._submit_frame = (item, raw)
                try:
                    if isinstance(item, p.ProtocolError):
                        # One bad frame, however many bad items; the rest still counts, and
                        # the submits that did not decode fail at their client.
                        if not bad_item and self._drop(routing_id, item):
                            return  # disconnected: the rest of its batch goes with it
                        bad_item = True
                        if not self._fail_unreadable_submits(routing_id, raw, item):
                            return
                        continue
                    event = self._event_for(routing_id, item)
                except p.ProtocolError as exc:
                    if self._drop(routing_id, exc):
                        return  # disconnected: the rest of its batch goes with it
                    continue
                if event is not None and not self._handle_peer_event(routing_id, item.op, event):
                    return
        finally:
            self._submit_frame = _NO_SUBMIT  # journaled by now, or refused

    def _fail_unreadable_submits(
        self, routing_id: bytes, frame: bytes, exc: p.ProtocolError
    ) -> bool:
        """A frame (or batch item) that did not decode: the readable tasks of a client's
        submits in it fail at the client (`UnreadableSubmits`). False if that raised and the
        client was disconnected."""
        peer = self._table.peers.get(routing_id)
        for event in self._unreadable.events(peer, frame, exc):
            if not self._handle_peer_event(routing_id, p.Submit.op, event):
                return False
        return True

    def _drop(self, routing_id: bytes, exc: p.ProtocolError) -> bool:
        """Drop a bad frame; disconnect its peer at the limit. True if it was disconnected."""
        counts = not isinstance(exc, OutOfPlace)
        if not self._guard.bad_frame(
            routing_id, self._table.who(routing_id), str(exc), counts=counts
        ):
            return False
        self._disconnect(
            routing_id,
            f"{self._guard.limit} bad frames within {self._guard.window_s:g} s, the last: {exc}",
        )
        return True

    def _handle_peer_event(self, routing_id: bytes, op: str, event: Event) -> bool:
        """Put a peer's event through the core and send what it decided; False if handling it
        raised, in which case the peer is disconnected."""
        try:
            instructions = self._handle(event)
        except Exception as exc:
            # Discussion: the core must refuse nonsense, not raise on it; reaching here is a
            # bug that a peer's well-formed message exposed (the fuzz tests make sure none
            # is known). Loud, but one peer must not stop the scheduler for everyone: its
            # sender is dropped (its tasks requeued, if an executor) and the loop goes on.
            self._guard.handler_failed(self._table.who(routing_id), op, exc)
            self._disconnect(routing_id, f"its {op} made the scheduler fail")
            return False
        self._dispatch(instructions)
        return True

    def _disconnect(self, routing_id: bytes, reason: str) -> None:
        """Disconnect the peer behind `routing_id` (see the module docstring)."""
        who = self._table.who(routing_id)
        peer = self._table.peers.get(routing_id)
        # Every connection of that peer (an executor has two), and where to send the reject:
        # the connection that said hello, if it did.
        routing_ids = [routing_id]
        reply_to = routing_id
        if peer is not None:
            routing_ids = list(self._table.connections.get(peer, {routing_id}))
            reply_to = self._table.routes.get(peer, routing_id)
            for rid in routing_ids:
                self._table.forget(rid)
        self._socket.send_multipart([reply_to, p.encode(p.Reject(f"disconnected: {reason}"))])
        self._guard.disconnected(routing_ids, who, reason)
        if peer is None:
            return
        kind, peer_id = peer
        if kind == "executor":
            event: Event = ExecutorLeft(peer_id, f"disconnected: {reason}")
        else:
            self._delivery.forget_client(peer_id)
            event = ClientRequest(peer_id, p.ClientGoodbye(f"disconnected: {reason}"))
        try:
            self._dispatch(self._handle(event))
        except Exception as exc:  # as in _handle_peer_event; nobody left to disconnect
            self._guard.handler_failed(who, "its disconnection", exc)

    def _event_for(self, routing_id: bytes, msg: p.Message) -> Any:
        """The core event a message stands for (None when the shell handled it itself)."""
        if isinstance(msg, p.Hello | p.ClientHello):
            return self._handshake(routing_id, msg)
        if isinstance(msg, p.Attach):
            # An executor's report connection: map it to the executor, but keep sending
            # commands to the connection that said hello.
            table = self._table
            check_attach(msg, table.tokens.get(msg.executor_id), routing_id in table.peers)
            table.bind(routing_id, ("executor", msg.executor_id))
            return None
        peer = self._table.peers.get(routing_id)
        if peer is None:
            if msg.direction in (p.E2S, p.C2S):
                # Most likely a peer of a scheduler that ran on this address before us (a
                # restart): ask it to say hello again (an executor lists what it holds).
                if self._guard.before_hello(routing_id):
                    return None  # so many: ignored, undecoded, for a cool-down
                if isinstance(msg, p.Heartbeat | p.Ping | p.StatusRequest | p.Submit | p.Reattach):
                    self._ask_to_rejoin(routing_id, "the scheduler does not know this connection")
                self._strangers(
                    f"dropped {msg.op} from unknown peer {routing_id.hex()[:12]}: before hello"
                )
                return None
            raise p.ProtocolError(f"{msg.op} before hello")
        kind, peer_id = peer
        if kind == "executor":
            if msg.direction != p.E2S:
                raise p.ProtocolError(f"{msg.op} is not sent by executors")
            if isinstance(msg, p.Goodbye):
                self._table.forget(routing_id)
                return ExecutorLeft(peer_id, f"it said goodbye ({msg.reason})")
            self._note_for_ack(routing_id, peer_id, msg)
            return ExecutorReport(peer_id, msg)
        if msg.direction != p.C2S:
            raise p.ProtocolError(f"{msg.op} is not sent by clients")
        if isinstance(msg, p.ClientGoodbye):
            self._table.forget(routing_id)
        return ClientRequest(peer_id, msg)

    def _handshake(self, routing_id: bytes, msg: p.Hello | p.ClientHello) -> Any:
        peer_id = msg.executor_id if isinstance(msg, p.Hello) else msg.client_id
        check_id(msg.op, peer_id)
        if msg.version != p.PROTOCOL_VERSION:
            reason = (
                f"protocol version {msg.version} is not supported: this scheduler speaks "
                f"version {p.PROTOCOL_VERSION}"
            )
            self._guard.bad_frame(routing_id, self._table.who(routing_id), reason, counts=False)
            self._socket.send_multipart([routing_id, p.encode(p.Reject(reason))])
            return None
        if isinstance(msg, p.Hello):
            holding = msg.holding if isinstance(msg.holding, list | tuple) else ()
            if len(holding) > MAX_HOLDINGS:
                raise p.ProtocolError(
                    f"hello lists {len(holding):,} tasks held (at most {MAX_HOLDINGS:,})"
                )
            self._check_not_taken(routing_id, msg.executor_id)
            self._register(routing_id, ("executor", msg.executor_id))
            token = self._table.tokens[msg.executor_id] = secrets.token_hex(8)
            # The results it held for a resend are decided by the core now: ack them all.
            self._delivery.ack(  # acked whatever it is: a task held is not kept
                msg.executor_id,
                [i[0] for i in holding if type(i) is list and len(i) == 4 and type(i[0]) is str],
            )
            heartbeat_ms = max(1, self.heartbeat_ns // 1_000_000)
            self._socket.send_multipart(
                [
                    routing_id,
                    p.encode(p.Welcome(p.PROTOCOL_VERSION, self.scheduler_id, heartbeat_ms, token)),
                ]
            )
            return ExecutorJoined(msg)
        self._register(routing_id, ("client", msg.client_id))
        self._socket.send_multipart(
            [
                routing_id,
                p.encode(
                    p.ClientWelcome(
                        p.PROTOCOL_VERSION,
                        self.scheduler_id,
                        self.core.policy.name,
                        self.core.records.max_suspensions,
                    )
                ),
            ]
        )
        return ClientJoined(msg.client_id)

    def _check_not_taken(self, routing_id: bytes, executor_id: str) -> None:
        """ProtocolError if a live executor of this id is connected on another connection.

        Discussion: a hello with a live executor's id would make it rejoin, and losses
        counted that way failed real tasks (`ExecutorLost`). An executor that says hello
        again itself has closed its old connection first; if that has not been seen yet, its
        hello goes unanswered and it says hello again after `silent_s`, by when it has."""
        route = self._table.routes.get(("executor", executor_id))
        executor = self.core.records.executors.get(executor_id)
        if (
            route is not None
            and route != routing_id
            and executor is not None
            and executor.alive
            and not self._watch.unreachable([route])
        ):
            raise p.ProtocolError(
                f"hello as executor {executor_id[:64]}, which is connected on another connection"
            )

    def _note_for_ack(self, routing_id: bytes, executor_id: str, msg: p.Message) -> None:
        """Results to ack once journaled; a heartbeat gets an answer (maybe an empty ack)."""
        if not isinstance(msg, p.Heartbeat):
            self._delivery.ack_report(executor_id, msg)
            return
        executor = self.core.records.executors.get(executor_id)
        if executor is not None and not executor.alive:
            # Declared lost (it was silent too long): what it holds runs elsewhere now.
            self._ask_to_rejoin(routing_id, "this executor was declared lost")
        else:
            self._delivery.heartbeat(executor_id)

    def _ask_to_rejoin(self, routing_id: bytes, reason: str) -> None:
        now = time.monotonic_ns()
        told = self._told_rejoin.get(routing_id)
        if told is not None and now - told < self.heartbeat_ns:
            return
        self._told_rejoin[routing_id] = now
        self._told_rejoin.move_to_end(routing_id)
        while len(self._told_rejoin) > REJOIN_MEMORY:
            self._told_rejoin.popitem(last=False)
        log.info("asked connection %s to rejoin: %s", routing_id.hex()[:12], reason)
        self._socket.send_multipart([routing_id, p.encode(p.Rejoin(reason))])

    def _register(self, routing_id: bytes, peer: tuple[str, str]) -> None:
        """`routing_id` said hello as `peer`: its command connection (replacing any other).

        Discussion: a connection that was an executor's and now says hello as another peer
        takes that executor's one route: the executor is lost now, as nothing else would
        tell of it (liveness is the connection's, scheduler/liveness.py)."""
        before = self._table.peers.get(routing_id)
        self._table.forget(routing_id)
        old = self._table.routes.get(peer)
        if old is not None:
            self._table.forget(old)
        if peer[0] == "executor":
            # Discussion: batch launches held this pass were for the executor's old
            # connection. Its hello lists what it holds, and the core (handling this hello
            # next) launches again, as new attempts, what the old connection's launches
            # carried. Sent to the new connection too, the old attempt would be queued there
            # first and the new one refused as "already here"; the old one's result is then
            # stale, and the task stays launched for ever (`tidal bench chunking` lost a
            # future so, the executor's hello waiting out a long submit step).
            self._held.drop(peer[1])
        self._table.bind(routing_id, peer)
        self._table.routes[peer] = routing_id
        if peer[0] == "client":
            self._leases.came_back(peer[1])
        if (
            before is not None
            and before != peer
            and before[0] == "executor"
            and before not in self._table.routes
        ):
            reason = "its connection said hello as another peer"
            self._dispatch(self._handle(ExecutorLeft(before[1], reason)))

    # ---- instructions -> frames -----------------------------------------------------------------

    def _dispatch(self, instructions: list[Any]) -> None:
        journal = self.journal
        for instruction in instructions:
            kind = type(instruction)
            if kind is ToExecutor and not instruction.by_lane:  # (else done there: lanes)
                msg = instruction.message
                if type(msg) is p.Launch and msg.priority == "batch":
                    # Batch work waits for the end of the pass, to travel in one frame.
                    if self._held.hold(instruction.executor_id, p.encode(msg)):
                        self._flush_executor(instruction.executor_id)  # enough held: now
                else:
                    # Anything else is urgent; what was held goes first, to keep the order.
                    self._flush_executor(instruction.executor_id)
                    self._send(("executor", instruction.executor_id), msg)
            elif kind is ToClient:
                msg = instruction.message
                if type(msg) is p.Status:  # the shell adds what only it knows
                    msg = p.Status(msg.request_id, {**msg.snapshot, "bad_input": self.bad_input()})
                if type(msg) is p.Results:
                    self._delivery.results(instruction.client_id, msg.items)
                elif type(msg) is p.BatchResults:  # after the journal too
                    self._delivery.batch(instruction.client_id, msg)
                else:
                    self._send(("client", instruction.client_id), msg)
            elif journal is not None and kind is not ToExecutor:  # a note
                accepted = self._submit_frame
                if kind is JobAccepted and accepted[0] is instruction.submit:
                    journal.submitted(instruction.client_id, instruction.submit, bytes(accepted[1]))
                else:
                    journal.apply(instruction)  # committed before results are sent

    def _flush_held(self) -> None:
        """Hand the pass's journal records to the writer, then send what the pass held back:
        each executor its batch launches at once; results and acks once those records are
        on disk (scheduler/delivery.py): whatever a peer is told is safe is on disk by then.
        The records wait for a group commit if the last commit was less than
        GROUP_COMMIT_NS ago and no stream task's result is among them (`_commit_at`)."""
        self._end_pass()
        writer = self._writer
        now = time.monotonic_ns()
        due = None if writer is None else writer.due(now)
        if due is not None and due > now:
            self._commit_at = due  # what waits on the records waits with them
        else:
            self._commit_at = None
            if writer is not None:
                writer.commit()
            self._delivery.flush()
        for executor_id in self._held.executors():
            self._flush_executor(executor_id)

    def _end_pass(self) -> None:
        """The policy hears of the slots the pass freed (`consult_per_pass`), and what it
        decides is sent. As for a peer's event, a bug it exposes is logged loudly and the
        loop goes on (the core's books stay as the failed step left them)."""
        try:
            instructions = self._handle(PassEnded())
        except Exception as exc:
            self._guard.handler_failed("the scheduler", "the end of a pass", exc)
            return
        self._dispatch(instructions)

    def _flush_executor(self, executor_id: str) -> None:
        frame = self._held.take(executor_id)
        routing_id = self._table.routes.get(("executor", executor_id))
        if frame is not None and routing_id is not None:
            self._socket.send_multipart([routing_id, frame])

    def _send(self, peer: tuple[str, str], msg: p.Message) -> None:
        routing_id = self._table.routes.get(peer)
        if routing_id is None:
            log.debug("no route to %s %s for %s", peer[0], peer[1], msg.op)
            return
        try:
            frame = p.encode(msg)
        except p.EncodeError as exc:  # e.g. stats nested past what msgpack packs again
            log.error("cannot send %s to %s %s: %s", msg.op, peer[0], peer[1], exc)
            return
        self._socket.send_multipart([routing_id, frame])

    def _shutdown_executors(self, reason: str) -> None:
        for (kind, _), routing_id in list(self._table.routes.items()):
            if kind == "executor":
                self._socket.send_multipart([routing_id, p.encode(p.Shutdown(reason))])

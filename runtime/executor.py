"""The executor process: one slot, a kernel on the main thread, a listener on the socket.

Threads, sockets and why:

* The main thread runs the kernel's hub and every task greenlet. It has its own DEALER
  connection to the scheduler, announced with `attach`, on which it sends its reports,
  queued and sent together whenever the kernel flushes (runtime/reports.py).
* The listener thread owns the other DEALER connection, the one that said `hello`: it
  sends heartbeats with metrics, handles what is not a task command (a welcome, a rejoin),
  runs the suspension watchdog and, with a memory limit, the memory guard
  (runtime/memory.py). Task commands on it are read by the main thread itself: at record
  boundaries and between tasks when the gate's watcher saw frames come, and while idle it
  sleeps on the connection (runtime/idlewait.py). The listener reads them only before the
  welcome, when the hub is stuck in a task without record boundaries, when it finds frames
  waiting at its look, and always with the pure-Python gate (no watcher: `_listen_loop`).

When the scheduler goes away. Every result the executor sends is kept until the scheduler
acks it (runtime/reports.py). The scheduler answers each heartbeat with an ack, so the
listener keeps the connection's liveness in a `Link` (runtime/link.py), as the client does:
an executor that hears nothing for SILENT_HEARTBEATS intervals, or is told to `rejoin` (the
scheduler restarted, or declared it lost), reconnects: new sockets, and a hello that lists
what it holds (tasks running, queued or suspended, with a chunk's unreported subtasks, and
the results never acked). Its tasks carry on meanwhile; reports wait until the new welcome,
and go out on a fresh report connection. After `reconnect_timeout_s` without a welcome it
gives up, as it does when its first hello goes unanswered for `connect_timeout_s`.

Discussion: how fast a busy executor *notices* a suspend command is decided by the GIL, not
by greenlets. The gate's watcher (runtime/_gate.c) raises the gate without it, and the task
thread reads the command at its next record boundary; where the listener reads instead, it
must take the GIL first, and CPython only forces the running thread to drop the GIL after
the switch interval, 5 ms by default. We set it to 100 us in executor processes, which
bounds the wait; the cost is paid only when the listener actually wants the GIL. When a C
loop drains a C iterator the gate itself offers the GIL every 1024 records (see
runtime/_gate.c).
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import socket
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from typing import Any

import psutil
import zmq

from tidal.runtime import protocol as p
from tidal.runtime.auth import HandshakeWatch, load_peer_keys, secure_peer
from tidal.runtime.datastore import advertised_address, bind_host_for, fetch_chunks
from tidal.runtime.executor_commands import CommandHandlers
from tidal.runtime.frames import FrameReader
from tidal.runtime.gate import IMPLEMENTATION as GATE_IMPLEMENTATION
from tidal.runtime.gate import PyGate
from tidal.runtime.guard import PeerGuard
from tidal.runtime.idlewait import CommandWait
from tidal.runtime.kernel import DEFAULT_SUSPEND_TIMEOUT_NS, Kernel
from tidal.runtime.lanes import ExecutorLane, lanes_enabled
from tidal.runtime.link import (
    DEFAULT_CONNECT_TIMEOUT_S,
    DEFAULT_RECONNECT_TIMEOUT_S,
    SILENT_HEARTBEATS,
    GiveUp,
    Keepalive,
    Link,
    Reconnect,
)
from tidal.runtime.logs import RateLimitedLog
from tidal.runtime.memory import MEMORY_POLL_MS, Exit, FailTask, MemoryGuard, RssProbe, format_size
from tidal.runtime.realtime import (
    DEFAULT_STREAM_NICE,
    DEFAULT_TASK_NICE,
    TaskThreadNice,
    realtime_io_threads,
    realtime_permitted,
    realtime_this_thread,
)
from tidal.runtime.reports import Reports
from tidal.runtime.results import ResultSpool
from tidal.runtime.runstate import suspend_timeout_problem

__all__ = ["DEFAULT_SWITCH_INTERVAL_S", "Executor"]

log = logging.getLogger("tidal.executor")

DEFAULT_SWITCH_INTERVAL_S = 100e-6
# Discussion: until the scheduler's welcome tells us its interval, heartbeat at this rate.
DEFAULT_HEARTBEAT_S = 0.5
# While a suspension is pending, look at the watchdog this often.
WATCHDOG_POLL_MS = 5
# Once welcomed, the listener looks this often whether the hub is stuck in a task (then it
# watches the command connection itself) and sends the reports the task thread held back
# (runtime/reports.py). Discussion: it used to be woken when reports were held, and to read
# every frame: ~0.5 wake-ups a task, each a GIL hand-over, under a flood of tiny tasks.
LOOK_MS = 10
# Until the welcome, the listener wakes this often to see whether the scheduler refused our
# key (the handshake watch is not among the sockets it polls).
HANDSHAKE_POLL_S = 0.1
# The exit code of an executor that could not get back under its memory limit.
EXIT_OVER_MEMORY_LIMIT = 3
MEMORY_LIMIT_EXCEEDED = "MemoryLimitExceeded"  # the error type of a task failed for the limit
# The one peer an executor's PeerGuard counts bad frames for.
SCHEDULER = "scheduler"


class Executor(CommandHandlers):
    """One executor: connect to `scheduler`, run what it launches until told to stop."""

    def __init__(
        self,
        scheduler: str,
        *,
        node: str = "local",
        executor_id: str | None = None,
        switch_interval_s: float = DEFAULT_SWITCH_INTERVAL_S,
        suspend_timeout_ns: int = DEFAULT_SUSPEND_TIMEOUT_NS,
        connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
        reconnect_timeout_s: float = DEFAULT_RECONNECT_TIMEOUT_S,
        max_frame_bytes: int = p.MAX_FRAME_BYTES,
        realtime: bool = True,
        task_nice: int = DEFAULT_TASK_NICE,
        stream_nice: int = DEFAULT_STREAM_NICE,
        memory_limit: int | None = None,
        keys: str | os.PathLike[str] | None = None,
        clean_exit_level: int = logging.WARNING,
        lanes: bool = True,
    ) -> None:
        self.scheduler = scheduler
        if (problem := suspend_timeout_problem(suspend_timeout_ns)) is not None:
            raise ValueError(problem)
        # CURVE keys (runtime/auth.py); read first, so that a bad key directory fails here.
        self.keys = None if keys is None else load_peer_keys(keys)
        advertised_address()  # a malformed TIDAL_DATA_ADDRESS fails here, not in a task
        self.node = node
        self.executor_id = (
            executor_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        )
        self.switch_interval_s = switch_interval_s
        self.connect_timeout_s = connect_timeout_s
        self.reconnect_timeout_s = reconnect_timeout_s
        self.max_frame_bytes = max_frame_bytes
        self.exit_code = 0
        self.exit_reason: str | None = None  # why `run()` ended, said as its last line
        self.clean_exit_level = clean_exit_level  # how loud that line is for an exit code 0
        self.realtime = realtime
        self._nice = TaskThreadNice(task_nice, stream_nice)
        self.memory_limit = memory_limit
        self._rss = RssProbe()
        # Big results, kept until their clients fetch them (the data server is made lazily).
        self._results = ResultSpool(
            self.executor_id, lambda: bind_host_for(self.scheduler), keys=self.keys
        )
        if memory_limit is not None and (rss := self._rss()) >= memory_limit:
            self._rss.close()
            raise ValueError(
                f"a memory limit of {format_size(memory_limit)} is below this executor's own "
                f"memory before any task (rss {format_size(rss)}): raise it"
            )
        self._context = zmq.Context()
        realtime_io_threads(self._context, realtime)
        self._inproc = f"inproc://tidal-executor-{uuid.uuid4().hex}"
        # Wakes the listener: for what the task thread left it (`w`), or to exit (empty).
        self._to_listener = self._context.socket(zmq.PAIR)
        self._to_listener.bind(self._inproc)
        # Stream tasks straight from clients (runtime/lanes.py): not with keys, nor behind an
        # advertised address (others may not reach this one), nor with the pure-Python gate
        # (no watcher: a busy task thread would not hear of them), nor with TIDAL_LANES=0.
        self._lane = (
            ExecutorLane(self._context, bind_host_for(self.scheduler))
            if lanes
            and self.keys is None
            and not advertised_address()[0]
            and GATE_IMPLEMENTATION == "c"
            and lanes_enabled()
            else None
        )
        self._dropped = RateLimitedLog(log, level=logging.ERROR)
        # The task thread's reports, on a connection of their own (runtime/reports.py).
        self._reports = Reports(
            self._context, self.scheduler, self.executor_id, self.keys, self._dropped
        )
        self.reconnects = 0  # hellos said again
        # The command connection's liveness: heartbeats, silence, rejoining, giving up.
        self._link = Link(
            ping_s=DEFAULT_HEARTBEAT_S,
            silent_s=SILENT_HEARTBEATS * DEFAULT_HEARTBEAT_S,
            connect_timeout_s=connect_timeout_s,
            reconnect_timeout_s=reconnect_timeout_s,
        )
        # The command connection (the listener's DEALER) is used by two threads: the
        # listener, and the task thread, which reads task commands itself when the gate's
        # watcher saw them arrive and when it wakes from its idle wait (`_read_commands`).
        # One at a time, under this lock; what the task thread reads that is not a task
        # command it leaves for the listener.
        self._dealer: zmq.Socket | None = None
        self._dealer_reader: FrameReader | None = None  # reads `_dealer` (in C where built)
        # Reentrant: the listener handles what it read under it, and a rejoin among that
        # replaces the connection (`_connect`) under it too.
        self._dealer_lock = threading.RLock()
        self._for_listener: deque[p.Message | p.ProtocolError] = deque()
        self._polled_fd = -1  # the descriptor the listener polls for commands (-1: none)
        self._dealer_fd = -1  # the command connection's descriptor (ZMQ_FD)
        self._task_thread_heard = False  # the task thread read frames: the link heard them
        # An idle task thread sleeps on the command connection and reads what comes itself.
        self._idle = CommandWait(self._dealer_lock, self._command_connection, lane=self._lane)
        self.kernel = Kernel(
            # A lane task's result goes to its client too, at once (runtime/lanes.py).
            self._reports.emit
            if self._lane is None
            else self._lane.answering(self._reports.emit, self._read_lane),
            flush=self._reports.flush,
            hold=self._reports.send_due,
            read_commands=self._read_commands,
            idle=self._idle,
            # Spooled arguments not on this host come over a connection of the task thread's.
            fetch=lambda reference: fetch_chunks(reference, self._context),
            # Big results are spooled here and fetched by the client.
            spool_result=self._results.reference_for,
            keep_result=self._results.keep_for,
            hurry=self._hurry,
            executor_id=self.executor_id,
            suspend_timeout_ns=suspend_timeout_ns,
            priority_changed=self._nice.set_class,
            # Discussion: a partition is one big list; left in the young generations the
            # cyclic GC would walk it again and again (tens of ms for millions of records, all
            # while the task holds the GIL). Task data has no cycles to find: as soon as a
            # payload is unpacked, move it out of the collector's way. It is still freed by
            # reference counting when the task ends.
            payload_unpacked=gc.freeze,
            # Per-task memory estimates cost two RSS reads per switch: only with a limit.
            memory_probe=self._rss if memory_limit is not None else None,
        )
        # The pure-Python gate has no watcher: nothing tells the task thread that frames came
        # while it runs, so the listener watches the connection throughout, as it used to.
        self._gate_blind = isinstance(self.kernel.gate, PyGate)
        self._memory_guard = (
            None
            if memory_limit is None
            else MemoryGuard(
                memory_limit,
                self.executor_id,
                # Kept results (runtime/kept.py) are this executor's memory too, in its spool.
                probe=lambda: self._rss() + self._results.kept_bytes,
                estimates=self.kernel.memory_estimates,
                running=self.kernel.running_task,
                alive=self.kernel.holds,
                clock=time.monotonic_ns,
            )
        )
        # Bad frames from the scheduler: logged at a bounded rate with a periodic summary; never
        # a disconnection (limit=None), as the scheduler is this executor's only peer.
        self._bad_input = PeerGuard(log, limit=None)
        # The commands that only reach the kernel (either thread may handle them).
        self._task_handlers: dict[type, Any] = {
            p.Launch: self._on_launch,
            p.Drop: self._on_drop,
            p.Suspend: self._on_suspend,
            p.Resume: self._on_resume,
            p.Kill: self._on_kill,
            p.LaunchChunk: self._on_launch_chunk,
            p.Steal: self._on_steal,
            p.Ack: self._on_ack,
        }
        self._handlers: dict[type, Any] = {
            p.Welcome: self._on_welcome,
            p.Reject: self._on_reject,
            p.Rejoin: self._on_rejoin,
            p.Shutdown: self._on_shutdown,
            **self._task_handlers,
        }

    # ---- main thread ------------------------------------------------------------------------

    def run(self) -> int:
        """Serve until shut down; return the process exit code."""
        sys.setswitchinterval(self.switch_interval_s)
        if threading.current_thread() is threading.main_thread():
            # Before the listener says hello: a signal from then on is a clean stop.
            for signum in (signal.SIGTERM, signal.SIGINT):
                signal.signal(signum, lambda n, _: self._exit(0, f"on {signal.Signals(n).name}"))
        listener = threading.Thread(target=self._listen, name="tidal-listener", daemon=True)
        listener.start()
        # After the listener and ZeroMQ's thread exist, so that they keep normal priority.
        if (tid := self._nice.lower_this_thread()) is not None:
            # A command arriving lifts the thread to the stream nice, and to SCHED_FIFO until
            # the hub has it (where permitted), so that a batch task reaches its next record
            # boundary without waiting for a CPU (runtime/_gate.c).
            realtime = self.realtime and realtime_permitted()
            self.kernel.gate.boost(tid, self._nice.stream_nice, realtime=realtime)
            if realtime and self.kernel.gate.boost_realtime:  # the C gate: it can
                self._nice.realtime_gate = self.kernel.gate
        try:
            self.kernel.run(block=True)
        except BaseException as exc:
            self._exit(1, f"an internal error: {type(exc).__name__}: {exc}", stop=False)
            raise
        finally:
            self.kernel.close()  # kill what is left; their reports go out first, then goodbye
            self._reports.emit(p.Goodbye("executor shutting down"))
            self._reports.flush()
            if listener.is_alive():  # an empty frame tells the listener to exit
                try:
                    self._to_listener.send(b"", zmq.NOBLOCK)
                except zmq.Again:
                    log.error("the listener is not taking messages")
            listener.join(timeout=5)
            self._to_listener.close(linger=0)
            if self._lane is not None:
                self._lane.close()
            self._reports.close()
            self._context.term()
            self._idle.close()
            self._rss.close()
            self._results.close()  # after waiting a little for the last results' readers
            # One line, the last, at the default log level: an executor never ends silently.
            log.log(
                self.clean_exit_level if self.exit_code == 0 else logging.ERROR,
                "executor %s exits%s: %s",
                self.executor_id,
                f" (code {self.exit_code})" if self.exit_code else "",
                self.exit_reason or "it was stopped",
            )
        return self.exit_code

    def _exit(self, code: int, reason: str, *, stop: bool = True) -> None:
        """Stop serving (any thread): `run()` returns `code` and says `reason`, unless a
        reason came first (a signal during a shutdown does not replace it)."""
        if self.exit_reason is None:
            self.exit_code, self.exit_reason = code, reason
        if stop:
            self.kernel.stop()

    def _hurry(self) -> None:
        """A suspend, kill or fail for the running task came: lift its thread to the stream
        nice, so that a batch task reaches its next boundary without waiting for a CPU."""
        if self.kernel.running_task() is not None:
            self._nice.lift()
            # ...and to SCHED_FIFO until the hub has it, unless this is the task thread,
            # which read the command itself (`_read_commands`): it is in the hub already.
            gate = self._nice.realtime_gate
            if gate is not None and threading.get_native_id() != self._nice.tid:
                gate.boost_now()

    def _read_commands(self) -> bool:
        """Read what waits on the command connection and hand task commands to the kernel,
        on the task thread (the kernel calls this when the gate's watcher saw frames come,
        and when it wakes from its idle wait: runtime/idlewait.py).

        Discussion: the listener would need the GIL and a wake-up of its own, then the hub
        another (~0.15-0.3 ms each on a loaded 2-core VM); here the frames are read by the
        thread that holds the GIL already. What is not a task command (a welcome, a rejoin,
        a bad frame), and everything after it, goes to the listener, which owns the
        connection's life. Commands are handled under the connection's lock, by whichever
        thread read them, so that they reach the kernel in the order they came. False if
        the listener holds the lock now (reading, or sending): the kernel then waits for it
        a moment, and what it did not read comes at the watcher's next raise or the
        listener's next look. The lane's stream tasks are read after (runtime/lanes.py).
        """
        read = self._read_command_connection()
        if self._lane is not None and self._read_lane():
            return True  # (what it left on the command connection comes at the next raise)
        return read

    def _read_command_connection(self) -> bool:
        if not self._dealer_lock.acquire(blocking=False):
            return False
        forwarded = False
        try:
            if self._dealer is None:
                return False
            # Until nothing is left: the `received` sent below may take in frames that
            # arrive meanwhile, and the descriptor would not signal them again.
            while not forwarded and (received := self._dealer_reader.read_all()):
                self._task_thread_heard = True
                mine = (
                    self._task_handlers if self._link.connected and not self._for_listener else {}
                )
                items = self._decode(received)
                self._acknowledge_launches(items)
                for i, item in enumerate(items):
                    if type(item) not in mine:
                        self._for_listener.extend(items[i:])
                        forwarded = True
                        break
                    self._handle(item, mine)
        finally:
            self._dealer_lock.release()
        if forwarded:
            try:
                self._to_listener.send(b"w", zmq.NOBLOCK)  # wake the listener for them
            except zmq.Again:
                self._dropped("the listener is not taking messages")
        return True

    def _command_connection(self) -> tuple[zmq.Socket, int] | None:
        """The command connection and its descriptor (`CommandWait`, under the lock)."""
        return None if self._dealer is None else (self._dealer, self._dealer_fd)

    # ---- listener thread ----------------------------------------------------------------------

    def _listen(self) -> None:
        realtime_this_thread(self.realtime)
        from_main = self._context.socket(zmq.PAIR)
        from_main.connect(self._inproc)
        self._watch: HandshakeWatch | None = None
        try:
            self._listen_loop(from_main)
        except Exception:  # an internal error: loud, and the executor stops
            log.exception("executor listener crashed")
            self._exit(1, "its listener crashed (the traceback is above)")
        finally:
            self.kernel.gate.unwatch()
            if self._watch is not None:
                self._watch.close()
            with self._dealer_lock:
                if self._dealer is not None:
                    self._dealer.close()
                    self._dealer = None
            from_main.close(linger=0)

    def _connect(self, holding: list[Any]) -> zmq.Socket:
        """A new command connection to the scheduler, with the hello said on it."""
        if self._dealer is not None:
            self._watch.close()
            with self._dealer_lock:  # the task thread may be reading it
                self._dealer.close(linger=0)  # what it still queued was for the old scheduler
                self._dealer = None
        dealer = self._context.socket(zmq.DEALER)
        dealer.linger = 1000
        # Discussion: not ZMQ_MAXMSGSIZE, though it would refuse oversized frames before they
        # are held in memory: libzmq drops the whole connection for one, and the scheduler
        # is the one peer on it. decode() enforces the limit instead.
        # Never block the listener on a scheduler that stopped reading: see _send.
        dealer.sndhwm = 100_000
        # Discussion: frames it cannot read while a long C call holds its GIL queue here;
        # at the default limit (1,000) libzmq would stop reading the connection, pings
        # included, and the scheduler would take the executor for gone.
        dealer.rcvhwm = 100_000
        secure_peer(dealer, self.keys)
        # Watches the handshake, so that a scheduler that refuses our key is reported.
        self._watch = HandshakeWatch(dealer, self.scheduler, self.keys)
        dealer.connect(self.scheduler)
        hello = p.Hello(
            p.PROTOCOL_VERSION,
            self.executor_id,
            self.node,
            1,
            os.getpid(),
            socket.gethostname(),
            holding,
            None if self._lane is None else self._lane.address,
        )
        try:
            # Never blocking: a scheduler that refused our key may have ended the pipe
            # already, and the handshake watch reports that (the executor then exits).
            dealer.send(p.encode(hello), zmq.NOBLOCK)
        except zmq.Again:
            log.info("the hello to %s found no connection yet", self.scheduler)
        self._link.hello_sent()
        fd = dealer.getsockopt(zmq.FD)  # before the task thread may use the socket
        with self._dealer_lock:
            self._dealer = dealer
            self._dealer_reader = FrameReader(dealer)
            self._dealer_fd = fd
        # Frames arriving on it raise the record gate at once, from a thread that needs no
        # GIL, so the running task reads them at its next boundary (`_read_commands`).
        self.kernel.gate.watch(fd, realtime=self.realtime, also=self._lane.fd if self._lane else -1)
        self._idle.wake()  # an idle hub may sleep on the old one's descriptor
        return dealer

    def _rejoin(self, reason: str) -> None:
        """Say hello again on a new connection, listing what we hold (listener thread)."""
        self._reports.unlink()  # before the snapshot: later reports wait for the new link
        # Tasks first, then results: a task that ends in between is in one or both lists.
        holding = self.kernel.holdings() + self._reports.unacked()
        log.warning(
            "executor %s says hello again (%s), holding %d tasks and results",
            self.executor_id,
            reason,
            len(holding),
        )
        self._connect(holding)
        self.reconnects += 1

    def _listen_loop(self, from_main: zmq.Socket) -> None:
        """The listener's loop: poll, handle each frame by its op, watchdog, heartbeat."""
        link = self._link
        dealer = self._connect([])
        seq = 0
        # Discussion: before the welcome the listener polls the connection's descriptor, not
        # the socket: the task thread may read the socket meanwhile (`_read_commands`), and
        # a socket is polled and read by one thread at a time. The descriptor is edge-
        # triggered, so each wake-up reads until nothing is left, and whatever touched the
        # socket since (a send may take in frames' arrival) is followed by a look at
        # ZMQ_EVENTS (`_frames_waiting`), which every turn of this loop begins with.
        poller = zmq.Poller()
        poller.register(from_main, zmq.POLLIN)
        seen = None  # the hub's turns and the gate's records at the last look
        while True:
            # -- 1. Poll. Wake for the next heartbeat (or whatever else the link has due), or
            #       sooner while unwelcomed or while a suspension is pending. The command
            #       connection is the task thread's to read once welcomed (while idle, it
            #       sleeps on it: runtime/idlewait.py; while busy, the gate's watcher tells
            #       it). This thread watches it too before the welcome, and while the hub
            #       holds tasks but made no turn and passed no record in the last LOOK_MS: a
            #       task that keeps the thread without record boundaries (a sleep, say).
            progress = self.kernel.progress()
            stuck = progress is not None and progress == seen
            seen = progress
            watch = stuck or not link.connected or self._gate_blind
            self._watch_commands(poller, watch)
            wake_at = link.next_due()
            if not link.connected:
                wake_at = min(wake_at, time.monotonic() + HANDSHAKE_POLL_S)
            timeout_ms = max(0.0, (wake_at - time.monotonic()) * 1000)
            if self.kernel.has_pending_suspensions():
                timeout_ms = min(timeout_ms, WATCHDOG_POLL_MS)
            elif link.connected:
                # Also while idle (~100 wake-ups a second, a few microseconds each): the hub
                # may start a task that keeps the thread without telling us; and for reports
                # it held back and then could not send (a task it expected short ran long).
                timeout_ms = min(timeout_ms, LOOK_MS)
            if self._memory_guard is not None:
                # Also while idle: a launch reaches the kernel's records only when its hub
                # applies it, so "no tasks here" would miss a task's first growth until the
                # next heartbeat. An idle wake-up costs a few microseconds.
                timeout_ms = min(timeout_ms, MEMORY_POLL_MS)
            # Every turn, watching or not: a send of ours (a heartbeat, a `received`) may have
            # taken in frames' arrival, and then neither the watcher nor the idle hub hears
            # of them (runtime/idlewait.py).
            waiting = self._frames_waiting(dealer)
            ready = dict(poller.poll(0 if waiting else timeout_ms))

            # -- 2. Commands from the scheduler, each handled by its op: first what the task
            #       thread read and left for us (its wake-up frames read first, so that none
            #       is missed), then what waits if we watch; under the lock, so that the
            #       task thread cannot handle later commands before these.
            exit_asked = from_main in ready and b"" in _drain(from_main.recv)
            if self._task_thread_heard:
                self._task_thread_heard = False
                link.heard()
            received = []
            if watch or waiting or self._for_listener:  # (else the task thread reads them)
                with self._dealer_lock:
                    items = list(self._for_listener)
                    self._for_listener.clear()
                    received = self._dealer_reader.read_all()  # after those: in order
                    if received:
                        link.heard()
                    fresh = self._decode(received)
                    # (those the task thread left here, it acknowledged when it read them)
                    self._acknowledge_launches(fresh)
                    items.extend(fresh)
                    for item in items:
                        self._handle(item, self._handlers)
                        if self._dealer is not dealer:  # a rejoin: read the new connection
                            break
                dealer = self._dealer
            if received:
                self.kernel.listened()  # a task the gate's watcher stopped goes on

            self._bad_input.tick()  # the periodic summary of suppressed log lines, if any

            # -- 3. The task thread says when to exit (an empty frame, read above; it sends
            #       its own reports).
            if exit_asked:
                return

            self._reports.send_due()

            # -- 4. Watchdog: report suspensions the running task cannot honour; with a
            #       memory limit, fail the task that pays for going over it (or exit).
            for failure in self.kernel.check_overdue():
                self._send(dealer, p.encode(failure))
            if self._memory_guard is not None and self.kernel.holds_tasks():
                self._enforce_memory_limit(dealer)

            # -- 5. Heartbeat; rejoin a scheduler that went silent; give up on one that
            #       refused our key, never answered the hello, or did not come back in time.
            if not link.connected and (refusal := self._watch.refusal()):
                self._exit(2, refusal)
                return
            if link.connected:
                self._watch.close()  # the handshake is behind us (until a rejoin)
            match link.due():
                case Keepalive():
                    seq += 1
                    self._send(dealer, p.encode(self._heartbeat(seq)))
                    self._results.expire()
                case Reconnect(reason):
                    waiting = self._frames_waiting(dealer) or self._task_thread_heard
                    if link.connected and waiting:
                        # Discussion: frames wait to be read, so the scheduler did speak: this
                        # thread could not listen (a long C call on the task thread held the
                        # GIL). Read them before judging it silent.
                        continue
                    self._rejoin(reason)
                    dealer = self._dealer
                case GiveUp(reason):
                    self._exit(2, f"the scheduler at {self.scheduler} {reason}")

    def _frames_waiting(self, dealer: zmq.Socket) -> bool:
        """Whether frames wait on the command connection (this also re-arms its edge-
        triggered descriptor after whatever touched the socket last)."""
        with self._dealer_lock:
            return bool(dealer.getsockopt(zmq.EVENTS) & zmq.POLLIN)

    def _watch_commands(self, poller: zmq.Poller, watch: bool) -> None:
        """Have `poller` wake for frames on the command connection (the current one) only
        if `watch`."""
        fd = self._dealer_fd if watch else -1
        if fd != self._polled_fd:
            if self._polled_fd >= 0:
                poller.unregister(self._polled_fd)
            if fd >= 0:
                poller.register(fd, zmq.POLLIN)
            self._polled_fd = fd

    def _handle(self, msg: p.Message | p.ProtocolError, handlers: dict[type, Any]) -> None:
        """Handle one command from the scheduler, or drop it with a (rate-limited) log line."""
        problem = msg if isinstance(msg, p.ProtocolError) else None
        handler = None if problem else handlers.get(type(msg))
        connected = self._link.connected
        if problem is None and handler is None:
            problem = f"{msg.op} is not sent to executors"
        elif problem is None and not connected and type(msg) not in (p.Welcome, p.Reject):
            problem = f"{msg.op} before the handshake completed"
        elif problem is None and connected and type(msg) is p.Welcome:
            problem = "welcome after the handshake completed"
        if problem is not None:
            self._bad_input.bad_frame(SCHEDULER, "the scheduler", str(problem))
            return
        try:
            handler(msg)
        except p.ProtocolError as exc:  # well-formed, but its contents are not what it needs
            self._bad_input.bad_frame(SCHEDULER, "the scheduler", str(exc))
        except Exception as exc:
            # Discussion: a handler only checks a command and hands it to the kernel, so this
            # is a bug a command exposed; loud, but the executor and its tasks carry on (an
            # executor that exits loses every suspended task's progress).
            self._bad_input.handler_failed("the scheduler", msg.op, exc)

    def _send(self, dealer: zmq.Socket, frame: bytes) -> None:
        """Send to the scheduler without ever blocking the listener."""
        with self._dealer_lock:
            try:
                dealer.send(frame, zmq.NOBLOCK)
            except zmq.Again:
                self._dropped(
                    f"dropped a message: {dealer.sndhwm} are queued for a scheduler that is "
                    "not reading"
                )

    def _enforce_memory_limit(self, dealer: zmq.Socket) -> None:
        """One look at the RSS; fail a task, or exit, as the guard decides."""
        action = self._memory_guard.check()
        if isinstance(action, FailTask):
            log.warning("%s: failing it", action.message)
            self.kernel.fail(action.task_id, MEMORY_LIMIT_EXCEEDED, action.message)
        elif isinstance(action, Exit):
            self._exit_over_limit(dealer, action)

    def _exit_over_limit(self, dealer: zmq.Socket, action: Exit) -> None:
        """Report the task that could not be stopped as failed, say goodbye, and exit.

        Discussion: the task thread is busy in that task, so nothing it owns can be used:
        not the kernel, not the report connection. A connection of our own, with its own
        context, attaches as this executor's, carries the failure and the goodbye (so the
        scheduler requeues the other tasks at once instead of waiting for missed
        heartbeats), and its context's term() waits until they are sent.
        """
        log.error("%s", action.message)
        context = zmq.Context()
        last = context.socket(zmq.DEALER)
        last.linger = 2000
        secure_peer(last, self.keys)  # a keyed scheduler lets only its peers' keys in
        last.connect(self.scheduler)
        # The reports still queued first (results of tasks that ended, held a moment to go
        # out together, runtime/reports.py): else those tasks would run again elsewhere.
        frames = [self._reports.attach_frame(), *self._reports.take_queued()]
        if action.task_id is not None:
            failure = self.kernel.memory_failure(
                action.task_id, MEMORY_LIMIT_EXCEEDED, action.message
            )
            if failure is not None:
                frames.append(p.encode(failure))
        frames.append(p.encode(p.Goodbye(action.message)))
        for frame in frames:
            last.send(frame)
        last.close()
        context.term()
        dealer.close(linger=0)
        os._exit(EXIT_OVER_MEMORY_LIMIT)

    def _heartbeat(self, seq: int) -> p.Heartbeat:
        stats = self.kernel.statistics()
        memory = psutil.virtual_memory()
        rss = self._rss()
        return p.Heartbeat(
            self.executor_id,
            self.node,
            seq,
            time.monotonic_ns(),
            1,
            stats.running,
            stats.suspended,
            stats.queued,
            rss,
            memory.available,
            float(memory.percent),
            self.memory_limit or 0,
            self.kernel.memory_estimates(rss),
            self.kernel.task_progress(),
        )


def _drain(recv: Callable[[int], Any]) -> list[Any]:
    """Everything waiting on a socket, read with its `recv` method until none is left (the
    command connection is read with its FrameReader instead, under `_dealer_lock`)."""
    received = []
    while True:
        try:
            received.append(recv(zmq.NOBLOCK))
        except zmq.Again:
            return received


def serve(scheduler: str, **options: Any) -> int:
    """Run an executor in this process until it is shut down; return its exit code."""
    return Executor(scheduler, **options).run()

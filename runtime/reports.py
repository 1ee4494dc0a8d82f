"""An executor's reports to the scheduler: queued by the task thread, sent together on a
connection of their own, results kept until the scheduler acks them.

The kernel emits reports (started, finished, suspended, ...) as they happen and flushes at
each task switch, when a chunk reports, and past BATCH_FLUSH_BYTES: whatever is queued goes
out as one frame, a batch when several wait. Between batch tasks queued back to back the
kernel calls `send_due` instead, before a task whose function ran short so far: the started
and finished of batch tasks wait up to HOLD_NS while the kernel switches, and a task that
ends while its started still waits reports only its end (the scheduler takes a finished or
failed of a task it thought queued as its start too). The listener sends what waited longer
(`send_due`, at its looks, every LOOK_MS: runtime/executor.py), so a long task that follows
short ones keeps them at most HOLD_NS + LOOK_MS, unless it holds the GIL (a long C call):
then they wait for its end, which is why the kernel holds only before short ones. The
connection is the task thread's own DEALER, announced with `attach` carrying the last
welcome's token; after each welcome a new one is opened (the old one's queue is dropped:
what it held that matters was listed in the hello). While the scheduler is lost, reports
stay queued.

Every result (finished, failed, a chunk's results) is also kept, as a `hello.holding` item,
until the scheduler acks it (it does once the result is journaled), so that a hello after a
reconnection lists it again.

Threads: the task thread emits and flushes, the listener flushes stale reports (both under
`_lock`: the socket goes from one thread to the other with it); the listener says when a
welcome came or the link was lost (`welcomed`, `unlink`), applies acks, and reads
`unacked()` and `attach_frame()`. Each of those touches one attribute or one dict item,
atomic under the GIL; `welcomed` sets the token, then the generation, then the link, the
order in which `flush` reads them.

Discussion: reports used to go through the listener over an inproc socket. Every such send
gave up the GIL, and the busy listener then held it, so each report cost the task thread a
GIL round trip (the profile showed 40% of its time in that send). With its own socket the
task thread sends while the listener sleeps in zmq, with nobody waiting for the GIL.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import zmq

from tidal.runtime import batches
from tidal.runtime import protocol as p
from tidal.runtime.auth import PeerKeys, secure_peer

__all__ = ["HOLD_NS", "Reports"]

# How long the started and finished of batch tasks run back to back may wait to go out
# together. A frame per task cost the executor and the scheduler a wake-up of each of their
# threads on the way (~8 context switches per task on the executor); a frame per
# millisecond carries every report of that millisecond. Stream tasks' reports, and every
# report that answers a command, go out at once.
HOLD_NS = 2_000_000
# The reports that may wait (those of batch tasks; the kernel flushes at once after a
# stream task's end).
_MAY_WAIT = (p.Started, p.Finished, p.Failed)


class Reports:
    """One executor's outgoing reports (see the module docstring)."""

    def __init__(
        self,
        context: zmq.Context,
        scheduler: str,
        executor_id: str,
        keys: PeerKeys | None,
        dropped: Callable[[str], Any],
        clock: Callable[[], int] = time.monotonic_ns,
    ) -> None:
        self._context = context
        self._clock = clock
        self._scheduler = scheduler
        self._executor_id = executor_id
        self._keys = keys
        self._dropped = dropped  # a rate-limited log of what could not be sent
        self._lock = threading.Lock()
        self._outbox: list[bytes] = []
        self._outbox_bytes = 0
        self._held_since = 0  # when the oldest report queued was (0: none is)
        self._urgent = False  # whether one queued must go out at the next flush
        # The place in the outbox of each started queued, by task id: dropped if its task
        # ends before it goes out (its finished says it all).
        self._started_at: dict[str, int] = {}
        # Results sent and not acked yet, as hello.holding items, by task id.
        self._unacked: dict[str, list[Any]] = {}
        self._socket: zmq.Socket | None = None
        self._socket_generation = 0  # the welcome the socket was opened for
        # Set by the listener: reports may go out (False until a welcome, and from losing
        # the scheduler to the next), and for which welcome (a new connection each).
        self._linked = False
        self._generation = 0
        self.attach_token = ""

    # ---- the task thread ------------------------------------------------------------------

    def emit(self, msg: p.Message) -> None:
        """Queue a report; it goes out at the next `flush` (or now, past BATCH_FLUSH_BYTES)."""
        kind = type(msg)
        if kind is p.Finished:
            self._unacked[msg.task_id] = [
                msg.task_id,
                msg.attempt,
                "finished",
                [msg.result, None, msg.stats],
            ]
        elif kind is p.Failed:
            error = [msg.error_type, msg.message, msg.traceback]
            self._unacked[msg.task_id] = [
                msg.task_id,
                msg.attempt,
                "failed",
                [None, error, msg.stats],
            ]
        elif kind is p.ChunkResults:
            for task_id, outcome, value, error, stats in msg.items:
                self._unacked[task_id] = [task_id, 0, outcome, [value, error, stats]]
        elif kind is p.ChunkBatch:  # kept whole; listed task by task only in a hello
            self._unacked[p.batch_key(msg.chunk_id, msg.start)] = msg
        frame = p.encode(msg)
        with self._lock:
            outbox = self._outbox
            if not outbox:
                self._held_since = self._clock()
            if kind is p.Started:
                self._started_at[msg.task_id] = len(outbox)
            elif kind is p.Finished or kind is p.Failed:
                at = self._started_at.pop(msg.task_id, None)
                if at is not None:  # its started never went out: this says it all
                    self._outbox_bytes -= len(outbox[at])
                    outbox[at] = b""
            if kind not in _MAY_WAIT:
                self._urgent = True
            outbox.append(frame)
            self._outbox_bytes += len(frame)
            full = self._outbox_bytes >= p.BATCH_FLUSH_BYTES  # far below frame limits
        if full:
            self.flush()

    def flush(self) -> None:
        """Send what is queued: one frame, a batch if several (nothing while unlinked)."""
        with self._lock:
            self._send_queued()

    def send_due(self) -> None:
        """Send what is queued if any of it must go now or it waited HOLD_NS; else let it
        wait (the kernel, between short batch tasks run back to back; the listener, while
        the task thread is busy in a long task)."""
        with self._lock:
            if self._urgent or self._clock() - self._held_since >= HOLD_NS:
                self._send_queued()

    def take_queued(self) -> list[bytes]:
        """What is queued, in order, no longer queued (the listener, for an executor's last
        connection when it must exit; empty if the task thread holds the queue's lock)."""
        if not self._lock.acquire(timeout=0.1):
            return []
        try:
            frames = [frame for frame in self._outbox if frame]
            self._outbox, self._outbox_bytes, self._urgent = [], 0, False
            self._started_at.clear()
            return frames
        finally:
            self._lock.release()

    def _send_queued(self) -> None:
        outbox = self._outbox
        if not outbox or not self._linked:
            return
        if self._socket is None or self._socket_generation != self._generation:
            self._socket_generation = self._generation
            if self._socket is not None:
                self._socket.close(linger=0)
            self._socket = self._open()
        if len(outbox) > 1:
            outbox = [frame for frame in outbox if frame]  # without the starteds dropped
        frames = (
            [
                p.encode(p.Batch(list(outbox[i : i + p.MAX_BATCH_ITEMS])))
                for i in range(0, len(outbox), p.MAX_BATCH_ITEMS)
            ]
            if len(outbox) > 1
            else [outbox[0]]
        )
        self._outbox = []
        self._outbox_bytes = 0
        self._urgent = False
        self._started_at.clear()
        try:
            for frame in frames:
                self._socket.send(frame, zmq.NOBLOCK)
        except zmq.Again:
            self._dropped("dropped reports: the scheduler is not reading them")

    def close(self, linger: int | None = None) -> None:
        """Close the report connection (what it queued goes out within `linger` ms, by
        default the socket's: 1 s)."""
        with self._lock:
            if self._socket is not None:
                self._socket.close(linger=linger)
                self._socket = None

    def attach_frame(self) -> bytes:
        """The `attach` that makes a connection this executor's report connection."""
        return p.encode(p.Attach(p.PROTOCOL_VERSION, self._executor_id, self.attach_token))

    def _open(self) -> zmq.Socket:
        socket = self._context.socket(zmq.DEALER)
        socket.linger = 1000
        socket.sndhwm = 100_000
        secure_peer(socket, self._keys)
        socket.connect(self._scheduler)
        socket.send(self.attach_frame())
        return socket

    # ---- the listener ---------------------------------------------------------------------

    def welcomed(self, attach_token: str) -> None:
        """A welcome came: reports go out, on a new connection attached with its token."""
        self.attach_token = attach_token
        self._generation += 1
        self._linked = True

    def unlink(self) -> None:
        """The scheduler is lost: reports wait for the next welcome."""
        self._linked = False

    def unacked(self) -> list[list[Any]]:
        """The results not acked yet, as hello.holding items."""
        held = []
        for item in list(self._unacked.values()):
            if type(item) is p.ChunkBatch:
                held.extend(_batch_items(item))
            else:
                held.append(item)
        return held

    def acked(self, task_ids: list[Any]) -> None:
        """The scheduler has these results safe: stop keeping them."""
        for task_id in task_ids:
            if type(task_id) is str:
                self._unacked.pop(task_id, None)


def _batch_items(batch: p.ChunkBatch) -> list[list[Any]]:
    """A chunk_batch's results as hello.holding items, one per task."""
    items = batches.batch_items(batch.job_id, batch.start, batch.values, batch.errors, {})
    return [
        [task_id, 0, outcome, [value, error, stats]]
        for task_id, outcome, value, error, stats in items
    ]

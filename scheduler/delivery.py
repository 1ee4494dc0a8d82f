"""What the scheduler holds back: results to clients and acks to executors, sent only once
the journal has the records behind them (scheduler/journal.py), and batch launches, sent
at the end of the pass (`HeldLaunches`).

The server's loop collects a pass's results and acks here (`results`, `batch`, `ack`,
`heartbeat`), hands the pass's journal records to the writer, then calls `flush`: what the
pass collected goes out at once if the writer has nothing in hand, else when the writer's
commit holding it is on disk (`written`, called with the writer's ticket). A client's
results travel in frames of at most RESULTS_PER_FRAME items and about BATCH_FLUSH_BYTES of
values, a bulk job's batch in a frame of its own. Acks go to an executor at most every
ACK_EVERY_NS (a heartbeat's answer at once; held ones at the next tick, `send_due_acks`).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Any

from tidal.runtime import protocol as p
from tidal.scheduler.journal import JournalWriter

__all__ = ["ACK_EVERY_NS", "HELD_LAUNCHES_MAX", "RESULTS_PER_FRAME", "Delivery", "HeldLaunches"]

# Results merged into one frame at most; with results of up to ~64 KiB each a frame stays
# well below a client's 64 MiB limit.
RESULTS_PER_FRAME = 256
# Acks of results go to an executor at most this often (with a heartbeat's answer at once):
# each is a frame that wakes its listener thread, which then contends for the GIL with the
# task thread it would otherwise leave alone, and raises its gate, which makes its running
# task hand over to the hub. An ack only lets the executor forget results it keeps for a
# resend.
ACK_EVERY_NS = 20_000_000
# Batch launches held for one executor at most before they go out anyway.
HELD_LAUNCHES_MAX = 256


class HeldLaunches:
    """Batch launches held per executor, to go out at the end of the pass as one frame.

    Batch work can wait that long. Held launches are measured by their frames, so mostly
    by their payloads' bytes (encoding one copies its payload, opaque to us, as it is)."""

    def __init__(self) -> None:
        self._frames: dict[str, list[bytes]] = {}
        self._bytes: dict[str, int] = {}

    def hold(self, executor_id: str, frame: bytes) -> bool:
        """Hold an encoded launch; True when enough is held to send it now (`take`)."""
        held = self._frames.setdefault(executor_id, [])
        held.append(frame)
        size = self._bytes[executor_id] = self._bytes.get(executor_id, 0) + len(frame)
        return len(held) >= HELD_LAUNCHES_MAX or size >= p.BATCH_FLUSH_BYTES

    def take(self, executor_id: str) -> bytes | None:
        """What is held for `executor_id`, as one frame (a batch if several), no longer
        held; None if nothing is."""
        held = self._frames.pop(executor_id, None)
        self._bytes.pop(executor_id, None)
        if not held:
            return None
        return held[0] if len(held) == 1 else p.encode(p.Batch(held))

    def drop(self, executor_id: str) -> None:
        self._frames.pop(executor_id, None)
        self._bytes.pop(executor_id, None)

    def executors(self) -> list[str]:
        """The executors something is held for."""
        return list(self._frames)


class Delivery:
    """A pass's results and acks, held until the journal has them (see the module
    docstring). `send(peer, message)` sends to ("client" | "executor", id); `known(executor
    id)` says whether the scheduler still has a record of that executor."""

    def __init__(
        self,
        writer: JournalWriter | None,
        send: Callable[[tuple[str, str], p.Message], None],
        known: Callable[[str], bool],
    ) -> None:
        self._writer = writer
        self._send = send
        self._known = known
        self._results: dict[str, list[Any]] = {}  # result items (and batches), per client
        # Task ids (batch keys) whose results executors sent this pass, acked once
        # journaled (an empty list answers a heartbeat: the executor's sign that we live).
        self._acks: dict[str, list[str]] = {}
        # Results and acks of passes whose journal records are being written: (ticket,
        # results, acks), sent in this order once the writer has that ticket on disk.
        self._unwritten: deque[tuple[int, dict[str, list[Any]], dict[str, list[str]]]] = deque()
        # Acks written and not sent yet (ACK_EVERY_NS), and when each executor got its last.
        self._ready_acks: dict[str, list[str]] = {}
        self._acked_at: dict[str, int] = {}

    # ---- collected during a pass -------------------------------------------------------------

    def results(self, client_id: str, items: list[Any]) -> None:
        self._results.setdefault(client_id, []).extend(items)

    def batch(self, client_id: str, batch: p.BatchResults) -> None:
        self._results.setdefault(client_id, []).append(batch)

    def ack(self, executor_id: str, task_ids: list[str]) -> None:
        self._acks.setdefault(executor_id, []).extend(task_ids)

    def ack_report(self, executor_id: str, msg: p.Message) -> None:
        """What a report holds to ack once journaled: a task's end, a chunk's items (by task
        id), a span chunk's batch (by its batch key); nothing for other reports."""
        if isinstance(msg, p.Finished | p.Failed):
            self.ack(executor_id, [msg.task_id])
        elif isinstance(msg, p.ChunkResults):
            items = msg.items
            self.ack(
                executor_id, [i[0] for i in items if type(i) is list and i and type(i[0]) is str]
            )
        elif isinstance(msg, p.ChunkBatch):
            self.ack(executor_id, [p.batch_key(msg.chunk_id, msg.start)])

    def heartbeat(self, executor_id: str) -> None:
        """An executor's heartbeat: it gets an answer (its acks, maybe none) this pass."""
        self._acks.setdefault(executor_id, [])

    def forget_client(self, client_id: str) -> None:
        self._results.pop(client_id, None)

    # ---- sent ------------------------------------------------------------------------------

    def flush(self) -> None:
        """The pass is over and its journal records handed to the writer: send what it
        collected now, or once the writer's commit holding it is on disk."""
        if not (self._results or self._acks):
            return
        writer = self._writer
        if writer is not None and (writer.waiting or self._unwritten):
            # Behind the newest commit: it holds these records, or follows them.
            self._unwritten.append((writer.issued, self._results, self._acks))
        else:
            self._send_results(self._results, self._acks)
        self._results, self._acks = {}, {}

    def written(self, ticket: int) -> None:
        """Send the results and acks held for journal commits up to `ticket`."""
        while self._unwritten and self._unwritten[0][0] <= ticket:
            _, results, acks = self._unwritten.popleft()
            self._send_results(results, acks)

    def send_due_acks(self) -> None:
        """Send the acks held back longer than ACK_EVERY_NS (at each tick)."""
        now = time.monotonic_ns()
        for executor_id in list(self._ready_acks):
            if now - self._acked_at.get(executor_id, 0) >= ACK_EVERY_NS:
                self._send_acks(executor_id, now)

    def _send_results(self, results: dict[str, list[Any]], acks: dict[str, list[str]]) -> None:
        for client_id, items in results.items():
            # Discussion: by count and by bytes, so that two big results (a result may be
            # up to ~63 MiB) never share a frame over the client's limit.
            frame_items: list[Any] = []
            frame_bytes = 0
            for item in items:
                if type(item) is p.BatchResults:  # a frame of its own
                    self._send(("client", client_id), item)
                    continue
                size = len(item[2]) if type(item[2]) is bytes else 0
                if frame_items and (
                    len(frame_items) >= RESULTS_PER_FRAME
                    or frame_bytes + size > p.BATCH_FLUSH_BYTES
                ):
                    self._send(("client", client_id), p.Results(frame_items))
                    frame_items, frame_bytes = [], 0
                frame_items.append(item)
                frame_bytes += size
            if frame_items:
                self._send(("client", client_id), p.Results(frame_items))
        now = time.monotonic_ns()
        for executor_id, task_ids in acks.items():
            self._ready_acks.setdefault(executor_id, []).extend(task_ids)
            # An empty entry is a heartbeat's answer: it goes at once.
            if not task_ids or now - self._acked_at.get(executor_id, 0) >= ACK_EVERY_NS:
                self._send_acks(executor_id, now)

    def _send_acks(self, executor_id: str, now: int) -> None:
        """Send the acks ready for `executor_id`, if the scheduler still knows it."""
        task_ids = self._ready_acks.pop(executor_id, [])
        if self._known(executor_id):
            self._acked_at[executor_id] = now
            self._send(("executor", executor_id), p.Ack(task_ids))
        else:  # forgotten: nobody to tell
            self._acked_at.pop(executor_id, None)

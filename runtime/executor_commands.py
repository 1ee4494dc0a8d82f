"""What an executor does with each message on its command connection (runtime/executor.py),
on its listener thread: the handshake's answers, and the commands it passes to its kernel.

`CommandHandlers` is a part of `Executor`, which has the kernel, the link, the reports, the
result spool and the exits these use; `Executor._handlers` maps each message type to one.
Frames from the scheduler are decoded, and their launches acknowledged, here too (by
either thread), and a lane's stream tasks handed to the kernel (runtime/lanes.py).
"""

from __future__ import annotations

import logging

import zmq

from tidal.runtime import protocol as p
from tidal.runtime.columns import LaunchColumns
from tidal.runtime.functions import FunctionRef
from tidal.runtime.link import SILENT_HEARTBEATS

__all__ = ["CommandHandlers"]

log = logging.getLogger("tidal.executor")


class CommandHandlers:
    """The command handlers of `Executor` (see the module docstring)."""

    def _on_welcome(self, msg: p.Welcome) -> None:
        if msg.version != p.PROTOCOL_VERSION:
            versions = f"protocol {msg.version}, this executor {p.PROTOCOL_VERSION}"
            self._exit(2, f"the scheduler speaks {versions}")
            return
        # Clamped: a heartbeat interval outside 10 ms .. 60 s is a scheduler bug, not a plan.
        heartbeat_s = min(60.0, max(0.01, msg.heartbeat_ms / 1000))
        self._link.ping_s, self._link.silent_s = heartbeat_s, SILENT_HEARTBEATS * heartbeat_s
        again = self._link.welcomed()
        log.info("executor %s joined scheduler %s", self.executor_id, msg.scheduler_id)
        # Reports (those waiting since we lost the scheduler, if it was lost) go out now,
        # on a new connection whose attach carries this welcome's token.
        self._reports.welcomed(msg.attach_token)
        if again:
            self.kernel.wake()

    def _on_rejoin(self, msg: p.Rejoin) -> None:
        # Ignored unless connected: we have said hello, and wait for its welcome.
        if self._link.connected:
            self._rejoin(f"the scheduler asked: {msg.reason}")

    def _on_ack(self, msg: p.Ack) -> None:
        self._reports.acked(msg.task_ids)

    def _on_reject(self, msg: p.Reject) -> None:
        self._exit(2, f"the scheduler refused it: {msg.reason}")

    def _on_shutdown(self, msg: p.Shutdown) -> None:
        self._exit(0, f"the scheduler shut it down ({msg.reason})")

    def _on_launch(self, msg: p.Launch) -> None:
        # The payload stays packed here: the task unpacks it when it starts, on the task
        # thread, so this thread stays free for commands (and a bad payload fails the task).
        self.kernel.launch(
            msg.task_id,
            FunctionRef(msg.fn, msg.main_path),
            payload=msg.payload,
            attempt=msg.attempt,
            priority=msg.priority,
            keep=msg.keep,
            inputs=msg.inputs,
            suspensions_left=msg.suspensions_left,
        )

    def _on_drop(self, msg: p.Drop) -> None:
        self._results.drop(msg.task_ids)

    def _on_launch_chunk(self, msg: p.LaunchChunk) -> None:
        # Its subtasks were checked as it was decoded (`_decode`), not in the kernel's hub: a
        # malformed subtask there would break a steal (which takes task ids from the chunk's
        # tail) on the task thread.
        self.kernel.launch_chunk(
            msg.chunk_id,
            FunctionRef(msg.fn, msg.main_path),
            msg.subtasks,
            attempt=msg.attempt,
            priority=msg.priority,
            span=None if msg.span is None else (msg.span[0], msg.span[1]),
            columns=None if msg.columns is None else LaunchColumns(*msg.columns),
            suspensions_left=msg.suspensions_left,
        )

    def _read_lane(self) -> bool:
        """Hand what came by the lane to the kernel, on the task thread (runtime/lanes.py);
        True if anything came. Not while the scheduler is lost: its client sends it there
        once its grace is over."""
        items = self._lane.read()
        for item in items:
            if isinstance(item, p.ProtocolError):
                self._bad_input.bad_frame("lane", "a lane peer", str(item))
            elif self._link.connected:
                msg, submit, task_id, payload = item
                fn = FunctionRef(submit.fn, submit.main_path)
                self.kernel.take(task_id, fn, payload, (msg.token, msg.submit, msg.again))
        return bool(items)

    def _on_steal(self, msg: p.Steal) -> None:
        self.kernel.steal(msg.chunk_id, msg.count)

    def _on_suspend(self, msg: p.Suspend) -> None:
        self.kernel.suspend(msg.task_id)

    def _on_resume(self, msg: p.Resume) -> None:
        self.kernel.resume(msg.task_id)

    def _on_kill(self, msg: p.Kill) -> None:
        self.kernel.kill(msg.task_id)

    def _acknowledge_launches(self, items: list[p.Message | p.ProtocolError]) -> None:
        """Tell the scheduler which launches reached this executor, before any of them is
        handed to the kernel (under the connection's lock, on the connection they came on).

        Discussion: before, not after: a task that takes the process down at once must
        still count the loss toward its max_retries. One message per read, not per launch.
        """
        launches = [
            [m.task_id if type(m) is p.Launch else m.chunk_id, m.attempt, m.sent_ns]
            for m in items
            if type(m) is p.Launch or type(m) is p.LaunchChunk
        ]
        if launches and self._dealer is not None:
            try:
                self._dealer.send(p.encode(p.Received(launches)), zmq.NOBLOCK)
            except zmq.Again:
                self._dropped("dropped a received: the scheduler is not reading")

    def _decode(self, received: list[list[bytes]]) -> list[p.Message | p.ProtocolError]:
        """The messages of frames from the scheduler, a bad one as its ProtocolError (a
        launch_chunk with a malformed subtask too: it is neither acknowledged nor run)."""
        items: list[p.Message | p.ProtocolError] = []
        for frames in received:
            try:
                msg = p.decode_parts(frames, max_frame_bytes=self.max_frame_bytes)
                if isinstance(msg, p.Batch):
                    items.extend(p.unbatch(msg, max_frame_bytes=self.max_frame_bytes))
                else:
                    items.append(msg)
            except p.ProtocolError as exc:
                items.append(exc)
        for i, item in enumerate(items):
            if type(item) is p.LaunchChunk and (problem := _chunk_problem(item)) is not None:
                items[i] = p.ProtocolError(problem)
        return items


def _chunk_problem(msg: p.LaunchChunk) -> str | None:
    """What is wrong with a launch_chunk's subtasks, if anything (`_decode`)."""
    if msg.span is not None:
        span = msg.span
        if not (len(span) == 2 and type(span[0]) is str and type(span[1]) is int and span[1] >= 0):
            return (
                "launch_chunk.span must be [job_id, first] (a str and an int >= 0), "
                f"got {str(span)[:60]}"
            )
        if msg.columns is not None:
            if msg.subtasks:
                return "launch_chunk.subtasks of a columnar span must be empty"
            columns = msg.columns
            if not (
                len(columns) == 3
                and type(columns[0]) is int
                and columns[0] >= 1
                and type(columns[1]) is bytes
                and type(columns[2]) is bytes
            ):
                # (Its xs are scanned on the task thread: LaunchColumns.)
                return (
                    "launch_chunk.columns must be [count >= 1, packed xs, packed kwargs], "
                    f"got {str(columns)[:60]}"
                )
            return None
        if not all(type(entry) is bytes for entry in msg.subtasks):
            return "launch_chunk.subtasks of a span must be payloads (bytes)"
        return None
    if msg.columns is not None:
        return "launch_chunk.columns needs a span"
    for i, entry in enumerate(msg.subtasks):
        if not (
            type(entry) is list
            and len(entry) == 2
            and type(entry[0]) is str
            and type(entry[1]) is bytes
        ):
            return (
                f"launch_chunk.subtasks[{i}] must be [task_id, payload] (a str and bytes), "
                f"got {str(entry)[:60]}"
            )
    return None

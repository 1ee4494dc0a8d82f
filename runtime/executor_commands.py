"""What an executor does with each message on its command connection (runtime/executor.py),
on its listener thread: the handshake's answers, and the commands it passes to its kernel.

`CommandHandlers` is a part of `Executor`, which has the kernel, the link, the reports, the
result spool and the exits these use; `Executor._handlers` maps each message type to one.
"""

from __future__ import annotations

import logging

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
        )

    def _on_steal(self, msg: p.Steal) -> None:
        self.kernel.steal(msg.chunk_id, msg.count)

    def _on_suspend(self, msg: p.Suspend) -> None:
        self.kernel.suspend(msg.task_id)

    def _on_resume(self, msg: p.Resume) -> None:
        self.kernel.resume(msg.task_id)

    def _on_kill(self, msg: p.Kill) -> None:
        self.kernel.kill(msg.task_id)

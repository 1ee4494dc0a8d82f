"""What the dashboard shows, kept by the scheduler's loop and read from another thread.

`Monitor.step(event, instructions)` reads each step of the core as the event log does (the
same `EventRecorder`), on the scheduler's loop, and keeps what a live view needs: the task
stream (each task's run slices per executor, closed by a suspension, an end or a kill, and
the ones still open) and marks for what happens at an instant (a suspension or kill sent, a
steal, an executor joining or lost, a refused decision, a policy switch). `publish(status)`
hands it the scheduler's `status()` snapshot, once a tick. The dashboard's thread calls
`read(since)` for whatever came after the sequence number it has.

Discussion: the loop never waits for the dashboard and the dashboard never reads the core:
everything crosses under one lock, as plain dicts, and what is kept is bounded
(`MAX_SLICES`, `MAX_MARKS`; a task still open when its executor is lost is closed then).
A slice's times are the core's clock in seconds (the monotonic clock the scheduler runs on),
as the status snapshot's `now` is, so that the page can place them against each other.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Sequence
from typing import Any

from tidal.runtime.functions import short_name
from tidal.scheduler.eventlog import EventRecorder, LoggedCore
from tidal.scheduler.events import Event, Instruction

__all__ = ["MAX_MARKS", "MAX_SLICES", "Monitor"]

# Closed slices and marks kept for readers that join late (the newest ones).
MAX_SLICES = 4000
MAX_MARKS = 2000

# Reports that open a slice on their executor, and those that close one.
_OPENS = {"started", "resumed"}
_CLOSES = {"suspended": "suspended", "finished": "finished", "failed": "failed", "killed": "killed"}
# Records shown as marks at an instant.
_MARKS = {
    "suspend",
    "kill",
    "steal",
    "executor_joined",
    "executor_lost",
    "executor_busy",
    "executor_back",
    "decision_refused",
    "policy",
    "adaptive_switch",
    "submit_refused",
}


class Monitor:
    """The dashboard's view of one scheduler core (see the module docstring)."""

    def __init__(self, core: LoggedCore) -> None:
        self._core = core
        self._recorder = EventRecorder(core)
        self._lock = threading.Lock()
        self._seq = 0
        self._slices: deque[dict[str, Any]] = deque(maxlen=MAX_SLICES)
        self._marks: deque[dict[str, Any]] = deque(maxlen=MAX_MARKS)
        self._open: dict[str, dict[str, Any]] = {}  # task id -> its open slice
        self._status: dict[str, Any] | None = None
        self._status_seq = 0

    # ---- the scheduler's loop -------------------------------------------------------------

    def step(self, event: Event, instructions: Sequence[Instruction]) -> None:
        """Keep what one step of the core shows (called on the scheduler's loop)."""
        records = self._recorder.records(event, instructions)
        if not records:
            return
        with self._lock:
            for record in records:
                kind = record["event"]
                if kind in _OPENS:
                    self._open_slice(record)
                elif kind in _CLOSES:
                    self._close_slice(record["task"], record["t"], _CLOSES[kind])
                if kind in _MARKS:
                    self._seq += 1
                    self._marks.append({"seq": self._seq, **_mark(record)})
                if kind == "executor_lost":  # what ran there ends with it
                    lost = record.get("executor")
                    for task_id, piece in list(self._open.items()):
                        if piece["executor"] == lost:
                            self._close_slice(task_id, record["t"], "lost")

    def publish(self, status: dict[str, Any]) -> None:
        """The scheduler's status snapshot now, with the core's clock (`now`, seconds)."""
        snapshot = {**status, "now": self._core.records.now / 1e9}
        with self._lock:
            self._seq += 1
            self._status, self._status_seq = snapshot, self._seq

    # ---- any thread -------------------------------------------------------------------------

    def read(self, since: int = 0) -> dict[str, Any]:
        """What came after sequence number `since`: the slices closed and the marks since,
        every slice still open, and the status snapshot if a newer one was published;
        `seq` is the number to ask with next time."""
        with self._lock:
            return {
                "seq": self._seq,
                "status": self._status if self._status_seq > since else None,
                "slices": _after(self._slices, since),
                "open": list(self._open.values()),  # replaced, never changed, once made
                "marks": _after(self._marks, since),
            }

    def status(self) -> dict[str, Any] | None:
        """The last status snapshot published (None before the first)."""
        with self._lock:
            return self._status

    # ---- helpers (under the lock) ----------------------------------------------------------

    def _open_slice(self, record: dict[str, Any]) -> None:
        """A task started or resumed: only one the core has running there (a report it
        ignored opens nothing, so an executor's nonsense cannot grow `_open`)."""
        task_id = record["task"]
        task = self._core.records.tasks.get(task_id)
        if task is None or task.executor_id != record["executor"]:
            return
        self._open[task_id] = {
            "task": task_id,
            "executor": record["executor"],
            "priority": task.priority,
            "job": task.job.job_id,
            "function": short_name(task.job.fn),
            "start": record["t"],
        }

    def _close_slice(self, task_id: str, t: float, how: str) -> None:
        piece = self._open.pop(task_id, None)
        if piece is None:
            return
        self._seq += 1
        self._slices.append({**piece, "end": t, "how": how, "seq": self._seq})


def _mark(record: dict[str, Any]) -> dict[str, Any]:
    """A mark's fields: when, what, where, and why (reasons cut to a readable length)."""
    mark = {
        "t": record["t"],
        "event": record["event"],
        "executor": record.get("executor"),
        "task": record.get("task"),
    }
    for key in ("reason", "policy", "previous", "decision", "thief", "count", "node"):
        if key in record:
            value = record[key]
            mark[key] = value[:200] if isinstance(value, str) else value
    return mark


def _after(items: deque[dict[str, Any]], since: int) -> list[dict[str, Any]]:
    """The items with a sequence number above `since` (they are in order: from the right)."""
    out = []
    for item in reversed(items):
        if item["seq"] <= since:
            break
        out.append(item)
    out.reverse()
    return out

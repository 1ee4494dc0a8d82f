"""Task futures, the errors they raise, and waiting on many of them.

A `TaskFuture` is the `concurrent.futures.Future` of one task. It knows nothing of sockets:
the client completes it from its IO thread (`_complete`), and its `cancel()` reaches the
scheduler through the `cancel_remote` callback the client hands it, so this module never
imports the client. A failed task raises its own exception type if that is a Python builtin,
else TaskError, with the executor's traceback as its `__cause__` (a RemoteTraceback).
`as_completed` and `gather` wait on any futures, a client's or not.
"""

from __future__ import annotations

import asyncio
import builtins
import concurrent.futures
import contextlib
import dataclasses
import queue
import time
from collections.abc import Callable, Generator, Iterable, Iterator
from typing import Any

__all__ = [
    "MemoryLimitExceeded",
    "RemoteTraceback",
    "TaskError",
    "TaskFuture",
    "TaskStatistics",
    "as_completed",
    "gather",
]


# ---- errors ----------------------------------------------------------------------------------


class TaskError(Exception):
    """A task raised an exception that is not a Python builtin; `error_type` names its type."""

    def __init__(self, error_type: str, message: str) -> None:
        super().__init__(error_type, message)  # both in args, so the error pickles
        self.error_type = error_type
        self.message = message

    def __str__(self) -> str:
        return f"{self.error_type}: {self.message}"


class MemoryLimitExceeded(TaskError, MemoryError):
    """The task took its executor over its memory limit and was stopped; it is not retried.

    A TaskError (`error_type` "MemoryLimitExceeded") and a MemoryError, so that either
    `except` catches it. The message names the task, the executor, the limit and the RSS.
    """


class RemoteTraceback(Exception):
    """The traceback of a task's exception as the executor formatted it (its `__cause__`)."""

    def __init__(self, traceback_text: str) -> None:
        super().__init__(traceback_text)
        self.traceback_text = traceback_text

    def __str__(self) -> str:
        return self.traceback_text


def rebuild_error(error_type: str, message: str, traceback_text: str) -> Exception:
    """The exception a failed task's future raises: the builtin type if it is one, else
    TaskError; its `__cause__` is the remote traceback, so a printed traceback shows both."""
    if error_type == MemoryLimitExceeded.__name__:  # the executor's name for it
        error = MemoryLimitExceeded(error_type, message)
        error.__cause__ = RemoteTraceback(traceback_text)
        return error
    cls = getattr(builtins, error_type, None) if "." not in error_type else None
    error: Exception | None = None
    # Discussion: only Exception subclasses: a task's KeyboardInterrupt or SystemExit must not
    # interrupt or exit the client. StopIteration is left out too: asyncio refuses it as a
    # future's exception, so `await future` would break.
    if (
        isinstance(cls, type)
        and issubclass(cls, Exception)
        and not issubclass(cls, StopIteration | StopAsyncIteration)
    ):
        try:
            error = cls(message)
        except Exception:  # a builtin that needs more arguments (UnicodeDecodeError, ...)
            error = None
    if error is None:
        error = TaskError(error_type, message)
    error.__cause__ = RemoteTraceback(traceback_text)
    return error


# ---- futures ---------------------------------------------------------------------------------


def _seconds(value: Any) -> float | None:
    return value / 1e9 if type(value) is int or type(value) is float else None


def _int(value: Any) -> int | None:
    return value if type(value) is int else None


@dataclasses.dataclass(frozen=True, slots=True)
class TaskStatistics:
    """What the runtime measured about one task; a field the scheduler did not report is None.

    Durations are in seconds; `*_at_ns` are the executor's `time.monotonic_ns()` readings.
    """

    executor_id: str | None = None
    attempt: int | None = None
    suspensions: int | None = None
    running_s: float | None = None
    suspended_s: float | None = None
    queued_s: float | None = None
    records: int | None = None
    started_at_ns: int | None = None
    finished_at_ns: int | None = None
    work_lost_s: float | None = None  # running time thrown away by kills and lost executors

    @classmethod
    def from_stats(cls, stats: dict[str, Any]) -> TaskStatistics:
        """Build from a result's `stats` dict (durations in `*_ns`)."""
        # Discussion: statistics are informational, so a field of the wrong type becomes None
        # rather than an error on a task whose result arrived fine.
        executor_id = stats.get("executor_id")
        return cls(
            executor_id=executor_id if type(executor_id) is str else None,
            attempt=_int(stats.get("attempt")),
            suspensions=_int(stats.get("suspensions")),
            running_s=_seconds(stats.get("running_ns")),
            suspended_s=_seconds(stats.get("suspended_ns")),
            queued_s=_seconds(stats.get("queued_ns")),
            records=_int(stats.get("records")),
            started_at_ns=_int(stats.get("started_at_ns")),
            finished_at_ns=_int(stats.get("finished_at_ns")),
            work_lost_s=_seconds(stats.get("work_lost_ns")),
        )


class TaskFuture(concurrent.futures.Future):
    """The future of one task. A `concurrent.futures.Future`, so `result()`, `exception()`,
    `add_done_callback()`, `concurrent.futures.wait()` work as usual; `await future` works in
    asyncio. A failed task raises its own exception type if it is a builtin, else TaskError.
    """

    def __init__(
        self,
        task_id: str,
        job_id: str,
        submitted_ns: int,
        cancel_remote: Callable[[TaskFuture], None] | None = None,
    ) -> None:
        super().__init__()
        self.task_id = task_id
        self.job_id = job_id
        self.submitted_ns = submitted_ns  # time.monotonic_ns() when the job was sent
        self._cancel_remote = cancel_remote
        self._stats: dict[str, Any] = {}

    def cancel(self) -> bool:
        """Cancel the task here and ask the scheduler to drop or kill it.

        Returns False if the task already finished or failed, True once it is cancelled.
        """
        if self.cancelled():
            return True
        if not self._cancel_locally():
            return False
        if self._cancel_remote is not None:
            self._cancel_remote(self)
        return True

    def statistics(self) -> TaskStatistics:
        """What the runtime measured about this task. Raises RuntimeError while it is pending."""
        if not self.done():
            raise RuntimeError(f"task {self.task_id} is not done yet: no statistics until it is")
        return TaskStatistics.from_stats(self._stats)

    def __await__(self) -> Generator[Any, None, Any]:
        return asyncio.wrap_future(self).__await__()

    def __repr__(self) -> str:
        state = "cancelled" if self.cancelled() else "done" if self.done() else "pending"
        return f"<TaskFuture {self.task_id} {state}>"

    # ---- for the client's IO thread ------------------------------------------------------------

    def _cancel_locally(self) -> bool:
        if not super().cancel():
            return False
        # Discussion: Future.cancel() alone leaves the state CANCELLED, which the stdlib's
        # wait() and as_completed() do not see as done (executors move it on when a worker
        # would have started it). This moves it to CANCELLED_AND_NOTIFIED and wakes them; it
        # raises RuntimeError only if another thread got there first, which is the same end.
        with contextlib.suppress(RuntimeError):
            self.set_running_or_notify_cancel()
        return True

    def _complete(self, outcome: str, value: Any, error: list[str] | None, stats: dict) -> None:
        """Complete from one result (called once per future, never twice)."""
        self._stats = stats
        try:
            if outcome == "finished":
                self.set_result(value)
            elif outcome == "failed" and error is not None:
                self.set_exception(rebuild_error(*error))
            else:
                self._cancel_locally()
        except concurrent.futures.InvalidStateError:
            pass  # the caller cancelled it meanwhile; its cancel stands


# ---- waiting on many futures -----------------------------------------------------------------


def as_completed(
    futures: Iterable[concurrent.futures.Future], timeout: float | None = None
) -> Iterator[concurrent.futures.Future]:
    """Yield each of `futures` once, as it completes (those already done first, in order).

    Raises TimeoutError if `timeout` seconds pass (from the call) with some still pending.
    Works with any `concurrent.futures.Future`, not only a client's.
    """
    pending = list(dict.fromkeys(futures))  # once each, in order
    deadline = None if timeout is None else time.monotonic() + timeout  # now, not at next()
    done: queue.SimpleQueue[concurrent.futures.Future] = queue.SimpleQueue()
    for future in pending:
        future.add_done_callback(done.put)  # runs at once for a future already done

    def completed() -> Iterator[concurrent.futures.Future]:
        for yielded in range(len(pending)):
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                yield done.get(timeout=remaining)
            except queue.Empty:
                raise TimeoutError(
                    f"{len(pending) - yielded} of {len(pending)} futures still pending "
                    f"after {timeout:g} s"
                ) from None

    return completed()


def gather(futures: Iterable[concurrent.futures.Future], timeout: float | None = None) -> list[Any]:
    """Wait for all of `futures`; return their results in order.

    Raises the first task error to arrive (CancelledError for a cancelled task) at once,
    without waiting for the others, and TimeoutError if `timeout` seconds pass first.
    """
    futures = list(futures)
    for future in as_completed(futures, timeout):
        if future.cancelled():
            raise concurrent.futures.CancelledError(
                f"{getattr(future, 'task_id', future)} was cancelled"
            )
        error = future.exception()
        if error is not None:
            raise error
    return [future.result() for future in futures]

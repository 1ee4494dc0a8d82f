"""Task futures, the errors they raise, and waiting on many of them.

A `TaskFuture` is the `concurrent.futures.Future` of one task. It knows nothing of sockets:
the client completes it from its IO thread (`_complete`), and its `cancel()` reaches the
scheduler through the `cancel_remote` callback the client hands it, so this module never
imports the client. A failed task raises its own exception type if that is a Python builtin,
else TaskError, with the executor's traceback as its `__cause__` (a RemoteTraceback).
A bulk map's futures (`MapFutures`) share one `BulkJob`, which holds their outcomes in lists
and makes each TaskFuture only when it is asked for; its progress callbacks and `counts()`
follow the whole map without making any (`tidal.progress` uses them). `as_completed` and
`gather` wait on any futures, a client's or not; `gather` over a whole MapFutures waits on
its job instead. Their reprs say their state, function and error (runtime/reprs.py).
"""

from __future__ import annotations

import asyncio
import builtins
import concurrent.futures
import contextlib
import dataclasses
import itertools
import logging
import operator
import queue
import threading
import time
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from tidal.runtime import reprs
from tidal.runtime.realtime import end_held

if TYPE_CHECKING:
    from tidal.runtime.releases import Releases

__all__ = [
    "BulkJob",
    "MapFutures",
    "MemoryLimitExceeded",
    "RemoteTraceback",
    "TaskError",
    "TaskFuture",
    "TaskStatistics",
    "as_completed",
    "describe_error",
    "gather",
]


log = logging.getLogger("tidal.client")

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


def describe_error(error: BaseException) -> str:
    """ "ErrorType: message" for a failed task's exception (a TaskError says its remote type)."""
    if isinstance(error, TaskError):
        return str(error)
    message = str(error)
    return f"{type(error).__name__}: {message}" if message else type(error).__name__


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
        function: str | None = None,
        dropped: Callable[[str], None] | None = None,
    ) -> None:
        super().__init__()
        self.task_id = task_id
        self.job_id = job_id
        self.submitted_ns = submitted_ns  # time.monotonic_ns() when the job was sent
        self.function = function  # the task's function, "module:qualname", if known
        self._cancel_remote = cancel_remote
        self._stats: dict[str, Any] = {}
        self._dropped = dropped  # told its job id when it is finalized (runtime/releases.py)

    def __del__(self) -> None:
        # The program dropped it: its client tells the scheduler (runtime/releases.py).
        dropped = self._dropped
        if dropped is not None:
            dropped(self.job_id)

    def result(self, timeout: float | None = None) -> Any:
        end_held()  # a stream task's caller waits: its boost ends (runtime/realtime.py)
        return super().result(timeout)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        end_held()
        return super().exception(timeout)

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

    @property
    def state(self) -> str:
        """ "pending", "running", "finished", "failed" or "cancelled".

        A client's future is "pending" until its outcome comes: the scheduler tells clients
        of outcomes only, not of starts (only a future run by a stdlib executor is "running").
        """
        if self.cancelled():
            return "cancelled"
        if self.done():
            return "failed" if self.exception() is not None else "finished"
        return "running" if self.running() else "pending"

    def __repr__(self) -> str:
        state = self.state
        error = self.exception() if state == "failed" else None
        words = [self.function, f"{state}:" if error else state, error and describe_error(error)]
        return reprs.text_repr("TaskFuture", self.task_id, words)

    def _repr_html_(self) -> str:
        state = self.state
        stats = TaskStatistics.from_stats(self._stats) if self.done() else TaskStatistics()
        running = None if stats.running_s is None else f"{stats.running_s:.3f} s"
        rows = [
            ("function", self.function),
            ("state", reprs.State(state)),
            ("error", describe_error(self.exception()) if state == "failed" else None),
            ("executor", stats.executor_id),
            ("attempt", stats.attempt),
            ("running", running),
        ]
        return reprs.html_table("TaskFuture", self.task_id, rows)

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


# ---- a bulk map's futures --------------------------------------------------------------------

# Discussion: a map of 200,000 tiny tasks cost the client ~20 us a task, most of it one
# Future per task (made at submit, each with its own Condition) completed one at a time. A
# bulk job keeps its tasks' outcomes in lists instead, filled a batch at a time under the
# job's one lock; a task's TaskFuture is made only when someone asks for it (made completed
# if its outcome is in), and `gather` over the whole map waits on the job alone.

# A task's state in `BulkJob._state`, one byte each. Being fetched: its result was spooled by
# its executor, and its future (made then) is completed by whoever fetches it.
_PENDING, _FETCHING, _FINISHED, _FAILED = range(4)


class BulkJob:
    """The outcomes of one bulk map's tasks, and those of their futures made so far.

    Task `i` (its id `f"{job_id}/{i}"`) is pending, being fetched, finished (`_values[i]`)
    or failed (`_failures[i]`: its exception, None if it was cancelled). One lock guards it
    all, and is never held while a future that was already out completes, so done callbacks
    may call back in. `cancel_remote(task_id)` tells the scheduler of a future cancelled here;
    `on_done(job)` runs once, when the last task is done or the job fails whole (`fail`).
    `function` ("module:qualname") is handed to each future made.
    """

    def __init__(
        self,
        job_id: str,
        size: int,
        submitted_ns: int,
        *,
        cancel_remote: Callable[[str], None] | None = None,
        on_done: Callable[[BulkJob], None] | None = None,
        function: str | None = None,
        releases: Releases | None = None,
    ) -> None:
        self.job_id = job_id
        self.size = size
        self.submitted_ns = submitted_ns  # time.monotonic_ns() when the job was sent
        self.function = function
        self._cancel_remote = cancel_remote
        self._on_done = on_done
        # Each future made counts, as the MapFutures does, until it is dropped: a program
        # that keeps the futures it took out of a map (`futures += client.map(...)`)
        # still holds the job (runtime/releases.py).
        self._releases = releases
        self._watchers: list[Callable[[], None]] = []  # add_progress_callback's
        self._lock = threading.Lock()
        # `results` waits on it: notified when the last task is done, and at each failure.
        self._changed = threading.Condition(self._lock)
        self._state = bytearray(size)  # all _PENDING
        self._values: list[Any] = [None] * size
        self._stats: list[dict[str, Any] | None] = [None] * size  # a batch's tasks share one
        self._failures: dict[int, BaseException | None] = {}
        self._futures: list[TaskFuture | None] | None = None  # made on the first demand
        self._left = size
        # Set once the job failed whole (`fail`: the client lost its connection, or the
        # scheduler refused the job): each task not done by then fails with
        # _failure(f"task {task_id}"), made when it is asked for.
        self._failure: Callable[[str], Exception] | None = None

    def done(self) -> bool:
        """True once every task is done (or the job failed whole)."""
        with self._lock:
            return self._left == 0

    def counts(self) -> tuple[int, int]:
        """(done, failed): how many tasks are done, and how many of those failed or were
        cancelled (after the job failed whole, `fail`, every task not done then counts as
        failed)."""
        with self._lock:
            failed = len(self._failures)
            if self._failure is not None:  # their failures are made when their futures are
                failed += self._state.count(_PENDING) + self._state.count(_FETCHING)
            return self.size - self._left, failed

    def add_progress_callback(self, fn: Callable[[], None]) -> None:
        """Call `fn()` after each batch of outcomes (on the client's IO thread or a fetch
        thread: keep it short), and once now. One that raises is logged and dropped."""
        with self._lock:
            self._watchers = [*self._watchers, fn]  # copied: _after reads it unlocked
        self._tell([fn])

    def remove_progress_callback(self, fn: Callable[[], None]) -> None:
        """Stop calling `fn` (nothing happens if it was not added)."""
        with self._lock:
            self._watchers = [w for w in self._watchers if w is not fn]

    def future(self, index: int) -> TaskFuture:
        """Task `index`'s future; made now if it was not yet, completed if the task is done."""
        with self._lock:
            return self._future(index)

    def results(self, timeout: float | None = None) -> list[Any]:
        """Every task's value in order, once all have finished (what `gather` returns).

        Raises the first failure in order as soon as there is one (CancelledError for a
        cancelled task), and TimeoutError if `timeout` seconds pass first.
        """
        with self._changed:
            if not self._changed.wait_for(lambda: self._left == 0 or self._failures, timeout):
                raise _still_pending(self._left, self.size, timeout)
            first = min(self._failures, default=self.size)
            if self._failure is not None:
                pending = self._state.find(_PENDING)
                first = pending if 0 <= pending < first else first
            if first == self.size:  # all finished
                return list(self._values)
            _, error, _ = self._outcome(first)
        if error is None:
            raise concurrent.futures.CancelledError(f"{self.job_id}/{first} was cancelled")
        raise error

    # ---- for the client ------------------------------------------------------------------------

    def finish(self, start: int, values: list[Any], stats: dict[str, Any]) -> int:
        """Tasks start, start + 1, ... finished with `values` (decoded), sharing `stats`.

        Returns how many of them were done already: those are ignored (each task completes
        once).
        """
        count = len(values)
        end = start + count
        if not count:
            return 0
        with self._lock:
            if self._failure is None and self._state.count(_PENDING, start, end) == count:
                # The common case, all of it in C: a batch of tasks none of which came before.
                self._values[start:end] = values
                self._stats[start:end] = itertools.repeat(stats, count)
                self._state[start:end] = bytes((_FINISHED,)) * count
                self._left -= count
                taken = count
                if not self._left:
                    self._changed.notify_all()
                made = self._made(range(start, end))
            else:
                indices = range(start, end)
                took = [
                    i
                    for i, value in zip(indices, values, strict=True)
                    if self._take(i, _FINISHED, value, stats)
                ]
                taken, made = len(took), self._made(took)
            last = taken > 0 and self._left == 0
        self._after(made, last)
        return count - taken

    def complete(self, index: int, outcome: str, result: Any, stats: dict[str, Any]) -> bool:
        """One task's outcome: "finished" (`result` its value), "failed" (`result` its
        exception) or "cancelled". False if the task was done already (ignored)."""
        state = _FINISHED if outcome == "finished" else _FAILED
        with self._lock:
            took = self._take(index, state, None if outcome == "cancelled" else result, stats)
            made = self._made((index,)) if took else []
            last = took and self._left == 0
        self._after(made, last)
        return took

    def fetching(self, index: int, stats: dict[str, Any]) -> TaskFuture | None:
        """Task `index`'s result was spooled by its executor: its future, for the fetcher to
        complete (the job learns of it from there), or None if the task was done already."""
        with self._lock:
            if self._state[index] != _PENDING or self._failure is not None:
                return None
            self._state[index] = _FETCHING
            self._stats[index] = stats
            future = self._future(index)
        future.add_done_callback(self._fetched)
        return future

    def waiting_for(self) -> list[str]:
        """The ids of the tasks still pending (not those being fetched)."""
        with self._lock:
            if self._failure is not None:
                return []
            indices = list(itertools.compress(range(self.size), map(operator.not_, self._state)))
        return [f"{self.job_id}/{i}" for i in indices]

    def pending(self, indices: Iterable[int]) -> list[int]:
        """Those of `indices` whose tasks are still pending."""
        with self._lock:
            if self._failure is not None:
                return []
            return [i for i in indices if self._state[i] == _PENDING]

    def fail(self, failure: Callable[[str], Exception]) -> None:
        """Every task not done fails with failure(f"task {task_id}") (the client lost its
        connection, or the scheduler refused the job), its future now or when it is made."""
        with self._lock:
            if not self._left:
                return
            self._failure = failure
            self._left = 0
            state = self._state
            made = [
                (future, *self._outcome(index))
                for index, future in enumerate(self._futures or ())
                if future is not None and state[index] <= _FETCHING
            ]
            self._changed.notify_all()
        self._after(made, True)

    # ---- inside (the lock held, unless said otherwise) -----------------------------------------

    def _future(self, index: int) -> TaskFuture:
        futures = self._futures
        if futures is None:
            futures = self._futures = [None] * self.size
        future = futures[index]
        if future is None:
            task_id = f"{self.job_id}/{index}"
            releases = self._releases
            counted = releases is not None and releases.made(self.job_id)
            future = TaskFuture(
                task_id,
                self.job_id,
                self.submitted_ns,
                self._cancelled,
                self.function,
                releases.dropped if counted else None,
            )
            futures[index] = future
            if self._state[index] >= _FINISHED or self._failure is not None:
                # Discussion: completed here, under the lock, before anyone else can see
                # it: a fresh future has no callbacks to run.
                _settle(future, *self._outcome(index))
        return future

    def _take(
        self, index: int, state: int, result: Any, stats: dict[str, Any], was: int = _PENDING
    ) -> bool:
        """Record one task's outcome if it was in state `was`; False if not (done already)."""
        if self._state[index] != was or self._failure is not None:
            return False
        self._state[index] = state
        if state == _FINISHED:
            self._values[index] = result
        else:
            self._failures[index] = result
        self._stats[index] = stats
        self._left -= 1
        if state == _FAILED or not self._left:
            self._changed.notify_all()
        return True

    def _outcome(self, index: int) -> tuple[int, Any, dict[str, Any] | None]:
        """(state, value or exception, stats) of a task that is done, or will never be."""
        state = self._state[index]
        if state == _FINISHED:
            return state, self._values[index], self._stats[index]
        if state != _FAILED:  # it never came, and never will (`fail`)
            self._state[index] = state = _FAILED
            self._failures[index] = self._failure(f"task {self.job_id}/{index}")
        return state, self._failures[index], self._stats[index]

    def _made(self, indices: Iterable[int]) -> list[tuple[TaskFuture, int, Any, Any]]:
        """The futures already made among these tasks', with their outcomes, to complete."""
        futures = self._futures
        if futures is None:
            return []
        return [(futures[i], *self._outcome(i)) for i in indices if futures[i] is not None]

    def _after(self, made: list[tuple[TaskFuture, int, Any, Any]], last: bool) -> None:
        """Complete the futures made before their outcomes came; then, after the last
        task, the job's end. Called without the lock."""
        for future, state, result, stats in made:
            _settle(future, state, result, stats)
        if last and self._on_done is not None:
            self._on_done(self)
        if self._watchers:
            self._tell(self._watchers)

    def _tell(self, watchers: list[Callable[[], None]]) -> None:
        """Call progress callbacks (without the lock); drop one that raises, as a done
        callback's error is logged and forgotten."""
        for watch in watchers:
            try:
                watch()
            except Exception:
                log.exception("a progress callback of job %s raised; it is dropped", self.job_id)
                self.remove_progress_callback(watch)

    def _cancelled(self, future: TaskFuture) -> None:
        """A made future was cancelled (TaskFuture.cancel): its task is, here and remotely.
        Called without the lock."""
        index = int(future.task_id.rpartition("/")[2])
        with self._lock:
            counted = self._state[index] <= _FETCHING and self._failure is None
            # Discussion: a task whose outcome came just now but whose future was cancelled
            # before the client completed it: the future's cancel stands, so the job's too.
            self._state[index] = _FAILED
            self._failures[index] = None
            if counted:
                self._left -= 1
            last = counted and not self._left
            self._changed.notify_all()
        if self._cancel_remote is not None:
            self._cancel_remote(future.task_id)
        self._after([], last)

    def _fetched(self, future: TaskFuture) -> None:
        """A fetched result completed its future: record it. Called without the lock."""
        index = int(future.task_id.rpartition("/")[2])
        with self._lock:
            if future.cancelled():
                state, result = _FAILED, None  # _cancelled has it, or will
            elif future.exception() is not None:
                state, result = _FAILED, future.exception()
            else:
                state, result = _FINISHED, future.result()
            took = self._take(index, state, result, future._stats, was=_FETCHING)
            last = took and not self._left
        self._after([], last)

    def __repr__(self) -> str:
        return f"<BulkJob {self.job_id}: {self.size} tasks, {self._left} not done>"


def _settle(future: TaskFuture, state: int, result: Any, stats: dict[str, Any] | None) -> None:
    """Complete a made future with its task's outcome (a cancel that came first stands)."""
    future._stats = stats or {}
    with contextlib.suppress(concurrent.futures.InvalidStateError):
        if state == _FINISHED:
            future.set_result(result)
        elif result is None:
            future._cancel_locally()
        else:
            future.set_exception(result)


class MapFutures(Sequence[TaskFuture]):
    """The futures of a bulk map, in the order of its partitions.

    A read-only sequence of TaskFutures (`futures[i]`, negative indices, slices as lists,
    iteration in order), each made when it is first asked for; `gather` over the whole of
    it waits on the job, making none. `+` with a list (or a tuple) makes a list.
    """

    __slots__ = ("_dropped", "_job")

    def __init__(self, job: BulkJob, dropped: Callable[[str], None] | None = None) -> None:
        self._job = job
        self._dropped = dropped  # told when it is finalized (runtime/releases.py)

    def __del__(self) -> None:
        dropped = self._dropped
        if dropped is not None:
            dropped(self._job.job_id)

    @property
    def job_id(self) -> str:
        return self._job.job_id

    @property
    def function(self) -> str | None:
        """The map's function, "module:qualname", if known."""
        return self._job.function

    def counts(self) -> tuple[int, int]:
        """(done, failed): how many tasks are done, and how many of those failed or were
        cancelled; no future is made for it."""
        return self._job.counts()

    def add_progress_callback(self, fn: Callable[[], None]) -> None:
        """Call `fn()` after each batch of the map's outcomes, and once now (`counts()` says
        where it stands). It runs on the client's IO thread: keep it short."""
        self._job.add_progress_callback(fn)

    def remove_progress_callback(self, fn: Callable[[], None]) -> None:
        """Stop calling `fn` (nothing happens if it was not added)."""
        self._job.remove_progress_callback(fn)

    def __len__(self) -> int:
        return self._job.size

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return [self._job.future(i) for i in range(*index.indices(self._job.size))]
        at = operator.index(index)
        if at < 0:
            at += self._job.size
        if not 0 <= at < self._job.size:
            raise IndexError("map futures index out of range")
        return self._job.future(at)

    def __iter__(self) -> Iterator[TaskFuture]:
        return map(self._job.future, range(self._job.size))

    def __add__(self, other: Any) -> list[TaskFuture]:
        return [*self, *other] if isinstance(other, list | tuple | MapFutures) else NotImplemented

    def __radd__(self, other: Any) -> list[TaskFuture]:
        return [*other, *self] if isinstance(other, list | tuple) else NotImplemented

    def _summary(self) -> list[tuple[str, int]]:
        done, failed = self._job.counts()
        counts = [("finished", done - failed), ("failed", failed), ("pending", len(self) - done)]
        return [(word, n) for word, n in counts if n]

    def __repr__(self) -> str:
        counts = ", ".join(f"{n} {word}" for word, n in self._summary())
        words = [f"{len(self)} tasks", self.function and f"of {self.function}", f"({counts})"]
        return reprs.text_repr("MapFutures", f"{self.job_id}:", words)

    def _repr_html_(self) -> str:
        rows = [("function", self.function), ("tasks", len(self))]
        rows += [(word, reprs.State(word, str(n))) for word, n in self._summary()]
        return reprs.html_table("MapFutures", self.job_id, rows)


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
                raise _still_pending(len(pending) - yielded, len(pending), timeout) from None

    return completed()


def gather(futures: Iterable[concurrent.futures.Future], timeout: float | None = None) -> list[Any]:
    """Wait for all of `futures`; return their results in order.

    Raises the first task error to arrive (CancelledError for a cancelled task) at once,
    without waiting for the others, and TimeoutError if `timeout` seconds pass first. Over a
    whole MapFutures, it waits on the map's job (no future made, no Condition per task).
    """
    if type(futures) is MapFutures:
        return futures._job.results(timeout)
    futures = list(futures)
    failed = _wait_for_all(futures, timeout)
    if failed is not None:
        if failed.cancelled():
            raise concurrent.futures.CancelledError(
                f"{getattr(failed, 'task_id', failed)} was cancelled"
            )
        raise failed.exception()
    return [future.result() for future in futures]


def _wait_for_all(
    futures: list[concurrent.futures.Future], timeout: float | None
) -> concurrent.futures.Future | None:
    """Wait until every one of `futures` is done, or one fails or is cancelled: then that one
    (the first to), else None. TimeoutError after `timeout` seconds.

    Discussion: one wake-up for the whole wait. Waiting on each future as it completes
    (`as_completed`) woke the waiting thread once per task, a GIL hand-over with the
    client's I/O thread each: in a flood of tiny one-launch tasks, its most frequent
    wake-up."""
    unique = list(dict.fromkeys(futures))
    lock = threading.Lock()
    left = len(unique)
    first_failed: concurrent.futures.Future | None = None
    over = threading.Event()

    def one_done(future: concurrent.futures.Future) -> None:
        nonlocal left, first_failed
        failed = future.cancelled() or future.exception() is not None
        with lock:
            left -= 1
            if failed and first_failed is None and not over.is_set():
                first_failed = future
            if failed or not left:
                over.set()

    if not unique:
        return None
    for future in unique:
        future.add_done_callback(one_done)  # runs at once for a future already done
    ended = over.wait(timeout)
    with lock:
        # The callbacks stay on the futures: from here they keep none of them (a failed
        # future held by its own callback would wait for the cyclic collector to go).
        over.set()
        failed, first_failed, pending = first_failed, None, left
    if not ended:
        raise _still_pending(pending, len(unique), timeout)
    return failed


def _still_pending(left: int, total: int, timeout: float | None) -> TimeoutError:
    return TimeoutError(f"{left} of {total} futures still pending after {timeout:g} s")

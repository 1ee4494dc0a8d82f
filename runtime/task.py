"""The task model: what a user writes, and what a task can see of itself.

A task is either a generator function (each `yield` emits one output record and is a
suspension point) or a plain function that consumes input iterables. `@task` marks one and
records its options; calling the decorated object locally just calls the function.

When the kernel runs a task, every input argument that is a list, tuple or iterator is
handed over as a gated input: each `next()` on it passes the record gate, so each record
boundary is a suspension point. Sequences become a `Partition`, a read-only sequence whose
iteration is gated; it is deliberately *not* a list subclass, because C functions such as
`str.join` read list subclasses through their internal array and would bypass the gate.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, overload

import greenlet

from tidal.runtime.payloads import Blocks
from tidal.runtime.protocol import PRIORITY_CLASSES

__all__ = ["Partition", "TaskContext", "TaskFunction", "current_context", "task"]


class TaskFunction:
    """A function marked with `@task`: call it locally as usual, submit it to run remotely."""

    def __init__(
        self,
        fn: Callable[..., Any],
        *,
        inputs: Sequence[int | str] | None,
        priority: str | None,
        max_suspensions: int | None,
    ) -> None:
        if not callable(fn):
            raise TypeError(f"@task needs a function, not {type(fn).__name__}")
        if priority is not None and priority not in PRIORITY_CLASSES:
            raise ValueError(
                f"unknown priority {priority!r}: use one of {', '.join(PRIORITY_CLASSES)}"
            )
        self.fn = fn
        self.inputs = tuple(inputs) if inputs is not None else None
        self.priority = priority
        self.max_suspensions = max_suspensions
        self._positions: frozenset[int] | None = None
        functools.update_wrapper(self, fn)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    def input_positions(self) -> frozenset[int]:
        """Positions of the gated inputs, names included (arguments often come by position)."""
        if self._positions is None:
            names = [
                p.name
                for p in inspect.signature(self.fn).parameters.values()
                if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
            ]
            self._positions = frozenset(
                i if isinstance(i, int) else names.index(i)
                for i in (self.inputs or ())
                if isinstance(i, int) or i in names
            )
        return self._positions

    def __repr__(self) -> str:
        return f"<tidal task {self.fn.__module__}.{self.fn.__qualname__}>"

    def __reduce__(self) -> str:
        # Pickle by reference, like a plain function (multiprocessing, Dask, ...).
        return self.__qualname__


@overload
def task(fn: Callable[..., Any], /) -> TaskFunction: ...
@overload
def task(
    *,
    inputs: Sequence[int | str] | None = ...,
    priority: str | None = ...,
    max_suspensions: int | None = ...,
) -> Callable[[Callable[..., Any]], TaskFunction]: ...


def task(
    fn: Callable[..., Any] | None = None,
    /,
    *,
    inputs: Sequence[int | str] | None = None,
    priority: str | None = None,
    max_suspensions: int | None = None,
) -> Any:
    """Mark `fn` as a Tidal task.

    `inputs` names the arguments (positions or keyword names) to gate; by default every
    positional argument that is a list, tuple or iterator is gated. `priority` ("stream" or
    "batch") and `max_suspensions` are defaults that a submission may override.
    """

    def decorate(f: Callable[..., Any]) -> TaskFunction:
        return TaskFunction(f, inputs=inputs, priority=priority, max_suspensions=max_suspensions)

    return decorate(fn) if fn is not None else decorate


class Partition(Sequence[Any]):
    """A read-only sequence of input records whose iteration passes the record gate."""

    __slots__ = ("_gate", "_gated_iterator", "_records")

    def __init__(self, records: Sequence[Any], gate: Any, gated_iterator: Callable[..., Any]):
        self._records = records
        self._gate = gate
        self._gated_iterator = gated_iterator

    def __iter__(self) -> Iterator[Any]:
        return self._gated_iterator(self._records, self._gate)

    def __len__(self) -> int:
        return len(self._records)

    def __getitem__(self, index: Any) -> Any:
        return self._records[index]

    def __contains__(self, value: object) -> bool:
        return any(value == record for record in self)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Partition):
            other = other._records
        return list(self._records) == list(other) if isinstance(other, list | tuple) else False

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Partition({len(self._records)} records)"


def gate_arguments(
    fn: TaskFunction | Callable[..., Any],
    args: Sequence[Any],
    kwargs: dict[str, Any],
    gate: Any,
    gated_iterator: Callable[..., Any],
) -> tuple[list[Any], dict[str, Any]]:
    """Return `args` and `kwargs` with the task's input iterables wrapped in the gate."""
    inputs = fn.inputs if isinstance(fn, TaskFunction) else None

    def wrap(value: Any) -> Any:
        if isinstance(value, list | tuple | range | Blocks):
            return Partition(value, gate, gated_iterator)
        if isinstance(value, Iterator):
            return gated_iterator(value, gate)
        if inputs is not None and isinstance(value, Iterable):
            return gated_iterator(value, gate)
        return value

    gated = gated_positions(fn)
    new_args = [wrap(a) if gated(i) else a for i, a in enumerate(args)]
    if inputs is None:
        return new_args, dict(kwargs)
    new_kwargs = {k: (wrap(v) if k in inputs else v) for k, v in kwargs.items()}
    return new_args, new_kwargs


def call_result(
    fn: Callable[..., Any], result: Any, gate: Any, checkpoint: Callable[[], None]
) -> Any:
    """What a task function's call returned, as its result: a generator is driven to its
    end, its outputs the result, each `yield` a suspension point (`checkpoint()` while
    `gate` is raised); a coroutine is an error."""
    if inspect.isgenerator(result):
        outputs = []
        for record in result:
            outputs.append(record)
            if gate.requested:
                checkpoint()
        return outputs
    if inspect.iscoroutine(result):
        result.close()
        raise TypeError(
            f"{fn!r} is an async function: Tidal tasks are generator functions or plain "
            "functions, not coroutines"
        )
    return result


def gated_positions(fn: TaskFunction | Callable[..., Any]) -> Callable[[int], bool]:
    """Whether a positional argument of `fn` is one `gate_arguments` gates when it is a
    sequence (so that it may arrive as `Blocks`, decoded as the task reads it)."""
    if isinstance(fn, TaskFunction) and fn.inputs is not None:
        return fn.input_positions().__contains__
    return _every_position


def _every_position(index: int) -> bool:
    return True


@dataclass(frozen=True, slots=True)
class TaskContext:
    """What a running task can read about itself (see `current_context()`)."""

    task_id: str
    attempt: int
    priority: str
    executor_id: str
    _record: Any  # the kernel's live record of this task; supplies the counters below
    _gate: Any  # the kernel's gate, which counts records while the task runs

    @property
    def suspensions(self) -> int:
        """How many times this task has been suspended so far."""
        return self._record.suspensions

    @property
    def records(self) -> int:
        """How many input records this task has consumed so far."""
        record = self._record
        return record.records + self._gate.records - record.gate_mark


def current_context() -> TaskContext:
    """Return the context of the task running on this thread.

    Raises RuntimeError outside a task, e.g. when a task function is called directly.
    """
    context = getattr(greenlet.getcurrent(), "tidal_context", None)
    if context is None:
        raise RuntimeError(
            "current_context() called outside a Tidal task: it only works in code that a "
            "Tidal kernel runs (a function you call directly has no task context)"
        )
    return context

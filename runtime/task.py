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
import itertools
import operator
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, overload

import greenlet
import msgpack

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


# Argument types `gate_arguments` never wraps (nor a task's `inputs` would: not iterables).
_PLAIN = frozenset({int, float, str, bytes, bool, type(None)})
_ONE_ARGUMENT = b"\x92\x91"  # a call [[x], kwargs]: an array of two, the first of one


class QuickCalls:
    """The common case of a chunk's tasks, done with less Python per task: a call whose
    payload is a plain `[args, kwargs]` of scalars, to a function that gates no keyword
    input, and a small result. `args_of` and `pack` answer None for anything else, which
    then takes the general path (payloads.open_task_call, gate_arguments,
    payloads.pack_result), so the two always agree.

    Discussion: for a no-op task the general path costs ~7 us on this project's VMs (the
    payload opened piece by piece, each argument tested for gating, a Packer made per
    result); `args_of` ~1.5 us, a run (`take_run`) ~0.6 us. One Packer is reused: the
    kernel's task thread is its only user.
    """

    def __init__(self, fn: Callable[..., Any], result_limit: int) -> None:
        self.usable = not (isinstance(fn, TaskFunction) and fn.inputs is not None)
        # What to call: a @task's own function (its wrapper only calls it).
        self.fn = fn.fn if isinstance(fn, TaskFunction) else fn
        self._packer = msgpack.Packer(use_bin_type=True)
        self._result_limit = result_limit

    def args_of(self, payload: bytes) -> tuple[list[Any], dict[str, Any]] | None:
        """(args, kwargs) of a plain call's payload, or None."""
        if not self.usable or payload[:1] != b"\x92":  # not [args, kwargs] (blocked, spooled)
            return None
        try:
            # msgpack's defaults are stricter than the general path's options (str keys
            # only; an extension comes back as an ExtType, which is not plain): whatever
            # they refuse, that path decodes or explains. Options cost ~0.25 us a call.
            args, kwargs = msgpack.unpackb(payload)
        except Exception:  # malformed, or not a pair: the general path says what is wrong
            return None
        if type(args) is not list or type(kwargs) is not dict:
            return None
        plain = _PLAIN
        for arg in args:
            if type(arg) not in plain:
                return None
        for key in kwargs:
            if type(key) is not str:
                return None
        return args, kwargs

    def take_run(self, chunk: deque[bytes], limit: int) -> tuple[list[Any], dict[str, Any]] | None:
        """Take from the front of `chunk` (payloads) the longest run, up to `limit`, of calls
        `[[x], kwargs]` of one argument, a scalar, and the same kwargs (a map's calls):
        (their xs, the kwargs). None, taking nothing, if the first is not one.

        Discussion: checked and decoded with C loops (`map` over bytes methods, one unpackb
        for the whole run), so that the kernel can run them with `map` over a gated
        iterator: ~0.6 us a no-op task in the kernel, against ~1.5 one at a time.
        """
        if not self.usable or not chunk:
            return None
        first = chunk[0]
        call = self.args_of(first)
        if call is None or len(call[0]) != 1:
            return None
        kwargs = call[1]
        if not all(map(_PLAIN.__contains__, map(type, kwargs.values()))):
            return None  # the calls of a run share one kwargs: only values none can change
        suffix = msgpack.packb(kwargs)
        if not first.endswith(suffix) or not first.startswith(_ONE_ARGUMENT):
            return None  # packed another way than this module would: one at a time
        payloads = list(itertools.islice(chunk, limit))
        fits = list(map(bytes.endswith, payloads, itertools.repeat(suffix)))
        fits = list(
            map(
                operator.and_,
                fits,
                map(bytes.startswith, payloads, itertools.repeat(_ONE_ARGUMENT)),
            )
        )
        count = fits.index(False) if False in fits else len(payloads)
        cut = slice(len(_ONE_ARGUMENT), -len(suffix))
        pieces = list(map(operator.getitem, payloads[:count], itertools.repeat(cut)))
        try:
            xs = msgpack.unpackb(msgpack.Packer().pack_array_header(count) + b"".join(pieces))
        except Exception:  # a malformed one among them: one at a time finds it
            return None
        plain = list(map(_PLAIN.__contains__, map(type, xs)))
        if False in plain:
            count = plain.index(False)
            del xs[count:]
        # Each piece must be exactly its x: concatenated, two pieces could decode as other
        # values (a kwargs map split across them, say). msgpack packs a scalar one way only,
        # so packing each x again gives its piece back, or the run is not what it seemed.
        if not count or list(map(self._packer.pack, xs)) != pieces[:count]:
            return None
        for _ in range(count):
            chunk.popleft()
        return xs, kwargs

    def pack_all(self, values: list[Any]) -> list[bytes] | None:
        """Each of `values` packed (as `pack`), or None if any is not small or packable."""
        packer, limit = self._packer, self._result_limit
        try:
            packed = list(map(packer.pack, values))
        except Exception:
            packer.reset()
            return None
        return packed if max(map(len, packed), default=0) < limit else None

    def pack(self, value: Any) -> bytes | None:
        """`value` packed, if it is small (under `result_limit` bytes); else None."""
        packer = self._packer
        try:
            packed = packer.pack(value)
        except Exception:
            packer.reset()
            return None
        return packed if len(packed) < self._result_limit else None

"""The record gate: the one check a task's hot path makes per record.

A `Gate` is a flag the hub raises when it wants control back (a suspend or kill command
arrived). Every input iterable a task consumes is wrapped in a `GatedIterator`, which looks
at the flag before each record and, when raised, calls `gate.hook()`; the kernel's hook
switches from the task's greenlet to the hub, leaving the task parked at that record
boundary with its whole stack intact.

The compiled version (runtime/_gate.c) costs well under 1 ns per record. When it could not
be built we fall back to the iterator class below (~65 ns per record); `IMPLEMENTATION` says which
one is live, and `tidal bench suspend` reports it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any

__all__ = ["IMPLEMENTATION", "Gate", "GatedIterator", "PyGate", "py_gated_iterator"]


class PyGate:
    """Pure-Python twin of the C `Gate`: same attributes, same meaning."""

    __slots__ = ("boost_realtime", "gil_interval", "hook", "records", "requested", "watch_raises")

    def __init__(self, hook: Callable[[], Any] | None = None) -> None:
        self.requested = 0
        self.gil_interval = 1024  # unused here: Python bytecode offers the GIL by itself
        self.records = 0
        self.hook = hook
        self.watch_raises = 0  # no watcher here: commands wait for the GIL as they come
        self.boost_realtime = 0

    def watch(self, fd: int, realtime: bool = False, also: int = -1) -> None:
        """The C gate's watcher raises the gate when `fd` (or `also`) becomes readable, from
        a thread that needs no GIL; Python has no such thread, so this does nothing."""

    def boost(self, tid: int, nice: int, realtime: bool = False) -> None:
        """The C gate's watcher gives thread `tid` this nice (and SCHED_FIFO, briefly, if
        `realtime`) as it raises; no watcher here."""

    def boost_now(self, for_ns: int = 0) -> None:
        """The C gate boosts its thread now, as frames arriving would; no watcher here."""

    def unboost(self) -> None:
        """The C gate ends a boost in force; none here."""

    def unwatch(self) -> None:
        """Nothing to stop (see `watch`)."""


class _PyGatedIterator:
    """Pure-Python twin of the C `GatedIterator` (see `py_gated_iterator`)."""

    __slots__ = ("_gate", "_source")

    def __init__(self, source: Iterator[Any], gate: PyGate) -> None:
        self._source = source
        self._gate = gate

    def __iter__(self) -> _PyGatedIterator:
        return self

    def __next__(self) -> Any:
        # Discussion: a class, not a generator: an exception raised at the boundary (a kill
        # the task then catches) must leave the iterator usable, as the C version does; a
        # generator would be closed by it and end the task's input early.
        gate = self._gate
        if gate.requested and gate.hook is not None:
            gate.hook()
        record = next(self._source)
        gate.records += 1
        return record


def py_gated_iterator(iterable: Iterable[Any], gate: PyGate) -> Iterator[Any]:
    """Pure-Python twin of the C `GatedIterator`: the same checks, in the same order."""
    if not isinstance(gate, PyGate):
        raise TypeError(f"GatedIterator() needs a PyGate, not {type(gate).__name__}")
    return _PyGatedIterator(iter(iterable), gate)


try:
    if os.environ.get("TIDAL_PURE_PYTHON_GATE"):
        raise ImportError("TIDAL_PURE_PYTHON_GATE is set")
    from tidal.runtime._cgate import Gate, GatedIterator

    IMPLEMENTATION = "c"
except ImportError:  # pragma: no cover - exercised by the pure-Python test run
    Gate = PyGate  # type: ignore[misc,assignment]
    GatedIterator = py_gated_iterator  # type: ignore[assignment]
    IMPLEMENTATION = "python"

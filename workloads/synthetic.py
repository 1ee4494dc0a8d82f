"""Synthetic tasks for tests and benchmarks: known cost per record, known result."""

from __future__ import annotations

import time
from collections.abc import Iterable

from runtime.task import task


def burn(microseconds: float) -> None:
    """Stay busy in Python bytecode (not asleep, not in C) for about `microseconds`."""
    end = time.perf_counter() + microseconds / 1e6
    while time.perf_counter() < end:
        pass


@task
def spin(part: Iterable[int], record_us: float = 10.0) -> int:
    """Spend `record_us` of Python work on each record; return the sum of the records."""
    total = 0
    for record in part:
        burn(record_us)
        total += record
    return total


@task
def total(part: Iterable[int]) -> int:
    """Sum a partition in C (`sum`): suspendable only through the record gate."""
    return sum(part)


@task
def noop(*_args: object) -> None:
    """Do nothing (whatever it is given): for measuring per-task overhead."""

"""Synthetic tasks for tests and benchmarks: known cost per record, known result."""

from __future__ import annotations

import hashlib
import time
from collections import Counter
from collections.abc import Iterable

from tidal.runtime.task import task


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
def spin_copy(part: Iterable[int], record_us: float = 10.0) -> list[int]:
    """`spin`, returning the records themselves (a result as big as its partition)."""
    records = []
    for record in part:
        burn(record_us)
        records.append(record)
    return records


@task
def total(part: Iterable[int]) -> int:
    """Sum a partition in C (`sum`): suspendable only through the record gate."""
    return sum(part)


def numbers(count: int, start: int = 0) -> list[int]:
    """The ints start, start + 1, ..., start + count - 1: a partition made on an executor."""
    return list(range(start, start + count))


def pairwise_sums(a: Iterable[int], b: Iterable[int]) -> list[int]:
    """The sums of two partitions' records, pair by pair."""
    return [x + y for x, y in zip(a, b, strict=True)]


def nested_lengths(pair: list, keyed: dict) -> list[int]:
    """How long the first item of `pair` and the value of keyed["x"] are, and pair[1]."""
    return [len(pair[0]), pair[1], len(keyed["x"])]


@task
def biggest(part: Iterable[int]) -> int:
    """The largest record, found in C (`max`)."""
    return max(part)


@task
def residues(part: Iterable[int], modulus: int = 10) -> dict[int, int]:
    """How many records leave each remainder mod `modulus` (a `Counter`, fed record by record)."""
    return dict(Counter(x % modulus for x in part))


def digest(data: bytes) -> str:
    """A BLAKE2b digest of `data` (one big argument, checked end to end)."""
    return hashlib.blake2b(data).hexdigest()


def mirrored(data: bytes) -> bytes:
    """`data` reversed (one big result, checked end to end)."""
    return data[::-1]


@task
def noop(*_args: object) -> None:
    """Do nothing (whatever it is given): for measuring per-task overhead."""


@task
def hog(
    part: Iterable[int],
    kib_per_record: int = 1024,
    grow_records: int | None = None,
    record_us: float = 0.0,
) -> int:
    """Keep `kib_per_record` KiB more for each of the first `grow_records` records (all by
    default), spending `record_us` on each record (memory-limit tests); return the KiB held
    at the end."""
    held = []
    for i, _ in enumerate(part):
        if grow_records is None or i < grow_records:
            held.append(b"\x01" * (kib_per_record * 1024))  # written, so resident
        if record_us:
            burn(record_us)
    return len(held) * kib_per_record


@task(inputs=[])
def hog_without_boundaries(kib_per_step: int = 256, step_us: float = 1000.0) -> None:
    """Grow by `kib_per_step` KiB every `step_us` forever, reaching no record boundary: a
    task the memory guard cannot stop from outside."""
    held = []
    while True:
        held.append(b"\x01" * (kib_per_step * 1024))
        time.sleep(step_us / 1e6)


@task
def crash_executor(code: int = 70, after_s: float = 0.0) -> None:
    """Take the executor down with the task, as a crash in C code would (for failure tests),
    `after_s` seconds after it starts."""
    import os
    import time

    time.sleep(after_s)
    os._exit(code)


@task(inputs=[])
def c_call(n: int) -> int:
    """One C call that holds the GIL throughout: `sum(range(n))`, with no record boundary
    and no bytecode between its steps (~10-20 ns per number). Returns the sum."""
    return sum(range(n))

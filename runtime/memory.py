"""An executor's memory limit: sizes, the RSS probe, and the guard that enforces the limit.

The guard is a small state machine, like the scheduler core: the executor's listener thread
calls `MemoryGuard.check()` every MEMORY_POLL_MS while tasks are here, and carries out what
it returns (fail a task, or exit). It reads the clock, the probe and the kernel's per-task
estimates only through what it was given, so tests drive it with fakes.

Which task pays when the executor is over its limit (the rule, also in the README):

1. The running task, if its memory grew while it ran (its estimate is above zero): it is
   the one whose allocations brought the executor over the limit.
2. Otherwise the task holding the most memory by its estimate: the largest suspended one
   (suspended tasks keep their memory here, so they count toward the limit).
3. No task at all: collect garbage and give freed memory back to the OS; if the executor is
   still over its limit, it cannot get back under it, and exits.

A chosen task is failed with `MemoryLimitExceeded` at its next record boundary (the
kernel's `fail`, which unwinds it as a kill does, so its memory is released), and its
future fails with that error: it is not retried, as a task of a lost executor would be. A
task that reaches no boundary within MEMORY_FAIL_GRACE_NS (busy in C code, say, or in a
loop over no gated input) cannot be stopped from outside: the executor reports the failure
itself and exits, and the scheduler requeues its other tasks as for any lost executor.

A task's estimate is the growth of the process's RSS while it ran (the kernel reads the
probe at each switch into and out of a task, only when a limit is set): its inputs, once
unpacked, and whatever it allocated and still holds. Memory freed by another task, or
taken by the runtime itself while it ran, is charged to it too; the estimate is a guide
for policies, the RSS is the limit.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses
import gc
import os
import re
from collections.abc import Callable

__all__ = [
    "MEMORY_FAIL_GRACE_NS",
    "MEMORY_POLL_MS",
    "MemoryGuard",
    "RssProbe",
    "format_size",
    "parse_size",
    "release_memory",
]

# Discussion: a task that allocates 1 MiB per record at ~1 GB/s grows ~25 MB in 25 ms, so
# the limit is overshot by about that much before it is noticed. A check costs the listener
# one read of /proc/self/statm (~4 us) and a GIL hand-over from the task thread (bounded by
# the 100 us switch interval): well under 1% of a busy task's time at this rate.
MEMORY_POLL_MS = 25
# How long a task chosen to pay may take to reach a record boundary before the executor
# gives up on stopping it and exits. Tidal tasks reach one per record, so a task that does
# not within this grace is in code the gate cannot interrupt.
MEMORY_FAIL_GRACE_NS = 250_000_000

_UNITS = {
    "": 1,
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*", re.IGNORECASE)


def parse_size(text: str | int) -> int:
    """Bytes in a size such as `512MiB`, `2GB`, `1.5 GiB` or `1048576`.

    KB, MB, GB, TB are powers of 1000 and KiB, MiB, GiB, TiB powers of 1024 (case does not
    matter). A bare `K`, `M` or `G` is refused: tools disagree on what it means.
    """
    if isinstance(text, int) and not isinstance(text, bool):
        if text <= 0:
            raise ValueError(f"a memory size must be positive, not {text}")
        return text
    if not isinstance(text, str):
        raise ValueError(f"a memory size is a number of bytes or a string, not {text!r}")
    match = _SIZE.fullmatch(text)
    if match is None:
        raise ValueError(
            f"cannot read {text!r} as a memory size: use a number and a unit, e.g. 512MiB or 2GB"
        )
    number, unit = match.groups()
    factor = _UNITS.get(unit.lower())
    if factor is None:
        if unit.lower() in ("k", "m", "g", "t"):
            raise ValueError(
                f"ambiguous unit {unit!r} in {text!r}: write {unit.upper()}iB (powers of 1024) "
                f"or {unit.upper()}B (powers of 1000)"
            )
        raise ValueError(
            f"unknown unit {unit!r} in {text!r}: use B, KB, MB, GB, TB, KiB, MiB, GiB or TiB"
        )
    size = int(float(number) * factor)
    if size <= 0:
        raise ValueError(f"a memory size must be positive, not {text!r}")
    return size


def format_size(size: int) -> str:
    """`536870912` -> `512 MiB`: binary units, at most one decimal."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024:
            shown = f"{value:.0f}" if unit == "B" else f"{value:.1f}".removesuffix(".0")
            return f"{shown} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


class RssProbe:
    """The process's resident set size in bytes, cheaply: one read of /proc/self/statm.

    ~4 us a call, against ~45 us for psutil's memory_info(), which builds a named tuple of
    every figure; psutil is the fallback where there is no /proc.
    """

    def __init__(self) -> None:
        self._page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
        try:
            self._fd: int | None = os.open("/proc/self/statm", os.O_RDONLY)
        except OSError:
            import psutil

            self._fd = None
            self._process = psutil.Process()

    def __call__(self) -> int:
        if self._fd is None:
            return self._process.memory_info().rss
        return int(os.pread(self._fd, 128, 0).split()[1]) * self._page

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _malloc_trim() -> Callable[[], object] | None:
    path = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(path)
        trim = libc.malloc_trim
    except (OSError, AttributeError):  # not glibc: nothing to trim with
        return None
    trim.argtypes = [ctypes.c_size_t]
    return lambda: trim(0)


_TRIM = _malloc_trim()


def release_memory() -> None:
    """Collect garbage and hand the allocator's free pages back to the OS.

    Discussion: freeing a task's objects lowers the RSS only where whole pages come free.
    glibc gives back the top of its heap by itself, but keeps free pages below live
    objects unless asked (`malloc_trim`): in a fragmented heap, an executor that stopped a
    task to get under its limit could otherwise still look over it.
    """
    gc.collect()
    if _TRIM is not None:
        _TRIM()


@dataclasses.dataclass(frozen=True, slots=True)
class FailTask:
    """Fail task `task_id` with MemoryLimitExceeded: `message`."""

    task_id: str
    message: str


@dataclasses.dataclass(frozen=True, slots=True)
class Exit:
    """The executor cannot get back under its limit: report `task_id` failed (if any) and exit."""

    task_id: str | None
    message: str


class MemoryGuard:
    """Decide what to do when the executor's RSS is over `limit` bytes (see the module doc).

    `estimates(rss)` returns the kernel's per-task memory estimates (task id -> bytes, the
    running task's including its growth since it was switched in) and `running()` the id of
    the task running now, or None. `alive(task_id)` says whether a task is still here.
    """

    def __init__(
        self,
        limit: int,
        executor_id: str,
        *,
        probe: Callable[[], int],
        estimates: Callable[[int], dict[str, int]],
        running: Callable[[], str | None],
        alive: Callable[[str], bool],
        clock: Callable[[], int],
        release: Callable[[], None] = release_memory,
        grace_ns: int = MEMORY_FAIL_GRACE_NS,
    ) -> None:
        self.limit = limit
        self.executor_id = executor_id
        self._probe, self._estimates, self._running = probe, estimates, running
        self._alive, self._clock, self._release = alive, clock, release
        self.grace_ns = grace_ns
        self._failing: str | None = None  # the task told to fail, until it is gone
        self._failing_since = 0
        self._failing_message = ""
        self.failed = 0  # tasks failed for the limit, for statistics

    def check(self) -> FailTask | Exit | None:
        """Look at the RSS once; return what the executor must do now, if anything."""
        if self._failing is not None:
            if self._alive(self._failing):
                if self._clock() - self._failing_since < self.grace_ns:
                    return None  # it has until the grace runs out to reach a boundary
                return Exit(
                    self._failing,
                    f"{self._failing_message}; it reached no record boundary within "
                    f"{self.grace_ns / 1e9:.1f} s, so executor {self.executor_id} exits",
                )
            self._failing = None
            self._release()  # it is gone: give its memory back before measuring again
        rss = self._probe()
        if rss <= self.limit:
            return None
        estimates = self._estimates(rss)
        culprit = self.choose(estimates, self._running())
        if culprit is None:
            self._release()
            rss = self._probe()
            if rss <= self.limit:
                return None
            return Exit(
                None,
                f"executor {self.executor_id} is over its memory limit of "
                f"{format_size(self.limit)} (rss {format_size(rss)}) with no task to fail, "
                "so it exits",
            )
        message = (
            f"task {culprit} exceeded executor {self.executor_id}'s memory limit of "
            f"{format_size(self.limit)} (rss {format_size(rss)}, the task "
            f"~{format_size(max(0, estimates.get(culprit, 0)))})"
        )
        self._failing, self._failing_since, self._failing_message = culprit, self._clock(), message
        self.failed += 1
        return FailTask(culprit, message)

    @staticmethod
    def choose(estimates: dict[str, int], running: str | None) -> str | None:
        """The task that pays: the running one if it grew, else the one holding the most."""
        if running is not None and estimates.get(running, 0) > 0:
            return running
        if not estimates:
            return running
        # Ties go to the task id that sorts first, so the choice is reproducible.
        largest = min(estimates, key=lambda task_id: (-estimates[task_id], task_id))
        if estimates[largest] <= 0 and running is not None:
            return running  # nothing is known to hold memory: the one running now
        return largest

"""What the scheduler's loop does now and then to stay bounded: forget clients that vanished
(`ClientLeases`), and give freed memory back while nothing runs (`MemoryTrim`).

Discussion: a client that says goodbye takes its jobs with it (scheduler/records/retire.py).
One that vanishes (killed, its host gone) says nothing; its connection's end is seen
(scheduler/liveness.py), and if it does not come back (a new hello) within `timeout_ns`,
the loop says goodbye for it. A scheduler restarted on a journal counts the clients of the
jobs it restored as gone from the start: the journal must not keep a vanished client's
jobs, to be run again after every restart, for ever.
"""

from __future__ import annotations

from collections.abc import Iterable

from tidal.runtime.memory import release_memory
from tidal.scheduler.records import Records

__all__ = ["DEFAULT_CLIENT_TIMEOUT_NS", "TRIM_EVERY_NS", "ClientLeases", "MemoryTrim"]

# A client whose connection is gone, and that does not come back within this long, is
# taken to have said goodbye (`--client-timeout`): its jobs go.
DEFAULT_CLIENT_TIMEOUT_NS = 300_000_000_000
# While nothing runs, the loop gives freed memory back to the OS at most this often.
TRIM_EVERY_NS = 5_000_000_000


class ClientLeases:
    """Clients whose connection is gone, and since when (ns, the loop's clock)."""

    def __init__(self, timeout_ns: int, gone: Iterable[str] = (), now: int = 0) -> None:
        self.timeout_ns = timeout_ns
        self._gone: dict[str, int] = dict.fromkeys(gone, now)

    def disconnected(self, client_ids: Iterable[str], now: int) -> None:
        for client_id in client_ids:
            self._gone.setdefault(client_id, now)

    def came_back(self, client_id: str) -> None:
        self._gone.pop(client_id, None)

    def expired(self, now: int) -> list[str]:
        """The clients gone for `timeout_ns` (each named once)."""
        out = [c for c, since in self._gone.items() if now - since >= self.timeout_ns]
        for client_id in out:
            del self._gone[client_id]
        return out


class MemoryTrim:
    """While nothing runs, at most every `every_ns`: collect garbage and hand the
    allocator's free pages back (runtime/memory.py). Retired jobs leave free pages among
    live objects, which glibc keeps unless asked."""

    def __init__(self, every_ns: int, now: int) -> None:
        self.every_ns = every_ns
        self._at = now

    def tick(self, records: Records, now: int) -> None:
        if now - self._at < self.every_ns or _busy(records):
            return
        self._at = now
        release_memory()


def _busy(records: Records) -> bool:
    if any(records.pending.count(c) for c in ("stream", "batch")):
        return True
    return any(e.slot_task is not None or e.queued for e in records.executors.values() if e.alive)

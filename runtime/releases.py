"""Telling the scheduler which jobs the program no longer holds a future of.

The scheduler forgets a job once it is done and its client says it holds none of its
futures (scheduler/records/retire.py). A future that the program drops is finalized
(`TaskFuture.__del__`, `MapFutures.__del__`), which hands its job id to `Releases.dropped`:
a deque append, safe from any thread and from the garbage collector. The client takes what
was dropped (`take`) when it next sends anything, and sends the jobs none of whose futures
is left in one `release` frame.

Discussion: a job, not a task, is what is released: a map's futures are dropped together
as a rule, and a frame naming a job costs the client and the scheduler one entry, not one
per task. A program that keeps one future of a big map keeps the whole job on the
scheduler until it drops that one too.
"""

from __future__ import annotations

import threading
from collections import deque

__all__ = ["Releases"]


class Releases:
    """Futures alive per job, and the jobs whose last one the program dropped."""

    def __init__(self) -> None:
        self._alive: dict[str, int] = {}  # job id -> its futures not dropped yet
        self._dropped: deque[str] = deque()  # a job id per future dropped
        self._lock = threading.Lock()  # `track` and `take` may run on different threads

    def track(self, job_id: str, futures: int) -> None:
        """A job was sent with this many futures (a bulk map's MapFutures: one)."""
        with self._lock:
            self._alive[job_id] = futures

    def made(self, job_id: str) -> bool:
        """One more future of `job_id` was made (from its MapFutures): it counts until it is
        dropped. False if the job was released already (the future then tells nothing)."""
        with self._lock:
            if job_id not in self._alive:
                return False
            self._alive[job_id] += 1
            return True

    def dropped(self, job_id: str) -> None:
        """A future of `job_id` was finalized (any thread; never raises)."""
        self._dropped.append(job_id)

    def take(self) -> list[str]:
        """The jobs none of whose futures is left since the last take."""
        released = []
        with self._lock:
            alive = self._alive
            while self._dropped:
                job_id = self._dropped.popleft()
                left = alive.get(job_id)
                if left is None:
                    continue
                if left <= 1:
                    del alive[job_id]
                    released.append(job_id)
                else:
                    alive[job_id] = left - 1
        return released

    def forget(self) -> None:
        """The client left: the scheduler forgets its jobs anyway."""
        with self._lock:
            self._alive.clear()
            self._dropped.clear()

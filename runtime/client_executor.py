"""`Client.executor()`: a `concurrent.futures.Executor` over a Client (runtime/client.py)."""

from __future__ import annotations

import concurrent.futures
import threading
from collections.abc import Callable
from typing import Any

from tidal.runtime.futures import TaskFuture

__all__ = ["ClientExecutor"]


class ClientExecutor(concurrent.futures.Executor):
    """A `concurrent.futures.Executor` over a Client: each call is one task.

    For code written against the Executor interface. `map()` is the stdlib's: every call is
    submitted at once, one task (and one job) each, results come in order, `chunksize` is
    ignored. `shutdown()` stops this adapter taking work (and waits for or cancels its
    futures); it does not close the client.
    """

    def __init__(self, client: Any) -> None:  # a Client (runtime/client.py)
        self._client = client
        self._lock = threading.Lock()
        self._futures: set[TaskFuture] = set()
        self._shutdown = False

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> TaskFuture:
        """Submit `fn(*args, **kwargs)` as a task (see `Client.submit` for reserved names)."""
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot submit to a ClientExecutor after shutdown()")
            future = self._client.submit(fn, *args, **kwargs)
            self._futures.add(future)
        future.add_done_callback(self._forget)
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Take no more work; cancel pending tasks if asked; wait for the rest if asked."""
        with self._lock:
            self._shutdown = True
            futures = list(self._futures)
        if cancel_futures:
            for future in futures:
                future.cancel()
        if wait:
            concurrent.futures.wait(futures)

    def _forget(self, future: TaskFuture) -> None:
        with self._lock:
            self._futures.discard(future)

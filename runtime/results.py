"""Big results: kept by the executor that made them, fetched by the client that wants them.

A result of DATA_THRESHOLD bytes or more never passes through the scheduler (runtime/
datastore.py has the why): the executor's `ResultSpool` spools it and the executor reports
its reference instead; the client's `ResultFetcher` reads the file (same host) or fetches it
from the executor's data server, deletes or releases it, and completes the future.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import zmq

from tidal.runtime import payloads
from tidal.runtime.auth import PeerKeys
from tidal.runtime.datastore import (
    DataStore,
    DataUnavailable,
    Reference,
    read_and_release,
    release,
    spool_folder,
)
from tidal.runtime.payloads import DATA_MIN_BYTES
from tidal.runtime.protocol import ProtocolError

__all__ = ["ResultFetcher", "ResultSpool", "Traffic"]

log = logging.getLogger("tidal.results")


class Traffic:
    """Task data a client sent (arguments, inline or spooled) and received (results, inline,
    read or fetched), in bytes: payloads of DATA_MIN_BYTES or more. Any thread may count."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.sent_bytes = 0
        self.received_bytes = 0

    def sent(self, size: int) -> None:
        if size >= DATA_MIN_BYTES:
            with self._lock:
                self.sent_bytes += size

    def received(self, size: int) -> None:
        if size >= DATA_MIN_BYTES:
            with self._lock:
                self.received_bytes += size

    def as_dict(self) -> dict[str, int]:
        with self._lock:
            return {"sent_bytes": self.sent_bytes, "received_bytes": self.received_bytes}


class ResultSpool:
    """An executor's big results, kept in a DataStore (made at the first) until their
    clients fetch them: at once, unless a client is away. Ones no client fetched within
    KEEP_S are deleted (`expire`, called now and then), and `close` waits up to DRAIN_S for
    the readers of the last ones."""

    KEEP_S = 600.0
    DRAIN_S = 5.0
    EXPIRE_EVERY_S = KEEP_S / 10  # how often `expire` looks (a directory listing)

    def __init__(
        self, owner_id: str, bind_host: Callable[[], str], keys: PeerKeys | None = None
    ) -> None:
        self._owner_id = owner_id
        self._bind_host = bind_host
        self._keys = keys
        self._store: DataStore | None = None
        self._lock = threading.Lock()
        self._expired_at = time.monotonic()
        # Results kept for later readers (`launch.keep`, runtime/kept.py): task id -> its
        # reference, until the scheduler drops them. They never expire.
        self._kept: dict[str, Reference] = {}
        self.kept_bytes = 0

    def keep(self, payload: bytes) -> Reference:
        """Spool one result; its reference. OSError or zmq.ZMQError if it cannot be."""
        with self._lock:
            if self._store is None:
                host = self._bind_host()
                self._store = DataStore(self._owner_id, bind_host=host, keys=self._keys)
            store = self._store
        return store.put(payload)

    def reference_for(self, payload: bytes) -> bytes:
        """Spool a result (the task thread's); the reference to report in its place, or
        the payload itself if it cannot be spooled (the spool is full, say)."""
        try:
            return payloads.pack_reference(self.keep(payload))
        except (OSError, zmq.ZMQError) as exc:
            log.warning("a result of %d bytes could not be spooled (%s)", len(payload), exc)
            return payload

    def keep_for(self, task_id: str, payload: bytes) -> bytes:
        """Spool a kept result (the task thread's) until `drop` names its task; the reference
        to report. OSError or zmq.ZMQError if it cannot be (the task then fails: a kept
        result that travelled inline would be kept nowhere)."""
        reference = self.keep(payload)
        with self._lock:
            old = self._kept.pop(task_id, None)
            self._kept[task_id] = reference
            self.kept_bytes += reference.size - (old.size if old else 0)
            store = self._store
        if old is not None and store is not None:  # a rerun's: the new one replaces it
            store.drop([old])
        return payloads.pack_reference(reference)

    def drop(self, task_ids: list[str]) -> None:
        """Delete these tasks' kept results (unknown ids are ignored)."""
        with self._lock:
            gone = [self._kept.pop(t) for t in task_ids if type(t) is str and t in self._kept]
            self.kept_bytes -= sum(r.size for r in gone)
            store = self._store
        if gone and store is not None:
            store.drop(gone)

    def kept(self) -> dict[str, int]:
        """The kept results here: task id -> bytes."""
        with self._lock:
            return {task_id: r.size for task_id, r in self._kept.items()}

    def expire(self) -> None:
        """Delete the results no client fetched within KEEP_S (looks every EXPIRE_EVERY_S);
        never raises (it runs on the executor's listener)."""
        now = time.monotonic()
        with self._lock:
            store = self._store
        if store is None or now - self._expired_at < self.EXPIRE_EVERY_S:
            return
        self._expired_at = now
        with self._lock:
            kept = {r.path for r in self._kept.values()}
        try:
            gone = store.expire(self.KEEP_S, keep=kept)
        except OSError as exc:
            log.warning("could not look for expired results: %s", exc)
            return
        if gone:
            log.warning("deleted %d results no client fetched within %g s", gone, self.KEEP_S)

    def close(self) -> None:
        """Wait up to DRAIN_S for the readers of what is left, then delete it all."""
        self.drop(list(self.kept()))  # no one reads those once this executor stops
        with self._lock:
            store, self._store = self._store, None
        if store is not None:
            store.close(wait_s=self.DRAIN_S)


class ResultFetcher:
    """Completes the futures whose results their executors kept: each is read or fetched,
    deleted or released, and unpacked on a thread of the fetcher's (THREADS of them), never
    on the client's IO thread, which must go on reading. Those futures' done callbacks run
    on these threads.

    A result that cannot be had (its executor's host is gone, a bad reference, ...) fails
    its future with DataUnavailable or ProtocolError; `close()` fails those still waiting
    or being fetched with ConnectionError, and fetches under way stop at their next piece.
    """

    THREADS = 2

    def __init__(self, owner_id: str, traffic: Traffic | None = None) -> None:
        self._traffic = traffic or Traffic()
        # The client's own spool: a result's reference must never make it delete a file
        # there (its spooled arguments).
        self._own_folder = spool_folder(owner_id)
        self._lock = threading.Lock()
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._fetching: set[Any] = set()  # TaskFutures
        self._closed = threading.Event()

    def fetch(self, future: Any, blob: bytes, stats: dict[str, Any]) -> None:
        """Fetch the result `blob` refers to and complete `future` (a TaskFuture) with it."""
        if not self._submit(self._fetch, future, blob, stats, keep=future):
            future._stats = stats
            _fail(future, ConnectionError(f"client closed before task {future.task_id} finished"))

    def release(self, blob: bytes) -> None:
        """A result no future waits for (cancelled, or sent twice): let its executor delete
        it now rather than after KEEP_S."""
        self._submit(self._release, blob)

    def close(self) -> None:
        """Fail the futures still waiting for their results; stop the fetches under way."""
        with self._lock:
            self._closed.set()
            pool, left = self._pool, list(self._fetching)
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
        for future in left:
            _fail(future, ConnectionError(f"client closed before task {future.task_id} finished"))

    def _submit(self, fn: Callable[..., None], *args: Any, keep: Any = None) -> bool:
        with self._lock:
            if self._closed.is_set():
                return False
            if self._pool is None:
                self._pool = concurrent.futures.ThreadPoolExecutor(
                    self.THREADS, thread_name_prefix="tidal-fetch"
                )
            if keep is not None:
                self._fetching.add(keep)
            self._pool.submit(fn, *args)
            return True

    def _fetch(self, future: Any, blob: bytes, stats: dict[str, Any]) -> None:
        what = f"the result of {future.task_id}"
        try:
            reference = payloads.open_reference(blob, what)
            try:
                data = read_and_release(
                    reference, stopped=self._closed.is_set, keep_folder=self._own_folder
                )
            except DataUnavailable as exc:
                why = f"{what}, kept by its executor, cannot be had: {exc}"
                raise DataUnavailable(why) from None
            self._traffic.received(len(data))
            value = payloads.unpack_payload(data, what)
        except Exception as exc:  # whatever it is, the future must hear of it
            if not isinstance(exc, ProtocolError | DataUnavailable):
                exc = DataUnavailable(f"{what} could not be fetched: {type(exc).__name__}: {exc}")
            future._stats = stats
            _fail(future, exc)
        else:
            future._complete("finished", value, None, stats)
        finally:
            with self._lock:
                self._fetching.discard(future)

    def _release(self, blob: bytes) -> None:
        with contextlib.suppress(Exception):  # best effort: it expires anyway
            reference = payloads.open_reference(blob, "a result no one waits for")
            release(reference, keep_folder=self._own_folder)


def _fail(future: Any, exc: BaseException) -> None:
    with contextlib.suppress(concurrent.futures.InvalidStateError):  # completed meanwhile
        future.set_exception(exc)

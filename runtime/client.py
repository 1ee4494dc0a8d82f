"""The client: submit work to a Tidal scheduler, get `concurrent.futures` futures back.

This module is the user API (`submit`, `map`, `status`, `set_policy`, ...) and the
bookkeeping of futures and requests. The connection to the scheduler (the handshake, the IO
thread, keepalive, reconnecting and reattaching after a restart, goodbye) is
runtime/client_io.py.

Threads and why:

* Caller threads (any number) validate and encode a submission (each task's arguments
  packed once, into the payload only an executor opens), register its futures, and
  hand the frame to the IO thread through an inproc PAIR socket. ZeroMQ sockets are not
  thread-safe, so that one PAIR end is guarded by the client's lock; it is the only socket
  callers touch, and sending on it never blocks.
* The IO thread (runtime/client_io.py) owns the connection. Through the handlers here it
  completes futures from `results` (unpacking each result's payload; one that does not
  unpack fails its own future) and requests from their answers.

A chunked map takes the bulk path (runtime/bulk.py): one list of payloads out, batches of
results in, and light futures (`MapFutures`, made as they are asked for).

For a scheduler that restarts, the client keeps each job's submit frame until the job's last
future completes (to submit again the tasks a new scheduler never heard of) and each
request's frame until its answer comes (to ask again). Each future still completes once: a
result for a future that is done already is ignored.

Futures complete on the IO thread, and so their done callbacks run there: keep callbacks
short, and never block in one on another future or on `status()` of the same client. The
futures, their errors and `gather`/`as_completed` live in runtime/futures.py; this module
re-exports them.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import functools
import itertools
import logging
import os
import socket
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import zmq

from tidal.runtime import config, payloads, reprs
from tidal.runtime import protocol as p
from tidal.runtime.auth import AuthenticationFailed, load_peer_keys
from tidal.runtime.bulk import BulkJobs, pack_calls
from tidal.runtime.calls import pack_tasks
from tidal.runtime.client_executor import ClientExecutor
from tidal.runtime.client_io import Bookkeeping, ClientConnection
from tidal.runtime.client_requests import ClientRequests
from tidal.runtime.columns import Columns, pack_columns
from tidal.runtime.datastore import (
    DATA_THRESHOLD,
    DataStore,
    Reference,
    advertised_address,
    bind_host_for,
)
from tidal.runtime.functions import function_ref

# Re-exported, so `from tidal.runtime.client import TaskFuture, gather, ...` keeps working.
from tidal.runtime.futures import (
    MapFutures,
    MemoryLimitExceeded,
    RemoteTraceback,
    TaskError,
    TaskFuture,
    TaskStatistics,
    as_completed,
    gather,
)
from tidal.runtime.jobs import (
    check_frame_size,
    job_options,
    map_parts,
    parse_result,
    unencodable,
)
from tidal.runtime.kept_futures import KeptFuture
from tidal.runtime.lanes import one_plain_task
from tidal.runtime.link import DEFAULT_CONNECT_TIMEOUT_S, DEFAULT_RECONNECT_TIMEOUT_S
from tidal.runtime.logs import RateLimitedLog
from tidal.runtime.releases import Releases
from tidal.runtime.results import ResultFetcher, Traffic

__all__ = [
    "AuthenticationFailed",
    "Client",
    "ClientExecutor",
    "MapFutures",
    "MemoryLimitExceeded",
    "RemoteTraceback",
    "TaskError",
    "TaskFuture",
    "TaskStatistics",
    "as_completed",
    "gather",
]

log = logging.getLogger("tidal.client")

# The IO thread exits within one poll of being told to; this only bounds a bug.
IO_JOIN_TIMEOUT_S = 5.0

# ---- the client ------------------------------------------------------------------------------


# `map` chunks by default from this many partitions up (see `Client.map`).
AUTO_CHUNK_FROM = 256


class Client(ClientRequests):
    """A connection to a Tidal scheduler: submit tasks, get futures.

    `address` is a ZeroMQ address (`"tcp://host:port"`) or anything with an `.address`
    attribute, such as a LocalCluster; without one, TIDAL_SCHEDULER_ADDRESS (and TIDAL_KEYS
    for `keys`), as the command line reads them (runtime/config.py). The constructor performs
    the handshake and raises ConnectionError if the scheduler refuses this client or none
    answers within `timeout` seconds. Use it as a context manager, or call `close()`.

    `keys` is a key directory (`tidal keys generate DIR`; the client uses its `peer.key_secret`
    and `scheduler.key`) for a scheduler that requires CURVE keys; by default, a cluster's
    own keys (`LocalCluster(keys=...)`), else none. A scheduler that refuses the client's key
    (or its lack of one) raises AuthenticationFailed, a ConnectionError, with the reason.
    """

    def __init__(
        self,
        address: Any = None,
        *,
        timeout: float = DEFAULT_CONNECT_TIMEOUT_S,
        reconnect_timeout: float = DEFAULT_RECONNECT_TIMEOUT_S,
        keys: str | os.PathLike[str] | None = None,
    ) -> None:
        if address is None:
            address = config.SCHEDULER_ADDRESS.read()
            if address is None:
                raise TypeError(
                    "Client needs a scheduler address (or a LocalCluster), or "
                    f"{config.SCHEDULER_ADDRESS.name} set"
                )
            keys = config.KEYS.read() if keys is None else keys
        if keys is None:
            keys = getattr(address, "keys", None)
        address = getattr(address, "address", address)
        if not isinstance(address, str):
            raise TypeError(
                "Client needs a ZeroMQ address such as 'tcp://127.0.0.1:8786', or an object "
                f"with an .address attribute (a LocalCluster), not {type(address).__name__}"
            )
        self.address = address
        self.reconnect_timeout = reconnect_timeout
        # Results that came for no pending future (already completed, cancelled or unknown)
        # and were dropped: a redelivery after a restart lands here, never in a future twice.
        self.dropped_results = 0
        self.client_id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self._bad_frames = RateLimitedLog(log)
        # One lock guards `_pending`, `_status_waiters`, `_closed` and the callers' PAIR end.
        # It is never held while a future completes: done callbacks may call back in.
        self._lock = threading.Lock()
        self._pending: dict[str, TaskFuture] = {}
        # Jobs whose futures the program dropped, told to the scheduler with the next job.
        self._releases = Releases()
        self._status_waiters: dict[str, concurrent.futures.Future] = {}
        # For a scheduler that restarts: each job's submit frame and how many of its futures
        # are pending (to submit it again), and the frame of each request waiting for its
        # answer (to ask again). Guarded by the lock too.
        self._jobs: dict[str, list[Any]] = {}  # job id -> [frame, futures pending]
        self._request_frames: dict[str, bytes] = {}
        self._closed = False
        self._broken: str | None = None  # why this client cannot be used any more, if so
        # itertools.count's next() is atomic in CPython, so ids need no lock.
        self._job_numbers = itertools.count(1)
        # Big arguments are spooled here, off the scheduler's path (runtime/datastore.py),
        # from the first one on; each job's spooled payloads, freed when the job is done.
        self._data: DataStore | None = None
        self._spooled: dict[str, list[Reference]] = {}
        # Jobs with kept results (keep=True): their spooled arguments stay until they are
        # released (their results may be computed again); their futures, by task id.
        self._kept_jobs: set[str] = set()
        self._kept: weakref.WeakValueDictionary[str, KeptFuture] = weakref.WeakValueDictionary()
        # Task data sent and received (`traffic.as_dict()`): what the data path spares.
        self.traffic = Traffic()
        self._fetcher = ResultFetcher(self.client_id, self.traffic)  # big results, spooled
        # Chunked maps sent in bulk: their futures and frames, in a book with its own lock.
        self._bulk = BulkJobs(self._fetcher, self._bad_frames, self._send_cancel, self._bulk_done)

        self.keys = None if keys is None else load_peer_keys(keys)
        advertised_address()  # a malformed TIDAL_DATA_ADDRESS fails here, not at a submit
        self._io = ClientConnection(
            address,
            self.client_id,
            self.keys,
            connect_timeout=timeout,
            reconnect_timeout=reconnect_timeout,
            bad_frames=self._bad_frames,
        )
        welcome = self._io.connect()
        self.scheduler_id = welcome.scheduler_id
        # The policy at connect time, or as this client's set_policy() left it; another client
        # may switch it since: status()["policy"] is the current one.
        self.policy = welcome.policy
        self.max_suspensions = welcome.max_suspensions  # the cluster's cap
        self._to_io = self._io.start(
            Bookkeeping(
                handlers={
                    p.Results: self._on_results,
                    p.BatchResults: self._on_batch_results,
                    p.JobRefused: self._on_job_refused,
                    p.Status: self._on_status,
                    p.Pong: self._on_pong,
                    p.PolicySet: self._on_policy_set,
                },
                expecting=self._expecting,
                waiting_for=self._waiting_for,
                resubmissions=self._resubmissions,
                welcomed_again=self._welcomed_again,
                lost=self._lost,
            )
        )

    @property
    def reconnects(self) -> int:
        """How often the client reconnected and was welcomed again (a restarted scheduler)."""
        return self._io.reconnects

    # ---- submitting --------------------------------------------------------------------------

    def submit(
        self,
        fn: Callable[..., Any],
        /,
        *args: Any,
        priority: str | None = None,
        order: int = 0,
        max_suspensions: int | None = None,
        preferred: Sequence[str] | None = None,
        keep: bool = False,
        **kwargs: Any,
    ) -> TaskFuture:
        """Run `fn(*args, **kwargs)` as one task (one job); return its future.

        `priority`, `order` and `max_suspensions` are options for the runtime, so a task
        function cannot receive keyword arguments of those names through `submit`:

        * `priority`: "stream" (may suspend running batch tasks to take their slot) or
          "batch". None means the `@task` default if `fn` has one, else "batch".
        * `order`: an int; within a priority class, lower runs first.
        * `max_suspensions`: how often this task may be suspended (an int >= 0); None means
          the `@task` default if any, else the cluster's cap.
        * `preferred`: node labels or executor ids the task would rather run on (honoured
          by the `lma` policy; others ignore it).
        * `keep`: the result stays on the executor that made it (runtime/kept.py): the
          future completes when it exists, `result()` fetches it, and the future may be
          passed to other tasks, which then run where it is if they can.

        A future of a `keep=True` task among the arguments (at the top, or inside lists,
        tuples and dict values) is an input: the task runs once it exists, and gets its
        value in the future's place.

        Everything is checked here, before anything is sent: `fn` must be importable by
        executors (else FunctionNotImportable, a TypeError saying why: a lambda, a function
        typed into an interactive session), and every argument msgpack-encodable (else a
        TypeError naming it: "argument 1" is the first positional argument).
        """
        parts = [(f"argument {i}", arg) for i, arg in enumerate(args, 1)]
        parts += [(f"keyword argument {name!r}", value) for name, value in kwargs.items()]
        pack = functools.partial(
            self._pack_tasks, calls=[(list(args), kwargs)], preferred=[preferred]
        )
        options = {"keep": True} if keep else None
        [future] = self._submit_job(fn, pack, parts, priority, order, max_suspensions, options)
        return future

    def map(
        self,
        fn: Callable[..., Any],
        partitions: Iterable[Any],
        /,
        *,
        priority: str | None = None,
        order: int = 0,
        max_suspensions: int | None = None,
        preferred: Sequence[Any] | None = None,
        chunksize: int | str | None = None,
        keep: bool = False,
        **kwargs: Any,
    ) -> Sequence[TaskFuture]:
        """Run `fn(partition, **kwargs)` for each partition, as one job; return the futures
        in the order of `partitions`.

        `chunksize` groups partitions into chunks, each sent and run as one unit (each
        partition still has its own future): an int, "auto" (sized from measured task time
        toward ~20 ms of work per chunk), or None: "auto" from AUTO_CHUNK_FROM partitions up,
        else 1 (no chunks). A chunked map without `preferred` whose calls are each under
        DATA_THRESHOLD bytes packed is sent in bulk (runtime/bulk.py). The map returns a
        MapFutures: a sequence whose futures are made as they are asked for, and which
        `gather` waits on whole (with `keep`, a list of futures).

        Options and checks are those of `submit`; `preferred` is either one list of nodes
        for every partition or one list per partition. A partition msgpack cannot carry raises a
        TypeError naming it by its index ("partition 3" is `partitions[3]`). No partitions:
        no job, and an empty list. With `keep`, or partitions that are futures of kept
        results (see `submit`), each partition is a task of its own (no chunks).
        """
        partitions = list(partitions)
        # (The types first, in C: a Python test per partition cost ~20 ms in a map of 200,000.)
        if keep or any(issubclass(t, TaskFuture) for t in set(map(type, partitions))):
            if chunksize not in (None, 1):
                raise ValueError("a map that keeps its results or takes futures is not chunked")
            chunksize = 1
        if (
            preferred is not None
            and preferred
            and all(isinstance(x, list | tuple) for x in preferred)
        ):
            if len(preferred) != len(partitions):
                raise ValueError(
                    f"{len(preferred)} preferred lists for {len(partitions)} partitions"
                )
            per_task = list(preferred)
        else:
            per_task = [preferred] * len(partitions)
        if chunksize is None:
            chunksize = "auto" if len(partitions) >= AUTO_CHUNK_FROM else 1
        if not (chunksize == "auto" or (type(chunksize) is int and chunksize >= 1)):
            raise ValueError(f"chunksize must be an int >= 1, 'auto' or None, not {chunksize!r}")
        options = None if chunksize == 1 else {"chunksize": chunksize}
        if keep:
            options = {"keep": True}
        if options and not preferred and not keep:
            pack = functools.partial(self._pack_bulk, partitions=partitions, kwargs=kwargs)
            parts = map_parts(partitions, kwargs)
            futures = self._submit_job(fn, pack, parts, priority, order, max_suspensions, options)
            if futures is not None:
                return futures
        calls = [([partition], kwargs) for partition in partitions]
        pack = functools.partial(self._pack_tasks, calls=calls, preferred=per_task)
        parts = map_parts(partitions, kwargs)
        return self._submit_job(
            fn, pack, parts, priority, order, max_suspensions, options, light=not keep
        )

    def _submit_job(
        self,
        fn: Callable[..., Any],
        pack: Callable[[str], tuple[list[Any], list[bytes] | Columns | None] | None],
        parts: Iterable[tuple[str, Any]],
        priority: str | None,
        order: int,
        max_suspensions: int | None,
        options: dict[str, Any] | None = None,
        *,
        light: bool = False,
    ) -> Sequence[TaskFuture] | None:
        """Validate, encode and send one Submit; register its futures before it goes out.

        `pack(job_id)` packs the job's calls, each once, into payloads only an executor
        opens: `(tasks, None)` for `submit.tasks` (a list of futures then, or with `light`
        a MapFutures), `([], payloads)` or `([], columns)` for `submit.bulk` (a
        MapFutures), or None for a bulk job that cannot be one (nothing is sent: None).
        `parts` name the arguments, for an error msgpack raises.

        Discussion (`light`, a map's): a TaskFuture per task, each with its Condition, and
        its completion, callbacks and `gather`'s wake-up, cost the client ~25 us a task of
        a `chunksize=1` map of no-ops, about a tenth of the whole cluster's CPU per task;
        a BulkJob's futures are made only when asked for, and `gather` waits once.
        """
        self._check_open()
        priority, order, max_suspensions = job_options(fn, priority, order, max_suspensions)
        ref = function_ref(fn)
        # Ids are unique and increasing, not consecutive: a submission that fails to encode
        # has used its number.
        job_id = f"{self.client_id}-{next(self._job_numbers)}"
        # Taken before packing, so a future's latency includes the cost of packing its job.
        sent_ns = time.monotonic_ns()
        registered = False
        boosts, boosted = self._io.boosts, False
        try:
            try:
                packed = pack(job_id)
                if packed is None:
                    return None  # not a bulk job after all
                tasks, bulk = packed
                if not (tasks or bulk):
                    return []  # no partitions: no job
                columnar = isinstance(bulk, Columns)
                frame = p.encode(
                    p.Submit(
                        job_id,
                        priority,
                        order,
                        max_suspensions,
                        ref.ref,
                        ref.main_path,
                        tasks,
                        sent_ns,
                        options,
                        bulk.args if columnar else bulk,
                        bulk.kwargs if columnar else None,
                    )
                )
            except p.EncodeError as exc:
                raise unencodable(ref.ref, parts, exc) from None
            check_frame_size(ref.ref, frame)
            # A stream task's caller at real-time priority from here to the end of its
            # submit (its packing, however big, is done), so that it is not preempted
            # holding the GIL once its task is sent (runtime/realtime.py `CallerBoosts`).
            boosted = priority == "stream" and not light and boosts.boost()
            dropped = self._releases.dropped
            keep = bool(options and options.get("keep"))
            one_by_one = bulk is None and not light  # a future per task
            if one_by_one:
                cancel, fn_ref = self._cancel_remote, ref.ref
                make = (
                    functools.partial(
                        KeptFuture,
                        missing=self._send_missing,
                        on_io_thread=self._io.on_io_thread,
                        traffic=self.traffic,
                    )
                    if keep
                    else TaskFuture
                )
                futures = [make(t[0], job_id, sent_ns, cancel, fn_ref, dropped) for t in tasks]
                self._releases.track(job_id, len(futures))
            else:
                size = len(tasks) if bulk is None else len(bulk)
                job = self._bulk.new_job(job_id, size, sent_ns, ref.ref, self._releases)
                futures = MapFutures(job, dropped)
                self._releases.track(job_id, 1)
            released = self._releases.take()  # told with this job: nothing waits for them
            with self._lock:
                self._check_open()  # registered before the frame leaves: no result first
                if one_by_one:
                    self._pending.update((future.task_id, future) for future in futures)
                    self._jobs[job_id] = [frame, len(futures)]
                    if keep:  # its arguments may be needed again (lineage): kept till released
                        self._kept_jobs.add(job_id)
                        self._kept.update((future.task_id, future) for future in futures)
                else:
                    self._bulk.add(job, frame)
                frames = [frame]
                if released:
                    # After the submit: its launch is sent before the scheduler retires what
                    # was released (~0.1 ms a release, on a stream task's way to its slot).
                    frames.append(p.encode(p.Release(released)))
                    self._kept_jobs.difference_update(released)
                    self._drop_spooled(released)
                # A stream task's submit goes out on this thread: by an executor's lane
                # (runtime/lanes.py), or to the scheduler if nothing waits before it
                # (runtime/client_io.py `CallerQueue.send_all`).
                lane = priority == "stream" and one_by_one and not keep and one_plain_task(tasks)
                if lane and self._io.lanes.send(tasks[0][0], frame):
                    # The releases go at the IO thread's next pass: no send from this
                    # thread, nor a wake-up, while its stream task runs.
                    self._to_io.send_later(frames[1:])
                    frames = []
                    held = boosted and boosts.hold()  # until this thread waits, or the
                    if held:  # result comes (None: the IO thread stopped; ended below)
                        futures[0].add_done_callback(
                            lambda _f, t=held[0], k=held[1]: boosts.release(t, k)
                        )
                        boosted = False
                if lane and self._io.lanes.waiting():  # a send (or a try) took the signal
                    self._to_io.wake()  # of a result that came by a lane meanwhile
                if frames:
                    self._to_io.send_all(frames, urgent=priority == "stream")
                registered = True
        finally:
            boosts.end(boosted)
            if not registered:  # it failed: nothing will read what was spooled for it
                with self._lock:
                    self._drop_spooled([job_id])
        return futures

    def _pack_tasks(
        self, job_id: str, calls: list[tuple[list[Any], dict[str, Any]]], preferred: list[Any]
    ) -> tuple[list[Any], None]:
        """`submit.tasks` for these calls (runtime/calls.py)."""
        spool = functools.partial(self._spool, job_id)
        scan = len(self._kept) > 0  # futures as arguments are kept ones (runtime/calls.py)
        return pack_tasks(job_id, calls, preferred, self.client_id, spool, self.traffic, scan), None

    def _send_missing(self, task_id: str) -> bool:
        """A kept result could not be fetched: the scheduler computes it again (False: the
        client is closed or broken, nothing was sent)."""
        return self._send_one_way(p.Missing([task_id]))

    def _pack_bulk(
        self, job_id: str, partitions: list[Any], kwargs: dict[str, Any]
    ) -> tuple[list[Any], list[bytes] | Columns] | None:
        """`submit.bulk` for a map's calls: columns of tiny calls (runtime/columns.py), a
        payload per call (runtime/bulk.py), or None if one is too big."""
        # Discussion: a call of 64 KiB or more is spooled on its own (the classic path). Where
        # a partition sampled here is that big, go there at once: packed as columns, then as
        # calls, then again for the classic path, 8 partitions of a million ints took map()
        # 360-390 ms against 80.
        ends = {0, len(partitions) // 2, len(partitions) - 1}
        if partitions and any(
            payloads.packs_to_at_least(partitions[i], DATA_THRESHOLD) for i in ends
        ):
            return None
        packed_kwargs = payloads.pack_payload(kwargs, "kwargs")
        columns = pack_columns(partitions, packed_kwargs)
        if columns is not None and columns.small:
            return [], columns  # each call under DATA_MIN_BYTES: none counts as data sent
        spool = functools.partial(self._spool, job_id)
        packed = None if columns is None else columns.items()  # each partition packed once
        calls = pack_calls(partitions, packed_kwargs, spool, packed)
        if calls is None:
            return None
        if max(map(len, calls), default=0) >= payloads.DATA_MIN_BYTES:  # else none counts
            for call in calls:
                self.traffic.sent(len(call))
        return [], calls

    def _cancel_remote(self, future: TaskFuture) -> None:
        """Forget a future cancelled here and tell the scheduler (unless the client is gone)."""
        with self._lock:
            if self._pending.pop(future.task_id, None) is not None:
                self._job_done(future.job_id)
        self._io.lanes.done(future.task_id, None)  # not to be sent by another lane
        self._send_cancel(future.task_id)

    def _send_cancel(self, task_id: str) -> None:
        frame = p.encode(p.Cancel([task_id]))
        with self._lock:
            if not self._closed and self._broken is None:
                self._to_io.send(frame)

    def _job_done(self, job_id: str) -> None:
        """One more of the job's futures completed (call with the lock held)."""
        job = self._jobs.get(job_id)
        if job is not None:
            job[1] -= 1
            if job[1] <= 0:
                del self._jobs[job_id]
                if job_id not in self._kept_jobs:
                    self._drop_spooled([job_id])

    def _spool(self, job_id: str, payload: bytes) -> bytes:
        """Spool a big payload (runtime/datastore.py); the reference to send instead."""
        with self._lock:
            self._check_open()  # a store made after close() would never be closed
            if self._data is None:
                self._data = DataStore(
                    self.client_id, bind_host=bind_host_for(self.address), keys=self.keys
                )
            data = self._data
        reference = data.put(payload)  # not under the lock: results go on meanwhile
        with self._lock:
            self._spooled.setdefault(job_id, []).append(reference)
        return payloads.pack_reference(reference)

    def _drop_spooled(self, job_ids: Iterable[str] | None = None) -> None:
        """Delete these jobs' spooled payloads (None: every job's); call with the lock held."""
        for job_id in list(self._spooled) if job_ids is None else job_ids:
            references = self._spooled.pop(job_id, None)
            if references and self._data is not None:
                self._data.drop(references)

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"this Tidal client ({self.client_id}) is closed")
        if self._broken is not None:
            raise RuntimeError(self._broken)

    # ---- waiting -----------------------------------------------------------------------------

    def gather(
        self, futures: Iterable[concurrent.futures.Future], timeout: float | None = None
    ) -> list[Any]:
        """Results of `futures` in order; see the module-level `gather`."""
        return gather(futures, timeout)

    def as_completed(
        self, futures: Iterable[concurrent.futures.Future], timeout: float | None = None
    ) -> Iterator[concurrent.futures.Future]:
        """Yield futures as they complete; see the module-level `as_completed`."""
        return as_completed(futures, timeout)

    def executor(self) -> ClientExecutor:
        """A `concurrent.futures.Executor` that runs each call as a task on this client."""
        return ClientExecutor(self)

    # ---- closing -----------------------------------------------------------------------------

    def close(self) -> None:
        """Say goodbye, stop the IO thread, release sockets; pending futures fail with
        ConnectionError. Calling it again does nothing."""
        if self._io.on_io_thread():
            raise RuntimeError(
                "close() called from a done callback, which runs on the client's IO thread; "
                "close the client from another thread"
            )
        with self._lock:
            if self._closed:
                return
            self._closed = True
            # "Shut down"; Again means the IO thread crashed and is gone already.
            with contextlib.suppress(zmq.Again):
                self._to_io.send(b"")
        stopped = self._io.join(IO_JOIN_TIMEOUT_S)
        self._fail_pending(lambda what: f"client closed before {what} finished")
        self._fetcher.close()
        if not stopped:
            # Discussion: closing sockets under a live thread, or term() with its socket open,
            # could crash or hang the caller; leaking a daemon thread is the lesser harm.
            log.error("the Tidal client's IO thread did not stop; leaving it behind")
            return
        self._to_io.close(linger=0)
        self._io.close()
        if self._data is not None:  # every spooled payload goes with it
            self._data.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state, pending = self._state()
        words = [f"{state},", f"policy {self.policy},", f"{pending} pending"]
        return reprs.text_repr("Client", f"{self.client_id} -> {self.address}:", words)

    def _repr_html_(self) -> str:
        state, pending = self._state()  # the policy: as of the connect, or our set_policy()
        rows = [("scheduler", self.address), ("state", reprs.State(state)), ("why", self._broken)]
        rows += [("policy", self.policy), ("pending tasks", pending)]
        return reprs.html_table("Client", self.client_id, rows)

    def _state(self) -> tuple[str, int]:
        """For the reprs: the connection's state, and how many tasks are pending."""
        with self._lock:
            pending = len(self._pending)
        if self._closed or self._broken is not None:
            return "closed" if self._closed else "lost", pending
        state = "connected" if self._io.connected else "reconnecting"
        return state, pending + self._bulk.pending()

    def _fail_pending(self, describe: Callable[[str], str]) -> None:
        """Fail every pending future and status request with ConnectionError(describe(what))."""
        with self._lock:
            futures = list(self._pending.values())
            waiters = list(self._status_waiters.values())
            self._pending.clear()
            self._status_waiters.clear()
            self._jobs.clear()
            self._request_frames.clear()
            self._drop_spooled()  # no one waits for those jobs any more
        self._bulk.fail_all(describe)
        for future in futures:
            with contextlib.suppress(concurrent.futures.InvalidStateError):  # cancelled meanwhile
                future.set_exception(ConnectionError(describe(f"task {future.task_id}")))
        for waiter in waiters:
            waiter.set_exception(ConnectionError(describe("a status request")))

    # ---- the bookkeeping's side of the connection (IO thread) --------------------------------

    def _expecting(self) -> bool:
        with self._lock:
            return bool(self._pending or self._status_waiters or self._bulk)

    def _waiting_for(self) -> tuple[list[str], list[bytes]]:
        with self._lock:
            waiting, requests = list(self._pending), list(self._request_frames.values())
        return waiting + self._bulk.waiting_for(), requests

    def _resubmissions(self, unknown: set[str]) -> list[bytes]:
        """The submit frames of the jobs holding `unknown` tasks, with only those tasks."""
        jobs: dict[str, bytes] = {}
        with self._lock:
            for task_id in unknown:
                future = self._pending.get(task_id)
                job = self._jobs.get(future.job_id) if future is not None else None
                if job is not None:
                    jobs[future.job_id] = job[0]
        frames = []
        for job_id, frame in jobs.items():
            submit = p.decode(frame)
            tasks = [t for t in submit.tasks if t[0] in unknown]
            log.info("submitting again %d tasks of job %s", len(tasks), job_id)
            frames.append(p.encode(dataclasses.replace(submit, tasks=tasks)))
        return frames + self._bulk.resubmissions(unknown)

    def _welcomed_again(self, welcome: p.ClientWelcome) -> None:
        if welcome.scheduler_id != self.scheduler_id:
            log.warning(
                "the Tidal scheduler at %s restarted (now %s)", self.address, welcome.scheduler_id
            )
        self.scheduler_id, self.policy = welcome.scheduler_id, welcome.policy
        self.max_suspensions = welcome.max_suspensions

    def _lost(self, broken: str, describe: Callable[[str], str]) -> None:
        with self._lock:
            self._broken = broken
        self._fail_pending(describe)

    def _on_results(self, msg: p.Results) -> None:
        lanes = self._io.lanes
        for item in msg.items:
            try:
                task_id, outcome, value, error, stats = parse_result(item)
            except p.ProtocolError as exc:
                self._bad_frames(f"dropped a bad result from the scheduler: {exc}")
                self._fail_malformed(item, exc)
                continue
            with self._lock:
                future = self._pending.pop(task_id, None)
                if future is not None:
                    self._job_done(future.job_id)
            by_lane = lanes.done(task_id, stats.get("executor_id") if type(stats) is dict else None)
            if future is None and by_lane:
                continue  # the scheduler's copy of a result that came by a lane
            if outcome == "finished" and type(value) is bytes and not payloads.is_reference(value):
                self.traffic.received(len(value))  # (a kept result's, where it is fetched)
            # A bulk job's task, else unknown, completed, or cancelled here: never complete a
            # future twice (a spooled result no one waits for is released). A kept result
            # computed again goes to its future (runtime/kept_futures.py).
            if future is None and (again := self._kept.get(task_id)) is not None:
                if again.done() and not again.cancelled():
                    again._recomputed(outcome, value, error)
                continue
            if isinstance(future, KeptFuture):  # its value stays with its executor
                future._complete(outcome, value, error, stats)
                continue
            if future is None:  # a map's (light futures) or a bulk job's task
                if not self._bulk.on_result(task_id, outcome, value, error, stats):
                    self.dropped_results += 1
                continue
            if outcome == "finished" and type(value) is bytes and payloads.is_reference(value):
                self._fetcher.fetch(future, value, stats)  # kept by its executor: fetched
                continue
            if outcome == "finished":
                try:
                    value = payloads.unpack_payload(value, f"the result of {task_id}")
                except p.ProtocolError as exc:
                    # Discussion: only this future learns of it; the frame's other results
                    # are sound and complete theirs.
                    self._bad_frames(f"dropped a bad result of {task_id}: {exc}")
                    future._stats = stats
                    with contextlib.suppress(concurrent.futures.InvalidStateError):
                        future.set_exception(exc)
                    continue
            future._complete(outcome, value, error, stats)

    def _fail_malformed(self, item: Any, exc: p.ProtocolError) -> None:
        # Discussion: a result we cannot read for a task we know would otherwise leave its
        # future pending forever; failing it tells the caller what happened.
        if type(item) is not list or not item or type(item[0]) is not str:
            return
        with self._lock:
            future = self._pending.pop(item[0], None)
            if future is not None:
                self._job_done(future.job_id)
        problem = p.ProtocolError(f"unreadable result for {item[0]}: {exc}")
        if future is None:
            self._bulk.fail(item[0], problem)
            return
        with contextlib.suppress(concurrent.futures.InvalidStateError):
            future.set_exception(problem)

    def _on_batch_results(self, msg: p.BatchResults) -> None:
        # Packed as one array, a batch holds no payload of DATA_MIN_BYTES (pack_batch).
        for value in () if type(msg.values) is bytes else msg.values:
            if type(value) is bytes and not payloads.is_reference(value):
                self.traffic.received(len(value))
        self.dropped_results += self._bulk.on_batch_results(msg)

    def _on_job_refused(self, msg: p.JobRefused) -> None:
        if not self._bulk.on_job_refused(msg):
            self.dropped_results += 1

    def _bulk_done(self, job_id: str) -> None:
        with self._lock:
            self._drop_spooled([job_id])  # its shared kwargs, if they were spooled

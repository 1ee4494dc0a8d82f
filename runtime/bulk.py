"""The client's side of the bulk path: a chunked map sent as one list of payloads, its
results taken a batch at a time (issue 17; docs/protocol.md, `submit.bulk`).

A chunked `map` whose calls all travel inline is one `submit` with `tasks` empty and `bulk`
the calls' payloads in order: task i's id is f"{job_id}/{i}", and no per-task record exists
on the client until someone asks for a task's future (runtime/futures.py, `BulkJob` and
`MapFutures`). Results come back as `batch_results` (a run of consecutive tasks, their
values in one list), and as classic `results` items for the tasks that took another way
(cancelled, retried alone, failed after executor losses); a job the scheduler refused fails
whole at one `job_refused`. `BulkJobs` is the client's book of its live bulk jobs: it
routes results and refusals to the right job, and answers for them when the client
reconnects (the ids it waits for, the tasks to submit again) or gives up.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import msgpack

from tidal.runtime import batches, columns, payloads
from tidal.runtime import protocol as p
from tidal.runtime.datastore import DATA_THRESHOLD
from tidal.runtime.futures import BulkJob, rebuild_error
from tidal.runtime.jobs import is_error
from tidal.runtime.results import ResultFetcher

if TYPE_CHECKING:
    from tidal.runtime.releases import Releases

__all__ = ["BulkJobs", "pack_calls"]

log = logging.getLogger("tidal.client")

# ---- packing a bulk map's calls --------------------------------------------------------------


def pack_calls(
    partitions: list[Any],
    packed_kwargs: bytes,
    spool: Callable[[bytes], bytes],
    packed: Sequence[bytes | memoryview] | None = None,
) -> list[bytes] | None:
    """Each partition's call payload, the bytes `payloads.pack_call([partition], kwargs,
    packed_kwargs=...)` makes; `packed_kwargs` (the calls' shared kwargs, packed) are handed
    to `spool` first if they are DATA_THRESHOLD bytes or more, and the reference it returns
    (a payload) goes in their place. `packed`: the partitions packed already, if they are
    (runtime/columns.py `Columns.items`).

    None if a call would be DATA_THRESHOLD bytes or more (it must be spooled on its own: not
    a bulk job). EncodeError if msgpack cannot carry a partition (the caller names it).
    """
    # Discussion: each partition is packed by one Packer in C, and each payload joined from
    # three pieces by C calls; no Python runs per partition (~0.25 us each, against ~1 us
    # for pack_call). A map of tiny calls goes as columns instead (runtime/columns.py).
    if packed is None:
        packer = msgpack.Packer(use_bin_type=True)
        try:
            packed = list(map(packer.pack, partitions))
        except (TypeError, ValueError, OverflowError) as exc:
            raise p.EncodeError(f"cannot encode a partition: {exc}") from None
    longest = max(map(len, packed), default=0)
    room = DATA_THRESHOLD - len(payloads.ONE_ARGUMENT_CALL) - longest  # for the kwargs
    if len(packed_kwargs) >= DATA_THRESHOLD:
        if len(partitions) == 1 or room <= 0:
            return None  # a call spooled whole, as the classic path does
        packed_kwargs = payloads.pack_payload(spool(packed_kwargs))  # once for all calls
    if len(packed_kwargs) >= room:
        return None
    calls = list(
        map(
            b"".join,
            zip(
                itertools.repeat(payloads.ONE_ARGUMENT_CALL),
                packed,
                itertools.repeat(packed_kwargs),
            ),
        )
    )
    if longest >= payloads.BLOCKED_MIN_ITEMS:
        # A big partition (`payloads.is_big`: it packs to BLOCKED_MIN_ITEMS bytes at least)
        # travels in blocks (payloads.py, "Blocked arguments").
        for i, partition in enumerate(partitions):
            if len(packed[i]) >= payloads.BLOCKED_MIN_ITEMS and payloads.is_big(partition):
                calls[i] = payloads.pack_call([partition], {}, packed_kwargs=packed_kwargs)
                if len(calls[i]) >= DATA_THRESHOLD:
                    return None
    return calls


# ---- results -------------------------------------------------------------------------------


def _decode_all(values: list[Any]) -> list[Any]:
    """A batch's result payloads, decoded as one: any that does not decode on its own (a
    spooled result's reference, 0xc1, never does; nor does a malformed payload, nor nil)
    raises, and the caller takes them one at a time.

    Discussion: msgpack values concatenate, so the payloads behind one array header are one
    array, decoded by one C call: ~0.05 us a value, against ~0.5 us for a call per value.
    In theory two malformed payloads could make a well-formed pair; only an executor that
    breaks the protocol on purpose could send those, and it could send wrong results anyway.
    """
    return p.unpack_value(msgpack.Packer().pack_array_header(len(values)) + b"".join(values))


class BulkJobs:
    """The client's live bulk jobs (each a BulkJob and its submit frame), until each job's
    last task is done; a map sent task by task (`submit.tasks`) is kept here too, for its
    light futures (`Client._submit_job`).

    Its lock guards only the book, and is never held while calling out. The hooks are the
    client's: `cancel_remote(task_id)` sends a Cancel, `job_done(job_id)` after a job's last
    task (its spooled kwargs can go); `bad_frames(message)` logs what the scheduler got
    wrong, rate-limited.
    """

    def __init__(
        self,
        fetcher: ResultFetcher,
        bad_frames: Callable[[str], None],
        cancel_remote: Callable[[str], None],
        job_done: Callable[[str], None],
    ) -> None:
        self._fetcher = fetcher
        self._bad_frames = bad_frames
        self._cancel_remote = cancel_remote
        self._job_done = job_done
        self._lock = threading.Lock()
        self._jobs: dict[str, tuple[BulkJob, bytes]] = {}

    def new_job(
        self,
        job_id: str,
        size: int,
        submitted_ns: int,
        function: str | None = None,
        releases: Releases | None = None,
    ) -> BulkJob:
        """A BulkJob whose futures cancel through the client, and which leaves the book when
        it is done; not in the book until `add`. `function` names the map's function; the
        futures made count in `releases` until dropped."""
        return BulkJob(
            job_id,
            size,
            submitted_ns,
            cancel_remote=self._cancel_remote,
            on_done=self._done,
            function=function,
            releases=releases,
        )

    def add(self, job: BulkJob, frame: bytes) -> None:
        """Keep a job, and its submit frame to send again to a scheduler that never had it."""
        with self._lock:
            self._jobs[job.job_id] = (job, frame)

    def __bool__(self) -> bool:
        """True while some job has tasks not done."""
        with self._lock:
            return bool(self._jobs)

    def pending(self) -> int:
        """How many tasks of the live jobs are not done."""
        with self._lock:
            jobs = [job for job, _ in self._jobs.values()]
        return sum(job.size - job.counts()[0] for job in jobs)

    # ---- the IO thread's side ----------------------------------------------------------------

    def on_batch_results(self, msg: p.BatchResults) -> int:
        """Complete a batch's tasks; return how many results were dropped (their tasks done
        already, or their job not live: never a future completed twice)."""
        packed = type(msg.values) is bytes  # one packed array (p.ChunkBatch): no reference
        try:
            count = batches.values_count(msg.values)
        except p.ProtocolError as exc:
            self._bad_frames(f"dropped a bad batch of results from the scheduler: {exc}")
            return 0
        with self._lock:
            entry = self._jobs.get(msg.job_id)
        if entry is None:  # done, failed whole, or never ours
            if not packed:
                for value in msg.values:
                    self._release(value)
            return count
        job = entry[0]
        if not 0 <= msg.start <= job.size - count:
            self._bad_frames(
                f"dropped a bad batch of results from the scheduler: tasks {msg.start} to "
                f"{msg.start + count - 1} of job {msg.job_id}, which has {job.size}"
            )
            return 0
        if packed and msg.errors:
            return self._fail_batch(job, msg, count, "a packed batch of results lists failures")
        if not msg.errors:
            try:
                values = p.unpack_value(msg.values) if packed else _decode_all(msg.values)
            except Exception as exc:  # msgpack raises many types; the slow path says which
                if packed:  # no way to tell which result is bad: each task learns of it
                    why = f"its packed results do not decode: {exc}"
                    return self._fail_batch(job, msg, count, why)
            else:
                if type(values) is list and len(values) == count:
                    return job.finish(msg.start, values, msg.stats)
                if packed:
                    why = "its packed results are not one per task"
                    return self._fail_batch(job, msg, count, why)
        return self._one_by_one(job, msg)

    def _fail_batch(self, job: BulkJob, msg: p.BatchResults, count: int, why: str) -> int:
        """Fail every task of a batch (`count` of them) whose results cannot be read; how many
        were dropped."""
        end = msg.start + count - 1
        exc = p.ProtocolError(f"results of {job.job_id}/{msg.start} to {end} unreadable: {why}")
        self._bad_frames(f"dropped a bad batch of results from the scheduler: {exc}")
        dropped = 0
        for index in range(msg.start, msg.start + count):
            dropped += not job.complete(index, "failed", exc, msg.stats)
        return dropped

    def on_result(
        self, task_id: str, outcome: str, value: Any, error: list[str] | None, stats: dict
    ) -> bool:
        """One classic `results` item (checked) for a bulk job's task: complete it. False if
        the task is no live job's or was done already (the result is dropped)."""
        found = self._find(task_id)
        if found is None:
            self._release(value)
            return False
        return self._take(*found, outcome, value, error, stats)

    def fail(self, task_id: str, exc: Exception) -> bool:
        """Fail one bulk task with `exc` (its result was unreadable); False if not ours."""
        found = self._find(task_id)
        return found is not None and found[0].complete(found[1], "failed", exc, {})

    def waiting_for(self) -> list[str]:
        """The ids of every live job's pending tasks (for `reattach`)."""
        with self._lock:
            jobs = [job for job, _ in self._jobs.values()]
        return [task_id for job in jobs for task_id in job.waiting_for()]

    def resubmissions(self, unknown: set[str]) -> list[bytes]:
        """Classic submit frames for the tasks in `unknown` still pending, one per job: the
        scheduler never heard of them (it restarted)."""
        wanted: dict[str, list[int]] = {}
        for task_id in unknown:
            found = self._find(task_id)
            if found is not None:
                wanted.setdefault(found[0].job_id, []).append(found[1])
        frames = []
        for job_id, indices in wanted.items():
            with self._lock:
                job, frame = self._jobs.get(job_id, (None, b""))
            indices = job.pending(sorted(indices)) if job is not None else []
            if not indices:
                continue
            submit = p.decode(frame)
            if submit.bulk is None:  # a map sent task by task (`Client.map`, chunksize 1)
                tasks = [submit.tasks[i] for i in indices]
            else:
                calls = columns.bulk_payloads(submit)  # our own submit: well formed
                tasks = [[f"{job_id}/{i}", calls[i]] for i in indices]
            log.info("submitting again %d tasks of job %s", len(tasks), job_id)
            again = dataclasses.replace(submit, tasks=tasks, bulk=None, kwargs=None)
            frames.append(p.encode(again))
        return frames

    def fail_all(self, describe: Callable[[str], str]) -> None:
        """The connection is gone: every task not done fails with ConnectionError."""
        with self._lock:
            jobs = [job for job, _ in self._jobs.values()]
            self._jobs.clear()
        for job in jobs:
            job.fail(lambda what: ConnectionError(describe(what)))

    def on_job_refused(self, msg: p.JobRefused) -> bool:
        """The scheduler refused a bulk job: each of its tasks not done fails with the
        reason. False if it is no live job of ours (the message is dropped)."""
        error = msg.error
        if not is_error(error):
            self._bad_frames(f"dropped a bad job_refused from the scheduler: {str(error)[:80]}")
            return False
        with self._lock:
            entry = self._jobs.get(msg.job_id)
        if entry is None:
            return False
        entry[0].fail(lambda _what: rebuild_error(*error))
        return True

    # ---- inside --------------------------------------------------------------------------------

    def _one_by_one(self, job: BulkJob, msg: p.BatchResults) -> int:
        """A batch with failures, spooled results or bad values: each task on its own."""
        start, end = msg.start, msg.start + len(msg.values)
        errors: dict[int, list[str]] = {}
        for item in msg.errors:
            if (
                type(item) is list
                and len(item) == 2
                and type(item[0]) is int
                and start <= item[0] < end
                and is_error(item[1])
            ):
                errors[item[0]] = item[1]
            else:
                self._bad_frames(f"dropped a bad error from the scheduler: {str(item)[:80]}")
        dropped = 0
        for index, value in enumerate(msg.values, start):
            error = errors.get(index)
            if error is None and value is None:
                exc = p.ProtocolError(f"result for {job.job_id}/{index} failed without an error")
                self._bad_frames(f"dropped a bad result from the scheduler: {exc}")
                dropped += not job.complete(index, "failed", exc, msg.stats)
                continue
            outcome = "finished" if error is None else "failed"
            dropped += not self._take(job, index, outcome, value, error, msg.stats)
        return dropped

    def _take(
        self,
        job: BulkJob,
        index: int,
        outcome: str,
        value: Any,
        error: list[str] | None,
        stats: dict,
    ) -> bool:
        """One task's result; False if it was dropped (the task was done already)."""
        if outcome == "finished" and type(value) is bytes and payloads.is_reference(value):
            future = job.fetching(index, stats)
            if future is None:
                self._fetcher.release(value)  # kept for no one: its executor may delete it
                return False
            self._fetcher.fetch(future, value, stats)  # kept by its executor: fetched
            return True
        if outcome == "finished":
            try:
                value = payloads.unpack_payload(value, f"the result of {job.job_id}/{index}")
            except p.ProtocolError as exc:
                # Only this task learns of it; the others' results are sound.
                self._bad_frames(f"dropped a bad result from the scheduler: {exc}")
                return job.complete(index, "failed", exc, stats)
        elif outcome == "failed":
            value = rebuild_error(*error)
        return job.complete(index, outcome, value, stats)

    def _find(self, task_id: str) -> tuple[BulkJob, int] | None:
        """The live job and index of a bulk task id (f"{job_id}/{index}"), if it is one."""
        job_id, _, number = task_id.rpartition("/")
        with self._lock:
            entry = self._jobs.get(job_id)
        if entry is None or not (number.isascii() and number.isdigit()):
            return None
        index = int(number)
        return (entry[0], index) if index < entry[0].size and str(index) == number else None

    def _release(self, value: Any) -> None:
        if type(value) is bytes and payloads.is_reference(value):
            self._fetcher.release(value)  # kept for no one: its executor may delete it

    def _done(self, job: BulkJob) -> None:
        with self._lock:
            self._jobs.pop(job.job_id, None)
        self._job_done(job.job_id)

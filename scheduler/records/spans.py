"""Bulk jobs: a chunked map's tasks kept as ranges, not one record per task.

A client's chunked `map` arrives as one `submit` with `bulk`: the tasks' payloads in order,
task i's id `f"{job_id}/{i}"`; or, since protocol 13, its xs as one packed array with their
kwargs (runtime/columns.py). The scheduler keeps the payloads in one tuple, or the array
as it came with where each x begins (`Job.payloads`), and a byte per task, set once it
ended (`Job.ended`), and nothing else per task:

* pending, the job is a few *pieces* (`Task.piece`, of MIN_PIECE_TASKS to PIECE_TASKS
  tasks, about half an executor's share of the job) in the
  pending queues; a policy launches a piece as it would a task, and the core takes a chunk
  off its front (`form_span_chunk`), the rest staying pending where it was;
* launched, a *span chunk* holds tasks [start, stop) of its job (`SpanSubtasks`); the
  executor runs them in order and reports their results in batches (`chunk_batch`: the
  values packed as one array, or a list with the failures apart), which go to the client as
  they came (`batch_results`) and to the journal as one record;
* a steal takes the tail of a span chunk and launches it as another span chunk.

A task gets a record of its own (`Task.index` >= 0) only where it differs from its range:
cancelled, reported on its own (a hello after a reconnection lists results task by task),
or left over by a chunk whose executor was lost after it had the launch (each counts the
loss toward its own `max_retries`), or that failed whole: those are requeued one by one
and run in ordinary chunks from then on. What a chunk leaves when it is killed to make
room, withdrawn, or lost before its executor had it goes back as pieces
(`requeue_span`). `Job.ended` decides whether a task's result counts, wherever it comes
from: a task completes exactly once.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Sequence
from typing import Any

from tidal.runtime import batches
from tidal.runtime import protocol as p
from tidal.runtime.columns import Columns, bulk_count
from tidal.scheduler import events as ev
from tidal.scheduler.records.tables import (
    ExecutorRecord,
    Job,
    Piece,
    Task,
    TaskState,
    lane_suspensions,
)

__all__ = [
    "LAUNCH_PAYLOAD_BYTES",
    "PIECE_TASKS",
    "BulkBooks",
    "SpanSubtasks",
    "batch_errors",
    "ended_span",
    "records_of",
    "task_ids",
    "values_count_or_none",
    "values_fit",
]

# Discussion: a piece is what a policy sees of a bulk job, so a job of a million tasks shows
# it ~60 pending "tasks"; a chunk never spans two pieces, so this also caps a span chunk.
# At 4,096 the cap, not TARGET_CHUNK_NS, sized the chunks of tiny tasks (~6 ms of work at
# ~1.5 us a task), and the executor waited for its next launch (a round trip through the
# scheduler) after each: a map of 200,000 no-ops ran 415k-453k tasks/s against 491k-584k at
# 16,384 in alternate runs (`bench chunking`'s maps, 2026-12-07).
PIECE_TASKS = 16_384
MIN_PIECE_TASKS = 64  # so that a job on a thousand executors is not ten thousand pieces
# A span chunk's payloads in all, at most (its launch is one frame of at most 64 MiB): 10,000
# calls of 8 KB made a 76 MiB launch, which its executor dropped.
LAUNCH_PAYLOAD_BYTES = 16 << 20


class SpanSubtasks:
    """A span chunk's tasks not reported yet: [start, stop) of its job, but for those that
    ended (`Job.ended`). One taken apart (given a record of its own: `pop`, `del`) ends in
    the same step (cancelled, or its result taken), so `ended` is all there is to keep.

    It stands where an ordinary chunk has its dict of subtask records, and answers what is
    asked of that: `len`, `in`, `pop`, `del`, and `values()`, which gives each remaining
    task a record (only when the chunk ends early: scheduler/records/books.py end_chunk).
    """

    __slots__ = ("chunk", "records", "start", "stop")

    def __init__(self, records: BulkBooks, chunk: Task, start: int, stop: int) -> None:
        self.records = records
        self.chunk = chunk
        self.start = start
        self.stop = stop

    def __len__(self) -> int:
        start, stop = self.start, self.stop
        return max(0, stop - start - self.chunk.job.ended.count(1, start, stop))

    def __contains__(self, task_id: object) -> bool:
        index = self._index(task_id)
        return index is not None and self._open(index)

    def __delitem__(self, task_id: str) -> None:
        if task_id not in self:
            raise KeyError(task_id)  # its caller ends it at once (recovery: its result)

    def pop(self, task_id: str, default: Any = None) -> Any:
        """The record of an open task of this chunk (its caller ends it at once); else
        `default`."""
        index = self._index(task_id)
        if index is None or not self._open(index):
            return default
        return self.records.task_record(self.chunk.job, index, self.chunk)

    def values(self) -> list[Task]:
        """Records for the open tasks (the chunk ended: they are settled one by one)."""
        job, chunk = self.chunk.job, self.chunk
        return [self.records.task_record(job, i, chunk) for i in self._open_indices()]

    def _open_indices(self) -> Iterator[int]:
        ended = self.chunk.job.ended
        return (i for i in range(self.start, self.stop) if not ended[i])

    def _open(self, index: int) -> bool:
        return self.start <= index < self.stop and not self.chunk.job.ended[index]

    def _index(self, task_id: object) -> int | None:
        return _index_in(self.chunk.job, task_id)


def _index_in(job: Job, task_id: object) -> int | None:
    """Task `task_id`'s index in bulk job `job`, or None if it names none of its tasks."""
    if type(task_id) is not str:
        return None
    job_id, _, number = task_id.rpartition("/")
    if job_id != job.job_id or not number.isdigit() or (number[0] == "0" and number != "0"):
        return None
    index = int(number)
    return index if index < len(job.ended) else None


def task_ids(submit: p.Submit) -> list[str]:
    """The ids of a submitted job's tasks, bulk or not."""
    if submit.bulk is not None:
        return [f"{submit.job_id}/{i}" for i in range(bulk_count(submit))]
    return [entry[0] for entry in submit.tasks]


def records_of(task: Task) -> Iterator[Task] | list[Task]:
    """The records of a chunk's tasks that have them (none for a span chunk's)."""
    subtasks = task.subtasks
    if not subtasks or isinstance(subtasks, SpanSubtasks):
        return ()
    return subtasks.values()


_VALUE_TYPES = {bytes, type(None)}


def values_fit(values: Any, errors: dict[int, Any], start: int) -> bool:
    """A payload (bytes) for each task that finished, nil for each that failed; or the
    payloads packed as one array (bytes), which only a batch with no failure may send."""
    if type(values) is bytes:
        return not errors
    if not set(map(type, values)) <= _VALUE_TYPES or values.count(None) != len(errors):
        return False
    return all(values[i - start] is None for i in errors)


def values_count_or_none(values: Any) -> int | None:
    """How many results a batch's values hold (`p.batch_size`); None if they do not say."""
    try:
        return batches.values_count(values)
    except p.ProtocolError:
        return None


def _open_runs(ended: bytearray, start: int, stop: int) -> list[tuple[int, int]]:
    """The runs [a, b) of tasks in [start, stop) that did not end."""
    runs, run_start = [], None
    for i in range(start, stop + 1):
        is_open = i < stop and not ended[i]
        if is_open and run_start is None:
            run_start = i
        elif not is_open and run_start is not None:
            runs.append((run_start, i))
            run_start = None
    return runs


def batch_errors(items: Any, start: int, stop: int) -> dict[int, list[str]] | None:
    """A chunk_batch's errors by index, or None if malformed."""
    errors = {}
    for item in items:
        if not (type(item) is list and len(item) == 2 and type(item[0]) is int):
            return None
        index, error = item
        if not (start <= index < stop and type(error) is list and len(error) == 3):
            return None
        if not all(type(part) is str for part in error):
            return None
        errors[index] = error
    return errors


def ended_span(chunk: Task) -> None:
    """A span chunk is done: its job stops tracking it."""
    spans = chunk.job.spans
    if chunk in spans:
        spans.remove(chunk)
    _release_if_done(chunk.job)


def _release_if_done(job: Job) -> None:
    """Drop a bulk job's payloads once every task of it ended."""
    if job.finished + job.failed + job.cancelled >= job.total:
        job.payloads = ()  # nothing will run again: the arguments can go


class BulkBooks:
    """The bookkeeping of bulk jobs: a part of `Records` (scheduler/records/books.py), which
    has the tables and the steps these use."""

    def task_record(self, job: Job, index: int, chunk: Task | None = None) -> Task:
        """Task `index` of bulk job `job` as a record of its own (made on first need), as it
        stands: in `chunk` if given (launched with it), else pending."""
        task_id = f"{job.job_id}/{index}"
        task = self.tasks.get(task_id)
        if task is None:
            task = Task(task_id, job, job.payloads[index], self.next_seq(), job.accepted_at)
            task.index = index
            self.enter(task)
        if chunk is not None and task.state is TaskState.PENDING:
            task.state = chunk.state if chunk.state is not TaskState.DONE else TaskState.LAUNCHED
            task.chunk = chunk
            task.executor_id = chunk.executor_id
            task.attempt = chunk.attempt
            task.kills = chunk.kills
            task.received = chunk.received
        return task

    def find_task(self, task_id: Any) -> Task | None:
        """The record of task `task_id`: its own, or for a bulk job's task in a span chunk that
        has none, one made now (None if no such task, it ended, or it waits in a piece)."""
        task = self.tasks.get(task_id) if type(task_id) is str else None
        if task is not None:
            if task.index >= 0 and task.job.ended[task.index]:
                task.state = TaskState.DONE  # it ended with a batch after its record was made
            return task
        found = self.bulk_task(task_id)
        if found is None or found[0].ended[found[1]]:
            return None
        job, index = found
        holder = next((c for c in job.spans if task_id in c.subtasks), None)
        if holder is not None:
            return self.task_record(job, index, holder)
        return None  # pending in a piece: see `cancel_in_piece`

    def bulk_task(self, task_id: Any) -> tuple[Job, int] | None:
        """(its job, its index) if `task_id` names a task of a bulk job, else None."""
        job = self.jobs.get(task_id.rpartition("/")[0]) if type(task_id) is str else None
        if job is None or job.ended is None:
            return None
        index = _index_in(job, task_id)
        return None if index is None else (job, index)

    def cancel_in_piece(self, client_id: str, task_id: Any) -> None:
        """Cancel a bulk job's task that is still pending in its piece (one that `find_task`
        found no record for): done now; its piece skips it, or its result is ignored."""
        found = self.bulk_task(task_id)
        if found is None or found[0].client_id != client_id:
            return
        job, index = found
        if job.ended[index]:
            return
        piece = next((q for q in job.pieces if q.piece.start <= index < q.piece.stop), None)
        task = self.task_record(job, index)
        task.cancel_requested = True
        self.complete(task, "cancelled", None, None)
        if piece is not None:
            self.pending.removed(piece)  # one open task fewer in it
            if job.ended.find(0, piece.piece.start, piece.piece.stop) == -1:
                self._drop_piece(piece)

    def add_bulk_tasks(
        self, job: Job, payloads: Sequence[bytes], *, skip: Collection[str], pieces: bool
    ) -> list[Task]:
        """Record bulk job `job`'s tasks, but those in `skip` (ended): as pending pieces if
        `pieces`, else one record each (as a restarted scheduler restores them); return them.
        `payloads`: a list of them, or a columnar job's Columns (kept as they are)."""
        if isinstance(payloads, Columns):
            job.payloads, job.payload_max = payloads, payloads.payload_max
        else:
            # A tuple of bytes, which the collector stops tracking at its first look: a list
            # of a million payloads would make every full collection visit each (~25 ms).
            job.payloads = tuple(payloads)
            job.payload_max = max(map(len, payloads), default=0)
        job.ended = bytearray(len(payloads))
        for task_id in skip:
            index = _index_in(job, task_id)
            if index is not None:
                job.ended[index] = 1
        if not pieces:
            return [self.task_record(job, i) for i in range(len(payloads)) if not job.ended[i]]
        # Pieces of about half an executor's share: a policy that places a task per free
        # executor gives each one some of the job at once. Never smaller than a fixed
        # chunksize: a chunk takes from one piece.
        executors = max(1, sum(e.alive for e in self.executors.values()))
        share = -(-len(payloads) // (2 * executors))
        most = PIECE_TASKS
        if type(job.chunksize) is int:
            share = max(share, job.chunksize)
            most = max(most, job.chunksize)
        size = max(MIN_PIECE_TASKS, min(most, share))
        made = []
        for start in range(0, len(payloads), size):
            stop = min(start + size, len(payloads))
            piece = Task(f"{job.job_id}@{start}", job, b"", self.next_seq(), self.now)
            piece.piece = Piece(start, stop)
            self.enter(piece)
            made.append(piece)
        job.pieces.extend(made)
        return made

    def form_span_chunk(self, piece: Task, size: int) -> Task:
        """Take up to `size` tasks off the front of pending `piece` as a new span chunk (launch
        it with `launch_span_chunk`); the piece keeps the rest, or is done if none are left."""
        span, ended = piece.piece, piece.job.ended
        # Its launch must fit a frame: at most LAUNCH_PAYLOAD_BYTES of payloads.
        size = max(1, min(size, LAUNCH_PAYLOAD_BYTES // max(1, piece.job.payload_max)))
        first_open = ended.find(0, span.start, span.stop)  # cancelled ones first: skipped
        span.start = span.stop if first_open == -1 else first_open
        start = span.start
        stop = min(span.stop, start + size)
        while stop > start and ended[stop - 1]:
            stop -= 1
        # A piece weighs its open tasks (`cancel_in_piece` takes a cancelled one's off).
        self.pending.removed(piece, (stop - start) - ended.count(1, start, stop))
        span.start = min(span.stop, start + size)
        if span.start >= span.stop or ended.find(0, span.start, span.stop) == -1:
            self._drop_piece(piece)
        return self._new_span_chunk(piece, start, stop)

    def _drop_piece(self, piece: Task) -> None:
        """A piece with no open task left leaves the queue (skipped there) and the books."""
        piece.state = TaskState.DONE
        self.tasks.pop(piece.task_id, None)
        if piece in piece.job.pieces:
            piece.job.pieces.remove(piece)

    def _new_span_chunk(self, source: Task, start: int, stop: int) -> Task:
        """Record a span chunk of tasks [start, stop) of `source`'s job, taking its place in
        the queue order, its kill count and its attempt (`source`: a piece, or the chunk
        a steal takes them from)."""
        job = source.job
        job.chunks += 1
        number = f"{self.restarts}.{job.chunks}" if self.restarts else str(job.chunks)
        chunk = Task(f"{job.job_id}#{number}", job, b"", source.seq, source.submitted_at)
        chunk.kills, chunk.attempt = source.kills, source.attempt
        chunk.subtasks = SpanSubtasks(self, chunk, start, stop)
        self.enter(chunk)
        job.spans.append(chunk)
        return chunk

    def requeue_span(self, chunk: Task, subtasks: SpanSubtasks, started: bool) -> None:
        """Queue again, as pieces at the front of their class, the open tasks of span chunk
        `chunk` that ended early (killed to make room, withdrawn, never received by an
        executor that was lost): a new attempt if it had started."""
        job, pieces = chunk.job, []
        for a, b in reversed(_open_runs(job.ended, subtasks.start, subtasks.stop)):
            piece = Task(f"{chunk.task_id}@{a}", job, b"", 0, chunk.submitted_at)
            piece.piece = Piece(a, b)
            piece.kills = chunk.kills
            piece.attempt = chunk.attempt + 1 if started else chunk.attempt
            self._requeue_seq -= 1
            piece.seq = self._requeue_seq
            self.enter(piece)
            self.pending.push(piece, front=True)
            pieces.append(piece)
            job.pieces.append(piece)
        if pieces:
            self.on_pending(pieces[::-1])

    def launch_span_chunk(self, executor: ExecutorRecord, chunk: Task) -> None:
        """Launch a span chunk formed by `form_span_chunk` (or a steal) on `executor`."""
        self.place(executor, chunk)
        job, span = chunk.job, chunk.subtasks
        columnar = isinstance(job.payloads, Columns)
        message = p.LaunchChunk(
            chunk.task_id,
            job.fn,
            job.main_path,
            [] if columnar else list(job.payloads[span.start : span.stop]),
            chunk.attempt,
            job.priority,
            self.launch_stamp(chunk),
            [job.job_id, span.start],
            job.payloads.launch(span.start, span.stop) if columnar else None,
            lane_suspensions(chunk),
        )
        self.send(executor, message)

    def on_span_batch(self, executor: ExecutorRecord, chunk: Task, msg: p.ChunkBatch) -> None:
        """Results of span chunk `chunk`'s tasks: each completes once. The batch goes to the
        client and the journal as it came, or, if some of its tasks had ended already
        (cancelled, or reported on their own), as the runs of those that had not."""
        subtasks = chunk.subtasks
        start, values = msg.start, msg.values
        count = values_count_or_none(values)
        stop = start + (count or 0)
        errors = batch_errors(msg.errors, start, stop)
        if count is None or errors is None or not values_fit(values, errors, start):
            self.peer_warning(
                f"executor {executor.executor_id}: dropped a malformed chunk_batch of "
                f"{msg.chunk_id}"
            )
            return
        if not count or start < subtasks.start or stop > subtasks.stop:
            self.peer_warning(
                f"executor {executor.executor_id}: dropped a chunk_batch of {msg.chunk_id} "
                f"for tasks [{start}, {stop}) outside its open range "
                f"[{subtasks.start}, {subtasks.stop})"
            )
            return
        job = chunk.job
        if job.ended.find(1, start, stop) == -1:
            runs = [(start, stop)]
        else:
            runs = _open_runs(job.ended, start, stop)
            try:
                values = batches.batch_payloads(values)  # to be cut: some tasks ended before
            except p.ProtocolError as exc:  # then its other tasks fail, as at the client
                self.peer_warning(
                    f"executor {executor.executor_id}: a chunk_batch of {msg.chunk_id}: {exc}"
                )
                error = ["ProtocolError", f"the executor's results were unreadable: {exc}", ""]
                values, errors = [None] * count, dict.fromkeys(range(start, stop), error)
        if start == subtasks.start:  # past what ended before it too (reported alone)
            first_open = job.ended.find(0, stop, subtasks.stop)
            subtasks.start = subtasks.stop if first_open == -1 else first_open
        running_ns = msg.running_ns if type(msg.running_ns) is int and msg.running_ns >= 0 else 0
        mean = running_ns / (stop - start)
        job.subtask_ns = mean if job.subtask_ns is None else 0.9 * job.subtask_ns + 0.1 * mean
        first_start = chunk.first_started_at
        stats = {
            "executor_id": executor.executor_id,
            "attempt": chunk.attempt,
            "running_ns": int(mean),
            "queued_ns": None if first_start is None else first_start - chunk.submitted_at,
        }
        for a, b in runs:
            failed = [[i, errors[i]] for i in errors if a <= i < b]
            job.ended[a:b] = b"\x01" * (b - a)
            job.finished += b - a - len(failed)
            job.failed += len(failed)
            part = values if (a, b) == (start, stop) else values[a - start : b - start]
            result = p.BatchResults(job.job_id, a, part, failed, stats)
            self.note(ev.BatchEnded(job.job_id, result, job.priority == "stream"))
            if job.client_id in self.clients:
                self.out.append(ev.ToClient(job.client_id, result))
        _release_if_done(job)
        self.ended(job)

    def on_stolen_span(
        self,
        chunk: Task,
        thief: ExecutorRecord | None,
        asked: int,
        task_ids: list[Any],
    ) -> None:
        """The victim gave up the tail of span chunk `chunk`: tasks [stop - n, stop), n the
        count of `task_ids` (at most `asked`), which must name exactly those. They run as a
        span chunk on the thief, or are queued again if it cannot take them now."""
        span, job = chunk.subtasks, chunk.job
        count = len(task_ids)
        if count == 0:
            return  # it had none left to give
        first = span.stop - count
        expected = [f"{job.job_id}/{i}" for i in range(max(first, span.start), span.stop)]
        if count > asked or first < span.start or task_ids != expected:
            self.peer_warning(f"dropped a malformed stolen of {chunk.task_id}")
            return
        stolen_stop, span.stop = span.stop, first
        moved = self._new_span_chunk(chunk, first, stolen_stop)
        if thief is None or not thief.alive or thief.slot_task is not None:
            self.end_chunk(moved, started=False)  # queued again, as a piece
            return
        self.launch_span_chunk(thief, moved)
        self.steal_count += 1

"""The scheduler's journal: what a restarted scheduler needs, in SQLite (stdlib, WAL mode).

What is written, and when:

* a job when it is accepted: its `submit` message as it came (one row, the tasks' payloads
  inside; opaque here as everywhere in the scheduler);
* a task's end (finished, failed or cancelled): its result item, as the client gets it;
* a cancellation the client asked for (its task may still be running somewhere);
* the executors that are alive (a restarted scheduler waits for them to come back);
* when a client says goodbye, its jobs go: no one will ask for their results again.

The core writes nothing itself: among its instructions are notes of what it decided
(scheduler/events.py), and the shell hands them to `apply(note)`, which records the ones a
restart needs (`NullJournal` is the do-nothing journal of a scheduler without one). Nothing
reaches the disk until the shell calls `commit()`, which it does once per pass over its
socket and at every tick, in one transaction. Results, and the
acks that let executors forget them, are sent only after that commit, so whatever a client
or an executor was told is safe is on disk.

Discussion: `synchronous=NORMAL`. In WAL mode a commit then writes the log without an
fsync: it survives the scheduler process being killed (the case restarts are for), and an
OS crash or power loss can lose the last commits. `FULL` fsyncs every commit, which costs
milliseconds per pass on this project's VMs, against a loop that otherwise turns in tens of
microseconds; `Journal(path, synchronous="FULL")` (`tidal scheduler --journal-sync full`)
is there for a host whose crashes must lose nothing.

Discussion: results are written one row per job per commit, not one per task: `ids` packs
the batch's `[task_id, outcome]` pairs (read at open), `items` their result items (read only
when a client asks again). A row per task cost ~10-20 us a task on this project's loaded
VMs (a B-tree insert each), a row per batch ~1-3 us. The journal keeps an index in memory,
task id -> row, for the tasks whose results it holds.

Discussion: the file is locked for one scheduler (`locking_mode=EXCLUSIVE`): two schedulers
on one journal would each rebuild the other's jobs.
"""

from __future__ import annotations

import bisect
import contextlib
import logging
import math
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import msgpack

from tidal.runtime import batches
from tidal.runtime import protocol as p
from tidal.scheduler import events as ev

__all__ = [
    "Journal",
    "JournalError",
    "JournalState",
    "JournalWriter",
    "NullJournal",
    "default_journal_path",
]

log = logging.getLogger("tidal.scheduler")

SCHEMA_VERSION = 1
SYNC_MODES = ("NORMAL", "FULL")
# Discussion: a job's submit is one row holding its payloads. A 6 MB one (two 600,000-int
# partitions) took ~35 ms to commit at SQLite's default 4 KiB pages, ~12 ms at 16 KiB and
# ~5 ms at 64 KiB; a small commit (a pass's results) ~55, ~63 and ~180 us. Small commits
# are the common case, and run on the loop (see JournalWriter), so 16 KiB.
PAGE_SIZE = 16384
# Records of fewer payload bytes than this are committed on the loop, at once: handing them
# to the writer costs two thread wake-ups (~20% of `bench throughput`'s unchunked rate).
INLINE_BYTES = 64 * 1024
# Group commit: while results keep coming, the loop commits at most this often, and what
# waits on the records (results to clients, acks to executors) waits with them; a stream
# task's result is committed at once. A commit per pass of the loop cost ~25% of the
# scheduler's time under a flood of tiny tasks (`bench throughput` unchunked).
GROUP_COMMIT_NS = 1_000_000
# Retired jobs' rows are deleted (`JobRetired`): after such a commit, at most this many free
# pages go back to the file system (16 KiB each), and the write-ahead log is cut back to
# WAL_LIMIT_BYTES after each checkpoint; the file tracks the live work.
VACUUM_PAGES = 256
WAL_LIMIT_BYTES = 512 << 10
# Rows asked for in one `IN (...)` query: below SQLite's default limit of variables.
QUERY_CHUNK = 500

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS jobs (
    job_id TEXT PRIMARY KEY, client_id TEXT NOT NULL, submit BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS results (
    batch INTEGER PRIMARY KEY, job_id TEXT NOT NULL, ids BLOB NOT NULL, items BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS results_by_job ON results (job_id);
CREATE TABLE IF NOT EXISTS cancels (task_id TEXT PRIMARY KEY, job_id TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS executors (executor_id TEXT PRIMARY KEY);
CREATE TABLE IF NOT EXISTS losses (task_id TEXT NOT NULL, job_id TEXT NOT NULL, executor_id TEXT);
"""


def default_journal_path(bind: str) -> str | None:
    """Where `tidal scheduler --bind ADDR` keeps its journal unless told: one file per port
    in the XDG state directory; None for an address without a fixed port (`tcp://host:*`,
    `tcp://host:0`),
    where a restarted scheduler could not be found again anyway."""
    port = bind.rsplit(":", 1)[-1]
    if not port.isdigit() or int(port) == 0:  # `:0` is a wildcard port too
        return None
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "state"
    )
    return os.path.join(state, "tidal", f"journal-{port}.sqlite")


class JournalError(RuntimeError):
    """The journal cannot be used (in use by another scheduler, not a journal, ...)."""


@dataclass
class JournalState:
    """What a journal held when it was opened: what a restart rebuilds from."""

    restarts: int = 0  # how many times a scheduler opened this journal before this one
    # (client id, submit, its frame as it came or None)
    jobs: list[tuple[str, p.Submit, bytes | None]] = field(default_factory=list)
    outcomes: dict[str, str] = field(default_factory=dict)  # ended task id -> outcome
    cancels: set[str] = field(default_factory=set)  # task ids a client cancelled
    executors: set[str] = field(default_factory=set)  # alive when the journal last heard
    losses: dict[str, list[str]] = field(default_factory=dict)  # task id -> executors lost

    @property
    def empty(self) -> bool:
        return not (self.jobs or self.executors)


class NullJournal:
    """The journal of a scheduler that keeps none: every record is dropped.

    `apply(note)` records a core's note through the hooks below; a real journal overrides
    them all.
    """

    path: str | None = None

    def apply(self, note: ev.Note) -> None:
        """Record what `note` says, if a restart needs it (other notes are ignored).

        Discussion: by the note's type in one dict, not a chain of isinstance tests: a
        no-op task makes two notes, and the chain ran whole for the one a restart ignores
        (`FoldedStart`)."""
        record = _RECORDS.get(type(note))
        if record is not None:
            record(self, note)

    def submitted(self, client_id: str, submit: p.Submit, frame: bytes | None = None) -> None:
        """A job was accepted (`frame`: its submit as it came, if known, kept as it is)."""

    def batch_ended(self, result: p.BatchResults) -> None:
        """A bulk job's tasks ended together."""

    def ended(self, job_id: str, item: list[Any], stream: bool = False) -> None:
        """A task ended; `item` is its result item `[task_id, outcome, value, error, stats]`
        (`stream`: a stream task's, whose client must not wait)."""

    def cancel_requested(self, job_id: str, task_id: str) -> None:
        """A client asked to cancel a task that is still running somewhere."""

    def executor_joined(self, executor_id: str) -> None:
        """An executor joined (or joined again)."""

    def executor_lost(self, executor_id: str) -> None:
        """An executor was lost or left."""

    def client_left(self, client_id: str) -> None:
        """A client said goodbye: its jobs are no longer wanted after a restart."""

    def job_retired(self, job_id: str, task_ids: Iterable[str]) -> None:
        """A job left the scheduler's books: its rows go (`task_ids`: its tasks' ids)."""

    def task_lost(self, job_id: str, task_id: str, executor_id: str) -> None:
        """A task was lost with its executor (a restart keeps counting from there)."""

    def results(self, task_ids: Iterable[str]) -> dict[str, tuple[str, list[Any]]]:
        """The result items journaled for these tasks (those it has): task id -> (job id,
        `[task_id, outcome, value, error, stats]`)."""
        return {}

    def commit(self) -> None:
        """Write everything recorded since the last commit, in one transaction."""

    def close(self) -> None:
        """Commit and close."""


# What `NullJournal.apply` does with each kind of note a restart needs.
_RECORDS: dict[type, Callable[[NullJournal, Any], None]] = {
    ev.TaskEnded: lambda j, n: j.ended(n.job_id, n.item, n.stream),
    ev.BatchEnded: lambda j, n: j.batch_ended(n.result),
    ev.JobAccepted: lambda j, n: j.submitted(n.client_id, n.submit),
    ev.CancelRequested: lambda j, n: j.cancel_requested(n.job_id, n.task_id),
    ev.ExecutorUp: lambda j, n: j.executor_joined(n.executor_id),
    ev.ExecutorLost: lambda j, n: j.executor_lost(n.executor_id),
    ev.ClientLeft: lambda j, n: j.client_left(n.client_id),
    ev.JobRetired: lambda j, n: j.job_retired(n.job_id, n.task_ids),
    ev.TaskLost: lambda j, n: j.task_lost(n.job_id, n.task_id, n.executor_id),
}


class Journal(NullJournal):
    """A journal in the SQLite file at `path` (created if missing); see the module docstring.

    `state` is what the file held when it was opened.
    """

    def __init__(self, path: str | os.PathLike[str], *, synchronous: str = "NORMAL") -> None:
        synchronous = synchronous.upper()
        if synchronous not in SYNC_MODES:
            raise ValueError(
                f"synchronous must be one of {', '.join(SYNC_MODES)}, not {synchronous!r}"
            )
        self.path = os.fspath(path)
        try:
            os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
            # isolation_level=None: transactions are ours (BEGIN ... COMMIT in commit()).
            # timeout=0: a journal another scheduler holds fails at once, not after 5 s.
            self._db = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=0
            )
        except (OSError, sqlite3.Error) as exc:
            raise JournalError(f"cannot open the journal {self.path}: {exc}") from None
        try:
            self._open(synchronous)
        except sqlite3.DatabaseError as exc:
            self._db.close()
            if "locked" in str(exc):
                raise JournalError(
                    f"the journal {self.path} is in use by another scheduler"
                ) from None
            raise JournalError(f"cannot use {self.path} as a journal: {exc}") from None
        # What was recorded since the last `take()`, and what was taken and is not on disk
        # yet (read by `results()` on the loop's thread while a writer writes it).
        self._pending = _Records()
        self._in_flight: list[_Records] = []
        # One connection, two threads (a JournalWriter's, the loop's reads): one at a time.
        self._db_lock = threading.Lock()
        self._vacuum_due = False  # free pages to give back, after retired jobs' deletes

    def _open(self, synchronous: str) -> None:
        db = self._db
        db.execute(f"PRAGMA page_size={PAGE_SIZE}")  # a new file's; an old one keeps its own
        # Pages freed by retired jobs go back to the file system (`write`): a new file's
        # setting too, which must come before WAL mode and the tables.
        db.execute("PRAGMA auto_vacuum=INCREMENTAL")
        db.execute("PRAGMA locking_mode=EXCLUSIVE")
        mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if mode.lower() != "wal":
            raise sqlite3.DatabaseError(f"WAL mode refused (journal_mode is {mode})")
        db.execute(f"PRAGMA synchronous={synchronous}")
        db.execute("BEGIN EXCLUSIVE")  # takes the lock now, and keeps it (locking_mode)
        db.execute("COMMIT")
        # The write-ahead log: checkpointed every WAL_LIMIT_BYTES of pages (SQLite's default,
        # 1,000 pages, is 16 MB at our page size), and cut back to that after each.
        db.execute(f"PRAGMA wal_autocheckpoint={WAL_LIMIT_BYTES // PAGE_SIZE}")
        db.execute(f"PRAGMA journal_size_limit={WAL_LIMIT_BYTES}")
        db.executescript(_SCHEMA)
        row = db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
        if row is None:
            db.execute("INSERT INTO meta VALUES ('schema', ?)", (SCHEMA_VERSION,))
        elif row[0] != SCHEMA_VERSION:
            raise sqlite3.DatabaseError(
                f"journal schema {row[0]}, this scheduler reads {SCHEMA_VERSION}"
            )
        self.state = self._load()
        db.execute(
            "INSERT INTO meta VALUES ('opened', 1) ON CONFLICT(key) DO UPDATE SET value = value + 1"
        )

    def _load(self) -> JournalState:
        db = self._db
        row = db.execute("SELECT value FROM meta WHERE key='opened'").fetchone()
        state = JournalState(restarts=0 if row is None else row[0])
        for client_id, frame in db.execute("SELECT client_id, submit FROM jobs ORDER BY rowid"):
            submit = _stored_submit(frame)
            if isinstance(submit, p.Submit):
                state.jobs.append((client_id, submit))
        self._rows: dict[str, int] = {}  # task id -> the results row that holds its item
        # A bulk job's batches written since: job id -> [(start, stop, row), ...], by start.
        self._batch_rows: dict[str, list[tuple[int, int, int]]] = {}
        for batch, job_id, ids in db.execute("SELECT batch, job_id, ids FROM results"):
            for task_id, outcome in _outcomes(job_id, _unpack(ids)):
                state.outcomes[task_id] = outcome
                self._rows[task_id] = batch
        state.cancels = {task_id for (task_id,) in db.execute("SELECT task_id FROM cancels")}
        for task_id, executor_id in db.execute("SELECT task_id, executor_id FROM losses"):
            state.losses.setdefault(task_id, []).append(executor_id)
        state.executors = {e for (e,) in db.execute("SELECT executor_id FROM executors")}
        return state

    # ---- records (kept in memory until commit) ---------------------------------------------------

    def submitted(self, client_id: str, submit: p.Submit, frame: bytes | None = None) -> None:
        self._pending.jobs.append((client_id, submit, frame))  # encoded by `write` if None
        if frame is not None:  # its payloads, and a little more: one len, not one per task
            self._pending.payload_bytes += len(frame)
            return
        self._pending.payload_bytes += sum(len(task[1]) for task in submit.tasks)
        bulk = submit.bulk or ()
        self._pending.payload_bytes += len(bulk) if type(bulk) is bytes else sum(map(len, bulk))

    def batch_ended(self, result: p.BatchResults) -> None:
        self._pending.batches.append(result)
        values = result.values
        if type(values) is bytes:  # packed as one array
            self._pending.payload_bytes += len(values)
        else:
            self._pending.payload_bytes += sum(len(v) for v in values if v is not None)

    def ended(self, job_id: str, item: list[Any], stream: bool = False) -> None:
        self._pending.results.setdefault(job_id, {})[item[0]] = item
        if stream:
            self._pending.urgent = True
        if type(item[2]) is bytes:
            self._pending.payload_bytes += len(item[2])

    def cancel_requested(self, job_id: str, task_id: str) -> None:
        self._pending.cancels.append((task_id, job_id))

    def executor_joined(self, executor_id: str) -> None:
        self._pending.lost.discard(executor_id)
        self._pending.joined.add(executor_id)

    def executor_lost(self, executor_id: str) -> None:
        self._pending.joined.discard(executor_id)
        self._pending.lost.add(executor_id)

    def client_left(self, client_id: str) -> None:
        self._pending.clients_left.append(client_id)

    def task_lost(self, job_id: str, task_id: str, executor_id: str) -> None:
        self._pending.losses.append((task_id, job_id, executor_id))

    def job_retired(self, job_id: str, task_ids: Iterable[str]) -> None:
        self._pending.retired.append(job_id)
        # The in-memory index goes now: nobody will ask for these results again.
        rows = self._rows
        for task_id in task_ids:
            rows.pop(task_id, None)
        self._batch_rows.pop(job_id, None)

    # ---- reads --------------------------------------------------------------------------------

    def results(self, task_ids: Iterable[str]) -> dict[str, tuple[str, list[Any]]]:
        wanted = set(task_ids)
        found: dict[str, tuple[str, list[Any]]] = {}
        # Recorded and not on disk yet: newest last, so that it wins. A batch leaves
        # `_in_flight` only after its rows are in `_rows`, so no item falls between.
        for records in [*list(self._in_flight), self._pending]:
            for job_id, items in records.results.items():
                for task_id in wanted.intersection(items):
                    found[task_id] = (job_id, items[task_id])
            for result in records.batches:
                for item in _batch_items(result):
                    if item[0] in wanted:
                        found[item[0]] = (result.job_id, item)
        rows = sorted({row for t in wanted - set(found) if (row := self._row_of(t)) is not None})
        with self._db_lock:
            for start in range(0, len(rows), QUERY_CHUNK):
                part = rows[start : start + QUERY_CHUNK]
                marks = ",".join("?" * len(part))
                query = f"SELECT job_id, ids, items FROM results WHERE batch IN ({marks})"
                for job_id, ids, items in self._db.execute(query, part):
                    ids, items = _unpack(ids), _unpack(items)
                    if type(ids) is dict:  # a batch: [values, errors, stats]
                        batch = p.BatchResults(job_id, ids["start"], *items)
                        pairs = [(i[0], i) for i in _batch_items(batch)]
                    else:
                        pairs = [(t, [t, *item]) for (t, _), item in zip(ids, items, strict=True)]
                    for task_id, item in pairs:
                        if task_id in wanted and task_id not in found:
                            found[task_id] = (job_id, item)
        return found

    # ---- writes -------------------------------------------------------------------------------

    def _row_of(self, task_id: str) -> int | None:
        """The results row that holds `task_id`'s item, if one does."""
        row = self._rows.get(task_id)
        if row is not None:
            return row
        job_id, _, number = task_id.rpartition("/")
        batches = self._batch_rows.get(job_id)
        if not batches or not number.isdigit():
            return None
        index = int(number)
        at = bisect.bisect_right(batches, (index, math.inf, math.inf)) - 1  # sorted by start
        if at >= 0 and batches[at][0] <= index < batches[at][1]:
            return batches[at][2]
        return None

    def commit(self) -> None:
        self.write(self.take())

    @property
    def pending(self) -> _Records:
        """What was recorded since the last take."""
        return self._pending

    def take(self) -> _Records | None:
        """What was recorded since the last take, for `write` (None: nothing). Loop thread."""
        records = self._pending
        if records.empty:
            return None
        self._pending = _Records()
        self._in_flight.append(records)
        return records

    def write(self, *taken: _Records | None) -> None:
        """Write records that `take` gave, in take order, in one transaction (any thread)."""
        batches = [records for records in taken if records is not None]
        if not batches:
            return
        with self._db_lock:
            db = self._db
            db.execute("BEGIN")
            try:
                written = [row for records in batches for row in _insert(db, records)]
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            if any(records.retired for records in batches):
                self._vacuum_due = True
            if self._vacuum_due:  # a bounded step per commit, until no page is free
                # (Run as a script: `execute` steps it once, which frees one page.)
                db.executescript(f"PRAGMA incremental_vacuum({VACUUM_PAGES});")
                self._vacuum_due = db.execute("PRAGMA freelist_count").fetchone()[0] > 0
        retired = {job_id for records in batches for job_id in records.retired}
        for row, job_id, task_ids in written:
            if job_id in retired:
                continue  # its rows are deleted already
            if type(task_ids) is tuple:  # a batch: (start, stop)
                start, stop = task_ids
                bisect.insort(self._batch_rows.setdefault(job_id, []), (start, stop, row))
            else:
                self._rows.update(dict.fromkeys(task_ids, row))
        for records in batches:
            self._in_flight.remove(records)

    def close(self) -> None:
        try:
            self.commit()
        finally:
            self._db.close()


@dataclass(eq=False)  # compared by identity: `_in_flight.remove` must not compare payloads
class _Records:
    """What a journal recorded between two commits."""

    # (client id, submit, its frame as it came or None)
    jobs: list[tuple[str, p.Submit, bytes | None]] = field(default_factory=list)
    results: dict[str, dict[str, list[Any]]] = field(default_factory=dict)  # job -> task -> item
    batches: list[p.BatchResults] = field(default_factory=list)
    cancels: list[tuple[str, str]] = field(default_factory=list)  # (task id, job id)
    joined: set[str] = field(default_factory=set)
    lost: set[str] = field(default_factory=set)
    clients_left: list[str] = field(default_factory=list)
    retired: list[str] = field(default_factory=list)  # job ids
    losses: list[tuple[str, str, str]] = field(default_factory=list)  # task, job, executor
    payload_bytes: int = 0  # the arguments and results among them
    urgent: bool = False  # a stream task's result among them (no group commit: see `due`)

    @property
    def empty(self) -> bool:
        return not (
            self.jobs
            or self.results
            or self.batches
            or self.cancels
            or self.joined
            or self.lost
            or self.clients_left
            or self.retired
            or self.losses
        )


class JournalWriter:
    """Commits a journal on a thread of its own, so that the scheduler's loop never waits
    for the disk.

    Discussion: one job of big arguments (two 600,000-int partitions, 6 MB) took ~30-40 ms
    to commit, all of it on the loop, and every stream task that came meanwhile waited it
    out. Now the loop hands records of INLINE_BYTES of payloads or more over (`commit`, a
    ticket back) and goes on; SQLite releases the GIL while it writes. Smaller records are
    committed at once on the loop (~60 us), unless a commit is in flight: they then follow
    it, to keep the order. What must wait for the disk (results to
    clients, acks to executors) waits for its ticket: `fd` becomes readable when a commit
    is done, and `committed()` says how far the writer got.
    """

    def __init__(self, journal: Journal, clock: Callable[[], int] = time.monotonic_ns) -> None:
        self.journal = journal
        self._clock = clock  # for the group commit (`due`)
        self.fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._queue: queue.SimpleQueue[tuple[int, _Records] | None] = queue.SimpleQueue()
        self._issued = 0  # the last ticket handed out (loop thread)
        self._committed_at = 0  # when the last records were taken (loop thread)
        self._done = 0  # the last ticket on disk (writer thread)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="tidal-journal", daemon=True)
        self._thread.start()

    @property
    def waiting(self) -> bool:
        """Whether a commit handed over is not on disk yet."""
        return self._done < self._issued

    @property
    def issued(self) -> int:
        """The newest ticket handed out (on disk already if not `waiting`)."""
        return self._issued

    def due(self, now: int) -> int | None:
        """When what the journal recorded since the last commit should be committed (None:
        nothing was; `now` or earlier: now). See GROUP_COMMIT_NS."""
        pending = self.journal.pending
        if pending.empty:
            return None
        return now if pending.urgent else self._committed_at + GROUP_COMMIT_NS

    def commit(self) -> int | None:
        """Hand what the journal recorded to the writer; the ticket to wait for (None: it
        is on disk already: nothing was recorded, or it was small and nothing waited, and
        it was committed here, at once)."""
        records = self.journal.take()
        if records is None:
            return None
        self._committed_at = self._clock()
        inline = records.payload_bytes < INLINE_BYTES and not self.waiting
        self._issued += 1
        if inline:
            self.journal.write(records)
            self._done = self._issued
            return None
        self._queue.put((self._issued, records))
        return self._issued

    def committed(self) -> int:
        """The last ticket on disk (clears `fd`); raises the writer's error, if it had one."""
        with contextlib.suppress(BlockingIOError):  # nothing new since the last look
            os.eventfd_read(self.fd)
        if self._error is not None:
            raise JournalError(f"the journal {self.journal.path} failed: {self._error}")
        return self._done

    def close(self) -> None:
        """Write what was handed over, stop the thread, close the journal."""
        self._queue.put(None)
        self._thread.join()
        os.close(self.fd)
        self.journal.close()

    def _run(self) -> None:
        stopping = False
        while not stopping:
            # Discussion: everything handed over while the last commit ran goes into the next
            # one (a group commit): under a flood of tiny tasks a commit per pass cost ~35% of
            # their rate (`bench throughput` unchunked); this way commits come as fast as the
            # disk takes them, and no faster.
            work = [self._queue.get()]
            with contextlib.suppress(queue.Empty):
                while True:
                    work.append(self._queue.get_nowait())
            stopping = None in work
            handed = [item for item in work if item is not None]
            if not handed:
                continue
            try:
                self.journal.write(*(records for _, records in handed))
            except BaseException as exc:  # loud: the loop raises it at its next look
                log.exception("the journal writer failed")
                self._error = exc
                os.eventfd_write(self.fd, 1)
                return
            self._done = handed[-1][0]
            os.eventfd_write(self.fd, 1)


def _stored_submit(frame: bytes) -> p.Message:
    """A journaled submit, as it came. One written before protocol 7 or 13 lacks the fields
    they added at its end (`bulk`, `kwargs`): they are nil, as their defaults say."""
    try:
        return p.decode(frame)
    except p.ProtocolError:
        body = p.unpack_value(frame)
        missing = len(p.Submit._checks) + 1 - len(body) if type(body) is list else 0
        if not (0 < missing <= 2 and body[0] == p.Submit.op):  # (a list of 9 or 10 items)
            raise
        return p.decode(_pack([*body, *[None] * missing]))


def _insert(db: sqlite3.Connection, records: _Records) -> list[tuple[int, str, Any]]:
    """One batch of records into an open transaction; (row, job id, what it holds: the
    items by task id, or a batch's (start, stop)) of each results row."""
    # Discussion: a job's submit as it came when the server has it: encoding a bulk map's
    # again cost ~13% of the scheduler's busy time in a map of 200,000 no-ops.
    # Discussion: a statement runs only if it has rows: most commits hold results alone,
    # and nine empty `executemany` calls cost ~60-90 us a commit (~3 us a no-op task).
    jobs = [
        (s.job_id, client_id, p.encode(s) if frame is None else frame)
        for client_id, s, frame in records.jobs
    ]
    _many(db, "INSERT OR IGNORE INTO jobs VALUES (?, ?, ?)", jobs)
    written = []
    for job_id, items in records.results.items():
        ids = _pack([[task_id, item[1]] for task_id, item in items.items()])
        rest = _pack([item[1:] for item in items.values()])
        cursor = db.execute(
            "INSERT INTO results (job_id, ids, items) VALUES (?, ?, ?)", (job_id, ids, rest)
        )
        written.append((cursor.lastrowid, job_id, items))
    for result in records.batches:
        ids = _pack(
            {
                "start": result.start,
                "count": batches.values_count(result.values),
                "failed": [index for index, _ in result.errors],
            }
        )
        rest = _pack([result.values, result.errors, result.stats])
        cursor = db.execute(
            "INSERT INTO results (job_id, ids, items) VALUES (?, ?, ?)", (result.job_id, ids, rest)
        )
        stop = result.start + batches.values_count(result.values)
        written.append((cursor.lastrowid, result.job_id, (result.start, stop)))
    _many(db, "INSERT OR IGNORE INTO cancels VALUES (?, ?)", records.cancels)
    _many(db, "INSERT INTO losses VALUES (?, ?, ?)", records.losses)
    _many(db, "INSERT OR IGNORE INTO executors VALUES (?)", [(e,) for e in records.joined])
    _many(db, "DELETE FROM executors WHERE executor_id = ?", [(e,) for e in records.lost])
    for client_id in records.clients_left:
        jobs_of = "SELECT job_id FROM jobs WHERE client_id = ?"
        db.execute(f"DELETE FROM results WHERE job_id IN ({jobs_of})", (client_id,))
        db.execute(f"DELETE FROM cancels WHERE job_id IN ({jobs_of})", (client_id,))
        db.execute(f"DELETE FROM losses WHERE job_id IN ({jobs_of})", (client_id,))
        db.execute("DELETE FROM jobs WHERE client_id = ?", (client_id,))
    # Last: a job retires after its results are in (they came in the same steps, before).
    retired = [(job_id,) for job_id in records.retired]
    for table in ("results", "cancels", "losses", "jobs"):
        _many(db, f"DELETE FROM {table} WHERE job_id = ?", retired)
    return written


def _many(db: sqlite3.Connection, statement: str, rows: list[Any]) -> None:
    """`executemany`, only if there are rows (see `_insert`)."""
    if rows:
        db.executemany(statement, rows)


def _outcomes(job_id: str, ids: Any) -> list[tuple[str, str]]:
    """(task id, outcome) of each task a results row holds: a list of such pairs, or a
    batch's `{"start", "count", "failed"}`."""
    if type(ids) is not dict:
        return [(task_id, outcome) for task_id, outcome in ids]
    failed = set(ids["failed"])
    indices = range(ids["start"], ids["start"] + ids["count"])
    return [(f"{job_id}/{i}", "failed" if i in failed else "finished") for i in indices]


def _batch_items(result: p.BatchResults) -> list[list[Any]]:
    """A batch's results as result items, one per task; each failed with the reason if the
    executor's packed values do not split (it said how many they were: that many fail)."""
    try:
        return batches.batch_items(
            result.job_id, result.start, result.values, result.errors, result.stats
        )
    except p.ProtocolError as exc:
        error = ["ProtocolError", f"the executor's results were unreadable: {exc}", ""]
        stop = result.start + batches.values_count(result.values)
        return [
            [f"{result.job_id}/{i}", "failed", None, error, result.stats]
            for i in range(result.start, stop)
        ]


def _unpack(blob: bytes) -> list[Any]:
    return msgpack.unpackb(blob, raw=False, strict_map_key=False)


def _pack(value: Any) -> bytes:
    # Result items are the scheduler's own data (payloads stay bytes), so they always pack.
    return msgpack.packb(value, use_bin_type=True)

"""Chunks and stealing: many small tasks per message, and moving them to idle executors.

Chunks (after SCEEM). A job submitted with a chunksize has its tasks launched in groups: when
a policy launches one of its pending tasks, the core takes that task and the job's next
pending ones, up to the chunk size, and sends them as one `launch_chunk`. On the executor a
chunk is one kernel task that runs its subtasks in order (a suspension point between them,
and at their records); their results come back in batches (`chunk_results`), each completing
its own future. The scheduler keeps each chunk's unreported subtasks: that is what is
requeued if the chunk's executor is lost or the chunk is killed, and what may be stolen.

With chunksize "auto", chunks are sized from the job's measured subtask time toward
TARGET_CHUNK_NS of work, starting small while nothing is measured yet.

Stealing. When an executor has a free slot and nothing is pending, the stealer picks the
chunk with the most subtasks left (SCEEM's greedy rule; or, configurable, the chunk with the
longest-waiting subtasks, i.e. the oldest) and asks its executor for half of them. The
executor gives up only subtasks that have not started (`stolen`), atomically in its hub, and
the scheduler launches them as a new chunk on the thief: nothing runs twice, nothing is lost.
Unlike SCEEM's greedy rule, a steal must pay for itself: skipped when the work it would move
is under STEAL_MIN_GAIN_NS (a conservative round-trip cost, as Dask's stealing does), at most
one steal in flight per chunk, and each executor steals at most once per STEAL_INTERVAL_NS.
Steals are `Steal` decisions the core validates like any other, so they work under every
policy; `SchedulerCore(stealing=False)` turns them off.
"""

from __future__ import annotations

import contextlib
import heapq
import math
from typing import Any

from tidal.runtime import batches
from tidal.runtime import protocol as p
from tidal.scheduler import decisions as d
from tidal.scheduler.records import ExecutorRecord, Job, Records, SpanSubtasks, Task, TaskState
from tidal.scheduler.records.spans import batch_errors, values_count_or_none, values_fit

__all__ = [
    "TARGET_CHUNK_NS",
    "Stealer",
    "check_chunksize",
    "chunk_size",
    "on_results",
    "on_stolen",
    "start_steal",
    "validate_steal",
]

# Discussion: ~20 ms of work per chunk keeps per-message costs (~0.2 ms a round trip here)
# near 1% while a stream task still finds a boundary between subtasks within a subtask.
TARGET_CHUNK_NS = 20_000_000
FIRST_CHUNK = 16  # "auto" before any subtask of the job has been measured
MAX_CHUNK = 10_000
SUBTASK_OVERHEAD_NS = 3_000  # in-chunk cost per subtask besides running it
# A steal costs a round trip to the victim and one to the thief, plus the messages: ~1 ms
# each way on a loaded 2-core machine. Only move work worth several times that.
STEAL_MIN_GAIN_NS = 5_000_000
STEAL_INTERVAL_NS = 5_000_000


def check_chunksize(options: dict[str, Any] | None) -> str | None:
    """Why a submission's options are wrong, or None."""
    if not options:
        return None
    unknown = set(options) - {"chunksize", "keep"}
    if unknown:  # keys of any types: sorted by repr, as mixed types do not compare
        return f"unknown job options {sorted(unknown, key=repr)} (known: chunksize, keep)"
    keep = options.get("keep", False)
    if type(keep) is not bool:
        return f"keep must be true or false, not {keep!r}"
    size = options.get("chunksize")
    if keep and size is not None:
        return "a job that keeps its results is not chunked: leave chunksize out"
    if size is None or size == "auto" or (type(size) is int and size >= 1):
        return None
    return f"chunksize must be an int >= 1 or 'auto', not {size!r}"


def per_subtask_ns(job: Job) -> float:
    """What one subtask of `job` costs in a chunk, measured: a bulk job's time is a batch's
    wall time over its tasks (on_span_batch), the chunk's own costs in it; a classic chunk's
    subtask reports its function's time alone, to which SUBTASK_OVERHEAD_NS is added.

    Discussion: counted twice for bulk jobs, the overhead (3 us, ~2x a no-op's measured
    time) made their chunks ~4,400 no-ops (~7 ms of work) instead of TARGET_CHUNK_NS'."""
    measured = job.subtask_ns
    if measured is None:  # nothing measured yet: the overhead alone, for any job
        return SUBTASK_OVERHEAD_NS
    return measured if job.payloads is not None else measured + SUBTASK_OVERHEAD_NS


def chunk_size(records: Records, job: Job) -> int:
    """How many subtasks the next chunk of `job` gets."""
    if job.chunksize != "auto":
        return int(job.chunksize)
    if job.subtask_ns is None:
        return FIRST_CHUNK
    size = TARGET_CHUNK_NS / max(1.0, per_subtask_ns(job))
    # Leave work for every executor: no chunk over half an executor's fair share.
    executors = max(1, sum(e.alive for e in records.executors.values()))
    share = math.ceil(records.pending.count_of_job(job.job_id) / (2 * executors))
    return max(1, min(MAX_CHUNK, int(size), max(share, 1)))


def on_results(records: Records, executor: ExecutorRecord, msg: p.ChunkResults) -> None:
    """Complete each reported subtask, exactly once."""
    chunk = records.tasks.get(msg.chunk_id)
    if chunk is None or chunk.subtasks is None or chunk.executor_id != executor.executor_id:
        return
    for item in msg.items:
        if not (isinstance(item, list) and len(item) == 5 and isinstance(item[0], str)):
            continue
        task_id, outcome, value, error, stats = item
        task = chunk.subtasks.pop(task_id, None)
        if task is None or task.state is TaskState.DONE:
            continue  # stolen, cancelled, or a duplicate
        records.subtask_ended(task, stats)
        if outcome == "finished":
            records.complete(task, "finished", value, None)
        else:
            records.complete(task, "failed", None, error if isinstance(error, list) else None)


def on_batch(records: Records, executor: ExecutorRecord, msg: p.ChunkBatch) -> None:
    """A chunk_batch: for a span chunk, see scheduler/records/spans.py; for a chunk whose
    tasks have records (adopted after a restart, when the scheduler knew them one by one),
    the chunk_results it stands for."""
    chunk = records.tasks.get(msg.chunk_id)
    if chunk is None or chunk.subtasks is None or chunk.executor_id != executor.executor_id:
        return
    if isinstance(chunk.subtasks, SpanSubtasks):
        records.on_span_batch(executor, chunk, msg)
        return
    count = values_count_or_none(msg.values)
    stop = msg.start + (count or 0)
    errors = batch_errors(msg.errors, msg.start, stop)
    items = None
    if count is not None and errors is not None and values_fit(msg.values, errors, msg.start):
        with contextlib.suppress(p.ProtocolError):  # packed values that do not split
            items = batches.batch_items(msg.job_id, msg.start, msg.values, msg.errors, {})
    if items is None:
        records.peer_warning(
            f"executor {executor.executor_id}: dropped a malformed chunk_batch of {msg.chunk_id}"
        )
        return
    on_results(records, executor, p.ChunkResults(chunk.task_id, items))


def on_stolen(records: Records, executor: ExecutorRecord, msg: p.Stolen) -> None:
    """The victim gave these up: launch them as a new chunk on the thief (or requeue)."""
    chunk = records.tasks.get(msg.chunk_id)
    steal = records.steals_in_flight.pop(msg.chunk_id, None)
    if chunk is None or chunk.subtasks is None or steal is None:
        return
    thief_id, asked = steal
    if isinstance(chunk.subtasks, SpanSubtasks):
        thief = records.executors.get(thief_id)
        records.on_stolen_span(chunk, thief, asked, msg.task_ids)
        return
    moved = []
    for task_id in msg.task_ids:
        task = chunk.subtasks.pop(task_id, None) if isinstance(task_id, str) else None
        if task is not None and task.state is not TaskState.DONE:
            moved.append(task)
    if not moved:
        return
    thief = records.executors.get(thief_id)
    if thief is None or not thief.alive or thief.slot_task is not None:
        records.requeue(moved, attempt=False)
        return
    records.launch_stolen(thief, moved)


def validate_steal(records: Records, chunk: Task, decision: d.Steal) -> str | None:
    """None if the steal may go ahead now, else why not."""
    thief = records.executors.get(decision.executor_id)
    if chunk.subtasks is None:
        return "not a chunk"
    victim = records.executors.get(chunk.executor_id or "")
    if victim is None or not victim.alive or chunk.state in (TaskState.KILLING, TaskState.DONE):
        return "the chunk is not on a live executor"
    if thief is None or not thief.alive or thief is victim:
        return "no such live executor to steal for"
    if thief.busy or victim.busy:
        return "the thief or the victim is busy (silent: a long C call)"
    if thief.slot_task is not None:
        return "the thief's slot is busy"
    if chunk.task_id in records.steals_in_flight:
        return "a steal from this chunk is already under way"
    if decision.count < 1 or decision.count >= len(chunk.subtasks):
        return f"cannot steal {decision.count} of {len(chunk.subtasks)} subtasks"
    return None


def start_steal(records: Records, chunk: Task, decision: d.Steal) -> None:
    """Ask the chunk's executor for `decision.count` of its subtasks, for the thief."""
    victim = records.executors[chunk.executor_id]
    records.steals_in_flight[chunk.task_id] = (decision.executor_id, decision.count)
    records.send(victim, p.Steal(chunk.task_id, decision.count, records.now))


class Stealer:
    """Proposes steals for idle executors (see the module docstring)."""

    def __init__(self, rule: str = "largest") -> None:
        if rule not in ("largest", "oldest"):
            raise ValueError(f"unknown steal rule {rule!r}: use 'largest' or 'oldest'")
        self.rule = rule
        self._last_steal: dict[str, int] = {}

    def propose(self, records: Records) -> list[d.Steal]:
        # Discussion: this runs after every report. At 1,000 executors running their last
        # chunks, walking each executor's tasks through generators and ranking every
        # candidate anew for every thief cost ~0.7 ms a report when an executor was idle,
        # ~3 ms at p99. Now: one pass over the executors' records (still ~0.3 ms at 1,000
        # busy executors; an index of chunks would be next), and only the best few
        # candidates ranked, by heapq's nlargest and nsmallest, which are stable like
        # `sorted`: ties go to the candidate found first, as they did with `max` and `min`.
        # Each thief takes the best one left that is not its own; only the thieves' own
        # chunks can be skipped, so the ranking needs at most that many besides one per
        # thief.
        if records.pending.count():
            return []  # idle executors will get pending work first
        now = records.now
        idle = [
            e
            for e in records.executors.values()
            if e.slot_task is None
            and not e.queued
            and e.alive
            and now - self._last_steal.get(e.executor_id, -STEAL_INTERVAL_NS) >= STEAL_INTERVAL_NS
        ]
        if not idle:
            return []
        candidates = self._candidates(records)
        thieves = {e.executor_id for e in idle}
        enough = len(idle) + sum(c[0].executor_id in thieves for c in candidates)
        if self.rule == "largest":
            ranked = heapq.nlargest(enough, candidates, key=lambda c: (c[1], -c[0].seq))
        else:  # the chunk whose tasks have waited longest
            ranked = heapq.nsmallest(
                enough,
                candidates,
                key=lambda c: (_oldest(c[0]), c[0].seq),
            )
        taken = [False] * len(ranked)
        first_left = 0  # every candidate before this one is taken
        decisions = []
        for thief in idle:
            # Never its own chunk (a suspended one can sit on an idle executor).
            for i in range(first_left, len(ranked)):
                chunk, count = ranked[i]
                if taken[i] or chunk.executor_id == thief.executor_id:
                    continue
                taken[i] = True
                while first_left < len(ranked) and taken[first_left]:
                    first_left += 1
                self._last_steal[thief.executor_id] = now
                decisions.append(d.Steal(chunk.task_id, thief.executor_id, count))
                break
        return decisions

    @staticmethod
    def _candidates(records: Records) -> list[tuple[Task, int]]:
        """Chunks worth stealing from, with how many subtasks to take: in the order of their
        executors, and on each, slot, queue, then suspended ones (`ExecutorRecord.tasks`)."""
        candidates = []
        in_flight, killing = records.steals_in_flight, TaskState.KILLING
        for executor in records.executors.values():
            slot = executor.slot_task
            if executor.queued or executor.suspended:
                here = [t for t in executor.tasks() if t.subtasks is not None]
            elif slot is not None and slot.subtasks is not None:
                here = [slot]
            else:
                continue
            if not executor.alive:
                continue
            for chunk in here:
                if chunk.task_id in in_flight or chunk.state is killing:
                    continue
                # The one running now cannot be stolen; only half of the rest is taken.
                count = (len(chunk.subtasks) - 1) // 2
                if count >= 1 and count * per_subtask_ns(chunk.job) >= STEAL_MIN_GAIN_NS:
                    candidates.append((chunk, count))
        return candidates


def _oldest(chunk: Task) -> int:
    """When the longest-waiting task of `chunk` was submitted (scheduler clock)."""
    if isinstance(chunk.subtasks, SpanSubtasks):  # a bulk job's: all at once
        return chunk.job.accepted_at
    return min(t.submitted_at for t in chunk.subtasks.values())

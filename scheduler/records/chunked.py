"""Chunks in the books: forming a chunk of a job's pending tasks, launching it, taking its
subtasks' ends, stealing from it, and ending it (scheduler/chunks.py decides when).

`ChunkBooks` is a part of `Records` (scheduler/records/books.py), whose tables and steps
(`place`, `send`, `settle`, `enter`, ...) these use; a bulk job's span chunks are
scheduler/records/spans.py's.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from tidal.runtime import protocol as p
from tidal.scheduler.records import spans
from tidal.scheduler.records.tables import (
    ExecutorRecord,
    Task,
    TaskState,
    lane_suspensions,
    stat_count,
)

__all__ = ["ChunkBooks"]


class ChunkBooks:
    """The chunks part of `Records` (see the module docstring)."""

    def launch_chunk(self, executor: ExecutorRecord, chunk: Task) -> None:
        """Launch a chunk formed by `form_chunk` on `executor`."""
        if isinstance(chunk.subtasks, spans.SpanSubtasks):
            self.launch_span_chunk(executor, chunk)
            return
        self.place(executor, chunk)
        job = chunk.job
        subtasks = [[t.task_id, t.payload] for t in chunk.subtasks.values()]
        message = p.LaunchChunk(
            chunk.task_id,
            job.fn,
            job.main_path,
            subtasks,
            chunk.attempt,
            job.priority,
            self.launch_stamp(chunk),
            suspensions_left=lane_suspensions(chunk),
        )
        self.send(executor, message)

    def form_chunk(
        self,
        first: Task,
        size: int,
        reserved: Collection[str] = (),
        tasks: list[Task] | None = None,
    ) -> Task:
        """Group `first` and the job's next pending tasks, up to `size` (or exactly `tasks`),
        into a new chunk; tasks in `reserved` (launched elsewhere by the same decisions) are
        left out. Launch it with `launch_chunk`."""
        job = first.job
        if first.piece is not None:
            return self.form_span_chunk(first, size)
        if tasks is None:
            tasks = [first]
            for task in self.pending.iterate(job.priority):
                if len(tasks) >= size:
                    break
                if (
                    task.job is job
                    and task is not first
                    and task.piece is None  # a bulk job's piece forms span chunks of its own
                    and task.task_id not in reserved
                ):
                    tasks.append(task)
        job.chunks += 1
        # After a restart, chunk ids carry the restart count: an executor coming back may hold
        # a chunk numbered by the scheduler before.
        number = f"{self.restarts}.{job.chunks}" if self.restarts else str(job.chunks)
        return self.new_chunk(f"{job.job_id}#{number}", tasks)

    def new_chunk(self, chunk_id: str, tasks: list[Task]) -> Task:
        """Record a chunk of `tasks` (one job's) under `chunk_id`; they leave the pending state."""
        first = tasks[0]
        chunk = Task(chunk_id, first.job, b"", first.seq, self.now)
        chunk.kills = max(task.kills for task in tasks)  # the kill cap follows its tasks
        chunk.subtasks = {}
        for task in tasks:
            if task.state is TaskState.PENDING:
                self.pending.removed(task)
            task.state = TaskState.LAUNCHED
            task.chunk = chunk
            chunk.subtasks[task.task_id] = task
        self.enter(chunk)
        return chunk

    def subtask_ended(self, task: Task, stats: Any) -> None:
        """A chunked task reported its end: smooth its running time into its job's."""
        running = stat_count(stats, "running_ns", 0) if isinstance(stats, dict) else 0
        task.running_ns = running
        job = task.job
        job.subtask_ns = running if job.subtask_ns is None else 0.9 * job.subtask_ns + 0.1 * running

    def launch_stolen(self, thief: ExecutorRecord, tasks: list[Task]) -> None:
        """Launch subtasks a victim gave up as a new chunk on `thief`."""
        self.launch_chunk(thief, self.form_chunk(tasks[0], len(tasks), tasks=tasks))
        self.steal_count += 1

    def end_chunk(
        self,
        chunk: Task,
        error: list[str] | None = None,
        started: bool = True,
        lost_on: str | None = None,
        on: ExecutorRecord | None = None,
    ) -> None:
        """A chunk ended (finished, failed, killed, or lost with executor `lost_on`; `on` the
        executor that reports its end, if not the one it was launched on): settle the tasks
        it left."""
        if on is not None:
            chunk.executor_id = on.executor_id
        chunk.state = TaskState.DONE
        self.steals_in_flight.pop(chunk.task_id, None)  # a late `stolen` is ignored
        subtasks = chunk.subtasks
        if isinstance(subtasks, spans.SpanSubtasks) and error is None and lost_on is None:
            chunk.subtasks = {}
            spans.ended_span(chunk)
            self.requeue_span(chunk, subtasks, started)  # as pieces: no record per task
            return
        left = [t for t in subtasks.values() if t.state is not TaskState.DONE]
        chunk.subtasks = {}
        spans.ended_span(chunk)
        self.settle(left, error=error, started=started, lost_on=lost_on)

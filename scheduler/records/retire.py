"""Forgetting what no one needs: a job leaves the books once it is done and its client holds
none of its futures any more (it said so, `release`) or has left.

A job's records (its tasks, and the chunks and pieces it was run in) are listed in
`Job.ids` as they are made (`enter`). Retiring a job drops them from `Records.tasks` and the
job from `Records.jobs`, and notes `JobRetired`, on which the journal deletes its rows. A
record still on an executor (a chunk running cancelled subtasks, a task being killed) stays
until it leaves there (`left_executor`): its executor's slot is freed by its report.

Discussion: why the client's word, not the result's delivery. A result sent on a connection
that then drops is asked for again when the client reattaches (runtime/client.py): until
the client says it no longer holds the future, it may. A client that holds a million
futures keeps a million records here, as a Dask scheduler keeps the keys a client wants.
"""

from __future__ import annotations

from collections.abc import Iterable

from tidal.scheduler import events as ev
from tidal.scheduler.records.tables import Job, Task, TaskState

DONE = TaskState.DONE

__all__ = ["LANE_GRAVE_NS", "MAX_LANE_GRAVES", "Retirement"]

# How long a stream job that is gone is remembered against a lane's late forward of it
# (runtime/lanes.py): an executor that read its lane after a stall longer than this (a C
# call, a SIGSTOP) could run such a job again, its result going to no future.
LANE_GRAVE_NS = 60_000_000_000
MAX_LANE_GRAVES = 65_536


class Retirement:
    """The retiring of jobs: a part of `Records` (scheduler/records/books.py). What a step
    makes retirable is retired at its end (`settle_retired`), never in its middle, where
    the step may still be using the records."""

    def enter(self, task: Task) -> None:
        """Put a new record in the books, listed with its job for retiring."""
        self.tasks[task.task_id] = task
        task.job.ids.append(task.task_id)

    def release(self, client_id: str, job_ids: Iterable[str]) -> None:
        """`client_id` holds no future of these jobs any more: retire each once done."""
        for job_id in job_ids:
            job = self.jobs.get(job_id) if type(job_id) is str else None
            if job is None or job.client_id != client_id:
                continue  # retired already, or another client's: not its to release
            job.released = True
            self.ended(job)

    def client_left(self, client_id: str) -> list[str]:
        """Its client said goodbye: every job of its is released. Returns the ids of its
        tasks still to run, for the caller to cancel (their jobs retire when they end)."""
        to_cancel: list[str] = []
        for job in [j for j in self.jobs.values() if j.client_id == client_id]:
            job.released = True
            self.ended(job)
            if job.done:
                continue
            if job.ended is not None:  # a bulk job: its tasks are ranges, not records
                to_cancel += [f"{job.job_id}/{i}" for i, end in enumerate(job.ended) if not end]
                continue
            for task_id in job.ids:
                task = self.tasks.get(task_id)
                if task is not None and task.subtasks is None and task.state is not DONE:
                    to_cancel.append(task_id)
        return to_cancel

    def ended(self, job: Job) -> None:
        """`job` may be done: if it is released too, it retires at the step's end."""
        if job.released and job.done and not job.retired and not self.needed(job):
            self.retire_due.append(job)

    def settle_retired(self) -> None:
        """At a step's end: retire the jobs it made retirable, and drop the records of retired
        jobs that left their executors in it."""
        due, self.retire_due = self.retire_due, []
        for job in due:
            if not job.retired:
                self._retire(job)
        leaving, self.leaving = self.leaving, []
        for task in leaving:
            if self.tasks.get(task.task_id) is task and not _on_an_executor(task):
                del self.tasks[task.task_id]

    def bury(self, job_id: str) -> None:
        """Remember for LANE_GRAVE_NS that `job_id` is gone (retired, or released or
        cancelled before the scheduler heard of it): a lane's late forward of it is refused
        (scheduler/lanes.py), not taken for a new job. At most MAX_LANE_GRAVES."""
        graves = self.lane_graves
        graves.pop(job_id, None)
        graves[job_id] = self.now + LANE_GRAVE_NS
        while graves:
            first = next(iter(graves))
            if graves[first] > self.now and len(graves) <= MAX_LANE_GRAVES:
                break
            del graves[first]

    def buried(self, job_id: str) -> bool:
        return self.lane_graves.get(job_id, 0) > self.now

    def _retire(self, job: Job) -> None:
        """Drop `job` and its records (those still on an executor: when they leave it)."""
        job.retired = True
        if job.priority == "stream":
            self.bury(job.job_id)
        self.drop_kept(job)  # its executors delete the results they kept for it
        self.jobs.pop(job.job_id, None)
        self.id_prefixes.discard(job.job_id)
        tasks = self.tasks
        for task_id in job.ids:
            task = tasks.get(task_id)
            if task is not None and task.job is job and not _on_an_executor(task):
                del tasks[task_id]
        self.note(ev.JobRetired(job.job_id, tuple(job.ids)))
        job.ids = []
        job.payloads = ()
        job.spans, job.pieces = [], []


def _on_an_executor(task: Task) -> bool:
    return task.executor_id is not None and task.state is not DONE

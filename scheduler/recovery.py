"""Recovery: rebuilding the scheduler's state after a restart, and taking back what
executors and clients report when they come back (Mesos-style soft state).

They work on the scheduler's records (scheduler/records.py); the core calls them at four
points:

* `restore(records, state, grace_ns, path)` when it is built on a journal that holds jobs:
  every job comes back; tasks that ended are counted, tasks that did not become UNCLAIMED
  (nobody knows yet where they are), and cancellations asked for before the restart are carried out.
* `reclaim(records, executor, holding, mine)` when an executor says hello with what it holds
  (`hello.holding`): results it could not be sure we had are taken once, and each task or
  chunk it holds is adopted where it is (same attempt, its state as the executor says) if
  it is ours to take: UNCLAIMED after a restart, or one this same executor held before
  it said hello again. Anything else it holds is stale (its task ended, or was queued
  again and runs elsewhere) and is killed there.
* `end_grace(records)` when every executor known before the restart said hello again, or
  the grace period (`grace_ns` after the restore) ran out: whatever is still UNCLAIMED is queued.
* `on_reattach(records, client_id, msg, results)` when a client that reconnected lists the tasks it
  still waits for: results we have go to it (`results` looks them up in the journal), the
  others will come,
  and the ids we never heard of are named so that it submits those jobs again.

Each task's future still completes exactly once: a result is taken only for a task that
has not ended, and an adopted task reports under the attempt the executor runs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from tidal.runtime import protocol as p
from tidal.scheduler import events as ev
from tidal.scheduler.records import ExecutorRecord, Records, Task, TaskState, stat_count, task_ids

if TYPE_CHECKING:
    from tidal.scheduler.journal import JournalState

# What `on_reattach` asks the journal: task id -> (job id, result item), for those it has.
ResultLookup = Callable[[list[str]], dict[str, tuple[str, list[Any]]]]

log = logging.getLogger("tidal.scheduler")

__all__ = ["end_grace", "on_reattach", "reclaim", "restore"]

TASK_STATES = ("running", "resuming", "queued", "suspended")
RESULT_STATES = ("finished", "failed")
# Adopted in this order, so that the task holding the executor's slot takes it first.
_ADOPT_ORDER = {state: i for i, state in enumerate(TASK_STATES)}
# What the executor says it holds a task as -> the state it is adopted in.
_ADOPTED_AS = {
    "running": TaskState.RUNNING,
    "resuming": TaskState.RESUMING,
    "queued": TaskState.LAUNCHED,
    "suspended": TaskState.SUSPENDED,
}


def restore(
    records: Records,
    state: JournalState,
    grace_ns: int,
    path: str | None,
    results: ResultLookup = lambda task_ids: {},
) -> None:
    """Rebuild jobs and unfinished tasks from what the journal held (see the docstring).

    A job that keeps its results (scheduler/records/lineage.py) gets records for its ended
    tasks too, with where their results are kept (`results` looks their items up): other
    tasks may take them as inputs."""
    records.restarts = state.restarts
    cancelled = []
    for client_id, submit in state.jobs:
        ended = [task_id for task_id in task_ids(submit) if task_id in state.outcomes]
        keep = (submit.options or {}).get("keep") is True
        tasks = records.add_job(client_id, submit, skip=set() if keep else set(ended))
        job = records.jobs[submit.job_id]
        for task_id in ended:
            job.count_end(state.outcomes[task_id])
        if keep:
            done = set(ended)
            kept_ended = [t for t in tasks if t.task_id in done]
            tasks = [t for t in tasks if t.task_id not in done]
            _restore_kept(records, kept_ended, results([t.task_id for t in kept_ended]))
        for task in tasks:
            records.unclaimed(task, cancelled=task.task_id in state.cancels)
            task.lost_on = list(state.losses.get(task.task_id, ())) or ()  # counted on from there
            if task.cancel_requested:
                cancelled.append(task)
    for task in cancelled:  # asked for before the restart: done, wherever it may still run
        records.complete(task, "cancelled", None, None)
    records.awaited = set(state.executors)
    records.reclaim_until = records.now + grace_ns
    log.info(
        "restored %d jobs from journal %s (restart %d); %d tasks wait for their executors",
        len(state.jobs),
        path,
        records.restarts,
        records.unclaimed_count(),
    )


def _restore_kept(
    records: Records, tasks: list[Task], items: dict[str, tuple[str, list[Any]]]
) -> None:
    """Ended tasks of a job that keeps its results: done, kept where their items say."""
    for task in tasks:
        task.state = TaskState.DONE
        _, item = items.get(task.task_id, ("", [task.task_id, "failed", None, None, {}]))
        value, stats = item[2], item[4] if type(item[4]) is dict else {}
        if item[1] == "finished" and type(value) is bytes and type(stats.get("executor_id")) is str:
            task.kept, task.executor_id = value, stats["executor_id"]
            task.kept_bytes = stat_count(stats, "kept_bytes", 0)
            records.keep_on(task, task.executor_id)


def end_grace(records: Records) -> None:
    """Queue the tasks no executor claimed; forget the executors that did not come back."""
    records.reclaim_until = None
    for executor_id in sorted(records.awaited):
        records.note(ev.ExecutorLost(executor_id, "it did not come back after the restart"))
        records.lose_kept(executor_id)  # the results it kept are computed again
    records.awaited = set()
    unclaimed = [t for t in records.tasks.values() if t.state is TaskState.UNCLAIMED]
    if unclaimed:
        log.info("queueing %d tasks no executor reported after the restart", len(unclaimed))
    # The same attempt: whether they ever ran, nobody knows.
    records.requeue(unclaimed, attempt=False)
    records.admit_waiting()  # inputs kept where no one came back are computed again


def reclaim(
    records: Records, executor: ExecutorRecord, holding: Any, mine: dict[str, Task]
) -> None:
    """Take back what a (re)joining executor holds; see the module docstring.

    `mine` maps the ids of the tasks this same executor held in our books before its hello
    (it said hello while we counted it alive); those it claims are removed from it.
    """
    if not holding:
        return
    results, held = [], []
    for item in holding if isinstance(holding, list | tuple) else [holding]:
        if not (
            type(item) is list
            and len(item) == 4
            and type(item[0]) is str
            and type(item[1]) is int
            and item[2] in TASK_STATES + RESULT_STATES
        ):
            records.peer_warning(  # rate-limited: a hello may list thousands
                f"executor {executor.executor_id}: dropped a malformed holding item {item!r:.80}"
            )
            continue
        (results if item[2] in RESULT_STATES else held).append(item)
    # Subtasks' results before their chunks' own, results before the tasks held: a result
    # decides a task for good.
    results.sort(key=lambda item: _is_chunk(records.tasks.get(item[0])))
    for task_id, attempt, outcome, detail in results:
        _take_result(records, executor, task_id, attempt, outcome, detail, mine)
    held.sort(key=lambda item: _ADOPT_ORDER[item[2]])
    for task_id, attempt, state, detail in held:
        task = _claimable(records, task_id, attempt, detail, mine)
        if task is None:
            log.info(
                "executor %s holds %s (attempt %d), which is not ours to take: killing it",
                executor.executor_id,
                task_id,
                attempt,
            )
            records.send(executor, p.Kill(task_id, records.now))
            continue
        records.adopt(executor, task, _ADOPTED_AS[state], attempt)
        mine.pop(task.task_id, None)


def _is_chunk(task: Task | None) -> bool:
    return task is not None and task.subtasks is not None


def _take_result(
    records: Records,
    executor: ExecutorRecord,
    task_id: str,
    attempt: int,
    outcome: str,
    detail: Any,
    mine: dict[str, Task],
) -> None:
    """A result the executor sent and never saw acknowledged: taken if the task is open."""
    if not (type(detail) is list and len(detail) == 3 and isinstance(detail[2], dict)):
        records.peer_warning(
            f"executor {executor.executor_id}: dropped a malformed result of {task_id}"
        )
        return
    value, error, stats = detail
    if outcome == "finished" and type(value) is not bytes:
        records.peer_warning(
            f"executor {executor.executor_id}: a result of {task_id} without its payload"
        )
        return
    if outcome == "failed" and not (
        type(error) is list and len(error) == 3 and all(type(e) is str for e in error)
    ):
        records.peer_warning(
            f"executor {executor.executor_id}: a failed result of {task_id} without its error"
        )
        return
    task = records.find_task(task_id)
    if task is None or task.state is TaskState.DONE:
        return  # ended already (its result is journaled), or never ours
    chunk = task.chunk
    if task.subtasks is not None:  # a chunk's own end: what it did not report runs again
        if mine.get(task_id) is task and task.attempt == attempt:
            del mine[task_id]
            records.end_chunk(task, on=executor)
        return
    if task.state is TaskState.UNCLAIMED:
        pass
    elif chunk is not None and mine.get(chunk.task_id) is chunk and task_id in chunk.subtasks:
        del chunk.subtasks[task_id]
    elif mine.get(task_id) is task and task.attempt == attempt:
        del mine[task_id]
    else:
        return  # a stale attempt: the task was queued again and runs elsewhere
    records.take_result(
        executor, task, outcome, value if outcome == "finished" else None, error, stats
    )


def _claimable(
    records: Records, task_id: str, attempt: int, detail: Any, mine: dict[str, Task]
) -> Task | None:
    """The task (or chunk) the executor holds, if it is ours to adopt; else None."""
    task = records.tasks.get(task_id)
    if task is not None and mine.get(task_id) is task:
        # Ours before its hello: adopt it unless we had decided otherwise meanwhile.
        if task.attempt == attempt and task.state is not TaskState.KILLING:
            return task
        return None
    if detail is None:
        if task is not None and task.subtasks is None and task.state is TaskState.UNCLAIMED:
            return task
        return None
    # A chunk: after a restart we know its subtasks, not the chunk itself.
    if task is not None or type(detail) is not list:
        return None
    subtasks = [records.tasks.get(s) if type(s) is str else None for s in detail]
    claimed = [t for t in subtasks if t is not None and t.state is TaskState.UNCLAIMED]
    if not claimed or any(t.job is not claimed[0].job for t in claimed):
        return None
    return records.new_chunk(task_id, claimed)


def on_reattach(records: Records, client_id: str, msg: p.Reattach, results: ResultLookup) -> None:
    """A client lists the tasks it waits for: results we have, and the ids we do not know."""
    asked = [t for t in msg.task_ids if type(t) is str]
    lookup = []
    for task_id in asked:
        owner, done = _standing(records, task_id)
        if owner is not None and not done:
            if owner != client_id:
                lookup.append(task_id)  # not this client's: answered as unknown below
            continue  # its result will come to this client
        lookup.append(task_id)
    found = results(lookup)
    items, unknown = [], []
    for task_id in lookup:
        owner, done = _standing(records, task_id)
        job_id, item = found.get(task_id, (None, None))
        job = records.jobs.get(job_id) if job_id is not None else None
        if item is not None and job is not None and job.client_id == client_id:
            items.append(item)
        elif done and owner == client_id:
            # It ended here, but its result was not kept (a scheduler without a journal).
            message = (
                f"the result of {task_id} was sent while this client was away and is lost: "
                "the scheduler keeps no journal (tidal scheduler --journal PATH)"
            )
            items.append([task_id, "failed", None, ["ResultLost", message, ""], {}])
        else:
            unknown.append(task_id)
    if items:
        records.answer(client_id, p.Results(items))
    records.answer(client_id, p.Reattached(msg.request_id, unknown))


def _standing(records: Records, task_id: str) -> tuple[str | None, bool]:
    """(the client whose task `task_id` is, whether it ended), or (None, False) if there is
    no such task. A bulk job's task is found with or without a record of its own."""
    task = records.tasks.get(task_id)
    if task is not None and task.index < 0:
        return task.job.client_id, task.state is TaskState.DONE
    bulk = records.bulk_task(task_id)
    if bulk is None:
        return None, False
    job, index = bulk
    return job.client_id, bool(job.ended[index])

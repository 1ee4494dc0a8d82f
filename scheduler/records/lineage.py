"""Kept results and the tasks that take them as inputs: waiting, placing, and lineage.

A job submitted with `keep` leaves each task's result on the executor that made it
(runtime/kept.py); the scheduler holds only where it is (`Task.kept_on`), its size and its
reference (`Task.kept`), which it sends to the client as the task's result and with the
launch of every task that takes it as an input.

A task with inputs (`Task.needs`, from its `inputs` option) waits (`TaskState.WAITING`,
out of the pending queues, unseen by policies) until every input is finished and kept on a
live executor; then it is pending, preferring the executor that holds most of its input
bytes (`Task.local_to`, which LMA and LB honour). An input that fails or is cancelled fails
its waiting dependents with an error naming it.

Lineage: a kept result whose executor is lost (or that a reader could not have, `missing`)
is computed again from its task, which kept its payload for this, and its inputs first if
they are gone too. Its dependents wait for it again: those pending go back to waiting,
those running elsewhere are killed and requeued (they may be reading it). The new result
goes to its client as the task's result again (the client takes the new reference).

A job with kept results retires once released and done and no task waits on its results
(`needed`); its executors are then told to `drop` them.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from typing import Any

from tidal.runtime import kept
from tidal.runtime import protocol as p
from tidal.runtime.payloads import is_reference
from tidal.scheduler import events as ev
from tidal.scheduler.records.tables import ExecutorRecord, Job, Task, TaskState

__all__ = ["INPUT_UNAVAILABLE", "Lineage", "inputs_problem"]

DONE, WAITING, PENDING = TaskState.DONE, TaskState.WAITING, TaskState.PENDING
# The error type an executor reports for a task whose input could not be had.
INPUT_UNAVAILABLE = f"{kept.InputUnavailable.__module__}.{kept.InputUnavailable.__qualname__}"


def inputs_problem(client_id: str, msg: p.Submit, tasks: dict[str, Task]) -> str | None:
    """Why a job's inputs cannot be taken, or None: each must be a task of the same client
    whose job keeps its results, and not one of the job's own tasks."""
    own = {entry[0] for entry in msg.tasks}
    for entry in msg.tasks:
        options = entry[2] if len(entry) > 2 else {}
        if "inputs" not in options:
            continue
        ids = kept.input_ids(options["inputs"])
        if ids is None:
            return "a task's inputs must be [[path, task_id], ...], each path [index or key, ...]"
        for task_id in ids:
            task = tasks.get(task_id)
            if task_id in own:
                return f"task {entry[0]} takes an input from its own job ({task_id})"
            if task is None or task.job.retired:
                return f"input {task_id} is not a task this scheduler holds (released?)"
            if task.job.client_id != client_id:
                return f"input {task_id} is another client's task"
            if not task.job.keep:
                return f"input {task_id} was not submitted with keep=True"
    return None


class Lineage:
    """Inputs, kept results and their recomputation: a part of `Records`
    (scheduler/records/books.py)."""

    # ---- submission ------------------------------------------------------------------------

    def link_inputs(self, task: Task, inputs: list[Any]) -> None:
        """Record a new task's inputs (checked by `inputs_problem`)."""
        task.inputs = inputs
        task.needs = [self.tasks[task_id] for _, task_id in inputs]
        for needed in {id(t): t for t in task.needs}.values():
            if not needed.dependents:
                needed.dependents = []  # its own, with its first item (see Task.lost_on)
            needed.dependents.append(task)

    def admit(self, task: Task, *, front: bool = False) -> bool:
        """Queue a task that became pending, or park it waiting if an input is not there
        yet (True: it is pending). Its locality is worked out as it becomes pending."""
        if task.needs:
            task.state = WAITING  # (not queued yet, whatever it was)
            for needed in task.needs:  # finished, but kept where no one can have it now
                if needed.state is DONE and needed.kept and self._gone(needed):
                    self.recompute(needed)
            failed = self._failed_input(task)
            if failed is not None:
                self._fail_dependent(task, failed)
                return False
            if self.unmet(task):
                return False
            task.local_to, task.input_bytes = self._locality(task)
        task.state = PENDING
        self.pending.push(task, front=front)
        return True

    def unmet(self, task: Task) -> int:
        """How many of its inputs are not finished and kept on a live executor."""
        return sum(not self._available(needed) for needed in task.needs)

    def _available(self, task: Task) -> bool:
        if task.state is not DONE or task.kept_on is None:
            return False
        executor = self.executors.get(task.kept_on)
        return executor is not None and executor.alive

    def _gone(self, task: Task) -> bool:
        """Whether a finished task's kept result is out of reach for good: its executor is
        lost, not merely not back yet after a restart (`awaited` in the reclaim grace)."""
        if self._available(task):
            return False
        return not (self.reclaim_until is not None and task.kept_on in self.awaited)

    def admit_waiting(self) -> None:
        """Look again at the tasks waiting for inputs (an executor joined, a grace ended)."""
        ready = [t for t in self.tasks.values() if t.state is WAITING and self.admit(t)]
        if ready:
            self.on_pending(ready)

    def _failed_input(self, task: Task) -> Task | None:
        for needed in task.needs:
            if needed.state is DONE and not needed.kept and not needed.recomputing:
                return needed  # failed or cancelled (a finished one has its reference)
        return None

    def _locality(self, task: Task) -> tuple[str | None, dict[str, int]]:
        """(the executor holding most of its input bytes, bytes of input per executor)."""
        on: Counter[str] = Counter()
        for needed in task.needs:
            if needed.kept_on is not None:
                on[needed.kept_on] += needed.kept_bytes
        best = max(on, key=lambda e: (on[e], e)) if on else None
        return best, dict(on)

    # ---- ends --------------------------------------------------------------------------------

    def task_ended(self, task: Task, outcome: str, value: Any, error: list[str] | None) -> None:
        """After `complete`: keep the location of a kept result, let its dependents go (or
        fail them), and let the jobs of its inputs retire if nothing else needs them."""
        if outcome == "finished" and task.job.keep and type(value) is bytes and is_reference(value):
            task.kept = value
            self.keep_on(task, task.executor_id)
            self._inputs_ready(task)
        else:
            self.keep_on(task, None)
            task.kept = b""
            for dependent in task.dependents:
                if dependent.state in (WAITING, PENDING):
                    self._fail_dependent(dependent, task)
        for needed in {id(t): t for t in task.needs}.values():
            self.ended(needed.job)

    def recomputed(self, task: Task, outcome: str, value: Any, error: list[str] | None) -> None:
        """A kept result computed again ended: its client hears of it (the new reference, or
        the failure), and its dependents go on."""
        task.recomputing = False
        task.state = DONE
        stats = {"executor_id": task.executor_id, "attempt": task.attempt, "recomputed": True}
        item = [task.task_id, outcome, value, error, stats]
        self.out.append(ev.TaskEnded(task.job.job_id, item))
        self.to_client(task.job.client_id, [item])
        self.task_ended(task, outcome, value, error)
        self.ended(task.job)

    def _inputs_ready(self, task: Task) -> None:
        ready = [d for d in task.dependents if d.state is WAITING and self.admit(d)]
        if ready:
            self.on_pending(ready)

    def _fail_dependent(self, task: Task, needed: Task) -> None:
        if task.state is PENDING:
            self.pending.removed(task)
        why = f"its input {needed.task_id} failed or was cancelled, so it cannot run"
        if needed.job.retired:
            why = f"its input {needed.task_id} was released and its kept result lost"
        self.complete(task, "failed", None, ["InputFailed", f"task {task.task_id}: {why}", ""])

    # ---- placement -----------------------------------------------------------------------------

    def launch_inputs(self, task: Task) -> list[list[Any]] | None:
        """`launch.inputs` for `task`: each input's path, task id and reference."""
        if not task.needs:
            return None
        pairs = zip(task.inputs, task.needs, strict=True)
        return [[path, needed.task_id, needed.kept] for (path, _), needed in pairs]

    # ---- lineage -------------------------------------------------------------------------------

    def lose_kept(self, executor_id: str) -> None:
        """`executor_id` is gone with the results it kept: compute again those still needed."""
        lost = [
            t
            for t in self.tasks.values()
            if t.kept_on == executor_id and t.state is DONE and not t.job.retired
        ]
        for task in lost:
            self.keep_on(task, None)
        for task in lost:
            if self._wanted(task):
                self.recompute(task)

    def _wanted(self, task: Task) -> bool:
        """Whether a kept result is still wanted: its client holds its future, or a task
        that has not ended takes it as an input."""
        return not task.job.released or any(d.state is not DONE for d in task.dependents)

    def recompute(self, task: Task) -> None:
        """Compute a lost kept result again from its task (its own lost inputs first). If
        an input of it is gone with its job (released and retired), it cannot be: its
        client hears that it failed, and so do its dependents."""
        if task.recomputing or task.state is not DONE:
            return
        task.recomputing = True
        self.forget_copy(task)
        retired = next((n for n in task.needs if n.job.retired and not self._available(n)), None)
        if retired is not None:
            why = (
                f"the kept result of {task.task_id} is lost, and its input {retired.task_id} "
                "was released: it cannot be computed again"
            )
            self.recomputed(task, "failed", None, ["InputFailed", why, ""])
            return
        for needed in task.needs:
            if not self._available(needed):
                self.recompute(needed)
        self._hold_dependents(task)
        # A new life: what its earlier ones counted does not carry over.
        task.cancel_requested, task.input_losses, task.lost_on = False, 0, ()
        self.peer_warning(f"the kept result of {task.task_id} is lost: computing it again")
        self.requeue([task])

    def forget_copy(self, task: Task) -> None:
        """`task`'s kept result is not to be read where it is any more: its executor, if
        alive, deletes its copy (a copy no one will read would count against its memory)."""
        executor = self.executors.get(task.kept_on) if task.kept_on is not None else None
        if executor is not None and executor.alive:
            self.send(executor, p.Drop([task.task_id]))
        self.keep_on(task, None)

    def _hold_dependents(self, task: Task) -> None:
        """Its result is gone: dependents pending go back to waiting; those on an executor
        are killed and queued again (they may be reading it)."""
        for dependent in task.dependents:
            if dependent.state is PENDING:
                self.pending.removed(dependent)
                dependent.state = WAITING
            elif dependent.state not in (DONE, WAITING, TaskState.KILLING):
                executor = self.executors.get(dependent.executor_id or "")
                if executor is not None and executor.alive:
                    self.kill(executor, dependent, requeue=True)

    def input_unavailable(self, task: Task, stats: dict[str, Any], error: list[str] | None) -> bool:
        """If `task` failed because an input could not be had (`InputUnavailable`): compute
        again the inputs that are gone (or the one named), and queue it to wait for them;
        True then. False (let it fail) for any other failure, or past `max_retries` such."""
        if error is None or error[0] != INPUT_UNAVAILABLE or not task.needs:
            return False
        task.input_losses += 1
        if task.input_losses > self.max_retries:
            return False
        self.account(task, stats)
        named = [n for n in task.needs if f"input {n.task_id} " in error[1]]
        for needed in task.needs:
            if not self._available(needed) or needed in named:
                self.recompute(needed)
        self.requeue([task])
        return True

    def stale_result(self, executor: ExecutorRecord, msg: p.Finished) -> None:
        """A `finished` no task is waiting for (an earlier attempt, a task ended or
        retired meanwhile): a kept result it reports is no one's, and is dropped there."""
        task = self.tasks.get(msg.task_id)
        keep = task is not None and task.job.keep
        if keep and is_reference(msg.result) and task.kept != msg.result:
            self.send(executor, p.Drop([msg.task_id]))

    def missing(self, client_id: str, task_ids: Iterable[Any]) -> None:
        """A client could not fetch these kept results: compute them again."""
        for task_id in task_ids:
            task = self.tasks.get(task_id) if type(task_id) is str else None
            if task is None or task.job.client_id != client_id or not task.job.keep:
                continue
            if task.state is DONE and task.kept_on is not None:
                self.recompute(task)

    # ---- retiring --------------------------------------------------------------------------------

    def needed(self, job: Job) -> bool:
        """Whether a task of `job` is being computed again, or has a dependent not ended."""
        if not job.keep:
            return False
        for task_id in job.ids:
            task = self.tasks.get(task_id)
            if task is not None and (
                task.recomputing or any(d.state is not DONE for d in task.dependents)
            ):
                return True
        return False

    def drop_kept(self, job: Job) -> None:
        """`job` retires: its executors may delete the results they keep for it."""
        if not job.keep:
            return
        on: defaultdict[str, list[str]] = defaultdict(list)
        for task_id in job.ids:
            task = self.tasks.get(task_id)
            if task is not None and task.kept_on is not None:
                on[task.kept_on].append(task_id)
                self.keep_on(task, None)
        for executor_id, task_ids in on.items():
            executor = self.executors.get(executor_id)
            if executor is not None and executor.alive:
                self.send(executor, p.Drop(task_ids))

    def keep_on(self, task: Task, executor_id: str | None) -> None:
        """Say where `task`'s result is kept (None: nowhere), counting its bytes there."""
        for where, sign in ((task.kept_on, -1), (executor_id, 1)):
            executor = self.executors.get(where) if where is not None else None
            if executor is not None:
                executor.kept_bytes = max(0, executor.kept_bytes + sign * task.kept_bytes)
        task.kept_on = executor_id

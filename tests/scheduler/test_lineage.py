"""Kept results and tasks that take them as inputs, in the scheduler core on a fake clock:
waiting, placement by locality, failures that name the input, lineage after a loss, and
retiring (scheduler/records/lineage.py)."""

from __future__ import annotations

import pytest

from tests.scheduler.harness import CLIENT_ID, MS, TOTAL, Harness, payload
from tidal.runtime import payloads
from tidal.runtime import protocol as p
from tidal.runtime.datastore import Reference
from tidal.scheduler.core import ClientJoined, ClientRequest, ExecutorLeft, Tick
from tidal.scheduler.events import JobRetired
from tidal.scheduler.records.lineage import INPUT_UNAVAILABLE
from tidal.scheduler.records.tables import TaskState

SIZE = 3_000_000


def reference(executor_id: str, key: str, size: int = SIZE) -> bytes:
    where = f"/dev/shm/tidal-spool/{executor_id}/{key}"
    return payloads.pack_reference(Reference("h", where, size, "tcp://127.0.0.1:9", key))


def submit(h: Harness, job_id: str, n: int, *, keep=False, inputs=None, client=CLIENT_ID, **kw):
    """A job of n tasks; `inputs[i]`, if given, is task i's list of input task ids (each
    the whole argument i of the call)."""
    tasks = []
    for i in range(n):
        entry = [f"{job_id}/{i}", payload(i)]
        if inputs is not None and inputs[i]:
            entry.append({"inputs": [[[k], tid] for k, tid in enumerate(inputs[i])]})
        tasks.append(entry)
    options = {"keep": True} if keep else kw.pop("options", None)
    submit = p.Submit(job_id, "batch", 0, None, TOTAL, None, tasks, 0, options)
    h.handle(ClientRequest(client, submit))
    return [t[0] for t in tasks]


def launches(h: Harness) -> dict[str, tuple[str, p.Launch]]:
    """What was launched since the last look: task id -> (executor id, launch)."""
    return {m.task_id: (e, m) for e in list(h.to_executor) for m in h.sent(e, p.Launch)}


def keep_finished(h: Harness, executor_id: str, task_id: str, key: str, attempt: int = 0):
    h.report(executor_id, p.Started(task_id, attempt, h.clock.now))
    stats = {"running_ns": 50 * MS, "kept_bytes": SIZE}  # no prefetch for such tasks
    h.report(executor_id, p.Finished(task_id, attempt, reference(executor_id, key), stats))


def finish(h: Harness, executor_id: str, launch: p.Launch, result=0) -> None:
    h.report(executor_id, p.Started(launch.task_id, launch.attempt, h.clock.now))
    blob = payloads.pack_payload(result)
    h.report(executor_id, p.Finished(launch.task_id, launch.attempt, blob, {"running_ns": 50 * MS}))


def stage_one(h: Harness, n: int = 2) -> dict[str, str]:
    """A kept job "a" of n tasks, run and finished: task id -> the executor keeping it."""
    submit(h, "a", n, keep=True)
    where = {}
    while len(where) < n:
        launched = launches(h)
        assert launched, where
        for task_id, (executor, launch) in launched.items():
            assert launch.keep is True and launch.inputs is None
            keep_finished(h, executor, task_id, f"k-{task_id[-1]}")
            where[task_id] = executor
    return where


def refusal(h: Harness, task_id: str) -> str:
    [[_, outcome, _, error, _]] = h.results[task_id]
    assert outcome == "failed"
    return error[1]


def test_a_kept_result_reaches_its_client_as_a_reference_and_the_executor_keeps_it():
    h = Harness()
    where = stage_one(h)
    [[_, outcome, value, _, _]] = h.results["a/0"]
    assert outcome == "finished" and payloads.is_reference(value)
    assert h.core.records.executors[where["a/0"]].kept_bytes >= SIZE
    views = {e.executor_id: e for e in h.core.view.executors()}
    assert sum(v.kept_bytes for v in views.values()) == 2 * SIZE


def test_a_dependent_waits_for_its_inputs_then_runs_where_they_are_kept():
    h = Harness()
    submit(h, "a", 2, keep=True)
    first = launches(h)
    submit(h, "b", 2, inputs=[["a/0"], ["a/1"]])
    assert h.state("b/0") is TaskState.WAITING and launches(h) == {}
    (e0, _), (e1, _) = first["a/0"], first["a/1"]
    keep_finished(h, e0, "a/0", "k0")
    keep_finished(h, e1, "a/1", "k1")
    second = launches(h)
    assert second["b/0"][0] == e0 and second["b/1"][0] == e1  # local, both
    launch = second["b/0"][1]
    assert launch.inputs == [[[0], "a/0", reference(e0, "k0")]]
    assert launch.keep is False


@pytest.mark.parametrize("policy", ["lb", "lma"])
def test_dependents_go_to_the_executor_holding_their_input_when_it_frees(policy):
    h = Harness(policy=policy)
    where = stage_one(h, 4)  # two kept results on each executor
    mine = {e: [t for t, w in where.items() if w == e] for e in set(where.values())}
    submit(h, "b", 4, inputs=[[f"a/{i}"] for i in range(4)])
    placed = {}
    for _ in range(4):
        h.clock.now += MS
        h.handle(Tick())
        for task_id, (executor, launch) in launches(h).items():
            placed[task_id] = executor
            finish(h, executor, launch)
    assert len(placed) == 4
    for executor, inputs in mine.items():
        for input_id in inputs:
            assert placed["b/" + input_id[-1]] == executor


def test_a_failed_input_fails_its_dependents_with_an_error_naming_it():
    h = Harness()
    submit(h, "a", 1, keep=True)
    [(executor, _)] = launches(h).values()
    submit(h, "b", 1, inputs=[["a/0"]])
    h.report(executor, p.Started("a/0", 0, h.clock.now))
    h.report(executor, p.Failed("a/0", 0, "ValueError", "bad", "", {}))
    assert refusal(h, "b/0") == "task b/0: its input a/0 failed or was cancelled, so it cannot run"
    assert h.results["b/0"][0][3][0] == "InputFailed"
    assert launches(h) == {}
    submit(h, "c", 1, inputs=[["a/0"]])  # submitted after the failure: fails at once
    assert h.results["c/0"][0][3][0] == "InputFailed"


def test_inputs_that_cannot_be_taken_are_refused_with_the_reason():
    h = Harness()
    stage_one(h, 1)
    submit(h, "plain", 1)
    [(executor, launch)] = launches(h).values()
    finish(h, executor, launch)
    submit(h, "b", 1, inputs=[["nope/0"]])
    assert "input nope/0 is not a task this scheduler holds" in refusal(h, "b/0")
    submit(h, "c", 1, inputs=[["plain/0"]])
    assert "input plain/0 was not submitted with keep=True" in refusal(h, "c/0")
    h.handle(ClientJoined("other"))
    submit(h, "d", 1, inputs=[["a/0"]], client="other")
    assert "is another client's task" in refusal(h, "d/0")
    assert "d" not in h.core.records.jobs
    submit(h, "e", 1, keep=True, options=None)
    bad = p.Submit("f", "batch", 0, None, TOTAL, None, [["f/0", payload(0)]], 0,
                   {"keep": True, "chunksize": 4})  # fmt: skip
    h.handle(ClientRequest(CLIENT_ID, bad))
    assert "not chunked" in refusal(h, "f/0")


def test_a_lost_executor_s_kept_results_are_computed_again_before_dependents_run():
    h = Harness()
    where = stage_one(h, 2)
    lost = where["a/0"]
    submit(h, "b", 1, inputs=[["a/0", "a/1"]])  # one task taking both
    [(executor, launch)] = launches(h).values()
    h.handle(ExecutorLeft(lost, "killed"))
    # The dependent was running elsewhere or here: either way it is not running now.
    again = launches(h)
    assert "a/0" in again, again
    survivor, rerun = again["a/0"]
    assert survivor != lost and rerun.attempt == 1
    assert h.state("b/0") in (TaskState.WAITING, TaskState.KILLING)
    if h.state("b/0") is TaskState.KILLING:
        h.report(executor, p.Killed("b/0", launch.attempt, {"running_ns": MS}))
        assert h.state("b/0") is TaskState.WAITING
    keep_finished(h, survivor, "a/0", "k0-again", attempt=1)
    assert len(h.results["a/0"]) == 2  # its client gets the new reference
    assert h.results["a/0"][1][2] == reference(survivor, "k0-again")
    [(_, launch)] = launches(h).values()
    assert launch.task_id == "b/0"
    assert [entry[2] for entry in launch.inputs] == [
        reference(survivor, "k0-again"),
        reference(where["a/1"], "k-1"),
    ]
    assert h.core.records.jobs["a"].finished == 2  # counted once


def test_an_input_an_executor_could_not_read_is_computed_again_and_the_task_reruns():
    h = Harness()
    where = stage_one(h, 1)
    submit(h, "b", 1, inputs=[["a/0"]])
    [(executor, launch)] = launches(h).values()
    h.report(executor, p.Started("b/0", 0, h.clock.now))
    message = "input a/0 (the kept result of task a/0): gone"
    h.report(executor, p.Failed("b/0", 0, INPUT_UNAVAILABLE, message, "", {}))
    assert "b/0" not in h.results and h.state("b/0") is TaskState.WAITING
    [(runner, rerun)] = launches(h).values()
    assert rerun.task_id == "a/0" and rerun.attempt == 1
    keep_finished(h, runner, "a/0", "fresh", attempt=1)
    [(_, launch)] = launches(h).values()
    assert launch.task_id == "b/0" and launch.attempt == 1
    assert where  # (its first place does not matter)


def test_a_client_that_cannot_fetch_a_kept_result_gets_it_computed_again():
    h = Harness()
    stage_one(h, 1)
    h.handle(ClientRequest(CLIENT_ID, p.Missing(["a/0", "nope", 3])))
    [(executor, rerun)] = launches(h).values()
    assert rerun.task_id == "a/0" and rerun.keep
    keep_finished(h, executor, "a/0", "fresh", attempt=1)
    assert [item[1] for item in h.results["a/0"]] == ["finished", "finished"]


def test_a_kept_job_retires_once_released_and_its_dependents_ended_and_is_dropped():
    h = Harness()
    where = stage_one(h, 1)
    submit(h, "b", 1, inputs=[["a/0"]])
    h.handle(ClientRequest(CLIENT_ID, p.Release(["a"])))
    assert "a" in h.core.records.jobs  # b still needs it
    [(executor, launch)] = launches(h).values()
    finish(h, executor, launch)
    assert "a" not in h.core.records.jobs
    assert [n.job_id for n in h.notes if isinstance(n, JobRetired)] == ["a"]
    [drop] = h.sent(where["a/0"], p.Drop)
    assert drop.task_ids == ["a/0"]
    assert h.core.records.executors[where["a/0"]].kept_bytes == 0


def test_a_cancelled_waiting_task_ends_at_once():
    h = Harness()
    submit(h, "a", 1, keep=True)
    submit(h, "b", 1, inputs=[["a/0"]])
    h.handle(ClientRequest(CLIENT_ID, p.Cancel(["b/0"])))
    assert h.results["b/0"][0][1] == "cancelled"


def test_a_restarted_scheduler_knows_where_kept_results_are_and_feeds_them_to_dependents(
    tmp_path,
):
    from tidal.scheduler.core import Tick
    from tidal.scheduler.journal import Journal

    path = tmp_path / "journal.sqlite"
    h = Harness(journal=Journal(path))
    where = stage_one(h, 2)
    h.core.journal.close()
    h = Harness(journal=Journal(path), executors=(), reclaim_grace_ns=0)
    task = h.core.records.tasks["a/0"]
    assert task.state is TaskState.DONE and task.kept_on == where["a/0"]
    h.join("e0", "n0")
    h.join("e1", "n1")
    h.handle(Tick())
    submit(h, "b", 1, inputs=[["a/1"]])
    [(executor, launch)] = launches(h).values()
    assert executor == where["a/1"]
    assert launch.inputs == [[[0], "a/1", reference(where["a/1"], "k-1")]]


def test_a_client_that_leaves_takes_its_kept_results_with_it():
    h = Harness()
    where = stage_one(h, 2)
    h.handle(ClientRequest(CLIENT_ID, p.ClientGoodbye("done")))
    assert "a" not in h.core.records.jobs
    dropped = sorted(t for e in set(where.values()) for m in h.sent(e, p.Drop) for t in m.task_ids)
    assert dropped == ["a/0", "a/1"]


def test_kept_results_of_an_executor_that_does_not_come_back_after_a_restart_are_recomputed(
    tmp_path,
):
    from tidal.scheduler.core import Tick
    from tidal.scheduler.journal import Journal

    path = tmp_path / "journal.sqlite"
    h = Harness(journal=Journal(path))
    where = stage_one(h, 2)
    h.core.journal.close()
    h = Harness(journal=Journal(path), executors=(), reclaim_grace_ns=5 * MS)
    back = where["a/1"]
    h.join(back, "n1")
    h.clock.now += 10 * MS
    h.handle(Tick())  # the grace ends: the other executor did not come back
    [(executor, rerun)] = launches(h).values()
    assert (executor, rerun.task_id, rerun.keep) == (back, "a/0", True)


def test_kept_results_count_against_an_executor_s_memory_headroom():
    h = Harness()
    where = stage_one(h, 1)
    executor = h.core.records.executors[where["a/0"]]
    beat = p.Heartbeat(executor.executor_id, "n", 1, 0, 1, 0, 0, 0, 100 * SIZE, 0, 10.0, 200 * SIZE)
    h.report(executor.executor_id, beat)
    assert executor.memory_headroom == 100 * SIZE - SIZE
    [view] = [e for e in h.core.view.executors() if e.executor_id == executor.executor_id]
    assert view.kept_bytes == SIZE and view.memory_headroom == 99 * SIZE


def test_a_dependent_submitted_in_a_restart_s_grace_waits_for_its_input_s_executor(tmp_path):
    from tidal.scheduler.core import Tick
    from tidal.scheduler.journal import Journal

    path = tmp_path / "journal.sqlite"
    h = Harness(journal=Journal(path))
    where = stage_one(h, 1)
    h.core.journal.close()
    h = Harness(journal=Journal(path), executors=(), reclaim_grace_ns=50 * MS)
    h.join("other", "n9")
    submit(h, "b", 1, inputs=[["a/0"]])  # its input's executor is not back yet
    assert h.state("b/0") is TaskState.WAITING and h.state("a/0") is TaskState.DONE
    assert launches(h) == {}
    h.join(where["a/0"], "n0")  # back, with its kept result
    [(executor, launch)] = launches(h).values()
    assert (executor, launch.task_id) == (where["a/0"], "b/0")
    h.clock.now += 100 * MS
    h.handle(Tick())
    assert h.core.records.tasks["a/0"].recomputing is False


def test_a_lost_kept_result_whose_input_was_released_fails_clearly_not_for_ever():
    h = Harness()
    where = stage_one(h, 1)
    submit(h, "b", 1, inputs=[["a/0"]], keep=True)
    [(holder, _)] = launches(h).values()
    keep_finished(h, holder, "b/0", "kb")
    h.handle(ClientRequest(CLIENT_ID, p.Release(["a"])))
    assert "a" not in h.core.records.jobs  # b ended: nothing needs a any more
    submit(h, "c", 1, inputs=[["b/0"]])
    if holder == where["a/0"]:
        h.sent(holder, p.Launch)
    h.handle(ExecutorLeft(holder, "killed"))
    [*_, item] = h.results["b/0"]
    assert item[1] == "failed" and "was released: it cannot be computed again" in item[3][1]
    assert h.results["c/0"][0][3][0] == "InputFailed"
    assert "b" in h.core.records.jobs and not h.core.records.tasks["b/0"].recomputing


def test_a_copy_that_is_no_longer_read_is_dropped_where_it_is():
    h = Harness()
    where = stage_one(h, 1)
    h.handle(ClientRequest(CLIENT_ID, p.Missing(["a/0"])))
    sent = {e: h.sent(e) for e in list(h.to_executor)}
    assert [m.task_ids for m in sent[where["a/0"]] if isinstance(m, p.Drop)] == [["a/0"]]
    [(executor, _)] = [(e, m) for e, ms in sent.items() for m in ms if isinstance(m, p.Launch)]
    keep_finished(h, executor, "a/0", "fresh", attempt=1)
    late = p.Finished("a/0", 0, reference(where["a/0"], "late"), {"kept_bytes": SIZE})
    h.report(where["a/0"], late)  # an earlier attempt's, come late: no one's
    assert [m.task_ids for m in h.sent(where["a/0"], p.Drop)] == [["a/0"]]


def test_keep_with_any_chunksize_is_refused():
    h = Harness()
    bad = p.Submit(
        "f", "batch", 0, None, TOTAL, None, [["f/0", payload(0)]], 0, {"keep": True, "chunksize": 1}
    )
    h.handle(ClientRequest(CLIENT_ID, bad))
    assert "not chunked" in refusal(h, "f/0")

"""Executor loss, retries and restarts in the scheduler core: a fake clock, scripted
executors, a real journal in a temporary file, no sockets.

A "restart" here is what the scheduler process does: the first core's journal is committed
and closed, and a new core is built on the same file.
"""

from __future__ import annotations

from tests.scheduler.harness import MS, Harness
from tidal.runtime import payloads
from tidal.runtime import protocol as p
from tidal.scheduler import events as ev
from tidal.scheduler.core import ClientJoined, ClientRequest, ExecutorLeft, Tick
from tidal.scheduler.journal import Journal
from tidal.scheduler.records import TaskState

HEARTBEAT = {"heartbeat_ns": 100 * MS, "missed_heartbeats": 3}  # lost after 300 ms


def result_of(h, task_id):
    """The one result item the client got for `task_id` (fails if none, or several)."""
    (item,) = h.results[task_id]
    return item


def first_life(path, **options):
    """A scheduler that runs jobs until it 'crashes' with its journal committed."""
    return Harness(journal=Journal(path), **HEARTBEAT, **options)


def restart(h, path, **options):
    """Commit and close the journal of `h`, then build a new core on it (no executors yet)."""
    h.core.journal.close()
    return Harness(journal=Journal(path), executors=(), **HEARTBEAT, **options)


def test_a_task_that_keeps_losing_its_executor_fails_with_the_executors_named():
    h = Harness(max_retries=1, executors=[("e0", "n0")])
    (task,) = h.submit("b", "batch", 1)
    h.start("e0", task)
    h.handle(ExecutorLeft("e0", "killed"))
    assert h.state(task) is TaskState.PENDING and h.core.records.tasks[task].attempt == 1
    h.join("e1", "n1")
    assert [m.task_id for m in h.sent("e1", p.Launch)] == [task]
    h.start("e1", task, attempt=1)
    h.handle(ExecutorLeft("e1", "killed"))
    outcome, error = result_of(h, task)[1], result_of(h, task)[3]
    assert outcome == "failed" and error[0] == "ExecutorLost"
    assert error[1] == f"task {task} lost its executor 2 times (e0, e1); giving up (max_retries=1)"
    h.join("e2", "n2")
    assert h.sent("e2", p.Launch) == []  # it does not run a third time


def test_a_loss_counts_from_the_received_launch_not_from_the_start():
    # A task that takes its executor down before it can report `started` still fails past
    # max_retries, as long as the executor said it has the launch; one that never reached
    # its executor (no `received`) is requeued free: a peer that says hello and leaves with
    # its launches cannot fail a job.
    h = Harness(max_retries=1, executors=[("e0", "n0")])
    (task,) = h.submit("b", "batch", 1)
    assert [m.task_id for m in h.sent("e0", p.Launch)] == [task]
    h.handle(ExecutorLeft("e0", "connection dropped"))  # never received it
    assert h.core.records.tasks[task].lost_on == ()
    for n, executor_id in enumerate(["e1", "e2"]):
        h.join(executor_id, executor_id)
        (launch,) = h.sent(executor_id, p.Launch)
        assert launch.attempt == n + 1
        stamp = launch.sent_ns
        junk = [["junk"], 7, [task, 99, stamp], [task, launch.attempt, stamp - 1], [task, True, 1]]
        h.report(executor_id, p.Received(junk))  # nothing in it is this launch's
        assert not h.core.records.tasks[task].received
        h.report(executor_id, p.Received([[task, launch.attempt, stamp]]))
        h.handle(ExecutorLeft(executor_id, "killed"))
    outcome, error = result_of(h, task)[1], result_of(h, task)[3]
    assert outcome == "failed" and error[1].startswith(f"task {task} lost its executor 2 times")
    assert "(e1, e2)" in error[1]


def test_a_stale_received_does_not_count_a_new_attempt():
    h = Harness(max_retries=0, executors=[("e0", "n0")])
    (task,) = h.submit("b", "batch", 1)
    (first,) = h.sent("e0", p.Launch)
    h.handle(ExecutorLeft("e0", "connection dropped"))
    h.join("e1", "n1")
    h.report("e1", p.Received([[task, 0, first.sent_ns]]))  # the first attempt's, late
    h.handle(ExecutorLeft("e1", "killed"))
    assert h.core.records.tasks[task].lost_on == () and h.state(task) is TaskState.PENDING


def test_a_restarted_core_rebuilds_jobs_adopts_held_tasks_and_serves_kept_results(tmp_path):
    path = tmp_path / "journal.sqlite"
    h = first_life(path)
    tasks = h.submit("b", "batch", 4)
    h.start("e0", tasks[0])
    h.start("e1", tasks[1])
    h.finish("e0", tasks[0], result=5)
    h = restart(h, path)

    core = h.core
    assert core.records.restarts == 1 and core.records.jobs["b"].finished == 1
    assert tasks[0] not in core.records.tasks  # ended: only its journaled result remains
    assert {t: h.state(t) for t in tasks[1:]} == dict.fromkeys(tasks[1:], TaskState.UNCLAIMED)
    # e0 never saw the ack of its result: it lists it again (taken once: already done) and a
    # task this scheduler never heard of, which it is told to kill.
    h.join(
        "e0",
        "n0",
        holding=[
            [tasks[0], 0, "finished", [payloads.pack_payload(5), None, {}]],
            ["x/0", 0, "running", None],
        ],
    )
    assert [(type(m), m.task_id) for m in h.sent("e0")] == [(p.Kill, "x/0")]
    assert tasks[0] not in h.results
    # e1 still runs tasks[1]: adopted where it is, same attempt, not launched again.
    h.join("e1", "n1", holding=[[tasks[1], 0, "running", None]])
    assert (
        h.state(tasks[1]) is TaskState.RUNNING
        and core.records.executors["e1"].slot_task.task_id == tasks[1]
    )
    # Every executor known before the restart is back: the rest is queued at the next tick,
    # into e0's free slot, and nothing went to e1.
    h.handle(Tick())
    assert [m.task_id for m in h.sent("e0", p.Launch)] == [tasks[2]]
    assert h.sent("e1") == []
    h.finish("e1", tasks[1], result=7)
    assert result_of(h, tasks[1])[2] == payloads.pack_payload(7)

    # The client comes back and lists what it waits for.
    h.handle(ClientJoined("c"))
    reattach = p.Reattach("r1", [tasks[0], tasks[2], "c-99/0"])
    h.handle(ClientRequest("c", reattach))
    assert h.answers["r1"].unknown == ["c-99/0"]
    assert [item[:3] for item in h.results[tasks[0]]] == [
        [tasks[0], "finished", payloads.pack_payload(5)]
    ]
    assert tasks[2] not in h.results  # still running: its result will come


def test_tasks_nobody_claims_are_queued_when_the_grace_period_ends(tmp_path):
    path = tmp_path / "journal.sqlite"
    h = first_life(path)
    tasks = h.submit("b", "batch", 2)
    h.start("e0", tasks[0])
    h.start("e1", tasks[1])
    h = restart(h, path)
    h.join("e1", "n1")  # holding nothing (it restarted too); e0 never comes back
    h.handle(Tick())
    assert h.sent("e1") == [] and h.state(tasks[0]) is TaskState.UNCLAIMED
    h.clock.now += 301 * MS
    h.report("e1", p.Heartbeat("e1", "n1", 1, 0, 1, 0, 0, 0, 0, 0, 0.0))  # e1 lives
    h.handle(Tick())
    assert [m.task_id for m in h.sent("e1", p.Launch)] == [tasks[0]]
    # e0 is noted lost (for the journal and the event log), e1 is not.
    gone = [n for n in h.notes if isinstance(n, ev.ExecutorLost)]
    assert gone == [ev.ExecutorLost("e0", "it did not come back after the restart")]
    assert h.state(tasks[1]) is TaskState.PENDING
    # e0 comes back late, still running tasks[0]: that copy is stale now and is killed.
    h.join("e0", "n0", holding=[[tasks[0], 0, "running", None]])
    kill = h.sent("e0")[0]  # then a launch of tasks[1] into its free slot
    assert (type(kill), kill.task_id) == (p.Kill, tasks[0])
    h.start("e1", tasks[0])
    h.report("e0", p.Finished(tasks[0], 0, payloads.pack_payload(1), {}))  # the stale copy: ignored
    h.finish("e1", tasks[0], result=2)
    assert result_of(h, tasks[0])[2] == payloads.pack_payload(2)


def test_a_result_an_executor_kept_for_an_unclaimed_task_completes_it_once(tmp_path):
    path = tmp_path / "journal.sqlite"
    h = first_life(path)
    (task,) = h.submit("b", "batch", 1)
    h.start("e0", task)
    h = restart(h, path)
    h.join("e0", "n0", holding=[[task, 0, "finished", [payloads.pack_payload(3), None, {}]]])
    assert result_of(h, task)[2] == payloads.pack_payload(3)
    h.report("e0", p.Finished(task, 0, payloads.pack_payload(3), {}))  # the report itself, late
    assert len(h.results[task]) == 1


def test_a_chunk_is_adopted_with_its_unreported_subtasks_and_new_chunks_get_new_ids(tmp_path):
    path = tmp_path / "journal.sqlite"
    h = first_life(path, executors=[("e0", "n0")])
    tasks = h.submit("b", "batch", 8, options={"chunksize": 4})
    (launch,) = h.sent("e0", p.LaunchChunk)
    assert [s[0] for s in launch.subtasks] == tasks[:4]
    h.start("e0", launch.chunk_id)
    h = restart(h, path)
    h.join(
        "e0",
        "n0",
        holding=[
            [launch.chunk_id, 0, "running", tasks[1:4]],
            [tasks[0], 0, "finished", [payloads.pack_payload(0), None, {"running_ns": 1}]],
        ],
    )
    assert result_of(h, tasks[0])[1] == "finished"
    chunk = h.core.records.tasks[launch.chunk_id]
    assert list(chunk.subtasks) == tasks[1:4] and h.core.records.executors["e0"].slot_task is chunk
    items = [
        [t, "finished", payloads.pack_payload(i), None, {}] for i, t in enumerate(tasks[1:4], 1)
    ]
    h.report("e0", p.ChunkResults(launch.chunk_id, items))
    h.report("e0", p.Finished(launch.chunk_id, 0, payloads.pack_payload(None), {}))
    assert all(result_of(h, t)[1] == "finished" for t in tasks[:4])
    h.handle(Tick())  # e0, the one executor known before, is back: the rest is queued
    (again,) = h.sent("e0", p.LaunchChunk)
    assert again.chunk_id == "b#1.1" and [s[0] for s in again.subtasks] == tasks[4:]


def test_an_executor_that_says_hello_again_while_alive_keeps_what_it_still_holds():
    h = Harness(**HEARTBEAT)
    tasks = h.submit("b", "batch", 2)
    h.start("e0", tasks[0])
    h.start("e1", tasks[1])
    # e1 thought the scheduler gone; it still runs tasks[1]. e0 lost tasks[0] meanwhile.
    h.join("e1", "n1", holding=[[tasks[1], 0, "running", None]])
    assert h.state(tasks[1]) is TaskState.RUNNING and h.core.records.tasks[tasks[1]].attempt == 0
    h.join("e0", "n0", holding=[])
    task = h.core.records.tasks[tasks[0]]
    assert task.attempt == 1 and task.lost_on == ["e0"]
    assert [m.task_id for m in h.sent("e0", p.Launch)][-1] == tasks[0]
    assert [type(m) for m in h.sent("e1")] == [p.Launch]  # its first launch only
    h.finish("e1", tasks[1], result=4)
    assert result_of(h, tasks[1])[2] == payloads.pack_payload(4)

"""Chunks and stealing in the scheduler core: fake clock, executors played by the test."""

from __future__ import annotations

import pytest

from tests.scheduler.harness import MS, Harness
from tidal.runtime import payloads
from tidal.runtime import protocol as p
from tidal.scheduler.chunks import FIRST_CHUNK
from tidal.scheduler.core import ClientRequest, Tick
from tidal.scheduler.records import TaskState


def run_chunk(h, executor_id, chunk, running_ns=1_000, report=None):
    """Play an executor running `chunk` to its end: start, results, finish."""
    h.report(executor_id, p.Started(chunk.chunk_id, 0, h.clock.now))
    ids = [s[0] for s in chunk.subtasks] if report is None else report
    h.report(
        executor_id,
        p.ChunkResults(
            chunk.chunk_id,
            [[tid, "finished", result(tid), None, {"running_ns": running_ns}] for tid in ids],
        ),
    )
    h.report(
        executor_id, p.Finished(chunk.chunk_id, 0, payloads.pack_payload(None), {"running_ns": 1})
    )


def result(task_id):
    """The payload the test's executors send as `task_id`'s result."""
    return payloads.pack_payload(task_id.upper())


def test_a_chunked_job_goes_out_in_chunks_and_every_task_completes_once():
    h = Harness(executors=[("e0", "n0")])
    ids = h.submit("j", "batch", 10, options={"chunksize": 4})
    done = []
    while True:
        chunks = h.sent("e0", p.LaunchChunk)
        if not chunks:
            break
        (chunk,) = chunks
        done.append([s[0] for s in chunk.subtasks])
        run_chunk(h, "e0", chunk)
    assert done == [ids[0:4], ids[4:8], ids[8:10]]
    assert {tid: [item[2] for item in items] for tid, items in h.results.items()} == {
        tid: [result(tid)] for tid in ids
    }


def test_auto_sizes_chunks_from_measured_task_time():
    h = Harness(executors=[("e0", "n0")])
    h.submit("j", "batch", 5_000, options={"chunksize": "auto"})
    (first,) = h.sent("e0", p.LaunchChunk)
    assert len(first.subtasks) == FIRST_CHUNK  # nothing measured yet
    run_chunk(h, "e0", first, running_ns=100_000)  # 0.1 ms each
    (second,) = h.sent("e0", p.LaunchChunk)
    # ~20 ms of work at ~0.1 ms a task (plus overhead), capped by half the fair share.
    assert 150 <= len(second.subtasks) <= 200


def test_a_lost_chunk_requeues_exactly_what_it_had_not_reported():
    h = Harness(executors=[("e0", "n0")], heartbeat_ns=100 * MS)
    ids = h.submit("j", "batch", 6, options={"chunksize": 6})
    (chunk,) = h.sent("e0", p.LaunchChunk)
    h.join("e1", "n1")  # joins after the chunk went out: nothing pending for it
    h.report("e0", p.Started(chunk.chunk_id, 0, 1))
    h.report(
        "e0",
        p.ChunkResults(
            chunk.chunk_id,
            [
                [ids[0], "finished", result(ids[0]), None, {}],
                [ids[1], "finished", result(ids[1]), None, {}],
            ],
        ),
    )
    h.clock.now += 250 * MS
    h.report("e1", p.Heartbeat("e1", "n", 1, 0, 1, 0, 0, 0, 1, 1, 1.0))
    h.clock.now += 100 * MS
    h.handle(Tick())
    (again,) = h.sent("e1", p.LaunchChunk)
    assert [s[0] for s in again.subtasks] == ids[2:]
    run_chunk(h, "e1", again)
    late = payloads.pack_payload("late")
    h.report("e0", p.ChunkResults(chunk.chunk_id, [[ids[3], "finished", late, None, {}]]))
    assert all(len(h.results[tid]) == 1 for tid in ids)
    assert h.results[ids[3]][0][2] == result(ids[3])  # the late duplicate was ignored


def test_tasks_the_policy_launches_elsewhere_are_not_swept_into_a_chunk():
    h = Harness(executors=[("e0", "n0"), ("e1", "n1")])
    ids = h.submit("j", "batch", 6, options={"chunksize": 6})
    sent = {e: h.sent(e, p.LaunchChunk) for e in ("e0", "e1")}
    assert all(len(chunks) == 1 for chunks in sent.values())  # both executors got work
    got = sorted(s[0] for chunks in sent.values() for c in chunks for s in c.subtasks)
    assert got == sorted(ids)


def test_an_idle_executor_steals_half_of_the_largest_chunk_and_nothing_runs_twice():
    h = Harness(executors=[("e0", "n0")])
    ids = h.submit("j", "batch", 101, options={"chunksize": 101})
    (chunk,) = h.sent("e0", p.LaunchChunk)
    h.join("e1", "n1")  # an idle executor, and nothing pending
    h.core.records.jobs["j"].subtask_ns = 1_000_000.0  # 1 ms tasks: worth stealing
    h.report("e0", p.Started(chunk.chunk_id, 0, 1))
    (steal,) = h.sent("e0", p.Steal)
    assert steal.chunk_id == chunk.chunk_id and steal.count == 50
    # No second steal while this one is under way.
    h.report("e0", p.Heartbeat("e0", "n", 1, 0, 1, 1, 0, 0, 1, 1, 1.0))
    assert h.sent("e0", p.Steal) == []
    h.report("e0", p.Stolen(chunk.chunk_id, ids[51:]))
    (moved,) = h.sent("e1", p.LaunchChunk)
    assert [s[0] for s in moved.subtasks] == ids[51:]
    run_chunk(h, "e1", moved)
    run_chunk(h, "e0", chunk, report=ids[:51])
    assert sorted(h.results) == sorted(ids) and all(len(v) == 1 for v in h.results.values())
    assert h.core.records.steal_count == 1


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        ("largest", {"c#1": ("e3", 50), "b#1": ("e4", 30)}),
        ("oldest", {"a#1": ("e3", 20), "b#1": ("e4", 30)}),
    ],
)
def test_idle_executors_each_steal_from_a_different_chunk_best_first(rule, expected):
    h = Harness(executors=[], steal_rule=rule)
    chunks = {}
    for job, n, executor_id in (("a", 41, "e0"), ("b", 61, "e1"), ("c", 101, "e2")):
        h.join(executor_id, "n0")  # each job goes whole to an executor of its own
        h.clock.now += MS  # a's tasks have waited longest, then b's
        h.submit(job, "batch", n, options={"chunksize": n})
        (chunks[job],) = h.sent(executor_id, p.LaunchChunk)
        h.core.records.jobs[job].subtask_ns = 1_000_000.0  # 1 ms tasks: worth stealing
    h.join("e3", "n1")
    h.join("e4", "n1")  # two idle executors, and nothing pending
    h.report("e0", p.Started(chunks["a"].chunk_id, 0, 1))
    assert h.core.records.steals_in_flight == expected
    sent = {s.chunk_id: s.count for e in ("e0", "e1", "e2") for s in h.sent(e, p.Steal)}
    assert sent == {chunk_id: count for chunk_id, (_, count) in expected.items()}


@pytest.mark.parametrize(
    ("subtask_ns", "options"),
    [
        # 1 us tasks: 50 of them are not worth a round trip.
        pytest.param(1_000.0, {}, id="steals-that-cannot-pay-for-themselves"),
        # 1 ms tasks would be worth stealing, but stealing is off.
        pytest.param(1_000_000.0, {"stealing": False}, id="stealing-turned-off"),
    ],
)
def test_no_steal_is_made_when_it_cannot_pay_or_stealing_is_off(subtask_ns, options):
    h = Harness(executors=[("e0", "n0")], **options)
    h.submit("j", "batch", 101, options={"chunksize": 101})
    (chunk,) = h.sent("e0", p.LaunchChunk)
    h.join("e1", "n1")  # an idle executor, and nothing pending
    h.core.records.jobs["j"].subtask_ns = subtask_ns
    h.report("e0", p.Started(chunk.chunk_id, 0, 1))
    assert h.sent("e0", p.Steal) == []


def test_a_stream_task_suspends_a_running_chunk():
    h = Harness(executors=[("e0", "n0")])
    h.submit("j", "batch", 50, options={"chunksize": 50})
    (chunk,) = h.sent("e0", p.LaunchChunk)
    h.report("e0", p.Started(chunk.chunk_id, 0, 1))
    h.submit("s", "stream", 1)
    assert [(type(m), m.task_id) for m in h.sent("e0")] == [
        (p.Suspend, chunk.chunk_id),
        (p.Launch, "s/0"),
    ]


def test_cancelling_a_task_inside_a_chunk_completes_it_once():
    h = Harness(executors=[("e0", "n0")])
    ids = h.submit("j", "batch", 3, options={"chunksize": 3})
    (chunk,) = h.sent("e0", p.LaunchChunk)
    h.handle(ClientRequest("c", p.Cancel([ids[1]])))
    assert h.results[ids[1]][0][1] == "cancelled"
    run_chunk(h, "e0", chunk)
    assert [item[1] for item in h.results[ids[1]]] == ["cancelled"]
    assert h.core.records.tasks[ids[0]].state is TaskState.DONE


def test_bad_chunk_options_refuse_the_job():
    h = Harness(executors=[("e0", "n0")])
    h.submit("j", "batch", 2, options={"chunksize": 0})
    assert "chunksize must be" in h.results["j/0"][0][3][1]

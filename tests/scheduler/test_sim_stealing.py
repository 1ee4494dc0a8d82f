"""Chunks and stealing in the cluster simulation: the real SchedulerCore, simulated executors.

Two layers, as in test_sim.py: a simulated executor running chunks as runtime/kernel.py does
(order, batched results, suspension points, steals from the tail, kills), then whole
clusters: stealing evens out chunks of very different sizes, every task completes exactly
once, a steal never moves a subtask that has started, the rules and the cost check decide
what is stolen, and a chunk stays suspendable for stream work.
"""

from __future__ import annotations

import collections
import random

import pytest

from tests.scheduler.test_sim import MS, US, Bench, launch
from tidal.runtime import protocol as p
from tidal.runtime.spanrun import CHUNK_REPORT_EVERY
from tidal.scheduler.sim import TASK_FN, TASK_PAYLOAD, JobSpec, SimCluster
from tidal.scheduler.sim_executor import NIL

TWO = [("e0", "n0"), ("e1", "n1")]


def chunk(chunk_id: str, ids: list[str], priority: str = "batch") -> p.LaunchChunk:
    return p.LaunchChunk(
        chunk_id, TASK_FN, None, [[tid, TASK_PAYLOAD] for tid in ids], 0, priority, 0
    )


def ids_of(prefix: str, n: int) -> list[str]:
    return [f"{prefix}/{i}" for i in range(n)]


def reports(bench: Bench) -> list[tuple[float, str, str]]:
    """(time in ms, op, chunk or task id) of every report but `received`, in order."""
    return [
        (t / MS, m.op, getattr(m, "chunk_id", getattr(m, "task_id", "")))
        for t, m in bench.reports
        if not isinstance(m, p.Received)
    ]


def results(bench: Bench) -> list[tuple[float, list[str]]]:
    return [
        (t / MS, [item[0] for item in m.items])
        for t, m in bench.reports
        if isinstance(m, p.ChunkResults)
    ]


# ---- one simulated executor running chunks --------------------------------------------------


def test_a_chunk_runs_its_subtasks_in_order_and_reports_every_512_of_them():
    ids = ids_of("t", 1200)
    bench = Bench(dict.fromkeys(ids, 0.01))  # 10 us each: the count fills a batch first
    bench.at(0, chunk("t#1", ids))
    bench.run()
    assert [len(batch) for _, batch in results(bench)] == [CHUNK_REPORT_EVERY] * 2 + [176]
    assert [tid for _, batch in results(bench) for tid in batch] == ids
    assert [tid for _, tid, e in bench.events if e == "subtask_started"] == ids
    assert reports(bench)[0] == (0, "started", "t#1")
    assert reports(bench)[-1] == (12, "finished", "t#1")
    first = next(m for _, m in bench.reports if isinstance(m, p.ChunkResults))
    assert first.items[0] == ["t/0", "finished", NIL, None, {"running_ns": 10 * US}]


def test_slow_subtasks_are_reported_every_20_ms_and_at_the_chunks_end():
    ids = ids_of("t", 10)
    bench = Bench(dict.fromkeys(ids, 5))
    bench.at(0, chunk("t#1", ids))
    bench.run()
    assert results(bench) == [(20, ids[0:4]), (40, ids[4:8]), (50, ids[8:10])]
    assert reports(bench)[-1] == (50, "finished", "t#1")


def test_a_suspend_parks_a_chunk_between_subtasks_after_reporting_them():
    ids = ids_of("t", 100)
    bench = Bench(dict.fromkeys(ids, 0.02))  # 20 us each: a subtask ends before a record
    bench.at(0, chunk("t#1", ids))
    bench.at(1.01, p.Suspend("t#1", 0))
    bench.at(5, p.Resume("t#1", 0))
    bench.run()
    assert [op for _, op, _ in reports(bench)] == [
        "started",
        "chunk_results",
        "suspended",
        "resumed",
        "chunk_results",
        "finished",
    ]
    (_, suspended) = bench.report(p.Suspended, "t#1")
    assert suspended.latency_ns == 10 * US and suspended.at_ns == round(1.02 * MS)
    assert results(bench) == [(1.02, ids[:51]), (5.98, ids[51:])]
    assert reports(bench)[-1] == (5.98, "finished", "t#1")


def test_a_suspend_parks_a_chunk_inside_a_long_subtask_which_keeps_its_progress():
    ids = ids_of("t", 3)
    bench = Bench(dict.fromkeys(ids, 10))
    bench.at(0, chunk("t#1", ids))
    bench.at(12, p.Suspend("t#1", 0))
    bench.at(30, p.Resume("t#1", 0))
    bench.run()
    (at, suspended) = bench.report(p.Suspended, "t#1")
    assert at == round(12.05 * MS) and suspended.records == 12  # a record boundary
    # As the kernel's record gate does, it parks where the subtask is: the one result it
    # holds goes out with the next batch (20 ms after the start, counting the pause).
    assert results(bench) == [(37.95, ids[:2]), (47.95, ids[2:])]
    (_, finished) = bench.report(p.Finished, "t#1")
    assert finished.stats["running_ns"] == 30 * MS


def test_a_steal_takes_subtasks_not_started_from_the_end_never_the_running_one():
    ids = ids_of("t", 10)
    bench = Bench(dict.fromkeys(ids, 5))
    bench.at(0, chunk("t#1", ids))
    bench.at(12, p.Steal("t#1", 4, 0))  # t/2 runs, t/3..t/9 wait: the last 4 go
    bench.at(20.1, p.Steal("t#1", 10, 0))  # more than is left: t/4 runs, only t/5 waits
    bench.at(21, p.Steal("nope", 3, 0))
    bench.run()
    stolen = [(t / MS, m.chunk_id, m.task_ids) for t, m in bench.reports if isinstance(m, p.Stolen)]
    # The second steal waits for t/4's next record boundary (1 ms records: at 21 ms), then
    # the hub's 50 us; the third arrives meanwhile and is applied with it.
    assert stolen == [(12.05, "t#1", ids[6:]), (21.05, "t#1", ids[5:6]), (21.05, "nope", [])]
    assert [tid for _, tid, e in bench.events if e == "subtask_started"] == ids[:5]
    assert [tid for _, batch in results(bench) for tid in batch] == ids[:5]
    assert reports(bench)[-1] == (25, "finished", "t#1")


def test_a_queued_chunk_gives_up_any_of_its_subtasks():
    ids = ids_of("t", 4)
    bench = Bench({"b0": 10} | dict.fromkeys(ids, 1))
    bench.at(0, launch("b0"))
    bench.at(0, chunk("t#1", ids))
    bench.at(1, p.Steal("t#1", 3, 0))
    bench.run()
    assert [m.task_ids for _, m in bench.reports if isinstance(m, p.Stolen)] == [ids[1:]]
    assert results(bench) == [(11, ids[:1])]


def test_a_killed_chunk_reports_the_subtasks_it_completed_then_killed():
    ids = ids_of("t", 10)
    bench = Bench(dict.fromkeys(ids, 5))
    bench.at(0, chunk("t#1", ids))
    bench.at(12, p.Kill("t#1", 0))
    bench.run()
    assert reports(bench)[1:] == [(12.05, "chunk_results", "t#1"), (12.05, "killed", "t#1")]
    assert results(bench) == [(12.05, ids[:2])]


# ---- clusters -------------------------------------------------------------------------------


def uneven_jobs() -> list[JobSpec]:
    """Chunk sizes 20x apart, tasks of 5 ms: a job of 200 with chunksize 200 (both executors
    idle, the policy launches two of its tasks: chunks of 199 and 1), three of 10 with 10."""
    big = JobSpec("big", "batch", 0.0, [0.005] * 200, chunksize=200)
    small = [JobSpec(f"s{i}", "batch", 0.0, [0.005] * 10, chunksize=10) for i in range(3)]
    return [big, *small]


def ran(result) -> collections.Counter:
    """How many times each task started on an executor (the executors' own record)."""
    return collections.Counter(
        task_id
        for _, _, task_id, event in result.timeline
        if event == "subtask_started" or (event == "started" and "#" not in task_id)
    )


@pytest.mark.parametrize("policy", ["lb", "fifo", "fair"])
def test_stealing_evens_out_chunks_of_very_different_sizes(policy):
    jobs = uneven_jobs()
    ideal = sum(sum(job.durations_s) for job in jobs) / len(TWO)
    stealing = SimCluster(policy, TWO).run(jobs)
    alone = SimCluster(policy, TWO, stealing=False).run(jobs)
    assert stealing.completed_once and alone.completed_once
    assert stealing.batch_makespan_s <= 1.15 * ideal
    assert alone.batch_makespan_s >= 1.5 * ideal
    assert stealing.steals >= 1 and alone.steals == 0
    assert not any(event == "stolen" for *_, event in alone.timeline)


def heavy(seed: int, executors: int = 6, **options) -> tuple[SimCluster, list[JobSpec]]:
    """A big chunk of uneven subtasks, a second job in two chunks, stream tasks throughout."""
    rng = random.Random(seed)
    cluster = [(f"e{i}", f"n{i % 2}") for i in range(executors)]
    jobs = [
        JobSpec(
            "big", "batch", 0.0, [rng.uniform(0.001, 0.01) for _ in range(1500)], chunksize=1500
        ),
        JobSpec(
            "mid", "batch", 0.02, [rng.uniform(0.001, 0.01) for _ in range(300)], chunksize=150
        ),
    ]
    jobs += [JobSpec(f"s{i}", "stream", 0.01 + 0.05 * i, [0.003]) for i in range(20)]
    sim = SimCluster("lb", cluster, heartbeat_s=0.05, seed=seed, **options)
    return sim, jobs


@pytest.mark.parametrize("rule", ["largest", "oldest"])
def test_under_heavy_stealing_every_task_runs_and_completes_exactly_once(rule):
    sim, jobs = heavy(seed=1, steal_rule=rule)
    result = sim.run(jobs)
    assert result.completed_once and not result.stalled
    assert result.steals >= 10
    assert all(t.outcome == "finished" for t in result.tasks.values())
    starts = ran(result)
    assert set(starts) == set(result.tasks) and set(starts.values()) == {1}
    # Whatever was stolen had not started on its victim, and ran once, later, on the executor
    # of the chunk it was moved to (a subtask may be stolen again from a thief).
    where = {
        task_id: (time, executor_id)
        for time, executor_id, task_id, event in result.timeline
        if event == "subtask_started"
    }
    stolen = [(t, e, task_id) for t, e, task_id, event in result.timeline if event == "stolen"]
    assert len(stolen) >= 100
    last_victim = {}
    for time, victim, task_id in stolen:
        assert where[task_id][0] > time
        last_victim[task_id] = victim
    for task_id, victim in last_victim.items():
        ran_on = where[task_id][1]
        assert ran_on != victim and result.tasks[task_id].executor_id == ran_on
    # Deterministic: the same run again is the same run.
    again, jobs = heavy(seed=1, steal_rule=rule)
    assert again.run(jobs).timeline == result.timeline


def test_with_an_executor_failing_mid_run_every_task_still_completes_exactly_once():
    sim, jobs = heavy(seed=2)
    sim.fail_executor("e0", at_s=0.3)
    result = sim.run(jobs)
    assert result.completed_once and not result.stalled
    assert all(t.outcome == "finished" for t in result.tasks.values())
    assert result.steals >= 5
    lost = result.lost_tasks["e0"]
    assert lost and all("#" not in task_id for task_id in lost)
    assert result.work_lost_s > 0
    # What the failed executor held ran again elsewhere, as a new attempt.
    assert any(result.tasks[task_id].attempt >= 1 for task_id in lost)
    assert all(result.tasks[task_id].executor_id != "e0" for task_id in lost)
    # Nothing else ran twice: only what e0 held when it failed.
    assert {task_id for task_id, n in ran(result).items() if n > 1} <= set(lost)


def test_the_oldest_rule_steals_from_the_oldest_chunk_and_largest_from_the_largest():
    # x's chunk is formed first and is smaller than y's; z's executor runs out of work first.
    three = [("e0", "n0"), ("e1", "n0"), ("e2", "n1")]
    jobs = [
        JobSpec("x", "batch", 0.0, [0.005] * 40, chunksize=40),
        JobSpec("y", "batch", 0.001, [0.005] * 100, chunksize=100),
        JobSpec("z", "batch", 0.002, [0.005] * 10, chunksize=10),
    ]
    first = {}
    for rule in ("largest", "oldest"):
        result = SimCluster("lb", three, steal_rule=rule).run(jobs)
        assert result.completed_once and set(ran(result).values()) == {1}
        (time, _, task_id) = next(
            (t, e, tid) for t, e, tid, event in result.timeline if event == "stolen"
        )
        assert 0.05 < time < 0.06  # when z's executor went idle
        first[rule] = task_id.split("/")[0]
    assert first == {"largest": "y", "oldest": "x"}


def test_stealing_turned_off_makes_no_steals():
    sim, jobs = heavy(seed=3, stealing=False)
    result = sim.run(jobs)
    assert result.completed_once and result.steals == 0 and sim.core.stealer is None
    assert not any(event == "stolen" for *_, event in result.timeline)


@pytest.mark.parametrize(("subtask_s", "stolen"), [(10e-6, False), (100e-6, True)])
def test_steals_that_cannot_pay_for_themselves_are_not_made(subtask_s, stolen):
    # 600 subtasks in (nearly) one chunk, the other executor idle. Half of them is ~300
    # subtasks: ~4 ms of work at 10 us each (and the per-subtask cost), under the cost of a
    # steal; ~30 ms at 100 us, well over it.
    job = JobSpec("t", "batch", 0.0, [subtask_s] * 600, chunksize=600)
    result = SimCluster("lb", TWO).run([job])
    assert result.completed_once and set(ran(result).values()) == {1}
    assert (result.steals > 0) is stolen
    stolen_ids = {tid for _, _, tid, event in result.timeline if event == "stolen"}
    assert (len(stolen_ids) >= 100) is stolen


def test_a_stream_task_arriving_mid_chunk_runs_at_once_and_the_chunk_resumes():
    # Two chunks of 100 tasks of 5 ms, one per executor; a stream task of 2 ms at ~0.3 s.
    jobs = [
        JobSpec("a", "batch", 0.0, [0.005] * 200, chunksize=100),
        JobSpec("s", "stream", 0.3021, [0.002]),
    ]
    result = SimCluster("lb", TWO).run(jobs)
    assert result.completed_once and set(ran(result).values()) == {1}
    assert result.stream_ms_p50 < 4
    victim = result.tasks["s/0"].executor_id
    events = [
        (tid, event)
        for _, e, tid, event in result.timeline
        if e == victim and event in ("started", "suspended", "resumed", "finished")
    ]
    (chunk,) = [tid for tid, event in events if event == "suspended"]
    at = events.index((chunk, "suspended"))
    assert events[at - 1 : at + 5] == [
        (chunk, "started"),
        (chunk, "suspended"),
        ("s/0", "started"),
        ("s/0", "finished"),
        (chunk, "resumed"),
        (chunk, "finished"),
    ]
    assert result.suspensions == 1 and result.work_lost_s == 0
    assert result.batch_makespan_s < 0.51  # 0.5 s of work each, and the stream task's 2 ms


def test_a_jobs_chunksize_goes_out_in_its_submission():
    jobs = [JobSpec("a", "batch", 0.0, [0.001] * 7, chunksize=3), JobSpec("b", "batch", 0, [0.001])]
    sim = SimCluster("fifo", [("e0", "n0")])
    result = sim.run(jobs)
    assert (
        sim.core.records.jobs["a"].chunksize == 3 and sim.core.records.jobs["b"].chunksize is None
    )
    chunks = [tid for _, _, tid, event in result.timeline if event == "started" and "#" in tid]
    assert chunks == ["a#1", "a#2", "a#3"]
    with pytest.raises(ValueError, match="chunksize"):
        JobSpec("c", "batch", 0.0, [0.001], chunksize=0)

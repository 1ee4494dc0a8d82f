"""The records and their views: the bulk questions a policy asks of `ClusterView` at scale
(`free_capacities`, `free_slots`, `any_suspended`) and an executor's kept memory pressure
agree, after every event of whole simulated runs, with asking each executor's view; and a
task's record length, as its executor reports it."""

from __future__ import annotations

import random

import pytest

from tests.scheduler.harness import MS, Harness
from tidal.runtime import payloads
from tidal.runtime import protocol as p
from tidal.scheduler.scenarios import mixed_scenario
from tidal.scheduler.sim import JobSpec, SimCluster
from tidal.scheduler.views import ClusterView


def check_views(view: ClusterView) -> None:
    executors = view.executors()
    assert view.free_capacities() == {
        e.executor_id: e.free_capacity for e in executors if e.free_capacity > 0
    }
    assert list(view.free_capacities()) == [
        e.executor_id for e in executors if e.free_capacity > 0
    ]  # in the order they joined
    assert [e.executor_id for e in view.free_slots()] == [
        e.executor_id for e in executors if e.slot_free
    ]
    assert view.any_suspended() == any(e.suspended for e in executors)
    for e in executors:
        window = e.metrics_window
        mean = sum(m.mem_percent for m in window) / len(window) / 100 if window else 0.0
        assert e.memory_pressure == mean


def checked(sim: SimCluster) -> list[int]:
    """Check the views after every event the core handles; return a one-item list counting
    the events, to show the check ran."""
    handle, seen = sim.core.handle, [0]

    def handle_and_check(event):
        out = handle(event)
        check_views(sim.core.view)
        seen[0] += 1
        return out

    sim.core.handle = handle_and_check
    return seen


def memory(executor_id: str, now_s: float) -> float:
    return 90.0 if executor_id == "e1" and now_s > 0.5 else 20.0 + 10 * (now_s % 1)


@pytest.mark.parametrize("policy", ["lb", "kill", "fifo", "fair", "lma"])
def test_bulk_answers_match_each_executors_view_in_a_mixed_run_with_a_failure(policy):
    executors, jobs = mixed_scenario("stream-heavy", seed=3, executors=6, nodes=3, duration_s=2.0)
    # Tiny unchunked tasks give executors prefetch queues; chunks bring steals.
    jobs.append(JobSpec("tiny", "batch", 0.1, [0.0005] * 300))
    jobs.append(JobSpec("chunked", "batch", 0.2, [0.002] * 400, chunksize=200))
    sim = SimCluster(policy, executors, memory=memory, heartbeat_s=0.1, seed=3)
    sim.fail_executor("e4", at_s=0.6)
    seen = checked(sim)
    result = sim.run(sorted(jobs, key=lambda j: j.arrival_s))
    assert result.completed_once and seen[0] > 1_000
    # The views were checked while tasks left their slots for stream work (kill kills; its
    # suspensions came only from races with prefetched launches, which timing decides).
    killed = any(event == "killed" for *_, event in result.timeline)
    assert result.suspensions > 0 or (policy == "kill" and killed) or policy in ("fifo", "fair")


def test_bulk_answers_match_under_heavy_stealing_and_stream_work():
    rng = random.Random(5)
    executors = [(f"e{i}", f"n{i % 2}") for i in range(8)]
    jobs = [
        JobSpec(
            f"big{j}", "batch", 0.0, [rng.uniform(0.001, 0.01) for _ in range(500)], chunksize=500
        )
        for j in range(3)
    ]
    jobs += [JobSpec(f"s{i}", "stream", 0.01 + 0.03 * i, [0.003]) for i in range(30)]
    sim = SimCluster("lb", executors, heartbeat_s=0.05, seed=5)
    seen = checked(sim)
    result = sim.run(sorted(jobs, key=lambda j: j.arrival_s))
    assert result.completed_once and result.steals > 0 and seen[0] > 500


def test_a_running_tasks_record_length_is_in_its_view_before_any_suspension():
    h = Harness(policy="fifo")
    (task,) = h.submit("b", "batch", 1)
    (executor,) = [e for e in ("e0", "e1") if h.sent(e, p.Launch)]
    h.start(executor, task)
    view = h.core.view
    h.heartbeat(executor, {task: [30 * MS, 0]})
    assert view.task(task).record_ns is None  # not a record consumed yet
    # 3 records and half of the next, on average, in 35 ms: 10 ms a record.
    h.heartbeat(executor, {task: [35 * MS, 3]})
    assert view.task(task).record_ns == 10 * MS and view.task(task).suspensions == 0
    # A peer's word: figures that are not counts tell nothing, nor does a heartbeat without
    # them (a version-10 executor's); the last known length stays.
    for bad in ([35 * MS], ["35", 3], [35 * MS, -1], [True, 3], "x", None):
        h.heartbeat(executor, {task: bad})
        assert view.task(task).record_ns == 10 * MS
    h.heartbeat(executor, None)
    assert view.task(task).record_ns == 10 * MS
    # Its end tells it too: 4 records (and half of one) in 90 ms.
    stats = {"running_ns": 90 * MS, "records": 4}
    h.report(executor, p.Finished(task, 0, payloads.pack_payload(None), stats))
    assert view.task(task).record_ns == 20 * MS

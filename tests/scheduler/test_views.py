"""The records and their views: the bulk questions a policy asks of `ClusterView` at scale
(`free_capacities`, `free_slots`, `any_suspended`) and an executor's kept memory pressure
agree, after every event of whole simulated runs, with asking each executor's view."""

from __future__ import annotations

import random

import pytest

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

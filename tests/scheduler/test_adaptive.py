"""The adaptive policy: what it measures, the regime it picks and why, and the reserve it
keeps. Scripted cores (tests/scheduler/harness.py) and the simulation (scheduler/sim.py):
a fake clock, seeded workloads, no sockets. How well it does against the fixed policies is
the benchmark's to say (`tidal bench policies`), not these tests'.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import fields

import pytest

from tests.scheduler.harness import CLIENT_ID, MS, Harness
from tidal.runtime import protocol as p
from tidal.runtime.bench import policies as bench
from tidal.scheduler.core import ClientRequest, Tick
from tidal.scheduler.policies.adaptive import (
    R_ENTER,
    AdaptivePolicy,
    Decayed,
    Figures,
    ReservingLb,
    Workload,
)
from tidal.scheduler.scenarios import SCENARIO_KINDS
from tidal.scheduler.sim import SimCluster

FIGURES = {f.name for f in fields(Figures)}


@pytest.fixture(autouse=True)
def quiet():
    logging.getLogger("tidal.scheduler").setLevel(logging.ERROR)
    yield
    logging.getLogger("tidal.scheduler").setLevel(logging.NOTSET)


def simulate(kind: str, policy, seed: int = 1):
    """The benchmark's mix `kind` under `policy` (a name or an instance)."""
    executors, jobs = bench.scenario(kind, seed)
    limit = SCENARIO_KINDS[kind].memory_limit_mb
    sim = SimCluster(policy, executors, memory=bench.PRESSURED, memory_limit_mb=limit)
    return sim.run(jobs)


def launched(h: Harness) -> dict[str, str]:
    """The launches the core sent since the last look: executor id -> task id."""
    return {e: m.task_id for e in list(h.to_executor) for m in h.sent(e, p.Launch)}


# ---- what it measures -------------------------------------------------------------------------


def test_a_rate_needs_two_events_then_follows_them():
    rate = Decayed(2_000 * MS)
    rate.add(0, 3)
    assert rate.per_s(10 * MS) == 0.0
    for i in range(1, 11):  # 3 tasks every 100 ms
        rate.add(i * 100 * MS, 3)
    assert rate.per_s(1_000 * MS) == pytest.approx(30, rel=0.05)
    assert rate.value(1_000 * MS) < 33  # older amounts count less


def test_task_lengths_are_measured_from_launch_to_end():
    policy = AdaptivePolicy()
    h = Harness(policy=policy)
    (batch,) = h.submit("b", "batch", 1)
    (stream,) = h.submit("s", "stream", 1)
    where = {m.task_id: e for e in ("e0", "e1") for m in h.sent(e, p.Launch)}
    assert where[batch] != where[stream]  # the stream task took the free slot
    h.start(where[stream], stream)
    h.clock.now += 5 * MS
    h.finish(where[stream], stream)
    h.start(where[batch], batch)
    h.clock.now += 200 * MS
    h.finish(where[batch], batch)
    h.clock.now += 20 * MS
    h.handle(Tick())
    figures = policy.workload.figures(h.core.view)
    assert figures.stream_task_s == pytest.approx(0.005)
    assert figures.batch_task_s == pytest.approx(0.205) and figures.batch_measured
    assert figures.executors == 2 and figures.cap == h.core.view.max_suspensions


def test_heartbeats_tell_what_a_suspension_costs_before_any_is_made():
    policy = AdaptivePolicy()
    h = Harness(policy=policy)
    h.submit("b", "batch", 2)
    running = launched(h)
    for executor, task in running.items():
        h.start(executor, task)
    assert not policy.workload.figures(h.core.view).suspend_known
    executor, task = next(iter(running.items()))
    h.heartbeat(executor, {task: [250 * MS, 2]})  # records of 100 ms
    figures = policy.workload.figures(h.core.view)
    assert figures.suspend_known and figures.suspend_s == pytest.approx(0.05)
    assert all(h.core.view.task(t).suspensions == 0 for t in running.values())


# ---- the reserve ------------------------------------------------------------------------------


def test_a_reserve_keeps_executors_free_of_new_batch_work():
    policy = ReservingLb(Workload(2_000 * MS), stream_reserve=1)
    h = Harness(policy=policy, executors=[("e0", "n0"), ("e1", "n0"), ("e2", "n1")])
    h.submit("b", "batch", 5)
    batch = {e: [m.task_id for m in h.sent(e, p.Launch)] for e in ("e0", "e1", "e2")}
    assert batch == {"e0": ["b/0"], "e1": ["b/1"], "e2": []}  # the last to join is kept
    (stream,) = h.submit("s", "stream", 1)
    assert [m.task_id for m in h.sent("e2", p.Launch)] == [stream]


def test_a_task_parked_on_the_reserve_stays_parked_until_the_reserve_is_met_elsewhere():
    policy = ReservingLb(Workload(2_000 * MS))  # no reserve yet: LB's placement
    h = Harness(policy=policy)
    h.submit("b", "batch", 2)
    running = {}
    for executor in ("e0", "e1"):
        (launch,) = h.sent(executor, p.Launch)
        h.start(executor, launch.task_id)
        running[executor] = launch.task_id
    policy.stream_reserve = 1
    (stream,) = h.submit("s", "stream", 1)
    victim = next(e for e in ("e0", "e1") if h.to_executor.get(e))
    other = "e1" if victim == "e0" else "e0"
    suspend, launch = h.sent(victim)
    assert suspend == p.Suspend(running[victim], h.clock.now) and launch.task_id == stream
    h.report(victim, p.Suspended(running[victim], 1_000, 5, h.clock.now))
    h.start(victim, stream)
    h.finish(victim, stream)
    assert h.sent(victim) == []  # no resume: that executor is the reserve now
    h.finish(other, running[other])  # the other executor idles: the reserve is met there
    assert [type(m) for m in h.sent(victim)] == [p.Resume]


# ---- the regime, and why ----------------------------------------------------------------------


def test_every_switch_is_recorded_with_the_figures_behind_it():
    policy = AdaptivePolicy()
    result = simulate("stream-heavy", policy)
    assert result.completed_once
    assert policy.switches
    for switch in policy.switches:
        assert switch.reason and set(switch.figures) == FIGURES
    # Stream tasks come far faster than the batch tasks bring suspensions: a reserve.
    (to_reserve, *_) = [s for s in policy.switches if s.to_policy == "reserve" and "R=" in s.reason]
    assert to_reserve.figures["demand"] >= R_ENTER
    assert to_reserve.figures["reserve"] >= 1


def test_switches_away_from_a_reserve_wait_the_minimum_dwell():
    policy = AdaptivePolicy(min_dwell_s=1.0)
    simulate("bursty", policy)
    switches = policy.switches
    assert len(switches) >= 3
    checked = 0
    for before, after in itertools.pairwise(switches):
        smaller = after.to_policy == "reserve" and after.reserve < before.reserve
        # A reserve kept only until a suspension's cost is known is left when it is.
        if (
            after.from_policy == "reserve"
            and not before.provisional
            and (after.to_policy != "reserve" or smaller)
        ):
            assert after.at_ns - before.at_ns >= 1_000 * MS, (before, after)
            checked += 1
    assert checked >= 1  # the run has a switch the dwell applies to


def test_without_stream_work_adaptive_uses_fifo_or_fair_and_never_preempts():
    policy = AdaptivePolicy()
    h = Harness(policy=policy, executors=[("e0", "n0")])
    h.submit("a", "batch", 2)
    h.submit("b", "batch", 2)
    h.handle(Tick())
    assert policy.current in {"fifo", "fair"} and not policy.preempts


def test_where_a_parked_task_and_a_stream_task_do_not_fit_adaptive_does_not_park():
    lb, adaptive = simulate("memory", "lb"), simulate("memory", AdaptivePolicy())
    assert lb.tasks_failed > 0  # LB parks, and the memory guard fails stream tasks
    assert adaptive.tasks_failed == 0 and adaptive.completed_once


def test_memory_limits_lead_to_a_reserve_and_say_so():
    policy = AdaptivePolicy()
    simulate("memory", policy)
    assert any("memory limit" in s.reason for s in policy.switches if s.to_policy == "reserve")


def test_until_a_suspensions_cost_is_known_a_reserve_is_kept_and_left_as_soon_as_it_is():
    policy = AdaptivePolicy()
    h = Harness(policy=policy, executors=[("e0", "n0"), ("e1", "n0"), ("e2", "n1")])
    # A stream driver reports from its start: its source is live before any micro-batch.
    h.handle(ClientRequest(CLIENT_ID, p.StreamLag("events", 0, -1.0)))
    h.submit("b", "batch", 3)
    running = launched(h)
    assert sorted(running) == ["e0", "e1"]  # e2 kept for the stream work to come
    (switch,) = policy.switches
    assert switch.to_policy == "reserve" and switch.reserve == 1 and switch.provisional
    assert "live" in switch.reason and "a suspension's wait is unknown" in switch.reason
    for executor, task in running.items():
        h.start(executor, task)
    h.heartbeat("e0", {running["e0"]: [5 * MS, 5]})  # records of 1 ms: suspending is quick
    assert policy.current == "lb"  # at once: no dwell for a reserve kept for want of it
    assert policy.switches[-1].figures["suspend_known"]
    h.submit("s", "stream", 1)
    h.finish("e0", running["e0"])
    assert launched(h)  # the executors take work again as LB places it


def test_a_reserve_kept_for_want_of_figures_has_an_executor_per_task_of_a_micro_batch():
    policy = AdaptivePolicy()
    h = Harness(policy=policy, executors=[(f"e{i}", f"n{i % 2}") for i in range(5)])
    h.submit("s", "stream", 3)  # a micro-batch of three, before any record is known
    assert policy.current == "reserve" and policy.switches[-1].reserve == 3
    h.submit("b", "batch", 5)
    assert len(launched(h)) == 5  # the three stream tasks, and batch work on two executors


def test_on_coarse_records_adaptive_is_within_a_tenth_of_the_best_fixed_policy():
    # Batch tasks reach a record boundary every 50 ms, and the first micro-batch comes
    # when batch work fills the cluster (scheduler/scenarios.py): what a suspension costs
    # is not known then, so a reserve from the first fill, kept once heartbeats tell.
    runs = {name: bench.run_one(name, "coarse-records", 1, 3) for name in bench.POLICIES}
    mix = bench._judged(runs)
    assert mix["adaptive_vs_best"] <= 1.1, mix["scores"]
    policy = AdaptivePolicy()
    result = simulate("coarse-records", policy)
    first_batch = min(t.submitted_s for t in result.tasks.values() if t.priority == "batch")
    assert policy.switches[0].to_policy == "reserve"
    assert policy.switches[0].at_ns / 1e9 < first_batch
    assert policy.current == "reserve" and result.max_suspensions_per_task <= 3


def test_slow_records_reported_in_heartbeats_are_named_as_the_reason_for_the_reserve():
    policy = AdaptivePolicy()
    h = Harness(policy=policy, executors=[("e0", "n0"), ("e1", "n0"), ("e2", "n1")])
    (stream,) = h.submit("s", "stream", 1)
    (where,) = [e for e in ("e0", "e1", "e2") if h.sent(e, p.Launch)]
    h.start(where, stream)
    h.clock.now += 5 * MS
    h.finish(where, stream)  # a stream task takes 5 ms
    h.submit("b", "batch", 3)
    running = launched(h)
    assert len(running) == 2  # a reserve: a suspension's cost is not known yet
    for executor, task in running.items():
        h.start(executor, task)
    executor, task = next(iter(running.items()))
    h.heartbeat(executor, {task: [125 * MS, 2]})  # records of 50 ms, none suspended yet
    last = policy.switches[-1]
    assert policy.current == "reserve" and not h.core.view.task(task).suspensions
    assert "a suspension takes 25.0 ms, a stream task 5.0 ms" in last.reason
    assert last.figures["suspend_known"] and last.figures["suspend_s"] == pytest.approx(0.025)


def test_adaptive_kills_only_parked_tasks_to_keep_its_reserve_within_the_kill_cap():
    result = simulate("stream-heavy", AdaptivePolicy())
    assert result.completed_once
    events: dict[str, list[str]] = {}
    for _, _, task_id, event in result.timeline:
        events.setdefault(task_id, []).append(event)
    killed = [task_id for task_id, seen in events.items() if "killed" in seen]
    assert killed  # the run kills parked tasks: the checks below see some
    for task_id in killed:
        seen = events[task_id]
        assert seen[seen.index("killed") - 1] == "suspended", (task_id, seen)
        assert seen.count("killed") <= 3  # the kill cap: the cluster's max_suspensions
    assert result.max_suspensions_per_task <= 3


def test_a_lagging_source_is_stream_work_and_lb_keeps_its_slot():
    # As tests/scheduler/test_lag.py, through adaptive's own LB (no reserve of its own).
    h = Harness(policy="adaptive")
    (first,) = h.submit("a", "batch", 1)
    (executor,) = [e for e in ("e0", "e1") if h.sent(e, p.Launch)]
    h.start(executor, first)
    h.heartbeat(executor, {first: [5 * MS, 5]})  # a suspension is known to be quick
    h.finish(executor, first)
    h.handle(ClientRequest(CLIENT_ID, p.StreamLag("ads", 5000, 2500.0)))
    h.submit("b", "batch", 4)
    launches = [m for e in ("e0", "e1") for m in h.sent(e, p.Launch)]
    assert h.core.policy.current == "lb" and len(launches) == 1


# ---- the benchmark's verdicts ---------------------------------------------------------------


def _run(p99: float, makespan: float, failed: int = 0) -> dict:
    return dict.fromkeys(bench.MIX_FIGURES, 0) | {
        "stream_ms_p99": p99,
        "batch_makespan_s": makespan,
        "tasks_failed": failed,
    }


def test_a_policy_that_fails_a_task_has_no_score_and_cannot_be_best():
    mix = bench._judged(
        {
            "lb": _run(5.0, 4.0, failed=3),  # best on both, but it lost tasks
            "static": _run(10.0, 5.0),
            "fifo": _run(100.0, 4.5),
            "adaptive": _run(10.0, 4.5),
        }
    )
    assert mix["scores"]["lb"] is None
    assert mix["scores"]["static"] == pytest.approx(10 / 10 + 5 / 4.5)
    assert mix["best_fixed_policy"] == "static" and mix["winner"] == "adaptive"
    assert mix["adaptive_vs_best"] == pytest.approx(2.0 / (1 + 5 / 4.5))
    failing = bench._judged({"static": _run(10.0, 5.0), "adaptive": _run(1.0, 1.0, failed=1)})
    assert failing["adaptive_vs_best"] == float("inf") and failing["winner"] == "static"

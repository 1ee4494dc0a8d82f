"""The cluster simulation: the real SchedulerCore with simulated executors on a fake clock.

Two layers: the simulated executor alone (it must behave like runtime/kernel.py, or policy
results mean nothing), then whole clusters under FIFO and LB.
"""

from __future__ import annotations

import dataclasses

import pytest

from tidal.runtime import payloads
from tidal.runtime import protocol as p
from tidal.scheduler.decisions import Launch
from tidal.scheduler.policies import BUILTIN_POLICIES, Policy
from tidal.scheduler.policies.lb import LbPolicy
from tidal.scheduler.scenarios import SCENARIO_KINDS, mixed_scenario
from tidal.scheduler.sim import (
    TASK_FN,
    TASK_PAYLOAD,
    EventLoop,
    JobSpec,
    SimCluster,
    SimExecutor,
)

US = 1_000
MS = 1_000_000
MIB = 1 << 20
TWO_NODES = [("e0", "n0"), ("e1", "n0"), ("e2", "n1"), ("e3", "n1")]


# ---- the simulated executor ---------------------------------------------------------------


class Bench:
    """One SimExecutor on its own loop; keeps its reports and events with their times."""

    def __init__(
        self,
        work_ms: dict[str, float],
        *,
        profiles: dict[str, tuple[float, float]] | None = None,
        memory_limit_mb: float | None = None,
    ) -> None:
        """`profiles`: task id -> (record_ms, memory_mb); by default 1 ms records, no memory."""
        profiles = profiles or {}
        self.loop = EventLoop()
        self.reports: list[tuple[int, p.Message]] = []
        self.events: list[tuple[int, str, str]] = []
        self.executor = SimExecutor(
            "e0",
            "n0",
            self.loop,
            lambda msg: self.reports.append((self.loop.now, msg)),
            lambda task_id: round(work_ms[task_id] * MS),
            suspend_latency_ns=50 * US,
            record_ns=1 * MS,
            on_event=lambda event, record: self.events.append(
                (self.loop.now, record.task_id, event)
            ),
            task_profile=lambda task_id: tuple(
                round(x * unit)
                for x, unit in zip(profiles.get(task_id, (0, 0)), (MS, MIB), strict=True)
            ),
            memory_limit_bytes=None if memory_limit_mb is None else round(memory_limit_mb * MIB),
            base_rss_bytes=100 * MIB,
        )

    def at(self, ms: float, message: p.Message) -> None:
        self.loop.at(round(ms * MS), self.executor.receive, message)

    def run(self) -> None:
        self.loop.run()

    def sequence(self) -> list[tuple[str, str]]:
        return [(task_id, event) for _, task_id, event in self.events]

    def report(self, kind: type, task_id: str) -> tuple[int, p.Message]:
        (found,) = [(t, m) for t, m in self.reports if isinstance(m, kind) and m.task_id == task_id]
        return found


def launch(task_id: str, priority: str = "batch", attempt: int = 0) -> p.Launch:
    return p.Launch(task_id, TASK_FN, None, TASK_PAYLOAD, attempt, priority, 0)


def test_a_stream_launch_runs_before_batch_launches_queued_earlier():
    bench = Bench({"b0": 10, "b1": 10, "s0": 2})
    bench.at(0, launch("b0"))
    bench.at(0, launch("b1"))
    bench.at(1, launch("s0", "stream"))
    bench.run()
    assert [e for e in bench.sequence() if e[1] == "started"] == [
        ("b0", "started"),
        ("s0", "started"),
        ("b1", "started"),
    ]
    # Without a suspend, the stream task waits for the running one, no longer.
    assert bench.report(p.Started, "s0")[0] == 10 * MS


def test_a_suspended_task_parks_at_a_boundary_keeps_its_work_and_resumes_before_new_batch():
    bench = Bench({"b0": 10, "b1": 10, "s0": 3})
    bench.at(0, launch("b0"))
    bench.at(0, launch("b1"))
    bench.at(2, p.Suspend("b0", 0))
    bench.at(2, launch("s0", "stream"))
    bench.at(3, p.Resume("b0", 0))  # arrives while s0 runs: waits for its boundary
    bench.run()
    assert bench.sequence() == [
        ("b0", "started"),
        ("b0", "suspended"),
        ("s0", "started"),
        ("s0", "finished"),
        ("b0", "resumed"),
        ("b0", "finished"),
        ("b1", "started"),
        ("b1", "finished"),
    ]
    parked_at, suspended = bench.report(p.Suspended, "b0")
    assert parked_at == 2 * MS + 50 * US and suspended.latency_ns == 50 * US
    assert suspended.records == 2
    finished_at, finished = bench.report(p.Finished, "b0")
    # 2.05 ms done before the suspension, 7.95 ms after s0's 3 ms: nothing redone.
    assert finished_at == (2.05 + 3 + 7.95) * MS
    assert finished.stats["running_ns"] == 10 * MS
    assert finished.stats["suspended_ns"] == 3 * MS
    assert finished.stats["suspensions"] == 1 and finished.stats["records"] == 10
    assert payloads.unpack_payload(finished.result) is None


def test_a_task_suspended_before_it_ran_is_queued_again_as_a_launch():
    bench = Bench({"b0": 10, "b1": 5})
    bench.at(0, launch("b0"))
    bench.at(0, launch("b1"))
    bench.at(1, p.Suspend("b1", 0))
    bench.at(2, p.Resume("b1", 0))
    bench.run()
    assert bench.sequence() == [
        ("b0", "started"),
        ("b1", "suspended"),
        ("b0", "finished"),
        ("b1", "started"),  # Started, not Resumed: it never ran
        ("b1", "finished"),
    ]
    assert not [m for _, m in bench.reports if isinstance(m, p.Resumed)]


def test_kill_reports_the_work_lost_and_commands_that_do_not_apply_are_refused():
    bench = Bench({"b0": 10, "b1": 1})
    bench.at(0, launch("b0"))
    bench.at(4, p.Kill("b0", 0))
    bench.at(6, p.Kill("b0", 0))
    bench.at(6, p.Resume("b1", 0))
    bench.at(6, launch("b1"))
    bench.at(6, launch("b1"))
    bench.at(6, p.Suspend("nope", 0))
    bench.run()
    killed_at, killed = bench.report(p.Killed, "b0")
    assert killed_at == 4.05 * MS and killed.stats["running_ns"] == 4.05 * MS
    refused = [(m.command, m.task_id) for _, m in bench.reports if isinstance(m, p.Refused)]
    assert refused == [("kill", "b0"), ("resume", "b1"), ("launch", "b1"), ("suspend", "nope")]
    assert ("b1", "finished") in bench.sequence()


def test_a_suspend_that_crosses_the_finish_is_refused_after_the_result():
    bench = Bench({"b0": 1})
    bench.at(0, launch("b0"))
    bench.at(0.98, p.Suspend("b0", 0))  # the boundary would come at 1.03 ms: too late
    bench.run()
    assert [type(m) for _, m in bench.reports] == [p.Received, p.Started, p.Finished, p.Refused]


def test_a_command_waits_for_the_running_tasks_next_record_boundary():
    # b0's records are 10 ms long: a suspend at 23 ms is seen at its boundary at 30 ms.
    bench = Bench({"b0": 100, "s0": 2}, profiles={"b0": (10, 0)})
    bench.at(0, launch("b0"))
    bench.at(23, p.Suspend("b0", 0))
    bench.at(23, launch("s0", "stream"))
    bench.run()
    parked_at, suspended = bench.report(p.Suspended, "b0")
    assert parked_at == 30 * MS + 50 * US and suspended.latency_ns == 7 * MS + 50 * US
    assert suspended.records == 3
    assert bench.report(p.Started, "s0")[0] == parked_at


def test_a_suspended_task_keeps_its_memory_and_a_limit_fails_the_task_that_broke_it():
    # b0 holds 3 GiB; parked, it keeps them, so s0's 1.5 GiB takes the executor (4 GiB
    # limit, 100 MiB of its own) over: the guard fails s0, the task that allocated last,
    # at its first record boundary; b0 resumes and finishes.
    bench = Bench(
        {"b0": 20, "s0": 5},
        profiles={"b0": (1, 3072), "s0": (1, 1536)},
        memory_limit_mb=4096,
    )
    bench.at(0, launch("b0"))
    bench.at(4, p.Suspend("b0", 0))
    bench.at(4, launch("s0", "stream"))
    bench.at(4.5, p.Resume("b0", 0))  # arrives while s0 runs
    bench.run()
    assert bench.executor.memory_held() == 0
    failed_at, failed = bench.report(p.Failed, "s0")
    assert failed.error_type == "MemoryLimitExceeded" and failed_at == (4.05 + 1 + 0.05) * MS
    assert ("b0", "finished") in bench.sequence() and ("s0", "finished") not in bench.sequence()


def test_the_guard_fails_the_task_whose_start_took_the_executor_over_its_limit():
    bench = Bench(
        {"b0": 20, "b1": 20, "b2": 20},
        profiles={"b0": (1, 2048), "b1": (1, 1024), "b2": (1, 2048)},
        memory_limit_mb=4096,
    )
    bench.at(0, launch("b0"))
    bench.at(0, launch("b1"))
    bench.at(2, p.Suspend("b0", 0))  # b1 runs beside parked b0: 3 GiB + 100 MiB, it fits
    bench.at(4, p.Suspend("b1", 0))
    bench.at(4, launch("b2"))  # 5 GiB with both parked: b2 pays, not the parked ones
    bench.run()
    failed = [m.task_id for _, m in bench.reports if isinstance(m, p.Failed)]
    assert failed == ["b2"]
    assert bench.executor.memory_held() == (2048 + 1024) * MIB  # both parked keep theirs
    bench = Bench(
        {"b0": 20, "s0": 5, "s1": 5},
        profiles={"b0": (1, 3072), "s0": (1, 1536)},
        memory_limit_mb=4096,
    )
    bench.at(0, launch("b0"))
    bench.at(2, p.Suspend("b0", 0))
    bench.at(2, launch("s1", "stream"))  # holds nothing: beside parked b0, it fits
    bench.at(2, launch("s0", "stream"))
    bench.run()
    assert [m.task_id for _, m in bench.reports if isinstance(m, p.Failed)] == ["s0"]


# ---- whole clusters ------------------------------------------------------------------------


def simulate(policy, kind="mixed", seed=1, duration_s=3.0, until_s=None, **options):
    executors, jobs = mixed_scenario(kind, seed, duration_s=duration_s)
    return SimCluster(policy, executors, seed=seed, **options).run(jobs, until_s=until_s)


@pytest.fixture(scope="module")
def runs():
    return {policy: simulate(policy) for policy in ("fifo", "lb")}


@pytest.mark.parametrize("policy", ["fifo", "lb"])
def test_every_task_completes_exactly_once(runs, policy):
    result = runs[policy]
    assert result.completed_once and not result.stalled
    assert result.policy == policy and not result.policy_failures
    assert all(t.outcome == "finished" for t in result.tasks.values())
    finished = [task_id for _, _, task_id, event in result.timeline if event == "finished"]
    assert sorted(finished) == sorted(result.tasks)
    for task in result.tasks.values():
        assert task.submitted_s <= task.first_started_s < task.completed_s


@pytest.mark.parametrize("policy", sorted(BUILTIN_POLICIES))
def test_every_built_in_policy_completes_every_task_once_even_when_an_executor_fails(policy):
    executors, jobs = mixed_scenario("mixed", 4, duration_s=2.0)
    sim = SimCluster(policy, executors, seed=4)
    sim.fail_executor("e2", at_s=0.7)
    result = sim.run(jobs)
    assert result.completed_once and not result.stalled
    assert result.policy == policy and not result.policy_failures
    assert {t.outcome for t in result.tasks.values()} == {"finished"}


def test_under_lb_stream_p99_is_far_below_fifos(runs):
    fifo, lb = runs["fifo"], runs["lb"]
    # Micro-batches of up to four 2-10 ms tasks: at worst one runs them all in one slot
    # (the other batch tasks are at their suspension cap), ~45 ms.
    assert lb.stream_ms_p99 < 50
    assert lb.stream_ms_p99 * 20 < fifo.stream_ms_p99  # FIFO waits for batch tasks of ~0.6 s
    assert lb.suspensions > 0


def test_fifo_never_suspends(runs):
    assert runs["fifo"].suspensions == 0
    assert not any(event == "suspended" for *_, event in runs["fifo"].timeline)


@pytest.mark.parametrize("cap", [0, 1, 3])
def test_suspensions_never_exceed_the_cap(cap):
    result = simulate("lb", "stream-heavy", max_suspensions=cap)
    assert result.completed_once
    assert result.max_suspensions_per_task <= cap
    assert all(t.suspensions <= cap for t in result.tasks.values())
    assert (result.suspensions > 0) == (cap > 0)


def test_a_jobs_own_cap_overrides_the_clusters():
    executors, jobs = mixed_scenario("stream-heavy", 2, duration_s=2.0)
    jobs = [
        dataclasses.replace(job, max_suspensions=0) if job.priority == "batch" else job
        for job in jobs
    ]
    result = SimCluster("lb", executors, max_suspensions=3).run(jobs)
    assert result.completed_once and result.suspensions == 0


def test_a_failed_executors_tasks_complete_elsewhere():
    executors, jobs = mixed_scenario("mixed", 3, duration_s=3.0)
    sim = SimCluster("lb", executors)
    sim.fail_executor("e0", at_s=1.0)
    result = sim.run(jobs)

    assert result.completed_once and not result.stalled
    lost = result.lost_tasks["e0"]
    assert lost  # e0 was busy when it failed
    for task_id in lost:
        task = result.tasks[task_id]
        assert task.executor_id != "e0" and task.attempt >= 1
    assert all(t <= 1.0 for t, executor_id, _, _ in result.timeline if executor_id == "e0")
    assert result.work_lost_s > 0
    assert not sim.core.records.executors["e0"].alive


def test_the_same_seed_gives_the_same_run():
    first, second = simulate("lb", seed=7), simulate("lb", seed=7)
    assert first.summary() == second.summary()
    assert first.timeline == second.timeline
    assert first.tasks == second.tasks
    assert simulate("lb", seed=8).timeline != first.timeline


def test_until_s_stops_the_run_early():
    result = simulate("lb", until_s=1.0)
    assert result.end_s == 1.0 and not result.completed_once and not result.stalled
    assert any(t.completed_s is None and t.outcome is None for t in result.tasks.values())
    assert result.batch_makespan_s is None


def test_a_run_with_no_live_executor_left_stops_as_stalled():
    sim = SimCluster("lb", [("e0", "n0")])
    sim.fail_executor("e0", at_s=0.1)
    result = sim.run([JobSpec("b", "batch", 0.0, [1.0])])
    assert result.stalled and not result.completed_once


# ---- what policies see ----------------------------------------------------------------------


def test_lb_spreads_the_suspensions_of_one_round_over_the_nodes():
    jobs = [JobSpec("b", "batch", 0.0, [1.0] * 4), JobSpec("s", "stream", 0.1, [0.01] * 2)]
    result = SimCluster("lb", TWO_NODES).run(jobs)
    (sample,) = [s for s in result.node_samples if s.suspends]
    assert sample.suspends == 2
    assert sample.batch == {"n0": 1, "n1": 1} and sample.stream == {"n0": 1, "n1": 1}
    assert sample.running == {"n0": 2, "n1": 2}


def test_lb_keeps_batch_work_per_node_within_one_across_rounds():
    jobs = [
        JobSpec("b", "batch", 0.0, [2.0] * 4),
        JobSpec("s1", "stream", 0.1, [1.0]),
        JobSpec("s2", "stream", 0.2, [0.1]),
    ]
    result = SimCluster("lb", TWO_NODES).run(jobs)
    samples = [s for s in result.node_samples if s.suspends]
    assert samples
    for sample in samples:
        assert max(sample.batch.values()) - min(sample.batch.values()) <= 1, sample


def test_heartbeats_carry_the_scripted_memory_and_lb_avoids_pressure():
    executors = [("e0", "n0"), ("e1", "n0")]
    jobs = [JobSpec("b", "batch", 0.0, [3.0] * 2), JobSpec("s", "stream", 1.5, [0.01])]
    sim = SimCluster(
        "lb", executors, memory=lambda executor_id, now_s: 95.0 - 90 * (executor_id == "e1")
    )
    result = sim.run(jobs)
    assert sim.core.records.executors["e0"].metrics[-1].mem_percent == 95.0
    assert sim.core.records.executors["e1"].metrics[-1].mem_percent == 5.0
    (victim,) = [(e, t) for _, e, t, event in result.timeline if event == "suspended"]
    assert victim[0] == "e1"


class PreferringPolicy(Policy):
    """Launch each pending task only on an executor of a node it prefers."""

    name = "preferring"

    def __init__(self) -> None:
        self.preferences: dict[str, list[str]] = {}

    def set_preferences(self, mapping):
        self.preferences = mapping

    def tasks_submitted(self, view, tasks):
        return self._fill(view)

    def slot_freed(self, view, executor):
        return self._fill(view)

    def _fill(self, view):
        free = [e for e in view.executors() if e.slot_free]
        for task in list(view.pending()):
            for executor in free:
                if executor.node in self.preferences.get(task.task_id, [executor.node]):
                    free.remove(executor)
                    yield Launch(task.task_id, executor.executor_id)
                    break


def test_preferences_reach_a_policy_that_asks_for_them():
    jobs = [
        JobSpec("a", "batch", 0.0, [0.1] * 6, preferred_nodes=["n1"]),
        JobSpec("b", "batch", 0.0, [0.1] * 2),
    ]
    policy = PreferringPolicy()
    sim = SimCluster(policy, TWO_NODES, preferences={"b/1": ["n0"]})
    result = sim.run(jobs)
    assert policy.preferences == {**{f"a/{i}": ["n1"] for i in range(6)}, "b/1": ["n0"]}
    assert sim.preferred_nodes("a/3") == ["n1"] and sim.preferred_nodes("b/0") is None
    assert result.completed_once and result.locality_hit_rate == 1.0
    assert {result.tasks[f"a/{i}"].node for i in range(6)} == {"n1"}

    fifo = SimCluster("fifo", TWO_NODES).run(jobs)
    assert fifo.locality_hit_rate < 1.0
    assert SimCluster(LbPolicy(), TWO_NODES).run([jobs[1]]).locality_hit_rate is None


# ---- scenarios and input checks ------------------------------------------------------------


def test_the_scenario_kinds_differ_in_their_stream_batch_balance():
    shares = []
    for kind in ("batch-heavy", "mixed", "stream-heavy"):
        executors, jobs = mixed_scenario(kind, 5)
        assert executors == TWO_NODES
        stream = sum(len(j.durations_s) for j in jobs if j.priority == "stream")
        batch_work = sum(sum(j.durations_s) for j in jobs if j.priority == "batch")
        shares.append((stream, batch_work))
        assert mixed_scenario(kind, 5) == (executors, jobs)
    (s1, b1), (s2, b2), (s3, b3) = shares
    assert s1 < s2 < s3 and b1 > b2 > b3
    assert set(SCENARIO_KINDS) >= {"batch-heavy", "mixed", "stream-heavy"}


def test_each_further_kind_stresses_what_it_is_named_for():
    def jobs_of(kind):
        executors, jobs = mixed_scenario(kind, 5)
        assert executors == TWO_NODES and mixed_scenario(kind, 5) == (executors, jobs)
        return [j for j in jobs if j.priority == "batch"], [
            j for j in jobs if j.priority == "stream"
        ]

    batch, stream = jobs_of("bursty")  # micro-batches in 0.5 s bursts every 2 s
    assert stream and all(j.arrival_s % 2.0 < 0.5 for j in stream)
    batch, _ = jobs_of("skewed")  # short tasks and a few 10x longer
    durations = sorted(d for j in batch for d in j.durations_s)
    assert durations[0] < 0.2 and durations[-1] >= 2.0 and durations[len(durations) // 2] < 0.2
    batch, stream = jobs_of("memory")  # a parked batch task and a stream task exceed 4 GiB
    assert SCENARIO_KINDS["memory"].memory_limit_mb == 4096
    assert min(j.memory_mb for j in batch) + min(j.memory_mb for j in stream) > 2048 + 768 - 1
    assert max(j.memory_mb for j in batch) + max(j.memory_mb for j in stream) > 4096
    batch, _ = jobs_of("many-jobs")
    assert len(batch) > 3 * len(jobs_of("mixed")[0]) and max(len(j.durations_s) for j in batch) <= 4
    batch, stream = jobs_of("coarse-records")
    assert {j.record_s for j in batch} == {0.05} and {j.record_s for j in stream} == {None}
    for kind in ("batch-heavy", "mixed", "stream-heavy"):  # no memory, the cluster's records
        assert all(j.memory_mb == 0 and j.record_s is None for j in mixed_scenario(kind, 5)[1])


def test_heartbeats_report_what_tasks_hold_parked_ones_included():
    jobs = [
        JobSpec("b", "batch", 0.0, [2.0], memory_mb=3072),
        JobSpec("s", "stream", 0.3, [1.5], memory_mb=512),
    ]
    sim = SimCluster("lb", [("e0", "n0")], heartbeat_s=0.1, memory_limit_mb=8192)
    result = sim.run(jobs, until_s=1.0)
    executor = sim.core.records.executors["e0"]
    # b/0 is parked, s/0 runs: the heartbeat's rss, task estimates, limit and host share.
    assert sim.core.records.tasks["b/0"].state.value == "suspended"
    assert executor.rss_bytes == (100 + 3072 + 512) * MIB
    assert sim.core.records.tasks["b/0"].memory_bytes == 3072 * MIB
    assert executor.memory_limit_bytes == 8192 * MIB
    assert executor.metrics[-1].mem_percent == pytest.approx(30.0 + 100 * 3584 / 16384)
    assert result.parked_mb_max == 3072 and result.tasks_failed == 0


def test_heartbeats_report_each_running_tasks_records_before_any_suspension():
    jobs = [JobSpec("b", "batch", 0.0, [1.0], record_s=0.05), JobSpec("f", "batch", 0.0, [1.0])]
    sim = SimCluster("fifo", [("e0", "n0"), ("e1", "n0")], heartbeat_s=0.1)
    result = sim.run(jobs, until_s=0.45)
    view = sim.core.view
    assert result.suspensions == 0
    # The view's length is the running time over the records done and half of the next.
    assert view.task("b/0").record_ns == pytest.approx(50 * MS, rel=0.15)
    assert view.task("f/0").record_ns == pytest.approx(1 * MS, rel=0.01)
    beat = sim.core.records.executors[view.task("b/0").executor_id].metrics[-1]
    running_ns, records = beat.task_records["b/0"]
    assert records == running_ns // (50 * MS) >= 6


def test_a_stream_sources_driver_reports_its_lag_from_the_start():
    jobs = [
        JobSpec("b", "batch", 0.0, [0.5]),
        JobSpec("s1", "stream", 0.6, [0.005], source="events"),
        JobSpec("s2", "stream", 0.7, [0.005], source="events"),
    ]
    sim = SimCluster("fifo", [("e0", "n0")])
    sim.run(jobs, until_s=0.3)  # before its first micro-batch
    lag = sim.core.view.stream_lag()
    assert (lag.sources, lag.pending, lag.oldest_age_s) == (1, 0, None)
    assert sim.core.status()["streams"][0]["source"] == "events"
    with pytest.raises(ValueError, match="only a stream job comes from a source"):
        JobSpec("b", "batch", 0.0, [1.0], source="events")


def test_bad_input_gets_an_error_that_says_what_is_wrong():
    with pytest.raises(ValueError, match="priority must be stream or batch"):
        JobSpec("j", "urgent", 0.0, [1.0])
    with pytest.raises(ValueError, match="has no tasks"):
        JobSpec("j", "batch", 0.0, [])
    with pytest.raises(ValueError, match="record_s must be > 0"):
        JobSpec("j", "batch", 0.0, [1.0], record_s=0.0)
    with pytest.raises(ValueError, match="memory_mb must be >= 0"):
        JobSpec("j", "batch", 0.0, [1.0], memory_mb=-1)
    with pytest.raises(ValueError, match="unknown scenario kind 'heavy'"):
        mixed_scenario("heavy")
    with pytest.raises(ValueError, match="unique"):
        SimCluster("lb", [("e0", "n0"), ("e0", "n1")])
    sim = SimCluster("lb", [("e0", "n0")])
    with pytest.raises(ValueError, match="no executor 'e9'"):
        sim.fail_executor("e9", 1.0)
    with pytest.raises(ValueError, match="two jobs have the id 'j'"):
        sim.run([JobSpec("j", "batch", 0.0, [1.0])] * 2)
    with pytest.raises(RuntimeError, match="runs once"):
        sim.run([])


# ---- known problems in the core, found with the simulation ----------------------------------


def test_a_stream_launch_overtaken_by_a_prefetched_batch_task_still_runs_promptly():
    jobs = [
        # Tiny tasks that may not be suspended: the core prefetches, the stream task waits.
        JobSpec("a", "batch", 0.0, [0.0002] * 20, max_suspensions=0),
        JobSpec("b", "batch", 0.0, [1.0], order=1),  # prefetched behind them; suspendable
        JobSpec("s", "stream", 0.0048, [0.001]),
    ]
    result = SimCluster("lb", [("e0", "n0")]).run(jobs)
    assert result.tasks["s/0"].latency_s < 0.05


def test_the_core_counts_the_work_a_lost_executor_took_with_it():
    sim = SimCluster("lb", [("e0", "n0"), ("e1", "n0")])
    sim.fail_executor("e0", at_s=0.5)
    result = sim.run([JobSpec("b", "batch", 0.0, [1.0, 1.0])])
    (lost,) = result.lost_tasks["e0"]
    assert result.tasks[lost].work_lost_s == pytest.approx(0.5, abs=0.001)
    # The core knows the work only up to the executor's last message: a lower bound, short
    # of the truth by at most one heartbeat interval (0.5 s here).
    estimate = sim.core.records.tasks[lost].work_lost_ns / 1e9
    assert 0 < estimate <= 0.5

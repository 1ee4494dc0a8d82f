"""Each built-in policy against its contract, on the scripted harness (fake clock, no
sockets). Whole-scenario comparisons live in test_sim.py."""

from __future__ import annotations

from tests.scheduler.harness import MS, Harness
from tidal.runtime import protocol as p
from tidal.scheduler.core import Tick
from tidal.scheduler.policies import AdaptivePolicy, FairPolicy, LmaPolicy, StaticPolicy


def launches(h, *executors):
    return {e: [m.task_id for m in h.sent(e, p.Launch)] for e in executors}


def test_fair_gives_a_freed_slot_to_the_job_below_its_share():
    h = Harness(policy="fair", executors=[("e0", "n0"), ("e1", "n1")])
    h.submit("a", "batch", 4)
    assert launches(h, "e0", "e1") == {"e0": ["a/0"], "e1": ["a/1"]}  # alone: all slots
    h.start("e0", "a/0")
    h.start("e1", "a/1")
    h.submit("b", "batch", 4)
    h.finish("e0", "a/0")
    # a runs 1, b runs 0: the freed slot goes to b, not to a's next task (as FIFO would).
    assert launches(h, "e0") == {"e0": ["b/0"]}
    h.start("e0", "b/0")
    h.finish("e1", "a/1")
    assert launches(h, "e1") == {"e1": ["a/2"]}  # now a is below its share again


def test_fair_never_preempts():
    h = Harness(policy="fair", executors=[("e0", "n0")])
    h.submit("b", "batch", 1)
    h.start("e0", "b/0")
    h.sent("e0")
    h.submit("s", "stream", 1)
    assert h.sent("e0") == []


def test_kill_frees_the_slot_by_killing_and_counts_the_work_lost():
    h = Harness(policy="kill", executors=[("e0", "n0")], max_suspensions=1)
    (batch,) = h.submit("b", "batch", 1)
    h.start("e0", batch)
    h.sent("e0")
    (stream,) = h.submit("s", "stream", 1)
    assert [(type(m), m.task_id) for m in h.sent("e0")] == [(p.Kill, batch), (p.Launch, stream)]
    h.report("e0", p.Killed(batch, 0, {"running_ns": 40 * MS}))
    h.start("e0", stream)
    h.finish("e0", stream)
    (relaunch,) = h.sent("e0", p.Launch)
    assert relaunch.task_id == batch and relaunch.attempt == 1  # from scratch
    h.start("e0", batch, attempt=1)
    h.submit("s2", "stream", 1)
    assert h.sent("e0") == []  # killed once already: the cap protects it now
    h.finish("e0", batch, attempt=1)
    (item,) = h.results[batch]
    assert item[4]["work_lost_ns"] == 40 * MS


def test_static_keeps_each_class_on_its_own_executors():
    executors = [("e0", "n0"), ("e1", "n0"), ("e2", "n1"), ("e3", "n1")]
    h = Harness(policy=StaticPolicy(stream_share=0.25), executors=executors)
    h.submit("b", "batch", 6)
    sent = launches(h, "e0", "e1", "e2", "e3")
    assert sent["e0"] == []
    assert sorted(sent["e1"] + sent["e2"] + sent["e3"]) == ["b/0", "b/1", "b/2"]
    h.submit("s", "stream", 2)
    assert launches(h, "e0", "e1", "e2", "e3") == {"e0": ["s/0"], "e1": [], "e2": [], "e3": []}
    assert not any(isinstance(m, p.Suspend) for ms in h.to_executor.values() for m in ms)


def test_lma_delays_a_batch_task_for_its_preferred_node_then_takes_any():
    h = Harness(policy=LmaPolicy(delay_s=0.010), executors=[("e0", "n0"), ("e1", "n1")])
    h.submit("hold", "batch", 1, task_options=[{"preferred": []}])  # occupies one executor
    placed = launches(h, "e0", "e1")
    busy = "e0" if placed["e0"] else "e1"
    idle = "e1" if busy == "e0" else "e0"
    busy_node = "n0" if busy == "e0" else "n1"
    h.start(busy, "hold/0")
    h.submit("local", "batch", 1, task_options=[{"preferred": [busy_node]}])
    assert launches(h, idle) == {idle: []}  # waits for its node rather than take the idle one
    h.clock.now += 20 * MS
    h.handle(Tick())
    assert launches(h, idle) == {idle: ["local/0"]}  # delay over: any slot


def test_lma_places_a_stream_task_on_its_preferred_node_by_suspending_there():
    h = Harness(policy="lma", executors=[("e0", "n0"), ("e1", "n1")])
    h.submit("b", "batch", 2)
    for executor in ("e0", "e1"):
        (m,) = h.sent(executor, p.Launch)
        h.start(executor, m.task_id)
    h.submit("s", "stream", 1, task_options=[{"preferred": ["n1"]}])
    assert h.sent("e0") == []
    assert [type(m) for m in h.sent("e1")] == [p.Suspend, p.Launch]


def test_lma_avoids_an_executor_under_memory_pressure_for_new_batch_work():
    h = Harness(policy="lma", executors=[("e0", "n0"), ("e1", "n1")])
    h.report("e0", p.Heartbeat("e0", "n0", 1, 0, 1, 0, 0, 0, 1, 1, 97.0))
    h.submit("b", "batch", 1)
    assert launches(h, "e0", "e1") == {"e0": [], "e1": ["b/0"]}


def test_adaptive_switches_with_the_workload_and_records_why():
    policy = AdaptivePolicy(window_s=1.0, min_dwell_s=0.0)
    h = Harness(policy=policy, executors=[("e0", "n0")])
    h.submit("a", "batch", 3)
    assert policy.current == "fifo"
    h.submit("b", "batch", 3)
    h.handle(Tick())
    assert policy.current == "fair"
    h.start("e0", "a/0")
    h.sent("e0")
    h.heartbeat("e0", {"a/0": [4 * MS, 4]})  # records of 1 ms: a suspension is quick
    h.submit("s", "stream", 1)
    assert policy.current == "lb" and [type(m) for m in h.sent("e0")] == [p.Suspend, p.Launch]
    assert [(s.from_policy, s.to_policy) for s in policy.switches] == [
        ("fifo", "fair"),
        ("fair", "lb"),
    ]
    assert "stream work" in policy.switches[-1].reason
    h.report("e0", p.Suspended("a/0", 1, 1, 1))
    h.start("e0", "s/0")
    h.finish("e0", "s/0")
    h.clock.now += 2_000 * MS
    h.handle(Tick())
    assert policy.current == "fair"  # the stream window passed; two batch jobs remain


def test_every_builtin_is_constructible_by_name():
    from tidal.scheduler.policies import BUILTIN_POLICIES, resolve_policy

    assert sorted(BUILTIN_POLICIES) == ["adaptive", "fair", "fifo", "kill", "lb", "lma", "static"]
    for name in BUILTIN_POLICIES:
        assert resolve_policy(name).name == name
    assert isinstance(resolve_policy(FairPolicy), FairPolicy)


def test_lb_spreads_suspensions_over_executors_that_tie_on_everything_else():
    h = Harness(policy="lb", executors=[("e0", "n0"), ("e1", "n0")])  # one host
    h.submit("b", "batch", 2)
    batch = {}
    for executor in ("e0", "e1"):
        (m,) = h.sent(executor, p.Launch)
        h.start(executor, m.task_id)
        batch[executor] = m.task_id
    h.submit("s", "stream", 1)
    assert [type(m) for m in h.sent("e0")] == [p.Suspend, p.Launch]  # a tie: the first
    h.report("e0", p.Suspended(batch["e0"], 1_000, 5, h.clock.now))
    h.start("e0", "s/0")
    h.finish("e0", "s/0")
    assert [type(m) for m in h.sent("e0")] == [p.Resume]
    h.report("e0", p.Resumed(batch["e0"], 1_000, h.clock.now))

    h.submit("s2", "stream", 1)

    # e0's task has been suspended once, e1's never: e1's is the victim this time.
    assert h.sent("e0") == []
    suspend, launch = h.sent("e1")
    assert suspend == p.Suspend(batch["e1"], h.clock.now) and launch.task_id == "s2/0"

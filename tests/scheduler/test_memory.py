"""Executors' memory limits in the scheduler, on the scripted harness (fake clock, no
sockets): the heartbeat's figures on the records and views, a task failed for the limit is
not retried, and LB's choice of victim under memory pressure."""

from __future__ import annotations

from tests.scheduler.harness import Harness
from tidal.runtime import protocol as p

MiB = 1024 * 1024


def beat(executor_id, node, *, rss, limit=0, tasks=None, running=1):
    return p.Heartbeat(
        executor_id, node, 1, 0, 1, running, 0, 0, rss, 8 << 30, 10.0, limit, tasks or {}
    )


def running_batch(h, *executors):
    """Submit one batch task per executor and start each where it was launched."""
    h.submit("b", "batch", len(executors))
    placed = {}
    for executor in executors:
        (launch,) = h.sent(executor, p.Launch)
        h.start(executor, launch.task_id)
        placed[executor] = launch.task_id
    return placed


def test_the_heartbeat_figures_reach_the_executor_and_task_views():
    h = Harness(executors=[("e0", "n0")])
    view = h.core.view.executor("e0")
    assert (view.memory_limit_bytes, view.rss_bytes, view.memory_headroom) == (None, None, None)
    (task_id,) = running_batch(h, "e0").values()
    h.report("e0", beat("e0", "n0", rss=300 * MiB, limit=512 * MiB, tasks={task_id: 200 * MiB}))
    assert view.memory_limit_bytes == 512 * MiB and view.rss_bytes == 300 * MiB
    assert view.memory_headroom == 212 * MiB
    assert h.core.view.task(task_id).memory_bytes == 200 * MiB
    assert view.slot_task.memory_bytes == 200 * MiB
    snapshot = h.core.status()["executors"][0]
    assert snapshot["memory_limit_bytes"] == 512 * MiB and snapshot["rss_bytes"] == 300 * MiB


def test_heartbeat_figures_that_are_not_byte_counts_are_taken_as_unknown():
    h = Harness(executors=[("e0", "n0")])
    (task_id,) = running_batch(h, "e0").values()
    h.report("e0", beat("e0", "n0", rss=1, limit=10, tasks={task_id: "lots", "other": 5}))
    assert h.core.view.task(task_id).memory_bytes == 0
    h.report("e0", beat("e0", "n0", rss=1, limit=10, tasks={task_id: -5}))
    assert h.core.view.task(task_id).memory_bytes == 0
    h.report("e0", beat("e0", "n0", rss=1, limit=0))  # no limit (any more)
    assert h.core.view.executor("e0").memory_headroom is None


def test_a_task_failed_for_the_memory_limit_fails_its_future_and_is_not_requeued():
    h = Harness(executors=[("e0", "n0")])
    (task_id,) = running_batch(h, "e0").values()
    message = "task b/0 exceeded executor e0's memory limit of 512 MiB (rss 530 MiB)"
    h.report("e0", p.Failed(task_id, 0, "MemoryLimitExceeded", message, "", {}))
    (item,) = h.results[task_id]
    assert item[1] == "failed" and item[3][:2] == ["MemoryLimitExceeded", message]
    assert h.core.records.pending.count() == 0 and h.sent("e0", p.Launch) == []


def test_lb_suspends_where_the_executor_can_afford_to_park_the_task():
    # e0 comes first on every other count (same balance, pressure and suspensions; its id
    # sorts first), but parking its 300 MiB task would leave it 100 MiB under its limit.
    h = Harness(executors=[("e0", "n0"), ("e1", "n1")])
    tasks = running_batch(h, "e0", "e1")
    h.report("e0", beat("e0", "n0", rss=412 * MiB, limit=512 * MiB, tasks={tasks["e0"]: 300 * MiB}))
    h.report("e1", beat("e1", "n1", rss=200 * MiB, limit=512 * MiB, tasks={tasks["e1"]: 100 * MiB}))
    h.submit("s", "stream", 1)
    assert h.sent("e0") == []
    assert [type(m) for m in h.sent("e1")] == [p.Suspend, p.Launch]


def test_lb_prefers_affording_the_parked_task_over_balancing_nodes():
    # n0 runs two batch tasks and n1 one: balance says n0, memory says n1.
    h = Harness(executors=[("e0", "n0"), ("e1", "n0"), ("e2", "n1")])
    tasks = running_batch(h, "e0", "e1", "e2")
    for executor, node in (("e0", "n0"), ("e1", "n0")):
        h.report(
            executor,
            beat(executor, node, rss=500 * MiB, limit=512 * MiB, tasks={tasks[executor]: 64 * MiB}),
        )
    h.submit("s", "stream", 1)
    assert [type(m) for m in h.sent("e2")] == [p.Suspend, p.Launch]
    assert h.sent("e0") == [] and h.sent("e1") == []


def test_lb_still_suspends_when_no_executor_can_afford_it():
    h = Harness(executors=[("e0", "n0"), ("e1", "n1")])
    tasks = running_batch(h, "e0", "e1")
    h.report("e0", beat("e0", "n0", rss=500 * MiB, limit=512 * MiB, tasks={tasks["e0"]: 64 * MiB}))
    h.report("e1", beat("e1", "n1", rss=530 * MiB, limit=512 * MiB, tasks={tasks["e1"]: 1 * MiB}))
    h.submit("s", "stream", 1)  # the stream task must run: the usual rank decides (e0)
    assert [type(m) for m in h.sent("e0")] == [p.Suspend, p.Launch]


def test_without_limits_lb_chooses_its_victim_as_before():
    h = Harness(executors=[("e0", "n0"), ("e1", "n1")])
    tasks = running_batch(h, "e0", "e1")
    h.report("e0", beat("e0", "n0", rss=900 * MiB, tasks={tasks["e0"]: 800 * MiB}))
    h.report("e1", beat("e1", "n1", rss=100 * MiB))
    h.submit("s", "stream", 1)
    assert [type(m) for m in h.sent("e0")] == [p.Suspend, p.Launch]


def test_kill_ignores_parking_costs_since_a_killed_task_frees_its_memory():
    h = Harness(policy="kill", executors=[("e0", "n0"), ("e1", "n1")])
    tasks = running_batch(h, "e0", "e1")
    h.report("e0", beat("e0", "n0", rss=500 * MiB, limit=512 * MiB, tasks={tasks["e0"]: 300 * MiB}))
    h.report("e1", beat("e1", "n1", rss=200 * MiB, limit=512 * MiB, tasks={tasks["e1"]: 100 * MiB}))
    h.submit("s", "stream", 1)  # as LB would without the parking cost: e0's id sorts first
    assert [type(m) for m in h.sent("e0")] == [p.Kill, p.Launch]

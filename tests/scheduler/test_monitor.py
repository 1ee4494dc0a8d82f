"""What the dashboard and `/metrics` show: the monitor's task stream, the core's tally and
the refused decisions, on the harness's fake clock (the test plays the executors)."""

from __future__ import annotations

import logging

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.scheduler.harness import MS, Harness
from tidal.runtime import protocol as p
from tidal.scheduler.core import ExecutorLeft, Tick
from tidal.scheduler.dashboard.metrics import render_metrics
from tidal.scheduler.decisions import Launch, Suspend
from tidal.scheduler.monitor import MAX_MARKS, Monitor
from tidal.scheduler.policies.base import Policy
from tidal.scheduler.tally import refusal_kind


def monitored(h: Harness) -> Monitor:
    """From now on, the monitor sees every step the harness's core takes."""
    monitor = Monitor(h.core)
    handle = h.core.handle

    def handle_and_watch(event):
        instructions = handle(event)
        monitor.step(event, instructions)
        return instructions

    h.core.handle = handle_and_watch
    return monitor


def test_a_suspended_batch_task_shows_as_two_slices_around_the_stream_task_that_took_its_slot():
    h = Harness(executors=[("e0", "n0")])
    monitor = monitored(h)
    h.submit("b", "batch", 1)
    h.clock.now += 10 * MS
    h.start("e0", "b/0")
    h.clock.now += 20 * MS
    submitted = h.clock.now
    h.submit("s", "stream", 1)  # lb suspends b/0 for it
    h.clock.now += 1 * MS
    h.report("e0", p.Suspended("b/0", 50_000, 7, h.clock.now))
    h.start("e0", "s/0")
    h.clock.now += 4 * MS
    h.finish("e0", "s/0")  # the slot frees: lb resumes b/0
    h.clock.now += 1 * MS
    h.report("e0", p.Resumed("b/0", 2_000, h.clock.now))
    seen = monitor.read(0)
    ms = [(x["task"], x["start"], x["end"], x["how"], x["priority"]) for x in seen["slices"]]
    assert [(t, round(a * 1e3), round(b * 1e3), how, c) for t, a, b, how, c in ms] == [
        ("b/0", 1_010, 1_031, "suspended", "batch"),  # the core's clock, in seconds
        ("s/0", 1_031, 1_035, "finished", "stream"),
    ]
    assert [(x["task"], round(x["start"] * 1e3)) for x in seen["open"]] == [("b/0", 1_036)]
    assert seen["open"][0]["function"] == "total"  # the harness's function, its module cut
    assert [(m["event"], m["task"]) for m in seen["marks"]] == [("suspend", "b/0")]
    # A reader that has seen this much gets only what came after.
    h.finish("e0", "b/0")
    later = monitor.read(seen["seq"])
    assert [(x["task"], x["how"]) for x in later["slices"]] == [("b/0", "finished")]
    assert later["open"] == [] and later["marks"] == []
    # The tally behind status(): one suspension, one resumption, one stream task's latency.
    counters = h.core.status()["counters"]
    assert (counters["suspensions"], counters["resumptions"], counters["kills"]) == (1, 1, 0)
    latency = counters["stream_latency"]
    expected_ms = (1_035 * MS - submitted) / 1e6
    assert latency["count"] == 1 and latency["p50_ms"] == latency["p99_ms"] == expected_ms
    assert latency["cumulative"][latency["buckets_s"].index(0.005)] == 1  # 5 ms: in that bucket
    assert latency["cumulative"][latency["buckets_s"].index(0.0025)] == 0


def test_a_task_running_on_a_lost_executor_closes_its_slice_as_lost_and_the_loss_is_counted():
    h = Harness()
    monitor = monitored(h)
    h.submit("b", "batch", 1)
    executor = h.core.records.tasks["b/0"].executor_id
    h.start(executor, "b/0")
    h.handle(ExecutorLeft(executor, "its connection dropped"))
    seen = monitor.read(0)
    assert [(x["task"], x["executor"], x["how"]) for x in seen["slices"]] == [
        ("b/0", executor, "lost")
    ]
    assert h.core.status()["counters"]["executor_losses"] == 1


def test_reports_the_core_ignores_open_no_slice():
    h = Harness()
    monitor = monitored(h)
    h.submit("b", "batch", 1)
    executor = h.core.records.tasks["b/0"].executor_id
    other = next(e for e in h.core.records.executors if e != executor)
    for i in range(100):  # an executor reporting tasks it does not hold
        h.start(other, f"nope/{i}")
    h.start(other, "b/0")  # held elsewhere
    assert monitor.read(0)["open"] == []
    h.start(executor, "b/0")
    assert [s["task"] for s in monitor.read(0)["open"]] == ["b/0"]


@pytest.mark.slow  # two thousand executors join
def test_marks_are_bounded_and_a_reader_sees_the_newest():
    h = Harness(executors=[("e0", "n0")])
    monitor = monitored(h)
    for i in range(MAX_MARKS + 50):  # each join is a mark
        h.join(f"x{i}", "n")
    marks = monitor.read(0)["marks"]
    assert len(marks) == MAX_MARKS
    assert marks[-1]["executor"] == f"x{MAX_MARKS + 49}"


class Impossible(Policy):
    """Asks, at every tick, for what cannot be done: a launch of a running task, a
    suspension of a task that does not exist, and a suspension past the cap."""

    name = "impossible"

    def tick(self, view):
        decisions = [Suspend("no-such-task")]
        for task in view.running():
            decisions += [Launch(task.task_id, "e0"), Suspend(task.task_id)]
        return decisions


def test_refused_decisions_are_counted_per_kind_noted_for_the_event_log_and_logged_bounded(
    caplog,
):
    h = Harness(policy="lb", executors=[("e0", "n0")], max_suspensions=0)
    h.submit("b", "batch", 1)
    h.start("e0", "b/0")
    h.core.set_policy(Impossible())
    caplog.set_level(logging.WARNING, logger="tidal.scheduler")
    for _ in range(10):
        h.clock.now += 100 * MS  # within the heartbeat timeout: e0 stays
        h.handle(Tick())
    refused = h.core.status()["counters"]["refused"]
    assert refused == {
        "no such task": 10,
        "task is running, not pending": 10,
        "suspension cap reached": 10,
    }
    notes = [n for n in h.notes if type(n).__name__ == "DecisionRefused"]
    assert len(notes) == 30
    assert {(n.decision, n.executor_id, n.policy) for n in notes if n.task_id == "b/0"} == {
        ("launch", "e0", "impossible"),
        ("suspend", "e0", "impossible"),
    }
    # At warning level, at most five lines a minute (the rest summed up later).
    lines = [r for r in caplog.records if "refused" in r.getMessage()]
    assert 1 <= len(lines) <= 5
    assert all(r.levelno == logging.WARNING for r in lines)


@pytest.mark.parametrize(
    ("reason", "kind"),
    [
        ("suspension cap reached (3 of 3)", "suspension cap reached"),
        ("not a decision: 'junk' * 1000", "not a decision"),
        ("task is suspended, not pending", "task is suspended, not pending"),
    ],
)
def test_a_refusal_is_counted_by_its_kind_without_its_details(reason, kind):
    assert refusal_kind(reason) == kind


def test_metrics_parse_with_prometheus_client_and_match_the_status_they_come_from():
    h = Harness(executors=[("e0", "n0")])
    h.submit("b", "batch", 2)
    h.start("e0", "b/0")
    h.submit("s", "stream", 1)
    h.report("e0", p.Suspended("b/0", 50_000, 7, h.clock.now))
    h.start("e0", "s/0")
    h.clock.now += 3 * MS
    h.finish("e0", "s/0")
    status = {**h.core.status(), "bad_input": {"frames_in": 40, "bad_frames": 3}}
    body, content_type = render_metrics(status)
    assert content_type.startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    value = {
        (f.name, s.name, tuple(sorted(s.labels.items()))): s.value
        for f in families.values()
        for s in f.samples
    }
    counters = status["counters"]
    assert (
        value[("tidal_suspensions", "tidal_suspensions_total", ())] == 1 == counters["suspensions"]
    )
    assert value[("tidal_resumptions", "tidal_resumptions_total", ())] == 1
    assert value[("tidal_bad_frames", "tidal_bad_frames_total", ())] == 3
    for priority, states in status["tasks"].items():
        for state, count in states.items():
            labels = (("priority", priority), ("state", state))
            assert value[("tidal_tasks", "tidal_tasks", labels)] == count
    assert status["tasks"]["stream"]["finished"] == 1
    assert status["tasks"]["batch"]["pending"] + status["tasks"]["batch"]["running"] == 2
    histogram = families["tidal_stream_latency_seconds"]
    count = [s.value for s in histogram.samples if s.name.endswith("_count")]
    assert count == [1] == [counters["stream_latency"]["total"]]
    assert value[("tidal_executors", "tidal_executors", (("state", "alive"),))] == 1


def test_metrics_before_the_first_status_say_the_scheduler_is_not_up():
    body, _ = render_metrics(None)
    (family,) = text_string_to_metric_families(body.decode())
    assert family.name == "tidal_scheduler_up" and family.samples[0].value == 0

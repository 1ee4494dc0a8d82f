"""The scheduling event log: the records of each core step, the writer and the reader.

The core runs on the harness's fake clock with the test playing the executors, so every
record, its time included, is known exactly.
"""

from __future__ import annotations

import pytest

from tests.scheduler.harness import CLIENT_ID, MS, TOTAL, Harness
from tidal.runtime import protocol as p
from tidal.scheduler.core import ClientRequest, ExecutorLeft, Tick
from tidal.scheduler.eventlog import FORMAT, EventLog, EventRecorder, read_events
from tidal.scheduler.sim import JobSpec, SimCluster


def recorded(h: Harness) -> list[dict]:
    """From now on, keep the records of every step the harness's core takes."""
    recorder = EventRecorder(h.core)
    records: list[dict] = []
    handle = h.core.handle

    def handle_and_record(event):
        instructions = handle(event)
        records.extend(recorder.records(event, instructions))
        return instructions

    h.core.handle = handle_and_record
    return records


def taken(records: list[dict]) -> list[dict]:
    """The records so far without their times (which are checked separately), and forget them."""
    out = [{k: v for k, v in r.items() if k != "t"} for r in records]
    records.clear()
    return out


def test_a_suspension_and_its_resumption_are_logged_decision_by_decision_and_report_by_report():
    h = Harness(executors=[("e0", "n0")])
    log = recorded(h)
    h.clock.now += 5 * MS
    h.submit("b", "batch", 1)
    assert {r["t"] for r in log} == {h.clock.now / 1e9}  # the core's clock, in seconds
    assert taken(log) == [
        {"event": "log_started", "format": FORMAT, "policy": "lb", "max_suspensions": 3},
        {
            "event": "submitted",
            "job": "b",
            "priority": "batch",
            "order": 0,
            "tasks": 1,
            "client": CLIENT_ID,
            "function": TOTAL,
        },
        {
            "event": "launch",
            "task": "b/0",
            "job": "b",
            "priority": "batch",
            "executor": "e0",
            "attempt": 0,
        },
    ]
    h.start("e0", "b/0")
    h.submit("s", "stream", 1)  # the slot is busy: lb suspends b/0 for it
    h.report("e0", p.Suspended("b/0", 50_000, 7, h.clock.now))
    h.start("e0", "s/0")
    h.finish("e0", "s/0")  # the slot frees: lb resumes b/0
    h.report("e0", p.Resumed("b/0", 2_000, h.clock.now))
    h.handle(ClientRequest(CLIENT_ID, p.Cancel(["b/0"])))
    h.report("e0", p.Killed("b/0", 0, {"running_ns": 7 * MS}))
    events = taken(log)
    assert events[0] == {
        "event": "started",
        "task": "b/0",
        "job": "b",
        "priority": "batch",
        "executor": "e0",
        "attempt": 0,
    }
    assert events[2:4] == [
        {"event": "suspend", "task": "b/0", "executor": "e0"},
        {
            "event": "launch",
            "task": "s/0",
            "job": "s",
            "priority": "stream",
            "executor": "e0",
            "attempt": 0,
        },
    ]
    assert events[4:] == [
        {"event": "suspended", "task": "b/0", "executor": "e0", "latency_us": 50.0, "records": 7},
        {
            "event": "started",
            "task": "s/0",
            "job": "s",
            "priority": "stream",
            "executor": "e0",
            "attempt": 0,
        },
        {"event": "finished", "task": "s/0", "executor": "e0", "attempt": 0},
        {"event": "resume", "task": "b/0", "executor": "e0"},
        {"event": "resumed", "task": "b/0", "executor": "e0", "latency_us": 2.0},
        {"event": "kill", "task": "b/0", "executor": "e0"},
        {"event": "killed", "task": "b/0", "executor": "e0", "attempt": 0, "work_lost_ms": 7.0},
    ]


def test_chunks_steals_and_failures_are_logged():
    h = Harness(executors=[("e0", "n0")])
    log = recorded(h)
    ids = h.submit("j", "batch", 101, options={"chunksize": 101})
    (chunk,) = h.sent("e0", p.LaunchChunk)
    h.join("e1", "n1")  # an idle executor, and nothing pending
    h.core.records.jobs["j"].subtask_ns = 1_000_000.0  # 1 ms tasks: worth stealing
    h.report("e0", p.Started(chunk.chunk_id, 0, 1))
    h.report("e0", p.Stolen(chunk.chunk_id, ids[51:]))
    h.report("e1", p.Failed("j#2", 0, "MemoryError", "out of memory", "", {}))
    events = [r for r in taken(log) if r["event"] in ("launch", "steal", "stolen", "failed")]
    assert events == [
        {
            "event": "launch",
            "task": chunk.chunk_id,
            "job": "j",
            "priority": "batch",
            "executor": "e0",
            "attempt": 0,
            "tasks": 101,
        },
        {"event": "steal", "task": chunk.chunk_id, "executor": "e0", "count": 50, "thief": "e1"},
        {"event": "stolen", "task": chunk.chunk_id, "executor": "e0", "count": 50},
        {
            "event": "launch",
            "task": "j#2",
            "job": "j",
            "priority": "batch",
            "executor": "e1",
            "attempt": 0,
            "tasks": 50,
        },
        {"event": "failed", "task": "j#2", "executor": "e1", "attempt": 0, "error": "MemoryError"},
    ]


def test_executors_joining_and_lost_policy_switches_and_refused_jobs_are_logged():
    h = Harness(executors=[("e0", "n0")], heartbeat_ns=100 * MS)
    log = recorded(h)
    h.join("e1", "n1")
    h.join("e2", "n2")
    h.join("e3", "n3")
    assert h.set_policy("fifo").ok
    h.handle(ExecutorLeft("e1", "its connection closed"))
    h.report("e2", p.Goodbye("shutting down"))
    h.join("e3", "n3")  # again: the old e3 is lost first
    # Nothing is logged for heartbeats, pings or status requests.
    h.report("e0", p.Heartbeat("e0", "n0", 1, 0, 1, 0, 0, 0, 1, 1, 1.0))
    h.core.handle(ClientRequest(CLIENT_ID, p.Ping("r", 0)))  # answers the harness keeps not
    h.core.handle(ClientRequest(CLIENT_ID, p.StatusRequest("r")))
    h.submit("bad", "batch", 1, options={"chunksize": 0})
    h.clock.now += 301 * MS  # e0 last heard from at the heartbeat; e3 when it joined
    h.handle(Tick())
    events = taken(log)[1:]  # after log_started
    assert events == [
        {"event": "executor_joined", "executor": "e1", "node": "n1", "hostname": "host"},
        {"event": "executor_joined", "executor": "e2", "node": "n2", "hostname": "host"},
        {"event": "executor_joined", "executor": "e3", "node": "n3", "hostname": "host"},
        {
            "event": "policy",
            "policy": "fifo",
            "previous": "lb",
            "reason": f"requested by client {CLIENT_ID}",
        },
        {"event": "executor_lost", "executor": "e1", "reason": "its connection closed"},
        {"event": "executor_lost", "executor": "e2", "reason": "it said goodbye (shutting down)"},
        {"event": "executor_lost", "executor": "e3", "reason": "it joined again"},
        {"event": "executor_joined", "executor": "e3", "node": "n3", "hostname": "host"},
        {
            "event": "submit_refused",
            "job": "bad",
            "client": CLIENT_ID,
            "reason": "job bad refused by the scheduler: "
            "chunksize must be an int >= 1 or 'auto', not 0",
        },
        {"event": "executor_lost", "executor": "e0", "reason": "no heartbeat for 301 ms"},
        {"event": "executor_lost", "executor": "e3", "reason": "no heartbeat for 301 ms"},
    ]


def test_the_log_reads_back_as_written(tmp_path):
    records = [
        {"t": 1.5, "event": "launch", "task": "b/0", "job": "b", "priority": "batch"},
        {"t": 2.0, "event": "executor_lost", "executor": "e0", "reason": 'it said "bye"\n'},
    ]
    with EventLog(tmp_path / "events.jsonl") as log:
        log.write(records[:1])
        log.flush()
        # Flushed: readable while the log is still open.
        assert read_events(tmp_path / "events.jsonl") == records[:1]
        log.write(records[1:])
    text = (tmp_path / "events.jsonl").read_text()
    assert text.count("\n") == 2 and ", " not in text  # one compact object a line
    assert read_events(tmp_path / "events.jsonl") == records


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        pytest.param('{"t": 2.0, "event": "launch"', "not a JSON object", id="truncated"),
        pytest.param('[2.0, "launch"]', 'a number "t" and a string "event"', id="not-an-object"),
        pytest.param('{"event": "launch"}', 'a number "t"', id="no-time"),
    ],
)
def test_a_malformed_line_is_named_by_file_and_line_number(tmp_path, line, problem):
    path = tmp_path / "events.jsonl"
    path.write_text('{"t": 1.0, "event": "log_started"}\n\n' + line + "\n")
    with pytest.raises(ValueError, match=rf"events\.jsonl, line 3: .*{problem}"):
        read_events(path)


def test_a_simulated_run_logs_what_its_executors_did_on_the_fake_clock(tmp_path):
    path = tmp_path / "events.jsonl"
    jobs = [
        JobSpec("b", "batch", 0.0, [0.3, 0.4]),
        JobSpec("s1", "stream", 0.1, [0.005]),
        JobSpec("s2", "stream", 0.2, [0.005]),
    ]
    # No message latency: each report reaches the core when the executor acted.
    sim = SimCluster("lb", [("e0", "n0"), ("e1", "n0")], message_latency_s=0.0, event_log=path)
    result = sim.run(jobs)
    assert result.suspensions == 2
    logged = {
        (r["t"], r["executor"], r["task"], r["event"])
        for r in read_events(path)
        if r["event"] in ("started", "suspended", "resumed", "finished")
    }
    assert logged == {
        (t, executor, task, event)
        for t, executor, task, event in result.timeline
        if event in ("started", "suspended", "resumed", "finished")
    }


def test_an_end_reported_without_its_start_is_logged_as_started_then_finished():
    h = Harness(executors=(("e0", "n0"),))
    records = recorded(h)
    (task,) = h.submit("b", "batch", 1)
    records.clear()
    h.report("e0", p.Finished(task, 0, b"\xc0", {"running_ns": 1, "finished_at_ns": 2}))
    started = {"task": task, "job": "b", "priority": "batch", "executor": "e0", "attempt": 0}
    assert taken(records)[:2] == [
        {"event": "started", **started},
        {"event": "finished", "task": task, "executor": "e0", "attempt": 0},
    ]

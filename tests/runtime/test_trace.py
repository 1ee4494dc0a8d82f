"""The event log as a Chrome trace (runtime/trace.py, `tidal timeline LOG --chrome-trace`):
exact events for a hand-made log, the trace's invariants on a simulated run's log (and its
agreement with the timeline's stretches), the command line, and a real cluster's log."""

from __future__ import annotations

import itertools
import json
from collections import defaultdict

import pytest

from tests.runtime.test_timeline import LOG, a_suspension_logged, ev
from tidal.runtime.cli import main
from tidal.runtime.timeline import segments
from tidal.runtime.trace import chrome_trace, write_chrome_trace
from tidal.scheduler.eventlog import EventLog, read_events
from tidal.scheduler.sim import JobSpec, SimCluster
from tidal.workloads.synthetic import total


def of(trace: dict, ph: str) -> list[dict]:
    return [e for e in trace["traceEvents"] if e["ph"] == ph]


def tracks(trace: dict) -> dict[str, int]:
    """Track name -> tid."""
    return {e["args"]["name"]: e["tid"] for e in of(trace, "M") if e["name"] == "thread_name"}


def slices(trace: dict, tid: int) -> list[tuple[str, int, int, str]]:
    """(task, ts, end, how it ended) of the run slices on one track, in time order."""
    found = [e for e in of(trace, "X") if e["tid"] == tid]
    return [(e["args"]["task"], e["ts"], e["ts"] + e["dur"], e["args"]["ended"]) for e in found]


def check_invariants(trace: dict) -> None:
    """What every trace holds: whole microseconds, run slices apart on each track, every
    async suspended slice opened once and closed once, after it opened."""
    timed = [e for e in trace["traceEvents"] if e["ph"] != "M"]
    assert timed and all(type(e["ts"]) is int and e["ts"] >= 0 for e in timed)
    assert [e["ts"] for e in timed] == sorted(e["ts"] for e in timed)
    by_track = defaultdict(list)
    for e in of(trace, "X"):
        assert type(e["dur"]) is int and e["dur"] >= 0
        assert {"task", "job", "priority", "attempt", "ended"} <= e["args"].keys()
        by_track[e["tid"]].append((e["ts"], e["ts"] + e["dur"]))
    for tid, spans in by_track.items():
        spans.sort()
        for (_, end), (start, _) in itertools.pairwise(spans):
            assert end <= start, f"slices overlap on track {tid}"
    opened = {e["id"]: e["ts"] for e in of(trace, "b")}
    closed = {e["id"]: e["ts"] for e in of(trace, "e")}
    assert opened.keys() == closed.keys() and len(opened) == len(of(trace, "b"))
    assert all(opened[i] <= closed[i] for i in opened)
    assert all(e["s"] in ("t", "g") for e in of(trace, "i"))


# ---- a hand-made log ----------------------------------------------------------------------------


def test_a_hand_made_log_becomes_one_track_per_executor_with_its_slices_and_instants():
    refused = {"decision": "resume", "task": "x/0", "policy": "lb", "reason": "not suspended"}
    trace = chrome_trace(
        [
            *LOG,
            ev(12.0, "policy", policy="fifo", previous="lb", reason="r"),
            ev(12.0, "decision_refused", executor="e0", **refused),
            ev(12.0, "decision_refused", executor=None, **refused),  # no executor: scheduler's
        ]
    )
    check_invariants(trace)
    named = tracks(trace)
    assert named == {
        "scheduler": 0,
        "executor e0 (node n0)": 1,
        "executor e1 (node n1)": 2,
        "executor e2 (node n2)": 3,
    }
    [process] = [e for e in of(trace, "M") if e["name"] == "process_name"]
    assert process["args"]["name"] == "Tidal cluster (policy lb)"
    assert trace["otherData"]["origin_s"] == 10.0 and trace["displayTimeUnit"] == "ms"
    # b/0 is split at its suspension, with the stream task that took its slot between.
    assert slices(trace, 1) == [
        ("b/0", 250_000, 1_000_000, "suspended"),
        ("s/0", 1_000_000, 1_125_000, "finished"),
        ("b/0", 1_250_000, 2_000_000, "finished"),
    ]
    assert slices(trace, 2) == [
        ("k/0", 500_000, 1_500_000, "killed"),
        ("c#1", 1_500_000, 2_000_000, "running"),  # still running when the log ends
    ]
    assert slices(trace, 3) == [("x/0", 0, 500_000, "suspended")]
    first = of(trace, "X")[1]
    assert first["name"] == "b" and first["cat"] == "batch"  # named after its job
    assert first["args"] == {
        "task": "b/0",
        "job": "b",
        "priority": "batch",
        "attempt": 0,
        "ended": "suspended",
    }
    chunk = next(e for e in of(trace, "X") if e["args"]["task"] == "c#1")
    assert chunk["args"]["tasks"] == 8
    # The time each task sat suspended, as async slices.
    parked = {e["id"]: (e["ts"], e["args"]) for e in of(trace, "e")}
    assert parked == {
        "e2/x/0/1": (1_000_000, {"ended": "lost"}),
        "e0/b/0/2": (1_250_000, {"ended": "resumed"}),
    }
    instants = [(e["name"], e["tid"], e["ts"], e["s"]) for e in of(trace, "i")]
    assert ("suspended", 1, 1_000_000, "t") in instants
    assert ("killed", 2, 1_500_000, "t") in instants
    assert ("executor lost", 3, 1_000_000, "t") in instants
    assert ("policy", 0, 2_000_000, "g") in instants  # across every track
    assert ("decision refused", 1, 2_000_000, "t") in instants
    assert ("decision refused", 0, 2_000_000, "t") in instants
    assert [e["args"] for e in of(trace, "i") if e["name"] == "suspended"][1] == {
        "task": "b/0",
        "latency_us": 50.0,
        "records": 7,
    }


def test_a_failed_slice_carries_its_error_and_a_function_named_in_the_log_names_it():
    trace = chrome_trace(
        [
            ev(0.0, "submitted", job="j", priority="batch", order=0, tasks=1, function="m:fn"),
            ev(0.0, "launch", task="j/0", job="j", priority="batch", executor="e0", attempt=1),
            ev(0.001, "started", task="j/0", job="j", priority="batch", executor="e0", attempt=1),
            ev(0.0015, "failed", task="j/0", executor="e0", attempt=1, error="ValueError"),
        ]
    )
    [failed] = of(trace, "X")
    assert (failed["name"], failed["ts"], failed["dur"]) == ("m:fn", 1000, 500)
    assert failed["args"]["error"] == "ValueError" and failed["args"]["attempt"] == 1


def test_a_start_while_another_slice_is_open_ends_that_one_so_slices_never_overlap():
    trace = chrome_trace(
        [
            ev(1.0, "started", task="a", job="j", priority="batch", executor="e0", attempt=0),
            ev(2.0, "started", task="b", job="j", priority="batch", executor="e0", attempt=0),
            ev(2.0, "started", task="b", executor="e0", attempt=0),  # a duplicate: no new slice
            ev(3.0, "finished", task="b", executor="e0", attempt=0),
            ev(3.5, "finished", task="a", executor="e0", attempt=0),  # too late: ignored
        ]
    )
    check_invariants(trace)
    assert slices(trace, 1) == [
        ("a", 0, 1_000_000, "no end logged"),
        ("b", 1_000_000, 2_000_000, "finished"),
    ]


def test_an_empty_log_is_an_empty_trace():
    trace = chrome_trace([])
    assert of(trace, "X") == [] and tracks(trace) == {"scheduler": 0}


# ---- a simulated run ----------------------------------------------------------------------------


@pytest.fixture
def simulated_log(tmp_path):
    """The log of a simulated run with suspensions, chunks and steals, and an executor lost
    while it held a task."""
    path = tmp_path / "sim.jsonl"
    jobs = [
        JobSpec("b", "batch", 0.0, [0.3, 0.4, 2.5, 0.5]),
        JobSpec("c", "batch", 0.05, [0.01] * 60, chunksize=20),
        JobSpec("s1", "stream", 0.1, [0.005]),
        JobSpec("s2", "stream", 0.2, [0.005, 0.005]),
        JobSpec("s3", "stream", 0.9, [0.005]),
    ]
    sim = SimCluster("lb", [("e0", "n0"), ("e1", "n1"), ("e2", "n1")], event_log=path, seed=1)
    sim.fail_executor("e2", 0.6)
    result = sim.run(jobs)
    assert result.suspensions >= 2 and result.steals >= 1
    return read_events(path)


def test_a_simulated_runs_trace_keeps_every_invariant_and_marks_what_happened(simulated_log):
    trace = chrome_trace(simulated_log)
    check_invariants(trace)
    counted = defaultdict(int)
    for e in of(trace, "i"):
        counted[e["name"]] += 1
    logged = defaultdict(int)
    for record in simulated_log:
        logged[record["event"]] += 1
    assert counted["suspended"] == logged["suspended"] >= 2
    assert counted["steal"] == logged["steal"] >= 1 and counted["stolen"] == logged["stolen"]
    assert counted["executor joined"] == 3 and counted["executor lost"] == 1
    assert counted["submitted"] == 5
    # Each suspension splits a slice: one ends "suspended" exactly where it was reported.
    ends = {(e["tid"], e["ts"] + e["dur"], e["args"]["ended"]) for e in of(trace, "X")}
    for e in of(trace, "i"):
        if e["name"] == "suspended":
            assert (e["tid"], e["ts"], "suspended") in ends
    # The lost executor's task ended there.
    lost = tracks(trace)["executor e2 (node n1)"]
    assert slices(trace, lost)[-1][3] == "lost"


def test_the_trace_has_the_timelines_running_stretches(simulated_log):
    trace = chrome_trace(simulated_log)
    origin = simulated_log[0]["t"]
    named = tracks(trace)
    for executor, stretches in segments(simulated_log).items():
        tid = next(tid for name, tid in named.items() if name.startswith(f"executor {executor} "))
        expected = [
            (s.task, round((s.start - origin) * 1e6), round((s.end - origin) * 1e6), s.ended)
            for s in stretches
            if not s.suspended
        ]
        assert slices(trace, tid) == expected


# ---- the command line ---------------------------------------------------------------------------


def test_tidal_timeline_writes_a_chrome_trace_instead_of_the_png(tmp_path, capsys):
    log = tmp_path / "events.jsonl"
    with EventLog(log) as writer:
        writer.write(LOG)
    out = tmp_path / "trace.json"
    assert main(["timeline", str(log), "--chrome-trace", str(out)]) == 0
    trace = json.loads(out.read_text())
    assert trace == chrome_trace(LOG)
    assert f"wrote {out} ({len(trace['traceEvents'])} trace events from {len(LOG)} log events)" in (
        capsys.readouterr().out
    )
    assert not (tmp_path / "events.png").exists()  # no PNG unless --out asks for one
    assert main(["timeline", str(log), "--chrome-trace", str(log)]) == 1
    assert "names the log itself" in capsys.readouterr().err
    assert read_events(log) == LOG  # untouched


def test_tidal_timeline_writes_both_when_asked(tmp_path):
    pytest.importorskip("matplotlib")
    log = tmp_path / "events.jsonl"
    with EventLog(log) as writer:
        writer.write(LOG)
    args = ["--chrome-trace", str(tmp_path / "t.json"), "--out", str(tmp_path / "t.png")]
    assert main(["timeline", str(log), *args]) == 0
    assert (tmp_path / "t.png").read_bytes().startswith(b"\x89PNG")
    assert write_chrome_trace(LOG, tmp_path / "again.json") == len(chrome_trace(LOG)["traceEvents"])
    assert (tmp_path / "t.json").read_text() == (tmp_path / "again.json").read_text()


# ---- a real run --------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_real_clusters_log_becomes_a_trace_with_the_suspension_and_the_failure(tmp_path):
    path = tmp_path / "events.jsonl"
    with a_suspension_logged(path) as (client, batch, stream):
        failed = client.submit(total, [1, "a"])
        assert isinstance(failed.exception(timeout=30), TypeError)
    trace = chrome_trace(read_events(path))
    check_invariants(trace)
    [(name, tid)] = [(n, t) for n, t in tracks(trace).items() if n.startswith("executor ")]
    assert name.endswith("(node local-0)")
    ran = slices(trace, tid)
    assert [(task, ended) for task, _, _, ended in ran] == [
        (batch.task_id, "suspended"),
        (stream.task_id, "finished"),
        (batch.task_id, "finished"),
        (failed.task_id, "failed"),
    ]
    [suspension] = [e for e in of(trace, "i") if e["name"] == "suspended"]
    assert suspension["ts"] == ran[0][2] and suspension["args"]["task"] == batch.task_id
    [failure] = [e for e in of(trace, "X") if e["args"]["ended"] == "failed"]
    assert failure["args"]["error"] == "TypeError"
    assert failure["name"] == "tidal.workloads.synthetic:total"  # its function, from the log
    stream_slice = next(e for e in of(trace, "X") if e["args"]["task"] == stream.task_id)
    assert stream_slice["cat"] == "stream" and stream_slice["args"]["attempt"] == 0

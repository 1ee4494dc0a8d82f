"""The timeline: stretches from an event log, the PNG, `tidal timeline`, a real cluster's log."""

from __future__ import annotations

import contextlib
import json
import sys

import pytest

from tidal.runtime.cli import main
from tidal.runtime.client import Client
from tidal.runtime.cluster import LocalCluster
from tidal.runtime.timeline import Segment, plot_timeline, segments
from tidal.scheduler.eventlog import EventLog, read_events
from tidal.workloads.synthetic import spin, total


def ev(t, event, **fields):
    return {"t": t, "event": event, **fields}


# A batch task suspended for a stream task and resumed (e0); a task killed and a chunk still
# running at the end (e1); a task suspended on an executor that is then lost (e2). Times are
# binary fractions, so the expected stretches are exact.
LOG = [
    ev(10.0, "log_started", format=1, policy="lb", max_suspensions=3),
    ev(10.0, "executor_joined", executor="e0", node="n0"),
    ev(10.0, "executor_joined", executor="e1", node="n1"),
    ev(10.0, "executor_joined", executor="e2", node="n2"),
    ev(10.0, "launch", task="b/0", job="b", priority="batch", executor="e0", attempt=0),
    ev(10.0, "launch", task="k/0", job="k", priority="batch", executor="e1", attempt=0),
    ev(10.0, "launch", task="x/0", job="x", priority="batch", executor="e2", attempt=0),
    ev(10.0, "started", task="x/0", job="x", priority="batch", executor="e2", attempt=0),
    ev(10.25, "started", task="b/0", job="b", priority="batch", executor="e0", attempt=0),
    ev(10.5, "started", task="k/0", job="k", priority="batch", executor="e1", attempt=0),
    ev(10.5, "suspend", task="x/0", executor="e2"),
    ev(10.5, "suspended", task="x/0", executor="e2", latency_us=40.0, records=3),
    ev(11.0, "suspend", task="b/0", executor="e0"),
    ev(11.0, "launch", task="s/0", job="s", priority="stream", executor="e0", attempt=0),
    ev(11.0, "suspended", task="b/0", executor="e0", latency_us=50.0, records=7),
    ev(11.0, "started", task="s/0", executor="e0", attempt=0),
    ev(11.0, "executor_lost", executor="e2", reason="no heartbeat for 1500 ms"),
    ev(11.125, "finished", task="s/0", executor="e0", attempt=0),
    ev(11.125, "resume", task="b/0", executor="e0"),
    ev(11.25, "resumed", task="b/0", executor="e0", latency_us=2.0),
    ev(11.5, "kill", task="k/0", executor="e1"),
    ev(11.5, "killed", task="k/0", executor="e1", attempt=0, work_lost_ms=1000.0),
    ev(11.5, "launch", task="c#1", job="c", priority="batch", executor="e1", attempt=0, tasks=8),
    ev(11.5, "started", task="c#1", job="c", priority="batch", executor="e1", attempt=0),
    ev(11.75, "finished", task="s/0", executor="e0", attempt=0),  # a late duplicate: ignored
    ev(12.0, "finished", task="b/0", executor="e0", attempt=0),
]


def test_segments_are_the_stretches_each_task_ran_and_sat_suspended():
    assert segments(LOG) == {
        "e0": [
            Segment("b/0", "b", "batch", 10.25, 11.0, "suspended"),
            Segment("s/0", "s", "stream", 11.0, 11.125, "finished"),
            Segment("b/0", "b", "batch", 11.0, 11.25, "resumed", suspended=True),
            Segment("b/0", "b", "batch", 11.25, 12.0, "finished"),
        ],
        "e1": [
            Segment("k/0", "k", "batch", 10.5, 11.5, "killed"),
            Segment("c#1", "c", "batch", 11.5, 12.0, "running"),
        ],
        "e2": [
            Segment("x/0", "x", "batch", 10.0, 10.5, "suspended"),
            Segment("x/0", "x", "batch", 10.5, 11.0, "lost", suspended=True),
        ],
    }


def test_a_task_suspended_before_it_ran_starts_when_resumed_and_a_suspended_kill_ends_there():
    log = [
        ev(0.0, "launch", task="a", job="j", priority="batch", executor="e0", attempt=0),
        ev(0.5, "suspended", task="a", executor="e0", latency_us=1.0, records=0),
        ev(1.0, "started", task="a", executor="e0", attempt=0),  # its first start, on resume
        ev(1.5, "suspended", task="a", executor="e0", latency_us=1.0, records=4),
        ev(2.0, "killed", task="a", executor="e0", attempt=0, work_lost_ms=500.0),
    ]
    assert segments(log) == {
        "e0": [
            Segment("a", "j", "batch", 0.5, 1.0, "resumed", suspended=True),
            Segment("a", "j", "batch", 1.0, 1.5, "suspended"),
            Segment("a", "j", "batch", 1.5, 2.0, "killed", suspended=True),
        ]
    }


def test_plot_timeline_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    out = plot_timeline(LOG, tmp_path / "timeline.png", title="hand-made")
    data = (tmp_path / "timeline.png").read_bytes()
    assert out == str(tmp_path / "timeline.png")
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 10_000


def test_plot_timeline_without_matplotlib_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # as if it were not installed
    with pytest.raises(RuntimeError, match=r'pip install "tidal\[demo\]"'):
        plot_timeline(LOG, tmp_path / "timeline.png")


def test_tidal_timeline_draws_a_log(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    with EventLog(tmp_path / "events.jsonl") as log:
        log.write(LOG)
    assert main(["timeline", str(tmp_path / "events.jsonl"), "--out", str(tmp_path / "t.png")]) == 0
    assert (tmp_path / "t.png").read_bytes().startswith(b"\x89PNG")
    assert f"wrote {tmp_path / 't.png'} ({len(LOG)} events)" in capsys.readouterr().out
    # Without --out: next to the log.
    assert main(["timeline", str(tmp_path / "events.jsonl")]) == 0
    assert (tmp_path / "events.png").exists()


def test_tidal_timeline_names_a_malformed_line(tmp_path, capsys):
    (tmp_path / "events.jsonl").write_text('{"t": 1.0, "event": "log_started"}\n{"t": 2\n')
    assert main(["timeline", str(tmp_path / "events.jsonl")]) == 1
    assert "events.jsonl, line 2: not a JSON object" in capsys.readouterr().err


def flushed(path):
    """The records of the lines the scheduler has flushed so far (it may be mid-line)."""
    text = path.read_text() if path.exists() else ""
    return [json.loads(line) for line in text.splitlines(keepends=True) if line.endswith("\n")]


@contextlib.contextmanager
def a_suspension_logged(path):
    """A one-executor LocalCluster logging to `path`, in which a stream task has suspended
    a batch task and both have finished: yields (client, batch future, stream future)."""
    with (
        LocalCluster(executors=1, heartbeat_ms=50, event_log=path) as cluster,
        Client(cluster) as client,
    ):
        (batch,) = client.map(spin, [list(range(20_000))], record_us=20.0)  # ~0.4 s
        # Wait (each status request paces the loop) until the scheduler has logged the batch
        # task's start, so the stream task finds it running; the log is flushed every 25 ms.
        started = {"event": "started", "task": batch.task_id}
        client.wait_for_status(
            lambda _: any(started.items() <= record.items() for record in flushed(path))
        )
        stream = client.submit(total, [1, 2], priority="stream")
        assert stream.result(timeout=30) == 3
        assert batch.result(timeout=30) == sum(range(20_000))
        yield client, batch, stream


@pytest.mark.slow
def test_a_local_clusters_event_log_holds_a_suspension_and_its_resumption(tmp_path):
    path = tmp_path / "events.jsonl"
    with a_suspension_logged(path) as (_, batch, stream):
        pass
    # Closed: the scheduler flushed and closed its log.
    events = read_events(path)
    about_batch = [e["event"] for e in events if e.get("task") == batch.task_id]
    assert about_batch == [
        "launch",
        "started",
        "suspend",
        "suspended",
        "resume",
        "resumed",
        "finished",
    ]
    (row,) = segments(events).values()
    assert [(s.task, s.ended) for s in row if not s.suspended] == [
        (batch.task_id, "suspended"),
        (stream.task_id, "finished"),
        (batch.task_id, "finished"),
    ]
    assert [(s.task, s.ended) for s in row if s.suspended] == [(batch.task_id, "resumed")]

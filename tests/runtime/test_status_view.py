"""`tidal status`'s view: from a real status snapshot (a scheduler core on the harness's fake
clock) to what a terminal shows."""

from __future__ import annotations

import subprocess
import sys

import pytest
from rich.console import Console

from tests.scheduler.harness import Harness
from tidal import Client, LocalCluster
from tidal.runtime import protocol as p
from tidal.runtime.status_view import render
from tidal.scheduler.views import MAX_LISTED_JOBS
from tidal.workloads.synthetic import spin, total


def shown(snapshot, width=200, **options) -> str:
    console = Console(record=True, width=width, color_system=None)
    console.print(render(snapshot, **options))
    return console.export_text()


def test_done_jobs_are_summed_up_per_function_and_running_ones_listed_with_their_function():
    h = Harness(executors=[("executor-with-a-long-id-" + "x" * 60, "rack-a")], max_suspensions=99)
    executor = next(iter(h.core.records.executors))
    h.submit("batch-job", "batch", 3)
    h.start(executor, "batch-job/0")
    for i in range(40):  # a stream application: a one-task job per micro-batch
        h.submit(f"s{i}", "stream", 1)
        h.report(executor, p.Suspended("batch-job/0", 1_000, 1, h.clock.now))
        h.start(executor, f"s{i}/0")
        h.finish(executor, f"s{i}/0")
        h.report(executor, p.Resumed("batch-job/0", 1_000, h.clock.now))
    text = shown(h.core.status())
    assert "40 done jobs" in text  # one row for forty finished one-task jobs
    assert text.count("s3") == 0  # none of them by id
    assert "batch-job" in text and "0 / 3 (0%)" in text
    assert "total (batch)" in text  # what the executor runs, by function
    assert executor in text  # the whole id, not cut at 80 columns
    assert "40 suspensions, 40 resumptions" in text
    assert "stream latency, last 60 s (40 tasks)" in text
    assert "{" not in text  # no raw dicts
    detail = shown(h.core.status(), tasks=True)
    assert "batch-job/0" in detail  # --tasks: the running task by id


def test_many_unfinished_jobs_are_listed_up_to_a_bound_and_the_rest_summed_up():
    h = Harness(executors=[("e0", "n0")])
    for i in range(MAX_LISTED_JOBS + 5):
        h.submit(f"j{i}", "batch", 2)
    snapshot = h.core.status()
    assert len(snapshot["jobs"]) == MAX_LISTED_JOBS
    text = shown(snapshot)
    assert f"j{MAX_LISTED_JOBS - 1} " in text and f"j{MAX_LISTED_JOBS} " not in text
    assert "... 5 more" in text and "0 / 10" in text


def test_peer_strings_are_shown_as_they_are_never_read_as_markup_and_long_ids_fold():
    executor_id = "exec[/x]-[red]on-red-[link=https://evil.example]x[/link]-" + "y" * 90
    h = Harness(executors=[(executor_id, "node[/b]")])
    h.submit("job[/i]", "batch", 1)
    h.start(executor_id, "job[/i]/0")
    text = shown(h.core.status(), width=80, tasks=True)
    # The first column's cells, rejoined: an id folded over lines, never cut.
    first = "".join(line.split("│")[1].strip() for line in text.splitlines() if "│" in line)
    assert executor_id in first
    assert "node[/b]" in text and "job[/i]" in text


@pytest.mark.slow  # a cluster and an interpreter start
def test_tidal_status_prints_the_summary_of_a_live_cluster():
    with LocalCluster(executors=2) as cluster, Client(cluster) as client:
        # Long enough to outlast the command (cancelled once its output is in).
        batch = client.map(spin, [list(range(400_000))] * 2, record_us=50.0)
        client.wait_for_status(
            lambda s: sum(e["running_priority"] == "batch" for e in s["executors"]) == 2
        )
        assert client.submit(total, [1, 2], priority="stream").result(timeout=30) == 3
        out = subprocess.run(
            [sys.executable, "-m", "tidal", "status", "--scheduler", cluster.address],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
            env={"COLUMNS": "160", "PATH": ""},
        ).stdout
        for future in batch:
            future.cancel()
    assert "spin (batch)" in out  # an executor's running task, by its function
    assert "1 done job" in out and "total" in out
    assert "executors: 2 alive" in out

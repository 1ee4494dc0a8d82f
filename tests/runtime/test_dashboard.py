"""The dashboard end to end: a LocalCluster serving it, a real headless Chromium reading it
(the distribution's package, which the README's test command installs), `/metrics` against
`status()`, and the JSON status endpoint."""

from __future__ import annotations

import json
import re
import shutil
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tidal import Client, LocalCluster
from tidal.scheduler.dashboard import DashboardUnavailable, parse_address
from tidal.workloads.synthetic import spin, total

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]  # clusters and a browser start


@contextmanager
def chromium_page() -> Iterator[Any]:
    """A page of a headless Chromium, the distribution's: Playwright drives it, and
    downloads no browser of its own."""
    from playwright.sync_api import sync_playwright

    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    if executable is None:
        pytest.fail(
            "no chromium on PATH: the README's test command installs it "
            "(apt-get install -y chromium)"
        )
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(60_000)
            yield page
        finally:
            browser.close()


def fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read()


def eventually(check: Callable[[], Any], timeout: float = 30.0) -> Any:
    """`check()`'s first truthy value: the dashboard's snapshot is published once a tick,
    so what the scheduler knows now shows there within a quarter second."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.05)


def counters_of_metrics(link: str) -> dict[str, float]:
    families = text_string_to_metric_families(fetch(link + "metrics").decode())
    return {s.name: s.value for f in families for s in f.samples if not s.labels}


def test_the_page_shows_the_executors_and_the_task_stream_and_changes_as_a_job_runs():
    from playwright.sync_api import expect

    with (
        LocalCluster(executors=2, dashboard="127.0.0.1:0") as cluster,
        Client(cluster) as client,
        chromium_page() as page,
    ):
        # (Playwright's locators and `expect` wait in a world of their own: the page's
        # Content-Security-Policy forbids the `eval` that `wait_for_function` needs.)
        page.goto(cluster.dashboard_link)
        rows = page.locator("#executors tr[data-executor]")
        expect(rows).to_have_count(2)
        shown = {rows.nth(i).get_attribute("data-executor") for i in range(2)}
        assert shown == {e["executor_id"] for e in client.status()["executors"]}
        expect(page.locator("#jobs tbody")).to_have_text("no jobs")
        # A batch job holding both slots, then stream tasks that suspend it.
        batch = client.map(spin, [list(range(15_000))] * 4, record_us=50.0)  # ~0.75 s each
        client.wait_for_status(
            lambda s: sum(e["running_priority"] == "batch" for e in s["executors"]) == 2
        )
        for i in range(4):
            stream = client.submit(total, list(range(i + 1)), priority="stream")
            assert stream.result(timeout=30) == i * (i + 1) // 2
        assert all(f.result(timeout=60) > 0 for f in batch)
        # The page changed with it: the job's row, with its function, done; the slices of
        # eight task runs at least (four batch, four stream), drawn by Plotly; the
        # suspensions counted.
        done = page.locator('#jobs tr[data-job][data-total="4"][data-done="4"] td:nth-child(2)')
        expect(done).to_have_text(re.compile(r":spin$"))
        expect(page.locator("#task-stream")).to_have_attribute(
            "data-slices", re.compile(r"^([89]|\d\d+)$")
        )
        expect(page.locator("#task-stream .barlayer .point").nth(7)).to_be_attached()
        expect(page.locator("[data-counter=suspensions] b")).not_to_have_text("0")
        expect(page.locator("#connection")).to_have_text("live")


def test_metrics_match_status_and_the_json_endpoint_names_each_jobs_function():
    with LocalCluster(executors=2, dashboard="127.0.0.1:0") as cluster, Client(cluster) as client:
        link = cluster.dashboard_link
        batch = client.map(spin, [list(range(10_000))] * 4, record_us=50.0)
        client.wait_for_status(
            lambda s: sum(e["running_priority"] == "batch" for e in s["executors"]) == 2
        )
        for i in range(3):
            client.submit(total, list(range(i)), priority="stream").result(timeout=30)
        for f in batch:
            f.result(timeout=60)
        status = client.status()
        counters = status["counters"]
        assert counters["suspensions"] >= 1 and counters["stream_latency"]["total"] == 3

        def caught_up() -> dict[str, float] | None:
            metrics = counters_of_metrics(link)
            done = metrics.get("tidal_stream_latency_seconds_count") == 3
            return metrics if done else None

        metrics = eventually(caught_up)
        assert metrics, "the dashboard's snapshot never showed the three stream tasks"
        assert metrics["tidal_suspensions_total"] == counters["suspensions"]
        assert metrics["tidal_resumptions_total"] == counters["resumptions"]
        assert metrics["tidal_kills_total"] == counters["kills"]
        assert metrics["tidal_steals_total"] == status["steals"]
        assert metrics["tidal_executor_losses_total"] == 0
        snapshot = json.loads(fetch(link + "api/status"))
        functions = {j["function"] for j in snapshot["jobs"]}
        assert functions == {"tidal.workloads.synthetic:spin", "tidal.workloads.synthetic:total"}
        assert snapshot["scheduler"]["address"] == cluster.address
        assert fetch(link + "health") == b"ok"


def test_a_dashboard_address_that_is_taken_or_malformed_fails_with_the_reason():
    with LocalCluster(executors=1, dashboard="127.0.0.1:0") as cluster:
        taken = cluster.dashboard_link.rstrip("/").rpartition("/")[2]
        from tidal.runtime.cluster import ClusterStartError

        with pytest.raises(ClusterStartError, match=r"cannot listen on 127\.0\.0\.1:.*in use"):
            LocalCluster(executors=1, dashboard=taken, start_timeout=20)
    with pytest.raises(DashboardUnavailable, match="not HOST:PORT"):
        parse_address("localhost")
    with pytest.raises(DashboardUnavailable, match="out of range"):
        LocalCluster(executors=1, dashboard="127.0.0.1:70000")


def test_peer_strings_are_shown_as_text_never_parsed_as_html():
    from playwright.sync_api import expect

    hostile = '<a href="https://evil.example/">x</a><img src=x onerror="document.title=1">'
    with (
        LocalCluster(
            executors=1,
            dashboard="127.0.0.1:0",
            nodes=[hostile],
            executor_args=["--id", "exec-" + hostile],
        ) as cluster,
        Client(cluster) as client,
        chromium_page() as page,
    ):
        page.goto(cluster.dashboard_link)
        row = page.locator("#executors tr[data-executor]")
        expect(row).to_have_count(1)
        assert client.submit(spin, list(range(2_000)), record_us=50.0).result(timeout=30) > 0
        expect(page.locator("#task-stream .barlayer .point")).to_have_count(1)
        expect(row.locator("td").nth(1)).to_have_text(hostile)  # shown as it is
        # Nowhere on the page, the tables or Plotly's chart, did it become an element.
        assert page.locator('a[href="https://evil.example/"]').count() == 0
        assert page.locator('[*|href="https://evil.example/"]').count() == 0
        assert page.locator('img[src="x"]').count() == 0
        assert page.title() == "Tidal dashboard"


def test_a_scheduler_that_cannot_bind_raises_why_and_its_dashboard_frees_its_port():
    import socket

    import zmq

    from tidal.scheduler.server import SchedulerServer

    first = SchedulerServer("tcp://127.0.0.1:0", dashboard="127.0.0.1:0")
    port = parse_address(first.dashboard_link.rstrip("/").rpartition("/")[2])[1]
    try:
        with pytest.raises(zmq.ZMQError, match="in use"):
            SchedulerServer(first.address, dashboard="127.0.0.1:0")
        assert fetch(first.dashboard_link + "health") == b"ok"
    finally:
        first.close()
    with socket.socket() as probe:  # closed: nothing listens there any more
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # past TIME_WAIT
        probe.bind(("127.0.0.1", port))
        probe.listen()

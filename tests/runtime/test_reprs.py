"""How futures, clients and clusters show themselves (runtime/reprs.py and the reprs of
runtime/futures.py, client.py and cluster.py): their state, their function, a failure's
error, and HTML in which everything that came from a user or a peer is escaped."""

from __future__ import annotations

import pytest

from tests.runtime.test_futures import STATS
from tidal.runtime import protocol as p
from tidal.runtime import reprs
from tidal.runtime.client import Client
from tidal.runtime.cluster import LocalCluster
from tidal.runtime.futures import BulkJob, MapFutures, TaskError, TaskFuture, rebuild_error
from tidal.workloads.synthetic import total

pytestmark = pytest.mark.usefixtures("no_thread_left_behind")

FN = "tidal.workloads.synthetic:total"


def future(task_id: str = "c-24/0", function: str | None = FN) -> TaskFuture:
    return TaskFuture(task_id, task_id.rpartition("/")[0], 0, function=function)


# ---- futures ------------------------------------------------------------------------------------


def test_a_future_says_its_state_and_function():
    pending = future()
    assert pending.state == "pending" and repr(pending) == f"<TaskFuture c-24/0 {FN} pending>"
    pending._complete("finished", 7, None, STATS)
    assert pending.state == "finished" and repr(pending) == f"<TaskFuture c-24/0 {FN} finished>"
    cancelled = future("j/0", function=None)
    cancelled.cancel()
    assert cancelled.state == "cancelled" and repr(cancelled) == "<TaskFuture j/0 cancelled>"


def test_a_failed_future_says_its_error_type_and_message():
    failed = future()
    failed._complete("failed", None, ["ValueError", "bad record 7", "Traceback ..."], {})
    assert failed.state == "failed"
    assert repr(failed) == f"<TaskFuture c-24/0 {FN} failed: ValueError: bad record 7>"
    remote = future()
    remote._complete("failed", None, ["mylib.errors.BadInput", "no\ngood", "tb"], {})
    assert type(remote.exception()) is TaskError
    assert repr(remote).endswith("failed: mylib.errors.BadInput: no good>")  # on one line
    long = future()
    long.set_exception(rebuild_error("RuntimeError", "x" * 500, "tb"))
    assert len(repr(long)) < 250 and repr(long).endswith("...>")


def test_a_futures_html_escapes_its_error_and_shows_where_it_ran():
    failed = future("c-1/0", function="<b>mod</b>:fn")
    error = ["ValueError", "<script>alert('x')</script>", "tb"]
    failed._complete("failed", None, error, {"executor_id": "e-1", "attempt": 2})
    page = failed._repr_html_()
    assert "<script>" not in page and "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    assert "<b>mod</b>" not in page and "&lt;b&gt;mod&lt;/b&gt;:fn" in page
    assert '<span style="color:#d93025;font-weight:600">failed</span>' in page
    assert '<td style="text-align:left">e-1</td>' in page and ">2</td>" in page
    pending = future()._repr_html_()
    assert ">pending</span>" in pending and "executor" not in pending


def test_a_maps_futures_say_how_many_are_finished_failed_and_pending_making_none():
    job = BulkJob("c-9", 5, 0, function=FN)
    mapped = MapFutures(job)
    assert repr(mapped) == f"<MapFutures c-9: 5 tasks of {FN} (5 pending)>"
    job.finish(0, [0, 1], STATS)
    job.complete(2, "failed", ValueError("odd"), {})
    assert repr(mapped) == f"<MapFutures c-9: 5 tasks of {FN} (2 finished, 1 failed, 2 pending)>"
    page = mapped._repr_html_()
    assert ">1</span>" in page and "failed" in page and FN in page
    assert job._futures is None  # the reprs made no future
    assert mapped[2].function == FN and "failed: ValueError: odd" in repr(mapped[2])


def test_only_an_http_link_is_made_a_link():
    assert 'href="https://h:8787/?a=1&amp;b=&quot;2&quot;"' in reprs.html_table(
        "X", "x", [("dashboard", reprs.Link('https://h:8787/?a=1&b="2"'))]
    )
    page = reprs.html_table("X", "x", [("dashboard", reprs.Link("javascript:alert(1)"))])
    assert "href" not in page and "javascript:alert(1)" in page


# ---- a client -----------------------------------------------------------------------------------


def test_a_client_says_where_it_is_connected_its_policy_and_what_is_pending(fake, client):
    one = client.submit(total, [1])
    client.map(total, [[i] for i in range(3)], chunksize=2)
    fake.wait_for(p.Submit, 2)
    assert one.function == FN
    expected = f"<Client {client.client_id} -> {fake.address}: connected, policy stream-first"
    assert repr(client) == f"{expected}, 4 pending>"
    page = client._repr_html_()
    assert ">connected</span>" in page and fake.address in page and "stream-first" in page
    assert ">4</td>" in page


def test_a_client_disconnected_by_its_scheduler_says_so_and_why(fake, client):
    pending = client.submit(total, [1])
    fake.wait_for(p.Submit)
    fake.push(p.Reject("too <many> clients"))
    with pytest.raises(ConnectionError):
        pending.result(timeout=10)
    assert repr(client).endswith(": lost, policy stream-first, 0 pending>")
    page = client._repr_html_()
    assert ">lost</span>" in page and "too &lt;many&gt; clients" in page
    client.close()
    assert ": closed," in repr(client)


# ---- a cluster, for real --------------------------------------------------------------------


@pytest.mark.slow
def test_a_real_clusters_client_and_failed_future_show_themselves():
    link = "http://127.0.0.1:8787/?x=<1>"
    with LocalCluster(executors=1) as cluster, Client(cluster) as client:
        assert "dashboard" not in repr(cluster) and "dashboard" not in cluster._repr_html_()
        cluster.dashboard_link = link  # as LocalCluster(dashboard=True) sets it
        failed = client.submit(total, [1, "a"])
        assert isinstance(failed.exception(timeout=30), TypeError)
        assert repr(failed).startswith(f"<TaskFuture {failed.task_id} {FN} failed: TypeError: ")
        assert "executor" in failed._repr_html_()
        assert repr(cluster) == (
            f"<LocalCluster 1 executors, lb, {cluster.address}, dashboard {link}>"
        )
        page = cluster._repr_html_()
        assert ">running</span>" in page and "1 (1 running)" in page and cluster.address in page
        assert 'href="http://127.0.0.1:8787/?x=&lt;1&gt;"' in page
        assert ">connected</span>" in client._repr_html_() and ">lb</td>" in client._repr_html_()
    assert repr(cluster).endswith(f"lb, closed, dashboard {link}>")
    assert ">closed</span>" in cluster._repr_html_()

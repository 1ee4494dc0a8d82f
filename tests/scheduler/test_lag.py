"""Stream sources' lag in the scheduler (scheduler/records/lags.py): reported by drivers,
summed for policies, forgotten when stale, and LB's reserved slot while a source lags."""

from __future__ import annotations

from tests.scheduler.harness import CLIENT_ID, MS, Harness
from tidal.runtime import protocol as p
from tidal.scheduler.core import ClientJoined, ClientRequest, Tick
from tidal.scheduler.events import LagReported
from tidal.scheduler.records.lags import LAG_FRESH_NS


def report(h: Harness, source: str, pending: int, age_ms: float, client: str = CLIENT_ID):
    h.handle(ClientRequest(client, p.StreamLag(source, pending, age_ms)))


def launched(h: Harness) -> list[str]:
    return [m.task_id for e in list(h.to_executor) for m in h.sent(e, p.Launch)]


def test_lags_are_summed_for_policies_listed_in_status_and_forgotten_when_stale():
    h = Harness()
    h.handle(ClientJoined("other"))
    report(h, "ads", 120, 1500.0)
    report(h, "clicks", 30, -1.0, client="other")  # age unknown
    lag = h.core.view.stream_lag()
    assert (lag.pending, lag.oldest_age_s, lag.sources) == (150, 1.5, 2)
    assert sorted(s["source"] for s in h.core.status()["streams"]) == ["ads", "clicks"]
    assert [n.source for n in h.notes if isinstance(n, LagReported)] == ["ads", "clicks"]
    report(h, "ads", 10, 200.0)  # the last report counts
    assert h.core.view.stream_lag().pending == 40
    h.clock.now += LAG_FRESH_NS + MS
    h.handle(Tick())
    assert h.core.view.stream_lag().sources == 0 and h.core.status()["streams"] == []


def test_lb_keeps_an_executor_free_of_batch_work_while_a_source_lags():
    h = Harness()
    report(h, "ads", 5000, 2500.0)
    h.submit("b", "batch", 4)
    assert len(launched(h)) == 1  # one executor kept for the stream's next micro-batch
    (stream,) = h.submit("s", "stream", 1)
    assert launched(h) == [stream]


def test_lb_fills_every_executor_when_no_source_lags_or_its_lag_is_young():
    h = Harness()
    report(h, "ads", 5000, 100.0)  # behind by 0.1 s: not lagging
    h.submit("b", "batch", 4)
    assert len(launched(h)) == 2


def test_adaptive_takes_a_lagging_source_for_stream_work():
    h = Harness(policy="adaptive")
    (batch,) = h.submit("b", "batch", 1)
    assert h.core.policy.current == "fifo"
    (executor,) = [e for e in ("e0", "e1") if h.sent(e, p.Launch)]
    h.start(executor, batch)
    h.heartbeat(executor, {batch: [5 * MS, 5]})  # a suspension is known to be quick
    report(h, "ads", 800, 300.0)
    h.submit("c", "batch", 1)
    assert h.core.policy.current == "lb"
    assert "800 entries behind" in h.core.policy.switches[-1].reason


def test_a_lag_report_s_absurd_values_are_unknown_or_capped_and_never_crash():
    h = Harness()
    for age in (float("nan"), float("inf"), -5.0, 1e300):
        report(h, "ads", 10, age)
        lag = h.core.view.stream_lag()
        assert lag.oldest_age_s is None or lag.oldest_age_s <= 1e9
    report(h, "x" * 5000, 2**63, 1.0)
    assert max(len(s["source"]) for s in h.core.status()["streams"]) == 200
    for i in range(100):
        report(h, f"s{i}", 1, 1.0)
    assert len(h.core.status()["streams"]) == 64
    h.handle(ClientRequest(CLIENT_ID, p.ClientGoodbye("bye")))
    assert h.core.status()["streams"] == []

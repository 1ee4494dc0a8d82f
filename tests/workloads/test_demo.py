"""`tidal demo --quick` end to end: every policy runs, the results are checked, and the
report folder holds what the README promises. Speed targets are not asserted here (they
are printed by the demo and recorded in report.json)."""

from __future__ import annotations

import json

import pytest

from tidal.runtime.cli import main
from tidal.runtime.demo import DemoConfig

pytestmark = pytest.mark.slow

POLICY_FIELDS = {
    "stream_ms_p50",
    "stream_ms_p95",
    "stream_ms_p99",
    "batch_records_per_s",
    "batch_makespan_s",
    "suspensions",
    "work_lost_s",
}


def test_the_quick_demo_runs_every_policy_and_writes_the_report(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out = tmp_path / "report"

    assert main(["demo", "--quick", "--out", str(out)]) == 0

    report = json.loads((out / "report.json").read_text())
    assert set(report["stream_alone"]) >= {"stream_ms_p50", "stream_ms_p99"}
    assert list(report["policies"]) == ["fifo", "fair", "kill", "lb"]
    for name, row in report["policies"].items():
        assert set(row) >= POLICY_FIELDS, name
        assert row["batch_records_per_s"] > 0 and row["micro_batches"] > 0
        assert 0 < row["stream_ms_p50"] <= row["stream_ms_p95"] <= row["stream_ms_p99"]
    assert report["checks"] == {
        "stream_results_exact": True,
        "same_model_under_every_policy": True,
    }
    # Behaviour each policy stands for: lb suspends and loses nothing; kill loses work.
    assert report["policies"]["lb"]["suspensions"] > 0
    assert report["policies"]["lb"]["work_lost_s"] == 0
    assert report["policies"]["fifo"]["suspensions"] == 0
    assert report["policies"]["kill"]["work_lost_s"] > 0
    assert {t["target"] for t in report["targets"]} == {
        "lb stream p99 <= 1.5x stream-alone p99",
        "lb stream p99 <= 1/10 of fifo's",
        "lb batch throughput >= 0.95x fifo's",
    }

    index = (out / "index.html").read_text()
    for image in ["latency_cdf.png"] + [
        f"timeline-{name}.png" for name in ("stream-alone", "fifo", "fair", "kill", "lb")
    ]:
        assert (out / image).read_bytes().startswith(b"\x89PNG"), image
        assert image in index
    for name in ("stream-alone", "fifo", "lb"):
        assert (out / f"events-{name}.jsonl").stat().st_size > 0
    # Each cluster ran with the demo's own suspension cap (DemoConfig.max_suspensions).
    with open(out / "events-lb.jsonl") as log:
        assert json.loads(log.readline())["max_suspensions"] == DemoConfig.quick().max_suspensions
    printed = capsys.readouterr().out
    assert "alone" in printed and "lb stream p99" in printed


def test_the_demo_caps_suspensions_so_a_batch_task_can_yield_to_every_micro_batch_it_meets():
    # One suspension for every micro-batch a task three times `task_s` long would meet.
    assert DemoConfig().max_suspensions == 9  # 0.3 s tasks, a micro-batch every 100 ms
    assert DemoConfig.quick().max_suspensions == 5  # 0.15 s: 4.5, rounded up
    assert DemoConfig(task_s=0.1, interval_ms=10).max_suspensions == 30  # not 31 (floats)
    assert DemoConfig(task_s=0.05, interval_ms=1000).max_suspensions == 3  # never below 3


def test_an_unknown_policy_is_refused_before_anything_starts(tmp_path, capsys):
    assert main(["demo", "--quick", "--policies", "fifo,nope", "--out", str(tmp_path)]) == 2
    assert "nope" in capsys.readouterr().err
    assert not (tmp_path / "report.json").exists()


def test_without_matplotlib_the_report_keeps_its_figures_and_says_how_to_get_plots(
    tmp_path, monkeypatch
):
    import sys
    from types import SimpleNamespace

    from tidal.runtime.report import write_report

    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # as if not installed
    row = dict.fromkeys(POLICY_FIELDS, 1.0) | {"suspensions": 3}
    result = {
        "stream_alone": {"stream_ms_p50": 1.0, "stream_ms_p95": 2.0, "stream_ms_p99": 3.0},
        "policies": {"lb": row},
        "targets": [],
        "checks": {"stream_results_exact": True},
        "config": {},
    }
    runs = {"lb": SimpleNamespace(latencies_ms=[1.0, 2.0], event_log=None)}

    index = write_report(tmp_path, result, runs)

    assert json.loads((tmp_path / "report.json").read_text()) == result
    page = index.read_text()
    assert "pip install &quot;tidal[demo]&quot;" in page  # html-escaped
    assert "<td>lb</td>" in page and not list(tmp_path.glob("*.png"))

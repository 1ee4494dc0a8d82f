"""`tidal bench`: the suite's bookkeeping, the machine record, the peers' paths.

No figure is judged here (speed targets live in the benchmarks themselves); these tests
check that every benchmark reports what it must, that a failing one is reported and does
not stop the others, and that the Dask peer runs, or is skipped with a reason.
"""

from __future__ import annotations

import json
import math

import pytest

from tidal.runtime import cli
from tidal.runtime.bench import BENCHMARKS, bigdata, hostile, suite, throughput, unified
from tidal.runtime.bench.machine import machine_info, reference_figures
from tidal.runtime.demo import DemoConfig


def test_every_benchmark_is_a_module_with_targets_and_run():
    for name in BENCHMARKS:
        targets = suite.targets_of(name)
        assert targets, name
        for op, limit in targets.values():
            assert op in ("<=", ">=") and isinstance(limit, int | float)


def test_verdicts_judge_each_target_and_mark_missing_figures():
    targets = {"a": ("<=", 1.0), "b": (">=", 15.0), "c": ("<=", 1.0), "d": (">=", 1.0)}
    figures = {"a": 0.5, "b": 3.0, "c": None, "d": math.nan}
    got = {figure: met for figure, _, _, met in suite.verdicts(figures, targets)}
    assert got == {"a": True, "b": False, "c": None, "d": None}


def test_flatten_names_nested_figures_with_dots_and_leaves_the_machine_out():
    figures = {
        "benchmark": "x",
        "tidal": {"p99": 1, "inner": {"k": 2}},
        "r": 3,
        "faults": [{"s": 0.5}, {"s": 0.25}],
        "sizes": [1, 2],
        "machine": {},
    }
    assert dict(suite.flatten(figures)) == {
        "tidal.p99": 1,
        "tidal.inner.k": 2,
        "r": 3,
        "faults.0.s": 0.5,
        "faults.1.s": 0.25,
        "sizes": [1, 2],
    }


def test_machine_record_names_the_cpu_python_and_packages():
    machine = machine_info()
    assert machine["cores"] >= 1 and machine["cpu_model"]
    assert machine["python"].split()[-1].startswith("3.")
    for package in ("greenlet", "pyzmq", "msgpack", "libzmq"):
        assert machine["packages"][package]
    reference = reference_figures()
    assert all(value > 0 for value in reference.values()), reference


def test_a_benchmark_run_carries_its_machine_and_reference(tmp_path, capsys):
    out = tmp_path / "policies.json"
    assert cli.main(["bench", "policies", "--quick", "--json", "--out", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    written = json.loads(out.read_text())
    assert printed["benchmark"] == written["benchmark"] == "policies"
    assert printed["lb_stream_p99_vs_fifo"] == written["lb_stream_p99_vs_fifo"]
    assert {"machine", "reference", "elapsed_s"} <= printed.keys()


def test_the_table_shows_each_figure_and_verdict(capsys):
    figures = suite.run_benchmark("policies", quick=True)
    suite.print_results(figures)
    shown = capsys.readouterr().out
    assert "lb_stream_p99_vs_fifo" in shown and "met" in shown
    assert "policies.lb.stream_ms_p99" in shown
    assert figures["machine"]["cpu_model"] in shown


@pytest.mark.slow
def test_all_runs_each_benchmark_in_its_own_process_and_survives_a_failure(monkeypatch):
    monkeypatch.setitem(suite.TIMEOUT_S, True, 60.0)
    results = suite.run_all(quick=True, names=["policies"])
    assert results["benchmarks"]["policies"]["cap_respected"] == 1
    assert results["machine"] and results["total_s"] > 0

    monkeypatch.setitem(suite.TIMEOUT_S, True, 0.05)  # nothing starts that fast
    results = suite.run_all(quick=True, names=["steal", "policies"])
    assert set(results["benchmarks"]) == {"steal", "policies"}
    assert all("timed out" in r["error"] for r in results["benchmarks"].values())


@pytest.mark.slow
def test_throughput_without_dask_says_so_and_still_measures_tidal(monkeypatch):
    monkeypatch.setattr(throughput, "dask_missing", lambda: "dask is not installed (test)")
    result = throughput.run(tasks=300)
    assert result["dask_skipped"] == "dask is not installed (test)"
    assert "dask_tasks_per_s" not in result and result["tasks_per_s"] > 0


@pytest.mark.slow
def test_throughput_compares_with_dask_on_the_same_tasks():
    pytest.importorskip("distributed")
    result = throughput.run(tasks=300)
    assert result["dask_tasks_per_s"] > 0
    assert result["tasks_vs_dask"] == pytest.approx(
        result["tasks_per_s"] / result["dask_tasks_per_s"]
    )


@pytest.mark.slow
def test_unified_runs_the_same_job_on_tidal_and_dask_with_the_same_results(tmp_path):
    pytest.importorskip("distributed")
    config = DemoConfig.quick(duration_s=1.0, task_s=0.05, policies=("lb",), out=tmp_path)
    result = unified.run(config=config)
    for backend in ("tidal", "dask"):
        figures = result[backend]
        assert figures["stream_exact"] and figures["micro_batches"] > 0, backend
        assert figures["stream_ms_p50"] <= figures["stream_ms_p99"]
    assert result["same_model"]
    assert result["stream_p99_ratio"] == pytest.approx(
        result["dask"]["stream_ms_p99"] / result["tidal"]["stream_ms_p99"]
    )
    assert result["makespan_ratio"] == pytest.approx(
        result["tidal"]["batch_makespan_s"] / result["dask"]["batch_makespan_s"]
    )


@pytest.mark.slow
def test_unified_without_dask_skips_the_peer(monkeypatch, tmp_path):
    monkeypatch.setattr(unified, "dask_missing", lambda: "dask is not installed (test)")
    config = DemoConfig.quick(duration_s=0.5, task_s=0.05, policies=("lb",), out=tmp_path)
    result = unified.run(config=config)
    assert result["dask"] is None and result["stream_p99_ratio"] is None
    assert result["dask_skipped"] == "dask is not installed (test)"
    assert result["tidal"]["stream_exact"]


@pytest.mark.slow
def test_bigdata_runs_its_scenario_and_keeps_the_partitions_off_the_scheduler():
    figures = bigdata.run(quick=True, records=40_000, big_mib=2, alone=10)
    assert figures["results_exact"] and figures["big_argument_error"] is None
    assert figures["big_argument_s"] is not None and figures["batch_tasks"] == 4
    # Each partition packs to ~200 KB: spooled, so only references reach the scheduler.
    assert figures["forwarded_vs_payload"] < 0.05
    # The 2 MB result comes back by the data path too: a reference through the scheduler.
    assert figures["big_result_error"] is None and figures["big_result_s"] is not None
    assert figures["big_result_bytes_forwarded"] < 2 * 1024 * 1024 / 100
    for key in ("stream_ms_p99", "alone_ms_p99", "stream_p99_vs_alone", "suspended_vs_batch"):
        assert figures[key] >= 0


@pytest.mark.slow
def test_hostile_runs_its_phases_against_a_real_job_and_loses_nothing():
    figures = hostile.run(quick=True, scale=200)
    assert figures["phases"][-1] == "impostor" and len(figures["phases"]) == 10
    assert figures["real_results_wrong"] == figures["real_tasks_failed"] == 0
    assert figures["impostor_evictions"] == 0
    assert figures["hostile_frames"] > 2_000 and figures["bad_input"]["bad_frames"] > 0
    assert figures["log_line_max_chars"] <= 500
    assert figures["ping_ms_max"] > 0 and figures["stream_p99_hostile_vs_quiet"] > 0
    assert figures["pings"] > 0 and type(figures["scheduler_rss_growth_mib"]) is float


def test_soak_serves_clients_that_come_and_go_and_its_books_empty_out():
    from tidal.runtime.bench import soak

    figures = soak.run(clients=2, map_tasks=2_000, singles=6, long_rounds=3, idle_s=0)
    assert figures["tasks"] == 1_010 + 2 * 2_006 + 3 * 1_006
    assert figures["books_end"] == {"jobs": 0, "records": 0}  # the vanished one's after 2 s
    assert figures["journal_bytes_end"] > 0
    for key in ("scheduler_rss_start_mib", "scheduler_rss_end_mib", "executor_rss_growth_mib"):
        assert isinstance(figures[key], float)

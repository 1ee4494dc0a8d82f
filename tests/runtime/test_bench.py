"""`tidal bench`: the suite's bookkeeping, the machine record, the peers' paths.

No figure is judged here (speed targets live in the benchmarks themselves); these tests
check that every benchmark reports what it must, that a failing one is reported and does
not stop the others, and that each peer runs, or is skipped with a reason. The Ray peer's
code runs against tests/runtime/fake_ray (Ray's calls over threads: Ray itself is not in
the test extra, see docs/benchmarks.md); with Ray installed, one test starts the real one.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import os
import pathlib
import sys
import tempfile

import psutil
import pytest

from tidal.runtime import cli
from tidal.runtime.bench import BENCHMARKS, bigdata, hostile, peers, suite, throughput, unified
from tidal.runtime.bench.machine import machine_info, reference_figures
from tidal.runtime.demo import DemoConfig
from tidal.workloads.synthetic import spin, total

FAKE_RAY = pathlib.Path(__file__).with_name("fake_ray")
SKIPPED = "not installed (test)"


def _skip(monkeypatch, peer):
    """Run unified without `peer`, as if it were not installed."""
    monkeypatch.setattr(
        unified,
        "PEERS",
        tuple(
            dataclasses.replace(p, missing=lambda: SKIPPED) if p.name == peer else p
            for p in unified.PEERS
        ),
    )


@pytest.fixture
def fake_ray(monkeypatch):
    """tests/runtime/fake_ray as `ray`, here and in the processes a benchmark spawns."""
    spec = importlib.util.spec_from_file_location("ray", FAKE_RAY / "ray.py")
    fake = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fake)
    monkeypatch.setitem(sys.modules, "ray", fake)
    monkeypatch.syspath_prepend(str(FAKE_RAY))
    yield fake
    assert not fake.is_initialized(), "the benchmark left its Ray driver running"


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
def test_throughput_without_the_peers_says_so_and_still_measures_tidal(monkeypatch):
    monkeypatch.setattr(throughput, "dask_missing", lambda: SKIPPED)
    monkeypatch.setattr(throughput, "ray_missing", lambda: SKIPPED)
    result = throughput.run(tasks=300)
    assert result["dask_skipped"] == result["ray_skipped"] == SKIPPED
    assert "dask_tasks_per_s" not in result and "ray_tasks_per_s" not in result
    assert result["tasks_per_s"] > 0


@pytest.mark.slow
def test_throughput_compares_with_dask_on_the_same_tasks(monkeypatch):
    pytest.importorskip("distributed")
    monkeypatch.setattr(throughput, "ray_missing", lambda: SKIPPED)
    result = throughput.run(tasks=300)
    assert result["dask_tasks_per_s"] > 0
    assert result["tasks_vs_dask"] == pytest.approx(
        result["tasks_per_s"] / result["dask_tasks_per_s"]
    )


@pytest.mark.slow
def test_unified_runs_the_same_job_on_tidal_and_dask_with_the_same_results(monkeypatch, tmp_path):
    pytest.importorskip("distributed")
    _skip(monkeypatch, "ray")
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
def test_unified_without_the_peers_skips_them(monkeypatch, tmp_path):
    _skip(monkeypatch, "dask")
    _skip(monkeypatch, "ray")
    config = DemoConfig.quick(duration_s=0.5, task_s=0.05, policies=("lb",), out=tmp_path)
    result = unified.run(config=config)
    assert result["dask"] is None and result["stream_p99_ratio"] is None
    assert result["ray"] is None and result["ray_stream_p99_ratio"] is None
    assert result["dask_skipped"] == result["ray_skipped"] == SKIPPED
    assert result["tidal"]["stream_exact"]


# ---- Ray -------------------------------------------------------------------------------------


def test_the_ray_client_runs_tidal_tasks_with_the_settings_named_in_peers(fake_ray):
    with peers.ray_cluster(2) as client:
        [(_, options)] = fake_ray.history
        temp = pathlib.Path(options.pop("_temp_dir"))
        assert temp.is_dir()
        assert options == {
            "address": None,
            "num_cpus": 2,
            **peers.RAY_HEAD_OPTIONS,
            **peers.RAY_DRIVER_OPTIONS,
        }
        future = client.submit(total, [1, 2, 3])  # a TaskFunction, through run_task
        assert client.gather([future], timeout=10) == [6] and future.result() == 6
        shared = client.put(0.0)  # a keyword's reference reaches each task as its value
        assert client.map(spin, [[1, 2], [3]], record_us=shared) == [3, 3]
        address = client.address
    assert fake_ray.history[-1] == ("shutdown", {}) and not temp.exists()
    with peers.ray_connect(address):
        connect = {"address": address, "num_cpus": None, **peers.RAY_DRIVER_OPTIONS}
        assert fake_ray.history[-1] == ("init", connect)
    assert not fake_ray.is_initialized()


def test_ray_is_missing_only_where_it_cannot_be_imported(monkeypatch, fake_ray):
    assert peers.ray_missing() is None
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    assert "pip install" in peers.ray_missing()


@pytest.mark.slow
def test_throughput_compares_with_ray_on_the_same_tasks(monkeypatch, fake_ray):
    monkeypatch.setattr(throughput, "dask_missing", lambda: SKIPPED)
    result = throughput.run(tasks=300)
    assert result["ray_tasks_per_s"] > 0 and result["ray_versions"] == {"ray": "0.0+fake"}
    assert result["tasks_vs_ray"] == pytest.approx(
        result["tasks_per_s"] / result["ray_tasks_per_s"]
    )
    assert result["unchunked_vs_ray"] == pytest.approx(
        result["tasks_per_s_unchunked"] / result["ray_tasks_per_s"]
    )
    assert [kind for kind, _ in fake_ray.history] == ["init", "shutdown"]


@pytest.mark.slow
def test_unified_runs_the_same_job_on_ray_with_the_same_results(monkeypatch, fake_ray, tmp_path):
    _skip(monkeypatch, "dask")
    config = DemoConfig.quick(duration_s=1.0, task_s=0.05, policies=("lb",), out=tmp_path)
    result = unified.run(config=config)
    ray = result["ray"]
    assert ray["stream_exact"] and ray["micro_batches"] > 0
    assert ray["stream_ms_p50"] <= ray["stream_ms_p99"]
    assert result["ray_same_model"] and result["ray_versions"] == {"ray": "0.0+fake"}
    assert result["ray_stream_p99_ratio"] == pytest.approx(
        ray["stream_ms_p99"] / result["tidal"]["stream_ms_p99"]
    )
    assert result["ray_makespan_ratio"] == pytest.approx(
        result["tidal"]["batch_makespan_s"] / ray["batch_makespan_s"]
    )


@pytest.mark.slow
def test_the_real_ray_starts_runs_a_task_and_leaves_no_process_behind():
    if importlib.util.find_spec("ray") is None:
        pytest.skip("ray is not installed")
    ours = psutil.Process(os.getpid())
    before = {p.pid for p in ours.children(recursive=True)}
    temps = set(pathlib.Path(tempfile.gettempdir()).glob("tidal-ray-*"))
    with peers.ray_cluster(2) as client:
        assert client.address.startswith("127.0.0.1:")  # single-host mode
        assert client.map(spin, [[1, 2], [3]], record_us=client.put(0.0)) == [3, 3]
        started = [p for p in ours.children(recursive=True) if p.pid not in before]
    assert started, "Ray started no process of its own"
    _gone, alive = psutil.wait_procs(started, timeout=10)
    assert not alive, f"Ray processes left running: {[p.name() for p in alive]}"
    assert set(pathlib.Path(tempfile.gettempdir()).glob("tidal-ray-*")) == temps


@pytest.mark.slow
def test_bigdata_runs_its_scenarios_and_keeps_the_partitions_off_the_scheduler():
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
    # The chained case: kept partitions summed where they are; the same shipped through the
    # client. Its speed and placement targets live in the benchmark's output, not here.
    assert figures["chained_results_exact"] and figures["chained_partitions"] == 4
    assert figures["stage2_bytes_via_client"] == figures["stage2_bytes_via_scheduler"] == 0
    assert figures["stage2_shipped_bytes_via_client"] > 2 * 4 * 40_000  # out and back in
    for policy in ("lb", "lma"):
        assert 0 <= figures[f"stage2_local_fraction_{policy}"] <= 1
        assert sum(figures["stage2_placements"][policy].values()) == 4
    for key in ("stage2_s", "stage2_s_lma", "stage2_s_shipped", "stage2_vs_shipped"):
        assert figures[key] > 0


@pytest.mark.slow
def test_streams_counts_exactly_once_through_a_killed_driver_and_executor():
    from tidal.runtime.bench import streams

    figures = streams.run(quick=True, rate=4_000, phase_s=1.0, once_events=8_000)
    assert figures["exactly_once"] is True
    # The first driver died with entries pending, which the second one replayed.
    assert figures["pending_at_kill"] > 0 and figures["replayed_batches"] > 0
    assert figures["executor_killed"] and figures["once_failed_batches"] == 0
    assert figures["events"] == figures["alone_events"] == 4_000
    for key in ("events_per_s", "event_ms_p50", "event_ms_p99", "alone_event_ms_p99"):
        assert figures[key] > 0
    assert figures["event_p99_vs_alone"] > 0 and figures["batch_tasks_run"] >= 0


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


@pytest.mark.slow
def test_chunking_takes_the_median_of_alternating_rounds():
    from tidal.runtime.bench import chunking

    result = chunking.run(subtasks=2_000)
    autos, pools = result["subtasks_per_s_auto_runs"], result["pool_chunked_per_s_runs"]
    assert len(autos) == len(pools) == chunking.ROUNDS and min(autos) > 0 and min(pools) > 0
    assert result["subtasks_per_s_auto"] == sorted(autos)[chunking.ROUNDS // 2]
    assert result["pool_chunked_per_s"] == sorted(pools)[chunking.ROUNDS // 2]
    assert result["auto_vs_pool_chunked"] == pytest.approx(
        result["subtasks_per_s_auto"] / result["pool_chunked_per_s"]
    )

"""`tidal bench scale` at a small size: its driver and figures, checked for behaviour, not speed.

The benchmark drives the real SchedulerCore with simulated executors (runtime/bench/scale.py);
here with 20 executors and a few thousand subtasks, so every run takes well under a second.
"""

from __future__ import annotations

import math
import multiprocessing
import os

import pytest

from tidal.runtime.bench import scale


@pytest.mark.slow
def test_the_figures_are_all_there_and_sane():
    figures = scale.run(executors=20, subtasks=5_000, events=2_000, drain_per_executor=20)
    assert set(scale.TARGETS) <= set(figures)
    assert figures["policy"] == "lb" and figures["executors"] == 20
    assert figures["subtasks"] == figures["pending_subtasks_measured"] == 5_000
    assert figures["events"] == 2_000
    for name in (
        "decision_ms_p50",
        "decision_ms_p99",
        "events_per_s",
        "phase_events_per_s",
        "bytes_per_pending_subtask",
        "stream_arrival_ms_p50",
        "drain_ms_p99",
        "setup_s",
    ):
        assert math.isfinite(figures[name]) and figures[name] > 0, name
    assert figures["decision_ms_p50"] <= figures["decision_ms_p99"] <= figures["decision_ms_max"]
    # The policy made suspension decisions for the stream tasks; nothing completed twice.
    assert figures["stream_tasks"] > 0 and figures["suspensions"] > 0
    assert figures["duplicate_results"] == 0
    assert figures["drain_completed_once"] == 1 and figures["drain_subtasks"] == 400


def test_every_subtask_is_known_to_the_core_and_completes_exactly_once():
    driver = scale.ScaleDriver(20, seed=3, stream_every_ms=5.0)
    driver.submit_batch(5_000, tasks_per_job=2_000)
    core = driver.core
    assert driver.jobs == 3 and core.records.pending.count("batch") == 5_000
    submitted = [f"bench-{j}/{i}" for j, n in enumerate((2_000, 2_000, 1_000)) for i in range(n)]
    jobs = [core.records.jobs[f"bench-{j}"] for j in range(3)]
    assert [len(job.payloads) for job in jobs] == [2_000, 2_000, 1_000]  # bulk jobs: ranges
    assert {job.chunksize for job in jobs} == {scale.CHUNKSIZE}
    assert not any(task_id in core.records.tasks for task_id in submitted)
    driver.start()
    driver.run_until(lambda: driver.loop.now >= 1_000_000_000)  # a second with stream tasks
    driver.finish()
    assert driver.completed_once()
    assert set(driver.results) == set(submitted) | {
        f"stream-{i}/0" for i in range(driver.stream_tasks)
    }
    assert all(all(job.ended) for job in jobs)
    assert all(job.finished == job.total for job in core.records.jobs.values())
    assert driver.stream_tasks > 0 and driver.suspends > 0 and core.records.steal_count > 0


def test_the_same_seed_gives_the_same_run():
    def one_run():
        driver = scale.ScaleDriver(10, seed=7)
        driver.submit_batch(2_000)
        driver.start()
        driver.run_until(lambda: driver.loop.now >= 500_000_000)
        driver.finish()
        return (
            driver.loop.now,
            driver.suspends,
            driver.core.records.steal_count,
            list(driver.results),
        )

    assert one_run() == one_run()


def test_memory_is_measured_one_of_two_ways():
    with pytest.raises(ValueError, match="'tracemalloc' or 'rss'"):
        scale.submit_measured(scale.ScaleDriver(1), 10, memory="guess")
    kept = scale.submit_measured(scale.ScaleDriver(1), 1_000)
    # Columns: a subtask's x packed in its job's array, where it begins and a byte for its
    # end; no record, no payload object (~48 bytes a subtask when each had one).
    assert 1_000 * 5 < kept < 1_000 * 30


@pytest.mark.slow
def test_the_core_in_a_process_of_its_own_runs_as_it_does_here():
    def one_run(core_process):
        driver = scale.ScaleDriver(10, seed=5, core_process=core_process)
        try:
            kept = scale.submit_measured(driver, 2_000)
            driver.start()
            driver.side.gc_start()
            driver.run_until(lambda: driver.loop.now >= 500_000_000)
            longest_ns, full = driver.side.gc_stop()
            driver.finish()
            return kept, longest_ns, full, driver.suspends, driver.side.steals(), driver.results
        finally:
            driver.close()

    here, apart = one_run(False), one_run(True)
    # The same decisions, in the same order, to the same results: the pipe changes nothing.
    assert apart[3:] == here[3:] and apart[-1] and set(apart[-1].values()) == {1}
    # Measured where the core is: it kept the payloads; its collections were timed.
    for kept, longest_ns, full, *_ in (here, apart):
        assert 2_000 * 5 < kept < 2_000 * 30
        assert longest_ns > 0 and full >= 0


@pytest.mark.slow
def test_a_core_process_that_fails_says_so_and_is_stopped():
    driver = scale.ScaleDriver(2, core_process=True)
    process = driver.side._process
    affinity = driver.side._affinity
    with pytest.raises(RuntimeError, match="failed in memory_stop"):
        driver.side.memory_stop()  # no memory_start: the core's process reports, and goes on
    assert driver.side.pending() == 0
    with pytest.raises(AttributeError, match="process of its own"):
        driver.core  # noqa: B018
    driver.close()
    assert not process.is_alive() and process.exitcode == 0
    assert os.sched_getaffinity(0) == affinity  # given back
    with pytest.raises(RuntimeError, match="core's process is gone"):
        driver.side.pending()
    with pytest.raises(TypeError):
        scale.ScaleDriver(2.5, core_process=True)  # fails after its core's process started
    assert os.sched_getaffinity(0) == affinity
    assert not [c for c in multiprocessing.active_children() if "scale-core" in c.name]

"""End to end on real processes: LocalCluster (scheduler + executors), Client, the CLI.

Assertions are on behaviour (who finished before whom, what the statistics say), never on
elapsed time. Every cluster is a context manager, so its processes are stopped even when a
test fails.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import subprocess
import sys
import textwrap
import time

import pytest

from tidal.runtime.client import Client, RemoteTraceback
from tidal.runtime.cluster import LocalCluster
from tidal.runtime.functions import FunctionNotFound
from tidal.workloads.synthetic import spin, total

pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def one_running(status):
    return status["executors"][0]["running"] is not None


def both_running(status):
    return sum(e["running"] is not None for e in status["executors"]) >= 2


def test_a_stream_task_suspends_a_batch_task_and_the_batch_result_is_exact():
    partitions = [list(range(i * 30_000, (i + 1) * 30_000)) for i in range(2)]
    with LocalCluster(executors=2) as cluster, Client(cluster) as client:
        batch = client.map(spin, partitions, priority="batch", record_us=20.0)  # ~0.6 s each
        # Wait until both batch tasks hold the slots (a status poll, not a sleep).
        client.wait_for_status(both_running)
        stream = client.submit(total, [1, 2, 3], priority="stream")
        assert stream.result(timeout=30) == 6
        assert client.gather(batch, timeout=60) == [sum(p) for p in partitions]
        suspensions = [f.statistics().suspensions for f in batch]
        assert sorted(suspensions) == [0, 1]
        assert stream.statistics().executor_id in {f.statistics().executor_id for f in batch}
        # It did not wait for a batch task to finish: it took a suspended one's slot, and
        # ended (on the executors' shared monotonic clock) before that one did.
        (suspended,) = [f.statistics() for f in batch if f.statistics().suspensions == 1]
        assert stream.statistics().executor_id == suspended.executor_id
        assert stream.statistics().finished_at_ns < suspended.finished_at_ns


def test_the_suspension_cap_set_per_job_is_respected_end_to_end(monkeypatch):
    # By the scheduler's path: a lane's stream task may take the slot in the moment between
    # the first one's end and the batch task's resumption (a free slot: LB's choice too),
    # which this test's timing would not tell apart from a broken cap. tests/runtime/
    # test_lanes.py holds lanes to the cap.
    monkeypatch.setenv("TIDAL_LANES", "0")
    with LocalCluster(executors=1) as cluster, Client(cluster) as client:
        (batch,) = client.map(spin, [list(range(40_000))], record_us=20.0, max_suspensions=1)
        client.wait_for_status(one_running)
        first = client.submit(total, [1], priority="stream")
        assert first.result(timeout=30) == 1
        second = client.submit(total, [2], priority="stream")
        # Capped: the second stream task must wait for the batch task to finish.
        assert second.result(timeout=60) == 2
        assert batch.done() and batch.statistics().suspensions == 1
        assert second.statistics().queued_s >= batch.statistics().running_s * 0.5


def test_task_errors_reraise_with_the_remote_traceback():
    with LocalCluster(executors=1) as cluster, Client(cluster) as client:
        future = client.submit(total, ["a", "b"])
        with pytest.raises(TypeError) as caught:
            future.result(timeout=30)
        assert isinstance(caught.value.__cause__, RemoteTraceback)
        assert "in total" in str(caught.value.__cause__)
        assert client.submit(total, [4]).result(timeout=30) == 4  # still serving


def test_bad_calls_fail_at_submit_time_with_the_problem_named():
    with LocalCluster(executors=1) as cluster, Client(cluster) as client:
        with pytest.raises(ValueError, match="stream"):
            client.submit(total, [1], priority="urgent")
        with pytest.raises(FunctionNotFound, match="lambda"):
            client.submit(lambda: 1)
        with pytest.raises(TypeError, match="argument 1"):
            client.submit(total, {1, 2})


def test_a_killed_executor_loses_no_task_and_none_completes_twice():
    partitions = [list(range(i * 2_000, (i + 1) * 2_000)) for i in range(8)]
    with LocalCluster(executors=2, heartbeat_ms=100) as cluster, Client(cluster) as client:
        futures = client.map(spin, partitions, record_us=100.0)  # ~0.2 s each
        client.wait_for_status(both_running)
        victim = cluster.processes[1]
        victim.kill()
        victim.wait()
        assert client.gather(futures, timeout=120) == [sum(p) for p in partitions]
        attempts = [f.statistics().attempt for f in futures]
        assert max(attempts) >= 1  # the lost executor's task ran again elsewhere
        lost = [e for e in client.status()["executors"] if e["state"] == "lost"]
        assert len(lost) == 1


def test_cancel_stops_a_running_task_and_frees_its_slot():
    with LocalCluster(executors=1) as cluster, Client(cluster) as client:
        (long_task,) = client.map(spin, [list(range(1_000_000))], record_us=20.0)
        client.wait_for_status(one_running)
        assert long_task.cancel()
        assert client.submit(total, [5]).result(timeout=30) == 5
        assert long_task.cancelled()


def test_futures_can_be_awaited_and_used_through_a_concurrent_executor():
    with LocalCluster(executors=2) as cluster, Client(cluster) as client:

        async def main():
            return await asyncio.gather(client.submit(total, [1, 2]), client.submit(total, [3]))

        assert asyncio.run(main()) == [3, 3]
        with client.executor() as pool:
            assert list(pool.map(total, [[1], [2, 3]])) == [1, 5]
        done = list(client.as_completed(client.map(total, [[1], [2], [3]])))
        assert sorted(f.result() for f in done) == [1, 2, 3]


def test_functions_in_the_users_main_script_run_on_local_executors(tmp_path):
    script = tmp_path / "user_app.py"
    script.write_text(
        textwrap.dedent("""
        from tidal.runtime.client import Client
        from tidal.runtime.cluster import LocalCluster
        from tidal.runtime.task import task

        @task
        def squares(part):
            for x in part:
                yield x * x

        if __name__ == "__main__":
            with LocalCluster(executors=1) as cluster, Client(cluster) as client:
                print(client.submit(squares, [1, 2, 3]).result(timeout=30))
    """)
    )
    env = dict(os.environ, PYTHONPATH=ROOT)
    result = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("[1, 4, 9]")


def test_tidal_status_reports_executors_and_jobs():
    with (
        LocalCluster(executors=2, nodes=["rack-a", "rack-b"]) as cluster,
        Client(cluster) as client,
    ):
        client.map(total, [[1], [2]])[1].result(timeout=30)
        env = dict(os.environ, PYTHONPATH=ROOT)
        out = subprocess.run(
            [sys.executable, "-m", "tidal", "status", "--scheduler", cluster.address, "--json"],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            check=True,
        ).stdout
    snapshot = json.loads(out)
    assert sorted(e["node"] for e in snapshot["executors"]) == ["rack-a", "rack-b"]
    assert snapshot["policy"] == "lb" and snapshot["jobs"][0]["total"] == 2


def test_local_cluster_stops_every_process_it_started_also_on_an_exception():
    with pytest.raises(RuntimeError, match="boom"), LocalCluster(executors=2) as cluster:
        processes = cluster.processes
        raise RuntimeError("boom")
    assert all(process.poll() is not None for process in processes)


def test_an_unknown_policy_fails_fast_with_the_known_names():
    from tidal.scheduler.policies import UnknownPolicy

    with pytest.raises(
        UnknownPolicy, match="known policies are adaptive, fair, fifo, kill, lb, lma, static"
    ):
        LocalCluster(executors=1, policy="nope")


def test_chunked_tasks_complete_exactly_once_under_stealing_and_executor_loss():
    items = list(range(1_200))
    with LocalCluster(executors=3, heartbeat_ms=100) as cluster, Client(cluster) as client:
        # Uneven chunks: stealing moves work to idle executors; then one executor dies.
        futures = client.map(spin, [[i] for i in items], chunksize=400, record_us=2_000.0)
        client.wait_for_status(lambda status: status["steals"] > 0)
        victim = cluster.processes[1]
        victim.kill()
        victim.wait()
        assert client.gather(futures, timeout=120) == items
        status = client.status()
        (job,) = status["jobs"]
        assert (job["finished"], job["failed"], job["total"]) == (1_200, 0, 1_200)
        assert status["steals"] >= 1
        # Lost by its connection: maybe a moment after the last result, if it held none.
        client.wait_for_status(lambda s: sum(e["state"] == "lost" for e in s["executors"]) == 1)


def test_a_stream_task_suspends_a_running_chunk_end_to_end():
    with LocalCluster(executors=1) as cluster, Client(cluster) as client:
        chunked = client.map(spin, [[i] for i in range(300)], chunksize=300, record_us=1_000.0)
        completed = []  # in the order the client got the results (its IO thread runs these)
        for future in chunked:
            future.add_done_callback(completed.append)
        client.wait_for_status(one_running)
        stream = client.submit(total, [1, 2], priority="stream")
        stream.add_done_callback(completed.append)
        assert stream.result(timeout=30) == 3
        assert client.gather(chunked, timeout=60) == list(range(300))
        # It did not wait for the chunk to end: part of the chunk's results came after it.
        assert completed.index(stream) < len(chunked)


def test_tuple_dict_keys_round_trip_through_arguments_and_results_end_to_end():
    # `dict(table, extra=other)` echoes its arguments: tuple keys cross client -> scheduler ->
    # executor in the task's payload and come back in its result, in a launch and a chunk.
    tables = [{("ad", i): i, ("ad", (i, "w")): [i]} for i in range(4)]
    other = {(1, 2): "x"}
    with LocalCluster(executors=1) as cluster, Client(cluster) as client:
        alone = client.submit(dict, tables[0], extra=other)
        assert alone.result(timeout=30) == {**tables[0], "extra": other}
        chunked = client.map(dict, tables, chunksize=4, extra=other)
        assert client.gather(chunked, timeout=30) == [{**t, "extra": other} for t in tables]
        assert all(type(key) is tuple for key in chunked[3].result() if key != "extra")


def test_a_bulk_map_completes_in_place_with_failures_and_cancellations_end_to_end():
    # 3,000 one-record tasks: a bulk job (no record per task in the scheduler); "x" makes
    # total() fail alone; one task is cancelled while pending, the rest complete exactly once.
    parts = [[i] for i in range(3_000)]
    parts[7] = ["x"]
    with LocalCluster(executors=2) as cluster, Client(cluster) as client:
        futures = client.map(spin, parts, record_us=50.0)
        assert len(futures) == 3_000 and futures[-1].task_id == f"{futures.job_id}/2999"
        assert futures[2_999].cancel()  # far back in the queue: cancelled at once
        with pytest.raises(concurrent.futures.CancelledError):
            client.gather(futures, timeout=60)  # the first failure to arrive, at once
        done = [f for f in futures[:2_999] if f.exception(timeout=60) is None]
        assert [f.result() for f in done] == [i for i in range(2_999) if i != 7]
        assert futures[2_999].cancelled() and futures[7].exception() is not None
        stats = futures[10].statistics()
        assert stats.executor_id is not None and stats.running_s > 0
        status = client.status()
        (job,) = status["jobs"]
        assert (job["finished"], job["failed"], job["cancelled"]) == (2_998, 1, 1)


def test_a_policy_instance_with_settings_of_its_own_is_refused_not_silently_reset():
    from tidal.scheduler.policies.static import StaticPolicy

    with pytest.raises(ValueError) as refused:
        LocalCluster(executors=1, policy=StaticPolicy(stream_share=0.5))
    message = str(refused.value)
    assert "this StaticPolicy is not StaticPolicy(): stream_share=0.5 where" in message
    assert "StaticPolicy() has 0.25" in message and "subclass of StaticPolicy" in message


def test_a_policy_instance_as_its_class_makes_it_runs_as_that_class():
    from tidal.scheduler.policies.adaptive import AdaptivePolicy  # policies inside, compared too

    with LocalCluster(executors=1, policy=AdaptivePolicy()) as cluster, Client(cluster) as client:
        assert cluster.policy == "tidal.scheduler.policies.adaptive:AdaptivePolicy"
        assert client.status()["policy"] == "adaptive"


def test_local_executors_import_the_users_module_from_the_programs_folder(tmp_path, monkeypatch):
    # As the user's program does; and the user's TIDAL_* settings, meant for `tidal`
    # commands, do not reach the cluster's own processes (keys here would lock them out).
    source = "def triple(xs):\n    return [3 * x for x in xs]\n"
    (tmp_path / "firsthour_local.py").write_text(source)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("TIDAL_KEYS", str(tmp_path))
    monkeypatch.setenv("TIDAL_SCHEDULER_ADDRESS", "tcp://127.0.0.1:1")
    from firsthour_local import triple

    with LocalCluster(executors=1) as cluster, Client(cluster) as client:
        assert client.submit(triple, [1, 2]).result(timeout=30) == [3, 6]
    monkeypatch.delitem(sys.modules, "firsthour_local")


def test_closing_a_cluster_prints_nothing_of_its_executors_clean_exits(capfd):
    with LocalCluster(executors=1) as cluster, Client(cluster) as client:
        assert client.submit(total, [1]).result(timeout=30) == 1
    # The executors are gone (close() waited for them): all they would say was said.
    assert "exits" not in capfd.readouterr().err


@pytest.mark.slow
def test_a_program_killed_by_a_signal_leaves_no_cluster_process_behind():
    import signal as signals

    program = (
        "import sys\n"
        "from tidal import LocalCluster\n"
        "cluster = LocalCluster(executors=1)\n"
        "print(*[p.pid for p in cluster.processes], flush=True)\n"
        "sys.stdin.read()\n"  # until killed
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", program],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=dict(os.environ, PYTHONPATH=ROOT),
    )
    children = [int(pid) for pid in proc.stdout.readline().split()]
    assert len(children) == 2  # the scheduler and the executor
    proc.send_signal(signals.SIGKILL)  # no atexit, no close()
    proc.wait(timeout=30)
    proc.stdin.close()
    proc.stdout.close()
    deadline = time.monotonic() + 30
    alive = children
    while alive and time.monotonic() < deadline:
        alive = [pid for pid in alive if _running(pid)]
        time.sleep(0.05)
    assert not alive, f"still running after their program was killed: {alive}"


def _running(pid: int) -> bool:
    """Whether `pid` runs (a zombie, dead but not reaped by its new parent, does not)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False

"""Kept results and futures as arguments (runtime/kept.py, runtime/kept_futures.py): the
pieces on their own, then end to end on a LocalCluster."""

from __future__ import annotations

import pytest

from tidal.runtime import kept, payloads
from tidal.runtime.client import Client
from tidal.runtime.cluster import LocalCluster
from tidal.runtime.datastore import DataStore, DataUnavailable, fetch_chunks
from tidal.runtime.futures import TaskError
from tidal.runtime.payloads import Blocks
from tidal.runtime.protocol import ProtocolError
from tidal.workloads.synthetic import nested_lengths, numbers, pairwise_sums, spin, total


class Marker:
    def __init__(self, name: str) -> None:
        self.name = name


def is_marker(value) -> bool:
    return isinstance(value, Marker)


def test_find_inputs_replaces_futures_anywhere_in_lists_tuples_and_dict_values():
    a, b, c = Marker("a"), Marker("b"), Marker("c")
    args, kwargs, found = kept.find_inputs([a, [1, (b, 2)], "x"], {"k": {"deep": c}}, is_marker)
    assert args == [None, [1, [None, 2]], "x"]
    assert kwargs == {"k": {"deep": None}}
    assert [(path, f.name) for path, f in found] == [
        ([0], "a"),
        ([1, 1, 0], "b"),
        (["k", "deep"], "c"),
    ]


def test_find_inputs_leaves_calls_without_futures_and_big_partitions_untouched():
    partition = list(range(kept.MAX_SCAN_ITEMS + 1))
    args, kwargs = [partition, {"a": 1}], {"b": (1, 2)}
    same_args, same_kwargs, found = kept.find_inputs(args, kwargs, is_marker)
    assert found == [] and same_args is args and same_kwargs is kwargs


@pytest.fixture
def store():
    data = DataStore("test-kept-owner")
    yield data
    data.close()


def put_kept(store: DataStore, value) -> bytes:
    return payloads.pack_reference(store.put(kept.pack_kept(value)))


def test_resolve_inputs_puts_values_in_place_and_a_gated_argument_stays_packed(store):
    big = list(range(100_000))  # blocked: decoded as the task reads it
    boundaries = []
    args, kwargs = [None, [None, 7]], {"k": None}
    inputs = [
        [[0], "a/0", put_kept(store, big)],
        [[1, 0], "a/1", put_kept(store, "small")],
        [["k"], "a/2", put_kept(store, {"x": [1, 2]})],
    ]
    gated = {0}.__contains__  # argument 0 is one the task gates
    kept.resolve_inputs(args, kwargs, inputs, fetch_chunks, lambda: boundaries.append(1), gated)
    assert isinstance(args[0], Blocks) and list(args[0]) == big
    assert args[1] == ["small", 7] and kwargs == {"k": {"x": [1, 2]}}
    assert len(boundaries) >= 3  # one per piece read at least


def test_resolve_inputs_names_an_input_that_is_gone_and_refuses_a_path_that_does_not_fit(store):
    blob = put_kept(store, [1, 2])
    store.drop([payloads.open_reference(blob)])
    with pytest.raises(kept.InputUnavailable, match=r"input a/0 \(the kept result of task a/0\)"):
        kept.resolve_inputs([None], {}, [[[0], "a/0", blob]], fetch_chunks, lambda: None, bool)
    blob = put_kept(store, 1)
    with pytest.raises(ProtocolError, match="path"):
        kept.resolve_inputs([None], {}, [[[3, 1], "a/1", blob]], fetch_chunks, lambda: None, bool)
    with pytest.raises(ProtocolError, match=r"launch\.inputs"):
        kept.resolve_inputs([None], {}, [["junk"]], fetch_chunks, lambda: None, bool)


# ---- end to end -------------------------------------------------------------------------------


@pytest.mark.slow
def test_kept_results_feed_other_tasks_without_coming_back_to_the_client():
    with LocalCluster(executors=2) as cluster, Client(cluster) as client:
        a = client.submit(numbers, 50_000, 1, keep=True)
        b = client.submit(numbers, 50_000, 2, keep=True)
        c = client.submit(pairwise_sums, a, b, keep=True)
        d = client.submit(total, c)
        expected = sum(range(1, 50_001)) + sum(range(2, 50_002))
        assert d.result(timeout=60) == expected
        assert c.result(timeout=60)[:3] == [3, 5, 7]  # fetched on demand, each time asked
        parts = client.map(numbers, [1_000] * 4, keep=True)
        assert client.gather(client.map(total, parts), timeout=60) == [499_500] * 4
        e = client.submit(nested_lengths, [a, 3], keyed={"x": b})
        assert e.result(timeout=60) == [50_000, 3, 50_000]
        status = client.status()
        assert sum(x["kept_bytes"] for x in status["executors"]) > 0


@pytest.mark.slow
def test_a_future_that_is_not_kept_or_an_input_that_fails_is_refused_or_fails_by_name():
    with LocalCluster(executors=1) as cluster, Client(cluster) as client:
        plain = client.submit(numbers, 10)
        with pytest.raises(TypeError, match="was not submitted with keep=True"):
            client.submit(total, plain)
        bad = client.submit(numbers, "ten", keep=True)  # raises TypeError on the executor
        after = client.submit(total, bad)
        with pytest.raises(TaskError, match=f"its input {bad.task_id} failed"):
            after.result(timeout=60)
        with pytest.raises(TypeError):
            bad.result(timeout=60)


@pytest.mark.slow
def test_a_kept_result_lost_with_its_executor_is_computed_again_from_its_lineage():
    with LocalCluster(executors=2, heartbeat_ms=100) as cluster, Client(cluster) as client:
        first = client.map(numbers, [20_000] * 4, keep=True)
        second = [client.submit(pairwise_sums, f, f, keep=True) for f in first]
        client.gather(second, timeout=60)
        lost = cluster.processes[1]  # an executor (0 is the scheduler)
        lost.kill()
        lost.wait()
        third = client.map(total, second)
        assert client.gather(third, timeout=120) == [2 * sum(range(20_000))] * 4
        # Every kept result can still be had, some of them computed again elsewhere.
        assert [len(f.result(timeout=120)) for f in first + second] == [20_000] * 8
        assert any(f.recomputations for f in first + second)


def test_a_kept_future_waits_for_a_recomputation_then_fails_clearly_without_one():
    from tidal.runtime.kept_futures import KeptFuture

    asked = []
    future = KeptFuture("t/0", "t", 0, missing=asked.append)
    gone = payloads.pack_reference(_nowhere())
    future._complete("finished", gone, None, {})
    with pytest.raises(DataUnavailable, match="was not computed again in time"):
        future.result(timeout=0.05)
    assert asked == ["t/0"]
    future._recomputed("failed", None, ["ValueError", "it broke", ""])
    with pytest.raises(ValueError, match="it broke"):
        future.result(timeout=1)


def _nowhere():
    from tidal.runtime.datastore import Reference

    return Reference("no-such-host", "/dev/shm/tidal-spool/x/k", 10, "", "k")


@pytest.mark.slow
def test_a_stream_task_preempts_a_task_reading_a_kept_input(monkeypatch):
    def one_running(status):
        return status["executors"][0]["running"] is not None

    # By the scheduler's path, whose suspend parks the task wherever it is: a lane's stream
    # task that comes before the task has started runs first in the free slot, and parks
    # nothing (seen once in CI), which this test could not tell from a task that cannot be
    # suspended while it reads a kept input.
    monkeypatch.setenv("TIDAL_LANES", "0")
    with LocalCluster(executors=1) as cluster, Client(cluster) as client:
        made = client.submit(numbers, 40_000, keep=True)
        slow = client.submit(spin, made, record_us=20.0)  # ~0.8 s over its input
        client.wait_for_status(
            lambda s: one_running(s) and s["executors"][0]["running"] == slow.task_id
        )
        assert client.submit(total, [1, 2], priority="stream").result(timeout=30) == 3
        assert slow.result(timeout=60) == sum(range(40_000))
        assert slow.statistics().suspensions >= 1


def test_a_kept_result_still_out_of_reach_after_recomputing_is_given_up_on():
    from tidal.runtime.kept_futures import MAX_RECOMPUTE_ASKS, KeptFuture

    gone = payloads.pack_reference(_nowhere())
    asked = []

    def missing(task_id):  # the scheduler computes it again: to a place as far out of reach
        asked.append(task_id)
        future._recomputed("finished", gone, None)

    future = KeptFuture("t/0", "t", 0, missing=missing)
    future._complete("finished", gone, None, {})
    with pytest.raises(DataUnavailable, match=f"even computed again {MAX_RECOMPUTE_ASKS} times"):
        future.result(timeout=5)
    assert len(asked) == MAX_RECOMPUTE_ASKS and future.recomputations == MAX_RECOMPUTE_ASKS

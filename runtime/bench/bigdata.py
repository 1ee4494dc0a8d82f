"""`tidal bench bigdata`: batch tasks that carry real data, with a stream beside them.

On a 2-executor LocalCluster, a stream of small stream tasks (one every 20 ms) runs first
alone, then while 8 batch tasks run over partitions of 3 million ints each (4 in `--quick`),
consumed by C code (`sum`, `max`, a `Counter` of the values mod 10), each a job of its own.
Then one 200 MB argument (50 MB in `--quick`) is submitted, run and its result checked,
and the same bytes come back as a 200 MB result. Last, a chained case (kept results, issue
20) on 2-executor clusters of its own, under lb and under lma.

- stream_ms: a stream task's submit -> result in the client's hand;
- results_exact: every batch result equals the one computed here;
- suspended_tasks: batch tasks suspended at least once (of batch_tasks);
- scheduler_bytes_forwarded: the bytes the scheduler received from the batch job's submit
  to its last result (its `bytes_in`), against payload_bytes, the partitions packed;
- big_argument_s: the 200 MB argument, submit -> checked result (None if it failed);
- big_result_s: the same bytes sent and returned reversed (a 200 MB result), submit ->
  checked result; big_result_bytes_forwarded: what the scheduler received meanwhile.

The chained case: stage 1 makes 8 partitions of 3 million ints (4 of at most a million in
`--quick`) on the executors and keeps them (`submit(numbers, ..., keep=True)`, one job
each, each partition its own ints); stage 2 sums them (`client.map(total, stage1)`, one job
over the kept futures). `total` is C code, so that what stage 2 costs beyond its sums is
moving the data. Stage 2 is timed from the end of stage 1's last task on its executor (its
`finished_at_ns`: CLOCK_MONOTONIC, which processes on one host share) to stage 2's results
in the client's hand; the client submits it once stage 1's futures are all done.

- chained_results_exact: every stage-2 sum, of every run, equals the one computed here;
- stage2_bytes_via_client: task data the client sent and received during stage 2
  (`client.traffic`), the lb and lma runs together;
- stage2_bytes_via_scheduler: task data that passed through the scheduler meanwhile (its
  counters' `data_bytes`), the two runs together. Both count payloads of 1 KiB or more
  only: a call holding only futures, and a sum, are envelopes and are not counted;
- stage2_local_fraction_lb, stage2_local_fraction_lma: of stage 2's launches under that
  policy, the fraction on the executor holding its input (counters' `placements`; the
  counts are in stage2_placements);
- stage2_s: the lb run's stage 2 (stage2_s_lma: the lma run's);
- stage2_s_shipped: the same two stages done without keeping, on the lb cluster: stage 1's
  results come to the client (gather), then stage 2 is submitted with them as arguments
  (the client spools them, the executors read them); timed the same way, so it includes
  bringing stage 1's results to the client (stage2_fetch_s_shipped: that part alone).
  stage2_shipped_bytes_via_client and stage2_shipped_bytes_via_scheduler count from stage
  1's submit (its calls are envelopes), so that the results it ships are counted;
- stage2_vs_shipped: stage2_s / stage2_s_shipped.

Discussion: the batch job is submitted with a suspension cap above the stream's length, so
that what is measured is preemption (as in `bench preempt`). The batch jobs come from a
client of their own in another process (a batch pipeline beside a stream service), and the
stream runs from their first submit to their last result: submitting 8 partitions takes
~1.2 s (the client packs and spools them), longer than the first batch tasks run. In one
process, the two clients would share a GIL: packing a partition delays the stream's own
client code by up to a switch interval (5 ms) per thread hand-over, and a full collection
of the client's partitions stalls it ~0.1 s (docs/notes.md).
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import time
from collections import Counter
from typing import Any

from tidal.runtime import payloads
from tidal.runtime.bench import stream_every
from tidal.runtime.client import Client
from tidal.runtime.cluster import LocalCluster
from tidal.runtime.stats import percentile
from tidal.workloads.synthetic import biggest, digest, mirrored, numbers, residues, total

TARGETS = {
    "stream_p99_vs_alone": ("<=", 2.0),
    "suspended_vs_batch": (">=", 1.0),
    "forwarded_vs_payload": ("<=", 0.01),
    "stage2_bytes_via_client": ("<=", 0),
    "stage2_bytes_via_scheduler": ("<=", 0),
    "stage2_local_fraction_lb": (">=", 0.9),
    "stage2_local_fraction_lma": (">=", 0.9),
    "stage2_vs_shipped": ("<=", 0.5),
}

STREAM_EVERY_S = 0.020
RECORDS = 3_000_000
CONSUMERS = (total, biggest, residues)
CHAINED_POLICIES = ("lb", "lma")  # the first also runs the shipped variant
QUICK_CHAINED_RECORDS = 1_000_000


def _expected(fn: Any, part: list[int]) -> Any:
    if fn is total:
        return sum(part)
    if fn is biggest:
        return max(part)
    return dict(Counter(x % 10 for x in part))


def _timed(submit: Any, expected: Any) -> tuple[float | None, str | None]:
    """Seconds from submit to a checked result, and None; or None and what went wrong
    (reported, never raised: the other figures still count)."""
    start = time.perf_counter()
    try:
        ok = submit().result(timeout=300) == expected
    except Exception as exc:
        return None, f"{type(exc).__name__}: {exc}"
    return (time.perf_counter() - start, None) if ok else (None, "wrong result")


def _batch(address: str, tasks: int, records: int, conn: Any) -> None:
    """The batch pipeline, in a process of its own: build the partitions, say so, wait for
    the word, submit one job per partition, and send back what came of them."""
    partitions = [list(range(i, i + records)) for i in range(0, tasks * records, records)]
    fns = [CONSUMERS[i % len(CONSUMERS)] for i in range(tasks)]
    expected = [_expected(fn, part) for fn, part in zip(fns, partitions, strict=True)]
    payload_bytes = sum(len(payloads.pack_call([part], {})) for part in partitions)
    with Client(address) as client:
        client.ping()
        conn.send(payload_bytes)
        conn.recv()
        futures = []
        for fn, part in zip(fns, partitions, strict=True):  # one job per consumer
            futures += client.map(fn, [part], priority="batch", max_suspensions=10_000)
        results = client.gather(futures, timeout=600)
        suspended = sum(future.statistics().suspensions > 0 for future in futures)
    conn.send((results == expected, suspended))


def _data_moved(client: Client) -> tuple[int, int, dict[str, int]]:
    """Task data the client has sent and received, the scheduler's `data_bytes`, and its
    placements, so far."""
    traffic = client.traffic.as_dict()
    counters = client.status()["counters"]
    moved = traffic["sent_bytes"] + traffic["received_bytes"]
    return moved, counters["data_bytes"], counters["placements"]


def _since(client: Client, before: tuple[int, int, dict[str, int]]) -> dict[str, Any]:
    """What `_data_moved` counts, since `before`."""
    now = _data_moved(client)
    local, remote = (now[2][where] - before[2][where] for where in ("local", "remote"))
    return {
        "via_client": now[0] - before[0],
        "via_scheduler": now[1] - before[1],
        "placements": {"local": local, "remote": remote},
        "local_fraction": local / (local + remote) if local + remote else None,
    }


def _last_end_ns(futures: list[Any]) -> int:
    """When the last of `futures`' tasks ended, on its executor's monotonic clock."""
    return max(future.statistics().finished_at_ns for future in futures)


def _chained(policy: str, partitions: int, records: int, shipped: bool) -> dict[str, Any]:
    """The chained case under `policy`, kept; with `shipped`, also without keeping."""
    starts = range(0, partitions * records, records)
    expected = [sum(range(start, start + records)) for start in starts]
    figures: dict[str, Any] = {}
    with LocalCluster(executors=2, policy=policy) as cluster, Client(cluster) as client:
        for _ in range(10):
            client.ping()
        stage1 = [client.submit(numbers, records, start, keep=True) for start in starts]
        _, undone = concurrent.futures.wait(stage1, timeout=300)
        if undone:
            raise RuntimeError(f"stage 1 ({policy}) did not finish within 300 s")
        before = _data_moved(client)  # before the clock: its status request is not stage 2
        stage2 = client.gather(client.map(total, stage1), timeout=300)
        # Discussion: timed from stage 1's last end on its executor, not from the wait's
        # return, because a future that is not kept completes only once its result is in the
        # client's hand: the shipped variant has no "stage 1 done" before its fetch. So both
        # variants count the last stage-1 result's packing and its word to the client
        # (0.1-0.2 s here, loaded), and the shipped one also its fetch.
        figures["stage2_s"] = (time.monotonic_ns() - _last_end_ns(stage1)) / 1e9
        figures.update(_since(client, before), exact=stage2 == expected)
        if shipped:
            del stage1  # its kept partitions go
            before = _data_moved(client)
            stage1 = [client.submit(numbers, records, start) for start in starts]
            values = client.gather(stage1, timeout=300)
            fetched_ns = time.monotonic_ns()
            stage2 = client.gather(client.map(total, values), timeout=300)
            ended_ns = _last_end_ns(stage1)
            figures["shipped_s"] = (time.monotonic_ns() - ended_ns) / 1e9
            figures["shipped_fetch_s"] = (fetched_ns - ended_ns) / 1e9
            shipped_moved = _since(client, before)
            figures["shipped_via_client"] = shipped_moved["via_client"]
            figures["shipped_via_scheduler"] = shipped_moved["via_scheduler"]
            figures["exact"] = figures["exact"] and stage2 == expected
    return figures


def _chained_figures(partitions: int, records: int) -> dict[str, Any]:
    """The chained case's figures (see the module docstring)."""
    runs = {
        policy: _chained(policy, partitions, records, shipped=policy == CHAINED_POLICIES[0])
        for policy in CHAINED_POLICIES
    }
    shipped = runs[CHAINED_POLICIES[0]]
    figures: dict[str, Any] = {
        "chained_partitions": partitions,
        "chained_records": records,
        "chained_results_exact": all(run["exact"] for run in runs.values()),
        "stage2_bytes_via_client": sum(run["via_client"] for run in runs.values()),
        "stage2_bytes_via_scheduler": sum(run["via_scheduler"] for run in runs.values()),
    }
    for policy, run in runs.items():
        figures[f"stage2_local_fraction_{policy}"] = run["local_fraction"]
    figures["stage2_placements"] = {policy: run["placements"] for policy, run in runs.items()}
    figures["stage2_s"] = shipped["stage2_s"]
    for policy in CHAINED_POLICIES[1:]:
        figures[f"stage2_s_{policy}"] = runs[policy]["stage2_s"]
    figures.update(
        stage2_s_shipped=shipped["shipped_s"],
        stage2_fetch_s_shipped=shipped["shipped_fetch_s"],
        stage2_shipped_bytes_via_client=shipped["shipped_via_client"],
        stage2_shipped_bytes_via_scheduler=shipped["shipped_via_scheduler"],
        stage2_vs_shipped=shipped["stage2_s"] / shipped["shipped_s"],
    )
    return figures


def run(
    quick: bool = False,
    *,
    records: int = RECORDS,
    big_mib: int | None = None,
    alone: int | None = None,
) -> dict[str, Any]:
    tasks = 4 if quick else 8
    big_mib = big_mib or (50 if quick else 200)
    spawn = multiprocessing.get_context("spawn")
    with LocalCluster(executors=2) as cluster, Client(cluster) as client:
        for _ in range(10):
            client.ping()
        stream_every(client, STREAM_EVERY_S, count=10)  # warm up
        alone_ms = stream_every(client, STREAM_EVERY_S, count=alone or (100 if quick else 250))

        ours, theirs = spawn.Pipe()
        pipeline = spawn.Process(target=_batch, args=(cluster.address, tasks, records, theirs))
        pipeline.start()
        theirs.close()  # ours only: if the pipeline dies, `ours` reads EOF and the stream ends
        try:
            if not ours.poll(300):
                raise RuntimeError("the batch pipeline did not start within 300 s")
            payload_bytes = ours.recv()
            bytes_before = client.status()["bad_input"]["bytes_in"]
            ours.send("go")
            # From the first batch submit to the last result (or a pipeline that neither
            # ends nor dies, after 900 s).
            deadline = time.monotonic() + 900
            loaded = stream_every(
                client, STREAM_EVERY_S, until=lambda: ours.poll() or time.monotonic() > deadline
            )
            if not ours.poll(60):
                raise RuntimeError("the batch pipeline did not finish within 900 s")
            results_exact, suspended = ours.recv()  # EOFError if it died
        finally:
            pipeline.join(timeout=60)
            if pipeline.is_alive():
                pipeline.kill()
                pipeline.join()
        forwarded = client.status()["bad_input"]["bytes_in"] - bytes_before

        big = os.urandom(big_mib * 1024 * 1024)
        big_argument_s, big_error = _timed(lambda: client.submit(digest, big), digest(big))
        bytes_before = client.status()["bad_input"]["bytes_in"]
        big_result_s, big_result_error = _timed(lambda: client.submit(mirrored, big), big[::-1])
        result_forwarded = client.status()["bad_input"]["bytes_in"] - bytes_before
    result = {
        "stream_ms_p50": percentile(loaded, 50),
        "stream_ms_p99": percentile(loaded, 99),
        "alone_ms_p50": percentile(alone_ms, 50),
        "alone_ms_p99": percentile(alone_ms, 99),
        "streams_loaded": len(loaded),
        "results_exact": results_exact,
        "batch_tasks": tasks,
        "suspended_tasks": suspended,
        "payload_bytes": payload_bytes,
        "scheduler_bytes_forwarded": forwarded,
        "big_argument_mib": big_mib,
        "big_argument_s": big_argument_s,
        "big_argument_error": big_error,
        "big_result_s": big_result_s,
        "big_result_error": big_result_error,
        "big_result_bytes_forwarded": result_forwarded,
    }
    result["stream_p99_vs_alone"] = result["stream_ms_p99"] / result["alone_ms_p99"]
    result["suspended_vs_batch"] = suspended / tasks
    result["forwarded_vs_payload"] = forwarded / payload_bytes
    chained_records = min(records, QUICK_CHAINED_RECORDS) if quick else records
    result.update(_chained_figures(tasks, chained_records))
    return result

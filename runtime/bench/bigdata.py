"""`tidal bench bigdata`: batch tasks that carry real data, with a stream beside them.

On a 2-executor LocalCluster, a stream of small stream tasks (one every 20 ms) runs first
alone, then while 8 batch tasks run over partitions of 3 million ints each (4 in `--quick`),
consumed by C code (`sum`, `max`, a `Counter` of the values mod 10), each a job of its own.
Then one 200 MB argument (50 MB in `--quick`) is submitted, run and its result checked,
and the same bytes come back as a 200 MB result.

- stream_ms: a stream task's submit -> result in the client's hand;
- results_exact: every batch result equals the one computed here;
- suspended_tasks: batch tasks suspended at least once (of batch_tasks);
- scheduler_bytes_forwarded: the bytes the scheduler received from the batch job's submit
  to its last result (its `bytes_in`), against payload_bytes, the partitions packed;
- big_argument_s: the 200 MB argument, submit -> checked result (None if it failed);
- big_result_s: the same bytes sent and returned reversed (a 200 MB result), submit ->
  checked result; big_result_bytes_forwarded: what the scheduler received meanwhile.

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
from tidal.workloads.synthetic import biggest, digest, mirrored, residues, total

TARGETS = {
    "stream_p99_vs_alone": ("<=", 2.0),
    "suspended_vs_batch": (">=", 1.0),
    "forwarded_vs_payload": ("<=", 0.01),
}

STREAM_EVERY_S = 0.020
RECORDS = 3_000_000
CONSUMERS = (total, biggest, residues)


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
    return result

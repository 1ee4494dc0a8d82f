"""`tidal bench suspend`: what a suspension and a resumption cost, in-process and over ZeroMQ.

Three measurements in one run:

1. In-process: a task sums a gated input; the input posts a suspend command every few
   records, the hub parks the task and resumes it at once. Suspension latency runs from the
   command being queued to the hub regaining control; resumption from the hub switching in
   to the task running again.
2. Hot path: the same trivial loop over a list, bare and through the gated iterator.
3. Busy executor: a real executor process whose task burns ~10 us of Python per record; a
   suspend command is sent over the socket and timed until that executor's hub regains
   control (both sides read CLOCK_MONOTONIC, so the stamps compare across processes).
"""

from __future__ import annotations

import random
import time
from typing import Any

from runtime import protocol as p
from runtime.bench import percentile
from runtime.gate import IMPLEMENTATION, Gate, GatedIterator
from runtime.kernel import Kernel
from runtime.realtime import realtime_permitted
from runtime.stub import StubScheduler, spawn_executor, stop_process

TARGETS = {
    "suspend_us_p50": ("<=", 2.0),
    "resume_us_p50": ("<=", 2.0),
    "yield_overhead_ns": ("<=", 15.0),
    "busy_suspend_ms_p99": ("<=", 1.0),
}


def in_process(cycles: int = 5000, every: int = 7) -> dict[str, float]:
    """Suspend and resume one task `cycles` times; return latency percentiles in us."""
    events: list[p.Message] = []
    finished = False

    def report(msg: p.Message) -> None:
        nonlocal finished
        events.append(msg)
        finished = finished or isinstance(msg, p.Finished)

    kernel = Kernel(report)

    def source():
        for i in range(cycles * every):
            if i % every == every - 1:
                kernel.suspend("bench")
            yield i

    kernel.launch("bench", sum, [source()])
    kernel.run()
    while not finished:
        kernel.resume("bench")
        kernel.run()
    suspends = [e.latency_ns / 1000 for e in events if isinstance(e, p.Suspended)]
    resumes = [e.latency_ns / 1000 for e in events if isinstance(e, p.Resumed)]
    return {
        "suspend_us_p50": percentile(suspends, 50),
        "suspend_us_p99": percentile(suspends, 99),
        "resume_us_p50": percentile(resumes, 50),
        "resume_us_p99": percentile(resumes, 99),
        "in_process_cycles": len(suspends),
    }


def hot_path(records: int = 1_000_000, repeats: int = 7) -> dict[str, float]:
    """ns per record of a trivial loop, bare and through the gate (best of `repeats`)."""
    data = list(range(records))
    gate = Gate()

    def bare() -> int:
        total = 0
        for x in data:
            total += x
        return total

    def gated() -> int:
        total = 0
        for x in GatedIterator(data, gate):
            total += x
        return total

    best = {"bare": float("inf"), "gated": float("inf")}
    for _ in range(repeats):  # interleaved, so drift in machine speed hits both alike
        for name, loop in (("bare", bare), ("gated", gated)):
            start = time.perf_counter_ns()
            loop()
            best[name] = min(best[name], (time.perf_counter_ns() - start) / records)
    return {
        "bare_ns_per_record": best["bare"],
        "yield_ns_per_record": best["gated"],
        "gate_implementation": IMPLEMENTATION,
    }


def busy_executor(cycles: int = 500, record_us: float = 10.0, seed: int = 1) -> dict[str, Any]:
    """Suspend a real executor's busy task over ZeroMQ `cycles` times; latencies in ms."""
    rng = random.Random(seed)
    latencies, resumes = [], []
    with StubScheduler() as stub:
        proc = spawn_executor(stub.address, node="bench")
        try:
            executor = stub.wait_for_executor()
            # Far more work than the run needs (~20 ms of records per cycle at 10 us a record,
            # against a few ms of running per cycle), small enough not to burden memory.
            records = list(range(max(100_000, cycles * 2_000)))
            stub.send(
                executor,
                p.Launch(
                    "busy",
                    "workloads.synthetic:spin",
                    None,
                    p.pack_call([records], {"record_us": record_us}),
                    0,
                    "batch",
                    time.monotonic_ns(),
                ),
            )
            stub.expect(p.Started, task_id="busy")
            for _ in range(cycles):
                # Let it run a random while, so the command lands at a random point in a record.
                time.sleep(rng.uniform(0.001, 0.004))
                sent = time.monotonic_ns()
                stub.send(executor, p.Suspend("busy", sent))
                suspended = stub.expect(p.Suspended, task_id="busy")
                latencies.append((suspended.at_ns - sent) / 1e6)
                sent = time.monotonic_ns()
                stub.send(executor, p.Resume("busy", sent))
                resumed = stub.expect(p.Resumed, task_id="busy")
                resumes.append((resumed.at_ns - sent) / 1e6)
            stub.send(executor, p.Kill("busy", time.monotonic_ns()))
            stub.expect(p.Killed, task_id="busy")
            stub.send(executor, p.Shutdown("benchmark done"))
            proc.wait(10)
        finally:
            stop_process(proc)
    return {
        "busy_suspend_ms_p50": percentile(latencies, 50),
        "busy_suspend_ms_p99": percentile(latencies, 99),
        "busy_suspend_ms_max": max(latencies),
        "busy_resume_ms_p50": percentile(resumes, 50),
        "busy_cycles": len(latencies),
        "busy_record_us": record_us,
        "realtime_io": realtime_permitted(),
    }


def run(quick: bool = False) -> dict[str, Any]:
    """All three measurements, as one flat dict."""
    results: dict[str, Any] = {}
    results.update(in_process(cycles=1000 if quick else 5000))
    results.update(hot_path(records=300_000 if quick else 1_000_000))
    results.update(busy_executor(cycles=100 if quick else 500))
    results["yield_overhead_ns"] = results["yield_ns_per_record"] - results["bare_ns_per_record"]
    return results

"""`tidal demo` (first cut): a stream task takes a busy executor's slot, the batch task resumes.

Until the scheduler exists this drives one real executor process with the stub scheduler
playing the scheduler's part: a long batch task starts; every so often a stream task
arrives, the batch task is suspended at a record boundary, the stream task runs at once on
the freed slot, and the batch task resumes where it stopped. At the end the batch result is
checked against a direct computation: no record skipped or repeated.
"""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.table import Table

from runtime import protocol as p
from runtime.bench import percentile
from runtime.stub import StubScheduler, spawn_executor, stop_process


def run(
    streams: int = 5,
    batch_records: int = 200_000,
    record_us: float = 5.0,
    console: Console | None = None,
) -> dict[str, Any]:
    console = console or Console()
    records = list(range(batch_records))
    rows, suspend_ms, start_ms = [], [], []
    with StubScheduler() as stub:
        proc = spawn_executor(stub.address, node="demo")
        try:
            executor = stub.wait_for_executor()
            console.print(
                f"executor [bold]{executor}[/] joined the stub scheduler at {stub.address}"
            )
            t0 = time.monotonic()
            stub.send(
                executor,
                p.Launch(
                    "batch",
                    "workloads.synthetic:spin",
                    None,
                    [records],
                    {"record_us": record_us},
                    0,
                    "batch",
                    time.monotonic_ns(),
                ),
            )
            stub.expect(p.Started, task_id="batch")
            for i in range(streams):
                time.sleep(0.15)
                sent = time.monotonic_ns()
                stub.send(executor, p.Suspend("batch", sent))
                stub.send(
                    executor,
                    p.Launch(
                        f"stream-{i}",
                        "workloads.synthetic:spin",
                        None,
                        [list(range(100))],
                        {"record_us": 20.0},
                        0,
                        "stream",
                        sent,
                    ),
                )
                suspended = stub.expect(p.Suspended, task_id="batch")
                started = stub.expect(p.Started, task_id=f"stream-{i}")
                finished = stub.expect(p.Finished, task_id=f"stream-{i}")
                done = time.monotonic_ns()
                stub.send(executor, p.Resume("batch", time.monotonic_ns()))
                suspend_ms.append((suspended.at_ns - sent) / 1e6)
                start_ms.append((started.at_ns - sent) / 1e6)
                rows.append(
                    (
                        f"stream-{i}",
                        suspended.records,
                        suspend_ms[-1],
                        start_ms[-1],
                        (done - sent) / 1e6,
                        finished.result,
                    )
                )
            batch = stub.expect(p.Finished, task_id="batch", timeout=120)
            elapsed = time.monotonic() - t0
            stub.send(executor, p.Shutdown("demo done"))
            proc.wait(10)
        finally:
            stop_process(proc)

    table = Table(title="stream tasks taking the batch task's slot")
    for column in (
        "stream task",
        "batch records done",
        "suspend ms",
        "stream start ms",
        "stream result ms",
        "result",
    ):
        table.add_column(column, justify="right")
    for name, done_records, sus, start, total, result in rows:
        table.add_row(
            name, f"{done_records:,}", f"{sus:.3f}", f"{start:.3f}", f"{total:.2f}", str(result)
        )
    console.print(table)
    expected = sum(records)
    ok = batch.result == expected
    console.print(
        f"batch task: {batch.stats['suspensions']} suspensions, "
        f"{batch.stats['records']:,} records, result {batch.result} "
        f"({'equals' if ok else 'DIFFERS FROM'} the uninterrupted sum {expected}), "
        f"{elapsed:.2f} s"
    )
    return {
        "batch_correct": ok,
        "suspensions": batch.stats["suspensions"],
        "suspend_ms_p50": percentile(suspend_ms, 50),
        "stream_start_ms_p50": percentile(start_ms, 50),
    }

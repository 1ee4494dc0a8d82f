"""100,000 hostile frames at a real executor, from the scheduler it trusts, between real tasks.

A real executor process and a StubScheduler (tests/stub.py) posing as its scheduler. The
stub sends blocks of hostile frames (the FrameFuzzer over commands, with tasks of the fuzz's
own, and over messages an executor never gets) and, between blocks, launches real tasks and
a probe (a kill for a task that does not exist, which the executor must refuse). An
executor cannot disconnect its only scheduler: it must drop each bad frame, log at a
bounded rate, and carry on. Afterwards: the executor is alive and still heartbeating,
every probe was answered, every real task finished with the right result, and its log
stayed short.

A valid `shutdown`, `reject` or `rejoin` is an order an executor rightly obeys (to stop, or
to connect again), so the fuzz never sends one (any frame that decodes to one, alone or in a
batch, is skipped and counted).

TIDAL_FUZZ_FRAMES sets the number of frames (default 100,000), TIDAL_FUZZ_SEED the seed.
"""

from __future__ import annotations

import json
import os
import random
import time

import psutil
import pytest

from tests.fuzz.frames import FrameFuzzer, decodes_to
from tests.stub import StubScheduler
from tidal.runtime import payloads
from tidal.runtime import protocol as p
from tidal.runtime.processes import spawn_executor, stop_process

pytestmark = pytest.mark.slow

FRAMES = int(os.environ.get("TIDAL_FUZZ_FRAMES", "100000"))
SEED = int(os.environ.get("TIDAL_FUZZ_SEED", "1"))
BLOCK = 500  # frames between probes: below the ROUTER's send high-water mark (1,000)
ORDERS = (p.Shutdown, p.Reject, p.Rejoin)
PAYLOAD = payloads.pack_call([[1, 2, 3]], {})


def templates(now: int) -> list[p.Message]:
    """Commands about the fuzz's own tasks (ids "fz..."), and messages never sent to an
    executor."""
    chunk = [[f"fz-c/{i}", PAYLOAD] for i in range(3)]
    return [
        p.Launch("fz-1", "tidal.workloads.synthetic:total", None, PAYLOAD, 0, "batch", now),
        p.Launch("fz-2", "tidal.workloads.synthetic:noop", None, PAYLOAD, 1, "stream", now),
        p.LaunchChunk("fz-c", "tidal.workloads.synthetic:total", None, chunk, 0, "batch", now),
        p.Suspend("fz-1", now),
        p.Resume("fz-1", now),
        p.Kill("fz-2", now),
        p.Steal("fz-c", 1, now),
        p.Welcome(p.PROTOCOL_VERSION, "impostor", 100, ""),
        p.Hello(p.PROTOCOL_VERSION, "fz-e", "n", 1, 1, "h"),
        p.Finished("fz-1", 0, payloads.pack_payload(6), {}),
        p.Submit("fz-j", "batch", 0, None, "tidal.workloads.synthetic:total", None, [], now),
        p.Results([["fz-1", "finished", payloads.pack_payload(6), None, {}]]),
    ]


NONSENSE = [cls for cls in p.MESSAGES.values() if cls not in (*ORDERS, p.Batch)]


def test_hostile_frames_from_its_scheduler_never_stop_an_executor(capfd):
    rng = random.Random(SEED)
    fuzzer = FrameFuzzer(
        rng, templates(time.monotonic_ns()), nonsense=NONSENSE, ids=["fz-1", "fz-2", "fz-c"]
    )
    with StubScheduler() as stub:
        proc = spawn_executor(stub.address, node="fuzzed")
        try:
            executor_id = stub.wait_for_executor()
            executor = psutil.Process(proc.pid)
            rss_before, cpu_before = executor.memory_info().rss, sum(executor.cpu_times()[:2])
            expected: dict[str, int] = {}
            results: dict[str, int] = {}
            reports, heartbeats_before = 0, len(stub.heartbeats)
            sent = skipped = 0
            started = time.monotonic()
            block = 0
            while sent < FRAMES:
                block += 1
                for _ in range(min(BLOCK, FRAMES - sent)):
                    frame = fuzzer.frame()
                    if decodes_to(frame, ORDERS):
                        skipped += 1
                        continue
                    stub.send_frame(executor_id, frame)
                    sent += 1
                data = [rng.randrange(100) for _ in range(rng.randrange(1, 200))]
                task_id = f"real-{block}"
                expected[task_id] = sum(data)
                stub.send(
                    executor_id,
                    p.Launch(
                        task_id,
                        "tidal.workloads.synthetic:total",
                        None,
                        payloads.pack_call([data], {}),
                        0,
                        "batch",
                        time.monotonic_ns(),
                    ),
                )
                probe = f"probe-{block}"
                stub.send(executor_id, p.Kill(probe, time.monotonic_ns()))
                deadline = time.monotonic() + 60
                while True:  # everything up to the probe's answer, real results kept
                    _, msg = stub.recv(timeout=max(0.0, deadline - time.monotonic()))
                    reports += 1
                    if isinstance(msg, p.Finished) and msg.task_id.startswith("real-"):
                        results[msg.task_id] = payloads.unpack_payload(msg.result)
                    if isinstance(msg, p.Refused) and msg.task_id == probe:
                        break
            elapsed = time.monotonic() - started
            cpu = sum(executor.cpu_times()[:2]) - cpu_before
            # The real tasks finish (each was launched before its block's probe, but a fuzz
            # task may have held the slot, so the last ones can come after it).
            deadline = time.monotonic() + 60
            while len(results) < len(expected):
                _, msg = stub.recv(timeout=max(0.0, deadline - time.monotonic()))
                if isinstance(msg, p.Finished) and msg.task_id.startswith("real-"):
                    results[msg.task_id] = payloads.unpack_payload(msg.result)
            assert results == expected
            assert proc.poll() is None
            heartbeats = len(stub.heartbeats) - heartbeats_before
            assert heartbeats >= 1
            rss_after = executor.memory_info().rss
        finally:
            stop_process(proc)

    lines = [line for line in capfd.readouterr().err.splitlines() if " tidal.executor " in line]
    periods = elapsed / 5 + 2
    assert len(lines) <= 11 * periods + 20, lines[-20:]
    assert not [line for line in lines if "raised" in line]
    print(
        "\nexecutor fuzz:",
        json.dumps(
            {
                "frames": sent,
                "skipped_orders": skipped,
                "seconds": round(elapsed, 2),
                "frames_per_s": round(sent / elapsed),
                "executor_cpu_s": round(cpu, 2),
                "reports": reports,
                "heartbeats": heartbeats,
                "real_tasks": len(results),
                "log_lines": len(lines),
                "strategies": fuzzer.counts,
                "rss_mb_before_after": [round(rss_before / 2**20, 1), round(rss_after / 2**20, 1)],
            }
        ),
    )

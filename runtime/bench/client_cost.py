"""The client's own cost per item of a big chunked map: submit, results in, gather.

Not one of `tidal bench`'s benchmarks (no cluster, no executors): a micro-benchmark of the
client's side alone, run as `python -m tidal.runtime.bench.client_cost [ITEMS] [--classic]`
(`--classic`: one future per task, as `chunksize=1` maps still are). A minimal
scheduler stand-in welcomes the client and drops what it sends; the results frames are
built beforehand, as a scheduler would send them, and each is decoded and handed to the
client's handler on this thread (what its IO thread does), so the figures are the client's
CPU time per item: `map` (packing and sending the job), results (decode and complete) and
`gather`.
"""

from __future__ import annotations

import gc
import sys
import threading
import time
from typing import Any

import zmq

from tidal.runtime import payloads
from tidal.runtime import protocol as p
from tidal.runtime.client import Client
from tidal.workloads.synthetic import noop

ITEMS = 200_000
BATCH = 100  # results per batch_results message (a chunk's batch)
RESULTS_PER_FRAME = 256  # results per classic results message (the scheduler's figure)


class _Welcomer:
    """A ROUTER that welcomes one client, answers its pings and drops the rest, undecoded."""

    def __init__(self) -> None:
        self._context = zmq.Context()
        self._router = self._context.socket(zmq.ROUTER)
        self._router.linger = 0
        self._router.bind("tcp://127.0.0.1:*")
        self.address = self._router.getsockopt_string(zmq.LAST_ENDPOINT)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            if not self._router.poll(50):
                continue
            routing_id, frame = self._router.recv_multipart()
            msg = p.decode(frame) if len(frame) < 1000 else None
            if isinstance(msg, p.ClientHello):
                answer = p.ClientWelcome(p.PROTOCOL_VERSION, "bench", "stream-first", 3)
                self._router.send_multipart([routing_id, p.encode(answer)])
            elif isinstance(msg, p.Ping):  # keepalive: else the client reconnects
                self._router.send_multipart([routing_id, p.encode(p.Pong(msg.request_id, 0))])

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._router.close()
        self._context.term()


def _result_frames(job_id: str, n: int, bulk: bool) -> list[bytes]:
    """What a scheduler would send for a map of `n` no-op tasks."""
    value = payloads.pack_payload(None)
    stats = {"executor_id": "e-1", "attempt": 1, "running_ns": 2_000, "queued_ns": 10_000}
    if bulk:
        return [
            p.encode(p.BatchResults(job_id, start, [value] * min(BATCH, n - start), [], stats))
            for start in range(0, n, BATCH)
        ]
    items = [[f"{job_id}/{i}", "finished", value, None, dict(stats)] for i in range(n)]
    return [
        p.encode(p.Results(items[start : start + RESULTS_PER_FRAME]))
        for start in range(0, n, RESULTS_PER_FRAME)
    ]


def measure(n: int = ITEMS, classic: bool = False) -> dict[str, Any]:
    """Microseconds per item of each phase, and in all."""
    welcomer = _Welcomer()
    try:
        with Client(welcomer.address, timeout=5) as client:
            handlers = {p.Results: client._on_results}
            if hasattr(p, "BatchResults") and hasattr(client, "_on_batch_results"):
                handlers[p.BatchResults] = client._on_batch_results
            items = list(range(n))
            gc.collect()
            start = time.perf_counter()
            futures = client.map(noop, items, chunksize=1 if classic else None)
            submitted = time.perf_counter()
            job_id = futures[0].job_id if type(futures) is list else futures.job_id
            frames = _result_frames(job_id, n, bulk=type(futures) is not list)
            filling = time.perf_counter()
            for frame in frames:
                msg = p.decode(frame)
                handlers[type(msg)](msg)
            filled = time.perf_counter()
            results = client.gather(futures, timeout=10)
            gathered = time.perf_counter()
            assert results == [None] * n
    finally:
        welcomer.close()
    per_item = 1e6 / n
    return {
        "items": n,
        "path": "bulk" if type(futures) is not list else "classic",
        "map_us": (submitted - start) * per_item,
        "results_us": (filled - filling) * per_item,
        "gather_us": (gathered - filled) * per_item,
        "total_us": (submitted - start + gathered - filling) * per_item,
    }


if __name__ == "__main__":
    numbers = [int(arg) for arg in sys.argv[1:] if arg.isdigit()]
    figures = measure(numbers[0] if numbers else ITEMS, classic="--classic" in sys.argv)
    print("  ".join(f"{k}={v:.2f}" if type(v) is float else f"{k}={v}" for k, v in figures.items()))

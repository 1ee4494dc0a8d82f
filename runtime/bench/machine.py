"""What machine a benchmark ran on, and a few reference figures to compare machines by.

Every `tidal bench` result carries `machine` (CPU model, cores, memory, Python, the
versions of the packages that decide the figures, whether real-time scheduling and
renicing were permitted: both need CAP_SYS_NICE) and `reference`: three
micro-measurements that scale most of Tidal's figures, so results from two machines can
be compared by their ratios:

- `loop_ns_per_element`: a bare Python `for` loop adding up a list (best of 5);
- `call_ns`: one call of a trivial Python function (best of 5);
- `thread_handoff_us_p50`: one thread waking another through a queue, one way (the
  ZeroMQ paths are made of these: BACKGROUND.md measures ~0.1-0.15 ms here loaded).
"""

from __future__ import annotations

import datetime
import os
import platform
import queue
import threading
import time
from importlib import metadata
from typing import Any

import psutil

from tidal.runtime.stats import percentile

__all__ = ["machine_info", "reference_figures"]

PACKAGES = ("tidal", "greenlet", "pyzmq", "msgpack", "psutil", "dask", "distributed", "ray")


def machine_info() -> dict[str, Any]:
    import zmq

    from tidal.runtime.realtime import realtime_permitted

    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    versions["libzmq"] = zmq.zmq_version()
    return {
        "cpu_model": _cpu_model(),
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "platform": platform.platform(),
        "packages": versions,
        "realtime_permitted": realtime_permitted(),
        "at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def reference_figures() -> dict[str, float]:
    data = list(range(200_000))

    def loop() -> int:
        total = 0
        for x in data:
            total += x
        return total

    def nothing() -> None:
        return None

    def empty() -> None:
        for _ in data:
            pass

    def calls() -> None:
        for _ in data:
            nothing()

    return {
        "loop_ns_per_element": _best_ns(loop, len(data)),
        "call_ns": _best_ns(calls, len(data)) - _best_ns(empty, len(data)),
        "thread_handoff_us_p50": _thread_handoff_us(),
    }


def _best_ns(fn: Any, count: int, repeats: int = 5) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter_ns()
        fn()
        best = min(best, (time.perf_counter_ns() - start) / count)
    return best


def _thread_handoff_us(rounds: int = 2000) -> float:
    ping: queue.SimpleQueue[int] = queue.SimpleQueue()
    pong: queue.SimpleQueue[int] = queue.SimpleQueue()

    def echo() -> None:
        while (n := ping.get()) >= 0:
            pong.put(n)

    thread = threading.Thread(target=echo, name="tidal-bench-echo", daemon=True)
    thread.start()
    one_way = []
    for i in range(rounds):
        start = time.perf_counter_ns()
        ping.put(i)
        pong.get()
        one_way.append((time.perf_counter_ns() - start) / 2000)
    ping.put(-1)
    thread.join()
    return percentile(one_way, 50)

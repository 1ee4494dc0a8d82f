"""`tidal bench hostile`: a real job while a hostile peer does its worst.

A LocalCluster (the scheduler and two executors, real processes, no keys) runs a real
client's mixed job: batch maps of `spin` tasks one after another, each result checked, and a
stream task every 20 ms, first with no one else about ("quiet"), then while a hostile
process, with raw ZeroMQ DEALER sockets, goes through its phases: random bytes, truncated
msgpack, wrong shapes, bad hellos, unknown ops, a frame over the stranger's limit, a batch of
100,000 junk items before hello, a batch of 100,000 well-formed pings from a client that said
hello, a flood of 100,000 pings over 300 connections, and hellos that name a live executor's id (an
impostor: the bench hands it the id, as a peer could learn it). The real client pings the
scheduler every 10 ms throughout.

- real_results_wrong / real_tasks_failed: the batch job's results, checked one by one;
- ping_ms_p99 / ping_ms_max: the real client's ping round trips during the hostile phases;
- stream_ms_p99_hostile / stream_ms_p99_quiet: submit -> result of the stream tasks, their
  ratio `stream_p99_hostile_vs_quiet` (`stream_ms_p99_by_phase`: per phase, each stream task
  counted in the phase under way when it was submitted; the worst against quiet is
  `stream_p99_worst_phase_vs_quiet`);
- scheduler_rss_growth_mib: the scheduler's RSS 10 s after the last phase (2 s quick),
  against before the first;
- impostor_evictions: times a real executor was lost or joined again (the event log);
- log_line_max_chars: the longest line the cluster's processes logged;
- hostile_frames: frames the hostile process sent.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import random
import tempfile
import threading
import time
from collections.abc import Iterator
from typing import Any

import msgpack
import psutil
import zmq

from tidal.runtime import protocol as p
from tidal.runtime.bench import stream_every
from tidal.runtime.client import Client
from tidal.runtime.cluster import LocalCluster
from tidal.runtime.stats import percentile
from tidal.workloads.synthetic import spin

TARGETS = {
    "real_results_wrong": ("<=", 0),
    "real_tasks_failed": ("<=", 0),
    "impostor_evictions": ("<=", 0),
    "ping_ms_max": ("<=", 100.0),
    "stream_p99_worst_phase_vs_quiet": ("<=", 3.0),  # the "over every phase"
    "scheduler_rss_growth_mib": ("<=", 20.0),
    "log_line_max_chars": ("<=", 500),
}

STREAM_EVERY_S = 0.020
PING_EVERY_S = 0.010


def _hostile(address: str, executor_id: str, scale: int, seed: int, conn: Any) -> None:
    """The hostile process: every phase in turn; sends back how many frames it sent."""
    rng = random.Random(seed)
    context = zmq.Context()
    sent = 0

    def dealer() -> zmq.Socket:
        socket = context.socket(zmq.DEALER)
        socket.linger = 0
        socket.sndhwm = 0  # queue whatever it takes: the point is to send it all
        socket.connect(address)
        return socket

    def send_all(socket: zmq.Socket, frames: Iterator[bytes]) -> None:
        nonlocal sent
        for frame in frames:
            socket.send(frame)
            sent += 1

    hello = p.encode(p.ClientHello(p.PROTOCOL_VERSION, "hostile", 1, "h"))
    ping = p.encode(p.Ping("hostile", 1))
    phases = [
        ("random bytes", lambda: (rng.randbytes(rng.randrange(1, 200)) for _ in range(scale))),
        ("truncated msgpack", lambda: (ping[: rng.randrange(1, len(ping))] for _ in range(scale))),
        (
            "wrong shapes",
            lambda: (
                msgpack.packb(rng.choice([["ping"], ["submit", 1], {"op": 1}, [1, 2, 3], "x"]))
                for _ in range(scale)
            ),
        ),
        (
            "bad hellos",
            lambda: (
                p.encode(p.ClientHello(rng.choice([0, 99]), "h" * rng.randrange(1, 300), 1, "h"))
                for _ in range(scale)
            ),
        ),
        ("unknown ops", lambda: (msgpack.packb([f"op{i}", 1]) for i in range(scale))),
        ("oversized frame", lambda: iter([b"\x00" * (p.MAX_STRANGER_FRAME_BYTES + 1)])),
        ("junk batch", lambda: iter([p.encode(p.Batch([b"\xc1junk"] * (10 * scale)))])),
    ]
    socket = dealer()
    for name, frames in phases:
        send_all(socket, frames())
        conn.send(("phase", name))
    # A client that said hello: a batch of well-formed pings, then a flood over many.
    client = dealer()
    send_all(client, iter([hello, p.encode(p.Batch([ping] * (10 * scale)))]))
    conn.send(("phase", "ping batch"))
    sockets = [dealer() for _ in range(300)]
    for i in range(10 * scale):
        sockets[i % len(sockets)].send(ping)
        sent += 1
    conn.send(("phase", "flood"))
    impostor = dealer()
    for _ in range(12):
        send_all(
            impostor, iter([p.encode(p.Hello(p.PROTOCOL_VERSION, executor_id, "n", 1, 1, "h"))])
        )
        time.sleep(0.35)  # as the impostor did, 350 ms apart
    conn.send(("phase", "impostor"))
    time.sleep(0.5)  # let the last frames go out before the sockets close
    for s in [socket, client, impostor, *sockets]:
        s.close()
    context.term()
    conn.send(("done", (sent, time.process_time())))


def _pinger(client: Client, stop: threading.Event, into: list[float]) -> None:
    while not stop.is_set():
        start = time.perf_counter()
        client.ping(timeout=30)
        into.append((time.perf_counter() - start) * 1000)
        stop.wait(PING_EVERY_S)


@contextlib.contextmanager
def _stderr_to(path: str) -> Iterator[None]:
    """Send this process's stderr (and so its children's) to `path` meanwhile."""
    saved = os.dup(2)
    with open(path, "wb") as f:
        os.dup2(f.fileno(), 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def run(quick: bool = False, *, scale: int | None = None, seed: int = 1) -> dict[str, Any]:
    scale = scale or (2_000 if quick else 10_000)
    settle_s = 2.0 if quick else 10.0
    spawn = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory() as scratch:
        log_path, events_path = os.path.join(scratch, "log"), os.path.join(scratch, "events")
        with (
            _stderr_to(log_path),
            LocalCluster(executors=2, event_log=events_path) as cluster,
            Client(cluster) as client,
        ):
            figures = _run(cluster, client, spawn, scale, seed, settle_s)
        with open(log_path, errors="replace") as f:
            lines = f.read().splitlines()
        with open(events_path) as f:
            events = [json.loads(line) for line in f]
    joined = [e["executor"] for e in events if e["event"] == "executor_joined"]
    lost = [e for e in events if e["event"] == "executor_lost"]
    figures["impostor_evictions"] = len(lost) + len(joined) - len(set(joined))
    figures["log_line_max_chars"] = max(map(len, lines), default=0)
    figures["log_lines"] = len(lines)
    figures["stream_p99_hostile_vs_quiet"] = (
        figures["stream_ms_p99_hostile"] / figures["stream_ms_p99_quiet"]
    )
    return figures


def _run(
    cluster: LocalCluster, client: Client, spawn: Any, scale: int, seed: int, settle_s: float
) -> dict[str, Any]:
    scheduler = psutil.Process(cluster.processes[0].pid)
    for _ in range(10):
        client.ping()
    stream_every(client, STREAM_EVERY_S, count=10)  # warm up
    executor_id = client.status()["executors"][0]["executor_id"]
    # The real batch work runs throughout, quiet phase and hostile phases alike: one map of
    # 100 small tasks after another, every result checked.
    checked: list[tuple[Any, int]] = []
    stop_batch = threading.Event()

    def batch() -> None:
        base = 0
        while not stop_batch.is_set():
            parts = [list(range(base + i * 100, base + i * 100 + 50)) for i in range(100)]
            base += 100 * 100
            futures = client.map(
                spin, parts, record_us=200.0, priority="batch", max_suspensions=10_000
            )
            checked.extend(zip(futures, map(sum, parts), strict=True))
            client.gather(futures, timeout=300)

    batcher = threading.Thread(target=batch, daemon=True)
    batcher.start()
    quiet = stream_every(client, STREAM_EVERY_S, count=150)
    rss_before = scheduler.memory_info().rss

    ours, theirs = spawn.Pipe()
    hostile = spawn.Process(
        target=_hostile, args=(cluster.address, executor_id, scale, seed, theirs)
    )
    pings: list[float] = []
    stop = threading.Event()
    pinger = threading.Thread(target=_pinger, args=(client, stop, pings), daemon=True)
    phases: list[str] = []
    sent, hostile_cpu = [0], [0.0]
    cpu_before = sum(scheduler.cpu_times()[:2])

    def hostile_done() -> bool:
        while ours.poll():
            kind, value = ours.recv()
            if kind == "done":
                sent[0], hostile_cpu[0] = value
                return True
            phases.append(value)
        return not hostile.is_alive()

    hostile.start()
    theirs.close()
    pinger.start()
    try:
        during: list[int] = []  # the phase under way as each stream task was submitted
        loaded = stream_every(
            client, STREAM_EVERY_S, until=hostile_done, tag=lambda: len(phases), tags=during
        )
    finally:
        stop.set()
        stop_batch.set()
        pinger.join(timeout=30)
        batcher.join(timeout=300)
        hostile.join(timeout=60)
        if hostile.is_alive():
            hostile.kill()
            hostile.join()
    scheduler_cpu = sum(scheduler.cpu_times()[:2]) - cpu_before
    time.sleep(settle_s)  # then the scheduler's memory, once it has had time to let go
    rss_after = scheduler.memory_info().rss
    wrong = failed = 0
    for future, expected in checked:
        try:
            wrong += future.result(timeout=300) != expected
        except Exception:
            failed += 1
    by_phase: dict[str, list[float]] = {}
    for latency, index in zip(loaded, during, strict=True):
        by_phase.setdefault(phases[index] if index < len(phases) else "after", []).append(latency)
    quiet_p99 = percentile(quiet, 99)
    return {
        "stream_ms_p99_by_phase": {name: percentile(v, 99) for name, v in by_phase.items()},
        "stream_p99_worst_phase_vs_quiet": max(percentile(v, 99) for v in by_phase.values())
        / quiet_p99,
        "real_results_wrong": wrong,
        "real_tasks_failed": failed,
        "real_tasks": len(checked),
        "ping_ms_p99": percentile(pings, 99),
        "ping_ms_max": max(pings),
        "pings": len(pings),
        "stream_ms_p99_quiet": quiet_p99,
        "stream_ms_p99_hostile": percentile(loaded, 99),
        "stream_ms_max_hostile": max(loaded),
        "streams_hostile": len(loaded),
        "scheduler_rss_growth_mib": (rss_after - rss_before) / 2**20,
        "hostile_frames": sent[0],
        # Where the CPU went while the hostile phases ran (two cores, shared by everyone).
        "scheduler_cpu_s_hostile": scheduler_cpu,
        "hostile_process_cpu_s": hostile_cpu[0],
        "phases": phases,
        "bad_input": client.status()["bad_input"],
    }

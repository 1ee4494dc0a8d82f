"""`tidal bench chaos`: a mixed stream/batch workload while the cluster is broken on purpose.

A LocalCluster of `executors` runs batch jobs (plain maps and one chunked map of small
tasks, each task `spin` over its own records: a known sum; one map whose arguments and
results, ~100 KB each, take the data path; and a chain of three stages whose first two keep
their results on the executors, each stage taking the last one's futures: a kept result
lost with its executor is computed again from its lineage, runtime/kept.py) while a
stream of stream tasks (`total` over ten numbers) arrives every `stream_every_ms`.
Meanwhile, at seeded moments, a fault: `kill -9` of a random executor (the cluster's
supervisor starts it again), and once,
half-way through the faults, `kill -9` of the scheduler, started again on the same address
and journal. Faults come one at a time: the next waits for the cluster to recover from the
last, plus a seeded gap.

Figures:
- `submitted`: tasks submitted (batch and stream); `completed`: futures that completed
  with the right result; `wrong`: completed with a wrong one; `lost`: failed, or not done
  by the deadline; `duplicated`: futures whose done-callbacks ran more than once (a result
  handed to the user twice); `redelivered`: results the client received for a future
  already complete and dropped (after a restart, say), which is how exactly-once is kept.
  A kept result counts as completed if it can still be fetched, right, at the end;
  `kept_recomputations`: kept results the scheduler computed again (their executor was
  killed) and sent to the client anew.
- `faults`: each fault, with the batch tasks still pending when it came
  (`batch_pending`) and, for a kill, how many tasks the executor held (`held`);
  `recovery_s` per fault, `recovery_s_max`: for an executor kill, from the kill until the
  scheduler has declared that executor lost (its tasks are queued again, and run
  elsewhere); for the scheduler restart, from the kill until the new scheduler answers
  with every executor back and a stream task submitted then has its result.
  `recovery_heartbeats_max` is the worst of these in heartbeat intervals.

Discussion: an executor that dies is noticed when its connection drops (scheduler/
liveness.py), milliseconds after the kill, so a kill's recovery is mostly its tasks' rerun
elsewhere; the chaos run keeps 2 missed heartbeats (which now bound only a stopped
executor's detection) and the default interval, 500 ms. A scheduler restart costs about
0.4-0.6 s whatever the interval, most of it the new process starting (Python and its
imports) before it listens (`listening_s`); executors and clients are back ~0.1 s later.
With heartbeats under ~200 ms the restart alone would take more than 3 intervals.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, replace
from typing import Any

from tidal.runtime.client import Client
from tidal.runtime.cluster import LocalCluster
from tidal.runtime.kept_futures import KeptFuture
from tidal.workloads.synthetic import numbers, spin, spin_copy, total

TARGETS = {
    "completed_vs_submitted": (">=", 1.0),
    "lost": ("<=", 0),
    "duplicated": ("<=", 0),
    "wrong": ("<=", 0),
    "kills": (">=", 3),
    "scheduler_restarts": (">=", 1),
    "recovery_heartbeats_max": ("<=", 3.0),
}


@dataclass(frozen=True)
class ChaosConfig:
    executors: int = 3
    heartbeat_ms: int = 500  # the product's default
    missed_heartbeats: int = 2
    max_retries: int = 10  # a task may be on several of the executors killed
    batch_jobs: int = 6
    tasks_per_job: int = 40
    records_per_task: int = 40
    record_us: float = 2_000.0  # a batch task is ~80 ms of Python
    chunked_tasks: int = 400  # one map of small tasks, in chunks of 20
    # One job that carries data: arguments and results of ~100 KB each, which travel by
    # the data path (spooled by the client and by the executors, runtime/datastore.py).
    data_tasks: int = 8
    data_records: int = 20_000
    data_record_us: float = 20.0
    # The chain of kept stages: `numbers` (kept), `spin_copy` over it (kept), `total`.
    kept_tasks: int = 6
    kept_records: int = 20_000
    kept_record_us: float = 30.0
    stream_every_ms: float = 50.0
    kills: int = 4
    scheduler_restarts: int = 1
    gap_s: tuple[float, float] = (0.2, 0.6)  # between recovering and the next fault
    deadline_s: float = 120.0
    seed: int = 1

    @classmethod
    def quick(cls, **overrides: Any) -> ChaosConfig:
        return replace(cls(batch_jobs=4, kills=3, chunked_tasks=200), **overrides)


class _Tally:
    """Every future's expected result and how often its done-callbacks ran."""

    def __init__(self) -> None:
        self.expected: dict[Any, Any] = {}
        self.calls: Counter = Counter()
        # Kept futures' values (or errors), fetched while the cluster still runs.
        self.kept: dict[Any, tuple[bool, Any]] = {}
        self._lock = threading.Lock()

    def track(self, future: Any, expected: Any) -> None:
        self.expected[future] = expected
        future.add_done_callback(self._done)

    def _done(self, future: Any) -> None:
        with self._lock:
            self.calls[future] += 1


def run(quick: bool = False, config: ChaosConfig | None = None) -> dict[str, Any]:
    config = config or (ChaosConfig.quick() if quick else ChaosConfig())
    rng = random.Random(config.seed)
    tally = _Tally()
    faults: list[dict[str, Any]] = []
    with (
        LocalCluster(
            executors=config.executors,
            heartbeat_ms=config.heartbeat_ms,
            missed_heartbeats=config.missed_heartbeats,
            max_retries=config.max_retries,
            executor_restarts=config.kills + 1,
        ) as cluster,
        Client(cluster) as client,
    ):
        batch_done = threading.Event()
        stream = threading.Thread(
            target=_stream, args=(client, config, tally, batch_done), name="tidal-chaos-stream"
        )
        stream.start()
        try:
            batch = _submit_batch(client, config, tally)
            _wait_first_results(batch, config.deadline_s)
            start = time.monotonic()
            for kind in _schedule(config, rng):
                time.sleep(rng.uniform(*config.gap_s))  # a random moment of the run
                pending = sum(not f.done() for f in batch)
                if kind == "executor":
                    fault = _kill_executor(cluster, client, rng, config)
                else:
                    fault = _restart_scheduler(cluster, client, config)
                faults.append({**fault, "batch_pending": pending})
            _wait(batch, start + config.deadline_s)
        finally:
            batch_done.set()
            stream.join()
        _wait(list(tally.expected), time.monotonic() + 30)
        _fetch_kept(tally, time.monotonic() + 60)
        redelivered = client.dropped_results
        restarts = cluster.restarts
    return _figures(tally, faults, config, redelivered, restarts)


def _schedule(config: ChaosConfig, rng: random.Random) -> list[str]:
    """The faults in order: the kills, with the scheduler restarts in the middle."""
    order = ["executor"] * config.kills
    middle = config.kills // 2
    return order[:middle] + ["scheduler"] * config.scheduler_restarts + order[middle:]


def _submit_batch(client: Client, config: ChaosConfig, tally: _Tally) -> list[Any]:
    futures = _submit_chain(client, config, tally)
    for job in range(config.batch_jobs):
        parts = [
            list(range(base, base + config.records_per_task))
            for base in range(job * 1_000_000, job * 1_000_000 + config.tasks_per_job * 1000, 1000)
        ]
        job_futures = client.map(
            spin, parts, record_us=config.record_us, priority="batch", chunksize=1
        )
        for future, part in zip(job_futures, parts, strict=True):
            tally.track(future, sum(part))
        futures += job_futures
    data = [
        list(range(base, base + config.data_records))
        for base in range(0, config.data_tasks * config.data_records, config.data_records)
    ]
    data_futures = client.map(spin_copy, data, record_us=config.data_record_us, priority="batch")
    for future, part in zip(data_futures, data, strict=True):
        tally.track(future, part)
    futures += data_futures
    small = [[i, i + 1] for i in range(config.chunked_tasks)]
    chunked = client.map(spin, small, record_us=500.0, priority="batch", chunksize=20)
    for future, part in zip(chunked, small, strict=True):
        tally.track(future, sum(part))
    return futures + chunked


def _submit_chain(client: Client, config: ChaosConfig, tally: _Tally) -> list[Any]:
    """Three stages, the first two kept on the executors, each taking the last's futures."""
    count = config.kept_records
    starts = [i * count for i in range(config.kept_tasks)]
    # Ahead of the other batch jobs (order -1): its kept results exist when the faults come,
    # so that a kill takes some of them and they are computed again.
    made = [client.submit(numbers, count, start, keep=True, order=-1) for start in starts]
    copied = [
        client.submit(spin_copy, part, record_us=config.kept_record_us, keep=True, order=-1)
        for part in made
    ]
    sums = client.map(total, copied, order=-1)
    for stage in (made, copied):
        for future, start in zip(stage, starts, strict=True):
            tally.track(future, list(range(start, start + count)))
    for future, start in zip(sums, starts, strict=True):
        tally.track(future, sum(range(start, start + count)))
    return made + copied + sums


def _fetch_kept(tally: _Tally, deadline: float) -> None:
    """Fetch every kept result while the cluster runs (a lost one is computed again)."""
    for future in tally.expected:
        if isinstance(future, KeptFuture) and future.done() and not future.exception(0):
            try:
                value = future.result(timeout=max(0.0, deadline - time.monotonic()))
            except Exception as exc:
                tally.kept[future] = (False, exc)
            else:
                tally.kept[future] = (True, value)


def _stream(client: Client, config: ChaosConfig, tally: _Tally, done: threading.Event) -> None:
    i = 0
    while not done.wait(config.stream_every_ms / 1000):
        part = list(range(i, i + 10))
        tally.track(client.submit(total, part, priority="stream"), sum(part))
        i += 1


def _wait_first_results(futures: list[Any], timeout: float, count: int = 3) -> None:
    """Faults start once the cluster is busy: `count` batch results are in."""
    arrived = threading.Semaphore(0)
    for future in futures:
        future.add_done_callback(lambda _f: arrived.release())
    deadline = time.monotonic() + timeout
    for _ in range(count):
        if not arrived.acquire(timeout=max(0.0, deadline - time.monotonic())):
            raise TimeoutError("no batch results before the first fault")


def _wait(futures: list[Any], deadline: float) -> None:
    for future in futures:
        try:
            future.exception(timeout=max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            return  # counted as lost


def _status(client: Client) -> dict[str, Any] | None:
    """The scheduler's status, or None while it does not answer (it is restarting)."""
    try:
        return client.status(timeout=0.5)
    except (TimeoutError, ConnectionError):
        time.sleep(0.01)  # the client is reconnecting: do not spin
        return None


def _kill_executor(
    cluster: LocalCluster, client: Client, rng: random.Random, config: ChaosConfig
) -> dict[str, Any]:
    index = rng.randrange(config.executors)
    node = f"local-{index}"
    status = client.wait_for_status(
        lambda s: any(e["node"] == node and e["state"] == "alive" for e in s["executors"]),
        timeout=30,
    )
    held = next(e for e in status["executors"] if e["node"] == node and e["state"] == "alive")
    victim = held["executor_id"]
    killed_at = time.monotonic()
    cluster.kill_executor(index)
    client.wait_for_status(
        lambda s: all(e["state"] == "lost" for e in s["executors"] if e["executor_id"] == victim),
        timeout=30,
    )
    return {
        "fault": "executor",
        "node": node,
        "held": (1 if held["running"] else 0) + held["queued"] + len(held["suspended"]),
        "recovery_s": time.monotonic() - killed_at,
    }


def _restart_scheduler(
    cluster: LocalCluster, client: Client, config: ChaosConfig
) -> dict[str, Any]:
    killed_at = time.monotonic()
    cluster.restart_scheduler()
    listening = time.monotonic() - killed_at
    deadline = killed_at + 60
    while True:
        status = _status(client)
        alive = status and sum(e["state"] == "alive" for e in status["executors"])
        if alive and alive >= config.executors:
            break
        if time.monotonic() > deadline:
            raise TimeoutError("the restarted scheduler did not get its executors back")
    executors_back = time.monotonic() - killed_at
    probe = client.submit(total, [1, 2, 3], priority="stream")
    probe.result(timeout=60)
    return {
        "fault": "scheduler",
        "listening_s": listening,
        "executors_back_s": executors_back,
        "recovery_s": time.monotonic() - killed_at,
    }


def _figures(
    tally: _Tally,
    faults: list[dict[str, Any]],
    config: ChaosConfig,
    redelivered: int,
    executor_restarts: int,
) -> dict[str, Any]:
    completed = wrong = lost = 0
    kept = [f for f in tally.expected if isinstance(f, KeptFuture)]
    for future, expected in tally.expected.items():
        if not future.done() or future.cancelled() or future.exception(timeout=0):
            lost += 1
        elif future in tally.kept and not tally.kept[future][0]:
            lost += 1  # its kept result could not be had
        elif (tally.kept[future][1] if future in tally.kept else future.result()) == expected:
            completed += 1
        else:
            wrong += 1
    submitted = len(tally.expected)
    heartbeat_s = config.heartbeat_ms / 1000
    recovery_max = max((f["recovery_s"] for f in faults), default=0.0)
    return {
        "submitted": submitted,
        "completed": completed,
        "lost": lost,
        "wrong": wrong,
        "duplicated": sum(1 for n in tally.calls.values() if n > 1),
        "redelivered": redelivered,
        "kept_recomputations": sum(f.recomputations for f in kept),
        "kills": sum(f["fault"] == "executor" for f in faults),
        "scheduler_restarts": sum(f["fault"] == "scheduler" for f in faults),
        "executor_restarts": executor_restarts,
        "recovery_s_max": recovery_max,
        "heartbeat_s": heartbeat_s,
        "recovery_heartbeats_max": recovery_max / heartbeat_s,
        "completed_vs_submitted": completed / submitted if submitted else 0.0,
        "faults": faults,
        "config": {k: v for k, v in asdict(config).items() if k != "gap_s"},
    }

"""Seeded workloads for the policies simulation (scheduler/sim.py): the kinds of mix
`tidal bench policies` scores every policy on, and the generator that draws one."""

from __future__ import annotations

import random
from dataclasses import dataclass

from tidal.scheduler.sim import JobSpec

__all__ = ["SCENARIO_KINDS", "Mix", "mixed_scenario"]


@dataclass(frozen=True, slots=True)
class Mix:
    """What a scenario kind draws from (`mixed_scenario`); the optional parts are off by
    default, and draw nothing from the seed when off."""

    batch_load: float  # batch work as a fraction of the cluster's capacity over the run
    stream_every_s: float  # mean gap between stream micro-batches
    stream_tasks: tuple[int, int]  # tasks per micro-batch, inclusive range
    batch_tasks: tuple[int, int] = (2, 8)  # tasks per batch job, inclusive range
    batch_task_s: tuple[float, float] = (0.2, 1.0)  # a batch task's duration
    long_tasks: float = 0.0  # the share of batch tasks drawn from `long_task_s` instead
    long_task_s: tuple[float, float] = (2.0, 4.0)
    burst_s: tuple[float, float] | None = None  # stream only in bursts: (on, off) seconds
    batch_record_s: float | None = None  # batch tasks' records (None: the cluster's)
    batch_memory_mb: tuple[float, float] | None = None  # what a batch task holds
    stream_memory_mb: tuple[float, float] | None = None  # what a stream task holds
    memory_limit_mb: float | None = None  # every executor's limit: give it to SimCluster


# Discussion: stream tasks are tiny (2-10 ms), so even "stream-heavy" spends most executor
# time on batch work; what differs is how often stream work interrupts it. batch-heavy: a
# batch backlog beyond capacity, a stream micro-batch every ~0.5 s; mixed: batch at ~80% of
# capacity, one every ~100 ms; stream-heavy: little batch work, one every ~25 ms. The others
# each stress one thing a fixed policy gets wrong: bursty, stream-heavy bursts of 0.5 s
# every 2 s over mixed batch work; skewed, batch tasks of 0.05-0.2 s with one in six of
# 2-4 s (the long ones spend their suspensions and hold their executors); memory, tasks
# that hold 2-3 GiB (batch) and ~1 GiB (stream) under a 4 GiB limit, so a parked batch
# task and a stream task often do not fit together; many-jobs, ~40 small batch jobs of short
# tasks; coarse-records, batch tasks that reach a record boundary every 50 ms (a
# partition at a time, as Neptune's coarse yields), so a suspension takes up to 50 ms.
SCENARIO_KINDS: dict[str, Mix] = {
    "batch-heavy": Mix(batch_load=1.2, stream_every_s=0.5, stream_tasks=(1, 2)),
    "mixed": Mix(batch_load=0.8, stream_every_s=0.1, stream_tasks=(1, 4)),
    "stream-heavy": Mix(batch_load=0.3, stream_every_s=0.025, stream_tasks=(2, 4)),
    "bursty": Mix(batch_load=0.8, stream_every_s=0.02, stream_tasks=(2, 4), burst_s=(0.5, 1.5)),
    "skewed": Mix(
        batch_load=0.9,
        stream_every_s=0.05,
        stream_tasks=(1, 3),
        batch_task_s=(0.05, 0.2),
        long_tasks=1 / 6,
    ),
    "memory": Mix(
        batch_load=0.8,
        stream_every_s=0.1,
        stream_tasks=(1, 3),
        batch_memory_mb=(2048, 3072),
        stream_memory_mb=(768, 1280),
        memory_limit_mb=4096,
    ),
    "many-jobs": Mix(
        batch_load=1.0,
        stream_every_s=0.1,
        stream_tasks=(1, 2),
        batch_tasks=(1, 4),
        batch_task_s=(0.05, 0.3),
    ),
    "coarse-records": Mix(
        batch_load=0.8, stream_every_s=0.05, stream_tasks=(1, 3), batch_record_s=0.05
    ),
}


def mixed_scenario(
    kind: str = "mixed",
    seed: int = 0,
    *,
    executors: int = 4,
    nodes: int = 2,
    duration_s: float = 5.0,
) -> tuple[list[tuple[str, str]], list[JobSpec]]:
    """A seeded workload: (executors as (executor_id, node), jobs) for `SimCluster.run()`.

    Executors "e0".. are spread over nodes "n0".. in contiguous groups (4 on 2 nodes: e0, e1
    on n0; e2, e3 on n1). Batch jobs (by default of 2-8 tasks of 0.2-1 s) arrive over the
    first 60% of `duration_s`; stream micro-batches of tiny tasks (2-10 ms) arrive
    throughout (or in bursts). The kind's `Mix` says the rest (SCENARIO_KINDS).
    """
    mix = SCENARIO_KINDS.get(kind)
    if mix is None:
        raise ValueError(f"unknown scenario kind {kind!r}: use {', '.join(SCENARIO_KINDS)}")
    if executors < 1 or not 1 <= nodes <= executors:
        raise ValueError("need executors >= 1 and 1 <= nodes <= executors")
    rng = random.Random(seed)
    cluster = [(f"e{i}", f"n{i * nodes // executors}") for i in range(executors)]
    jobs = []
    batch_work = mix.batch_load * executors * duration_s

    def duration() -> float:
        if mix.long_tasks and rng.random() < mix.long_tasks:
            return round(rng.uniform(*mix.long_task_s), 4)
        return round(rng.uniform(*mix.batch_task_s), 4)

    def memory_mb(drawn: tuple[float, float] | None) -> float:
        return 0.0 if drawn is None else round(rng.uniform(*drawn))

    while batch_work > 0:
        durations = [duration() for _ in range(rng.randint(*mix.batch_tasks))]
        batch_work -= sum(durations)
        arrival = round(rng.uniform(0, 0.6 * duration_s), 4)
        job_id = f"b{len(jobs):03d}"
        memory = memory_mb(mix.batch_memory_mb)
        jobs.append(
            JobSpec(
                job_id, "batch", arrival, durations, record_s=mix.batch_record_s, memory_mb=memory
            )
        )
    at = rng.uniform(0, mix.stream_every_s)
    count = 0
    while at < duration_s:
        if mix.burst_s is not None:
            on, off = mix.burst_s
            phase = at % (on + off)
            if phase >= on:  # between bursts: the next one starts the stream again
                at += on + off - phase
                continue
        durations = [
            round(rng.uniform(0.002, 0.010), 5) for _ in range(rng.randint(*mix.stream_tasks))
        ]
        memory = memory_mb(mix.stream_memory_mb)
        jobs.append(JobSpec(f"s{count:04d}", "stream", round(at, 5), durations, memory_mb=memory))
        count += 1
        at += rng.uniform(0.5, 1.5) * mix.stream_every_s
    jobs.sort(key=lambda j: j.arrival_s)
    return cluster, jobs

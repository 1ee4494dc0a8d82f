"""`tidal bench policies`: every built-in policy on the same simulated workloads (mixes).

The simulation (scheduler/sim.py) drives the real scheduler core with simulated executors,
so the figures are the policies' own, free of machine noise, and exactly reproducible from
the seed. Every mix runs on 4 executors on 2 nodes for 5 s of work (scheduler/sim.py's
SCENARIO_KINDS): batch-heavy, mixed, stream-heavy, bursty (stream-heavy bursts), skewed
(batch tasks of very unequal lengths), memory (tasks that hold GiBs under a 4 GiB executor
limit), many-jobs (many small batch jobs) and coarse-records (batch tasks that reach a
record boundary every 50 ms). Half of the batch jobs prefer one node (for lma) and one
executor's host runs at 88% memory use (for lb and lma to avoid). The stream micro-batches
are cut by one stream driver (STREAM_SOURCE), which runs from the start and reports its
source's lag every 0.5 s, as runtime/streams.py's `StreamDriver` does (lb and kill keep a
slot while it lags by a second; adaptive takes a live source for stream work). The "mixed"
figures are reported in full under `policies`, as before.

A policy's score on a mix, lower is better: its stream p99 and its batch makespan, each
relative to the best any valid policy reached on that mix, added (2.0 means best on both).
A policy that failed a task (the memory guard's, on the memory mix) has no score there: a
schedule that loses a user's task is not a candidate. "The best fixed policy" of a mix is
the valid one with the lowest score other than adaptive, and `adaptive_vs_best` is
adaptive's score over that one's (no fixed policy beats adaptive by more than 10% while it
is at most 1.1); the mix's `winner` is the lowest score of all.
"""

from __future__ import annotations

import dataclasses
import logging
import random
from typing import Any

from tidal.scheduler.policies import BUILTIN_POLICIES, resolve_policy
from tidal.scheduler.scenarios import SCENARIO_KINDS, mixed_scenario
from tidal.scheduler.sim import JobSpec, SimCluster

POLICIES = ["fifo", "fair", "kill", "static", "lb", "lma", "adaptive"]
FIGURES = (
    "stream_ms_p50",
    "stream_ms_p99",
    "batch_makespan_s",
    "suspensions",
    "max_suspensions_per_task",
    "work_lost_s",
    "locality_hit_rate",
    "tasks_failed",
    "suspend_ms_p99",
    "parked_mb_max",
)
# What each mix shows per policy (the mixed one shows every figure, under `policies`).
MIX_FIGURES = (
    "stream_ms_p99",
    "batch_makespan_s",
    "max_suspensions_per_task",
    "tasks_failed",
    "suspend_ms_p99",
)
PRESSURED = {"e3": 88.0}
# Discussion: a real cluster's executors have joined and sent a heartbeat (their memory,
# their limit) before the work comes; the simulation starts them all at 0 with heartbeat
# phases up to one interval. So the work arrives one heartbeat interval in.
WARMUP_S = 0.5
# The stream micro-batches are cut by one stream driver from this source; it runs from the
# start, as the executors do, and reports the source's lag (scheduler/sim.py).
STREAM_SOURCE = "events"

TARGETS = {
    "lb_stream_p99_vs_fifo": ("<=", 0.1),
    "lb_makespan_vs_fifo": ("<=", 1.05),
    "cap_respected": (">=", 1),
    "adaptive_worst_vs_best": ("<=", 1.10),
    "adaptive_tasks_failed": ("<=", 0),
}


def scenario(kind: str, seed: int) -> tuple[list[tuple[str, str]], list[JobSpec]]:
    """A seeded mix, with node preferences on every other batch job, arriving WARMUP_S
    after the executors joined, its stream jobs cut from STREAM_SOURCE."""
    executors, jobs = mixed_scenario(kind, seed, executors=4, nodes=2)
    rng = random.Random(seed)
    nodes = sorted({node for _, node in executors})
    batch = [j for j in jobs if j.priority == "batch"]
    preferring = {j.job_id for j in batch[::2]}
    jobs = [
        dataclasses.replace(
            j,
            arrival_s=round(j.arrival_s + WARMUP_S, 6),
            preferred_nodes=[rng.choice(nodes)] if j.job_id in preferring else None,
            source=STREAM_SOURCE if j.priority == "stream" else None,
        )
        for j in jobs
    ]
    return executors, jobs


def run_one(policy: str, kind: str, seed: int, cap: int) -> dict[str, Any]:
    """One policy on one mix: its FIGURES."""
    executors, jobs = scenario(kind, seed)
    sim = SimCluster(
        resolve_policy(policy),
        executors,
        max_suspensions=cap,
        memory=PRESSURED,
        memory_limit_mb=SCENARIO_KINDS[kind].memory_limit_mb,
    )
    result = sim.run(jobs)
    if not result.completed_once or result.stalled:
        raise RuntimeError(f"{policy} on {kind}: tasks did not all complete exactly once")
    summary = result.summary()
    return {name: summary[name] for name in FIGURES}


def run(quick: bool = False, seed: int = 1, cap: int = 3) -> dict[str, Any]:
    # The simulated scheduler logs what a real one would (executors refusing late commands,
    # adaptive's switches); keep the benchmark's output to its figures.
    logging.getLogger("tidal.scheduler").setLevel(logging.ERROR)
    if sorted(POLICIES) != sorted(BUILTIN_POLICIES):
        raise RuntimeError(
            f"the benchmark's policies {sorted(POLICIES)} are not the built-in ones "
            f"{sorted(BUILTIN_POLICIES)}"
        )
    runs = {
        kind: {name: run_one(name, kind, seed, cap) for name in POLICIES} for kind in SCENARIO_KINDS
    }
    mixes = {kind: _judged(per_policy) for kind, per_policy in runs.items()}
    policies = runs["mixed"]
    lb, fifo = policies["lb"], policies["fifo"]
    every_run = [r for per_policy in runs.values() for r in per_policy.values()]
    return {
        "max_suspensions": cap,
        "seed": seed,
        "policies": policies,
        "mixes": mixes,
        "lb_stream_p99_vs_fifo": lb["stream_ms_p99"] / fifo["stream_ms_p99"],
        "lb_makespan_vs_fifo": lb["batch_makespan_s"] / fifo["batch_makespan_s"],
        # The core enforces the cap; this checks it held for every policy on every mix.
        "max_suspensions_per_task": max(r["max_suspensions_per_task"] for r in every_run),
        "cap_respected": int(all(r["max_suspensions_per_task"] <= cap for r in every_run)),
        "adaptive_worst_vs_best": max(m["adaptive_vs_best"] for m in mixes.values()),
        "adaptive_tasks_failed": sum(r["adaptive"]["tasks_failed"] for r in runs.values()),
        "winners": {kind: m["winner"] for kind, m in mixes.items()},
    }


def _judged(per_policy: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """A mix's scores, its best fixed policy, adaptive against it, the winner, and what
    each policy did."""
    scores = _scores(per_policy)
    valid = {name: score for name, score in scores.items() if score is not None}
    fixed = {name: score for name, score in valid.items() if name != "adaptive"}
    best = min(fixed, key=fixed.__getitem__)
    adaptive = scores["adaptive"]
    return {
        "winner": min(valid, key=valid.__getitem__),
        "best_fixed_policy": best,
        # A failed task makes adaptive's score none: worse than any, so infinitely far off.
        "adaptive_vs_best": float("inf") if adaptive is None else adaptive / fixed[best],
        "scores": scores,
        "figures": {
            name: {figure: r[figure] for figure in MIX_FIGURES} for name, r in per_policy.items()
        },
    }


def _scores(per_policy: dict[str, dict[str, Any]]) -> dict[str, float | None]:
    """One number per policy, lower is better: stream p99 and batch makespan, each divided
    by the best any valid policy reached on this mix, added; None for a policy that failed
    a task. 2.0 is best on both."""
    valid = {n: r for n, r in per_policy.items() if not r["tasks_failed"]}
    best_p99 = min(r["stream_ms_p99"] for r in valid.values())
    best_makespan = min(r["batch_makespan_s"] for r in valid.values())
    return {
        name: (
            r["stream_ms_p99"] / best_p99 + r["batch_makespan_s"] / best_makespan
            if name in valid
            else None
        )
        for name, r in per_policy.items()
    }

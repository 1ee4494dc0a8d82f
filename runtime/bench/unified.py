"""`tidal bench unified`: the demo's unified application on Tidal (lb) and on Dask distributed.

The same task code (workloads/unified.py), the same corpus, sweeps, event rate and
micro-batch interval, the same number of single-thread worker processes. On Tidal the
cluster runs the lb policy and tasks carry their priority class ("stream" or "batch"); on
Dask the stream job submits with `priority=10` and the batch job with `priority=0`, Dask's
own way to put one kind of work first. Each backend gets a fresh cluster; each batch job is
trained by a driver process of its own (runtime/demo.py's `BatchDriver`), the stream job is
cut and timed in this process, exactly as `tidal demo` does.

Figures per backend: the stream job's latency (a micro-batch's submission to its result in
hand) while the batch job runs, p50 and p99, and the batch job's makespan.
`stream_p99_ratio` is Dask's p99 over Tidal's; `makespan_ratio` Tidal's makespan over Dask's.
The checks: every micro-batch's result equals the same query run here, on both, and both
train the same model (training is deterministic).

On Dask the batch driver broadcasts each sweep's model to every worker once
(`client.scatter(..., broadcast=True)`), as Dask's documentation advises for a large
argument shared by many tasks; Tidal's client sends it with each task.

Discussion: Dask cannot take a worker from a running task, so a stream task waits for a
batch task to end (up to `task_s`); with priorities it is at least first in line. Without
`dask[distributed]` installed, the Dask side is skipped and says why.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from tidal.runtime.bench.peers import (
    BATCH_PRIORITY,
    DaskStreamClient,
    dask_cluster,
    dask_missing,
    dask_versions,
)
from tidal.runtime.client import Client
from tidal.runtime.cluster import LocalCluster
from tidal.runtime.demo import DemoConfig, PolicyRun, run_unified, size_batch_job, train_tidal
from tidal.workloads.topics import Corpus, TopicModel, Trainer, make_corpus, resample

TARGETS = {"stream_p99_ratio": (">=", 20.0), "makespan_ratio": ("<=", 1.05)}
POLICY = "lb"


def resample_partition(documents: list[Any], **arguments: Any) -> list[Any]:
    """`resample` run to the end, as one Dask task (Dask keeps results, not generators)."""
    return list(resample(documents, **arguments))


def train_dask(
    address: str,
    corpus: Corpus,
    partitions: int,
    sweeps: int,
    ready: Any,
    on_sweep: Any,
) -> tuple[TopicModel, float, dict[str, Any]]:
    """The batch job on Dask (a `TrainFunction`, run in the batch driver's process)."""
    import distributed

    with distributed.Client(address) as client:
        ready()
        trainer = Trainer(corpus, partitions)
        start = time.monotonic()

        def on_dask(inputs: list[Any], arguments: dict[str, Any]) -> list[Any]:
            shared = client.scatter(arguments.pop("word_topic"), broadcast=True, hash=False)
            futures = client.map(
                resample_partition,
                inputs,
                word_topic=shared,
                priority=BATCH_PRIORITY,
                pure=False,
                **arguments,
            )
            return client.gather(futures)

        for _ in range(sweeps):
            on_sweep(trainer.sweep(on_dask))
        return trainer.model, time.monotonic() - start, {}


# The figures of a backend's run: a part of its report.json row (runtime/demo.py).
FIGURES = (
    "stream_ms_p50",
    "stream_ms_p99",
    "batch_makespan_s",
    "micro_batches",
    "stream_exact",
    "model_digest",
)


def _figures(run: PolicyRun, *extra: str) -> dict[str, Any]:
    row = run.row()
    return {name: row[name] for name in (*FIGURES, *extra)}


def run(quick: bool = False, config: DemoConfig | None = None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="tidal-bench-unified-") as out:
        options = {"policies": (POLICY,), "out": Path(out)}
        config = config or (
            DemoConfig.quick(**options) if quick else DemoConfig(duration_s=10.0, **options)
        )
        spec, partitions, sweeps = size_batch_job(config)
        corpus = make_corpus(spec)
        initial_model = Trainer(corpus, partitions).model.word_topics()
        job = (config, corpus, partitions, sweeps, initial_model, _ignore)

        with (
            LocalCluster(executors=config.executors, policy=POLICY) as cluster,
            Client(cluster) as client,
        ):
            tidal = run_unified("tidal", client, (cluster.address, train_tidal), *job)
        result: dict[str, Any] = {
            "tidal": _figures(tidal, "suspensions"),
            "dask": None,
            "stream_p99_ratio": None,
            "makespan_ratio": None,
        }
        missing = dask_missing()
        if missing is None:
            with dask_cluster(config.executors) as dask_client:
                dask = run_unified(
                    "dask",
                    DaskStreamClient(dask_client),
                    (dask_client.scheduler.address, train_dask),
                    *job,
                )
            ours = result["tidal"]
            theirs = result["dask"] = _figures(dask)
            result["dask_versions"] = dask_versions()
            result["stream_p99_ratio"] = theirs["stream_ms_p99"] / ours["stream_ms_p99"]
            result["makespan_ratio"] = ours["batch_makespan_s"] / theirs["batch_makespan_s"]
            result["same_model"] = ours["model_digest"] == theirs["model_digest"]
        else:
            result["dask_skipped"] = missing
    result["config"] = {
        "executors": config.executors,
        "policy": POLICY,
        "documents": spec.documents,
        "sweeps": sweeps,
        "partitions": partitions,
        "task_s": config.task_s,
        "interval_ms": config.interval_ms,
        "events_per_s": config.events_per_s,
    }
    return result


def _ignore(_done: float, _status: str) -> None:
    """Progress of one run: `tidal bench all` shows the benchmark's own, not this."""

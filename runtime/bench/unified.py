"""`tidal bench unified`: the demo's unified application on Tidal (lb), Dask and Ray.

The same task code (workloads/unified.py), the same corpus, sweeps, event rate and
micro-batch interval, two single-CPU task slots on each backend (runtime/bench/peers.py).
On Tidal the cluster runs the lb policy and tasks carry their priority class ("stream" or
"batch"); on Dask the stream job submits with `priority=10` and the batch job with
`priority=0`, Dask's own way to put one kind of work first; Ray has no task priorities, so
both submit alike. Each backend gets a fresh cluster; each batch job is trained by a driver
process of its own (runtime/demo.py's `BatchDriver`), the stream job is cut and timed in
this process, exactly as `tidal demo` does.

Figures per backend: the stream job's latency (a micro-batch's submission to its result in
hand) while the batch job runs, p50 and p99, and the batch job's makespan.
`stream_p99_ratio` is Dask's p99 over Tidal's, `makespan_ratio` Tidal's makespan over
Dask's; `ray_stream_p99_ratio` and `ray_makespan_ratio` the same against Ray.
The checks: every micro-batch's result equals the same query run here, on every backend,
and all train the same model (training is deterministic).

The batch driver sends each sweep's model once for all of the sweep's tasks, as each peer's
documentation advises for a large argument shared by many tasks: on Dask broadcast to every
worker (`client.scatter(..., broadcast=True)`), on Ray put in its object store
(`ray.put`). Tidal's client sends it with each task.

Discussion: neither peer can take a slot from a running task, so a stream task waits for a
batch task to end (up to `task_s`); on Dask, with priorities, it is at least first in line,
on Ray it waits its turn among the sweep's queued tasks. A peer that is not installed is
skipped (`dask_skipped`, `ray_skipped` say why); Tidal's side always runs.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tidal.runtime.bench.peers import (
    BATCH_PRIORITY,
    DaskStreamClient,
    dask_cluster,
    dask_missing,
    dask_versions,
    ray_cluster,
    ray_connect,
    ray_missing,
    ray_versions,
)
from tidal.runtime.client import Client
from tidal.runtime.cluster import LocalCluster
from tidal.runtime.demo import (
    DemoConfig,
    PolicyRun,
    TrainFunction,
    run_unified,
    size_batch_job,
    train_tidal,
)
from tidal.workloads.topics import (
    Corpus,
    TopicModel,
    Trainer,
    count_topics,
    make_corpus,
    resample_state,
)

TARGETS = {
    "stream_p99_ratio": (">=", 20.0),
    "makespan_ratio": ("<=", 1.05),
    "ray_stream_p99_ratio": (">=", 100.0),
    "ray_makespan_ratio": ("<=", 1.05),
}
POLICY = "lb"


def resample_state_partition(documents: list[Any], **arguments: Any) -> list[Any]:
    """`resample_state` run to the end: a partition's next state, as one peer task."""
    return list(resample_state(documents, **arguments))


def count_partition(documents: list[Any], vocabulary: int, topics: int) -> list[list[int]]:
    """`count_topics` of a partition's state, as one peer task."""
    return count_topics(documents, vocabulary, topics)


def _train(
    corpus: Corpus,
    partitions: int,
    sweeps: int,
    on_sweep: Any,
    states_of: Callable[[Sequence[Any], dict[str, Any]], Sequence[Any]],
    counts_of: Callable[[Sequence[Any], dict[str, Any]], list[Any]],
) -> tuple[TopicModel, float, dict[str, Any]]:
    """The batch job's sweeps on a peer, as Tidal's `train_on` runs them: each partition's
    state stays where the peer keeps task results (Dask's futures, Ray's object references),
    `states_of(previous states, arguments)` computes the next ones there, and only
    `counts_of(states, arguments)`, each partition's word-topic counts, come back.

    Discussion: the peers hold results on their workers too, so they get the same design
    as Tidal's (workloads/unified.py): comparing Tidal keeping state with peers shipping
    every partition each sweep would measure the design, not the runtime."""
    trainer = Trainer(corpus, partitions)
    start = time.monotonic()
    states: Sequence[Any] = trainer.partition_inputs()
    chain = []  # every sweep's states held, as train_on holds them
    for _ in range(sweeps):
        states = states_of(states, trainer.sweep_arguments())
        chain.append(states)
        on_sweep(trainer.absorb_counts(counts_of(states, trainer.count_arguments())))
    return trainer.model, time.monotonic() - start, {}


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

        def states_of(states: Sequence[Any], arguments: dict[str, Any]) -> list[Any]:
            shared = client.scatter(arguments.pop("word_topic"), broadcast=True, hash=False)
            return client.map(
                resample_state_partition,
                states,
                word_topic=shared,
                priority=BATCH_PRIORITY,
                pure=False,
                **arguments,
            )

        def counts_of(states: Sequence[Any], arguments: dict[str, Any]) -> list[Any]:
            futures = client.map(
                count_partition, states, priority=BATCH_PRIORITY, pure=False, **arguments
            )
            return client.gather(futures)

        return _train(corpus, partitions, sweeps, on_sweep, states_of, counts_of)


def train_ray(
    address: str,
    corpus: Corpus,
    partitions: int,
    sweeps: int,
    ready: Any,
    on_sweep: Any,
) -> tuple[TopicModel, float, dict[str, Any]]:
    """The batch job on Ray (a `TrainFunction`, run in the batch driver's process)."""
    with ray_connect(address) as client:
        ready()

        def states_of(states: Sequence[Any], arguments: dict[str, Any]) -> list[Any]:
            arguments["word_topic"] = client.put(arguments["word_topic"])
            return client.map_refs(resample_state_partition, states, **arguments)

        def counts_of(states: Sequence[Any], arguments: dict[str, Any]) -> list[Any]:
            return client.map(count_partition, states, **arguments)

        return _train(corpus, partitions, sweeps, on_sweep, states_of, counts_of)


# ---- the peers -------------------------------------------------------------------------------


@contextmanager
def _on_dask(workers: int) -> Iterator[tuple[Any, str]]:
    with dask_cluster(workers) as client:
        yield DaskStreamClient(client), client.scheduler.address


@contextmanager
def _on_ray(workers: int) -> Iterator[tuple[Any, str]]:
    with ray_cluster(workers) as client:
        yield client, client.address


@dataclass(frozen=True)
class Peer:
    """A backend to compare with: how to tell it is installed, start it and train on it."""

    name: str
    missing: Callable[[], str | None]  # why it cannot run here, or None
    versions: Callable[[], dict[str, str]]
    # workers -> (the stream driver's client, the address the batch driver connects to)
    cluster: Callable[[int], AbstractContextManager[tuple[Any, str]]]
    train: TrainFunction
    ratios: str  # the prefix of its ratios' names: Dask's kept theirs from before Ray came


PEERS = (
    Peer("dask", dask_missing, dask_versions, _on_dask, train_dask, ratios=""),
    Peer("ray", ray_missing, ray_versions, _on_ray, train_ray, ratios="ray_"),
)


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
            LocalCluster(
                executors=config.executors,
                policy=POLICY,
                max_suspensions=config.max_suspensions,
            ) as cluster,
            Client(cluster) as client,
        ):
            tidal = run_unified("tidal", client, (cluster.address, train_tidal), *job)
        result: dict[str, Any] = {"tidal": _figures(tidal, "suspensions")}
        for peer in PEERS:
            result.update(_compare(peer, result["tidal"], config, job))
    result["config"] = {
        "executors": config.executors,
        "policy": POLICY,
        "documents": spec.documents,
        "sweeps": sweeps,
        "partitions": partitions,
        "task_s": config.task_s,
        "interval_ms": config.interval_ms,
        "max_suspensions": config.max_suspensions,
        "events_per_s": config.events_per_s,
    }
    return result


def _compare(
    peer: Peer, ours: dict[str, Any], config: DemoConfig, job: tuple[Any, ...]
) -> dict[str, Any]:
    """The same job on `peer`: its figures and the ratios, or why it was skipped."""
    ratios = {f"{peer.ratios}stream_p99_ratio": None, f"{peer.ratios}makespan_ratio": None}
    missing = peer.missing()
    if missing is not None:
        return {peer.name: None, **ratios, f"{peer.name}_skipped": missing}
    with peer.cluster(config.executors) as (stream_client, address):
        theirs = _figures(run_unified(peer.name, stream_client, (address, peer.train), *job))
    return {
        peer.name: theirs,
        f"{peer.name}_versions": peer.versions(),
        f"{peer.ratios}stream_p99_ratio": theirs["stream_ms_p99"] / ours["stream_ms_p99"],
        f"{peer.ratios}makespan_ratio": ours["batch_makespan_s"] / theirs["batch_makespan_s"],
        f"{peer.ratios}same_model": ours["model_digest"] == theirs["model_digest"],
    }


def _ignore(_done: float, _status: str) -> None:
    """Progress of one run: `tidal bench all` shows the benchmark's own, not this."""

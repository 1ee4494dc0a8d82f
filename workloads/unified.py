"""The unified application: a stream job scores ad events with the model a batch job trains.

The batch job trains the topic model of workloads/topics.py, sweep after sweep; each sweep
is one `client.map` of ~0.2-1 s tasks, whose results (each partition's documents with their
topics) stay on the executors for the next sweep; only counts come back. The stream job is
workloads/ads.py's YSB query, cut into micro-batches, that also labels each viewed page with
its topic under the latest model the batch job has produced: views per
`(campaign, window, topic)`. Both share one cluster, which is the point: under a policy
that suspends, a micro-batch does not wait for a sweep.

The two drivers are plain functions over a `Client`; `tidal demo` (runtime/demo.py) runs
the batch driver in a process of its own, so that its merging of results never holds the
GIL of the process that measures stream latency.
"""

from __future__ import annotations

import dataclasses
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import msgpack

from tidal.runtime.client import Client
from tidal.runtime.futures import TaskFuture
from tidal.runtime.task import task
from tidal.workloads.ads import AdSpec, campaign_table, generate_events, window_of
from tidal.workloads.topics import Corpus, TopicModel, Trainer, count_topics, resample_state

__all__ = ["StreamRun", "page_topic", "run_stream", "score_views", "train_on"]


def page_topic(page: Sequence[int], word_topics: Sequence[int]) -> int:
    """The topic most of the page's words belong to (ties: the one seen first)."""
    return Counter(word_topics[word] for word in page).most_common(1)[0][0]


@task(inputs=["events"], priority="stream")
def score_views(
    events: Iterable[Sequence[Any]], word_topics: Sequence[int], spec: dict[str, int]
) -> Counter:
    """One micro-batch: views per `(campaign, window start, topic of the page)`."""
    table = campaign_table(spec["campaigns"], spec["ads_per_campaign"], spec["seed"])
    window_ms = spec["window_ms"]
    return Counter(
        (table[ad_id], window_of(time_ms, window_ms), page_topic(page, word_topics))
        for ad_id, kind, time_ms, page in events
        if kind == "view"
    )


# ---- the batch driver ------------------------------------------------------------------------


def train_on(
    client: Client,
    corpus: Corpus,
    sweeps: int,
    partitions: int,
    on_sweep: Callable[[TopicModel, list[TaskFuture]], None] | None = None,
) -> TopicModel:
    """Train on the cluster. Equal, bit for bit, to `train_locally` with the same arguments,
    however its tasks were scheduled.

    Each partition's state (its `[doc_id, words, topics]` records) stays on the executor
    that computed it: a sweep is one batch job of `partitions` `resample_state` tasks that
    keep their results, each taking its partition's state from the sweep before (the
    documents themselves, sent once, for the first), and one job of `count_topics` tasks
    that take those new states and send back their word-topic counts, which the driver sums
    into the next sweep's global counts. `on_sweep(model, futures)` hears of each sweep with
    its tasks' futures, both jobs'.
    """
    trainer = Trainer(corpus, partitions)
    states: Sequence[Any] = trainer.partition_inputs()
    # Discussion: every sweep's states are held here until training ends, not only the
    # newest. A kept result lost with its executor is computed again from its task, and
    # that task's inputs first if they are gone too; under locality a partition's states all
    # live on one executor, so losing it means computing its chain again from the documents,
    # which needs every link still held (a released one cannot be computed again). The
    # price is memory on the executors: each sweep's states are the corpus with its topics
    # (about 2 MB a sweep in `tidal demo`'s default run), freed together when this returns.
    chain: list[Sequence[TaskFuture]] = []  # held, never read: see above
    for _ in range(sweeps):
        states = client.map(
            resample_state, states, priority="batch", keep=True, **trainer.sweep_arguments()
        )
        chain.append(states)
        # Ahead of the sweep's other batch tasks (order=-1): each count runs as soon as its
        # state exists, in the gaps between them, not all after the last one.
        counts = client.map(
            count_topics, states, priority="batch", order=-1, **trainer.count_arguments()
        )
        model = trainer.absorb_counts(client.gather(counts))
        if on_sweep is not None:
            on_sweep(model, [*states, *counts])
    return trainer.model


# ---- the stream driver -----------------------------------------------------------------------


@dataclass
class StreamRun:
    """What one stream run submitted and measured."""

    futures: list[TaskFuture] = field(default_factory=list)
    # Each micro-batch's events, packed (msgpack; `micro_batch_events(i)` unpacks one).
    # Discussion: kept as lists, ~400 objects a micro-batch, every full collection of the
    # process that times the stream walked them all: 35-45 ms, with the GIL held, after ~200
    # micro-batches on a loaded machine (traced 2026-12-07). Bytes are not walked.
    events: list[bytes] = field(default_factory=list)
    word_topics: list[Sequence[int]] = field(default_factory=list)  # the model each used
    # Submit -> result in ms, by micro-batch index, in the order the results came.
    latency_of: dict[int, float] = field(default_factory=dict)

    @property
    def latencies_ms(self) -> list[float]:
        return list(self.latency_of.values())

    def micro_batch_events(self, index: int) -> list[list[Any]]:
        """The events micro-batch `index` was cut from (kept with `keep_inputs`)."""
        return msgpack.unpackb(self.events[index])

    def counts(self) -> Counter:
        """All views counted, per `(campaign, window, topic)`, over the whole run."""
        total: Counter = Counter()
        for future in self.futures:
            total.update(future.result())
        return total


def _record_latency(run: StreamRun, index: int, submitted: float, _future: TaskFuture) -> None:
    run.latency_of[index] = (time.monotonic() - submitted) * 1000


def run_stream(
    client: Client,
    ads: AdSpec,
    corpus: Corpus,
    interval_ms: int,
    latest_model: Callable[[], Sequence[int]],
    keep_going: Callable[[float, StreamRun], bool],
    keep_inputs: bool = False,
) -> StreamRun:
    """Cut events into micro-batches every `interval_ms` of wall time and submit each as a
    stream task scored with `latest_model()`, while `keep_going(seconds since start, run)`.

    Event time runs with wall time from the start, so a micro-batch is submitted the moment
    its interval closes; its latency is from then to its result. With `keep_inputs`, the
    events and model of every micro-batch are kept, to check the results afterwards.
    """
    run = StreamRun()
    spec = dataclasses.asdict(ads)
    start = time.monotonic()
    cut_ms = interval_ms
    while keep_going(time.monotonic() - start, run):
        events = generate_events(ads, cut_ms - interval_ms, cut_ms, corpus.draw_document)
        word_topics = latest_model()
        delay = start + cut_ms / 1000 - time.monotonic()
        if delay > 0:
            time.sleep(delay)  # pacing the source, as a real stream would arrive
        submitted = time.monotonic()
        future = client.submit(score_views, events, word_topics=word_topics, spec=spec)
        future.add_done_callback(partial(_record_latency, run, len(run.futures), submitted))
        run.futures.append(future)
        if keep_inputs:
            run.events.append(msgpack.packb(events))
            run.word_topics.append(word_topics)
        cut_ms += interval_ms
    return run

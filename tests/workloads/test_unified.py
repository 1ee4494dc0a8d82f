"""The unified application end to end: the stream job scores with the model the batch job
trains, on one cluster, and both give exactly what a direct computation gives."""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import asdict

import pytest

from tidal.runtime.client import Client
from tidal.runtime.cluster import LocalCluster
from tidal.runtime.kept import pack_kept
from tidal.workloads.ads import AdSpec, campaign_table, generate_events
from tidal.workloads.topics import CorpusSpec, Trainer, make_corpus, train_locally
from tidal.workloads.unified import page_topic, run_stream, score_views, train_on

ADS = AdSpec(campaigns=5, ads_per_campaign=4, events_per_s=2000, window_ms=100, seed=2)


def test_a_page_gets_the_topic_most_of_its_words_have_and_ties_go_to_the_first():
    word_topics = [0, 1, 1, 2, 2]
    assert page_topic([1, 2, 0], word_topics) == 1
    assert page_topic([3, 1, 4, 2], word_topics) == 2  # 2 and 1 tie; 2 came first
    assert page_topic([0], word_topics) == 0


def direct_scores(events, word_topics, spec):
    """The unified query written out by hand."""
    table = campaign_table(spec.campaigns, spec.ads_per_campaign, spec.seed)
    counts = {}
    for ad_id, kind, time_ms, page in events:
        if kind == "view":
            votes = {}
            for word in page:
                votes[word_topics[word]] = votes.get(word_topics[word], 0) + 1
            most = max(votes.values())
            topic = next(word_topics[w] for w in page if votes[word_topics[w]] == most)
            key = (table[ad_id], time_ms - time_ms % spec.window_ms, topic)
            counts[key] = counts.get(key, 0) + 1
    return counts


def test_score_views_equals_a_direct_computation():
    corpus = make_corpus(CorpusSpec(documents=10, vocabulary=50, topics=3, seed=1))
    word_topics = Trainer(corpus, 1).model.word_topics()
    events = generate_events(ADS, 0, 300, corpus.draw_document)
    assert score_views(events, word_topics, asdict(ADS)) == direct_scores(events, word_topics, ADS)


@pytest.mark.slow
def test_on_one_cluster_the_model_is_exact_despite_suspensions_and_so_are_the_counts():
    # Two sweeps of two ~0.15 s tasks on one executor; stream micro-batches every 20 ms
    # suspend them (lb), and use whichever model the last finished sweep produced.
    corpus = make_corpus(CorpusSpec(documents=2 * 1_200, words_per_document=20, seed=7))
    expected = train_locally(corpus, sweeps=2, partitions=2)
    models = [Trainer(corpus, 2).model.word_topics()]
    batch_futures = []
    with LocalCluster(executors=1, policy="lb") as cluster, Client(cluster) as client:
        trained = {}

        def train():
            trained["model"] = train_on(
                client,
                corpus,
                sweeps=2,
                partitions=2,
                on_sweep=lambda model, futures: (
                    models.append(model.word_topics()),
                    batch_futures.extend(futures),
                ),
            )

        trainer = threading.Thread(target=train)
        trainer.start()
        stream = run_stream(
            client,
            ADS,
            corpus,
            interval_ms=20,
            latest_model=lambda: models[-1],
            keep_going=lambda _elapsed, _run: trainer.is_alive(),
            keep_inputs=True,
        )
        trainer.join(120)
        client.gather(stream.futures, timeout=60)

    assert trained["model"] == expected
    assert sum(f.statistics().suspensions for f in batch_futures) > 0
    assert len(stream.futures) > 10
    expected_counts = Counter()
    assert len(stream.events) == len(stream.word_topics) == len(stream.futures)
    for i, word_topics in enumerate(stream.word_topics):
        expected_counts.update(direct_scores(stream.micro_batch_events(i), word_topics, ADS))
    assert stream.counts() == expected_counts
    assert {tuple(m) for m in stream.word_topics} != {tuple(models[0])}  # it saw new models


@pytest.mark.slow
def test_the_partitions_state_stays_on_the_executors_and_only_counts_come_back():
    corpus = make_corpus(CorpusSpec(documents=4 * 100, words_per_document=20, seed=5))
    sweeps, partitions = 3, 4
    expected = train_locally(corpus, sweeps, partitions)
    state_bytes = sum(len(pack_kept(p)) for p in Trainer(corpus, partitions).partition_inputs())
    with LocalCluster(executors=2, policy="lb") as cluster, Client(cluster) as client:
        assert train_on(client, corpus, sweeps, partitions) == expected
        traffic = client.traffic.as_dict()
        placements = client.status()["counters"]["placements"]
    # The documents went out once (not once a sweep), and no state came back: only each
    # partition's word-topic counts: a row of `topics` small ints (a byte each) per word.
    assert state_bytes <= traffic["sent_bytes"] < state_bytes + sweeps * 20_000
    counts_bytes = corpus.spec.vocabulary * (1 + corpus.spec.topics) + 16
    assert traffic["received_bytes"] <= sweeps * partitions * counts_bytes
    # Every task but the first sweep's took a kept state as input (a launch each, at least).
    assert placements["local"] + placements["remote"] >= 2 * sweeps * partitions - partitions


@pytest.mark.slow
def test_training_survives_an_executor_lost_between_sweeps_with_the_same_model():
    # Under locality each partition's states pile up on one executor; losing it, they are
    # computed again from the documents, sweep after sweep, by the same deterministic tasks.
    corpus = make_corpus(CorpusSpec(documents=4 * 100, words_per_document=20, seed=6))
    expected = train_locally(corpus, sweeps=4, partitions=4)
    with LocalCluster(executors=2, heartbeat_ms=100) as cluster, Client(cluster) as client:

        def on_sweep(model, _futures):
            if model.sweeps == 2:
                lost = cluster.processes[1]  # an executor (0 is the scheduler)
                lost.kill()
                lost.wait()

        assert train_on(client, corpus, 4, 4, on_sweep) == expected
        assert client.status()["counters"]["recomputations"] > 0

"""The unified application end to end: the stream job scores with the model the batch job
trains, on one cluster, and both give exactly what a direct computation gives."""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import asdict

import pytest

from tidal.runtime.client import Client
from tidal.runtime.cluster import LocalCluster
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
    for events, word_topics in zip(stream.events, stream.word_topics, strict=True):
        expected_counts.update(direct_scores(events, word_topics, ADS))
    assert stream.counts() == expected_counts
    assert {tuple(m) for m in stream.word_topics} != {tuple(models[0])}  # it saw new models

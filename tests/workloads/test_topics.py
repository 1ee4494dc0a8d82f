"""The batch workload: LDA by collapsed Gibbs sampling (AD-LDA), deterministic from a seed."""

from __future__ import annotations

import math

from tests.runtime.test_kernel import Transport, interrupting, run_to_completion
from tidal.runtime import protocol as p
from tidal.runtime.kernel import Kernel
from tidal.workloads.topics import (
    CorpusSpec,
    Trainer,
    count_topics,
    make_corpus,
    resample,
    resample_locally,
    resample_state,
    train_locally,
)

SMALL = CorpusSpec(documents=120, words_per_document=30, vocabulary=60, topics=4, seed=3)


def test_the_corpus_is_drawn_from_the_seed_alone():
    first, again = make_corpus(SMALL), make_corpus(SMALL)
    assert first.documents == again.documents
    assert make_corpus(CorpusSpec(**{**SMALL.__dict__, "seed": 4})).documents != first.documents
    assert len(first.documents) == SMALL.documents
    assert all(len(d) == SMALL.words_per_document for d in first.documents)
    assert all(0 <= w < SMALL.vocabulary for d in first.documents for w in d)


def test_a_sweep_keeps_the_counts_consistent_with_the_assignments():
    trainer = Trainer(make_corpus(SMALL), partitions=3)
    before = trainer.model
    assert [len(part) for part in trainer.partition_inputs()] == [40, 40, 40]
    model = trainer.sweep(resample_locally)
    tokens = SMALL.documents * SMALL.words_per_document
    assert sum(model.topic_totals) == tokens == sum(before.topic_totals)
    assert [sum(row[k] for row in model.word_topic) for k in range(SMALL.topics)] == (
        model.topic_totals
    )
    assert model.sweeps == 1 and model.word_topic != before.word_topic  # it did resample


def log_likelihood(trainer: Trainer) -> float:
    """Per-token log-likelihood of the corpus under the point estimates of theta and phi."""
    spec, model = trainer.corpus.spec, trainer.model
    phi = [
        [
            (row[k] + spec.beta) / (model.topic_totals[k] + spec.vocabulary * spec.beta)
            for k in range(spec.topics)
        ]
        for row in model.word_topic
    ]
    total = 0.0
    for words, topics in zip(trainer.corpus.documents, trainer.assignments, strict=True):
        theta = [
            (topics.count(k) + spec.alpha) / (len(words) + spec.topics * spec.alpha)
            for k in range(spec.topics)
        ]
        total += sum(
            math.log(sum(t * f for t, f in zip(theta, phi[w], strict=True))) for w in words
        )
    return total / (len(trainer.corpus.documents) * spec.words_per_document)


def test_training_fits_the_corpus_better_sweep_after_sweep():
    trainer = Trainer(make_corpus(SMALL), partitions=2)
    likelihoods = [log_likelihood(trainer)]
    for _ in range(8):
        trainer.sweep(resample_locally)
        likelihoods.append(log_likelihood(trainer))
    assert likelihoods[-1] > likelihoods[0] + 0.15  # random topics -> learned ones
    assert likelihoods[8] > likelihoods[4] > likelihoods[0]


def test_training_is_deterministic_and_depends_on_the_partitioning_only_as_ad_lda_does():
    corpus = make_corpus(SMALL)
    one = train_locally(corpus, sweeps=2, partitions=3)
    assert train_locally(corpus, sweeps=2, partitions=3) == one
    # One partition is exact collapsed Gibbs sampling; three see stale counts across parts.
    assert train_locally(corpus, sweeps=2, partitions=1) != one


def test_partitions_that_keep_their_state_and_send_back_counts_train_the_same_model():
    # The kept-state sweep of workloads/unified.py's `train_on`, run here: each partition's
    # records go from one sweep to the next; the driver sees only their counts.
    corpus = make_corpus(SMALL)
    trainer = Trainer(corpus, partitions=3)
    states = trainer.partition_inputs()
    first = [list(resample(part, **trainer.sweep_arguments())) for part in states]
    for _ in range(3):
        states = [list(resample_state(part, **trainer.sweep_arguments())) for part in states]
        trainer.absorb_counts(count_topics(part, **trainer.count_arguments()) for part in states)
        if trainer.model.sweeps == 1:  # the same topics as `resample`'s, with the words
            assert [[[d, t] for d, _, t in part] for part in states] == first
            assert [[w for _, w, _ in part] for part in states] == [
                [w for _, w, _ in part] for part in trainer.partition_inputs()
            ]
    assert trainer.model == train_locally(corpus, sweeps=3, partitions=3)


def test_a_sweep_suspended_between_documents_gives_the_uninterrupted_result():
    trainer = Trainer(make_corpus(SMALL), partitions=1)
    [part] = trainer.partition_inputs()
    arguments = trainer.sweep_arguments()
    expected = list(resample(part, **arguments))
    transport = Transport()
    kernel = Kernel(transport)
    kernel.launch("sweep", resample, [interrupting(kernel, "sweep", part, every=7)], arguments)

    resumptions = run_to_completion(kernel, transport, "sweep")

    done = transport.outcome("sweep")
    assert isinstance(done, p.Finished)
    assert resumptions == len(part) // 7 == done.stats["suspensions"]
    assert done.result == expected

"""Batch workload: a topic model (LDA) trained by collapsed Gibbs sampling, partition-parallel.

The corpus is drawn from LDA's own generative story with a seed, so nothing ships and every
run sees the same documents. Training follows AD-LDA (Newman et al., "Distributed
Algorithms for Topic Models", JMLR 2009): in each sweep, one task per partition resamples
the topic of every word of its documents against a snapshot of the global word-topic counts
(updating its own copy as it goes), and the driver rebuilds the global counts from all the
new assignments before the next sweep. On a cluster the assignments need not travel: each
partition's state stays where its sweep ran (`resample_state`, kept), and only its
word-topic counts (`count_topics`) come back to be summed (workloads/unified.py).

Each document is one input record, so a task can be suspended between any two documents.
Its random numbers come from a generator seeded per document and sweep, so where, how often
and on which executor a task was suspended cannot change the trained model: a run on a
cluster equals `train_locally` with the same seed, bit for bit.
"""

from __future__ import annotations

import random
from bisect import bisect
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from itertools import accumulate, pairwise
from typing import Any

from tidal.runtime.task import task

__all__ = [
    "Corpus",
    "CorpusSpec",
    "TopicModel",
    "Trainer",
    "count_topics",
    "make_corpus",
    "resample",
    "resample_locally",
    "resample_state",
    "train_locally",
]


@dataclass(frozen=True)
class CorpusSpec:
    """The size of the synthetic corpus and the model's priors."""

    documents: int = 2000
    words_per_document: int = 40
    vocabulary: int = 500
    topics: int = 8
    alpha: float = 0.1  # document-topic prior
    beta: float = 0.01  # topic-word prior
    seed: int = 0


@dataclass(frozen=True)
class Corpus:
    spec: CorpusSpec
    documents: list[list[int]]  # word ids, one list per document
    topic_words: list[list[float]]  # the true topics' cumulative word weights, for drawing

    def draw_document(self, rng: random.Random, length: int) -> list[int]:
        """A new document from the same generative story (used for stream events)."""
        return _draw_document(rng, self.topic_words, self.spec, length)


def make_corpus(spec: CorpusSpec = CorpusSpec()) -> Corpus:
    """Draw a corpus from LDA's generative story: topics ~ Dir(beta'), documents ~ Dir(alpha')."""
    rng = random.Random(spec.seed)
    # Sparse-ish true topics, so there is something to find: each favours its own words.
    topic_words = [
        list(accumulate(_dirichlet(rng, [0.05] * spec.vocabulary))) for _ in range(spec.topics)
    ]
    documents = [
        _draw_document(rng, topic_words, spec, spec.words_per_document)
        for _ in range(spec.documents)
    ]
    return Corpus(spec, documents, topic_words)


def _draw_document(
    rng: random.Random, topic_words: list[list[float]], spec: CorpusSpec, length: int
) -> list[int]:
    mixture = _dirichlet(rng, [0.3] * spec.topics)
    topics = rng.choices(range(spec.topics), mixture, k=length)
    # Inverse-CDF sampling on the cumulative weights (what random.choices does, inlined).
    return [bisect(topic_words[z], rng.random() * topic_words[z][-1]) for z in topics]


def _dirichlet(rng: random.Random, concentration: Sequence[float]) -> list[float]:
    draws = [rng.gammavariate(a, 1.0) for a in concentration]
    total = sum(draws) or 1.0
    return [x / total for x in draws]


@task(inputs=["documents"])
def resample(
    documents: Iterable[Sequence[Any]],
    word_topic: list[list[int]],
    topic_totals: list[int],
    sweep_seed: int,
    alpha: float,
    beta: float,
):
    """One Gibbs sweep over a partition (`resample_state`): yield `[doc_id, new topics]`
    for each document, what `Trainer.absorb` takes."""
    for doc_id, _words, topics in resample_state(
        documents, word_topic, topic_totals, sweep_seed, alpha, beta
    ):
        yield [doc_id, topics]


@task(inputs=["documents"])
def resample_state(
    documents: Iterable[Sequence[Any]],
    word_topic: list[list[int]],
    topic_totals: list[int],
    sweep_seed: int,
    alpha: float,
    beta: float,
):
    """One Gibbs sweep over a partition: yield its next state, `[doc_id, words, new topics]`
    for each document, the input of the same partition's next sweep.

    `documents` holds `[doc_id, words, topics]` records; `word_topic[w][k]` and
    `topic_totals[k]` are the global counts at the start of the sweep. Run with `keep=True`,
    the state stays on the executor between sweeps (workloads/unified.py's `train_on`).
    """
    word_topic = [list(row) for row in word_topic]  # our copy, kept current as we go
    totals = list(topic_totals)
    k_range = range(len(totals))
    v_beta = len(word_topic) * beta
    for doc_id, words, old_topics in documents:
        rng = random.Random(sweep_seed * 1_000_003 + doc_id)
        topics = list(old_topics)
        in_doc = [0] * len(totals)
        for z in topics:
            in_doc[z] += 1
        for i, word in enumerate(words):
            row, z = word_topic[word], topics[i]
            in_doc[z] -= 1
            row[z] -= 1
            totals[z] -= 1
            weights = [
                (in_doc[k] + alpha) * (row[k] + beta) / (totals[k] + v_beta) for k in k_range
            ]
            z = rng.choices(k_range, weights)[0]
            in_doc[z] += 1
            row[z] += 1
            totals[z] += 1
            topics[i] = z
        yield [doc_id, words, topics]


@task(inputs=["documents"])
def count_topics(documents: Iterable[Sequence[Any]], vocabulary: int, topics: int):
    """A partition's word-topic counts, `counts[w][k]`, from its `[doc_id, words, topics]`
    records: what the driver sums into the global counts (`Trainer.absorb_counts`)."""
    counts = [[0] * topics for _ in range(vocabulary)]
    for _doc_id, words, assigned in documents:
        for word, z in zip(words, assigned, strict=True):
            counts[word][z] += 1
    return counts


@dataclass
class TopicModel:
    """Global word-topic counts: what a sweep produces and what the stream job scores with."""

    word_topic: list[list[int]]
    topic_totals: list[int]
    sweeps: int = 0

    def word_topics(self) -> list[int]:
        """Each word's most likely topic: the compact model shipped to stream tasks."""
        return [max(range(len(row)), key=row.__getitem__) for row in self.word_topic]


@dataclass
class Trainer:
    """AD-LDA's driver: holds the assignments, cuts partitions, merges a sweep's results.

    A sweep's results come back either as every document's new topics (`sweep`, `absorb`)
    or, when the partitions keep their assignments where they were computed, as each
    partition's word-topic counts (`absorb_counts`); the global counts are the same sum.
    """

    corpus: Corpus
    partitions: int
    assignments: list[list[int]] = field(init=False)
    model: TopicModel = field(init=False)

    def __post_init__(self) -> None:
        spec = self.corpus.spec
        rng = random.Random(spec.seed + 1)
        self.assignments = [
            [rng.randrange(spec.topics) for _ in words] for words in self.corpus.documents
        ]
        self.model = self._count(sweeps=0)

    def partition_inputs(self) -> list[list[list[Any]]]:
        """The documents as `[doc_id, words, topics]` records, in `partitions` contiguous parts."""
        docs = self.corpus.documents
        bounds = [len(docs) * i // self.partitions for i in range(self.partitions + 1)]
        return [
            [[d, docs[d], self.assignments[d]] for d in range(start, end)]
            for start, end in pairwise(bounds)
        ]

    def sweep_arguments(self) -> dict[str, Any]:
        spec = self.corpus.spec
        return {
            "word_topic": self.model.word_topic,
            "topic_totals": self.model.topic_totals,
            "sweep_seed": spec.seed * 7919 + self.model.sweeps,
            "alpha": spec.alpha,
            "beta": spec.beta,
        }

    def count_arguments(self) -> dict[str, Any]:
        """`count_topics`'s arguments besides a partition's records."""
        return {"vocabulary": self.corpus.spec.vocabulary, "topics": self.corpus.spec.topics}

    def sweep(
        self, run: Callable[[list[list[list[Any]]], dict[str, Any]], Iterable[Any]]
    ) -> TopicModel:
        """One sweep: `run(partition inputs, sweep arguments)` returns each partition's
        records (`resample_locally`, or a cluster's map); they become the new model."""
        return self.absorb(run(self.partition_inputs(), self.sweep_arguments()))

    def absorb(self, results: Iterable[Iterable[Sequence[Any]]]) -> TopicModel:
        """Take every partition's `[doc_id, topics]` records; rebuild the global counts."""
        for records in results:
            for doc_id, topics in records:
                self.assignments[doc_id] = list(topics)
        self.model = self._count(sweeps=self.model.sweeps + 1)
        return self.model

    def absorb_counts(self, counts: Iterable[Sequence[Sequence[int]]]) -> TopicModel:
        """Take every partition's word-topic counts after a sweep (`count_topics` of its
        `resample_state` records); their sum is the new model.

        `assignments` are left as they were: the partitions hold the current ones.
        """
        # Per word, the partitions' rows; per topic, their counts: summed.
        word_topic = [list(map(sum, zip(*rows, strict=True))) for rows in zip(*counts, strict=True)]
        self.model = self._model(word_topic, sweeps=self.model.sweeps + 1)
        return self.model

    def _count(self, sweeps: int) -> TopicModel:
        spec = self.corpus.spec
        docs = self.corpus.documents
        records = zip(range(len(docs)), docs, self.assignments, strict=True)
        return self._model(count_topics(records, spec.vocabulary, spec.topics), sweeps)

    def _model(self, word_topic: list[list[int]], sweeps: int) -> TopicModel:
        totals = [sum(row[k] for row in word_topic) for k in range(self.corpus.spec.topics)]
        return TopicModel(word_topic, totals, sweeps)


def resample_locally(
    partitions: list[list[list[Any]]], arguments: dict[str, Any]
) -> list[list[list[Any]]]:
    """Run a sweep's tasks here, one partition after another (see `Trainer.sweep`)."""
    return [list(resample(part, **arguments)) for part in partitions]


def train_locally(corpus: Corpus, sweeps: int, partitions: int) -> TopicModel:
    """The single-process reference: the same sweeps, one partition after another."""
    trainer = Trainer(corpus, partitions)
    for _ in range(sweeps):
        trainer.sweep(resample_locally)
    return trainer.model

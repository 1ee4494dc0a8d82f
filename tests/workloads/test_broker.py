"""The demo's stream job on a real Redis (workloads/broker.py): events produced at a rate,
scored a micro-batch at a time, every view counted exactly once, latencies from event time."""

from __future__ import annotations

import pytest

from tidal.runtime.client import Client
from tidal.runtime.cluster import LocalCluster
from tidal.runtime.redis_server import RedisServer
from tidal.workloads.ads import AdSpec
from tidal.workloads.broker import run_stream_broker
from tidal.workloads.topics import CorpusSpec, make_corpus

pytestmark = pytest.mark.slow


def test_the_stream_job_on_redis_counts_every_view_once_and_measures_event_time():
    corpus = make_corpus(CorpusSpec(documents=50, vocabulary=60, topics=4))
    ads = AdSpec(campaigns=10, ads_per_campaign=4, events_per_s=1000, seed=1)
    model = [w % 4 for w in range(60)]
    with (
        RedisServer() as server,
        LocalCluster(executors=1) as cluster,
        Client(cluster) as client,
    ):
        run = run_stream_broker(
            client, server.url, ads, corpus, 50, lambda: model, lambda elapsed, _: elapsed < 1.5
        )
        import redis

        left = redis.Redis.from_url(server.url).dbsize()
    assert run.produced >= 1000 and run.views_produced > 0
    assert run.exactly_once and run.views_counted == run.views_produced
    assert run.micro_batches >= 10 and run.malformed == 0
    assert len(run.latencies_ms) == run.produced and min(run.latencies_ms) >= 0
    assert left == 0  # the run leaves Redis as it found it


def test_a_demo_source_that_is_not_redis_or_does_not_answer_is_refused_with_the_reason():
    from tidal.runtime.demo import source_problem

    assert "must be a redis://HOST:PORT URL" in source_problem("kafka://somewhere:9092")
    with RedisServer() as server:
        assert source_problem(server.url) is None
        url = server.url
    assert source_problem(url).startswith(f"cannot reach Redis at {url}")

"""Fixtures the client tests share: a fake scheduler (tests/stub.py), a client of it, and a
check that neither left a thread running (modules that want it name it in `pytestmark`)."""

from __future__ import annotations

import threading

import pytest

from tests.stub import FakeScheduler
from tidal.runtime.client import Client


@pytest.fixture
def no_thread_left_behind():
    yield
    left = [
        t.name for t in threading.enumerate() if t.name in ("tidal-client-io", "fake-scheduler")
    ]
    assert not left, f"threads still running: {left}"


@pytest.fixture
def fake():
    with FakeScheduler() as fake:
        yield fake


@pytest.fixture
def client(fake):
    with Client(fake, timeout=5) as client:
        yield client

"""The bulk frame reader (runtime/frames.py): the C reader and the pyzmq one give the same
messages, in order, drop exactly the peers whose cool-down has not ended, and never block."""

from __future__ import annotations

import pytest
import zmq

from tidal.runtime.frames import FrameReader


@pytest.fixture
def router():
    context = zmq.Context()
    sockets = []

    def open_pair(peers: int):
        router = context.socket(zmq.ROUTER)
        router.linger = 0
        port = router.bind_to_random_port("tcp://127.0.0.1")
        dealers = []
        for i in range(peers):
            dealer = context.socket(zmq.DEALER)
            dealer.linger = 0
            dealer.routing_id = b"peer-%d" % i
            dealer.connect(f"tcp://127.0.0.1:{port}")
            dealers.append(dealer)
        sockets.extend([router, *dealers])
        return router, dealers

    yield open_pair
    for socket in sockets:
        socket.close()
    context.term()


def send_and_wait(router, dealers, per_peer):
    """Each dealer sends `per_peer` messages (some of several parts); wait until the router
    has them all. Returns what was sent, by peer."""
    sent = {}
    for i, dealer in enumerate(dealers):
        mine = []
        for n in range(per_peer):
            parts = [b"frame %d of %d" % (n, i)] if n % 3 else [b"a", b"", b"c" * 3000]
            dealer.send_multipart(parts)
            mine.append(parts)
        sent[dealer.routing_id] = mine
    assert router.poll(10_000)
    return sent


def read_all(reader, ignored, now, at_once=7):
    kept, dropped, size = [], 0, 0
    while True:
        messages, n, b = reader.read(at_once, ignored, now)
        assert len(messages) + n <= at_once
        if not messages and not n:
            return kept, dropped, size
        kept.extend(messages)
        dropped += n
        size += b


@pytest.mark.parametrize("native", [True, False])
def test_reads_whole_messages_in_order_and_drops_peers_in_their_cool_down(router, native):
    socket, dealers = router(4)
    reader = FrameReader(socket, native=native)
    if native and not reader.native:
        pytest.skip("the C frame reader is not built here")
    # peer-0 cools down until 50 (now is 10); peer-1's cool-down ended at 5; peer-2 unknown.
    ignored = {b"peer-0": 50.0, b"peer-1": 5.0, b"someone else": 99.0}
    sent = send_and_wait(socket, dealers, 30)
    seen = {}
    dropped = size = 0
    while sum(map(len, seen.values())) + dropped < 4 * 30:
        assert socket.poll(10_000)
        kept, n, b = read_all(reader, ignored, 10.0)
        dropped += n
        size += b
        for routing_id, *parts in kept:
            seen.setdefault(routing_id, []).append(parts)
    assert dropped == 30 and b"peer-0" not in seen
    assert seen == {rid: msgs for rid, msgs in sent.items() if rid != b"peer-0"}
    everything = sum(len(rid) + sum(map(len, m)) for rid, msgs in sent.items() for m in msgs)
    assert size == everything  # the dropped ones' bytes counted too
    assert reader.read(5, ignored, 10.0) == ([], 0, 0)  # nothing waits: returns at once


def test_the_c_reader_and_pyzmq_agree(router):
    socket, dealers = router(3)
    fast, slow = FrameReader(socket), FrameReader(socket, native=False)
    if not fast.native:
        pytest.skip("the C frame reader is not built here")
    ignored = {b"peer-1": 2.0}
    results = []
    for reader in (fast, slow):
        send_and_wait(socket, dealers, 50)
        got, dropped = [], 0
        while len(got) + dropped < 150:
            assert socket.poll(10_000)
            kept, n, _ = read_all(reader, ignored, 1.0, at_once=16)
            got.extend(kept)
            dropped += n
        results.append((sorted(map(tuple, got)), dropped))
    assert results[0] == results[1] and results[0][1] == 50


@pytest.mark.parametrize("native", [True, False])
def test_a_closed_socket_raises_zmq_error(router, native):
    socket, _ = router(0)
    reader = FrameReader(socket, native=native)
    socket.close()
    with pytest.raises(zmq.ZMQError):
        reader.read(4, {}, 0.0)

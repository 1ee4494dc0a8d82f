"""The scheduler's ZeroMQ shell against real peers: handshake, bad frames, wrong peers.

A bad frame is dropped and logged; the scheduler keeps serving everyone else."""

from __future__ import annotations

import pytest
import zmq

from runtime import protocol as p
from runtime.client import Client
from runtime.cluster import LocalCluster
from workloads.synthetic import total

pytestmark = pytest.mark.slow


@pytest.fixture
def raw_peer():
    """A bare DEALER socket, closed by the fixture."""
    context = zmq.Context()
    sockets = []

    def connect(address):
        socket = context.socket(zmq.DEALER)
        socket.linger = 0
        socket.connect(address)
        sockets.append(socket)
        return socket

    yield connect
    for socket in sockets:
        socket.close()
    context.term()


def recv(socket, timeout_ms=10_000):
    assert socket.poll(timeout_ms), "no answer from the scheduler"
    return p.decode(socket.recv())


def test_a_peer_with_another_protocol_version_is_rejected_with_both_versions(raw_peer):
    with LocalCluster(executors=1) as cluster:
        peer = raw_peer(cluster.address)
        peer.send(p.encode(p.ClientHello(p.PROTOCOL_VERSION + 1, "old", 1, "h")))
        reject = recv(peer)
        assert isinstance(reject, p.Reject)
        assert str(p.PROTOCOL_VERSION + 1) in reject.reason
        assert f"version {p.PROTOCOL_VERSION}" in reject.reason


def test_garbage_and_misdirected_frames_are_dropped_and_jobs_still_run(raw_peer):
    with LocalCluster(executors=1) as cluster, Client(cluster) as client:
        attacker = raw_peer(cluster.address)
        for frame in [
            b"",
            b"\xc1",
            b"\x91\xa7unknown",
            b"\xdd\xff\xff\xff\xff",
            p.encode(p.Submit("j", "batch", 0, None, "m:f", None, [], 0)),  # no hello
            p.encode(p.Batch([b"\xc1", p.encode(p.Ping("x", 1))])),
        ]:
            attacker.send(frame)
        attacker.send_multipart([b"two", b"frames"])
        # A request before hello is answered once (within a heartbeat) with "rejoin": to
        # the scheduler it looks like a peer of the scheduler that ran here before.
        assert isinstance(recv(attacker), p.Rejoin)
        # A registered client that sends an executor's report is refused too.
        attacker.send(p.encode(p.ClientHello(p.PROTOCOL_VERSION, "mallory", 1, "h")))
        assert isinstance(recv(attacker), p.ClientWelcome)
        attacker.send(p.encode(p.Finished("x/0", 0, p.pack_payload("forged"), {})))
        attacker.send(p.encode(p.Ping("still-here", 7)))
        pong = recv(attacker)
        assert isinstance(pong, p.Pong) and pong.request_id == "still-here"
        assert client.submit(total, [1, 2, 3]).result(timeout=30) == 6
        assert cluster.processes[0].poll() is None


def test_results_of_one_client_are_not_sent_to_another(raw_peer):
    with LocalCluster(executors=1) as cluster, Client(cluster) as client:
        other = raw_peer(cluster.address)
        other.send(p.encode(p.ClientHello(p.PROTOCOL_VERSION, "other", 1, "h")))
        assert isinstance(recv(other), p.ClientWelcome)
        assert client.submit(total, [4]).result(timeout=30) == 4
        other.send(p.encode(p.Cancel([f"{client.client_id}-1/0"])))  # not its task: ignored
        other.send(p.encode(p.Ping("p", 1)))
        assert isinstance(recv(other), p.Pong)  # and nothing else arrived before it

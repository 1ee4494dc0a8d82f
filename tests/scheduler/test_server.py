"""The scheduler's ZeroMQ shell against real peers: handshake, bad frames, wrong peers.

A bad frame is dropped and logged; the scheduler keeps serving everyone else."""

from __future__ import annotations

import threading

import msgpack
import pytest
import zmq

from tidal.runtime import payloads
from tidal.runtime import protocol as p
from tidal.runtime.client import Client
from tidal.runtime.cluster import LocalCluster
from tidal.runtime.guard import BAD_FRAME_LIMIT, STRANGER_LIMIT
from tidal.scheduler import journal as journal_module
from tidal.scheduler import server as server_module
from tidal.scheduler.admission import UNREADABLE_SUBMITS, UnreadableSubmits
from tidal.scheduler.delivery import HELD_LAUNCHES_MAX, HeldLaunches
from tidal.scheduler.journal import Journal
from tidal.scheduler.peers import PeerTable
from tidal.scheduler.server import SchedulerServer
from tidal.workloads.synthetic import spin, total

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
    """The next message but probes and lanes: after any disconnection the scheduler probes
    clients' connections with an empty `results` (scheduler/liveness.py), and it tells a
    client of the executors' lanes (runtime/lanes.py) after its welcome and as they change."""
    while True:
        assert socket.poll(timeout_ms), "no answer from the scheduler"
        msg = p.decode(socket.recv())
        if msg != p.Results([]) and type(msg) is not p.Lanes:
            return msg


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
        attacker.send(p.encode(p.Finished("x/0", 0, payloads.pack_payload("forged"), {})))
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


# ---- disconnection: what the scheduler does with a peer that keeps sending bad frames --------


def test_a_client_that_keeps_sending_bad_frames_is_disconnected_and_may_come_back(raw_peer):
    with LocalCluster(executors=1) as cluster, Client(cluster) as client:
        mallory = raw_peer(cluster.address)
        mallory.send(p.encode(p.ClientHello(p.PROTOCOL_VERSION, "mallory", 1, "h")))
        assert isinstance(recv(mallory), p.ClientWelcome)
        for _ in range(BAD_FRAME_LIMIT):
            mallory.send(b"\xc1")
        reject = recv(mallory)
        assert isinstance(reject, p.Reject)
        assert reject.reason.startswith(f"disconnected: {BAD_FRAME_LIMIT} bad frames within")
        # In its cool-down the connection is ignored, undecoded: no pong, ever.
        mallory.send(p.encode(p.Ping("ignored", 1)))
        status = client.wait_for_status(lambda s: s["bad_input"]["ignored_frames"] >= 1)
        assert status["bad_input"]["disconnects"] == 1
        assert status["bad_input"]["bad_frames"] == BAD_FRAME_LIMIT
        assert not mallory.poll(0)
        # A new connection may say hello again, and is served.
        again = raw_peer(cluster.address)
        again.send(p.encode(p.ClientHello(p.PROTOCOL_VERSION, "mallory", 1, "h")))
        assert isinstance(recv(again), p.ClientWelcome)
        again.send(p.encode(p.Ping("back", 2)))
        assert recv(again) == p.Pong("back", 2)
        assert client.submit(total, [1, 2]).result(timeout=30) == 3


def test_out_of_place_frames_before_hello_are_dropped_but_never_disconnect(raw_peer):
    # A peer reconnecting after a scheduler restart may send reports before its hello: it is
    # asked to rejoin, never disconnected; past STRANGER_LIMIT of them its connection is
    # ignored for a while (Tidal's peers say hello on a new connection).
    with LocalCluster(executors=1) as cluster, Client(cluster) as client:
        stranger = raw_peer(cluster.address)
        stranger.send(p.encode(p.Heartbeat("ghost", "n", 0, 0, 1, 0, 0, 0, 1, 1, 1.0)))
        assert isinstance(recv(stranger), p.Rejoin)
        for i in range(3 * BAD_FRAME_LIMIT):
            stranger.send(p.encode(p.Heartbeat("ghost", "n", i, 0, 1, 0, 0, 0, 1, 1, 1.0)))
        stranger.send(p.encode(p.ClientHello(p.PROTOCOL_VERSION, "early", 1, "h")))
        bad = client.wait_for_status(
            lambda s: s["bad_input"]["ignored_frames"] >= 3 * BAD_FRAME_LIMIT + 2 - STRANGER_LIMIT
        )["bad_input"]
        assert bad["disconnects"] == 0 and bad["bad_frames"] == 0 and bad["cooling_down"] == 1
        while stranger.poll(0):  # no reject, and the hello in the cool-down unanswered
            assert isinstance(recv(stranger), p.Rejoin)  # (again, if 0.5 s went by)
        again = raw_peer(cluster.address)
        again.send(p.encode(p.ClientHello(p.PROTOCOL_VERSION, "late", 1, "h")))
        assert isinstance(recv(again), p.ClientWelcome)


def test_an_executor_sending_bad_frames_is_disconnected_and_its_tasks_run_elsewhere(raw_peer):
    # Executors are declared lost after 3 x 10 s of silence here: only the disconnection can
    # give the black hole's task back in time.
    with (
        LocalCluster(executors=1, heartbeat_ms=10_000) as cluster,
        Client(cluster) as client,
    ):
        hole = raw_peer(cluster.address)
        hole.send(p.encode(p.Hello(p.PROTOCOL_VERSION, "black-hole", "n", 1, 1, "h")))
        assert isinstance(recv(hole), p.Welcome)
        futures = client.map(total, [[i] for i in range(6)], chunksize=1)
        while not isinstance(launched := recv(hole), p.Launch | p.Batch):
            pass  # an ack, say
        items = p.unbatch(launched) if isinstance(launched, p.Batch) else [launched]
        assert any(isinstance(item, p.Launch) for item in items)
        for _ in range(BAD_FRAME_LIMIT):
            hole.send(p.encode(p.Ping("executors do not ping", 0)))
        assert client.gather(futures, timeout=20) == list(range(6))
        while not isinstance(reject := recv(hole), p.Reject):
            pass  # launches sent before the disconnection
        assert "ping is not sent by executors" in reject.reason
        [hole_status] = [
            e for e in client.status()["executors"] if e["executor_id"] == "black-hole"
        ]
        assert hole_status["state"] == "lost"


def test_an_executor_whose_connection_says_hello_as_another_is_lost_at_once(raw_peer):
    # Heartbeats 10 s apart: only the hello can make it lost within this test.
    with LocalCluster(executors=1, heartbeat_ms=10_000) as cluster, Client(cluster) as client:
        peer = raw_peer(cluster.address)
        peer.send(p.encode(p.Hello(p.PROTOCOL_VERSION, "first", "n", 1, 1, "h")))
        assert isinstance(recv(peer), p.Welcome)
        peer.send(p.encode(p.Hello(p.PROTOCOL_VERSION, "second", "n", 1, 1, "h")))
        while not isinstance(recv(peer), p.Welcome):
            pass  # an ack, say
        states = {e["executor_id"]: e["state"] for e in client.status()["executors"]}
        assert states["first"] == "lost" and states["second"] == "alive"


class HeldJournal(Journal):
    """A journal whose writes of task results wait for the test (`release`)."""

    def __init__(self, path, **options):
        super().__init__(path, **options)
        self.writing_results = threading.Event()
        self.release = threading.Event()

    def write(self, *taken):
        if any(records is not None and records.results for records in taken):
            self.writing_results.set()
            assert self.release.wait(timeout=30), "the test never released the write"
        super().write(*taken)


def test_results_wait_for_the_journal_while_the_loop_and_launches_go_on(
    raw_peer, tmp_path, monkeypatch
):
    monkeypatch.setattr(server_module, "Journal", HeldJournal)
    monkeypatch.setattr(journal_module, "INLINE_BYTES", 0)  # every commit on the writer
    server = SchedulerServer("tcp://127.0.0.1:*", journal=tmp_path / "j.sqlite", realtime=False)
    thread = threading.Thread(target=server.serve, daemon=True)
    thread.start()
    try:
        executor = raw_peer(server.address)
        executor.send(p.encode(p.Hello(p.PROTOCOL_VERSION, "e0", "n0", 1, 1, "h", [])))
        assert isinstance(recv(executor), p.Welcome)
        client = raw_peer(server.address)
        client.send(p.encode(p.ClientHello(p.PROTOCOL_VERSION, "c", 1, "h")))
        assert isinstance(recv(client), p.ClientWelcome)
        payload = payloads.pack_call([[1, 2]], {})
        client.send(
            p.encode(p.Submit("c-1", "batch", 0, None, "m:f", None, [["c-1/0", payload]], 0))
        )
        launch = recv(executor)
        while not isinstance(launch, p.Launch):  # acks of heartbeats may come first
            launch = recv(executor)
        executor.send(p.encode(p.Started("c-1/0", 0, 1)))
        executor.send(p.encode(p.Finished("c-1/0", 0, payloads.pack_payload(3), {})))
        assert server.journal.writing_results.wait(timeout=30)
        # The result's pass is over and its commit is held: the loop still answers, and
        # the result (which that pass would have sent before this pong) waits.
        client.send(p.encode(p.Ping("r", 5)))
        assert isinstance(recv(client), p.Pong)
        server.journal.release.set()
        results = recv(client)
        assert isinstance(results, p.Results)
        assert results.items[0][:2] == ["c-1/0", "finished"]
    finally:
        server.journal.release.set()
        server.stop()
        thread.join(timeout=30)
        server.close()
    assert Journal(tmp_path / "j.sqlite").state.outcomes == {"c-1/0": "finished"}


# ---- a pass in which an executor says hello again ----------------------------------------------


class RecordingRouter:
    """Stands in for the server's ROUTER when a test drives a pass by hand: what was sent."""

    def __init__(self):
        self.sent: list[tuple[bytes, p.Message]] = []

    def send_multipart(self, frames):
        routing_id, frame = frames
        msg = p.decode(frame)
        for item in p.unbatch(msg) if isinstance(msg, p.Batch) else [msg]:
            self.sent.append((routing_id, item))

    def launches(self, routing_id):
        return [
            (m.task_id, m.attempt)
            for r, m in self.sent
            if r == routing_id and isinstance(m, p.Launch)
        ]


def test_launches_held_for_an_executor_are_not_sent_to_its_new_connection():
    # `tidal bench chunking` lost a future so: the scheduler spent seconds in one step on a
    # big submit, whose batch launches waited for the end of the pass; meanwhile the
    # executor, hearing nothing, said hello again on a new connection (listed later in the
    # same pass). The core took the launched task as lost and launched it again (attempt
    # 1); the held launch of attempt 0 went out too, to the new connection, ahead of it.
    # The executor queued attempt 0, refused attempt 1 ("already here"), and the core
    # ignored attempt 0's result as stale: the task stayed launched, its future pending.
    server = SchedulerServer("tcp://127.0.0.1:*", realtime=False)
    router, server._socket = server._socket, RecordingRouter()
    try:
        hello = p.Hello(p.PROTOCOL_VERSION, "e0", "n0", 1, 1, "h", [])
        server._handle_frames([b"old", p.encode(hello)])
        server._handle_frames([b"c", p.encode(p.ClientHello(p.PROTOCOL_VERSION, "c", 1, "h"))])
        server._flush_held()
        # One pass: the submit, then the executor's hello on its new connection.
        payload = payloads.pack_call([[1, 2]], {})
        submit = p.Submit("c-1", "batch", 0, None, "m:f", None, [["c-1/0", payload]], 0)
        server._handle_frames([b"c", p.encode(submit)])
        server._handle_frames([b"new", p.encode(hello)])
        server._flush_held()
        assert server._socket.launches(b"new") == [("c-1/0", 1)]
    finally:
        server._socket = router
        server.close()


def test_an_impostor_hello_with_a_live_executors_id_is_refused_and_disturbs_nothing(raw_peer):
    with (
        LocalCluster(executors=1, heartbeat_ms=100) as cluster,
        Client(cluster) as client,
    ):
        [real] = client.wait_for_status(lambda s: len(s["executors"]) == 1)["executors"]
        impostor = raw_peer(cluster.address)
        for _ in range(3):
            impostor.send(
                p.encode(p.Hello(p.PROTOCOL_VERSION, real["executor_id"], "n", 1, 1, "h"))
            )
        impostor.send(p.encode(p.ClientHello(p.PROTOCOL_VERSION, "impostor", 1, "h")))
        while isinstance(answer := recv(impostor), p.Rejoin):
            pass
        assert isinstance(answer, p.ClientWelcome)  # its hellos went unanswered, in order
        status = client.status()
        assert status["bad_input"]["bad_frames"] >= 3
        [after] = status["executors"]
        assert after["state"] == "alive" and after["executor_id"] == real["executor_id"]
        assert client.submit(total, [1, 2]).result(timeout=30) == 3


def test_frames_are_refused_before_they_are_decoded_when_they_cost_too_much(raw_peer):
    with LocalCluster(executors=1) as cluster, Client(cluster) as client:
        stranger = raw_peer(cluster.address)
        junk = p.encode(p.Batch([b"\xc1junk"] * 100_000))  # ~600 KB: a batch before hello
        stranger.send(junk)
        stranger.send(b"\x00" * (p.MAX_STRANGER_FRAME_BYTES + 1))
        talker = raw_peer(cluster.address)
        talker.send(p.encode(p.ClientHello(p.PROTOCOL_VERSION, "talker", 1, "h")))
        assert isinstance(recv(talker), p.ClientWelcome)
        talker.send(p.encode(p.Batch([p.encode(p.Ping(str(i), i)) for i in range(100_000)])))
        talker.send(p.encode(p.ClientHello(p.PROTOCOL_VERSION, "x" * 100_000, 1, "h")))
        talker.send(p.encode(p.Ping("after", 1)))
        assert recv(talker) == p.Pong("after", 1)  # no pong for any of the 100,000
        status = client.status()
        # The stranger's batch (out of place: not counted), its big frame, the client's
        # batch and its long id: each one bad frame, none decoded item by item.
        assert status["bad_input"]["bad_frames"] == 4
        assert client.submit(total, [1, 2]).result(timeout=30) == 3


def test_a_batch_with_bad_items_is_one_bad_frame_and_the_rest_is_handled():
    server = SchedulerServer.__new__(SchedulerServer)  # only what _handle_frames reads
    dropped, handled = [], []
    server._guard = type("G", (), {"cooling_down": lambda self, rid: False})()
    server._table = PeerTable()
    server._table.bind(b"e", ("executor", "e1"))
    server.max_frame_bytes = p.MAX_FRAME_BYTES
    server._unreadable = UnreadableSubmits(p.MAX_FRAME_BYTES)
    server._drop = lambda rid, exc: dropped.append(str(exc)) or False
    server._event_for = lambda rid, msg: handled.append(msg) or None
    good = p.encode(p.Goodbye("one"))
    server._handle_frames([b"e", p.encode(p.Batch([good, b"\xc1", good, b"\xc1", good]))])
    assert len(handled) == 3 and len(dropped) == 1 and "not valid msgpack" in dropped[0]
    server._drop = lambda rid, exc: dropped.append(str(exc)) or True  # the limit: disconnected
    server._handle_frames([b"e", p.encode(p.Batch([good, b"\xc1", good]))])
    assert len(handled) == 4 and len(dropped) == 2  # nothing after the disconnect
    server._handle_frames([b"e", p.encode(p.Batch([good] * (p.MAX_BATCH_ITEMS + 1)))])
    assert len(handled) == 4 and "a batch of 4,097 messages" in dropped[2]


def test_a_clients_submit_that_does_not_decode_fails_its_tasks_at_once(raw_peer):
    def submit(job_id, order=0):
        tasks = [[f"{job_id}/{i}", payloads.pack_call([[i]], {})] for i in range(2)]
        sub = p.Submit(job_id, "batch", 0, None, "tidal.workloads.synthetic:total", None, tasks, 0)
        frame = msgpack.unpackb(p.encode(sub))
        frame[3] = order  # "x": not an int, so the frame does not decode
        return msgpack.packb(frame)

    def failed(msg, job_id, why):
        assert isinstance(msg, p.Results)
        assert [item[:2] for item in msg.items] == [[f"{job_id}/{i}", "failed"] for i in (0, 1)]
        assert all("did not decode" in item[3][1] and why in item[3][1] for item in msg.items)

    with LocalCluster(executors=1) as cluster:
        client = raw_peer(cluster.address)
        client.send(p.encode(p.ClientHello(p.PROTOCOL_VERSION, "clumsy", 1, "h")))
        assert isinstance(recv(client), p.ClientWelcome)
        client.send(submit("a", order="x"))  # a frame of its own
        failed(recv(client), "a", "submit.order must be int")
        # In a batch: the items after the bad one are still handled.
        client.send(p.encode(p.Batch([submit("b", order="x"), p.encode(p.Ping("r", 1))])))
        answers = sorted((recv(client), recv(client)), key=lambda m: m.op)  # pong, results
        assert answers[0] == p.Pong("r", 1)
        failed(answers[1], "b", "submit.order must be int")
        # A batch inside a batch (a client bug once sent one): its submits fail too.
        inner = p.encode(p.Batch([submit("c"), p.encode(p.Ping("s", 2))]))
        client.send(p.encode(p.Batch([inner, p.encode(p.Ping("t", 3))])))
        answers = sorted((recv(client), recv(client)), key=lambda m: m.op)
        assert answers[0] == p.Pong("t", 3)
        failed(answers[1], "c", "is itself a batch")
        client.send(submit("d"))  # a sound submit still runs
        results = []
        while len(results) < 2:
            results += recv(client).items
        assert sorted((item[0], item[1]) for item in results) == [
            ("d/0", "finished"),
            ("d/1", "finished"),
        ]


def test_an_attach_without_the_executors_token_reports_nothing(raw_peer):
    with LocalCluster(executors=1) as cluster, Client(cluster) as client:
        [real] = client.wait_for_status(lambda s: len(s["executors"]) == 1)["executors"]
        future = client.submit(spin, [1, 2], record_us=300_000.0)  # ~0.6 s: it is running
        client.wait_for_status(lambda s: s["executors"][0]["running"] is not None)
        forger = raw_peer(cluster.address)
        forger.send(p.encode(p.Attach(p.PROTOCOL_VERSION, real["executor_id"], "guessed")))
        wrong = payloads.pack_payload(-1)
        forger.send(p.encode(p.Finished(future.task_id, 0, wrong, {})))
        assert future.result(timeout=30) == 3  # the forged result was not taken
        assert client.status()["bad_input"]["bad_frames"] >= 1


def test_a_client_that_said_hello_may_send_a_batch_and_each_item_is_handled(raw_peer):
    with LocalCluster(executors=1) as cluster:
        talker = raw_peer(cluster.address)
        # Before hello a batch is dropped unread, and its sender asked to say hello (a client
        # of a scheduler that ran here before).
        talker.send(p.encode(p.Batch([p.encode(p.Ping("early", 1))])))
        assert isinstance(recv(talker), p.Rejoin)
        talker.send(p.encode(p.ClientHello(p.PROTOCOL_VERSION, "talker", 1, "h")))
        assert isinstance(recv(talker), p.ClientWelcome)
        talker.send(p.encode(p.Batch([p.encode(p.Ping(str(i), i)) for i in range(3)])))
        assert [recv(talker) for _ in range(3)] == [p.Pong(str(i), i) for i in range(3)]


def test_a_bug_the_end_of_a_pass_exposes_is_logged_and_the_loop_goes_on():
    server = SchedulerServer.__new__(SchedulerServer)  # only what _end_pass reads
    failures = []
    server._guard = type("G", (), {"handler_failed": lambda self, *a: failures.append(a)})()
    server._event_log = None
    server.core = type("C", (), {"handle": lambda self, event: 1 / 0})()
    server._end_pass()
    [(who, what, exc)] = failures
    assert who == "the scheduler"
    assert what == "the end of a pass" and isinstance(exc, ZeroDivisionError)


def test_batch_launches_are_held_per_executor_and_go_out_as_one_frame():
    held = HeldLaunches()
    one, two = p.encode(p.Ping("1", 1)), p.encode(p.Ping("2", 2))
    assert not held.hold("e0", one) and not held.hold("e0", two) and not held.hold("e1", one)
    assert held.executors() == ["e0", "e1"]
    assert p.decode(held.take("e0")) == p.Batch([one, two]) and held.take("e0") is None
    assert held.take("e1") == one  # alone: as it is
    held.hold("e2", one)
    held.drop("e2")
    assert held.executors() == [] and held.take("e2") is None
    assert any(held.hold("e3", one) for _ in range(HELD_LAUNCHES_MAX))  # enough: send now


def test_an_unreadable_submit_is_read_only_within_the_frame_limit_and_through_the_guard():
    server = SchedulerServer.__new__(SchedulerServer)  # only what the method reads
    server._table = PeerTable()
    server._table.bind(b"c", ("client", "c1"))
    server._table.bind(b"e", ("executor", "e1"))
    server._unreadable = UnreadableSubmits(200)
    handled = []
    server._handle_peer_event = lambda rid, op, event: handled.append((op, event)) or True
    frame = msgpack.packb(["submit", "j", 0, 0, None, "m:f", None, [["j/0", b"x"]], 0])
    big = msgpack.packb(["submit", "j", 0, 0, None, "m:f", None, [["j/0", b"x" * 300]], 0])
    bad = p.ProtocolError("submit.priority must be str, got int")
    assert server._fail_unreadable_submits(b"c", big, bad) and not handled  # never decoded
    assert server._fail_unreadable_submits(b"e", frame, bad) and not handled  # not a client
    assert server._fail_unreadable_submits(b"c", frame, bad)
    [(op, event)] = handled  # through the guarded step, as any peer's event
    assert op == "submit" and (event.client_id, event.job_id, event.task_ids) == (
        "c1",
        "j",
        ["j/0"],
    )
    server._handle_peer_event = lambda rid, op, event: False  # it raised: disconnected
    assert not server._fail_unreadable_submits(b"c", frame, bad)
    # One budget for a frame, its batch items and all: UNREADABLE_SUBMITS submits at most.
    server._handle_peer_event = lambda rid, op, event: handled.append((op, event)) or True
    server._unreadable.new_frame()
    for _ in range(UNREADABLE_SUBMITS + 5):
        assert server._fail_unreadable_submits(b"c", frame, bad)
    assert len(handled) == 1 + UNREADABLE_SUBMITS


def test_a_suspension_unanswered_moves_the_stream_task_before_the_next_tick(raw_peer):
    # Heartbeats 20 s apart, so the loop ticks every 10 s: only the wake at the
    # suspension's deadline (`SchedulerCore.wake_at`, 150 ms) can withdraw the stream task
    # from the executor that never answers within this test.
    server = SchedulerServer("tcp://127.0.0.1:*", realtime=False, heartbeat_ns=20 * 10**9)
    loop = threading.Thread(target=server.serve, daemon=True)
    loop.start()
    try:
        peers = {}
        for executor_id in ("e0", "e1"):
            peers[executor_id] = peer = raw_peer(server.address)
            peer.send(p.encode(p.Hello(p.PROTOCOL_VERSION, executor_id, "n", 1, 1, "h")))
            assert isinstance(recv(peer), p.Welcome)
        client = raw_peer(server.address)
        client.send(p.encode(p.ClientHello(p.PROTOCOL_VERSION, "c", 1, "h")))
        assert isinstance(recv(client), p.ClientWelcome)
        call = payloads.pack_call([[1]], {})
        tasks = [["c-1/0", call], ["c-1/1", call]]
        client.send(p.encode(p.Submit("c-1", "batch", 0, None, "m:f", None, tasks, 0)))
        for peer in peers.values():
            launch = recv(peer)
            while type(launch) is not p.Launch:  # an ack, say
                launch = recv(peer)
            peer.send(p.encode(p.Started(launch.task_id, 0, 1)))
        stream = [["c-2/0", call]]
        client.send(p.encode(p.Submit("c-2", "stream", 0, None, "m:f", None, stream, 0)))
        # One executor is told to suspend and gets the stream launch; it never answers.
        ready = zmq.select([*peers.values()], [], [], 10)[0]
        victim = ready[0]
        kinds = []
        while p.Kill not in kinds:  # withdrawn once the suspension is overdue
            msg = recv(victim, timeout_ms=5_000)  # well before the tick (10 s)
            kinds.append(type(msg))
            assert type(msg) is not p.Kill or msg.task_id == "c-2/0"
        assert kinds[:2] == [p.Suspend, p.Launch]
    finally:
        server.stop()
        loop.join(timeout=30)
        server.close()

"""Hostile peers against a scheduler, in a process of their own.

    python -m tests.fuzz.driver --scheduler tcp://127.0.0.1:5555 --frames 100000 --seed 1

Runs `--sessions` peers at once, each a fresh DEALER connection playing one role:

* `unknown`: never says hello, and sends its frames;
* `client`: says client_hello, sends its frames, then a ping;
* `executor`: says hello, sends its frames, then hello again (a second hello);
* `wrong_version`: says hello in another protocol version (expects a reject), then acts
  as `unknown`.

A session's frames come from a FrameFuzzer over valid messages of its role and of the
others (so, often out of place), plus well-formed nonsense. Every session ends by waiting
for an answer, bounded by `--session-timeout`: the ping's pong, the second hello's welcome,
a client_hello's welcome for the others, or the reject that says it was disconnected. So
when the driver ends, the scheduler has read every session's frames up to its answer, and
"unanswered" counts sessions it never answered. Most registered sessions then say goodbye;
a few vanish without it, as crashed peers do.

Prints one JSON line: frames sent (by strategy), sessions (by role and ending), seconds.
Everything is drawn from `--seed`.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from collections import Counter
from typing import Any

import zmq

from tests.fuzz.frames import FrameFuzzer, decodes_to
from tidal.runtime import payloads
from tidal.runtime import protocol as p
from tidal.runtime.guard import STRANGER_LIMIT

ROLES = {"unknown": 0.25, "client": 0.35, "executor": 0.3, "wrong_version": 0.1}
# The share of registered sessions that end without a goodbye (their peers stay registered
# until... never, for a client: the scheduler cannot tell that a DEALER went away).
VANISH = 0.05
MAX_BURST = 40
PAYLOAD = payloads.pack_call([[1, 2, 3]], {})


def templates(peer_id: str) -> list[p.Message]:
    """Valid messages any peer might send, with ids of this session's own: never a goodbye
    or a hello (a session's handshake and ending are its own, see the module docstring)."""
    now = time.monotonic_ns()
    task = f"{peer_id}-1/0"
    return [
        # a client's
        p.Submit(
            f"{peer_id}-1",
            "batch",
            0,
            None,
            "tidal.workloads.synthetic:total",
            None,
            [[task, PAYLOAD]],
            now,
        ),
        p.Submit(
            f"{peer_id}-2",
            "stream",
            1,
            2,
            "tidal.workloads.synthetic:total",
            None,
            [[f"{peer_id}-2/{i}", PAYLOAD] for i in range(3)],
            now,
            {"chunksize": 2},
        ),
        p.Cancel([task, "nope"]),
        p.StatusRequest(f"{peer_id}-s"),
        p.Ping(f"{peer_id}-p", now),
        p.SetPolicy(f"{peer_id}-r", "no-such-policy"),
        # an executor's
        p.Attach(p.PROTOCOL_VERSION, peer_id, ""),
        p.Heartbeat(peer_id, "fuzz", 1, now, 1, 0, 0, 0, 1 << 20, 1 << 30, 12.5),
        p.Started(task, 0, now),
        p.Suspended(task, 1000, 5, now),
        p.Resumed(task, 1000, now),
        p.Finished(task, 0, payloads.pack_payload(6), {"running_ns": 5}),
        p.Failed(task, 0, "ValueError", "no", "", {}),
        p.Killed(task, 0, {"running_ns": 1}),
        p.SuspendFailed(task, "busy", 10),
        p.Refused("kill", task, "unknown here"),
        p.ChunkResults(f"{peer_id}-c", [[task, "finished", payloads.pack_payload(6), None, {}]]),
        p.Stolen(f"{peer_id}-c", [task]),
        # the scheduler's own (never sent to it)
        p.Launch(task, "tidal.workloads.synthetic:total", None, PAYLOAD, 0, "batch", now),
        p.Welcome(p.PROTOCOL_VERSION, "s", 500, ""),
        p.Results([[task, "finished", payloads.pack_payload(6), None, {}]]),
        p.Pong("x", now),
    ]


# Valid messages that would end a session or change who it is: a burst never carries one,
# even when a mutation happens to make one (another op over a message's fields, say), since
# every session's script depends on its identity; the handshakes and goodbyes of the
# scripts themselves cover them.
SCRIPTED = (p.Hello, p.ClientHello, p.Goodbye, p.ClientGoodbye)


def _before_hello(frame: bytes) -> bool:
    """Whether the scheduler counts `frame` from a peer that has not said hello toward
    STRANGER_LIMIT (a well-formed message a peer sends; at most: over-counting only ends a
    session without waiting for its answer). Mirrors SchedulerServer._event_for's rule."""
    try:
        msg = p.decode(frame)
    except p.ProtocolError:
        return False
    return msg.direction in (p.E2S, p.C2S) and not isinstance(msg, p.Attach | p.Batch)


# Well-formed nonsense of these classes goes into bursts too (not handshakes or goodbyes, for
# the reason above, nor policy switches, which would change the real jobs' policy).
NONSENSE = [cls for cls in p.MESSAGES.values() if cls not in (*SCRIPTED, p.SetPolicy, p.Batch)]


class Session:
    """One hostile peer: a DEALER, its role, and what answer it waits for."""

    def __init__(self, context: zmq.Context, address: str, rng: random.Random, n: int) -> None:
        self.role = rng.choices(list(ROLES), list(ROLES.values()))[0]
        self.peer_id = f"fz{n}-{rng.getrandbits(32):08x}"
        self.socket = context.socket(zmq.DEALER)
        self.socket.linger = 1000
        self.socket.connect(address)
        self.burst = rng.randint(1, MAX_BURST)
        self.phase = "handshake"  # then "ending": the burst is sent, the ending's answer due
        self.expect: type[p.Message] | None = None
        self.deadline = 0.0
        self.sent: list[bytes] = []  # its burst, to tell what it was if it goes unanswered

    def say(self, msg: p.Message) -> None:
        self.socket.send(p.encode(msg))

    def hello(self, version: int = p.PROTOCOL_VERSION) -> None:
        self.say(p.Hello(version, self.peer_id, "fuzz", 1, os.getpid(), "fuzz-host"))

    def client_hello(self) -> None:
        self.say(p.ClientHello(p.PROTOCOL_VERSION, self.peer_id, os.getpid(), "fuzz-host"))

    def answers(self, msg: p.Message) -> bool:
        """Whether `msg` is the answer this session waits for."""
        if not isinstance(msg, self.expect or ()):
            return False
        return not isinstance(msg, p.Pong) or msg.request_id == f"{self.peer_id}-sync"


def run(
    address: str,
    frames: int,
    seed: int,
    sessions: int,
    session_timeout: float,
    vanish: float = VANISH,
) -> dict[str, Any]:
    rng = random.Random(seed)
    context = zmq.Context()
    context.set(zmq.MAX_SOCKETS, 4 * sessions + 1024)
    poller = zmq.Poller()
    live: dict[zmq.Socket, Session] = {}
    strategies: Counter[str] = Counter()
    endings: Counter[str] = Counter()
    roles: Counter[str] = Counter()
    unanswered: list[dict[str, Any]] = []
    counts = Counter(sent=0, session_frames=0, sessions=0, other_answers=0, skipped=0)
    start = time.monotonic()

    def open_session() -> None:
        counts["sessions"] += 1
        session = Session(context, address, rng, counts["sessions"])
        roles[session.role] += 1
        session.deadline = time.monotonic() + session_timeout
        live[session.socket] = session
        poller.register(session.socket, zmq.POLLIN)
        if session.role == "client":
            session.client_hello()
            session.expect = p.ClientWelcome
        elif session.role == "executor":
            session.hello()
            session.expect = p.Welcome
        elif session.role == "wrong_version":
            session.hello(p.PROTOCOL_VERSION + rng.choice([1, 7, -1, 2**40]))
            session.expect = p.Reject
        else:
            send_burst(session)
            return
        counts["session_frames"] += 1

    def send_burst(session: Session) -> None:
        fuzzer = FrameFuzzer(
            rng, templates(session.peer_id), nonsense=NONSENSE, ids=[f"{session.peer_id}-1/0"]
        )
        count = min(session.burst, frames - counts["sent"])
        strange = 0  # well-formed frames a peer sends before hello (the scheduler counts them)
        for _ in range(count):
            frame = fuzzer.frame()
            while decodes_to(frame, SCRIPTED):
                counts["skipped"] += 1
                frame = fuzzer.frame()
            session.sent.append(frame)
            session.socket.send(frame)
            strange += _before_hello(frame)
        counts["sent"] += count
        strategies.update(fuzzer.counts)
        # The ending: something that must be answered.
        if session.role == "client":
            session.say(p.Ping(f"{session.peer_id}-sync", 0))
            session.expect = p.Pong
        elif session.role == "executor":
            session.hello()  # a second hello
            session.expect = p.Welcome
        else:
            session.client_hello()
            session.expect = p.ClientWelcome
        session.phase = "ending"
        counts["session_frames"] += 1
        if session.role in ("unknown", "wrong_version") and strange >= STRANGER_LIMIT:
            # So many before hello: the connection is ignored for a cool-down, its hello
            # too (Tidal's own peers say hello on a new connection).
            close(session, "ignored")

    def close(session: Session, ending: str) -> None:
        endings[ending] += 1
        if ending == "unanswered":
            unanswered.append(
                {
                    "peer_id": session.peer_id,
                    "role": session.role,
                    "phase": session.phase,
                    "expect": session.expect.op if session.expect else None,
                    "burst": [frame.hex() for frame in session.sent],
                }
            )
        if ending == "answered" and rng.random() >= vanish:
            if session.role == "executor":
                session.say(p.Goodbye("fuzz session over"))
            else:
                session.say(p.ClientGoodbye("fuzz session over"))
            counts["session_frames"] += 1
        poller.unregister(session.socket)
        del live[session.socket]
        session.socket.close()

    def receive(session: Session, frame: bytes) -> None:
        try:
            msg = p.decode(frame)
        except p.ProtocolError:
            endings["bad answer"] += 1  # the scheduler never sends one: the test checks
            return
        if session.answers(msg):
            if session.phase == "handshake":
                send_burst(session)
            else:
                close(session, "answered")
        elif isinstance(msg, p.Reject):
            close(session, "disconnected" if session.phase == "ending" else "refused")
        else:  # launches for a fake executor, results or status for a fake client, ...
            counts["other_answers"] += 1

    while counts["sent"] < frames or live:
        while counts["sent"] < frames and len(live) < sessions:
            open_session()
        for sock, _ in poller.poll(100):
            while sock in live:
                try:
                    frame = sock.recv(zmq.NOBLOCK)
                except zmq.Again:
                    break
                receive(live[sock], frame)
        now = time.monotonic()
        for session in [s for s in live.values() if now > s.deadline]:
            close(session, "unanswered")
    context.term()
    return {
        **counts,
        "roles": dict(roles),
        "endings": dict(endings),
        "strategies": dict(strategies),
        "unanswered": unanswered,
        "seconds": round(time.monotonic() - start, 3),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scheduler", required=True)
    parser.add_argument("--frames", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--sessions", type=int, default=8)
    parser.add_argument("--session-timeout", type=float, default=60.0)
    parser.add_argument("--vanish", type=float, default=VANISH, help="share without goodbye")
    args = parser.parse_args(argv)
    result = run(
        args.scheduler, args.frames, args.seed, args.sessions, args.session_timeout, args.vanish
    )
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

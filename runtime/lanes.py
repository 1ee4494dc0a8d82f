"""Lanes: a client sends a stream task straight to an executor, which runs it at once.

Discussion: a stream task's way to a busy slot was client -> scheduler -> executor. Traced
under `tidal bench preempt`'s full batch load (2026-12-07, one CLOCK_MONOTONIC, p50): the
client's submit ~0.18 ms, its frame to the scheduler's loop ~0.27, the scheduler's own work
~0.5 (reading, the core's step, the journal, two sends), its launch to the executor's switch
into the task ~0.75. The scheduler's half of that is a hop and half a millisecond of Python
that a stream task does not need: which slot it takes was decided when the lane was given.
Ray's clients lease workers for the same reason.

The protocol (runtime/protocol.py, 15 and 16):

* An executor binds a lane, a ROUTER beside its command connection, and names it in its
  hello (`hello.lane`). The scheduler gives each client a token and the lanes of the live
  executors not counted busy (`lanes`), again whenever that list changes.
* A client sends a stream `submit` of one plain task (no options, small) to a lane, wrapped
  in `lane_submit` with its token, instead of to the scheduler.
* The executor's hub reads its lane as it reads commands (the gate's watcher raises the
  gate for it too, so a running batch task parks at its next record boundary) and takes the
  task if its slot is free, or held by a batch task it may still suspend
  (`launch.suspensions_left`, which the scheduler sets from the job's cap) with no stream
  task ahead: it parks that task and runs the stream task, attempt 0. Either way it first
  reports `forward`: the submit as the client sent it, the token, whether it took the
  task, and which task it parked. On the reports connection, so it comes before every
  report about either task.
* The scheduler takes a forward as the client's submit (journaled as one), and a taken
  task as launched there, its parked task as suspended there (scheduler/lanes.py): no
  command goes out. A forward it cannot accept (an unknown token, a job it has already, a
  refused submit) has its taken task killed there.
* At the task's end the executor sends its result by the lane to the client that sent it
  (`lane_results`, 16), before its report reaches the scheduler; the client's IO thread
  reads its lanes beside the scheduler's connection, takes a result only for a task that
  went by that lane, and drops the scheduler's copy that follows. A stream task's way back
  is then one hop too, and no flood of other peers at the scheduler is on it.
* The client resends, to the scheduler, every lane submit that has no result within
  LANE_GRACE_S, or whose lane went away: the scheduler ignores a job it has (a client's
  job id is its own), and kills the lane's late copy of one it placed itself. So no future
  waits on a lane whose executor died, or is stuck in a long C call, with the frame unread.

Lanes need no keys: on a cluster with CURVE keys (and behind TIDAL_DATA_ADDRESS, where the
executor's own address is not the one others reach) executors open none, and stream tasks
take the scheduler's path. TIDAL_LANES=0 turns them off.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import zmq

from tidal.runtime import protocol as p
from tidal.runtime.frames import FrameReader
from tidal.runtime.jobs import parse_result
from tidal.runtime.runstate import RunState, TaskRecord

__all__ = [
    "LANE_GRACE_S",
    "LANE_MAX_FRAME_BYTES",
    "ClientLanes",
    "ExecutorLane",
    "lane_address",
    "lane_task",
    "lanes_enabled",
    "one_plain_task",
    "take_decision",
]

log = logging.getLogger("tidal.lanes")

# A lane takes frames of at most this size (libzmq drops a peer that sends a bigger one); a
# bigger stream submit goes to the scheduler.
LANE_MAX_FRAME_BYTES = 64 * 1024
# A lane submit with no result after this long is sent to the scheduler too (see above).
LANE_GRACE_S = 0.1
LANE_GRACE_NS = int(LANE_GRACE_S * 1e9)
# Frames a lane queues before libzmq stops reading it (stream tasks one by one: few wait).
LANE_RCVHWM = 1000
# A lane whose submit went overdue is not tried again for this long unless every lane is
# in use, or a result comes from its executor (a long C call there, say); one whose submits
# went overdue LANE_STRIKES times in a row, with no result from it between, not until the
# scheduler's next list (one this client cannot reach).
LANE_SILENT_S = 1.0
LANE_STRIKES = 3
LANES_ENV = "TIDAL_LANES"
# Lane tasks an executor remembers the sender of, to send each its result (`answer`).
LANE_ASKED_MAX = 4096
# Lane results a client remembers having taken, to drop the scheduler's copy quietly.
LANE_ANSWERED_MAX = 4096


def lanes_enabled() -> bool:
    """False if TIDAL_LANES says "0" (or "off", "false", "no")."""
    return os.environ.get(LANES_ENV, "1").strip().lower() not in ("0", "off", "false", "no")


def lane_address(value: Any) -> str | None:
    """`value`, if it is a lane's address clients can use (a tcp address of sane length:
    a hello's and a `lanes` item's are peer input), else None."""
    if type(value) is str and value.startswith("tcp://") and len(value) <= p.MAX_ID_CHARS:
        return value
    return None


def one_plain_task(tasks: list[Any]) -> tuple[str, bytes] | None:
    """(task id, payload) if a submit's `tasks` are one task with no options, else None."""
    if len(tasks) != 1:
        return None
    task = tasks[0]
    if type(task) is not list or len(task) != 2:
        return None
    task_id, payload = task
    if type(task_id) is not str or type(payload) is not bytes:
        return None
    return task_id, payload


def lane_task(submit: p.Submit) -> tuple[str, bytes] | None:
    """(task id, payload) if `submit` is what a lane takes: one stream task, no options."""
    if submit.priority != "stream" or submit.bulk is not None or submit.options is not None:
        return None
    return one_plain_task(submit.tasks)


# ---- the executor's side --------------------------------------------------------------------


class ExecutorLane:
    """An executor's lane (see the module docstring): bound at `address`; read by the
    task thread only (`read`), which the gate's watcher and the idle wait wake through
    `fd`."""

    def __init__(self, context: zmq.Context, host: str) -> None:
        self.socket = context.socket(zmq.ROUTER)
        self.socket.linger = 0
        self.socket.rcvhwm = LANE_RCVHWM
        self.socket.setsockopt(zmq.MAXMSGSIZE, LANE_MAX_FRAME_BYTES + 1024)
        port = self.socket.bind_to_random_port(f"tcp://{host}")
        self.address = f"tcp://{host}:{port}"
        self.fd = self.socket.getsockopt(zmq.FD)
        self._reader = FrameReader(self.socket)
        self.bad_frames = 0
        # On loopback its clients share this host's CLOCK_MONOTONIC, which stamps a lane
        # submit (`sent_ns`): one older than its grace is skipped (its client has sent it
        # elsewhere by now; it is read after a stall here: a long C call, a SIGSTOP).
        self._local = host.startswith("127.")
        self.stale = 0
        # The lane tasks read here, by task id: who sent each (its client's identity on
        # this ROUTER) and when, to send its result to (`answer`); at most LANE_ASKED_MAX,
        # the oldest forgotten first (a task placed elsewhere never ends here).
        self._asked: dict[str, tuple[bytes, int]] = {}
        self.answered = 0  # results sent to clients by this lane (for tests and status)
        self.unanswered = 0  # ends of lane tasks left to the scheduler (too big, not sent)

    def waiting(self) -> bool:
        """Whether frames wait (this also re-arms the edge-triggered descriptor)."""
        return bool(self.socket.getsockopt(zmq.EVENTS) & zmq.POLLIN)

    def read(self) -> list[tuple[p.LaneSubmit, p.Submit, str, bytes] | p.ProtocolError]:
        """What waits on the lane: each lane submit with its submit decoded and its one
        task (id, payload); a frame that is none of that as its ProtocolError (a stale one,
        above, is left out)."""
        items: list[Any] = []
        for parts in self._reader.read_all():
            try:
                msg = p.decode_parts(parts[1:], max_frame_bytes=LANE_MAX_FRAME_BYTES)
                if type(msg) is not p.LaneSubmit:
                    raise p.ProtocolError(f"{msg.op} is not sent to a lane")
                submit = p.decode(msg.submit, max_frame_bytes=LANE_MAX_FRAME_BYTES)
                if type(submit) is not p.Submit:
                    raise p.ProtocolError(f"a lane_submit carries {submit.op}, not a submit")
                task = lane_task(submit)
                if task is None:
                    raise p.ProtocolError("a lane takes a submit of one stream task only")
                if self._local and time.monotonic_ns() - msg.sent_ns > LANE_GRACE_NS:
                    self.stale += 1
                    continue
                items.append((msg, submit, *task))
                self._asked.pop(task[0], None)
                self._asked[task[0]] = (parts[0], msg.sent_ns)
                if len(self._asked) > LANE_ASKED_MAX:
                    del self._asked[next(iter(self._asked))]
            except p.ProtocolError as exc:
                self.bad_frames += 1
                items.append(exc)
        return items

    def answer(self, msg: p.Message) -> bool:
        """The task thread reports `msg`: if it is the end (finished, failed) of attempt 0
        of a task that came by this lane, send the result to the client that sent it now,
        as the scheduler would (its copy follows); True if sent. Nothing if the frame would
        be over the lane's limit, or the client is gone: the scheduler's copy is the one
        then.

        Discussion: a stream task's result went executor -> scheduler -> client, the
        scheduler's loop a hop on every stream task's way back, and, while other peers
        flood the scheduler, a hop that waits behind them."""
        kind = type(msg)
        if kind is not p.Finished and kind is not p.Failed and kind is not p.Killed:
            return False
        asked = self._asked.pop(msg.task_id, None)
        if asked is None or kind is p.Killed or msg.attempt != 0:
            return False
        identity, sent_ns = asked
        stats = msg.stats
        started = stats["finished_at_ns"] - stats["running_ns"] - stats["suspended_ns"]
        stats = {
            **stats,
            "attempt": 0,
            "work_lost_ns": 0,
            "started_at_ns": started,
            # one CLOCK_MONOTONIC on loopback only (as `sent_ns` is the client's)
            "queued_ns": max(0, started - sent_ns) if self._local else None,
        }
        if kind is p.Finished:
            item = [msg.task_id, "finished", msg.result, None, stats]
        else:
            error = [msg.error_type, msg.message, msg.traceback]
            item = [msg.task_id, "failed", None, error, stats]
        frame = p.encode(p.LaneResults([item]))
        if len(frame) > LANE_MAX_FRAME_BYTES:
            self.unanswered += 1
            return False
        try:
            self.socket.send_multipart([identity, frame], zmq.NOBLOCK)
        except zmq.ZMQError:
            self.unanswered += 1
            return False
        self.answered += 1
        return True

    def answering(
        self, emit: Callable[[p.Message], None], read: Callable[[], Any]
    ) -> Callable[[p.Message], None]:
        """`emit` (the kernel's reports), each report first offered to `answer`. After a
        send, `read` (the executor's read of this lane) if a lane submit waits: the send
        may have taken the descriptor's signal of one that came meanwhile, which the
        gate's watcher would then not see."""

        def emit_and_answer(msg: p.Message) -> None:
            answered = self.answer(msg)
            emit(msg)
            if answered and self.waiting():
                read()

        return emit_and_answer

    def close(self) -> None:
        self.socket.close(linger=0)


def take_decision(
    current: TaskRecord | None, stream_ahead: bool, known: bool, again: bool = False
) -> tuple[bool, TaskRecord | None]:
    """Whether the hub takes a lane's stream task now, and the task it parks for it.

    `current` is the task parked at a record boundary in the slot (None: the slot is free),
    `stream_ahead` whether a stream task waits for the slot already, `known` whether a task
    of the same id is here. A batch task is parked only while its cap allows (fewer
    suspensions here, for any reason, than its launch's `suspensions_left`; None: never)
    and nothing else was asked of it; never for a lane submit sent `again`."""
    if known or stream_ahead:
        return False, None
    if current is None:
        return True, None
    if (
        not again
        and current.priority == "batch"
        and current.state is RunState.RUNNING
        and current.suspensions_left is not None
        and current.suspensions < current.suspensions_left
        and not current.kill_requested
    ):
        return True, current
    return False, None


# ---- the client's side ----------------------------------------------------------------------


class ClientLanes:
    """A client's lanes: a DEALER per executor that has one, the token, and the lane
    submits still within their grace (see the module docstring).

    `update`, `overdue`, `read` and `took` run on the client's IO thread, `send` on
    callers' threads, all under one lock, as `waiting` (either thread); `done` on either,
    without it."""

    def __init__(self, context: zmq.Context, clock: Callable[[], float] = time.monotonic) -> None:
        self._context = context
        self._clock = clock
        self._lock = threading.Lock()
        self._token = ""
        self._lanes: dict[str, zmq.Socket] = {}  # executor id -> its lane
        self._order: list[str] = []  # the lanes in the order they are tried
        self._next = 0
        # Lane submits within their grace: task id -> (executor id, when sent, the submit,
        # the lanes tried). Read under the lock; `done` pops from it without (a snapshot is
        # taken before iterating).
        self._sent: dict[str, tuple[str, float, bytes, tuple[str, ...]]] = {}
        self._strikes: dict[str, int] = {}  # overdue in a row, per lane
        self._silent: dict[str, float] = {}  # lanes not to try until then
        self.sent_by_lane = 0  # submits that went by a lane (for tests and status)
        # Tasks whose result came by a lane (`took`), until the scheduler's copy comes
        # (`done`): an ordered set (values True), at most LANE_ANSWERED_MAX, the oldest
        # forgotten first (the copy of one forgotten counts in `Client.dropped_results`).
        self._answered: OrderedDict[str, bool] = OrderedDict()
        self.results_by_lane = 0
        self.generation = 0  # counts changes of the lanes (the IO thread polls each one)

    def update(self, msg: p.Lanes | None) -> list[str]:
        """Take the scheduler's list (None: forget every lane, as on a reconnect); return
        the task ids sent to lanes that are gone, for the scheduler now."""
        lanes: dict[str, str] = {}
        if msg is not None:
            for item in msg.lanes:
                ok = type(item) is list and len(item) == 2 and type(item[0]) is str
                if ok and lane_address(item[1]) is not None:
                    lanes[item[0]] = item[1]
        with self._lock:
            self._token = msg.token if msg is not None else ""
            for executor_id in [e for e in self._lanes if e not in lanes]:
                self._lanes.pop(executor_id).close(linger=0)
                self.generation += 1
            for executor_id, address in lanes.items():
                if executor_id not in self._lanes:
                    dealer = self._context.socket(zmq.DEALER)
                    dealer.linger = 0
                    dealer.sndhwm = LANE_RCVHWM
                    dealer.setsockopt(zmq.MAXMSGSIZE, LANE_MAX_FRAME_BYTES + 1024)
                    dealer.connect(address)
                    self._lanes[executor_id] = dealer
                    self.generation += 1
            self._order = list(self._lanes)
            self._strikes, self._silent = {}, {}
            gone = [t for t, sent in list(self._sent.items()) if sent[0] not in self._lanes]
            for task_id in gone:
                del self._sent[task_id]
        return gone

    def send(self, task_id: str, frame: bytes) -> bool:
        """Send a stream submit of one task by a lane; False if none takes it now (no lane,
        a frame too big, a lane not writable): then it goes to the scheduler. A lane with
        none of this client's lane tasks in flight is preferred."""
        if len(frame) > LANE_MAX_FRAME_BYTES:
            return False
        with self._lock:
            if not self._order:
                return False
            busy = {sent[0] for sent in list(self._sent.values())} | self._silent_now()
            count = len(self._order)
            choice = None
            for i in range(count):
                executor_id = self._order[(self._next + i) % count]
                if executor_id not in busy:
                    choice = executor_id
                    break
            if choice is None:
                choice = self._order[self._next % count]
            self._next = (self._order.index(choice) + 1) % count
            if not self._send_to(choice, task_id, frame, ()):
                return False
            self.sent_by_lane += 1
            return True

    def _send_to(self, executor_id: str, task_id: str, frame: bytes, tried: tuple) -> bool:
        """Send by `executor_id`'s lane, under the lock (False: not writable now)."""
        try:
            lane_submit = p.LaneSubmit(self._token, frame, time.monotonic_ns(), bool(tried))
            self._lanes[executor_id].send(p.encode(lane_submit), zmq.NOBLOCK)
        except zmq.Again:
            return False
        self._sent[task_id] = (executor_id, self._clock(), frame, (*tried, executor_id))
        return True

    @property
    def active(self) -> bool:
        """Whether any lane may be used (the IO thread then looks for overdue submits)."""
        return bool(self._order)

    def done(self, task_id: str, executor_id: Any) -> bool:
        """A result came (the IO thread), from `executor_id` (its statistics'), or the task
        was cancelled (None): it is in flight on its lane no longer, and that executor
        answers (no lock: dict pops and stores, each atomic under the GIL). True if its
        result came by a lane before: this is the scheduler's copy, to drop."""
        self._sent.pop(task_id, None)
        if executor_id in self._strikes:
            self._strikes[executor_id] = 0
            self._silent.pop(executor_id, None)
        return self._answered.pop(task_id, False)

    # ---- results by lane (the IO thread) ---------------------------------------------------

    def descriptors(self) -> list[int]:
        """The lanes' descriptors, for the IO thread's poll (again when `generation` moves)."""
        with self._lock:
            return [dealer.getsockopt(zmq.FD) for dealer in self._lanes.values()]

    def waiting(self) -> bool:
        """Whether a lane has frames to read (this also re-arms its descriptor)."""
        with self._lock:
            return any(d.getsockopt(zmq.EVENTS) & zmq.POLLIN for d in self._lanes.values())

    def read(self) -> tuple[list[list[Any]], list[str]]:
        """What the lanes sent: the result items (as in `results`) of tasks sent by that
        lane and in flight, and what was wrong with the other frames. The IO thread
        handles the items as the scheduler's, then calls `took` with them."""
        items: list[list[Any]] = []
        problems: list[str] = []
        seen: set[str] = set()  # a task sent by two lanes, both of which answered
        with self._lock:
            for executor_id, dealer in self._lanes.items():
                for _ in range(LANE_RCVHWM):
                    try:
                        frame = dealer.recv(zmq.NOBLOCK, copy=True)
                    except zmq.Again:
                        break
                    try:
                        msg = p.decode(frame, max_frame_bytes=LANE_MAX_FRAME_BYTES)
                        if type(msg) is not p.LaneResults:
                            raise p.ProtocolError(f"{msg.op} is not sent to a client's lane")
                    except p.ProtocolError as exc:
                        problems.append(f"from the lane of {executor_id}: {exc}")
                        continue
                    for item in msg.items:
                        try:
                            task_id = parse_result(item)[0]
                        except p.ProtocolError as exc:
                            problems.append(f"a bad result from the lane of {executor_id}: {exc}")
                            continue
                        sent = self._sent.get(task_id)
                        if sent is not None and executor_id in sent[3] and task_id not in seen:
                            seen.add(task_id)
                            items.append(item)
                        # else: a task not sent there, or answered already (a late copy)
        return items, problems

    def took(self, items: list[list[Any]]) -> None:
        """These lane results were handled: the scheduler's copies are dropped (`done`)."""
        for item in items:
            self._answered[item[0]] = True
            self.results_by_lane += 1
        while len(self._answered) > LANE_ANSWERED_MAX:
            self._answered.popitem(last=False)

    def overdue(self) -> list[str]:
        """Lane submits LANE_GRACE_S old or more: each is sent by another lane it has not
        tried, once; the ids of those tried twice (or with no other lane) are returned,
        forgotten here: the scheduler hears of them now.

        Discussion: the scheduler would place it as any stream task, perhaps on the very
        executor that did not answer (a stopped one looks idle until it is counted lost, a
        second later); another lane takes it at once. The first lane's copy, if it runs
        late, is killed there (scheduler/lanes.py)."""
        with self._lock:
            if not self._sent:
                return []
            due = self._clock() - LANE_GRACE_S
            overdue = [t for t, sent in list(self._sent.items()) if sent[1] <= due]
            late = []
            for task_id in overdue:
                sent = self._sent.pop(task_id, None)
                if sent is None:
                    continue  # done meanwhile
                executor_id, _, frame, tried = sent
                self._silent[executor_id] = self._clock() + LANE_SILENT_S
                silent = self._silent_now()
                others = [e for e in self._order if e not in tried and e not in silent]
                again = len(tried) < 2 and others
                if not (again and self._send_to(others[0], task_id, frame, tried)):
                    late.append(task_id)
                strikes = self._strikes.get(executor_id, 0) + 1
                self._strikes[executor_id] = strikes
                if strikes >= LANE_STRIKES and executor_id in self._order:
                    self._order.remove(executor_id)
                    log.warning("not using the lane of executor %s: no answer by it", executor_id)
            return late

    def _silent_now(self) -> set[str]:
        """The lanes not to try now (see LANE_SILENT_S)."""
        now = self._clock()
        return {e for e, until in list(self._silent.items()) if until > now}

    def next_due_s(self) -> float | None:
        """Seconds until the first lane submit is overdue (None: none in flight)."""
        with self._lock:
            if not self._sent:
                return None
            first = min(sent[1] for sent in list(self._sent.values()))
        return max(0.0, first + LANE_GRACE_S - self._clock())

    def close(self) -> None:
        self.update(None)

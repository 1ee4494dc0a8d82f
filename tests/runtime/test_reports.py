"""An executor's reports (runtime/reports.py): what waits to go out together and what goes
at once, on a real ZeroMQ connection (inproc) and a fake clock."""

from __future__ import annotations

import pytest
import zmq

from tidal.runtime import protocol as p
from tidal.runtime.reports import HOLD_NS, Reports

ADDRESS = "inproc://reports-under-test"


class Clock:
    def __init__(self) -> None:
        self.now = 10**12

    def __call__(self) -> int:
        return self.now


@pytest.fixture
def wire():
    """(reports, clock, received): `received()` is every report that arrived, in order."""
    context = zmq.Context()
    router = context.socket(zmq.ROUTER)
    router.bind(ADDRESS)
    clock = Clock()
    dropped: list[str] = []
    reports = Reports(context, ADDRESS, "e0", None, dropped.append, clock=clock)
    reports.welcomed("token")

    def received() -> list[p.Message]:
        out = []
        while router.poll(0):  # inproc: what was sent has arrived
            msg = p.decode(router.recv_multipart()[1])
            if isinstance(msg, p.Attach):
                continue
            out.extend(
                p.unbatch(msg, max_frame_bytes=1 << 20) if isinstance(msg, p.Batch) else [msg]
            )
        return out

    yield reports, clock, received
    reports.close(linger=0)
    router.close(linger=0)
    context.term()
    assert dropped == []


def finished(task_id: str) -> p.Finished:
    return p.Finished(task_id, 0, b"\xc0", {"running_ns": 1})


def test_batch_reports_wait_for_the_hold_and_an_end_replaces_its_start(wire):
    reports, clock, received = wire
    reports.emit(p.Started("t1", 0, 1))
    reports.send_due()
    assert received() == []
    reports.emit(finished("t1"))  # t1 ended before its started went out
    reports.emit(p.Started("t2", 0, 2))
    clock.now += HOLD_NS - 1
    reports.send_due()
    assert received() == []
    clock.now += 1
    reports.send_due()
    assert [(type(m), m.task_id) for m in received()] == [(p.Finished, "t1"), (p.Started, "t2")]
    clock.now += HOLD_NS
    reports.send_due()
    assert received() == []  # nothing is left to go
    # The finished result is still kept for a hello until acked.
    assert [item[0] for item in reports.unacked()] == ["t1"]


def test_a_report_that_answers_a_command_goes_at_once_with_what_waited(wire):
    reports, _, received = wire
    reports.emit(p.Started("t1", 0, 1))
    reports.emit(p.Suspended("t1", 5_000, 3, 1_000))
    reports.send_due()
    assert [type(m) for m in received()] == [p.Started, p.Suspended]


def test_the_listener_sends_what_waited_too_long_while_the_task_thread_is_busy(wire):
    reports, clock, received = wire
    reports.emit(finished("t1"))
    reports.emit(p.Started("t2", 0, 2))  # a long task starts: the task thread holds on
    reports.send_due()
    reports.send_due()
    assert received() == []
    clock.now += HOLD_NS
    reports.send_due()
    assert [type(m) for m in received()] == [p.Finished, p.Started]


def test_nothing_is_due_while_the_scheduler_is_lost_and_it_all_goes_after_a_welcome(wire):
    reports, clock, received = wire
    reports.unlink()
    reports.emit(finished("t1"))
    clock.now += 2 * HOLD_NS
    reports.send_due()
    assert received() == []
    reports.welcomed("token2")
    reports.flush()
    assert [m.task_id for m in received()] == ["t1"]


def test_what_is_queued_can_be_taken_for_an_executors_last_words(wire):
    reports, _, received = wire
    reports.emit(p.Started("t1", 0, 1))
    reports.emit(finished("t1"))  # its started dropped
    reports.emit(finished("t2"))
    taken = [p.decode(frame) for frame in reports.take_queued()]
    assert [(type(m), m.task_id) for m in taken] == [(p.Finished, "t1"), (p.Finished, "t2")]
    reports.flush()
    assert received() == []


def test_a_packed_batch_not_acked_is_listed_task_by_task_for_a_hello(wire):
    reports, _, received = wire
    values = [p.encode(p.Ping("x", 1)), b"\x01", b"\xa1z"]  # any payloads
    packed = b"\x93" + b"".join(values)
    reports.emit(p.ChunkBatch("j#1", "j", 10, packed, [], 5))
    reports.emit(p.ChunkBatch("j#1", "j", 13, [b"\x02", None], [[14, ["E", "m", ""]]], 5))
    reports.flush()
    assert [type(m) for m in received()] == [p.ChunkBatch, p.ChunkBatch]
    held = reports.unacked()
    assert held[:3] == [[f"j/{10 + i}", 0, "finished", [v, None, {}]] for i, v in enumerate(values)]
    assert held[3:] == [
        ["j/13", 0, "finished", [b"\x02", None, {}]],
        ["j/14", 0, "failed", [None, ["E", "m", ""], {}]],
    ]
    reports.acked([p.batch_key("j#1", 10)])
    assert [item[0] for item in reports.unacked()] == ["j/13", "j/14"]

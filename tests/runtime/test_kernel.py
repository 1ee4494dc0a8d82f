"""Kernel tests: no sockets, no threads, no sleeps. Commands are posted from inside the
tasks' own iteration (as the listener thread would post them mid-task) and the hub is
driven with `run()`; reports go through an in-memory transport that encodes and decodes
every message, so anything the wire could not carry fails here too."""

from __future__ import annotations

import collections
import contextvars
import dataclasses
import gc
import queue
import threading
import weakref

import greenlet
import msgpack
import pytest

from tidal.runtime import batches, payloads
from tidal.runtime import protocol as p
from tidal.runtime.columns import LaunchColumns
from tidal.runtime.datastore import Reference
from tidal.runtime.gate import IMPLEMENTATION, PyGate, py_gated_iterator
from tidal.runtime.kept import pack_kept
from tidal.runtime.kernel import Kernel, TaskKilled
from tidal.runtime.spanrun import CHUNK_REPORT_EVERY, SPAN_REPORT_EVERY
from tidal.runtime.task import Partition, current_context, task


class Transport:
    """In-memory stand-in for the executor's socket: a list of decoded reports.

    Result payloads are unpacked, as the client would, so that tests compare values: a
    `Finished.result` and the values of finished `ChunkResults` items hold what the task
    returned (the messages are rebuilt with them; the originals carried bytes), or the
    reference bytes of a spooled one.
    """

    def __init__(self) -> None:
        self.sent: list[p.Message] = []

    def __call__(self, msg: p.Message) -> None:
        msg = p.decode(p.encode(msg))
        if isinstance(msg, p.Finished):
            msg = dataclasses.replace(msg, result=_value(msg.result))
        elif isinstance(msg, p.ChunkResults):
            items = [
                [i[0], i[1], _value(i[2]) if i[1] == "finished" else i[2], *i[3:]]
                for i in msg.items
            ]
            msg = dataclasses.replace(msg, items=items)
        self.sent.append(msg)

    def of(self, kind: type[p.Message], task_id: str | None = None) -> list[p.Message]:
        return [
            m
            for m in self.sent
            if isinstance(m, kind) and (task_id is None or m.task_id == task_id)
        ]

    def outcome(self, task_id: str) -> p.Message:
        (done,) = [
            m
            for m in self.sent
            if isinstance(m, p.Finished | p.Failed | p.Killed) and m.task_id == task_id
        ]
        return done


GATES = {
    "c": {},
    "python": {"gate_factory": PyGate, "gated_iterator": py_gated_iterator},
}


@pytest.fixture(params=sorted(GATES))
def make_kernel(request):
    """Build kernels with the C gate and with its pure-Python twin."""
    if request.param == "c" and IMPLEMENTATION != "c":
        pytest.skip("the C gate is not built (see setup.py)")

    def make(**options):
        transport = Transport()
        return Kernel(transport, **GATES[request.param], **options), transport

    return make


class FakeClock:
    def __init__(self) -> None:
        self.now = 0

    def __call__(self) -> int:
        self.now += 1_000  # every reading advances 1 us, so latencies are never zero
        return self.now


def run_to_completion(kernel: Kernel, transport: Transport, task_id: str) -> int:
    """Run, resuming `task_id` whenever it is suspended, until it ends; return resumptions."""
    kernel.run()
    for resumptions in range(10_000):
        if [
            m
            for m in transport.sent
            if isinstance(m, p.Finished | p.Failed | p.Killed) and m.task_id == task_id
        ]:
            return resumptions
        kernel.resume(task_id)
        kernel.run()
    raise AssertionError(f"{task_id} did not end within 10000 resumptions")


def interrupting(kernel: Kernel, task_id: str, data, every: int):
    """Yield `data`, posting a suspend for `task_id` every `every` records."""
    for i, record in enumerate(data):
        if i % every == every - 1:
            kernel.suspend(task_id)
        yield record


WORDS = [f"w{i % 37}" for i in range(5_000)]
CONSUMERS = {
    "sum": (sum, list(range(20_000))),
    "Counter": (collections.Counter, WORDS),
    "join": ("".join, WORDS),
    "sorted": (sorted, [(i * 7919) % 10_007 for i in range(10_000)]),
    "max": (max, [(i * 31) % 1_000 for i in range(10_000)]),
}


@pytest.mark.parametrize("name", sorted(CONSUMERS))
def test_suspending_inside_c_consumers_gives_the_uninterrupted_result(make_kernel, name):
    consume, data = CONSUMERS[name]
    kernel, transport = make_kernel()
    kernel.launch("t", consume, [interrupting(kernel, "t", data, every=97)])

    resumptions = run_to_completion(kernel, transport, "t")

    done = transport.outcome("t")
    assert isinstance(done, p.Finished)
    expected = consume(data)
    assert done.result == (dict(expected) if isinstance(expected, dict) else expected)
    assert resumptions == len(data) // 97 == done.stats["suspensions"]
    assert done.stats["records"] == len(data)


def test_a_partition_argument_is_suspendable_inside_sum(make_kernel):
    kernel, transport = make_kernel()
    data = list(range(1_000))

    def summing(part):
        assert isinstance(part, Partition) and len(part) == 1_000 and part[3] == 3
        kernel.suspend("t")  # arrives before the first record is consumed
        return sum(part)

    kernel.launch("t", summing, [data])
    assert run_to_completion(kernel, transport, "t") == 1
    assert transport.outcome("t").result == sum(data)
    (suspended,) = transport.of(p.Suspended, "t")
    assert suspended.records == 0  # parked before record 0: nothing consumed, nothing lost


def test_suspension_deep_in_nested_calls_resumes_exactly_there(make_kernel):
    kernel, transport = make_kernel()
    seen = []

    def leaf(it):
        for x in it:
            seen.append(x)
            if x in (10, 20):
                kernel.suspend("t")
        return len(seen)

    def middle(it):
        return leaf(iter(it))

    def top(part):
        return middle(part) + 0

    kernel.launch("t", top, [list(range(30))])
    assert run_to_completion(kernel, transport, "t") == 2
    assert seen == list(range(30))  # no record skipped or repeated


def test_generator_task_yields_are_suspension_points(make_kernel):
    kernel, transport = make_kernel()

    @task
    def doubles(part):
        for x in part:
            yield 2 * x
            if x == 5:
                kernel.suspend("g")  # honoured right after this output is emitted

    kernel.launch("g", doubles, [list(range(8))])
    kernel.run()
    (suspended,) = transport.of(p.Suspended, "g")
    assert suspended.records == 6  # records 0..5 consumed when it parked
    run_to_completion(kernel, transport, "g")
    assert transport.outcome("g").result == [0, 2, 4, 6, 8, 10, 12, 14]


def test_resumed_tasks_run_before_new_launches(make_kernel):
    kernel, transport = make_kernel()
    order = []

    def work(name, part):
        for x in part:
            order.append((name, x))
            if name == "batch" and x == 1:
                kernel.suspend("batch")
                kernel.launch("stream", work, ["stream", [0]])
        return name

    kernel.launch("batch", work, ["batch", [0, 1, 2]])
    kernel.run()  # batch parks, stream takes the slot and finishes
    kernel.launch("later", work, ["later", [0]])
    kernel.resume("batch")
    kernel.run()
    assert order == [("batch", 0), ("batch", 1), ("stream", 0), ("batch", 2), ("later", 0)]
    started = [m.task_id for m in transport.of(p.Started)]
    assert started == ["batch", "stream", "later"]


def test_suspend_and_resume_latencies_are_measured(make_kernel):
    clock = FakeClock()
    kernel, transport = make_kernel(clock=clock)
    kernel.launch("t", sum, [interrupting(kernel, "t", range(100), every=10)])
    run_to_completion(kernel, transport, "t")
    suspended, resumed = transport.of(p.Suspended, "t"), transport.of(p.Resumed, "t")
    assert len(suspended) == len(resumed) == 10
    assert all(0 < m.latency_ns < 100_000 for m in suspended + resumed)
    stats = transport.outcome("t").stats
    assert stats["suspended_ns"] > 0 and stats["running_ns"] > 0


def test_heartbeats_report_each_started_tasks_running_time_and_records(make_kernel):
    clock = FakeClock()
    kernel, transport = make_kernel(clock=clock)
    seen = {}

    def records(n):
        for i in range(n):
            clock.now += 2_000_000  # 2 ms a record, by the kernel's clock
            if i == 10:
                # As the listener reads it for a heartbeat, while the task runs: ten
                # records handed out, the eleventh under way.
                seen["running"] = kernel.task_progress()
                kernel.suspend("t")
            yield i

    kernel.launch("t", sum, [records(20)])
    kernel.launch("later", sum, [[1, 2]])
    kernel.run()
    running_ns, consumed = seen["running"]["t"]
    assert consumed == 10 and 22_000_000 <= running_ns < 23_000_000
    assert "later" not in seen["running"]  # queued, not started: nothing to report
    (suspended,) = transport.of(p.Suspended, "t")
    parked = kernel.task_progress()["t"]  # parked: its figures as of its suspension
    assert parked[1] == suspended.records == 11 and parked[0] >= running_ns
    kernel.resume("t")
    kernel.run()
    assert kernel.task_progress() == {}  # both done: their ends report their figures


def test_kill_unwinds_running_suspended_and_queued_tasks(make_kernel):
    kernel, transport = make_kernel()
    cleaned = []

    def victim(name, part):
        try:
            for x in part:
                if x == 3:
                    kernel.suspend(name)
        finally:
            cleaned.append(name)

    kernel.launch("suspended", victim, ["suspended", range(10)])
    kernel.run()  # parks at record 4
    kernel.launch("queued", victim, ["queued", range(10)])
    kernel.kill("queued")
    kernel.kill("suspended")
    kernel.run()
    assert isinstance(transport.outcome("suspended"), p.Killed)
    assert isinstance(transport.outcome("queued"), p.Killed)
    assert cleaned == ["suspended"]  # the queued one never started, so had nothing to unwind

    def running(part):
        for x in part:
            if x == 2:
                kernel.kill("running")
        return "finished anyway"

    kernel.launch("running", running, [range(10)])
    kernel.run()
    killed = transport.outcome("running")
    assert isinstance(killed, p.Killed) and killed.stats["records"] == 3


def test_killing_a_suspended_task_while_another_runs_leaves_the_running_one_its_slot(
    make_kernel,
):
    # A kill for a suspended task reaches the hub while another task is parked at a record
    # boundary: the hub unwinds the suspended one, then the parked one carries on (it used
    # to be forgotten, RUNNING for ever, its result never reported).
    kernel, transport = make_kernel()

    def parked(part):
        for x in part:
            if x == 3:
                kernel.suspend("parked")
        return "parked done"

    def running(part):
        total = 0
        for x in part:
            if x == 5:
                kernel.kill("parked")  # posted mid-task, as the listener would
            total += x
        return total

    kernel.launch("parked", parked, [range(10)])
    kernel.run()  # "parked" is suspended at record 4, after it started
    kernel.launch("running", running, [range(10)])
    kernel.run()
    assert isinstance(transport.outcome("parked"), p.Killed)
    assert transport.outcome("running").result == 45
    assert kernel.statistics().running == 0


def test_a_task_cannot_swallow_its_kill_with_except_exception(make_kernel):
    kernel, transport = make_kernel()

    def stubborn(part):
        try:
            for x in part:
                if x == 1:
                    kernel.kill("s")
        except Exception:
            return "swallowed"
        return "finished"

    kernel.launch("s", stubborn, [range(5)])
    kernel.run()
    assert isinstance(transport.outcome("s"), p.Killed)
    assert TaskKilled.__mro__[1] is BaseException


def test_a_task_exception_is_reported_with_its_traceback(make_kernel):
    kernel, transport = make_kernel()

    def broken_task(part):
        for x in part:
            if x == 2:
                raise ValueError(f"bad record {x}")

    kernel.launch("b", broken_task, [[0, 1, 2]])
    kernel.launch("ok", sum, [[1, 2]])
    kernel.run()
    failed = transport.outcome("b")
    assert isinstance(failed, p.Failed)
    assert failed.error_type == "ValueError" and failed.message == "bad record 2"
    assert (
        "broken_task" in failed.traceback
        and 'raise ValueError(f"bad record {x}")' in failed.traceback
    )
    assert transport.outcome("ok").result == 3  # the kernel kept going


def test_results_msgpack_cannot_carry_fail_with_a_clear_error(make_kernel):
    kernel, transport = make_kernel()
    kernel.launch("s", lambda: {1, 2})
    kernel.run()
    failed = transport.outcome("s")
    assert isinstance(failed, p.Failed) and failed.error_type == "EncodeError"
    assert "set" in failed.message


def test_a_payload_is_unpacked_when_the_task_starts_with_tuple_keys_intact(make_kernel):
    kernel, transport = make_kernel()
    counts = {("ad", 1): 2, ("ad", 2): 3}

    def total(table, *, scale):
        assert all(type(key) is tuple for key in table)
        return {key: n * scale for key, n in table.items()}

    kernel.launch("t", total, payload=payloads.pack_call([counts], {"scale": 10}))
    kernel.run()
    assert transport.outcome("t").result == {("ad", 1): 20, ("ad", 2): 30}


@task(inputs=[])
def _length_and_type(records):
    return [len(records), type(records).__name__]


@pytest.mark.parametrize("gated", [True, False])
def test_a_big_argument_is_decoded_a_block_at_a_time_with_a_suspension_point_after_each(
    make_kernel, monkeypatch, gated
):
    """Gated: decoded as the task reads it (the rest stays packed while it is parked).
    Not gated (`inputs=[]`): decoded before the call, a list as it was sent."""
    kernel, transport = make_kernel()
    records = list(range(10 * payloads.BLOCKED_MIN_ITEMS))
    decoded = []
    unpack_block = payloads.unpack_block

    def counting(block, *what):
        decoded.append(len(block))
        if len(decoded) == 2:  # a suspend lands while the second block is decoded
            kernel.suspend("t")
        return unpack_block(block, *what)

    monkeypatch.setattr(payloads, "unpack_block", counting)
    fn = sum if gated else _length_and_type
    kernel.launch("t", fn, payload=payloads.pack_call([records], {}))
    kernel.run()
    (suspended,) = transport.of(p.Suspended, "t")
    assert len(decoded) == 2
    if gated:  # parked in `sum`, at the record after the second block's decode
        assert payloads.MAX_BLOCK_ITEMS < suspended.records <= 2 * payloads.MAX_BLOCK_ITEMS
    else:  # parked before the task's code
        assert suspended.records == 0
    kernel.resume("t")
    kernel.run()
    expected = sum(records) if gated else [len(records), "list"]
    assert len(decoded) > 10 and transport.outcome("t").result == expected


def test_a_spooled_argument_is_read_in_pieces_and_suspends_between_them(make_kernel):
    payload = payloads.pack_call([list(range(1000))], {})
    reads = []

    def fetch(reference):
        for start in range(0, reference.size, 100):
            reads.append(start)
            if start == 200:
                kernel.suspend("t")  # lands while the data is being read
            yield payload[start : start + 100]

    kernel, transport = make_kernel(fetch=fetch)
    blob = payloads.pack_reference(Reference("h", "/spool/1", len(payload), "", "1"))
    kernel.launch("t", sum, payload=blob)
    kernel.run()
    assert reads == [0, 100, 200] and transport.of(p.Suspended, "t")
    kernel.resume("t")
    kernel.run()
    assert transport.outcome("t").result == sum(range(1000))


def test_a_spooled_argument_that_is_gone_fails_its_task_with_the_reason(make_kernel, tmp_path):
    kernel, transport = make_kernel()
    gone = payloads.pack_reference(Reference("nowhere", str(tmp_path / "1"), 10, "", "1"))
    kernel.launch("t", sum, payload=gone)
    kernel.run()
    failed = transport.outcome("t")
    assert failed.error_type == "tidal.runtime.datastore.DataUnavailable"
    assert "10 bytes spooled at nowhere:" in failed.message


def test_a_result_too_big_for_a_frame_fails_its_task_instead_of_vanishing(make_kernel, monkeypatch):
    monkeypatch.setattr(payloads, "MAX_RESULT_BYTES", 1000)
    kernel, transport = make_kernel()
    kernel.launch("t", lambda: b"x" * 2000)
    kernel.run()
    failed = transport.outcome("t")
    assert failed.error_type == "EncodeError" and "over the 1,000-byte limit" in failed.message
    kernel.launch_chunk("c", lambda n: b"x" * n, [["small", [10], {}], ["big", [2000], {}]])
    kernel.run()
    items = {i[0]: i for i in chunk_items(transport, "c")}
    assert items["small"][1] == "finished" and items["big"][1] == "failed"
    assert "over the 1,000-byte limit" in items["big"][3][1]


def test_a_big_result_is_spooled_and_reported_as_its_reference(make_kernel):
    spooled = []

    def spool(payload):
        spooled.append(payload)
        return b"\xc1reference"

    kernel, transport = make_kernel(spool_result=spool)
    big = b"x" * payloads.DATA_THRESHOLD
    kernel.launch("big", lambda: big)
    kernel.launch("small", lambda: b"x" * 10)
    kernel.launch_chunk("c", lambda n: b"y" * n, [["s1", [10], {}], ["s2", [len(big)], {}]])
    kernel.run()
    assert transport.outcome("big").result == b"\xc1reference"
    assert transport.outcome("small").result == b"x" * 10
    items = {i[0]: i for i in chunk_items(transport, "c")}
    assert items["s1"][2] == b"y" * 10
    assert items["s2"][2] == b"\xc1reference"
    assert [payloads.unpack_payload(p_) for p_ in spooled] == [big, b"y" * len(big)]


def test_a_task_killed_while_its_argument_decodes_is_killed(make_kernel, monkeypatch):
    kernel, transport = make_kernel()
    unpack_block = payloads.unpack_block
    calls = []

    def killing(block):
        calls.append(1)
        kernel.kill("t")
        return unpack_block(block)

    monkeypatch.setattr(payloads, "unpack_block", killing)
    kernel.launch("t", sum, payload=payloads.pack_call([[0] * payloads.BLOCKED_MIN_ITEMS], {}))
    kernel.run()
    assert isinstance(transport.outcome("t"), p.Killed) and len(calls) == 1


@pytest.mark.parametrize(
    ("payload", "problem"),
    [
        (b"\xc1", "task payload's reference is not valid msgpack"),  # 0xc1: a reference
        (b"\x92\x90", "task payload is not valid msgpack"),  # truncated
        (payloads.pack_payload({"args": []}), "task payload must be [args, kwargs]"),
        (payloads.pack_payload([[1], {2: 3}]), "task payload must be [args, kwargs]"),
        (msgpack.packb([[msgpack.ExtType(5, b"")], {}, []]), "extension type 5"),
    ],
)
def test_a_payload_that_does_not_unpack_fails_that_task_only(make_kernel, payload, problem):
    kernel, transport = make_kernel()
    kernel.launch("bad", sum, payload=payload)
    kernel.launch("ok", sum, payload=payloads.pack_call([[1, 2]], {}))
    kernel.run()
    failed = transport.outcome("bad")
    assert isinstance(failed, p.Failed)
    assert failed.error_type == "tidal.runtime.protocol.ProtocolError"
    assert problem in failed.message
    assert transport.outcome("ok").result == 3  # the kernel kept going


def test_async_functions_are_refused_with_a_clear_error(make_kernel):
    kernel, transport = make_kernel()

    async def coroutine_task():
        return 1

    kernel.launch("a", coroutine_task)
    kernel.run()
    failed = transport.outcome("a")
    assert failed.error_type == "TypeError" and "async function" in failed.message


def test_a_task_with_no_record_boundary_is_reported_unsuspendable(make_kernel):
    clock = FakeClock()
    kernel, transport = make_kernel(clock=clock, suspend_timeout_ns=50_000_000)
    failures = []

    def busy_without_yield_points():
        kernel.suspend("busy")
        clock.now += 60_000_000  # 60 ms of pure computation pass, no gated input
        failures.extend(kernel.check_overdue())  # what the listener thread does meanwhile
        return sum(i for i in range(100))  # not a gated iterable: no boundary

    kernel.launch("busy", busy_without_yield_points)
    kernel.run()
    (failure,) = failures
    assert failure.task_id == "busy" and "no record boundary" in failure.reason
    assert failure.waited_ns >= 60_000_000
    assert isinstance(transport.outcome("busy"), p.Finished)  # it ran on, and finished
    assert transport.of(p.Suspended) == []  # the abandoned request is not honoured late
    assert not kernel.has_pending_suspensions()


def test_task_context_tracks_the_running_task(make_kernel):
    kernel, transport = make_kernel()
    seen = []

    def introspect(part):
        for _ in part:
            ctx = current_context()
            seen.append((ctx.task_id, ctx.attempt, ctx.priority, ctx.suspensions))
            if ctx.suspensions == 0:
                kernel.suspend(ctx.task_id)
        return ctx.records

    kernel.launch("c", introspect, [range(3)], attempt=2, priority="stream")
    run_to_completion(kernel, transport, "c")
    assert seen == [("c", 2, "stream", 0), ("c", 2, "stream", 1), ("c", 2, "stream", 1)]
    assert transport.outcome("c").result == 3
    with pytest.raises(RuntimeError, match="outside a Tidal task"):
        current_context()


def test_commands_that_do_not_apply_are_refused_not_fatal(make_kernel):
    kernel, transport = make_kernel()
    kernel.suspend("ghost")
    kernel.resume("ghost")
    kernel.kill("ghost")
    kernel.launch("t", sum, [[1]])
    kernel.launch("t", sum, [[2]])  # duplicate id while the first is still queued
    kernel.run()
    kernel.resume("t")  # finished: nothing to resume
    kernel.run()
    refused = [(m.command, m.task_id) for m in transport.of(p.Refused)]
    assert refused == [
        ("suspend", "ghost"),
        ("resume", "ghost"),
        ("kill", "ghost"),
        ("launch", "t"),
        ("resume", "t"),
    ]
    assert transport.outcome("t").result == 1


def test_a_task_suspended_before_it_started_starts_when_resumed(make_kernel):
    kernel, transport = make_kernel()
    kernel.launch("q", sum, [[1, 2, 3]])
    kernel.suspend("q")
    kernel.run()
    assert transport.of(p.Started) == [] and len(transport.of(p.Suspended, "q")) == 1
    kernel.resume("q")
    kernel.run()
    assert transport.outcome("q").result == 6


def test_many_tasks_interleave_without_mixing_state(make_kernel):
    kernel, transport = make_kernel()
    ids = [f"t{i}" for i in range(20)]
    for i, task_id in enumerate(ids):
        data = list(range(i * 100, i * 100 + 300))
        kernel.launch(task_id, sum, [interrupting(kernel, task_id, data, every=50)])
    kernel.run()
    for _ in range(10_000):
        suspended = {m.task_id for m in transport.of(p.Suspended)} - {
            m.task_id for m in transport.of(p.Finished)
        }
        if not suspended:
            break
        transport.sent = [m for m in transport.sent if not isinstance(m, p.Suspended)]
        for task_id in sorted(suspended):
            kernel.resume(task_id)
        kernel.run()
    else:
        raise AssertionError(f"tasks still suspended after 10000 rounds: {sorted(suspended)}")
    for i, task_id in enumerate(ids):
        assert transport.outcome(task_id).result == sum(range(i * 100, i * 100 + 300))


def test_close_kills_what_is_left(make_kernel):
    kernel, transport = make_kernel()
    kernel.launch("a", sum, [interrupting(kernel, "a", range(10), every=2)])
    kernel.launch("b", sum, [[1]])
    kernel.suspend("b")
    kernel.run()
    kernel.close()
    assert isinstance(transport.outcome("a"), p.Killed)
    assert isinstance(transport.outcome("b"), p.Killed)


def test_a_repeated_resume_is_refused_not_run_twice(make_kernel):
    kernel, transport = make_kernel()
    kernel.launch("t", sum, [interrupting(kernel, "t", range(10), every=5)])
    kernel.run()
    kernel.resume("t")
    kernel.resume("t")  # e.g. a scheduler retrying
    kernel.run()
    assert [m.command for m in transport.of(p.Refused)] == ["resume"]
    kernel.resume("t")
    kernel.run()
    assert transport.outcome("t").result == sum(range(10))


def test_resume_then_suspend_before_it_ran_leaves_it_suspended(make_kernel):
    kernel, transport = make_kernel()
    kernel.launch("t", sum, [interrupting(kernel, "t", range(10), every=5)])
    kernel.run()
    kernel.resume("t")
    kernel.suspend("t")
    kernel.run()
    assert transport.of(p.Refused) == []
    assert len(transport.of(p.Suspended, "t")) == 2 and transport.of(p.Resumed) == []
    run_to_completion(kernel, transport, "t")
    assert transport.outcome("t").result == sum(range(10))


def test_an_exception_whose_str_raises_is_still_reported(make_kernel):
    kernel, transport = make_kernel()

    class Nasty(Exception):
        def __str__(self):
            raise RuntimeError("no description for you")

    def raises_nasty():
        raise Nasty

    kernel.launch("n", raises_nasty)
    kernel.launch("after", sum, [[1, 2]])
    kernel.run()
    failed = transport.outcome("n")
    assert failed.error_type.endswith("Nasty") and "could not describe" in failed.message
    assert transport.outcome("after").result == 3


def test_a_task_that_swallows_its_kill_is_killed_again_at_the_next_boundary(make_kernel):
    kernel, transport = make_kernel()
    attempts = []

    def stubborn(part):
        records = iter(part)
        total = 0
        while True:
            try:
                x = next(records)  # TaskKilled is raised here, at the record boundary
            except StopIteration:
                return total
            except BaseException as exc:  # swallows TaskKilled once, then gives up
                attempts.append(type(exc).__name__)
                if len(attempts) > 1:
                    raise
                continue
            if x == 2:
                kernel.kill("s")
            total += x

    kernel.launch("s", stubborn, [list(range(1000))])
    kernel.run()
    assert attempts == ["TaskKilled", "TaskKilled"]  # killed again at the next boundary
    assert isinstance(transport.outcome("s"), p.Killed)


def test_stream_launches_jump_ahead_of_queued_batch_and_resumed_tasks(make_kernel):
    kernel, transport = make_kernel()
    kernel.launch("parked", sum, [interrupting(kernel, "parked", range(4), every=2)])
    kernel.run()
    kernel.launch("batch", sum, [[1]])
    kernel.resume("parked")
    kernel.launch("stream", sum, [[2]], priority="stream")
    kernel.run()
    order = [
        (type(m).__name__, m.task_id)
        for m in transport.sent
        if (isinstance(m, p.Started | p.Resumed | p.Finished) and m.task_id != "parked")
        or isinstance(m, p.Resumed)
    ]
    # The stream task first, then the resumed task (which parks again at its next
    # interruption), and only then the batch launch that was queued before both.
    assert order == [
        ("Started", "stream"),
        ("Finished", "stream"),
        ("Resumed", "parked"),
        ("Started", "batch"),
        ("Finished", "batch"),
    ]


def test_a_launch_with_an_unknown_priority_is_refused(make_kernel):
    kernel, transport = make_kernel()
    kernel.launch("u", sum, [[1]], priority="urgent")
    kernel.run()
    (refused,) = transport.of(p.Refused)
    assert refused.command == "launch" and "unknown priority 'urgent'" in refused.reason


def test_inputs_named_by_the_decorator_are_gated_also_when_passed_by_position(make_kernel):
    kernel, transport = make_kernel()

    @task(inputs=["lines"])
    def count(prefix, lines):
        return sum(1 for line in lines if line.startswith(prefix))

    data = [f"a{i}" if i % 2 else f"b{i}" for i in range(100)]
    kernel.launch("n", count, ["a", interrupting(kernel, "n", data, every=30)])
    assert run_to_completion(kernel, transport, "n") == 3
    assert transport.outcome("n").result == 50


# ---- chunks ---------------------------------------------------------------------------------


def _value(payload: bytes) -> object:
    return payload if payloads.is_reference(payload) else payloads.unpack_payload(payload)


def chunk_items(transport, chunk_id):
    return [
        item for m in transport.of(p.ChunkResults) if m.chunk_id == chunk_id for item in m.items
    ]


def test_a_chunk_runs_its_subtasks_in_order_and_reports_every_result(make_kernel):
    kernel, transport = make_kernel()
    subtasks = [[f"t{i}", [list(range(i))], {}] for i in range(1000)]
    kernel.launch_chunk("c", sum, subtasks)
    kernel.run()
    items = chunk_items(transport, "c")
    assert [i[0] for i in items] == [f"t{i}" for i in range(1000)]
    assert [i[2] for i in items] == [sum(range(i)) for i in range(1000)]
    assert len(transport.of(p.ChunkResults)) >= 2  # in batches, not one message per subtask
    assert isinstance(transport.outcome("c"), p.Finished)


def test_a_subtask_failure_fails_only_that_subtask(make_kernel):
    kernel, transport = make_kernel()
    kernel.launch_chunk("c", sum, [["a", [[1]], {}], ["b", [["x"]], {}], ["c", [[2]], {}]])
    kernel.run()
    items = {i[0]: i for i in chunk_items(transport, "c")}
    assert items["a"][2] == 1 and items["c"][2] == 2
    assert items["b"][1] == "failed" and items["b"][3][0] == "TypeError"
    message = "unsupported operand type(s) for +: 'int' and 'str'"  # what sum(["x"]) raises
    assert items["b"][3] == ["TypeError", message, f"TypeError: {message}\n"]


def test_a_chunk_from_the_wire_unpacks_each_subtask_and_a_bad_one_fails_alone(make_kernel):
    kernel, transport = make_kernel()
    subtasks = [
        ["a", payloads.pack_call([[1]], {})],
        ["b", b"\xc1"],  # not msgpack (0xc1 marks a reference: not one either)
        ["c", payloads.pack_call([[2, 3]], {})],
    ]
    kernel.launch_chunk("c", sum, subtasks)
    kernel.run()
    items = {i[0]: i for i in chunk_items(transport, "c")}
    assert items["a"][1:3] == ["finished", 1] and items["c"][1:3] == ["finished", 5]
    assert items["b"][1:3] == ["failed", None]
    assert items["b"][3][0] == "tidal.runtime.protocol.ProtocolError"
    assert "is not valid msgpack" in items["b"][3][1]
    assert isinstance(transport.outcome("c"), p.Finished)


def test_a_subtask_result_msgpack_cannot_carry_fails_that_subtask_only(make_kernel):
    kernel, transport = make_kernel()
    kernel.launch_chunk("c", lambda x: {x} if x == 1 else x, [["a", [0], {}], ["b", [1], {}]])
    kernel.run()
    items = {i[0]: i for i in chunk_items(transport, "c")}
    assert items["a"][1:3] == ["finished", 0]
    assert items["b"][1:3] == ["failed", None] and items["b"][3][0] == "EncodeError"
    assert items["b"][3][1].startswith("the result cannot be sent: result of b is of type set")


def test_a_chunk_is_suspendable_between_subtasks_and_resumes_exactly(make_kernel):
    kernel, transport = make_kernel()
    ran = []

    def record(x):
        ran.append(x)
        if x == 3:
            kernel.suspend("c")
        return x * 10

    kernel.launch_chunk("c", record, [[f"t{i}", [i], {}] for i in range(8)])
    kernel.run()
    assert ran == [0, 1, 2, 3] and len(transport.of(p.Suspended, "c")) == 1
    # Results of what ran went out before the chunk parked.
    assert [i[0] for i in chunk_items(transport, "c")] == ["t0", "t1", "t2", "t3"]
    kernel.launch("stream", sum, [[1, 2]], priority="stream")
    kernel.run()
    assert transport.outcome("stream").result == 3
    kernel.resume("c")
    kernel.run()
    assert ran == list(range(8))
    assert [i[2] for i in chunk_items(transport, "c")] == [x * 10 for x in range(8)]


def test_stealing_takes_only_subtasks_that_have_not_started(make_kernel):
    kernel, transport = make_kernel()
    ran = []

    def work(x):
        ran.append(x)
        if x == 2:
            kernel.suspend("c")  # park mid-chunk, as a busy executor's hub gets control
        return x

    kernel.launch_chunk("c", work, [[f"t{i}", [i], {}] for i in range(10)])
    kernel.run()
    kernel.steal("c", 5)
    kernel.steal("ghost", 3)
    kernel.run()
    stolen = {m.chunk_id: m.task_ids for m in transport.of(p.Stolen)}
    assert stolen == {"c": ["t5", "t6", "t7", "t8", "t9"], "ghost": []}
    kernel.resume("c")
    kernel.run()
    assert ran == [0, 1, 2, 3, 4]  # the stolen ones never ran here
    assert sorted(i[0] for i in chunk_items(transport, "c")) == [f"t{i}" for i in range(5)]


def test_a_killed_chunk_reports_the_subtasks_it_completed(make_kernel):
    kernel, transport = make_kernel()

    def work(x):
        if x == 4:
            kernel.kill("c")
        return x

    kernel.launch_chunk("c", work, [[f"t{i}", [i], {}] for i in range(9)])
    kernel.run()
    assert isinstance(transport.outcome("c"), p.Killed)
    # The subtasks that completed, the one that asked for the kill included, are reported.
    assert [i[0] for i in chunk_items(transport, "c")] == ["t0", "t1", "t2", "t3", "t4"]


def test_the_executor_hears_of_each_change_of_priority_class_once():
    classes = []
    transport = Transport()
    kernel = Kernel(transport, priority_changed=classes.append)

    def batch(part):
        for x in part:
            if x == 2:
                kernel.launch("s", sum, [[1, 2]], priority="stream")
                kernel.suspend("b")
        return sum(part)

    kernel.launch("b", batch, [list(range(5))])
    kernel.launch("b2", sum, [[1]])
    kernel.run()  # b runs, parks for s; b2 queued behind
    kernel.resume("b")
    kernel.run()
    assert classes == ["batch", "stream", "batch"]  # b, s, then b resumed and b2: no repeat
    assert transport.outcome("b").result == 10 and transport.outcome("s").result == 3


def test_an_idle_task_thread_waits_in_a_class_of_its_own():
    # "idle" (at the stream nice: runtime/realtime.py), not "stream": a stream task started
    # next must be a change of class, so that it starts as one after batch work does.
    classes: queue.SimpleQueue[str] = queue.SimpleQueue()
    kernel = Kernel(Transport(), priority_changed=classes.put)
    hub = threading.Thread(target=kernel.run, kwargs={"block": True})
    hub.start()
    try:
        assert classes.get(timeout=10) == "idle"  # idle from the start (lowered at start-up)
        kernel.launch("b", sum, [[1, 2]])
        # The batch task's class, then idle again: it sleeps until a command comes.
        assert [classes.get(timeout=10), classes.get(timeout=10)] == ["batch", "idle"]
        kernel.launch("s", sum, [[3]], priority="stream")
        assert [classes.get(timeout=10), classes.get(timeout=10)] == ["stream", "idle"]
    finally:
        kernel.stop()
        hub.join(10)
    assert classes.empty() and not hub.is_alive()


def test_a_raise_of_the_gates_watcher_between_tasks_makes_the_next_switch_set_the_class():
    classes = []
    kernel = Kernel(Transport(), priority_changed=classes.append, **GATES["python"])

    def first(part):
        total = sum(part)
        kernel.gate.watch_raises += 1  # frames came as it ended: the watcher lifted the nice
        return total

    kernel.launch("b1", first, [[1]])
    kernel.launch("b2", sum, [[2]])
    kernel.run()
    assert classes == ["batch", "batch"]  # set again for b2, though the class is the same


def test_a_suspend_hurries_the_task_thread_and_its_class_is_set_again_after():
    classes, hurried = [], []
    kernel = Kernel(Transport(), priority_changed=classes.append, hurry=lambda: hurried.append(1))

    def batch(part):
        for x in part:
            if x == 2:
                kernel.suspend("nobody")  # refused, but the thread was lifted meanwhile
        return sum(part)

    kernel.launch("b", batch, [list(range(5))])
    kernel.run()
    # Lifted once; the hub, back in the batch task after the refusal, sets its class again.
    assert hurried == [1] and classes == ["batch", "batch"]


def test_a_newer_attempt_replaces_a_queued_older_one_and_a_started_task_is_not_replaced():
    transport = Transport()
    kernel = Kernel(transport)
    kernel.launch("t", sum, [[1, 2]], attempt=0)  # arrived late, behind a reconnect
    kernel.launch("t", sum, [[1, 2]], attempt=1)
    kernel.run()
    assert [m.attempt for m in transport.of(p.Started, "t")] == [1]  # only the new one ran
    assert transport.outcome("t").attempt == 1 and not transport.of(p.Refused)
    kernel.launch("u", sum, [[1]], attempt=1)
    kernel.launch("u", sum, [[1]], attempt=0)  # an older attempt never replaces a newer one
    kernel.run()
    (refused,) = transport.of(p.Refused)
    assert refused.task_id == "u" and "already here" in refused.reason


# ---- span chunks (a bulk job's range: bare payloads, results in chunk_batch) ---------------


def span_results(transport, chunk_id):
    """{task index: (outcome, value or error)} from a span chunk's chunk_batch reports."""
    got = {}
    for m in transport.of(p.ChunkBatch):
        if m.chunk_id != chunk_id:
            continue
        errors = dict(m.errors)
        # Packed as one array only if none failed (payloads.pack_batch).
        assert type(m.values) is list or not errors
        for index, value in enumerate(batches.batch_payloads(m.values), m.start):
            assert index not in got, f"task {index} reported twice"
            if index in errors:
                got[index] = ("failed", errors[index])
            else:
                got[index] = ("finished", _value(value))
    return got


def calls(values):
    return [payloads.pack_call([v], {}) for v in values]


@pytest.fixture(params=["payloads", "columns"])
def launch_span(request):
    """Launch a span chunk of calls fn(x, **kwargs) for xs, tasks first, first + 1, ... of
    job "j": a payload per call, or columns (protocol 13, runtime/columns.py)."""

    def launch(kernel, chunk_id, fn, xs, first=0, **kwargs):
        xs = list(xs)
        if request.param == "payloads":
            kernel.launch_chunk(chunk_id, fn, calls_with(xs, **kwargs), span=("j", first))
            return
        packed = LaunchColumns(len(xs), msgpack.packb(xs), payloads.pack_payload(kwargs))
        kernel.launch_chunk(chunk_id, fn, [], span=("j", first), columns=packed)

    return launch


def test_a_span_chunk_reports_its_results_as_batches_by_index(make_kernel, launch_span):
    kernel, transport = make_kernel()
    # More results than one batch holds (SPAN_REPORT_EVERY): batches however fast it runs.
    count = SPAN_REPORT_EVERY + 1000
    launch_span(kernel, "c", sum, [list(range(i % 50)) for i in range(count)], first=7)
    kernel.run()
    got = span_results(transport, "c")
    assert got == {7 + i: ("finished", sum(range(i % 50))) for i in range(count)}
    batches = transport.of(p.ChunkBatch)
    assert len(batches) >= 2 and all(m.job_id == "j" for m in batches)  # in batches
    assert [m.start for m in batches] == sorted(m.start for m in batches)
    assert transport.of(p.ChunkResults) == [] and isinstance(transport.outcome("c"), p.Finished)


def test_span_batches_of_small_results_go_packed_by_thousands_and_of_big_ones_by_hundreds(
    make_kernel,
):
    kernel, transport = make_kernel(clock=FakeClock())  # 1 us a reading: runs grow at once
    kernel.launch_chunk("small", abs, calls(range(9_000)), span=("s", 0))
    kernel.launch_chunk("big", bytes, calls([2_000] * 3_000), span=("b", 0))
    kernel.run()
    small = [m for m in transport.of(p.ChunkBatch) if m.chunk_id == "small"]
    big = [m for m in transport.of(p.ChunkBatch) if m.chunk_id == "big"]
    assert all(type(m.values) is bytes for m in small)  # packed: none failed, each tiny
    assert (
        SPAN_REPORT_EVERY
        <= max(batches.values_count(m.values) for m in small)
        < 2 * SPAN_REPORT_EVERY
    )
    # Results of 1 KiB or more: a list of at most ~2 x 512 (a frame must hold the batch).
    assert all(type(m.values) is list and len(m.values) < 2 * CHUNK_REPORT_EVERY for m in big)
    assert span_results(transport, "big") == {i: ("finished", bytes(2_000)) for i in range(3_000)}
    assert span_results(transport, "small") == {i: ("finished", i) for i in range(9_000)}


def test_a_failing_or_unreadable_span_task_fails_alone(make_kernel):
    kernel, transport = make_kernel()
    payloads_ = [*calls([[1], ["x"]]), b"\xc1", *calls([[2]])]
    kernel.launch_chunk("c", sum, payloads_, span=("j", 0))
    kernel.run()
    got = span_results(transport, "c")
    assert got[0] == ("finished", 1) and got[3] == ("finished", 2)
    assert got[1][0] == "failed" and got[1][1][0] == "TypeError"
    assert got[2][0] == "failed" and "is not valid msgpack" in got[2][1][1]


def test_a_span_chunk_is_suspendable_between_tasks_and_gives_up_its_tail(make_kernel, launch_span):
    kernel, transport = make_kernel()
    ran = []

    def work(x):
        ran.append(x)
        if x == 2:
            kernel.suspend("c")
        return x * 10

    launch_span(kernel, "c", work, range(10), first=100)
    kernel.run()
    assert ran == [0, 1, 2] and len(transport.of(p.Suspended, "c")) == 1
    assert sorted(span_results(transport, "c")) == [100, 101, 102]  # reported before parking
    assert kernel.holdings() == [["c", 0, "suspended", [f"j/{i}" for i in range(103, 110)]]]
    kernel.steal("c", 4)
    kernel.run()
    (stolen,) = transport.of(p.Stolen)
    assert stolen.task_ids == ["j/106", "j/107", "j/108", "j/109"]
    kernel.resume("c")
    kernel.run()
    assert ran == [0, 1, 2, 3, 4, 5]
    assert span_results(transport, "c") == {100 + i: ("finished", i * 10) for i in range(6)}


def test_a_killed_span_chunk_reports_what_it_completed(make_kernel, launch_span):
    kernel, transport = make_kernel()

    def work(x):
        if x == 4:
            kernel.kill("c")
        return x

    launch_span(kernel, "c", work, range(9))
    kernel.run()
    assert isinstance(transport.outcome("c"), p.Killed)
    assert sorted(span_results(transport, "c")) == [0, 1, 2, 3, 4]


def calls_with(values, **kwargs):
    packed = payloads.pack_payload(kwargs)
    return [payloads.pack_call([v], kwargs, packed_kwargs=packed) for v in values]


def scaled(x, by=1):
    return 100 // x * by


def test_a_run_of_map_calls_fails_one_call_alone_and_passes_the_kwargs(make_kernel, launch_span):
    kernel, transport = make_kernel()
    launch_span(kernel, "c", scaled, [1, 2, 0, 4, 5] * 40, by=3)
    kernel.run()
    got = span_results(transport, "c")
    expected = {i: ("finished", 100 // x * 3) for i, x in enumerate([1, 2, 0, 4, 5] * 40) if x}
    assert {i: r for i, r in got.items() if r[0] == "finished"} == expected
    failed = sorted(i for i, r in got.items() if r[0] == "failed")
    assert failed == list(range(2, 200, 5))
    assert got[2][1][0] == "ZeroDivisionError"


def test_a_plain_function_returning_a_generator_has_its_records_as_result(make_kernel, launch_span):
    kernel, transport = make_kernel()
    launch_span(kernel, "c", lambda n: (i for i in range(n)), range(50))
    kernel.run()
    assert span_results(transport, "c") == {n: ("finished", list(range(n))) for n in range(50)}


def test_a_steal_takes_calls_of_a_run_that_have_not_started(make_kernel, launch_span):
    kernel, transport = make_kernel()
    ran = []

    def work(x):
        ran.append(x)
        if x == 40:
            kernel.suspend("c")  # parks between two calls of a run
        return x

    launch_span(kernel, "c", work, range(60))
    kernel.run()
    assert ran[-1] == 40 and sorted(span_results(transport, "c")) == list(range(41))
    kernel.steal("c", 30)
    kernel.run()
    (stolen,) = transport.of(p.Stolen)
    assert stolen.task_ids == [f"j/{i}" for i in range(30, 60)][-len(stolen.task_ids) :]
    kept = 60 - len(stolen.task_ids)
    assert len(stolen.task_ids) == min(30, 60 - 41)  # only those not started
    kernel.resume("c")
    kernel.run()
    assert ran == list(range(kept)) and sorted(span_results(transport, "c")) == list(range(kept))


def test_a_run_is_taken_once_when_a_generator_driven_at_its_end_is_suspended(
    make_kernel, launch_span
):
    kernel, transport = make_kernel()

    def records(n):
        for i in range(n):
            if i == 1:
                kernel.suspend("c")  # parks while the run's end drives this generator
            yield i

    def work(n):  # a plain function; one of its results is a generator
        return records(n) if n == 7 else n

    launch_span(kernel, "c", work, range(10))
    kernel.run()
    kernel.resume("c")
    kernel.run()
    expected = {n: ("finished", list(range(n)) if n == 7 else n) for n in range(10)}
    assert span_results(transport, "c") == expected


def test_a_run_only_takes_calls_whose_argument_is_exactly_their_bytes(make_kernel):
    # [[5], {"a": {}}] between [[x], {}] calls: concatenated, its kwargs and the next
    # call's argument would decode as {"a": 7}: a run must not take it as f(5).
    kernel, transport = make_kernel()
    odd = [
        payloads.pack_call([0], {}),
        payloads.pack_call([1], {}),
        payloads.pack_call([5], {"a": {}}),
        payloads.pack_call([7], {}),
    ]
    kernel.launch_chunk("c", lambda x, **kw: [x, kw], odd, span=("j", 0))
    kernel.run()
    assert span_results(transport, "c") == {
        0: ("finished", [0, {}]),
        1: ("finished", [1, {}]),
        2: ("finished", [5, {"a": {}}]),
        3: ("finished", [7, {}]),
    }


def take_option(x, opts=None):
    return [x, opts.pop("mode", "default")]


def test_calls_with_a_mutable_keyword_argument_each_get_their_own(make_kernel, launch_span):
    kernel, transport = make_kernel()
    launch_span(kernel, "c", take_option, range(40), opts={"mode": "fast"})
    kernel.run()
    assert span_results(transport, "c") == {i: ("finished", [i, "fast"]) for i in range(40)}


def test_a_call_raising_stopiteration_fails_alone_in_a_run(make_kernel, launch_span):
    kernel, transport = make_kernel()

    def work(x):
        if x == 5:
            raise StopIteration
        return x

    launch_span(kernel, "c", work, range(40))
    kernel.run()
    got = span_results(transport, "c")
    assert got[5][0] == "failed" and "StopIteration" in got[5][1][1]
    assert {i: r for i, r in got.items() if i != 5} == {
        i: ("finished", i) for i in range(40) if i != 5
    }
    assert isinstance(transport.outcome("c"), p.Finished)


def test_a_steal_between_two_runs_takes_every_call_left_and_the_chunk_ends(
    make_kernel, launch_span
):
    kernel, transport = make_kernel()
    ran = []

    def work(x):
        ran.append(x)
        if x == 0:
            kernel.suspend("c")
        return x

    launch_span(kernel, "c", work, range(3))
    kernel.run()  # parks after task 0, the first run of one call
    kernel.steal("c", 2)
    kernel.run()
    kernel.resume("c")
    kernel.run()
    assert ran == [0] and isinstance(transport.outcome("c"), p.Finished)
    assert transport.of(p.Stolen)[0].task_ids == ["j/1", "j/2"]


def columns_of(xs, kwargs_packed=None, args=None):
    xs = list(xs)
    kwargs_packed = payloads.pack_payload({}) if kwargs_packed is None else kwargs_packed
    return LaunchColumns(len(xs), msgpack.packb(xs) if args is None else args, kwargs_packed)


def show(x, tag):
    """What a call saw: its argument's type and contents (a gated input read out), its tag."""
    return [type(x).__name__, list(x) if isinstance(x, Partition) else x, tag]


def test_a_columnar_span_runs_scalars_in_runs_and_other_arguments_alone_as_payloads_would(
    make_kernel,
):
    xs = [1, 2, [3, 4], "s", None, [], 5, {"k": [6]}, 7.5, b"b", True] * 30
    kernel, transport = make_kernel()
    kernel.launch_chunk("payloads", show, calls_with(xs, tag="t"), span=("j", 0))
    kwargs = payloads.pack_payload({"tag": "t"})
    kernel.launch_chunk("columns", show, [], span=("j", 0), columns=columns_of(xs, kwargs))
    kernel.run()
    classic = span_results(transport, "payloads")
    assert span_results(transport, "columns") == classic
    assert classic[2] == ("finished", ["Partition", [3, 4], "t"])
    assert classic[0] == ("finished", ["int", 1, "t"]) and len(classic) == len(xs)

    def seen(x, log):  # each call gets kwargs of its own, as a payload of its own would
        log.append(x)
        return len(log)

    log = payloads.pack_payload({"log": []})
    kernel.launch_chunk("own", seen, [], span=("c", 0), columns=columns_of([[1], 2, [3]], log))
    kernel.run()
    assert span_results(transport, "own") == {i: ("finished", 1) for i in range(3)}


def test_an_argument_of_a_columnar_span_that_does_not_decode_fails_alone(make_kernel):
    kernel, transport = make_kernel()
    # Well formed msgpack (it scans), but an extension type, which no Tidal payload holds.
    args = msgpack.packb([1, msgpack.ExtType(7, b"x"), [2, 3]])
    kernel.launch_chunk("c", sum, [], span=("j", 0), columns=columns_of([0, 0, 0], args=args))
    kwargs = b"\xc1"  # kwargs that do not decode: every call fails, saying so
    kernel.launch_chunk("k", abs, [], span=("k", 0), columns=columns_of([1, 2], kwargs))
    kernel.run()
    got = span_results(transport, "c")
    assert got[0][0] == "failed" and got[0][1][0] == "TypeError"  # sum(1): the task's own
    assert got[1][0] == "failed" and "extension type 7" in got[1][1][1]
    assert got[2] == ("finished", 5)
    assert {i: r[1][0] for i, r in span_results(transport, "k").items()} == {
        0: "tidal.runtime.protocol.ProtocolError",
        1: "tidal.runtime.protocol.ProtocolError",
    }
    assert isinstance(transport.outcome("k"), p.Finished)


def test_a_steal_before_a_columnar_span_starts_takes_its_tail(make_kernel):
    kernel, transport = make_kernel()
    kernel.launch("first", sum, [[1]])
    kernel.launch_chunk("c", abs, [], span=("j", 10), columns=columns_of(range(-8, 0)))
    kernel.steal("c", 3)
    kernel.run()
    assert transport.of(p.Stolen)[0].task_ids == ["j/15", "j/16", "j/17"]
    assert span_results(transport, "c") == {10 + i: ("finished", 8 - i) for i in range(5)}


def test_reports_may_wait_between_short_batch_tasks_never_before_a_long_or_stream_one(
    make_kernel,
):
    # Between batch tasks queued back to back the hub `hold`s (the reports may go out
    # together, runtime/reports.py), if the next one's function ran short so far; it
    # flushes before the last one, before a task of a function not known to be short (it
    # might hold the GIL, and the reports with it), before a stream task, and right after
    # a stream task's end.
    calls = []
    transport_of = []

    def mark(name):
        return lambda: calls.append((name, [type(m).__name__ for m in transport_of[0].sent]))

    clock = FakeClock()
    kernel, transport = make_kernel(flush=mark("flush"), hold=mark("hold"), clock=clock)
    transport_of.append(transport)
    kernel.launch("first", sum, [[0]])  # sum is not known yet: no hold before it
    kernel.launch("b0", sum, [[1]])
    kernel.launch("b1", sum, [[2]])
    kernel.run()
    assert [name for name, _ in calls[:3]] == ["flush", "hold", "flush"]  # first, b0, b1
    calls.clear()
    transport.sent.clear()
    kernel.launch("s0", sum, [[3]], priority="stream")
    kernel.launch("b2", sum, [[4]])
    kernel.run()
    # s0 runs first (a stream launch), with a flush at its switch and one at its end.
    assert calls[0] == ("flush", ["Started"])
    assert calls[1] == ("flush", ["Started", "Finished"])
    calls.clear()

    def slow(x):  # runs 3 ms by the kernel's clock: longer than SHORT_TASK_NS
        clock.now += 3_000_000
        return x

    for task_id in ("slow0", "slow1", "slow2"):
        kernel.launch(task_id, slow, [1])
    kernel.run()
    assert [name for name, _ in calls[:3]] == ["flush", "flush", "flush"]


def test_a_kept_result_is_packed_in_its_task_and_a_suspend_parks_it_between_blocks(
    make_kernel, monkeypatch
):
    kept_payloads = {}

    def keep(task_id, payload):
        kept_payloads[task_id] = payload
        return b"\xc1reference"

    kernel, transport = make_kernel(keep_result=keep)
    value = list(range(5 * payloads.MAX_BLOCK_ITEMS))
    packed_blocks = []
    pack_blocks = payloads.pack_blocks

    def counting(items, boundary=None):
        def each():
            packed_blocks.append(1)
            if len(packed_blocks) == 2:  # a suspend lands while the result is packed
                kernel.suspend("t")
            if boundary is not None:
                boundary()

        return pack_blocks(items, each)

    monkeypatch.setattr(payloads, "pack_blocks", counting)
    kernel.launch("t", lambda: value, keep=True)
    kernel.run()
    # Parked at the boundary after the second block: the task has not ended.
    assert transport.of(p.Suspended, "t") and not transport.of(p.Finished, "t")
    assert len(packed_blocks) == 2
    kernel.resume("t")
    kernel.run()
    assert transport.outcome("t").result == b"\xc1reference"
    assert kept_payloads["t"] == pack_kept(value)  # the same bytes as packed in one go


def test_a_big_plain_result_is_packed_in_its_task_between_boundaries(make_kernel, monkeypatch):
    kernel, transport = make_kernel()
    value = [[i, "x" * 40] for i in range(3_000)]  # ~150 KB, 3,000 items
    boundaries = []
    pack_payload = payloads.pack_payload

    def counting(value, where="payload", boundary=None):
        if boundary is None:
            return pack_payload(value, where)
        return pack_payload(value, where, lambda: (boundaries.append(1), boundary()))

    monkeypatch.setattr(payloads, "pack_payload", counting)
    kernel.launch("t", lambda: value)
    kernel.launch("small", lambda: [1, 2, 3])
    kernel.run()
    assert len(boundaries) > 1  # only the big one's, a block at a time
    assert transport.outcome("t").result == value
    assert transport.outcome("small").result == [1, 2, 3]


def test_tasks_one_after_another_share_a_greenlet_each_in_an_empty_context(make_kernel):
    kernel, transport = make_kernel()
    seen = []
    var = contextvars.ContextVar("var", default="unset")

    def task(i):
        seen.append((greenlet.getcurrent(), var.get(), current_context().task_id))
        var.set(f"set by task {i}")

    for i in range(20):
        kernel.launch(f"t{i}", task, [i])
    kernel.run()

    assert all(isinstance(transport.outcome(f"t{i}"), p.Finished) for i in range(20))
    assert len({id(glet) for glet, _, _ in seen}) == 1  # (`seen` keeps each one alive)
    assert [value for _, value, _ in seen] == ["unset"] * 20  # nothing leaks to the next
    assert [task_id for _, _, task_id in seen] == [f"t{i}" for i in range(20)]


def test_a_parked_task_keeps_its_greenlet_while_another_runs_and_ends(make_kernel):
    kernel, transport = make_kernel()
    where = {}

    def consume(name, numbers):
        where[name] = greenlet.getcurrent()
        return sum(numbers)

    data = list(range(1_000))
    kernel.launch("a", consume, ["a", interrupting(kernel, "a", data, every=400)])
    kernel.run()  # "a" parks at its first suspension
    assert transport.of(p.Suspended)
    kernel.launch("b", consume, ["b", [1, 2, 3]])
    kernel.run()
    assert transport.outcome("b").result == 6
    assert run_to_completion(kernel, transport, "a") == 2
    assert transport.outcome("a").result == sum(data)
    assert where["a"] is not where["b"]


def test_a_parked_task_whose_greenlet_is_ended_unwinds_and_does_not_run_on(make_kernel):
    # What greenlet does to a greenlet dropped while it waits: GreenletExit there. A task's
    # greenlet runs task after task; this one must end, not take the next.
    kernel, _ = make_kernel()
    unwound = []

    def parks(numbers):
        try:
            return sum(numbers)
        finally:
            unwound.append("finally")

    kernel.launch("parked", parks, [interrupting(kernel, "parked", range(100), every=10)])
    kernel.run()
    glet = kernel._tasks["parked"].glet
    glet.throw(greenlet.GreenletExit)
    assert glet.dead and unwound == ["finally"]


class Tracked(list):
    """A list that a weak reference can follow (msgpack packs it as a list)."""


def test_an_ended_task_s_result_and_context_are_not_kept_by_its_waiting_greenlet(make_kernel):
    kernel, transport = make_kernel()
    made = []
    var = contextvars.ContextVar("var")

    def task():
        value, held = Tracked([1, 2]), Tracked([3])
        var.set(held)
        made.extend([weakref.ref(value), weakref.ref(held)])
        return value

    kernel.launch("t", task)
    kernel.run()
    assert transport.outcome("t").result == [1, 2]
    gc.collect()
    assert [ref() for ref in made] == [None, None]


def test_a_task_that_raises_greenlet_exit_fails_and_the_next_runs(make_kernel):
    kernel, transport = make_kernel()

    def exits():
        raise greenlet.GreenletExit("from the task itself")

    kernel.launch("t", exits)
    kernel.launch("u", sum, [[1, 2]])
    kernel.run()
    assert isinstance(transport.outcome("t"), p.Failed)
    assert "from the task itself" in transport.outcome("t").message
    assert transport.outcome("u").result == 3

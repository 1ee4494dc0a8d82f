"""Bulk jobs in the scheduler core: tasks kept as ranges (fake clock, executors played by
the test, a real journal in a temporary file for the restart)."""

from __future__ import annotations

import dataclasses

import msgpack
import pytest

from tests.scheduler.harness import MS, TOTAL, Harness, launched_payloads, payload
from tidal.runtime import payloads
from tidal.runtime import protocol as p
from tidal.scheduler.chunks import FIRST_CHUNK, MAX_CHUNK, TARGET_CHUNK_NS
from tidal.scheduler.core import ClientRequest, ExecutorLeft
from tidal.scheduler.journal import Journal
from tidal.scheduler.records import TaskState
from tidal.scheduler.records.spans import LAUNCH_PAYLOAD_BYTES, PIECE_TASKS


@pytest.fixture(autouse=True, params=["payloads", "columns"])
def bulk_form(request, monkeypatch):
    """Every test here runs with both forms of a bulk job the harness submits: a payload per
    task, and columns (protocol 13, runtime/columns.py)."""
    monkeypatch.setattr(Harness, "bulk_form", request.param)
    return request.param


def value(index):
    """The payload the test's executors send as task `index`'s result."""
    return payloads.pack_payload(index * 10)


def batch(h, executor_id, chunk, start, count, errors=()):
    """Report tasks [start, start + count) of span chunk `chunk` done (those in `errors`
    failed)."""
    values = [None if i in errors else value(i) for i in range(start, start + count)]
    failures = [[i, ["ValueError", f"bad {i}", ""]] for i in errors]
    job_id = chunk.span[0]
    h.report(executor_id, p.ChunkBatch(chunk.chunk_id, job_id, start, values, failures, count))


def run_span(h, executor_id, chunk):
    """Play an executor running span chunk `chunk` to its end."""
    h.report(executor_id, p.Started(chunk.chunk_id, chunk.attempt, h.clock.now))
    batch(h, executor_id, chunk, chunk.span[1], len(launched_payloads(chunk)))
    h.report(
        executor_id, p.Finished(chunk.chunk_id, chunk.attempt, payloads.pack_payload(None), {})
    )


def started_chunk(tasks, chunksize):
    """A bulk job "j" of `tasks` on one executor, its first span chunk launched and started."""
    h = Harness(executors=[("e0", "n0")])
    ids = h.submit("j", "batch", tasks, options={"chunksize": chunksize}, bulk=True)
    (chunk,) = h.sent("e0", p.LaunchChunk)
    h.report("e0", p.Started(chunk.chunk_id, 0, 1))
    return h, ids, chunk


def ended_once(h, ids):
    return sorted(h.results) == sorted(ids) and all(len(h.results[t]) == 1 for t in ids)


def test_a_bulk_job_runs_in_span_chunks_with_no_record_per_task():
    h = Harness(executors=[("e0", "n0")])
    ids = h.submit("j", "batch", 10, options={"chunksize": 4}, bulk=True)
    records = h.core.records
    assert [t for t in records.tasks if t.startswith("j/")] == []  # no record per task
    assert records.pending.count() == 6  # a chunk of 4 went out at once
    spans = []
    while chunks := h.sent("e0", p.LaunchChunk):
        (chunk,) = chunks
        calls = launched_payloads(chunk)
        assert calls == [payload(i) for i in range(chunk.span[1], chunk.span[1] + 4)][: len(calls)]
        spans.append((chunk.span[1], len(launched_payloads(chunk))))
        run_span(h, "e0", chunk)
    assert spans == [(0, 4), (4, 4), (8, 2)]
    assert ended_once(h, ids)
    assert [item[2] for t in ids for item in h.results[t]] == [value(i) for i in range(10)]
    assert len(h.batches) == 3  # one message to the client per batch, not per task
    job = records.jobs["j"]
    assert (job.finished, job.failed) == (10, 0)
    assert [t for t in records.tasks if t.startswith("j/")] == []


def test_a_big_bulk_job_is_a_few_pieces_and_chunks_never_span_two():
    h = Harness(executors=[("e0", "n0")])
    h.submit("j", "batch", PIECE_TASKS * 2 + 5, options={"chunksize": "auto"}, bulk=True)
    (chunk,) = h.sent("e0", p.LaunchChunk)
    assert chunk.span == ["j", 0] and len(launched_payloads(chunk)) == FIRST_CHUNK
    pieces = [t.piece for t in h.core.records.tasks.values() if t.piece is not None]
    assert [(piece.start, piece.stop) for piece in pieces] == [
        (FIRST_CHUNK, PIECE_TASKS),
        (PIECE_TASKS, 2 * PIECE_TASKS),
        (2 * PIECE_TASKS, 2 * PIECE_TASKS + 5),
    ]
    h.core.records.jobs["j"].subtask_ns = 1_000.0  # measured: 10,000 a chunk (MAX_CHUNK)
    batch(h, "e0", chunk, 0, FIRST_CHUNK)
    h.report("e0", p.Finished(chunk.chunk_id, 0, payloads.pack_payload(None), {}))
    (second,) = h.sent("e0", p.LaunchChunk)
    measured = h.core.records.jobs["j"].subtask_ns  # the first batch's time smoothed in
    by_rule = min(MAX_CHUNK, int(TARGET_CHUNK_NS / measured))  # a bulk job's: no overhead
    assert second.span == ["j", FIRST_CHUNK]
    assert len(launched_payloads(second)) == min(by_rule, PIECE_TASKS - FIRST_CHUNK)
    ends, chunk = [], second
    while chunk is not None:  # run the rest: no chunk crosses a piece's end
        run_span(h, "e0", chunk)
        ends.append((chunk.span[1], chunk.span[1] + len(launched_payloads(chunk))))
        chunk = next(iter(h.sent("e0", p.LaunchChunk)), None)
    assert not [(a, b) for a, b in ends for end in (PIECE_TASKS, 2 * PIECE_TASKS) if a < end < b]
    assert PIECE_TASKS in {b for _, b in ends} and ends[-1][1] == 2 * PIECE_TASKS + 5


def test_a_fixed_chunksize_over_a_piece_gets_pieces_as_big():
    h = Harness(executors=[("e0", "n0")])
    h.submit("j", "batch", 30_000, options={"chunksize": 20_000}, bulk=True)
    (chunk,) = h.sent("e0", p.LaunchChunk)
    assert chunk.span == ["j", 0] and len(launched_payloads(chunk)) == 20_000 > PIECE_TASKS


def test_failures_in_a_batch_fail_their_own_tasks_only():
    h, ids, chunk = started_chunk(5, 5)
    batch(h, "e0", chunk, 0, 5, errors={1, 3})
    outcomes = [h.results[t][0][1] for t in ids]
    assert outcomes == ["finished", "failed", "finished", "failed", "finished"]
    assert h.results[ids[1]][0][3] == ["ValueError", "bad 1", ""]
    job = h.core.records.jobs["j"]
    assert (job.finished, job.failed) == (3, 2)


def test_a_batch_outside_the_open_range_or_repeated_is_dropped():
    h, ids, chunk = started_chunk(6, 6)
    batch(h, "e0", chunk, 0, 3)
    batch(h, "e0", chunk, 0, 3)  # again
    batch(h, "e0", chunk, 4, 5)  # past the chunk's end
    h.report("e0", p.ChunkBatch(chunk.chunk_id, "j", 3, [value(3)], [[9, "junk"]], 1))
    assert sorted(h.results) == ids[:3] and all(len(h.results[t]) == 1 for t in ids[:3])
    batch(h, "e0", chunk, 3, 3)
    assert ended_once(h, ids)


def test_a_lost_span_chunk_requeues_what_it_had_not_reported_one_record_each():
    h = Harness(executors=[("e0", "n0")], heartbeat_ns=100 * MS)
    ids = h.submit("j", "batch", 6, options={"chunksize": 6}, bulk=True)
    (chunk,) = h.sent("e0", p.LaunchChunk)
    h.report("e0", p.Received([[chunk.chunk_id, 0, chunk.sent_ns]]))
    h.report("e0", p.Started(chunk.chunk_id, 0, 1))
    batch(h, "e0", chunk, 0, 2)
    h.handle(ExecutorLeft("e0", "killed"))
    records = h.core.records
    assert sorted(t for t in records.tasks if t.startswith("j/")) == ids[2:]
    assert all(records.tasks[t].lost_on == ["e0"] for t in ids[2:])
    h.join("e1", "n1")
    (again,) = h.sent("e1", p.LaunchChunk)  # an ordinary chunk from here on
    assert again.span is None and [s[0] for s in again.subtasks] == ids[2:]
    assert [s[1] for s in again.subtasks] == [payload(i) for i in range(2, 6)]
    h.report("e1", p.Started(again.chunk_id, 1, 1))
    items = [[t, "finished", payloads.pack_payload(t), None, {}] for t in ids[2:]]
    h.report("e1", p.ChunkResults(again.chunk_id, items))
    assert ended_once(h, ids)
    assert records.jobs["j"].finished == 6


def test_an_idle_executor_steals_the_tail_of_a_span_chunk():
    h = Harness(executors=[("e0", "n0")])
    ids = h.submit("j", "batch", 101, options={"chunksize": 101}, bulk=True)
    (chunk,) = h.sent("e0", p.LaunchChunk)
    h.join("e1", "n1")
    h.core.records.jobs["j"].subtask_ns = 1_000_000.0  # 1 ms tasks: worth stealing
    h.report("e0", p.Started(chunk.chunk_id, 0, 1))
    (steal,) = h.sent("e0", p.Steal)
    assert steal.count == 50
    h.report("e0", p.Stolen(chunk.chunk_id, ids[50:]))  # more than asked for: junk
    assert h.sent("e1", p.LaunchChunk) == []
    h.report("e0", p.Heartbeat("e0", "n", 1, 0, 1, 1, 0, 0, 1, 1, 1.0))
    h.clock.now += 10 * MS
    h.report("e0", p.Heartbeat("e0", "n", 2, 0, 1, 1, 0, 0, 1, 1, 1.0))
    (steal,) = h.sent("e0", p.Steal)
    h.report("e0", p.Stolen(chunk.chunk_id, ids[51:]))
    (moved,) = h.sent("e1", p.LaunchChunk)
    assert moved.span == ["j", 51] and launched_payloads(moved) == [
        payload(i) for i in range(51, 101)
    ]
    run_span(h, "e1", moved)
    batch(h, "e0", chunk, 51, 1)  # past what it kept: dropped
    batch(h, "e0", chunk, 0, 51)
    assert ended_once(h, ids)
    assert h.core.records.steal_count == 1


def test_cancelling_bulk_tasks_pending_or_running_completes_each_once():
    h, ids, chunk = started_chunk(20, 10)
    # Task 3 runs in the chunk; task 15 waits in its piece; task 99 does not exist.
    h.handle(ClientRequest("c", p.Cancel([ids[3], ids[15], "j/99", "j/03", 7])))
    assert [h.results[t][0][1] for t in (ids[3], ids[15])] == ["cancelled", "cancelled"]
    batch(h, "e0", chunk, 0, 10)
    h.report("e0", p.Finished(chunk.chunk_id, 0, payloads.pack_payload(None), {}))
    (second,) = h.sent("e0", p.LaunchChunk)
    run_span(h, "e0", second)
    assert ended_once(h, ids)
    job = h.core.records.jobs["j"]
    assert (job.finished, job.cancelled) == (18, 2)
    h.handle(ClientRequest("c", p.Cancel([ids[4]])))  # ended: nothing happens
    assert len(h.results[ids[4]]) == 1


def test_bad_bulk_submissions_are_refused_with_the_reason():
    h = Harness(executors=[("e0", "n0")])

    def submit(job_id, tasks, options, bulk):
        msg = p.Submit(job_id, "batch", 0, None, "m:f", None, tasks, 0, options, bulk)
        h.handle(ClientRequest("c", msg))
        if job_id in h.refusals:  # a bulk job: one answer for all its tasks
            return [h.refusals.pop(job_id)[1]]
        return [h.results.pop(f"{job_id}/0")[0][3][1]] if f"{job_id}/0" in h.results else []

    assert "needs a chunksize" in submit("a", [], None, [b"x"])[0]
    assert "must be bytes" in submit("b", [], {"chunksize": 2}, [b"x", "y"])[0]
    assert "tasks must be empty" in submit("c", [["c/0", b"x"]], {"chunksize": 2}, [b"x"])[0]
    h.submit("d", "batch", 2, options={"chunksize": 2}, bulk=True)
    (refusal,) = submit("e", [["d/0", b"x"]], None, None) or [h.results.pop("d/0")[-1][3][1]]
    assert "bulk job 'd'" in refusal
    h.handle(ClientRequest("c", p.Submit("g", "batch", 0, None, "m:f", None, [["f/0", b""]], 0)))
    assert "in use already" in submit("f", [], {"chunksize": 2}, [b"x"])[0]


def test_bad_columnar_submissions_are_refused_with_the_reason():
    h = Harness(executors=[("e0", "n0")])

    def refusal(job_id, bulk, kwargs):
        msg = p.Submit(job_id, "batch", 0, None, "m:f", None, [], 0, {"chunksize": 2}, bulk)
        h.handle(ClientRequest("c", dataclasses.replace(msg, kwargs=kwargs)))
        assert not h.results  # one answer for the job, not one per task
        error = h.refusals.pop(job_id)
        assert error[0] == "ValueError" and error[1].startswith(f"job {job_id} refused")
        return error[1]

    kwargs = payloads.pack_payload({})
    assert "bytes follow the array's last item" in refusal("a", b"\x92\x01\x02\x03", kwargs)
    assert "cut short" in refusal("b", b"\x92\x01\xa5ab", kwargs)  # task ids: from its header
    assert "not a msgpack array" in refusal("c", b"\x01", kwargs)
    assert "kwargs must be packed" in refusal("d", b"\x91\x01", None)
    assert "kwargs go with columns" in refusal("e", [b"x"], kwargs)
    # A refused job costs one answer, not an item per task (a 64 MiB frame could name 64
    # million): `refusal` finds no result item, whatever the job's size.
    assert "kwargs must be packed" in refusal("m", msgpack.packb([None] * 3), None)
    assert "has no tasks" in refusal("f", b"\x90", kwargs)
    assert "nested more than 1,024" in refusal("g", b"\x91" * 1027 + b"\x00", kwargs)
    assert not h.sent("e0", p.LaunchChunk) and not h.core.records.jobs
    classic = p.Submit("h", "batch", 0, None, "m:f", None, [["h/0", payload(0)]], 0)
    h.handle(ClientRequest("c", dataclasses.replace(classic, kwargs=kwargs)))
    assert "kwargs go with columns" in h.results.pop("h/0")[0][3][1]


def test_a_restarted_scheduler_keeps_what_batches_ended_and_runs_the_rest(tmp_path):
    path = tmp_path / "journal.sqlite"
    h = Harness(journal=Journal(path), executors=[("e0", "n0")], heartbeat_ns=100 * MS)
    ids = h.submit("j", "batch", 8, options={"chunksize": 8}, bulk=True)
    (chunk,) = h.sent("e0", p.LaunchChunk)
    h.report("e0", p.Started(chunk.chunk_id, 0, 1))
    batch(h, "e0", chunk, 0, 3, errors={1})
    journal = h.core.journal
    journal.commit()  # on disk now, found by its range
    assert sorted(journal.results([ids[2], ids[3], "j/x"])) == [ids[2]]
    h.core.journal.close()
    again = Harness(journal=Journal(path), executors=(), heartbeat_ns=100 * MS)
    records = again.core.records
    job = records.jobs["j"]
    assert (job.finished, job.failed) == (2, 1)
    assert sorted(t for t in records.tasks if t.startswith("j/")) == ids[3:]
    assert all(records.tasks[t].state is TaskState.UNCLAIMED for t in ids[3:])
    found = again.core.journal.results([ids[0], ids[1], ids[5]])
    assert found[ids[0]][1][1:3] == ["finished", value(0)]
    assert found[ids[1]][1][1] == "failed" and ids[5] not in found
    again.core.journal.close()


def test_a_span_chunk_killed_to_make_room_goes_back_as_a_piece_not_as_records():
    h = Harness(policy="kill", executors=[("e0", "n0")])
    ids = h.submit("j", "batch", 8, options={"chunksize": 8}, bulk=True)
    (chunk,) = h.sent("e0", p.LaunchChunk)
    h.report("e0", p.Started(chunk.chunk_id, 0, 1))
    batch(h, "e0", chunk, 0, 3)
    (stream,) = h.submit("s", "stream", 1)
    (kill,) = h.sent("e0", p.Kill)
    assert kill.task_id == chunk.chunk_id
    h.report("e0", p.Killed(chunk.chunk_id, 0, {"running_ns": 5 * MS}))
    records = h.core.records
    assert not any(t.startswith("j/") for t in records.tasks)  # still no record per task
    h.report("e0", p.Started(stream, 0, 1))
    h.finish("e0", stream)
    (again,) = h.sent("e0", p.LaunchChunk)
    assert again.span == ["j", 3] and again.attempt == 1 and len(launched_payloads(again)) == 5
    run_span(h, "e0", again)
    assert all(len(h.results[t]) == 1 for t in ids)


def test_a_client_back_without_a_journal_learns_which_bulk_results_were_lost():
    h = Harness(executors=[("e0", "n0")])  # no journal: results sent while away are lost
    ids = h.submit("j", "batch", 20, options={"chunksize": 10}, bulk=True)
    (chunk,) = h.sent("e0", p.LaunchChunk)
    h.report("e0", p.Started(chunk.chunk_id, 0, 1))
    batch(h, "e0", chunk, 0, 4)
    h.results.clear()  # the client was away
    h.handle(ClientRequest("c", p.Reattach("r1", [ids[1], ids[6], ids[15], "j/20"])))
    assert h.answers["r1"].unknown == ["j/20"]  # 6 runs, 15 waits in its piece: both known
    (lost,) = h.results[ids[1]]
    assert lost[1] == "failed" and lost[3][0] == "ResultLost"
    assert sorted(h.results) == [ids[1]]


def test_a_small_bulk_job_gives_every_free_executor_a_chunk_at_once():
    h = Harness(executors=[("e0", "n0"), ("e1", "n1")])
    h.submit("j", "batch", 1_000, options={"chunksize": "auto"}, bulk=True)
    (first,) = h.sent("e0", p.LaunchChunk)
    (second,) = h.sent("e1", p.LaunchChunk)
    assert first.span[1] != second.span[1]  # from two pieces of the job


def test_cancelled_pending_tasks_weigh_nothing_and_launch_no_empty_chunk():
    h = Harness(executors=[("e0", "n0")])
    ids = h.submit("j", "batch", 200, options={"chunksize": 10}, bulk=True)
    (chunk,) = h.sent("e0", p.LaunchChunk)  # tasks 0-9
    records = h.core.records
    assert records.pending.count() == 190
    h.handle(ClientRequest("c", p.Cancel(ids[10:40])))  # the next three chunks' worth
    assert records.pending.count() == 160
    run_span(h, "e0", chunk)
    (second,) = h.sent("e0", p.LaunchChunk)
    assert (
        second.span == ["j", 40] and len(launched_payloads(second)) == 10
    )  # none empty, none skipped


def test_another_clients_cancel_makes_no_record_and_changes_nothing():
    h, ids, chunk = started_chunk(20, 20)
    h.handle(ClientRequest("intruder", p.Cancel(ids[:5])))
    assert not any(t.startswith("j/") for t in h.core.records.tasks) and not h.results
    run_span(h, "e0", chunk)
    assert ended_once(h, ids)


def test_a_task_reported_alone_does_not_count_twice_in_a_chunks_open_range():
    h, ids, chunk = started_chunk(100, 100)
    items = [[t, "finished", value(i), None, {}] for i, t in enumerate(ids[10:50], 10)]
    h.report("e0", p.ChunkResults(chunk.chunk_id, items))  # reported one by one
    batch(h, "e0", chunk, 0, 10)
    assert len(h.core.records.tasks[chunk.chunk_id].subtasks) == 50
    assert all(len(h.results[t]) == 1 for t in ids[:50])


def test_a_bulk_job_id_with_the_characters_of_chunk_and_piece_ids_is_refused():
    h = Harness(executors=[("e0", "n0")])
    msg = p.Submit("a#1", "batch", 0, None, "m:f", None, [], 0, {"chunksize": 2}, [b"x"])
    h.handle(ClientRequest("c", msg))
    assert "may not hold '#' or '@'" in h.refusals["a#1"][1] and not h.results


def test_the_journal_finds_each_task_of_batches_written_out_of_order(tmp_path):
    h = Harness(journal=Journal(tmp_path / "j.sqlite"), executors=[("e0", "n0"), ("e1", "n1")])
    ids = h.submit("j", "batch", 400, options={"chunksize": 100}, bulk=True)
    launched = [(e, c) for e in ("e0", "e1") for c in h.sent(e, p.LaunchChunk)]
    for executor, chunk in sorted(launched, key=lambda ec: -ec[1].span[1]):  # last range first
        h.report(executor, p.Started(chunk.chunk_id, 0, 1))
        batch(h, executor, chunk, chunk.span[1], len(launched_payloads(chunk)))
    journal = h.core.journal
    journal.commit()
    done = [t for t in ids if t in h.results]
    assert len(launched) >= 2 and len(done) == sum(len(launched_payloads(c)) for _, c in launched)
    found = journal.results([*done, "j/999", "j/x"])
    assert sorted(found) == sorted(done)
    assert all(found[t][1][2] == value(int(t.rpartition("/")[2])) for t in done)
    journal.close()


def packed_batch(chunk, start, count):
    """Tasks [start, start + count) of span chunk `chunk` done, their values packed as one
    array (as an executor sends a batch with no failure, `payloads.pack_batch`)."""
    values = payloads.pack_batch([value(i) for i in range(start, start + count)])
    return p.ChunkBatch(chunk.chunk_id, chunk.span[0], start, values, [], count)


def test_a_packed_batch_is_forwarded_and_journaled_as_it_came(tmp_path):
    h = Harness(journal=Journal(tmp_path / "j.sqlite"), executors=[("e0", "n0")])
    ids = h.submit("j", "batch", 6, options={"chunksize": 6}, bulk=True)
    (chunk,) = h.sent("e0", p.LaunchChunk)
    h.report("e0", p.Started(chunk.chunk_id, 0, 1))
    h.report("e0", packed_batch(chunk, 0, 4))
    (forwarded,) = h.batches
    assert forwarded.values == packed_batch(chunk, 0, 4).values  # not opened
    assert [h.results[t][0][1:3] for t in ids[:4]] == [["finished", value(i)] for i in range(4)]
    job = h.core.records.jobs["j"]
    assert job.finished == 4 and bytes(job.ended) == b"\x01\x01\x01\x01\x00\x00"
    assert h.core.status()["counters"]["ended"]["batch"] == {"finished": 4, "failed": 0}
    journal = h.core.journal
    journal.commit()
    found = journal.results([ids[1], ids[3], ids[4]])
    assert sorted(found) == [ids[1], ids[3]] and found[ids[3]][1][1:3] == ["finished", value(3)]
    journal.close()


def test_a_packed_batch_over_tasks_that_ended_before_is_cut_to_the_others():
    h, ids, chunk = started_chunk(8, 8)
    h.handle(ClientRequest("c", p.Cancel([ids[2], ids[5]])))  # running in the chunk
    h.report("e0", packed_batch(chunk, 0, 8))
    assert ended_once(h, ids)
    assert [h.results[t][0][1] for t in ids] == ["finished"] * 2 + ["cancelled"] + [
        "finished"
    ] * 2 + ["cancelled"] + ["finished"] * 2
    assert all(h.results[t][0][2] == value(i) for i, t in enumerate(ids) if i not in (2, 5))


def test_a_packed_batch_that_is_malformed_or_lists_failures_is_dropped():
    h, ids, chunk = started_chunk(4, 4)
    for values, errors in (
        (b"\x94\x01", []),  # claims 4 values in 1 byte
        (b"\xc1\x01\x02", []),  # no array at all
        (payloads.pack_batch([value(i) for i in range(4)]), [[1, ["E", "m", ""]]]),
    ):
        h.report("e0", p.ChunkBatch(chunk.chunk_id, "j", 0, values, errors, 4))
    assert not h.results and h.core.records.jobs["j"].finished == 0
    h.report("e0", packed_batch(chunk, 0, 4))  # a sound one is taken
    assert ended_once(h, ids)


def test_a_packed_batch_that_must_be_cut_but_does_not_split_fails_its_other_tasks():
    h, ids, chunk = started_chunk(4, 4)
    h.handle(ClientRequest("c", p.Cancel([ids[0]])))
    h.report("e0", p.ChunkBatch(chunk.chunk_id, "j", 0, b"\x94\x01\x02\x03\xc1", [], 4))
    assert ended_once(h, ids)  # as the client fails them when it cannot read a batch
    assert [h.results[t][0][1] for t in ids] == ["cancelled", "failed", "failed", "failed"]
    assert all("results were unreadable" in h.results[t][0][3][1] for t in ids[1:])
    job = h.core.records.jobs["j"]
    assert (job.cancelled, job.failed, job.finished) == (1, 3, 0)


def test_a_span_chunk_of_big_calls_stays_well_within_a_frame():
    h = Harness(executors=[("e0", "n0")])
    job = p.Submit("j", "batch", 0, None, TOTAL, None, [], 0, {"chunksize": 20_000}, [])
    h.handle(ClientRequest("c", dataclasses.replace(job, bulk=[bytes(8_000)] * 5_000)))
    (chunk,) = h.sent("e0", p.LaunchChunk)
    assert len(launched_payloads(chunk)) == LAUNCH_PAYLOAD_BYTES // 8_000  # not 5,000: ~40 MB
    assert len(p.encode(chunk)) < p.MAX_FRAME_BYTES // 2

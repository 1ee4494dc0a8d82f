"""The journal on its own: what goes in comes back after a reopen, in WAL mode, and a
process that dies in the middle of a batch leaves the last committed state, whole."""

from __future__ import annotations

import select
import sqlite3
import subprocess
import sys
import textwrap
import threading

import msgpack
import pytest

from tidal.runtime import payloads
from tidal.runtime import protocol as p
from tidal.runtime.processes import child_env
from tidal.scheduler import journal as journal_module
from tidal.scheduler.journal import Journal, JournalError, JournalWriter, default_journal_path


def submit(job_id, n):
    tasks = [[f"{job_id}/{i}", payloads.pack_call([i], {})] for i in range(n)]
    return p.Submit(job_id, "batch", 0, None, "m:f", None, tasks, 0, {"chunksize": "auto"})


def finished(task_id, value):
    return [task_id, "finished", payloads.pack_payload(value), None, {"attempt": 0}]


def test_jobs_results_cancels_and_executors_come_back_after_a_reopen(tmp_path):
    path = tmp_path / "j.sqlite"
    journal = Journal(path)
    assert journal.state.empty and journal.state.restarts == 0
    journal.submitted("c1", submit("c1-1", 3))
    journal.ended("c1-1", finished("c1-1/0", {("a", 1): 2}))
    journal.ended("c1-1", ["c1-1/1", "failed", None, ["ValueError", "bad", "tb"], {}])
    journal.cancel_requested("c1-1", "c1-1/2")
    journal.executor_joined("e0")
    journal.executor_joined("e1")
    journal.executor_lost("e1")
    # Reads see what is recorded but not committed yet.
    assert journal.results(["c1-1/0"])["c1-1/0"][1][2] == payloads.pack_payload({("a", 1): 2})
    journal.close()

    again = Journal(path)
    state = again.state
    assert state.restarts == 1
    [(client_id, job)] = state.jobs
    assert client_id == "c1" and job == submit("c1-1", 3)
    assert state.outcomes == {"c1-1/0": "finished", "c1-1/1": "failed"}
    assert state.cancels == {"c1-1/2"} and state.executors == {"e0"}
    found = again.results(["c1-1/0", "c1-1/1", "c1-1/2"])
    assert set(found) == {"c1-1/0", "c1-1/1"}
    job_id, item = found["c1-1/0"]
    assert job_id == "c1-1" and item == finished("c1-1/0", {("a", 1): 2})
    assert payloads.unpack_payload(item[2]) == {("a", 1): 2}
    # A client that says goodbye takes its jobs with it.
    again.client_left("c1")
    again.close()
    assert Journal(path).state.jobs == []


def test_submits_journaled_before_fields_were_added_come_back_with_them_nil(tmp_path):
    path = tmp_path / "j.sqlite"
    journal = Journal(path)
    old = msgpack.unpackb(p.encode(submit("c1-1", 2)))
    for job_id, fields in (("c1-7", old[:-1]), ("c1-6", old[:-2])):  # protocol 7-12; before 7
        frame = msgpack.packb([*fields[:1], job_id, *fields[2:]], use_bin_type=True)
        with pytest.raises(p.ProtocolError, match="submit takes 11 fields"):
            p.decode(frame)
        journal.submitted("c1", submit(job_id, 2), frame)
    journal.close()
    again = Journal(path)
    jobs = {job.job_id: job for _, job in again.state.jobs}
    again.close()
    assert jobs["c1-7"].bulk is None and jobs["c1-7"].kwargs is None
    assert jobs["c1-6"].tasks == submit("c1-1", 2).tasks and jobs["c1-6"].bulk is None


def test_the_journal_is_in_wal_mode_and_held_by_one_scheduler(tmp_path):
    path = tmp_path / "j.sqlite"
    journal = Journal(path)
    assert journal._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    with pytest.raises(JournalError, match="in use by another scheduler"):
        Journal(path)
    journal.close()
    Journal(path).close()  # free again once closed


def test_a_file_that_is_not_a_journal_is_refused_with_the_reason(tmp_path):
    path = tmp_path / "not.sqlite"
    path.write_bytes(b"certainly not SQLite " * 100)
    with pytest.raises(JournalError, match=r"cannot use .* as a journal"):
        Journal(path)
    with pytest.raises(ValueError, match="synchronous must be one of NORMAL, FULL"):
        Journal(tmp_path / "x.sqlite", synchronous="sometimes")


def test_a_scheduler_killed_in_the_middle_of_a_batch_leaves_the_last_commit_whole(tmp_path):
    path = tmp_path / "j.sqlite"
    script = textwrap.dedent(f"""
        import os
        from tidal.runtime import payloads
        from tidal.runtime import protocol as p
        from tidal.scheduler.journal import Journal

        journal = Journal({str(path)!r})
        tasks = [["j/%d" % i, payloads.pack_call([i], {{}})] for i in range(100)]
        journal.submitted("c", p.Submit("j", "batch", 0, None, "m:f", None, tasks, 0, None))
        for i in range(50):
            journal.ended("j", ["j/%d" % i, "finished", payloads.pack_payload(i), None, {{}}])
        journal.commit()
        # The next batch dies half written: its transaction is open, never committed.
        import msgpack
        journal._db.execute("BEGIN")
        for i in range(50, 100):
            ids = msgpack.packb([["j/%d" % i, "finished"]])
            journal._db.execute(
                "INSERT INTO results (job_id, ids, items) VALUES ('j', ?, x'90')", (ids,)
            )
        os._exit(9)
    """)
    done = subprocess.run([sys.executable, "-c", script], env=child_env(), timeout=60, check=False)
    assert done.returncode == 9
    journal = Journal(path)
    state = journal.state
    journal.close()
    assert len(state.jobs) == 1
    assert state.outcomes == {f"j/{i}": "finished" for i in range(50)}
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    db.close()


def test_the_default_journal_is_one_file_per_port_in_the_state_directory(monkeypatch):
    monkeypatch.setenv("XDG_STATE_HOME", "/var/lib/me")
    assert default_journal_path("tcp://0.0.0.0:5555") == "/var/lib/me/tidal/journal-5555.sqlite"
    assert default_journal_path("tcp://127.0.0.1:*") is None
    assert default_journal_path("tcp://127.0.0.1:0") is None  # a wildcard port too


class HeldJournal(Journal):
    """A journal whose writes on the writer's thread wait until the test lets them go
    (`release`)."""

    def __init__(self, path):
        super().__init__(path)
        self.release = threading.Event()

    def write(self, *taken):
        if threading.current_thread() is not threading.main_thread():
            assert self.release.wait(timeout=30), "the test never released the write"
        super().write(*taken)


def wait_readable(fd):
    readable, _, _ = select.select([fd], [], [], 30)
    assert readable, "the writer never said it committed"


def test_the_writer_commits_on_its_own_thread_and_says_when_each_ticket_is_on_disk(tmp_path):
    path = tmp_path / "j.sqlite"
    journal = HeldJournal(path)
    writer = JournalWriter(journal)
    assert writer.commit() is None  # nothing recorded, nothing to wait for
    journal.submitted("c1", submit("c1-1", 3))
    journal.ended("c1-1", finished("c1-1/2", 6))
    assert writer.commit() is None  # small: committed at once, on this thread
    assert journal.results(["c1-1/2"]) and not journal._in_flight
    big = 2**17  # over INLINE_BYTES of payloads: handed to the writer
    journal.ended("c1-1", finished("c1-1/0", b"7" * big))
    first = writer.commit()
    journal.ended("c1-1", finished("c1-1/1", 8))  # small, but a commit is in flight
    second = writer.commit()
    assert second == first + 1 and writer.waiting and writer.committed() == first - 1
    # Handed over and not on disk yet: reads still find both results.
    found = journal.results(["c1-1/0", "c1-1/1"])
    assert {t: item[1][2] for t, item in found.items()} == {
        "c1-1/0": payloads.pack_payload(b"7" * big),
        "c1-1/1": payloads.pack_payload(8),
    }
    journal.release.set()
    while writer.committed() < second:
        wait_readable(writer.fd)
    assert not writer.waiting
    assert set(journal.results(["c1-1/0", "c1-1/1"])) == {"c1-1/0", "c1-1/1"}  # from disk now
    writer.close()
    state = Journal(path).state
    assert [job.job_id for _, job in state.jobs] == ["c1-1"]
    assert state.outcomes == {"c1-1/0": "finished", "c1-1/1": "finished", "c1-1/2": "finished"}


def test_a_writer_that_fails_is_loud_on_the_loop(tmp_path, monkeypatch):
    monkeypatch.setattr(journal_module, "INLINE_BYTES", 0)  # every commit on the writer

    class Broken(Journal):
        def write(self, *taken):
            if any(records is not None for records in taken):
                raise sqlite3.OperationalError("disk I/O error")

    journal = Broken(tmp_path / "j.sqlite")
    writer = JournalWriter(journal)
    journal.executor_joined("e0")
    writer.commit()
    wait_readable(writer.fd)
    with pytest.raises(JournalError, match="disk I/O error"):
        writer.committed()
    journal.take()  # recorded since, and close() would commit it: the "disk" stays broken
    writer.close()


def test_records_wait_for_a_group_commit_unless_a_stream_result_is_among_them(tmp_path):
    clock = [10**12]
    journal = Journal(tmp_path / "j.sqlite")
    writer = JournalWriter(journal, clock=lambda: clock[0])
    assert writer.due(clock[0]) is None  # nothing recorded
    journal.ended("c1-1", finished("c1-1/0", 1))
    assert writer.due(clock[0]) <= clock[0]  # no commit for ages: at once
    writer.commit()
    committed_at = clock[0]
    clock[0] += 300_000
    journal.ended("c1-1", finished("c1-1/1", 2))
    assert writer.due(clock[0]) == committed_at + journal_module.GROUP_COMMIT_NS
    journal.ended("c1-2", finished("c1-2/0", 3), stream=True)
    assert writer.due(clock[0]) == clock[0]  # a stream task's client does not wait
    writer.commit()
    assert writer.due(clock[0]) is None
    writer.close()
    assert set(Journal(tmp_path / "j.sqlite").state.outcomes) == {"c1-1/0", "c1-1/1", "c1-2/0"}

"""Jobs leave the scheduler's books (and its journal) once done and released by their client,
or when their client leaves: the core on the harness's fake clock, the journal on a file."""

from __future__ import annotations

import contextlib
import os
import threading

import pytest
import zmq

from tests.scheduler.harness import CLIENT_ID, Harness
from tests.scheduler.test_spans import run_span
from tidal.runtime import payloads
from tidal.runtime import protocol as p
from tidal.runtime.client import Client
from tidal.scheduler.core import ClientJoined, ClientRequest, ExecutorLeft, Tick
from tidal.scheduler.events import JobRetired
from tidal.scheduler.journal import Journal
from tidal.scheduler.server import SchedulerServer


def release(h: Harness, *job_ids: str, client: str = CLIENT_ID) -> None:
    h.handle(ClientRequest(client, p.Release(list(job_ids))))


def retired(h: Harness) -> list[str]:
    return [n.job_id for n in h.notes if isinstance(n, JobRetired)]


def run_all(h: Harness) -> None:
    """Play the executors: start and finish whatever was launched, until nothing is."""
    while True:
        launched = [(e, m.task_id) for e in list(h.to_executor) for m in h.sent(e, p.Launch)]
        if not launched:
            return
        for executor, task_id in launched:
            h.start(executor, task_id)
            h.finish(executor, task_id)


def test_a_released_job_leaves_the_books_when_its_last_task_ends_not_before():
    h = Harness()
    h.submit("j", "batch", 3)
    release(h, "j")  # the program dropped its futures early
    assert "j" in h.core.records.jobs and retired(h) == []
    run_all(h)
    assert retired(h) == ["j"]
    assert "j" not in h.core.records.jobs
    assert not [t for t in h.core.records.tasks if t.startswith("j/")]
    assert len(h.results) == 3  # every result was sent before it left


def test_a_done_job_leaves_when_released_and_an_unreleased_one_stays():
    h = Harness()
    h.submit("kept", "batch", 2)
    h.submit("dropped", "stream", 1)
    run_all(h)
    assert retired(h) == []
    release(h, "dropped")
    assert retired(h) == ["dropped"]
    assert set(h.core.records.jobs) == {"kept"}
    assert sorted(h.core.records.tasks) == ["kept/0", "kept/1"]
    assert h.core.status()["books"] == {"jobs": 1, "records": 2}
    tasks = h.core.status()["tasks"]  # a retired job's tasks still count as ended
    assert (tasks["stream"]["finished"], tasks["batch"]["finished"]) == (1, 2)


def test_a_client_releases_only_its_own_jobs_and_unknown_ids_are_ignored():
    h = Harness()
    h.submit("j", "batch", 1)
    run_all(h)
    h.handle(ClientJoined("other"))
    release(h, "j", client="other")
    release(h, "nope", "j/0", client=CLIENT_ID)
    h.handle(ClientRequest(CLIENT_ID, p.Release("not a list")))  # type: ignore[arg-type]
    assert retired(h) == [] and "j" in h.core.records.jobs


def test_a_goodbye_cancels_what_still_runs_and_every_job_of_the_client_leaves():
    h = Harness(executors=[("e0", "n0")])
    h.submit("done", "batch", 1)
    run_all(h)
    h.submit("busy", "batch", 3)  # launched there, one running, the rest queued behind it
    launches = h.sent("e0", p.Launch)
    h.start("e0", launches[0].task_id)
    h.handle(ClientRequest(CLIENT_ID, p.ClientGoodbye("bye")))
    assert retired(h) == ["done"]  # what was launched is being killed
    kills = h.sent("e0", p.Kill)  # what was launched there, queued ones included
    assert (
        {m.task_id for m in launches}
        <= {k.task_id for k in kills}
        <= {"busy/0", "busy/1", "busy/2"}
    )
    for kill in kills:
        h.report("e0", p.Killed(kill.task_id, 0, {"running_ns": 1}))
    assert retired(h) == ["done", "busy"]
    assert h.core.records.jobs == {} and h.core.records.tasks == {}
    assert h.core.records.executors["e0"].slot_task is None  # its slot is free again


def test_a_chunk_still_running_cancelled_tasks_leaves_when_its_executor_reports_it():
    h = Harness(executors=[("e0", "n0")])
    h.submit("c", "batch", 4, options={"chunksize": 4})
    chunks = h.sent("e0", p.LaunchChunk)
    h.report("e0", p.Started(chunks[0].chunk_id, 0, h.clock.now))
    h.handle(ClientRequest(CLIENT_ID, p.Cancel([f"c/{i}" for i in range(4)])))
    release(h, "c")
    assert retired(h) == ["c"]  # done for its client: every task cancelled
    assert chunks[0].chunk_id in h.core.records.tasks  # still on e0, which must say so
    h.report("e0", p.Finished(chunks[0].chunk_id, 0, payloads.pack_payload(None), {}))
    assert h.core.records.tasks == {}
    assert h.core.records.executors["e0"].slot_task is None


def test_a_bulk_job_leaves_whole_when_released():
    h = Harness()
    h.submit("b", "batch", 40, options={"chunksize": 10}, bulk=True)
    release(h, "b")
    while chunks := [(e, m) for e in list(h.to_executor) for m in h.sent(e, p.LaunchChunk)]:
        for executor, chunk in chunks:
            run_span(h, executor, chunk)
    assert retired(h) == ["b"] and len(h.results) == 40
    assert h.core.records.jobs == {} and h.core.records.tasks == {}
    assert h.core.status()["tasks"]["batch"]["finished"] == 40  # counted though retired


def journal_after(path, *, released: bool) -> int:
    """The size of a closed journal that held 20 jobs of 200 KB arguments, all finished, and
    then released (or not)."""
    big = os.urandom(200_000)
    journal = Journal(path)
    h = Harness(journal=journal)
    for i in range(20):
        submit = p.Submit(f"j{i}", "batch", 0, None, "m:f", None, [[f"j{i}/0", big]], 0)
        h.handle(ClientRequest(CLIENT_ID, submit))
        journal.commit()
    run_all(h)
    journal.commit()
    if released:
        release(h, *[f"j{i}" for i in range(20)])
        for _ in range(20):  # a bounded vacuum step per commit
            journal.commit()
        assert retired(h) == [f"j{i}" for i in range(20)]
        assert journal.results([f"j{i}/0" for i in range(20)]) == {}
        assert journal._rows == {}
    journal.close()
    return os.path.getsize(path)


def test_the_journal_deletes_a_retired_jobs_rows_and_gives_its_pages_back(tmp_path):
    kept = journal_after(tmp_path / "kept.sqlite", released=False)
    released = journal_after(tmp_path / "released.sqlite", released=True)
    assert kept > 4_000_000 and released < 400_000, (kept, released)  # a few empty pages
    reopened = Journal(tmp_path / "released.sqlite")  # a restart finds nothing to do
    assert reopened.state.jobs == [] and reopened.state.outcomes == {}
    reopened.close()


@pytest.fixture
def raw_client():
    """Bare DEALER sockets (a client without Tidal's client: it can vanish), closed after."""
    context = zmq.Context()
    sockets = []

    def connect(address: str, client_id: str) -> zmq.Socket:
        socket = context.socket(zmq.DEALER)
        socket.linger = 0
        socket.connect(address)
        socket.send(p.encode(p.ClientHello(p.PROTOCOL_VERSION, client_id, 1, "h")))
        assert socket.poll(10_000)
        assert isinstance(p.decode(socket.recv()), p.ClientWelcome)
        sockets.append(socket)
        return socket

    yield connect
    for socket in sockets:
        socket.close(linger=0)
    context.term()


def submit_frame(job_id: str) -> bytes:
    return p.encode(p.Submit(job_id, "batch", 0, None, "m:f", None, [[f"{job_id}/0", b"x"]], 0))


@pytest.mark.slow
def test_a_vanished_clients_jobs_go_after_the_client_timeout_also_after_a_restart(
    tmp_path, raw_client
):
    path = tmp_path / "journal.sqlite"
    options = {"heartbeat_ns": 100_000_000, "client_timeout_ns": 600_000_000}
    with running(SchedulerServer("tcp://127.0.0.1:*", journal=path, **options)) as server:
        vanishing = raw_client(server.address, "vanishing")
        vanishing.send(submit_frame("j"))  # no executor: it stays pending
        with Client(server.address) as watcher:
            watcher.wait_for_status(lambda s: s["books"]["jobs"] == 1)
            vanishing.close(linger=0)  # no goodbye
            assert watcher.wait_for_status(lambda s: s["books"]["jobs"] == 0)
            stayed = raw_client(server.address, "staying")
            stayed.send(submit_frame("k"))
            watcher.wait_for_status(lambda s: s["books"]["jobs"] == 1)
    kept = Journal(path)  # the staying client's job, for the next scheduler
    assert [submit.job_id for _, submit in kept.state.jobs] == ["k"]
    kept.close()
    # Restarted on its journal: that job goes after the timeout (its client never comes
    # back), and the journal keeps none.
    restarted = SchedulerServer("tcp://127.0.0.1:*", journal=path, **options)
    with running(restarted) as server, Client(server.address) as watcher:
        assert watcher.wait_for_status(lambda s: s["books"]["jobs"] == 0)
    reopened = Journal(path)
    assert reopened.state.jobs == []
    reopened.close()


@contextlib.contextmanager
def running(server: SchedulerServer):
    thread = threading.Thread(target=server.serve, name="test-scheduler", daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.stop()
        thread.join(10)
        server.close()


def test_a_tasks_losses_are_journaled_and_a_restart_counts_on_from_them(tmp_path):
    path = tmp_path / "journal.sqlite"
    journal = Journal(path)
    h = Harness(journal=journal, max_retries=1)
    h.submit("j", "batch", 1)
    executor = h.core.records.tasks["j/0"].executor_id
    h.start(executor, "j/0")
    h.handle(ExecutorLeft(executor, "its connection dropped"))
    assert h.core.records.tasks["j/0"].lost_on == [executor]
    journal.close()
    # Restarted: the count goes on from one loss, so one more fails the task (max_retries=1).
    restarted = Harness(
        journal=Journal(path), max_retries=1, executors=[("e9", "n9")], reclaim_grace_ns=0
    )
    assert restarted.core.records.tasks["j/0"].lost_on == [executor]
    restarted.handle(Tick())  # no grace: the task no executor claimed is queued at once
    (launch,) = restarted.sent("e9", p.Launch)
    restarted.start("e9", launch.task_id, launch.attempt)
    restarted.handle(ExecutorLeft("e9", "its connection dropped"))
    (item,) = restarted.results["j/0"]
    assert item[1] == "failed" and "lost its executor 2 times" in item[3][1]
    restarted.core.journal.close()

"""The first hour with the command line, on real processes: where `tidal executor` and
`tidal scheduler` import user code from, what they say when they start and when they exit,
and `tidal executor --nworkers N`. Every process a test starts, it stops (`stop_process`),
also when it fails; tests wait on status and on output, never on sleeps."""

from __future__ import annotations

import contextlib
import selectors
import signal
import socket
import subprocess
import sys

import psutil
import pytest

from tidal.runtime.cli import _parser, _slot_args
from tidal.runtime.client import Client
from tidal.runtime.config import settle_defaults
from tidal.runtime.processes import child_env, stop_process, tidal_command
from tidal.scheduler.service import ANNOUNCEMENT

pytestmark = pytest.mark.slow  # interpreters start

TASKS = """
def double(xs):
    return [2 * x for x in xs]
"""

POLICY = """
from tidal.scheduler.policies.fifo import FifoPolicy


class Patient(FifoPolicy):
    name = "patient"
"""


def tidal(*argv: str, cwd=None, stdout=None, stderr=subprocess.PIPE) -> subprocess.Popen[bytes]:
    """`tidal ARGV` in a child, in `cwd`. child_env() puts only this Tidal and the tests'
    folder on its PYTHONPATH: what it imports from `cwd`, it found by itself."""
    return subprocess.Popen(
        tidal_command(*argv), cwd=cwd, env=child_env(), stdout=stdout, stderr=stderr
    )


def read_line(stream, timeout: float = 30.0) -> str:
    with selectors.DefaultSelector() as selector:
        selector.register(stream, selectors.EVENT_READ)
        assert selector.select(timeout), f"no line within {timeout} s"
    return stream.readline().decode(errors="replace")


@contextlib.contextmanager
def scheduler(*extra: str):
    """A `tidal scheduler` on a free loopback port; yields (its process, its address)."""
    process = tidal(
        "scheduler",
        "--bind",
        "tcp://127.0.0.1:*",
        "--no-journal",
        "--announce",
        *extra,
        stdout=subprocess.PIPE,
    )
    try:
        line = read_line(process.stdout)
        assert line.startswith(ANNOUNCEMENT), line
        yield process, line[len(ANNOUNCEMENT) :].strip()
    finally:
        stop_process(process)
        process.stdout.close()
        process.stderr.close()


def alive(client: Client, count: int) -> dict:
    return client.wait_for_status(
        lambda s: sum(e["state"] == "alive" for e in s["executors"]) >= count, timeout=60
    )


@pytest.mark.parametrize("where", ["working directory", "--pythonpath"])
def test_the_scheduler_says_where_it_listens_and_finds_a_policy_path_in_its_folder(tmp_path, where):
    (tmp_path / "teampolicies.py").write_text(POLICY)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    argv = ["scheduler", "--bind", "tcp://127.0.0.1:*", "--no-journal"]
    argv += ["--policy", "teampolicies:Patient"]
    if where == "--pythonpath":
        argv += ["--pythonpath", str(tmp_path)]
    process = tidal(*argv, cwd=tmp_path if where == "working directory" else elsewhere)
    try:
        line = read_line(process.stderr)  # the first thing it says, at the default log level
    finally:
        stop_process(process)
        process.stderr.close()
    assert line.startswith("tidal scheduler ") and " listening on tcp://127.0.0.1:" in line
    assert "(policy patient, journal off)" in line
    assert process.returncode == 0


@pytest.mark.parametrize("where", ["working directory", "--pythonpath"])
def test_an_executor_imports_task_functions_from_its_folder_or_its_pythonpath(
    tmp_path, monkeypatch, where
):
    project = tmp_path / "project"
    project.mkdir()
    (project / "firsthour_tasks.py").write_text(TASKS)
    monkeypatch.syspath_prepend(str(project))  # the client imports it as the user's program
    monkeypatch.delitem(sys.modules, "firsthour_tasks", raising=False)
    from firsthour_tasks import double

    if where == "working directory":
        options, cwd = [], project
    else:
        options, cwd = ["--pythonpath", str(project)], tmp_path
    with scheduler() as (_, address):
        executor = tidal("executor", "--scheduler", address, *options, cwd=cwd)
        try:
            with Client(address, timeout=30) as client:
                alive(client, 1)
                assert client.submit(double, [1, 2]).result(timeout=30) == [2, 4]
        finally:
            stop_process(executor)
            executor.stderr.close()
    monkeypatch.delitem(sys.modules, "firsthour_tasks")


def test_an_executor_says_why_it_exits_when_its_scheduler_stops():
    with scheduler() as (scheduler_process, address):
        executor = tidal("executor", "--scheduler", address, "--id", "told")
        try:
            with Client(address, timeout=30) as client:
                alive(client, 1)
            stop_process(scheduler_process)  # it tells its executors to shut down
            _, err = executor.communicate(timeout=60)
        finally:
            stop_process(executor)
            executor.stderr.close()
    assert executor.returncode == 0
    last = err.decode().strip().splitlines()[-1]
    assert last.endswith("executor told exits: the scheduler shut it down (scheduler stopping)")


def test_an_executor_says_why_it_exits_when_no_scheduler_answers():
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        address = f"tcp://127.0.0.1:{probe.getsockname()[1]}"
    executor = tidal(
        "executor", "--scheduler", address, "--id", "alone", "--connect-timeout", "0.2"
    )
    try:
        _, err = executor.communicate(timeout=60)
    finally:
        stop_process(executor)
        executor.stderr.close()
    assert executor.returncode == 2
    assert (
        err.decode()
        .strip()
        .splitlines()[-1]
        .endswith(
            f"executor alone exits (code 2): the scheduler at {address} did not answer within 0.2 s"
        )
    )


def test_nworkers_runs_n_slots_restarts_one_that_dies_and_stops_them_all():
    with scheduler() as (_, address):
        supervisor = tidal("executor", "--scheduler", address, "--nworkers", "2", "--id", "slot")
        try:
            with Client(address, timeout=30) as client:
                status = alive(client, 2)
                assert sorted(e["executor_id"] for e in status["executors"]) == [
                    "slot-0",
                    "slot-1",
                ]
                slots = psutil.Process(supervisor.pid).children()
                assert len(slots) == 2
                victim = next(s for s in slots if "slot-1" in s.cmdline())
                victim.kill()
                status = client.wait_for_status(
                    lambda s: any(
                        e["executor_id"] == "slot-1-r1" and e["state"] == "alive"
                        for e in s["executors"]
                    ),
                    timeout=60,
                )
                slots = psutil.Process(supervisor.pid).children()
            supervisor.send_signal(signal.SIGTERM)
            _, err = supervisor.communicate(timeout=60)
        finally:
            stop_process(supervisor)
            supervisor.stderr.close()
    assert supervisor.returncode == 0
    assert not any(s.is_running() for s in slots)  # passed on to both, and waited for
    err = err.decode()
    assert "executor slot 1 (pid " in err and "was killed by SIGKILL: starting it again" in err
    assert "executor slot-0 exits: on SIGTERM" in err
    assert "executor slot-1-r1 exits: on SIGTERM" in err


def test_slots_stop_when_their_supervisor_is_killed():
    with scheduler() as (_, address):
        supervisor = tidal("executor", "--scheduler", address, "--nworkers", "2")
        slots = []
        try:
            with Client(address, timeout=30) as client:
                alive(client, 2)
            slots = psutil.Process(supervisor.pid).children()
            supervisor.kill()  # no chance to pass anything on: the kernel tells the slots
            supervisor.wait()
            _, running = psutil.wait_procs(slots, timeout=60)
        finally:
            stop_process(supervisor)
            supervisor.stderr.close()
            for slot in slots:
                with contextlib.suppress(psutil.NoSuchProcess):
                    slot.kill()
    assert running == []


def test_each_slot_gets_every_option_of_the_command_and_an_id_of_its_own(tmp_path):
    argv = [
        "executor", "--scheduler", "tcp://h:1", "--node", "n", "--id", "w",
        "--switch-interval-us", "50", "--suspend-timeout-ms", "20", "--connect-timeout", "3",
        "--reconnect-timeout", "4", "--no-realtime", "--quiet-exit", "--memory-limit", "1GiB",
        "--keys", str(tmp_path), "--pythonpath", "a", "--pythonpath", "b", "--nworkers", "3",
    ]  # fmt: skip
    given = _parser().parse_args(argv)
    settle_defaults(given)
    common = ["executor", "--scheduler", "tcp://h:1", "--node", "n"]
    slot = _parser().parse_args([*common, *_slot_args(given, 2, 1)])
    settle_defaults(slot)
    assert slot.executor_id == "w-2-r1" and slot.nworkers == 1
    expected = {**vars(given), "executor_id": "w-2-r1", "nworkers": 1}
    assert vars(slot) == expected  # every option, so a new one must be passed on too
    given.executor_id = None
    assert "--id" not in _slot_args(given, 0, 0)  # each slot makes an id of its own


def test_a_slot_supervisor_refuses_what_would_fail_every_slot(tmp_path):
    missing = str(tmp_path / "missing")
    for options, problem in [
        (["--nworkers", "0"], "--nworkers must be >= 1, not 0"),
        (["--nworkers", "2", "--pythonpath", missing], f"{missing!r} is not a directory"),
        (["--nworkers", "2", "--keys", missing], f"key directory {missing} not found"),
        (["--nworkers", "2", "--memory-limit", "lots"], "--memory-limit: "),
        # A watchdog slower than the scheduler's overdue time would make it busy each time.
        (["--suspend-timeout-ms", "200"], "--suspend-timeout-ms: the suspend timeout must be"),
        (["--suspend-timeout-ms", "0"], "> 0 and <= 125 ms, not 0 (the scheduler counts"),
    ]:
        argv = tidal_command("executor", "--scheduler", "tcp://127.0.0.1:1", *options)
        done = subprocess.run(argv, env=child_env(), capture_output=True, text=True, timeout=60)
        assert done.returncode == 2 and problem in done.stderr


def test_the_longest_suspend_timeout_leaves_room_before_the_scheduler_calls_it_busy():
    from tidal.runtime.executor import WATCHDOG_POLL_MS
    from tidal.runtime.runstate import MAX_SUSPEND_TIMEOUT_NS
    from tidal.scheduler.records.busy import SUSPEND_OVERDUE_NS

    room_ns = SUSPEND_OVERDUE_NS - MAX_SUSPEND_TIMEOUT_NS - WATCHDOG_POLL_MS * 1_000_000
    assert room_ns >= 20_000_000

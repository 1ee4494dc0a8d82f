"""Child processes import this Tidal and the user's modules, wherever they are started; and
how a supervisor starts again those that die (with fake processes and a fake clock)."""

from __future__ import annotations

import itertools
import logging
import signal
import subprocess
import sys

import pytest

from tidal.runtime.processes import (
    EXIT_CANNOT_WORK,
    SUPERVISE_INTERVAL_S,
    ExecutorSlots,
    Restarts,
    child_env,
    tidal_command,
)


@pytest.mark.slow  # two interpreters start
def test_a_child_imports_this_tidal_even_beside_a_folder_named_tidal(tmp_path, monkeypatch):
    # The repository's root is such a place: its tidal/ folder is the face alone, with
    # runtime/ and the rest mapped in by the install.
    (tmp_path / "tidal").mkdir()
    (tmp_path / "tidal" / "__init__.py").write_text("raise ImportError('the decoy')\n")
    (tmp_path / "usermod.py").write_text("VALUE = 42\n")
    monkeypatch.chdir(tmp_path)
    done = subprocess.run(
        tidal_command("--version"), env=child_env(), capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("tidal ")
    # And the user's own module next to the program, as an executor imports a task's.
    probe = "import usermod, tidal.runtime.kernel; print(usermod.VALUE)"
    command = [sys.executable, *tidal_command()[1:2], "-c", probe]  # the same flags
    done = subprocess.run(command, env=child_env(), capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "42"


# ---- supervision, with fake processes and a fake clock ---------------------------------------


class FakeProcess:
    """What supervision uses of a child: a pid, poll(), send_signal(); `end(code)` ends it."""

    pids = itertools.count(100)

    def __init__(self) -> None:
        self.pid = next(self.pids)
        self.returncode: int | None = None
        self.signals: list[int] = []

    def poll(self) -> int | None:
        return self.returncode

    def send_signal(self, signum: int) -> None:
        self.signals.append(signum)

    def end(self, code: int) -> None:
        self.returncode = code


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_dead_child_restarts_at_once_then_after_a_doubling_back_off_then_never(caplog):
    caplog.set_level(logging.WARNING, logger="tidal.processes")
    clock = Clock()
    restarts = Restarts(1, limit=3, backoff_s=1.0, max_backoff_s=1.5, clock=clock)
    assert not restarts.due(0, None, "child 0")  # it runs
    assert restarts.due(0, 1, "child 0")  # the first restart: at once
    waits = []
    for _ in range(2):
        died_at = clock.now
        while not restarts.due(0, -9, "child 0"):
            clock.now += 0.25
        waits.append(clock.now - died_at)
    assert waits == [1.0, 1.5]  # 1 s, then 2 s capped at 1.5
    assert not restarts.due(0, -9, "child 0") and restarts.finished(0)
    assert restarts.total == 3
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "child 0 exited with code 1: starting it again (restart 1 of at most 3)",
        "child 0 was killed by SIGKILL: starting it again in 1.0 s (restart 2 of at most 3)",
        "child 0 was killed by SIGKILL: starting it again in 1.5 s (restart 3 of at most 3)",
        "child 0 was killed by SIGKILL and was restarted 3 times already: not again",
    ]


def test_a_child_that_ran_long_enough_gets_its_restarts_back_and_one_that_meant_to_exit_none():
    clock = Clock()
    restarts = Restarts(
        2, limit=1, healthy_s=60.0, restart_after=lambda code: code != 0, clock=clock
    )
    assert restarts.due(0, 3, "child 0")
    clock.now = 59.0
    assert not restarts.due(0, 3, "child 0")  # its one restart is spent: a crash loop
    assert restarts.finished(0)
    clock.now = 200.0
    assert not restarts.due(1, 0, "child 1") and restarts.finished(1)  # exited on purpose
    restarts = Restarts(1, limit=1, healthy_s=60.0, clock=clock)
    assert restarts.due(0, 3, "child 0")
    clock.now += 60.0
    assert restarts.due(0, 3, "child 0")  # it ran a minute since: not a crash loop


def slots(count, clock, **options):
    started = []

    def start(slot, restart):
        started.append((slot, restart))
        return FakeProcess()

    restarts = Restarts(
        count,
        limit=2,
        backoff_s=1.0,
        restart_after=lambda code: code not in (0, EXIT_CANNOT_WORK),
        clock=clock,
    )
    supervisor = ExecutorSlots(count, start, restarts=restarts, **options)
    supervisor.start()
    return supervisor, started


def test_executor_slots_restart_a_slot_that_died_and_end_when_all_exited_on_purpose():
    clock = Clock()
    supervisor, started = slots(3, clock)
    assert started == [(0, 0), (1, 0), (2, 0)]
    first = supervisor.processes[1]
    first.end(-9)
    assert supervisor.step()
    assert started[-1] == (1, 1) and supervisor.processes[1] is not first
    supervisor.processes[1].end(3)  # over its memory limit: again, after the back-off
    assert supervisor.step() and started[-1] == (1, 1)
    clock.now += 1.0
    assert supervisor.step() and started[-1] == (1, 2)
    supervisor.processes[0].end(0)  # the scheduler shut it down
    supervisor.processes[1].end(0)
    supervisor.processes[2].end(EXIT_CANNOT_WORK)  # no scheduler within its timeout
    assert not supervisor.step()
    assert len(started) == 5 and supervisor.exit_code == EXIT_CANNOT_WORK


def test_executor_slots_pass_each_signal_on_and_start_nothing_once_stopping():
    clock = Clock()
    supervisor, started = slots(2, clock)
    supervisor.processes[0].end(-9)  # dies as the signal comes: not started again
    supervisor.stop(signal.SIGTERM)
    assert supervisor.step()
    assert supervisor.processes[1].signals == [signal.SIGTERM]
    assert supervisor.processes[0].signals == [] and len(started) == 2
    supervisor.stop(signal.SIGINT)  # a second Ctrl-C goes on too
    assert supervisor.step() and supervisor.processes[1].signals == [signal.SIGTERM, signal.SIGINT]
    supervisor.processes[1].end(0)
    assert not supervisor.step()
    assert supervisor.exit_code == 128 + signal.SIGKILL  # as a shell reports slot 0


def test_executor_slots_run_until_every_slot_exited():
    clock = Clock()
    looks = []

    def wait(seconds):  # each wait, one slot ends: the loop must notice them all
        looks.append(seconds)
        supervisor.processes[len(looks) - 1].end(0)

    handlers = [signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT)]
    supervisor, _ = slots(2, clock, wait=wait)
    supervisor.start = lambda: None  # started above, by `slots`
    assert supervisor.run() == 0
    assert looks == [SUPERVISE_INTERVAL_S] * 2
    assert [signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT)] == handlers

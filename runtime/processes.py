"""Child processes: start `tidal executor` processes, supervise them and stop them, for the
local cluster, `tidal executor --nworkers N`, the benchmarks and the tests (each process one
of them starts, it stops).

Supervision has one rule, `Restarts`, shared by LocalCluster's supervisor thread and by
`ExecutorSlots` (the process behind `tidal executor --nworkers N`, after Dask's nanny): a
child that died is started again, at most a limited number of times, after a back-off that
grows with each restart; a child that exits on purpose is left alone.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence

import tidal
from tidal.runtime.config import KEYS, SCHEDULER_ADDRESS

__all__ = [
    "EXIT_CANNOT_WORK",
    "ExecutorSlots",
    "Restarts",
    "child_env",
    "describe_exit",
    "spawn_executor",
    "stop_process",
    "tidal_command",
]

log = logging.getLogger("tidal.processes")

# The exit code of an executor that cannot work where it is (the scheduler refused it or its
# key, did not answer, or did not come back; a bad option): starting it again would fail the
# same way. 0 is an executor told to stop (by the scheduler, or a signal).
EXIT_CANNOT_WORK = 2
# Set in a child's environment to its parent's pid (`child_env`, `exit_with_parent`), and
# how often the child looks whether that parent is still there.
PARENT_PID = "TIDAL_PARENT_PID"
PARENT_CHECK_S = 0.5


def tidal_command(*args: str) -> list[str]:
    """The command line of `tidal ARGS` in a child process: this Python, `-m tidal`.

    Discussion: with `-P`, not the bare `-m`. `-m` puts the current folder first on the
    child's path, and in the repository's root that folder holds `tidal/`, the package's
    face without its subpackages (setup.cfg maps `runtime/` and the rest in): run from
    there, an installed Tidal's children imported that and failed (`No module named
    'tidal.runtime'`). `child_env` puts the current folder on the path instead, after the
    folder this Tidal is installed in, so a user's own modules are still found.
    """
    return [sys.executable, "-P", "-m", "tidal", *args]


def spawn_executor(
    address: str,
    *,
    node: str = "local",
    extra_args: Sequence[str] = (),
    log_level: str | None = None,
    die_with_parent: bool = False,
) -> subprocess.Popen[bytes]:
    """Start `tidal executor` in a child process connected to `address`. With
    `die_with_parent` it gets SIGTERM when this process dies, even by SIGKILL (Linux; only
    from a process with no other threads: it runs code between fork and exec)."""
    level = [] if log_level is None else ["--log-level", log_level]
    return subprocess.Popen(
        tidal_command(*level, "executor", "--scheduler", address, "--node", node, *extra_args),
        env=child_env(),
        preexec_fn=_term_with_parent if die_with_parent else None,
    )


def _term_with_parent() -> None:
    PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def child_env() -> dict[str, str]:
    """This process's environment, with the folder holding this `tidal` first on PYTHONPATH,
    then the current folder: a child started with it (`tidal_command`) imports this very
    copy of Tidal, and the user's modules next to the program, as the program did."""
    env = dict(os.environ)
    # Discussion: a child is told its scheduler and keys on its command line. Were these left
    # in, a LocalCluster's executors (given no --keys) would take the user's TIDAL_KEYS and
    # knock on a keyless scheduler with them.
    for variable in (SCHEDULER_ADDRESS, KEYS):
        env.pop(variable.name, None)
    env[PARENT_PID] = str(os.getpid())  # the child leaves when we do (`exit_with_parent`)
    # The folder that holds the `tidal` package: a checkout (editable install) or site-packages.
    root = os.path.dirname(os.path.dirname(os.path.abspath(tidal.__file__)))
    paths = [root, os.getcwd(), env.get("PYTHONPATH")]
    env["PYTHONPATH"] = os.pathsep.join(filter(None, paths))
    return env


def exit_with_parent() -> None:
    """In a child started with `child_env`: SIGTERM this process once its parent is gone.

    Discussion: a LocalCluster closes its scheduler and executors at exit, but a program
    killed by a signal runs no `atexit`, and they ran on for ever (`tidal demo` stopped with
    SIGTERM left three processes). PR_SET_PDEATHSIG would tell at once, but it fires when
    the *thread* that started the child ends (a cluster made in a short-lived thread, the
    cluster's supervisor restarting one), so the parent is polled: a child whose parent
    died is adopted, and its parent id changes."""
    parent = os.environ.pop(PARENT_PID, None)
    if parent is None or not parent.isdigit():
        return
    pid = int(parent)

    def watch() -> None:
        while os.getppid() == pid:
            time.sleep(PARENT_CHECK_S)
        log.warning("exiting: the process that started this one (pid %d) is gone", pid)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="tidal-parent-watch", daemon=True).start()


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> int:
    """Ask a child to stop (SIGTERM), kill it if it does not; return its exit code."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def describe_exit(returncode: int) -> str:
    """`exited with code 3`, or `was killed by SIGKILL` for a child a signal ended."""
    if returncode < 0:
        try:
            return f"was killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"was killed by signal {-returncode}"
    return f"exited with code {returncode}"


# ---- supervision -----------------------------------------------------------------------------


class Restarts:
    """When a supervised child that died is started again (the rule; the caller polls its
    children and starts them).

    A child is started again at most `limit` times; the first restart is at once, each later
    one waits `backoff_s`, doubled with each restart, at most `max_backoff_s` (0: never
    waits). A child that ran `healthy_s` or longer before it died has its count start over:
    its earlier deaths were not a crash loop (None: never). A child whose exit code fails
    `restart_after` exited on purpose and is left alone. Reads time only from `clock`.
    """

    def __init__(
        self,
        children: int,
        *,
        limit: int,
        backoff_s: float = 0.0,
        max_backoff_s: float = 30.0,
        healthy_s: float | None = None,
        restart_after: Callable[[int], bool] = lambda returncode: True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if limit < 0:
            raise ValueError(f"a restart limit must be >= 0, not {limit}")
        self.limit, self.backoff_s, self.max_backoff_s = limit, backoff_s, max_backoff_s
        self.healthy_s, self.restart_after, self._clock = healthy_s, restart_after, clock
        self.total = 0  # restarts of all children so far
        self._count = [0] * children  # restarts per child, since it last ran healthy_s
        self._started_at = [clock()] * children
        self._due_at: list[float | None] = [None] * children  # a restart decided, for then
        self._finished = [False] * children  # exited for good: on purpose, or out of restarts

    def due(self, child: int, returncode: int | None, who: str) -> bool:
        """Whether to start `child` again now (its process ended with `returncode`; None: it
        runs). True counts the restart: the caller starts it. Logs each decision once; `who`
        names the child in those lines."""
        if returncode is None or self._finished[child]:
            return False
        now = self._clock()
        if self._due_at[child] is None:  # seen dead for the first time: decide
            exit_ = describe_exit(returncode)
            if not self.restart_after(returncode):
                self._finished[child] = True
                return False
            if self.healthy_s is not None and now - self._started_at[child] >= self.healthy_s:
                self._count[child] = 0
            count = self._count[child]
            if count >= self.limit:
                log.error("%s %s and was restarted %d times already: not again", who, exit_, count)
                self._finished[child] = True
                return False
            wait = 0.0 if count == 0 else min(self.max_backoff_s, self.backoff_s * 2 ** (count - 1))
            log.warning(
                "%s %s: starting it again%s (restart %d of at most %d)",
                who,
                exit_,
                f" in {wait:.1f} s" if wait else "",
                count + 1,
                self.limit,
            )
            self._due_at[child] = now + wait
        if now < self._due_at[child]:
            return False
        self._due_at[child] = None
        self._count[child] += 1
        self.total += 1
        self._started_at[child] = now
        return True

    def finished(self, child: int) -> bool:
        """Whether `child` exited for good (on purpose, or with no restarts left)."""
        return self._finished[child]


# How often a supervisor looks at its children: a death is acted on this long after at most.
SUPERVISE_INTERVAL_S = 0.1


# An executor slot that dies unexpectedly is started again at most this many times (its
# count starts over once it ran SLOT_HEALTHY_S), at once the first time, then after
# SLOT_BACKOFF_S, doubled each time: a slot that dies at once keeps the host busy less and
# less, and its log readable.
SLOT_RESTARTS = 5
SLOT_BACKOFF_S = 1.0
SLOT_HEALTHY_S = 60.0


class ExecutorSlots:
    """`tidal executor --nworkers N`: N executor processes ("slots") supervised by this one.

    `start(slot, restart)` starts slot `slot` (0-based) for the `restart`-th time (0: the
    first) and returns its process. A slot that dies unexpectedly (killed, crashed, over its
    memory limit) is started again under `restarts` (`Restarts`; by default the SLOT_*
    settings); one that exits on purpose (0: the scheduler shut it down, EXIT_CANNOT_WORK)
    is not. SIGTERM and SIGINT are passed
    on to every slot; `run()` returns once all have exited, with 0 if each exited 0, else the
    first other exit code among them.
    """

    def __init__(
        self,
        count: int,
        start: Callable[[int, int], subprocess.Popen[bytes]],
        *,
        restarts: Restarts | None = None,
        wait: Callable[[float], None] = time.sleep,
    ) -> None:
        if count < 1:
            raise ValueError(f"executor slots: at least 1, not {count}")
        if restarts is None:
            restarts = Restarts(
                count,
                limit=SLOT_RESTARTS,
                backoff_s=SLOT_BACKOFF_S,
                healthy_s=SLOT_HEALTHY_S,
                restart_after=lambda returncode: returncode not in (0, EXIT_CANNOT_WORK),
            )
        self._start, self._restarts, self._wait = start, restarts, wait
        self.processes: list[subprocess.Popen[bytes]] = []
        self._starts = [0] * count  # per slot: how often it was started again
        self._signals: list[int] = []  # received, in order; each passed on once
        self._passed_on = 0

    def run(self) -> int:
        """Start the slots, supervise them until they have all exited; the exit code."""
        previous = {
            signum: signal.signal(signum, lambda signum, _: self._signals.append(signum))
            for signum in (signal.SIGTERM, signal.SIGINT)
        }
        try:
            self.start()
            while self.step():
                self._wait(SUPERVISE_INTERVAL_S)
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            for process in self.processes:  # after a bug here: leave no slot behind
                stop_process(process)
        return self.exit_code

    def start(self) -> None:
        """Start every slot."""
        self.processes = [self._start(slot, 0) for slot in range(len(self._starts))]

    def stop(self, signum: int = signal.SIGTERM) -> None:
        """Pass `signum` on to every slot, and start none again (any thread)."""
        self._signals.append(signum)

    def step(self) -> bool:
        """One look: pass on signals received since the last, start again the slots that
        are due; whether any slot may still run."""
        stopping = bool(self._signals)
        while self._passed_on < len(self._signals):
            signum = self._signals[self._passed_on]
            self._passed_on += 1
            for process in self.processes:
                if process.poll() is None:
                    process.send_signal(signum)
        running = False
        for slot, process in enumerate(self.processes):
            returncode = process.poll()
            if returncode is None:
                running = True
                continue
            if stopping:
                continue
            who = f"executor slot {slot} (pid {process.pid})"
            if self._restarts.due(slot, returncode, who):
                self._starts[slot] += 1
                self.processes[slot] = self._start(slot, self._starts[slot])
                running = True
            elif not self._restarts.finished(slot):
                running = True  # a restart after its back-off
        return running

    @property
    def exit_code(self) -> int:
        """0 if every slot exited 0 (or runs), else the first other code among them (128 +
        the signal's number for one a signal ended, as a shell says)."""
        for process in self.processes:
            code = process.poll()
            if code:
                return code if code > 0 else 128 - code
        return 0

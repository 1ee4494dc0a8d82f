"""LocalCluster: a scheduler and N executor processes on loopback, the embedded default.

    with LocalCluster(executors=2, policy="lb") as cluster, Client(cluster) as client:
        ...

Every process it starts it stops: on `close()`, on leaving the `with` block (also through
an exception or Ctrl-C), and at interpreter exit as a last resort. An executor that dies
while the cluster runs (killed, or over its memory limit) is started again, a bounded number
of times, by a supervisor thread; the scheduler requeues what the dead one held.

Discussion: the scheduler runs in its own process, not in a thread of the user's: sharing
the user's GIL would put every scheduling decision behind whatever the user's program is
doing, which is exactly the kind of wait Tidal exists to remove.
"""

from __future__ import annotations

import atexit
import os
import selectors
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Sequence
from typing import Any

from tidal.runtime import reprs
from tidal.runtime.auth import generate_keys, load_peer_keys
from tidal.runtime.memory import parse_size
from tidal.runtime.processes import (
    SUPERVISE_INTERVAL_S,
    Restarts,
    child_env,
    spawn_executor,
    stop_process,
    tidal_command,
)
from tidal.scheduler.dashboard import check_dashboard
from tidal.scheduler.policies import Policy, resolve_policy
from tidal.scheduler.service import ANNOUNCEMENT, DASHBOARD_ANNOUNCEMENT

__all__ = ["ClusterStartError", "LocalCluster"]


class ClusterStartError(RuntimeError):
    """The cluster did not come up; the message says which part and why."""


class LocalCluster:
    """Start a scheduler and `executors` executor processes on this machine.

    With `event_log=PATH` the scheduler writes its event log there (scheduler/eventlog.py),
    flushed at each heartbeat tick and complete once the cluster is closed. With
    `memory_limit` (bytes, or a size such as "512MiB") each executor enforces that limit
    (runtime/memory.py). An executor that dies is started again, at most `executor_restarts`
    times per executor (0: never); `restarts` counts them.

    The scheduler keeps a journal (scheduler/journal.py): by default in a temporary file
    removed on `close()`; `journal=PATH` keeps it there, `journal=False` keeps none.
    `restart_scheduler()` kills the scheduler (-9) and starts it again on the same address
    and journal: executors and clients find it again by themselves.

    With `keys=DIR` (`tidal keys generate DIR`) the scheduler requires CURVE keys and the
    executors use DIR's peer keys; `keys=True` generates a key directory for this cluster
    and removes it on `close()`. `cluster.keys` is the directory, and `Client(cluster)`
    uses it.
    """

    def __init__(
        self,
        executors: int = 2,
        policy: Any = "lb",
        *,
        max_suspensions: int = 3,
        heartbeat_ms: int = 500,
        nodes: Sequence[str] | None = None,
        start_timeout: float = 30.0,
        log_level: str = "warning",
        executor_args: Sequence[str] = (),
        stealing: bool = True,
        event_log: str | os.PathLike[str] | None = None,
        memory_limit: int | str | None = None,
        executor_restarts: int = 5,
        missed_heartbeats: int = 3,
        max_retries: int = 3,
        journal: str | os.PathLike[str] | bool | None = None,
        keys: str | os.PathLike[str] | bool | None = None,
        dashboard: bool | str = False,
        client_timeout: float = 300.0,
    ) -> None:
        if executors < 1:
            raise ValueError(f"a cluster needs at least one executor, not {executors}")
        if nodes is not None and len(nodes) != executors:
            raise ValueError(f"{len(nodes)} node labels for {executors} executors")
        self.policy = _policy_spec(policy)
        resolve_policy(self.policy)  # an unknown name fails here, listing the known ones
        # The dashboard: True, on 127.0.0.1:8787 or a free port; "HOST:PORT", there. A
        # restarted scheduler serves it where the first one did (`_start_scheduler`).
        self.dashboard_link: str | None = None
        self._dashboard = None if not dashboard else "" if dashboard is True else str(dashboard)
        if self._dashboard is not None:
            check_dashboard(self._dashboard)  # its extra missing, a bad address: fails here
        self.memory_limit = None if memory_limit is None else parse_size(memory_limit)
        if executor_restarts < 0:
            raise ValueError(f"executor_restarts must be >= 0, not {executor_restarts}")
        self.executor_restarts = executor_restarts
        self.restarts = 0
        self._processes: list[subprocess.Popen[bytes]] = []
        self._executor_args: list[tuple[str, list[str]]] = []  # (node, arguments) per executor
        # At once, as often as allowed: a local executor that died was killed or over its
        # memory limit, and one that cannot start fails the cluster's start instead.
        self._restarts = Restarts(executors, limit=executor_restarts)
        self._closed = False
        self._stopping = threading.Event()
        self._supervisor: threading.Thread | None = None
        self.stealing = stealing
        # The scheduler's event log (`tidal timeline` draws it); absolute, as the scheduler
        # process resolves it.
        self.event_log = None if event_log is None else os.path.abspath(event_log)
        self._own_keys: str | None = None  # a key directory this cluster made (keys=True)
        if keys is True:
            self._own_keys = tempfile.mkdtemp(prefix="tidal-keys-")
            generate_keys(self._own_keys, force=True)
            keys = self._own_keys
        self.keys = None if keys is None or keys is False else os.path.abspath(keys)
        if self.keys is not None:
            try:  # a bad directory fails here, naming the file, not in a child process
                load_peer_keys(self.keys)
            except BaseException:
                self._remove_own_keys()
                raise
        key_args = [] if self.keys is None else ["--keys", self.keys]
        self._journal_dir: str | None = None
        if journal is None or journal is True:
            self._journal_dir = tempfile.mkdtemp(prefix="tidal-cluster-")
            journal = os.path.join(self._journal_dir, "journal.sqlite")
        self.journal = None if journal is False else os.path.abspath(journal)
        self._scheduler_args = [
            "--log-level",
            log_level,
            "scheduler",
            "--policy",
            self.policy,
            "--max-suspensions",
            str(max_suspensions),
            "--heartbeat-ms",
            str(heartbeat_ms),
            "--missed-heartbeats",
            str(missed_heartbeats),
            "--max-retries",
            str(max_retries),
            "--client-timeout",
            str(client_timeout),
            "--announce",
            *([] if self.stealing else ["--no-stealing"]),
            *([] if self.event_log is None else ["--event-log", self.event_log]),
            *(["--no-journal"] if self.journal is None else ["--journal", self.journal]),
            *key_args,
        ]
        self._start_timeout = start_timeout
        self.scheduler_restarts = 0
        atexit.register(self.close)
        try:
            self._start_scheduler("tcp://127.0.0.1:*", start_timeout)
            limit = [] if self.memory_limit is None else ["--memory-limit", str(self.memory_limit)]
            for i in range(executors):
                node = nodes[i] if nodes is not None else f"local-{i}"
                args = ["--connect-timeout", str(start_timeout), *limit, *key_args]
                # Their clean exits are the cluster's own doing: said at info level, so that
                # closing a cluster prints nothing.
                args += ["--quiet-exit", *executor_args]
                self._executor_args.append((node, args))
                self._processes.append(spawn_executor(self.address, node=node, extra_args=args))
            self._wait_for_executors(executors, start_timeout)
            if executor_restarts > 0:
                self._supervisor = threading.Thread(
                    target=self._supervise, name="tidal-cluster-supervisor", daemon=True
                )
                self._supervisor.start()
        except BaseException:
            self.close()
            raise

    def _start_scheduler(self, bind: str, timeout: float) -> None:
        process = subprocess.Popen(
            tidal_command(*self._scheduler_args, *self._dashboard_args(), "--bind", bind),
            stdout=subprocess.PIPE,
            bufsize=0,  # unbuffered: a line read must not take the next one out of select's sight
            env=child_env(),
        )
        if self._processes:  # a restart: the scheduler stays first
            self._processes[0] = process
        else:
            self._processes.append(process)
        line = _read_line(process, timeout)
        if not line.startswith(ANNOUNCEMENT):
            code = process.poll()
            raise ClusterStartError(
                f"the scheduler did not start (exit code {code}); it said: {line.strip()!r}"
            )
        self.address = line[len(ANNOUNCEMENT) :].strip()
        if self._dashboard is not None:
            line = _read_line(process, timeout)
            if not line.startswith(DASHBOARD_ANNOUNCEMENT):
                raise ClusterStartError(f"the dashboard did not start: {line.strip()!r}")
            self.dashboard_link = line[len(DASHBOARD_ANNOUNCEMENT) :].strip()
            # A restart serves it where it is now, not on "any free port".
            host = self._dashboard.rpartition(":")[0] or "127.0.0.1"
            self._dashboard = f"{host}:{self.dashboard_link.rstrip('/').rpartition(':')[2]}"

    def _dashboard_args(self) -> list[str]:
        if self._dashboard is None:
            return []
        return ["--dashboard", self._dashboard] if self._dashboard else ["--dashboard"]

    def _wait_for_executors(self, count: int, timeout: float) -> None:
        from tidal.runtime.client import Client

        alive = 0

        def joined_or_exited(status: dict[str, Any]) -> bool:
            nonlocal alive
            alive = sum(e["state"] == "alive" for e in status["executors"])
            return alive >= count or any(proc.poll() is not None for proc in self._processes[1:])

        with Client(self.address, timeout=timeout, keys=self.keys) as client:
            try:
                client.wait_for_status(joined_or_exited, timeout)
            except TimeoutError:
                raise ClusterStartError(
                    f"only {alive} of {count} executors joined within {timeout:.0f} s"
                ) from None
        if alive >= count:
            return
        for process in self._processes[1:]:
            if process.poll() is not None:
                raise ClusterStartError(
                    f"an executor exited with code {process.returncode} while the cluster started"
                )

    def wait_for_executors(self, count: int | None = None, timeout: float = 30.0) -> None:
        """Return once `count` executors (all of this cluster's, by default) are alive;
        ClusterStartError after `timeout` seconds, or if one exits meanwhile."""
        self._wait_for_executors(len(self._executor_args) if count is None else count, timeout)

    def restart_scheduler(self) -> None:
        """Kill the scheduler (-9, as a crash would) and start it again on the same address
        and journal. Returns once the new one listens; executors and clients reconnect by
        themselves (docs/protocol.md, *Failures and restarts*)."""
        old = self._processes[0]
        old.kill()
        old.wait()
        if old.stdout is not None:
            old.stdout.close()
        self._start_scheduler(self.address, self._start_timeout)
        self.scheduler_restarts += 1

    def kill_executor(self, index: int) -> None:
        """Kill executor `index` (0-based) with -9, as a crash would (the supervisor starts
        it again, within `executor_restarts`)."""
        process = self._processes[1 + index]
        process.kill()
        process.wait()

    def _supervise(self) -> None:
        """Start executors that died again, at most `executor_restarts` times each."""
        while not self._stopping.wait(SUPERVISE_INTERVAL_S):
            for i, (node, args) in enumerate(self._executor_args):
                process = self._processes[i + 1]
                who = f"executor {i} (node {node}, pid {process.pid})"
                if self._restarts.due(i, process.poll(), who):
                    self.restarts += 1
                    self._processes[i + 1] = spawn_executor(
                        self.address, node=node, extra_args=args
                    )

    @property
    def processes(self) -> list[subprocess.Popen[bytes]]:
        """The scheduler process first, then the executors."""
        return list(self._processes)

    def close(self) -> None:
        """Stop every process this cluster started (scheduler first: it stops the executors)."""
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self.close)
        self._stopping.set()  # no restarts from here on
        if self._supervisor is not None:
            self._supervisor.join()
        for process in self._processes:  # scheduler first: it tells executors to shut down
            stop_process(process, timeout=5.0)
            if process.stdout is not None:
                process.stdout.close()
        if self._journal_dir is not None:
            shutil.rmtree(self._journal_dir, ignore_errors=True)
        self._remove_own_keys()

    def _remove_own_keys(self) -> None:
        if self._own_keys is not None:
            shutil.rmtree(self._own_keys, ignore_errors=True)
            self._own_keys = None

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else getattr(self, "address", "starting")
        dashboard = getattr(self, "dashboard_link", None)
        parts = [f"{len(self._processes) - 1} executors", str(self.policy), state]
        parts += [f"dashboard {dashboard}"] if dashboard else []
        return f"<LocalCluster {', '.join(parts)}>"

    def _repr_html_(self) -> str:
        alive = sum(process.poll() is None for process in self._processes[1:])
        dashboard = getattr(self, "dashboard_link", None)
        rows = [
            ("scheduler", getattr(self, "address", "starting")),
            ("state", reprs.State("closed" if self._closed else "running")),
            ("executors", f"{len(self._executor_args)} ({alive} running)"),
            ("policy", self.policy),
            ("dashboard", dashboard and reprs.Link(str(dashboard))),
            ("event log", self.event_log),
            ("memory limit", self.memory_limit and f"{self.memory_limit:,} bytes"),
            ("executor restarts", self.restarts or None),
            ("keys", self.keys),
        ]
        return reprs.html_table("LocalCluster", getattr(self, "address", "starting"), rows)


def _policy_spec(policy: Any) -> str:
    """What to pass to the scheduler process: a name or an importable 'module:Class' path.

    Discussion: the scheduler runs in a process of its own and is told its policy on its
    command line, so a class can travel (by its path) but an instance's settings cannot. An
    instance is taken only if it is what its class makes with no arguments (the scheduler
    makes it again); any other is refused, naming what differs, rather than replaced by the
    class's defaults without a word.
    """
    if isinstance(policy, str):
        return policy
    cls = policy if isinstance(policy, type) else type(policy)
    if "<locals>" in cls.__qualname__ or cls.__module__ == "__main__":
        raise ValueError(
            f"LocalCluster runs the scheduler in its own process, so its policy must "
            f"be importable there: define {cls.__qualname__} in a module and pass "
            f"'module:{cls.__qualname__}'"
        )
    if not isinstance(policy, type) and (differences := _unlike_defaults(policy, cls)):
        name = cls.__qualname__
        raise ValueError(
            f"LocalCluster runs the scheduler in its own process and can pass it a policy's "
            f"class, not an instance's settings, and this {name} is not {name}(): "
            f"{'; '.join(differences)}. Pass a class whose defaults are these settings (a "
            f"subclass of {name} whose __init__ passes them to super().__init__), or give "
            "the instance to a SchedulerServer in your own process"
        )
    return f"{cls.__module__}:{cls.__qualname__}"


def _unlike_defaults(policy: Any, cls: type) -> list[str]:
    """How `policy` differs from `cls()` (attribute by attribute), or why there is no `cls()`."""
    try:
        default = cls()
    except Exception as exc:
        return [f"{cls.__qualname__}() cannot be made ({type(exc).__name__}: {exc})"]
    mine, theirs = _attributes(policy), _attributes(default)
    missing = object()
    return [
        f"{name}={mine.get(name)!r} where {cls.__qualname__}() has {theirs.get(name)!r}"
        for name in sorted(mine.keys() | theirs.keys())
        if _comparable(mine.get(name, missing)) != _comparable(theirs.get(name, missing))
    ]


def _attributes(obj: Any) -> dict[str, Any]:
    """An object's attributes: its __dict__ and its slots."""
    found = dict(getattr(obj, "__dict__", {}))
    for klass in type(obj).__mro__:
        slots = getattr(klass, "__slots__", ())
        for name in [slots] if isinstance(slots, str) else slots:
            if name not in ("__dict__", "__weakref__") and hasattr(obj, name):
                found[name] = getattr(obj, name)
    return found


def _comparable(value: Any) -> Any:
    """`value` in a form `==` compares by content: a policy inside a policy (adaptive's) by
    its class and attributes, containers item by item."""
    if isinstance(value, Policy):
        return type(value), _comparable(_attributes(value))
    if isinstance(value, dict):
        return {key: _comparable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_comparable(item) for item in value]
    return value


def _read_line(process: subprocess.Popen[bytes], timeout: float) -> str:
    """Read one line of the child's stdout, giving up after `timeout` seconds."""
    assert process.stdout is not None  # we asked for a pipe
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        if not selector.select(timeout):
            raise ClusterStartError(
                f"the scheduler did not announce its address within {timeout:.0f} s"
            )
    return process.stdout.readline().decode(errors="replace")

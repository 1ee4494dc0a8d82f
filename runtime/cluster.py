"""LocalCluster: a scheduler and N executor processes on loopback, the embedded default.

    with LocalCluster(executors=2, policy="lb") as cluster, Client(cluster) as client:
        ...

Every process it starts it stops: on `close()`, on leaving the `with` block (also through
an exception or Ctrl-C), and at interpreter exit as a last resort.

Discussion: the scheduler runs in its own process, not in a thread of the user's: sharing
the user's GIL would put every scheduling decision behind whatever the user's program is
doing, which is exactly the kind of wait Tidal exists to remove.
"""

from __future__ import annotations

import atexit
import os
import selectors
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

from runtime.stub import child_env, spawn_executor, stop_process
from scheduler.policies import resolve_policy
from scheduler.server import ANNOUNCEMENT

__all__ = ["ClusterStartError", "LocalCluster"]


class ClusterStartError(RuntimeError):
    """The cluster did not come up; the message says which part and why."""


class LocalCluster:
    """Start a scheduler and `executors` executor processes on this machine.

    With `event_log=PATH` the scheduler writes its event log there (scheduler/eventlog.py),
    flushed at each heartbeat tick and complete once the cluster is closed.
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
    ) -> None:
        if executors < 1:
            raise ValueError(f"a cluster needs at least one executor, not {executors}")
        if nodes is not None and len(nodes) != executors:
            raise ValueError(f"{len(nodes)} node labels for {executors} executors")
        self.policy = _policy_spec(policy)
        resolve_policy(self.policy)  # an unknown name fails here, listing the known ones
        self._processes: list[subprocess.Popen[bytes]] = []
        self._closed = False
        self.stealing = stealing
        # The scheduler's event log (`tidal timeline` draws it); absolute, as the scheduler
        # process resolves it.
        self.event_log = None if event_log is None else os.path.abspath(event_log)
        atexit.register(self.close)
        try:
            self._start_scheduler(max_suspensions, heartbeat_ms, start_timeout, log_level)
            for i in range(executors):
                node = nodes[i] if nodes is not None else f"local-{i}"
                self._processes.append(
                    spawn_executor(
                        self.address,
                        node=node,
                        extra_args=["--connect-timeout", str(start_timeout), *executor_args],
                    )
                )
            self._wait_for_executors(executors, start_timeout)
        except BaseException:
            self.close()
            raise

    def _start_scheduler(
        self, max_suspensions: int, heartbeat_ms: int, timeout: float, log_level: str
    ) -> None:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "runtime",
                "--log-level",
                log_level,
                "scheduler",
                "--bind",
                "tcp://127.0.0.1:*",
                "--policy",
                self.policy,
                "--max-suspensions",
                str(max_suspensions),
                "--heartbeat-ms",
                str(heartbeat_ms),
                "--announce",
                *([] if self.stealing else ["--no-stealing"]),
                *([] if self.event_log is None else ["--event-log", self.event_log]),
            ],
            stdout=subprocess.PIPE,
            env=child_env(),
        )
        self._processes.append(process)
        line = _read_line(process, timeout)
        if not line.startswith(ANNOUNCEMENT):
            code = process.poll()
            raise ClusterStartError(
                f"the scheduler did not start (exit code {code}); it said: {line.strip()!r}"
            )
        self.address = line[len(ANNOUNCEMENT) :].strip()

    def _wait_for_executors(self, count: int, timeout: float) -> None:
        from runtime.client import Client

        alive = 0

        def joined_or_exited(status: dict[str, Any]) -> bool:
            nonlocal alive
            alive = sum(e["state"] == "alive" for e in status["executors"])
            return alive >= count or any(proc.poll() is not None for proc in self._processes[1:])

        with Client(self.address, timeout=timeout) as client:
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
        for process in self._processes:  # scheduler first: it tells executors to shut down
            stop_process(process, timeout=5.0)
            if process.stdout is not None:
                process.stdout.close()

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else getattr(self, "address", "starting")
        return f"<LocalCluster {len(self._processes) - 1} executors, {self.policy}, {state}>"


def _policy_spec(policy: Any) -> str:
    """What to pass to the scheduler process: a name or an importable 'module:Class' path."""
    if isinstance(policy, str):
        return policy
    cls = policy if isinstance(policy, type) else type(policy)
    if "<locals>" in cls.__qualname__ or cls.__module__ == "__main__":
        raise ValueError(
            f"LocalCluster runs the scheduler in its own process, so its policy must "
            f"be importable there: define {cls.__qualname__} in a module and pass "
            f"'module:{cls.__qualname__}'"
        )
    return f"{cls.__module__}:{cls.__qualname__}"


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
